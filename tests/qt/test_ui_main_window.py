"""MainWindow against a AppController double: empty state, loading, status bar, errors, settings."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication

from app.ui.chat_view import ChatView
from app.ui.main_window import MainWindow
from app.ui.settings_dialog import SettingsDialog
from tests.qt.test_ui_doubles import Conv, FakeController, msg, stats

if TYPE_CHECKING:
    from app.config import Settings

pytestmark = pytest.mark.qt_log_ignore("This plugin does not support propagateSizeHints")


@pytest.fixture
def controller() -> FakeController:
    return FakeController([Conv(1, "First chat"), Conv(2, "Second chat", updated_at="2025-02-01T00:00:00")])


@pytest.fixture
def window(qtbot, controller: FakeController) -> MainWindow:
    win = MainWindow(controller)
    qtbot.addWidget(win)
    win.show()
    qtbot.waitExposed(win)
    return win


def test_empty_state_has_a_working_open_button(qtbot, window: MainWindow, controller) -> None:
    assert window.chat_view.current_page() == ChatView.PAGE_NO_MODEL
    assert window.model_label.text() == "No model"
    assert not window.composer.send_button.isEnabled()
    seen_dirs: list[str] = []

    def choose(_parent, start_dir: str) -> str:
        seen_dirs.append(start_dir)
        return "/models/scout.gguf"

    window.choose_model_file = choose
    button = window.chat_view.no_model_page.button
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)
    assert controller.called("load_model") == [("/models/scout.gguf",)]
    assert len(seen_dirs) == 1
    window.choose_model_file = lambda _p, _d: ""  # cancelled dialog: nothing happens
    window.open_model_action.trigger()
    assert len(controller.called("load_model")) == 1


def test_load_progress_cancel_and_loaded(qtbot, window: MainWindow, controller) -> None:
    controller.models.model_load_started.emit("/models/scout.gguf")
    assert window.load_progress.isVisible()
    assert window.cancel_load_button.isVisible()
    assert "scout.gguf" in window.load_label.text()
    controller.models.model_load_progress.emit(0.25)
    assert window.load_progress.value() == 250
    qtbot.mouseClick(window.cancel_load_button, Qt.MouseButton.LeftButton)
    assert controller.called("cancel_load") == [()]
    controller.models.model_load_failed.emit("Loading was cancelled.", "")
    assert not window.load_progress.isVisible()
    assert window.error_banner.isVisible()

    controller.models.model_load_started.emit("/models/scout.gguf")
    info = controller.load()
    assert not window.load_progress.isVisible()
    assert window.model_label.text() == info.name
    assert window.chat_view.current_page() == ChatView.PAGE_EMPTY
    controller.conversations.context_changed.emit(2048, 8192)
    assert window.context_label.text() == "Context 2.0k / 8.2k"
    assert window.context_meter.value() == 250


def test_conversation_streaming_and_status_bar(qtbot, window: MainWindow, controller) -> None:
    controller.load()
    question = msg("user", "Hello?")
    controller.conversations.conversation_opened.emit(1, [question])
    assert window.sidebar.current_id() == 1
    assert window.windowTitle() == "First chat — Scout Chat"
    placeholder = msg("assistant", "", status="streaming")
    controller.conversations.message_added.emit(placeholder)
    controller.conversations.busy_changed.emit(True)
    assert window.composer.is_busy
    assert window.stop_action.isEnabled()
    controller.conversations.tokens_streamed.emit(placeholder.id, "Hi ")
    controller.conversations.tokens_streamed.emit(placeholder.id, "there")
    widget = window.chat_view.message_widget(placeholder.id)
    qtbot.waitUntil(lambda: widget.text == "Hi there", timeout=2000)
    window.stop_action.trigger()
    assert controller.called("stop") == [()]
    controller.conversations.generation_finished.emit(placeholder.id, stats(tps=37.25))
    controller.conversations.busy_changed.emit(False)
    assert window.speed_label.text() == "37.2 tok/s"
    assert window.regenerate_action.isEnabled()
    window.regenerate_action.trigger()
    assert controller.called("regenerate") == [()]
    window.copy_answer_action.trigger()
    assert QGuiApplication.clipboard().text() == "Hi there"


def test_send_and_edit_last_message(qtbot, window: MainWindow, controller) -> None:
    controller.load()
    window.composer.focus()
    qtbot.keyClicks(window.composer.edit, "What is Scout?")
    qtbot.keyClick(window.composer.edit, Qt.Key.Key_Return)
    assert controller.called("send") == [("What is Scout?",)]
    controller.conversations.conversation_opened.emit(
        1, [msg("user", "What is Scout?"), msg("assistant", "A model.")]
    )
    window.edit_last_action.trigger()
    assert window.composer.is_editing
    assert window.composer.text() == "What is Scout?"
    qtbot.keyClicks(window.composer.edit, " Briefly.")
    qtbot.keyClick(window.composer.edit, Qt.Key.Key_Return)
    assert controller.called("edit_last_user_message") == [("What is Scout? Briefly.",)]


def test_sidebar_commands_reach_the_controller(qtbot, window: MainWindow, controller) -> None:
    window.sidebar.list_view.setCurrentIndex(window.sidebar.model.index(1))
    assert controller.called("open_conversation") == [(1,)]
    qtbot.mouseClick(window.sidebar.new_button, Qt.MouseButton.LeftButton)
    assert controller.called("new_conversation") == [()]
    window.sidebar.confirm_delete = lambda _p, _t: True
    window.sidebar.delete(2)
    assert controller.called("delete_conversation") == [(2,)]
    controller.convs.append(Conv(3, "Third chat", updated_at="2026-01-01T00:00:00"))
    controller.conversations.conversations_changed.emit()
    assert window.sidebar.model.rowCount() == 3


def test_error_banner_shows_and_dismisses(qtbot, window: MainWindow, controller) -> None:
    assert not window.error_banner.isVisible()
    controller.notices.error_occurred.emit("The model file is not a GGUF file.")
    assert window.error_banner.isVisible()
    assert window.error_banner.text() == "The model file is not a GGUF file."
    qtbot.mouseClick(window.error_banner.close_button, Qt.MouseButton.LeftButton)
    assert not window.error_banner.isVisible()
    controller.conversations.generation_failed.emit(5, "Out of memory", "ggml_alloc failed")
    assert window.error_banner.text() == "Out of memory"
    assert window.error_banner.label.toolTip() == "ggml_alloc failed"


def test_settings_dialog_round_trip(qtbot, window: MainWindow, controller) -> None:
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
    updates = controller.called("update_settings")
    assert len(updates) == 1
    new: Settings = updates[0][0]
    assert (new.temperature, new.top_p, new.min_p, new.max_tokens, new.n_ctx) == (0.7, 0.9, 0.01, 2048, 4096)
    assert new.system_prompt == "Be terse."
    assert new.theme == "system"


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
