"""Branching conversations in the real window on the real tiny model: regenerate and edit make
branches, ‹ › switches them, search jumps to a message on a hidden branch, and switching keeps
the KV cache's shared prefix (real llama.cpp, real SQLite, real widgets offscreen)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from PySide6.QtCore import Qt

from app.config import Settings
from app.core.engine import LlamaEngine
from app.core.hardware import SimulatedHardware
from app.core.planner import PlanOverrides, plan_load
from app.ui.message_widget import MessageWidget

if TYPE_CHECKING:
    from pathlib import Path

    from app.ui.main_window import MainWindow
    from app.workers.controller import AppController

pytestmark = pytest.mark.qt_log_ignore(
    "This plugin does not support propagateSizeHints", "This plugin does not support raise"
)
SMALL = PlanOverrides(n_ctx=1024)


@pytest.fixture
def real(make_controller, qtbot, tiny_model: Path) -> AppController:
    hardware = SimulatedHardware.cpu_only(ram_gb=32).probe()
    controller = make_controller(
        LlamaEngine(),
        Settings(n_threads=1, max_tokens=6),
        planner=lambda request: plan_load(request, hardware),
    )
    with qtbot.waitSignal(controller.models.model_loaded, timeout=60_000):
        controller.models.load_model(str(tiny_model), SMALL)
    return controller


@pytest.fixture
def window(show_window, real: AppController) -> MainWindow:
    return show_window(real, (900, 700))


def _send(qtbot, window: MainWindow, text: str) -> object:
    with qtbot.waitSignal(window.conversations.generation_finished, timeout=60_000) as done:
        window.composer.set_text(text)
        qtbot.keyClick(window.composer.edit, Qt.Key.Key_Return)
    return done.args[1]


def _shown(window: MainWindow) -> list[tuple[str, str]]:
    return [(w.role, w.text) for w in window.chat_view.message_widgets() if w.role != "notice"]


def _widget(window: MainWindow, role: str, index: int) -> MessageWidget:
    widgets = [
        w for w in window.chat_view.message_widgets() if isinstance(w, MessageWidget) and w.role == role
    ]
    return widgets[index]


def test_regenerate_and_edit_make_branches_and_the_arrows_switch_them(qtbot, window: MainWindow) -> None:
    chats = window.conversations
    _send(qtbot, window, "first question")
    _send(qtbot, window, "second question")
    first_path = _shown(window)
    old_answer = _widget(window, "assistant", 1)
    assert not old_answer.branch_box.isVisibleTo(window)

    # regenerate the last answer: a second branch beside it, the first kept
    with qtbot.waitSignal(chats.generation_finished, timeout=60_000):
        qtbot.mouseClick(old_answer.regenerate_button, Qt.MouseButton.LeftButton)
    new_answer = _widget(window, "assistant", 1)
    assert new_answer.message_id != old_answer.message_id
    assert new_answer.branch_box.isVisibleTo(window)
    assert new_answer.branch_label.text() == "2/2"
    assert not new_answer.branch_next.isEnabled()
    assert new_answer.branch_prev.isEnabled()
    assert len(chats.store.tree(chats.current_conversation_id)) == 5

    qtbot.mouseClick(new_answer.branch_prev, Qt.MouseButton.LeftButton)
    assert _shown(window) == first_path
    assert _widget(window, "assistant", 1).branch_label.text() == "1/2"

    # edit the FIRST question: a new first message; the old conversation stays one ‹ away
    first_user = _widget(window, "user", 0)
    qtbot.mouseClick(first_user.edit_button, Qt.MouseButton.LeftButton)
    assert window.composer.text() == "first question"
    with qtbot.waitSignal(chats.generation_finished, timeout=60_000):
        window.composer.set_text("zebra question")
        qtbot.keyClick(window.composer.edit, Qt.Key.Key_Return)
    assert [text for role, text in _shown(window) if role == "user"] == ["zebra question"]
    edited = _widget(window, "user", 0)
    assert edited.branch_label.text() == "2/2"
    qtbot.mouseClick(edited.branch_prev, Qt.MouseButton.LeftButton)
    assert _shown(window) == first_path  # the branch shown last on that side comes back
    # the store's path is what the chat shows, and reopening the conversation keeps it
    stored = [(m.role, m.content) for m in chats.messages() if m.role != "notice"]
    assert stored == first_path
    chats.open_conversation(chats.current_conversation_id)
    assert _shown(window) == first_path

    # no switching while an answer is written
    window.chat_view.set_busy(True)
    assert not _widget(window, "user", 0).branch_next.isEnabled()
    window.chat_view.set_busy(False)


def test_search_finds_a_hidden_branch_and_jumps_to_it(qtbot, window: MainWindow) -> None:
    chats = window.conversations
    _send(qtbot, window, "tell me about giraffes")
    first_user = _widget(window, "user", 0)
    qtbot.mouseClick(first_user.edit_button, Qt.MouseButton.LeftButton)
    with qtbot.waitSignal(chats.generation_finished, timeout=60_000):
        window.composer.set_text("tell me about otters")
        qtbot.keyClick(window.composer.edit, Qt.Key.Key_Return)
    assert _widget(window, "user", 0).text == "tell me about otters"
    chats.new_conversation()  # somewhere else entirely

    dialog = window.open_global_search()
    dialog.set_query("giraffes")
    assert dialog.hit_count() == 1
    with qtbot.waitSignal(chats.path_changed, timeout=5000):
        dialog.open_current()
    assert _widget(window, "user", 0).text == "tell me about giraffes"
    assert _widget(window, "user", 0).branch_label.text() == "1/2"
    dialog.close()


def test_the_next_answer_after_a_switch_reads_only_from_the_branch_point(qtbot, window: MainWindow) -> None:
    chats = window.conversations
    for i in range(4):
        _send(qtbot, window, f"question number {i} about the long history of maps")
    # a branch at the third answer, then back to the first branch
    third = _widget(window, "assistant", 2)
    with qtbot.waitSignal(chats.generation_finished, timeout=60_000):
        qtbot.mouseClick(third.regenerate_button, Qt.MouseButton.LeftButton)
    qtbot.mouseClick(_widget(window, "assistant", 2).branch_prev, Qt.MouseButton.LeftButton)
    assert len(_shown(window)) == 8
    stats = _send(qtbot, window, "one more question")
    # the cache held the shared beginning (up to the third question): only the rest is read
    assert 0 < stats.prompt_tokens_evaluated < stats.prompt_tokens
    shared = chats.messages()[:5]
    assert (
        stats.prompt_tokens - stats.prompt_tokens_evaluated >= len(" ".join(m.content for m in shared)) // 8
    )


def test_an_edited_answer_is_a_branch_and_the_next_turn_sees_it(qtbot, window: MainWindow) -> None:
    chats = window.conversations
    _send(qtbot, window, "what is two plus two")
    answer = _widget(window, "assistant", 0)
    model_text = answer.text
    qtbot.mouseClick(answer.edit_button, Qt.MouseButton.LeftButton)
    assert window.composer.text() == model_text
    with qtbot.waitSignal(chats.path_changed, timeout=5000):
        window.composer.set_text("Four.")
        qtbot.keyClick(window.composer.edit, Qt.Key.Key_Return)
    assert not chats.is_busy  # kept as written, nothing generated
    edited = _widget(window, "assistant", 0)
    assert (edited.text, edited.branch_label.text()) == ("Four.", "2/2")
    assert chats.store.get_message(edited.message_id).stats["edited"] is True
    _send(qtbot, window, "and three plus three")
    turn = chats.messages()
    assert [m.content for m in turn[:2]] == ["what is two plus two", "Four."]
    qtbot.mouseClick(_widget(window, "assistant", 0).branch_prev, Qt.MouseButton.LeftButton)
    assert _widget(window, "assistant", 0).text == model_text
