"""MainWindow on a real AppController around a FakeEngine: empty state, loading, status bar, errors,
settings."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication

from app.config import load_settings
from app.core.units import format_tokens
from app.ui.chat_view import ChatView
from app.ui.main_window import MainWindow
from app.ui.settings_dialog import SettingsDialog
from tests.fakes import FakeEngine

if TYPE_CHECKING:
    from app.config import AppPaths, Settings
    from app.workers.controller import AppController

pytestmark = pytest.mark.qt_log_ignore("This plugin does not support propagateSizeHints")


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine(n_ctx=8192)


@pytest.fixture
def controller(make_controller, engine: FakeEngine) -> AppController:
    c = make_controller(engine)
    c.store.create_conversation("First chat")
    c.store.create_conversation("Second chat")  # the more recent one
    return c


@pytest.fixture
def window(qtbot, controller: AppController) -> MainWindow:
    win = MainWindow(controller)
    qtbot.addWidget(win)
    win.show()
    qtbot.waitExposed(win)
    return win


def conversation_id(controller: AppController, title: str) -> int:
    return next(c.id for c in controller.store.list_conversations() if c.title == title)


def test_empty_state_has_a_working_open_button(qtbot, window: MainWindow, controller) -> None:
    assert window.chat_view.current_page() == ChatView.PAGE_NO_MODEL
    assert window.model_label.text() == "No model"
    assert not window.composer.send_button.isEnabled()
    seen_dirs: list[str] = []

    def choose(_parent: Any, start_dir: str) -> str:
        seen_dirs.append(start_dir)
        return "/models/scout.gguf"

    window.choose_model_file = choose
    button = window.chat_view.no_model_page.button
    with (
        qtbot.waitSignal(controller.models.model_loaded, timeout=5000) as loaded,
        qtbot.waitSignal(controller.models.model_load_started) as started,
    ):
        qtbot.mouseClick(button, Qt.MouseButton.LeftButton)
    assert started.args == ["/models/scout.gguf"]
    assert loaded.args[0].path == Path("/models/scout.gguf")
    assert len(seen_dirs) == 1
    window.choose_model_file = lambda _p, _d: ""  # cancelled dialog: nothing happens
    with qtbot.assertNotEmitted(controller.models.model_load_started):
        window.open_model_action.trigger()


def test_load_progress_cancel_and_loaded(qtbot, window: MainWindow, controller, engine) -> None:
    engine.delay = 0.2  # eleven steps: about two seconds to look at the progress and cancel
    fractions: list[float] = []
    controller.models.model_load_progress.connect(fractions.append)
    controller.models.load_model("/models/scout.gguf")
    assert window.load_progress.isVisible()
    assert window.cancel_load_button.isVisible()
    assert "scout.gguf" in window.load_label.text()
    qtbot.waitUntil(lambda: bool(fractions) and fractions[-1] > 0, timeout=5000)
    assert window.load_progress.value() == round(fractions[-1] * 1000)
    with qtbot.waitSignal(controller.models.model_load_failed, timeout=5000) as failed:
        qtbot.mouseClick(window.cancel_load_button, Qt.MouseButton.LeftButton)
        assert window.load_label.text() == "Cancelling…"
        assert not window.cancel_load_button.isEnabled()
    assert failed.args[0] == "Loading was cancelled."
    assert controller.models.model_info is None
    assert not window.load_progress.isVisible()
    assert window.error_banner.isVisible()
    assert window.error_banner.text() == "Loading was cancelled."

    engine.delay = 0.0
    with (
        qtbot.waitSignal(controller.conversations.context_changed, timeout=5000) as context,
        qtbot.waitSignal(controller.models.model_loaded, timeout=5000) as loaded,
    ):
        controller.models.load_model("/models/scout.gguf")
        assert window.load_progress.isVisible()
    info = loaded.args[0]
    assert not window.load_progress.isVisible()
    assert window.model_label.text() == info.name
    assert window.chat_view.current_page() == ChatView.PAGE_EMPTY
    used, n_ctx = context.args  # the next turn's preview, once the model is there
    assert n_ctx == 8192
    assert window.context_label.text() == f"Context {format_tokens(used)} / 8.2k"
    controller.conversations.context_changed.emit(2048, 8192)
    assert window.context_label.text() == "Context 2.0k / 8.2k"
    assert window.context_meter.value() == 250


def test_conversation_streaming_and_status_bar(
    qtbot, window: MainWindow, controller, engine, load_fake_model
) -> None:
    engine.pieces, engine.delay, engine.hold = ["Hi ", "there"], 0.05, True
    load_fake_model(controller)
    first = conversation_id(controller, "First chat")
    controller.conversations.open_conversation(first)
    assert window.sidebar.current_id() == first
    assert window.windowTitle() == "First chat — Scout Chat"
    added: list[Any] = []
    controller.conversations.message_added.connect(added.append)
    window.composer.focus()
    qtbot.keyClicks(window.composer.edit, "Hello?")
    with qtbot.waitSignal(controller.conversations.busy_changed) as busy:
        qtbot.keyClick(window.composer.edit, Qt.Key.Key_Return)
    assert busy.args == [True]
    assert window.composer.is_busy
    assert window.stop_action.isEnabled()
    qtbot.waitUntil(lambda: len(added) == 2, timeout=5000)
    question, placeholder = added
    assert (question.role, question.content) == ("user", "Hello?")
    assert (placeholder.role, placeholder.status) == ("assistant", "streaming")
    widget = window.chat_view.message_widget(placeholder.id)
    qtbot.waitUntil(lambda: widget.text == "Hi there", timeout=2000)
    with qtbot.waitSignal(controller.conversations.generation_finished, timeout=5000) as finished:
        window.stop_action.trigger()
    assert finished.args[0] == placeholder.id
    assert finished.args[1].finish_reason == "cancelled"
    saved = controller.store.get_message(placeholder.id)
    assert (saved.content, saved.status) == ("Hi there", "cancelled")
    assert not window.composer.is_busy
    assert window.speed_label.text() == "100.0 tok/s"  # the FakeEngine's speed
    window.copy_answer_action.trigger()
    assert QGuiApplication.clipboard().text() == "Hi there"
    assert window.regenerate_action.isEnabled()
    with (
        qtbot.waitSignal(controller.conversations.busy_changed) as busy,
        qtbot.waitSignal(controller.conversations.message_removed) as removed,
    ):
        window.regenerate_action.trigger()
    assert removed.args == [placeholder.id]
    assert busy.args == [True]
    assert window.chat_view.message_widget(placeholder.id) is None
    with qtbot.waitSignal(controller.conversations.generation_finished, timeout=5000):
        window.stop_action.trigger()


def test_send_and_edit_last_message(qtbot, window: MainWindow, controller, load_fake_model) -> None:
    load_fake_model(controller)
    window.composer.focus()
    qtbot.keyClicks(window.composer.edit, "What is Scout?")
    with qtbot.waitSignal(controller.conversations.generation_finished, timeout=5000):
        qtbot.keyClick(window.composer.edit, Qt.Key.Key_Return)
    stored = controller.conversations.messages()
    assert [(m.role, m.content) for m in stored] == [
        ("user", "What is Scout?"),
        ("assistant", "Hello there!"),
    ]
    window.edit_last_action.trigger()
    assert window.composer.is_editing
    assert window.composer.text() == "What is Scout?"
    qtbot.keyClicks(window.composer.edit, " Briefly.")
    removed: list[int] = []
    controller.conversations.message_removed.connect(removed.append)
    with qtbot.waitSignal(controller.conversations.generation_finished, timeout=5000):
        qtbot.keyClick(window.composer.edit, Qt.Key.Key_Return)
    assert removed == [m.id for m in stored]
    edited = controller.conversations.messages()
    assert [(m.role, m.content) for m in edited] == [
        ("user", "What is Scout? Briefly."),
        ("assistant", "Hello there!"),
    ]


def test_sidebar_commands_reach_the_controller(qtbot, window: MainWindow, controller) -> None:
    first = conversation_id(controller, "First chat")
    second = conversation_id(controller, "Second chat")
    assert window.sidebar.model.index(1).data() == "First chat"
    with qtbot.waitSignal(controller.conversations.conversation_opened) as opened:
        window.sidebar.list_view.setCurrentIndex(window.sidebar.model.index(1))
    assert opened.args == [first, []]
    assert controller.conversations.current_conversation_id == first
    with qtbot.waitSignal(controller.conversations.conversation_opened) as opened:
        qtbot.mouseClick(window.sidebar.new_button, Qt.MouseButton.LeftButton)
    assert opened.args == [0, []]
    assert controller.conversations.current_conversation_id is None
    window.sidebar.confirm_delete = lambda _p, _t: True
    with qtbot.waitSignal(controller.conversations.conversations_changed):
        window.sidebar.delete(second)
    assert controller.store.get_conversation(second) is None
    assert window.sidebar.model.rowCount() == 1
    controller.store.create_conversation("Third chat")
    controller.conversations.conversations_changed.emit()
    assert window.sidebar.model.rowCount() == 2
    assert window.sidebar.model.index(0).data() == "Third chat"


def test_error_banner_shows_and_dismisses(
    qtbot, window: MainWindow, controller, engine, load_fake_model
) -> None:
    assert not window.error_banner.isVisible()
    with qtbot.waitSignal(controller.notices.error_occurred):
        controller.conversations.send("Hello?")  # no model yet
    assert window.error_banner.isVisible()
    assert window.error_banner.text() == "Load a model first: File → Open model file…"
    qtbot.mouseClick(window.error_banner.close_button, Qt.MouseButton.LeftButton)
    assert not window.error_banner.isVisible()
    engine.fail_at = 0
    load_fake_model(controller)
    with qtbot.waitSignal(controller.conversations.generation_failed, timeout=5000):
        controller.conversations.send("Hello?")
    assert window.error_banner.isVisible()
    assert window.error_banner.text() == "Something went wrong: boom"
    assert window.error_banner.label.toolTip() == "RuntimeError: boom"


def test_settings_dialog_round_trip(qtbot, window: MainWindow, controller, app_paths: AppPaths) -> None:
    updates: list[Settings] = []
    controller.preferences.settings_changed.connect(lambda _old, new: updates.append(new))
    dialog = window.open_settings()
    assert isinstance(dialog, SettingsDialog)
    dialog.temperature.setValue(1.1)
    dialog.top_p.setValue(0.5)
    dialog.min_p.setValue(0.2)
    dialog.max_tokens.setValue(512)
    dialog.n_ctx.setValue(4096)
    dialog.system_prompt.setPlainText("Be terse.")
    dialog.restore_button.click()
    assert (dialog.temperature.value(), dialog.top_p.value(), dialog.min_p.value()) == (0.6, 0.9, 0.01)
    dialog.temperature.setValue(0.7)
    dialog.accept()
    assert len(updates) == 1
    new = updates[0]
    assert (new.temperature, new.top_p, new.min_p, new.max_tokens, new.n_ctx) == (0.7, 0.9, 0.01, 2048, 4096)
    assert new.system_prompt == "Be terse."
    assert new.theme == "system"
    assert controller.settings == new
    assert load_settings(app_paths) == new  # saved


def test_geometry_is_saved_and_restored(qtbot, controller) -> None:
    first = MainWindow(controller)
    qtbot.addWidget(first)
    first.resize(740, 500)  # the offscreen screen is 800x600
    first.show()
    qtbot.waitExposed(first)
    first.close()
    saved = controller.settings.window_geometry
    assert saved
    second = MainWindow(controller)
    qtbot.addWidget(second)
    assert (second.width(), second.height()) == (740, 500)


def test_about_dialog_opens(qtbot, window: MainWindow) -> None:
    window.about_action.trigger()
    from app.ui.about_dialog import AboutDialog

    dialog = window.findChild(AboutDialog)
    assert dialog is not None
    assert "MIT" in dialog.text.text()
    assert "Llama 4 Community License" in dialog.text.text()
    dialog.close()


def test_the_prompt_progress_shows_the_time_left(
    qtbot, controller: AppController, window: MainWindow
) -> None:
    """The worker's progress reports (tokens read of the prompt) through the real controller: the
    status bar's "Reading the prompt…" gains the time left from the rate measured meanwhile."""
    conversations = controller.conversations
    times = iter([100.0, 102.0])
    conversations.clock = lambda: next(times)
    conversations._gen_id = 41  # an answer in progress (its prompt being read)
    worker = controller._inference.worker
    worker.prompt_progress.emit(41, 512, 4096)
    qtbot.waitUntil(lambda: "Reading the prompt… 12%" in window.status.activity_label.text())
    worker.prompt_progress.emit(41, 1024, 4096)  # 512 tokens in 2 s: 3,072 left take 12 s
    qtbot.waitUntil(
        lambda: window.status.activity_label.text() == "Reading the prompt… 25% — about 10 s left"
    )
    worker.prompt_progress.emit(40, 2048, 4096)  # a stale answer's report is ignored
    assert "25%" in window.status.activity_label.text()
