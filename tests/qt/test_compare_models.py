"""Compare two models of one server: llama-cpp-python's OpenAI-compatible server serving two
models (its config file), the window's controller connected to it, one message answered by each."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

from app.core.engine.remote import ServerConfig
from app.workers.conversations import CompareSide
from tests.fakes import FakeEngine
from tests.remote_servers import API_KEY, _serve, free_port

if TYPE_CHECKING:
    from pathlib import Path


def test_compare_two_models_of_a_server(qtbot, make_controller, tiny_model: Path, tmp_path: Path) -> None:
    port = free_port()
    models = [
        {"model": str(tiny_model), "model_alias": alias, "n_threads": 1, "n_threads_batch": 1, "n_ctx": 1024}
        for alias in ("tiny-a", "tiny-b")
    ]
    config = tmp_path / "server.json"
    config.write_text(json.dumps({"host": "127.0.0.1", "port": port, "api_key": API_KEY, "models": models}))
    command = [sys.executable, "-m", "llama_cpp.server", "--config_file", str(config)]
    with _serve(command, port, tmp_path / "server.log", "llama_cpp.server", API_KEY) as server:
        controller = make_controller(FakeEngine())
        with qtbot.waitSignal(controller.models.model_loaded, timeout=60_000) as loaded:
            controller.models.connect_server(ServerConfig(server.url, api_key=API_KEY))
        info = loaded.args[0]
        assert info.server_models == ("tiny-a", "tiny-b")
        chats = controller.conversations
        assert chats.compare_models() == ("tiny-a", "tiny-b")
        with qtbot.waitSignal(chats.compare_finished, timeout=120_000) as done:
            chats.compare("hello", CompareSide("Precise"), CompareSide("Precise", model="tiny-b"))
        run = done.args[0]
        left, right = (chats.store.get_message(i) for i in run.answers)
        assert left is not None
        assert right is not None
        assert (left.model, right.model) == ("tiny-a", "tiny-b")
        assert left.status == right.status == "complete", (left.stats, right.stats)
        assert [s.label for s in run.sides] == ["Precise", "tiny-b · Precise"]
        # the server loads one model at a time: the first at its start, the second (swapped in)
        # only because the right side's request named it
        log = (tmp_path / "server.log").read_text(errors="replace")
        assert log.count("Model metadata:") == 2
