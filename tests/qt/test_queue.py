"""Messages typed and sent while an answer is being written wait in a queue under the answer
(editable, cancellable) and go out, in order, when it ends; a stopped or failed answer pauses
them. The window on a real AppController (FakeEngine with ``hold`` keeps an answer open), and
the controller on the real tiny model."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from PySide6.QtCore import Qt

from app.config import Settings
from app.core.engine import LlamaEngine
from app.core.hardware import SimulatedHardware
from app.core.planner import PlanOverrides, plan_load
from tests.fakes import FakeEngine

if TYPE_CHECKING:
    from pathlib import Path

    from app.ui.main_window import MainWindow
    from app.workers.controller import AppController

pytestmark = pytest.mark.qt_log_ignore(
    "This plugin does not support propagateSizeHints", "This plugin does not support raise"
)


@pytest.fixture
def engine() -> FakeEngine:
    fake = FakeEngine(pieces=["An answer."])  # one piece: shown at once, while the answer is held
    fake.hold = True
    return fake


@pytest.fixture
def window(fake_window, engine: FakeEngine) -> MainWindow:
    return fake_window(engine, (900, 700))


def _type_and_enter(qtbot, window: MainWindow, text: str) -> None:
    window.composer.set_text(text)
    qtbot.keyClick(window.composer.edit, Qt.Key.Key_Return)


def _user_texts(window: MainWindow) -> list[str]:
    return [w.text for w in window.chat_view.message_widgets() if w.role == "user"]


def _streaming(window: MainWindow) -> bool:
    last = window.chat_view.last_message("assistant")
    return last is not None and last.text == "An answer." and window.conversations.is_busy


def test_messages_sent_while_answering_queue_then_go_out_in_order(
    qtbot, window: MainWindow, engine: FakeEngine
) -> None:
    chats = window.conversations
    _type_and_enter(qtbot, window, "first")
    qtbot.waitUntil(lambda: _streaming(window), timeout=5000)
    assert window.composer.send_button.accessibleName() == "Stop"  # nothing typed: Stop
    window.composer.set_text("second")
    assert window.composer.send_button.accessibleName() == "Queue"
    qtbot.keyClick(window.composer.edit, Qt.Key.Key_Return)
    _type_and_enter(qtbot, window, "third")
    _type_and_enter(qtbot, window, "fourth")
    panel = window.chat_view.queue_panel
    assert panel.isVisibleTo(window)
    assert panel.texts() == ["second", "third", "fourth"]
    assert [w.tag.text() for w in panel.items] == ["Queued 1", "Queued 2", "Queued 3"]
    assert window.composer.text() == ""
    assert _user_texts(window) == ["first"]  # nothing of the queue is stored or shown as sent
    assert chats.is_busy

    # edit the second queued message in the composer; Enter keeps it in its place
    qtbot.mouseClick(panel.items[1].edit_button, Qt.MouseButton.LeftButton)
    assert window.composer.is_editing
    assert window.composer.text() == "third"
    window.composer.set_text("third, reworded")
    qtbot.keyClick(window.composer.edit, Qt.Key.Key_Return)
    assert panel.texts() == ["second", "third, reworded", "fourth"]
    # cancel the last one: it is never sent
    qtbot.mouseClick(panel.items[2].cancel_button, Qt.MouseButton.LeftButton)
    assert panel.texts() == ["second", "third, reworded"]

    engine.hold = False  # the answer ends as it would have: the queue goes out, one by one
    qtbot.waitUntil(lambda: not chats.is_busy and chats.queue() is None, timeout=10_000)
    assert _user_texts(window) == ["first", "second", "third, reworded"]
    stored = [(m.role, m.content) for m in chats.messages()]
    assert stored == [
        ("user", "first"),
        ("assistant", "An answer."),
        ("user", "second"),
        ("assistant", "An answer."),
        ("user", "third, reworded"),
        ("assistant", "An answer."),
    ]
    assert not panel.isVisibleTo(window)
    # each queued message was answered with the one before it (and its answer) in the prompt
    assert [m.content for m in engine.seen[-1] if m.role != "system"] == [c for _r, c in stored[:-1]]


def test_a_stopped_answer_pauses_the_queue_until_resume(
    qtbot, window: MainWindow, engine: FakeEngine
) -> None:
    chats = window.conversations
    _type_and_enter(qtbot, window, "first")
    qtbot.waitUntil(lambda: _streaming(window), timeout=5000)
    _type_and_enter(qtbot, window, "second")
    with qtbot.waitSignal(chats.generation_finished, timeout=5000):
        qtbot.keyClick(window.composer.edit, Qt.Key.Key_Escape)  # Esc with nothing typed: Stop
    panel = window.chat_view.queue_panel
    assert panel.texts() == ["second"]
    assert "stopped" in panel.note.text()
    assert panel.resume_button.isVisibleTo(window)
    assert not chats.is_busy
    assert _user_texts(window) == ["first"]

    engine.hold = False
    with qtbot.waitSignal(chats.generation_finished, timeout=5000):
        qtbot.mouseClick(panel.resume_button, Qt.MouseButton.LeftButton)
    assert _user_texts(window) == ["first", "second"]
    assert chats.queue() is None
    assert not panel.isVisibleTo(window)


def test_a_failed_answer_keeps_the_queue_waiting(qtbot, window: MainWindow, engine: FakeEngine) -> None:
    chats = window.conversations
    engine.pieces, engine.fail_at, engine.hold = ["An ", "answer."], 1, False
    _type_and_enter(qtbot, window, "first")
    _type_and_enter(qtbot, window, "second")  # busy from the send on: it is queued
    assert chats.queue() is not None
    qtbot.waitUntil(lambda: not chats.is_busy, timeout=5000)
    queue = chats.queue()
    assert queue is not None
    assert [i.text for i in queue.items] == ["second"]
    assert "failed" in queue.paused
    assert _user_texts(window) == ["first"]
    # a queued message can still be cancelled: nothing is left
    qtbot.mouseClick(window.chat_view.queue_panel.items[0].cancel_button, Qt.MouseButton.LeftButton)
    assert chats.queue() is None


def test_a_queued_message_being_edited_waits_for_the_edit(
    qtbot, window: MainWindow, engine: FakeEngine
) -> None:
    chats = window.conversations
    _type_and_enter(qtbot, window, "first")
    qtbot.waitUntil(lambda: _streaming(window), timeout=5000)
    _type_and_enter(qtbot, window, "second")
    qtbot.mouseClick(window.chat_view.queue_panel.items[0].edit_button, Qt.MouseButton.LeftButton)
    with qtbot.waitSignal(chats.generation_finished, timeout=5000):
        engine.hold = False
    assert not chats.is_busy  # the answer ended, but the message being edited waits
    assert _user_texts(window) == ["first"]
    window.composer.set_text("second, better")
    with qtbot.waitSignal(chats.generation_finished, timeout=5000):
        qtbot.keyClick(window.composer.edit, Qt.Key.Key_Return)
    assert _user_texts(window) == ["first", "second, better"]


def test_queue_on_the_real_tiny_model(qtbot, make_controller, tiny_model: Path) -> None:
    hardware = SimulatedHardware.cpu_only(ram_gb=32).probe()
    controller: AppController = make_controller(
        LlamaEngine(),
        Settings(n_threads=1, max_tokens=6),
        planner=lambda request: plan_load(request, hardware),
    )
    with qtbot.waitSignal(controller.models.model_loaded, timeout=60_000):
        controller.models.load_model(str(tiny_model), PlanOverrides(n_ctx=1024))
    chats = controller.conversations
    chats.send("the first question")
    assert chats.is_busy  # from the send until its answer ends: the next two wait
    chats.send("the second question")
    chats.send("the third question")
    assert [i.text for i in chats.queue().items] == ["the second question", "the third question"]
    qtbot.waitUntil(lambda: not chats.is_busy and chats.queue() is None, timeout=60_000)
    path = chats.messages()
    assert [m.content for m in path if m.role == "user"] == [
        "the first question",
        "the second question",
        "the third question",
    ]
    assert [m.role for m in path] == ["user", "assistant"] * 3
    assert all(m.status == "complete" for m in path)
