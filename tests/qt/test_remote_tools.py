"""MCP tools with a remote engine, with the same approval as a local model: a real RemoteEngine on
an OpenAI-compatible SSE server on 127.0.0.1 whose answers are scripted (first a Llama 4 tool
call, then the final answer: no model here emits a call on demand), the real MCP note server as
the tool (it logs each call it runs), the real approval card clicked in the window."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from PySide6.QtCore import Qt

from app.core import tools
from app.core.engine.remote import ServerConfig
from app.ui.main_window import MainWindow
from tests.remote_servers import scripted_server

if TYPE_CHECKING:
    from collections.abc import Iterator

    from app.workers.controller import AppController
    from tests.remote_servers import ScriptedServer

pytestmark = pytest.mark.qt_log_ignore("This plugin does not support propagateSizeHints")

SERVER = Path(__file__).parents[1] / "tools" / "mcp_note_server.py"
CALL = '{"name": "read_note", "parameters": {"name": "todo"}}'
CALL_PIECES = ['{"name": "read_', 'note", "parameters": ', '{"name": "todo"}}']  # as a model streams it


@pytest.fixture
def served() -> Iterator[tuple[str, ScriptedServer]]:
    with scripted_server([CALL_PIECES, ["Your list says: buy milk."]]) as running:
        yield running


@pytest.fixture
def remote_app(qtbot, make_controller, served, tmp_path: Path) -> tuple[AppController, MainWindow, Path]:
    """The app on the scripted server, the note server on, the window shown; and the call log."""
    url, _script = served
    (tmp_path / "todo.txt").write_text("buy milk", encoding="utf-8")
    call_log = tmp_path / "calls.log"
    servers = {
        "notes": {
            "command": sys.executable,
            "args": [str(SERVER)],
            "env": {"NOTES_DIR": str(tmp_path), "NOTES_CALL_LOG": str(call_log)},
        }
    }
    controller = make_controller()
    settings = controller.tools.settings_for(
        json.dumps({"mcpServers": servers}), ("notes",), controller.settings
    )
    with qtbot.waitSignal(
        controller.tools.servers_changed,
        timeout=30000,
        check_params_cb=lambda: bool(controller.tools.tools()),
    ):
        controller.update_settings(settings)
    with qtbot.waitSignal(controller.models.model_loaded, timeout=30000) as loaded:
        controller.models.connect_server(ServerConfig(url))
    assert loaded.args[0].server  # the model answers from the server, not from this computer
    window = MainWindow(controller)
    qtbot.addWidget(window)
    window.show()
    qtbot.waitExposed(window)
    return controller, window, call_log


def calls_run(call_log: Path) -> list[str]:
    return call_log.read_text(encoding="utf-8").split() if call_log.exists() else []


def propose(qtbot, controller: AppController, window: MainWindow, script: ScriptedServer) -> Any:
    """Ask; the server answers with the call; the card waits for the user. Returns the card."""
    with qtbot.waitSignal(controller.conversations.tool_call_proposed, timeout=30000) as proposed:
        controller.conversations.send("What is on my todo list?")
    card = window.chat_view.tool_card(proposed.args[0])
    assert card is not None
    qtbot.waitUntil(card.isVisible)
    assert "read_note" in card.title.text()
    assert json.loads(card.arguments.toPlainText()) == {"name": "todo"}
    # the tools were offered in the system message of the request the server received
    first = script.requests[0]["messages"]
    assert first[0]["role"] == "system"
    assert tools.TOOLS_INTRO.strip() in first[0]["content"]
    assert '"name": "read_note"' in first[0]["content"]
    assert len(script.requests) == 1  # nothing more is asked while the card waits
    return card


def test_allow_runs_the_tool_only_then_and_sends_its_result_to_the_server(qtbot, remote_app, served) -> None:
    controller, window, call_log = remote_app
    _url, script = served
    card = propose(qtbot, controller, window, script)
    assert calls_run(call_log) == []  # the call waits for approval: the tool has not run
    assert card.record["state"] == tools.PENDING

    with qtbot.waitSignal(controller.conversations.generation_finished, timeout=30000):
        qtbot.mouseClick(card.allow_once, Qt.MouseButton.LeftButton)
    assert calls_run(call_log) == ["read_note"]
    assert card.record["state"] == tools.DONE
    assert card.record["result"] == "buy milk"
    assert len(script.requests) == 2
    second = script.requests[1]["messages"]
    assert tools.TOOLS_INTRO.strip() in second[0]["content"]  # still offered
    # the call as the model wrote it, then its result in OpenAI's "tool" message (which servers
    # checking OpenAI's schema accept, and Scout's template renders as its ipython turn)
    assert second[-2] == {"role": "assistant", "content": CALL}
    assert second[-1]["role"] == "tool"
    assert second[-1]["content"] == "buy milk"
    assert second[-1]["tool_call_id"]
    stored = controller.store.messages(controller.conversations.current_conversation_id)
    assert stored[-1].content == "Your list says: buy milk."


def test_deny_never_runs_the_tool_and_tells_the_model(qtbot, remote_app, served) -> None:
    controller, window, call_log = remote_app
    _url, script = served
    card = propose(qtbot, controller, window, script)
    with qtbot.waitSignal(controller.conversations.generation_finished, timeout=30000):
        qtbot.mouseClick(card.deny, Qt.MouseButton.LeftButton)
    assert card.record["state"] == tools.DENIED
    assert calls_run(call_log) == []
    second = script.requests[1]["messages"]
    assert second[-1]["role"] == "tool"
    assert "denied" in second[-1]["content"]
    assert second[-2] == {"role": "assistant", "content": CALL}
