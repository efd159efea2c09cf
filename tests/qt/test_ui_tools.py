"""MCP tools in the real window: a real stdio MCP server (tests/tools/mcp_note_server.py, the
official SDK), the real approval card, a FakeEngine scripted to answer with a tool call (the
model's choice is the one thing faked). Allow, Always, Deny, a server that crashes mid-call, a
result capped, nothing started while tools are off, secrets kept out of the settings file."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from PySide6.QtCore import Qt

from app.core import tools
from app.export import to_json, to_markdown
from app.ui.main_window import MainWindow
from tests.fakes import FakeEngine

if TYPE_CHECKING:
    from app.config import AppPaths
    from app.workers.controller import AppController

pytestmark = pytest.mark.qt_log_ignore("This plugin does not support propagateSizeHints")

SERVER = Path(__file__).parents[1] / "tools" / "mcp_note_server.py"


def servers_json(notes: Path) -> str:
    return json.dumps(
        {
            "mcpServers": {
                "notes": {
                    "command": sys.executable,
                    "args": [str(SERVER)],
                    "env": {"NOTES_DIR": str(notes), "NOTES_API_TOKEN": "tok-very-secret-42"},
                }
            }
        }
    )


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine(n_ctx=8192)


@pytest.fixture
def setup(qtbot, make_controller, load_fake_model, engine: FakeEngine, tmp_path: Path):
    def make(enabled: bool = True) -> tuple[AppController, MainWindow]:
        (tmp_path / "todo.txt").write_text("buy milk", encoding="utf-8")
        controller = make_controller(engine)
        settings = controller.tools.settings_for(
            servers_json(tmp_path), ("notes",) if enabled else (), controller.settings
        )
        if enabled:
            with qtbot.waitSignal(
                controller.tools.servers_changed,
                timeout=30000,
                check_params_cb=lambda: bool(controller.tools.tools()),
            ):
                controller.update_settings(settings)
            assert controller.tools.status("notes") == ("on", "4 tools")
        else:
            controller.update_settings(settings)
        window = MainWindow(controller)
        qtbot.addWidget(window)
        window.show()
        qtbot.waitExposed(window)
        load_fake_model(controller)
        return controller, window

    return make


def ask(qtbot, controller: AppController, engine: FakeEngine, call_text: str) -> int:
    engine.pieces = [call_text]
    with qtbot.waitSignal(controller.conversations.tool_call_proposed, timeout=10000) as proposed:
        controller.conversations.send("What is 2 + 3? Use the tool.")
    return proposed.args[0]


def click(qtbot, button) -> None:
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)


def test_allow_once_runs_the_real_tool_and_the_model_continues(
    qtbot, setup, engine, app_paths: AppPaths, tmp_path: Path
) -> None:
    controller, window = setup()
    message_id = ask(qtbot, controller, engine, '{"name": "add", "parameters": {"a": 2, "b": 3}}')
    # the model was offered the tool in Llama 4's wording
    system = engine.seen[-1][0]
    assert system.role == "system"
    assert '"name": "add"' in system.content
    card = window.chat_view.tool_card(message_id)
    assert card is not None
    assert "add" in card.title.text()
    assert "notes" in card.title.text()
    assert json.loads(card.arguments.toPlainText()) == {"a": 2, "b": 3}
    assert controller.conversations.is_busy
    qtbot.waitUntil(card.isVisible)
    shot = tmp_path / "screenshot-tool-approval.png"  # docs/screenshot-tool-approval.png
    assert window.chat_view.grab().save(str(shot))

    engine.pieces = ["2 + 3 = 5."]
    with qtbot.waitSignal(controller.conversations.generation_finished, timeout=15000):
        click(qtbot, card.allow_once)
    assert card.record["state"] == tools.DONE
    assert card.record["result"] == "5"
    assert not card.buttons.isVisible()
    # the result reached the model as a tool message after the call
    roles = [(m.role, m.content) for m in engine.seen[-1]]
    assert roles[-2:] == [("assistant", '{"name": "add", "parameters": {"a": 2, "b": 3}}'), ("ipython", "5")]
    # stored with the conversation and exported
    conversation_id = controller.conversations.current_conversation_id
    stored = controller.store.messages(conversation_id)
    assert stored[-2].stats["tool_call"]["result"] == "5"
    assert stored[-1].content == "2 + 3 = 5."
    conversation = controller.store.get_conversation(conversation_id)
    assert conversation is not None
    exported = to_json(conversation, stored)
    assert '"tool_call"' in exported
    markdown = to_markdown(conversation, stored)
    assert "*Tool call: add (notes), done*" in markdown
    assert not controller.settings.tools_always_allowed
    # secrets: the key store has it, not the settings file, the export or the log
    assert "tok-very-secret-42" not in app_paths.settings_file.read_text(encoding="utf-8")
    assert "tok-very-secret-42" not in exported
    for log in app_paths.log_dir.glob("*.log"):
        assert "tok-very-secret-42" not in log.read_text(encoding="utf-8", errors="replace")
    assert "tok-very-secret-42" in controller.tools.servers_json_with_secrets()


def test_deny_tells_the_model(qtbot, setup, engine) -> None:
    controller, window = setup()
    message_id = ask(
        qtbot, controller, engine, '{"name": "read_note", "parameters": {"name": "../../etc/passwd"}}'
    )
    card = window.chat_view.tool_card(message_id)
    assert card is not None
    assert "../../etc/passwd" in card.arguments.toPlainText()  # shown verbatim before anything runs
    engine.pieces = ["I will not read it."]
    with qtbot.waitSignal(controller.conversations.generation_finished, timeout=15000):
        click(qtbot, card.deny)
    assert card.record["state"] == tools.DENIED
    assert engine.seen[-1][-1].role == "ipython"
    assert "denied" in engine.seen[-1][-1].content


def test_always_allow_runs_the_next_call_without_asking(qtbot, setup, engine) -> None:
    controller, window = setup()
    message_id = ask(qtbot, controller, engine, "[add(a=1, b=1)]")
    engine.pieces = ["[add(a=2, b=2)]"]
    updates: list[dict] = []
    controller.conversations.tool_call_updated.connect(lambda _m, r: updates.append(r))
    with (
        qtbot.assertNotEmitted(controller.conversations.tool_call_proposed),
        qtbot.waitSignal(
            controller.conversations.busy_changed, timeout=20000, check_params_cb=lambda busy: not busy
        ),
    ):
        engine_pieces_after = ["Done: 2 and 4."]

        def second_call_done(_m: int, record: dict) -> None:
            if record.get("result") == "4":
                engine.pieces = engine_pieces_after

        controller.conversations.tool_call_updated.connect(second_call_done)
        engine.pieces = ["[add(a=2, b=2)]"]
        click(qtbot, window.chat_view.tool_card(message_id).allow_always)
    assert controller.settings.tools_always_allowed == ("notes/add",)
    assert [r["result"] for r in updates if r.get("state") == tools.DONE] == ["2", "4"]


def test_a_server_that_crashes_mid_call(qtbot, setup, engine) -> None:
    controller, window = setup()
    message_id = ask(qtbot, controller, engine, '{"name": "crash", "parameters": {}}')
    engine.pieces = ["The tool failed."]
    with (
        qtbot.waitSignal(controller.notices.error_occurred, timeout=15000) as error,
        qtbot.waitSignal(controller.conversations.generation_finished, timeout=15000),
    ):
        click(qtbot, window.chat_view.tool_card(message_id).allow_once)
    assert "stopped while running crash" in error.args[0]
    assert window.chat_view.tool_card(message_id).record["state"] == tools.FAILED
    assert controller.tools.status("notes")[0] == "failed"
    assert controller.tools.tools() == []


def test_a_huge_result_is_capped(qtbot, setup, engine) -> None:
    controller, window = setup()
    message_id = ask(qtbot, controller, engine, '{"name": "big", "parameters": {"n": 5000000}}')
    engine.pieces = ["That is long."]
    with qtbot.waitSignal(controller.conversations.generation_finished, timeout=30000):
        click(qtbot, window.chat_view.tool_card(message_id).allow_once)
    record = window.chat_view.tool_card(message_id).record
    assert record["cut"]
    assert len(record["result"]) < tools.RESULT_LIMIT + 200
    assert "5,000,000 characters" in engine.seen[-1][-1].content


def test_nothing_starts_while_tools_are_off(qtbot, setup, engine) -> None:
    controller, _window = setup(enabled=False)
    assert not controller.tools.hub.started  # no thread, no child process
    assert controller.tools.servers()[0].name == "notes"
    engine.pieces = ['{"name": "add", "parameters": {"a": 2, "b": 3}}']
    with (
        qtbot.assertNotEmitted(controller.conversations.tool_call_proposed),
        qtbot.waitSignal(controller.conversations.generation_finished, timeout=10000),
    ):
        controller.conversations.send("What is 2 + 3?")
    assert "function" not in engine.seen[-1][0].content
    assert not controller.tools.hub.started


def test_settings_tools_pasted_json_turned_on_starts_the_server(qtbot, setup, tmp_path: Path) -> None:
    controller, window = setup(enabled=False)
    dialog = window.open_settings()
    section = dialog.tools
    section.editor.setPlainText("{ not json")
    assert section.error.isVisible()
    dialog.accept()  # refused: the error stays under the editor
    assert dialog.isVisible()
    section.editor.setPlainText(servers_json(tmp_path))
    assert not section.error.isVisible()
    item = section.list.item(0)
    assert item.text().startswith("notes")
    assert "tok-very-secret-42" not in item.text()
    with qtbot.waitSignal(
        controller.tools.servers_changed,
        timeout=30000,
        check_params_cb=lambda: bool(controller.tools.tools()),
    ):
        item.setCheckState(Qt.CheckState.Checked)
        dialog.accept()
    assert controller.settings.tools_enabled == ("notes",)
    assert controller.tools.status("notes")[0] == "on"
    assert controller.tools.hub.running() == ["notes"]
