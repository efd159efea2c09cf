"""The app on a model served elsewhere (a real llama-cpp-python server on 127.0.0.1): a server
that dies mid-answer leaves the answer "interrupted" with its text, as a local engine's crash does."""

from __future__ import annotations

from typing import TYPE_CHECKING

from app.config import Settings
from app.core.engine.remote import ServerConfig
from tests.remote_servers import API_KEY, close_remote_engines, llama_cpp_server

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["close_remote_engines"]  # the fixture, used by this module


def test_a_server_killed_mid_answer_leaves_the_answer_interrupted(
    qtbot, make_controller, tiny_model: Path, tmp_path: Path
) -> None:
    with llama_cpp_server(tiny_model, tmp_path / "doomed.log", n_ctx=2048) as doomed:
        controller = make_controller(settings=Settings(max_tokens=1900))
        with qtbot.waitSignal(controller.models.model_loaded, timeout=60_000) as loaded:
            controller.models.connect_server(ServerConfig(doomed.url, api_key=API_KEY))
        assert loaded.args[0].server
        with qtbot.waitSignal(controller.conversations.tokens_streamed, timeout=60_000):
            controller.conversations.send("Tell me a very long story.")
        with qtbot.waitSignal(controller.conversations.generation_failed, timeout=60_000) as failed:
            doomed.kill()
    message_id, message, _detail = failed.args
    assert "The text so far is kept" in message
    stored = controller.store.get_message(message_id)
    assert stored.status == "interrupted"  # as after a local stop or crash, not "error"
    assert stored.content  # the partial answer
