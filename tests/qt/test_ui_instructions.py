"""The window's "Instructions & preset" control: choosing a preset sets the next answer's sampling,
an edited system prompt reaches the real tiny model's rendered prompt, and the user's presets are
saved, renamed and deleted across a restart (real widgets, real AppControllers)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from PySide6.QtCore import Qt

from app.config import Settings, load_settings
from app.core.presets import ConversationOptions
from app.ui.main_window import MainWindow
from tests.fakes import FakeEngine

if TYPE_CHECKING:
    from app.ui.instructions_dialog import InstructionsDialog
    from app.workers.controller import AppController

pytestmark = pytest.mark.qt_log_ignore(
    "This plugin does not support propagateSizeHints", "This plugin does not support raise"
)


def _window(qtbot, controller: AppController) -> MainWindow:
    window = MainWindow(controller)
    qtbot.addWidget(window)
    window.resize(1000, 700)
    window.show()
    qtbot.waitExposed(window)
    return window


def _open(qtbot, window: MainWindow) -> InstructionsDialog:
    qtbot.mouseClick(window.instructions_button, Qt.MouseButton.LeftButton)
    dialog = window.instructions_dialog
    assert dialog is not None
    assert dialog.isVisible()
    return dialog


def _send(qtbot, window: MainWindow, text: str) -> None:
    with qtbot.waitSignal(window.conversations.generation_finished, timeout=60_000):
        window.composer.set_text(text)
        qtbot.keyClick(window.composer.edit, Qt.Key.Key_Return)


def test_choosing_a_preset_sets_the_next_answers_sampling(qtbot, make_controller, load_fake_model) -> None:
    engine = FakeEngine()
    controller = make_controller(engine, Settings(system_prompt="App prompt."))
    load_fake_model(controller)
    window = _window(qtbot, controller)
    assert window.instructions_button.text() == "App settings"
    _send(qtbot, window, "first, with the app's settings")
    used = engine.sampling[-1]
    assert (used.temperature, used.top_p, used.min_p) == (0.6, 0.9, 0.01)

    dialog = _open(qtbot, window)
    assert dialog.preset_name() == ""
    assert dialog.prompt_edit.toPlainText() == "App prompt."
    dialog.select_preset("Precise")  # the preset's values are shown
    assert (dialog.temperature_spin.value(), dialog.top_p_spin.value(), dialog.min_p_spin.value()) == (
        0.2,
        0.9,
        0.05,
    )
    assert not dialog.reset_button.isEnabled()
    qtbot.mouseClick(dialog.apply_button, Qt.MouseButton.LeftButton)
    assert not dialog.isVisible()
    assert window.instructions_button.text() == "Precise"  # the header names the preset
    _send(qtbot, window, "second, precise")
    used = engine.sampling[-1]
    assert (used.temperature, used.top_p, used.min_p) == (0.2, 0.9, 0.05)

    # a value edited away from the preset's becomes the chat's own, and the header says so
    dialog = _open(qtbot, window)
    assert dialog.preset_name() == "Precise"
    dialog.temperature_spin.setValue(1.1)
    assert "own sampling" in dialog.summary_label.text()
    qtbot.mouseClick(dialog.apply_button, Qt.MouseButton.LeftButton)
    assert window.instructions_button.text() == "Precise · own sampling"
    _send(qtbot, window, "third, warmer")
    assert engine.sampling[-1].temperature == pytest.approx(1.1)
    assert engine.sampling[-1].min_p == pytest.approx(0.05)

    # another conversation keeps the app's settings; going back shows the preset again
    first = controller.conversations.current_conversation_id
    controller.conversations.new_conversation()
    assert window.instructions_button.text() == "App settings"
    controller.conversations.open_conversation(first)
    assert window.instructions_button.text() == "Precise · own sampling"


def test_an_edited_system_prompt_reaches_the_rendered_prompt(qtbot, llama_controller) -> None:
    controller, engine = llama_controller(
        Settings(n_threads=1, max_tokens=4, system_prompt="The app's instructions.")
    )
    window = _window(qtbot, controller)
    dialog = _open(qtbot, window)
    dialog.prompt_edit.selectAll()
    qtbot.keyClicks(dialog.prompt_edit, "Answer only about lighthouses.")
    qtbot.mouseClick(dialog.apply_button, Qt.MouseButton.LeftButton)
    assert window.instructions_button.text() == "App settings · own instructions"
    _send(qtbot, window, "hello")
    system = "<|header_start|>system<|header_end|>\n\nAnswer only about lighthouses.<|eot|>"
    assert system in engine.last_prompt
    assert "The app's instructions." not in engine.last_prompt

    # "Reset to preset" goes back to the app's instructions
    dialog = _open(qtbot, window)
    assert dialog.reset_button.isEnabled()
    qtbot.mouseClick(dialog.reset_button, Qt.MouseButton.LeftButton)
    assert dialog.prompt_edit.toPlainText() == "The app's instructions."
    qtbot.mouseClick(dialog.apply_button, Qt.MouseButton.LeftButton)
    assert controller.conversations.conversation_options().is_default
    _send(qtbot, window, "hello again")
    assert "The app's instructions." in engine.last_prompt


def test_user_presets_save_rename_and_delete_across_a_restart(
    qtbot, make_controller, load_fake_model, app_paths
) -> None:
    engine = FakeEngine()
    controller = make_controller(engine, Settings(system_prompt="App prompt."))
    load_fake_model(controller)
    window = _window(qtbot, controller)
    dialog = _open(qtbot, window)
    dialog.select_preset("Creative")
    dialog.top_p_spin.setValue(0.8)
    dialog.prompt_edit.setPlainText("Write like a sea captain.")
    dialog.ask_name = lambda _parent, _title, _text: "Precise"  # a built-in name is refused
    qtbot.mouseClick(dialog.save_as_button, Qt.MouseButton.LeftButton)
    assert dialog.error_label.isVisible()
    assert "built-in" in dialog.error_label.text()
    dialog.ask_name = lambda _parent, _title, _text: "  Captain  "
    qtbot.mouseClick(dialog.save_as_button, Qt.MouseButton.LeftButton)
    assert not dialog.error_label.isVisible()
    assert dialog.preset_name() == "Captain"  # chosen at once, its values are the preset's
    assert dialog.options() == ConversationOptions("Captain")
    assert dialog.delete_button.isEnabled()
    qtbot.mouseClick(dialog.apply_button, Qt.MouseButton.LeftButton)
    assert window.instructions_button.text() == "Captain"
    conversation = controller.conversations.current_conversation_id
    controller.shutdown()
    window.close()

    # a restart reads the settings file: the preset and the conversation's choice are there
    restarted = make_controller(engine, load_settings(app_paths))
    load_fake_model(restarted)
    window = _window(qtbot, restarted)
    restarted.conversations.open_conversation(conversation)
    assert window.instructions_button.text() == "Captain"
    _send(qtbot, window, "ahoy")
    assert (engine.sampling[-1].temperature, engine.sampling[-1].top_p) == (0.9, 0.8)
    assert engine.seen[-1][0].content == "Write like a sea captain."

    dialog = _open(qtbot, window)
    assert dialog.preset_name() == "Captain"
    dialog.ask_name = lambda _parent, _title, _text: "Sea captain"
    qtbot.mouseClick(dialog.rename_button, Qt.MouseButton.LeftButton)
    assert dialog.preset_name() == "Sea captain"
    assert window.instructions_button.text() == "Sea captain"  # the conversation followed
    dialog.confirm_delete = lambda _parent, _name: False
    qtbot.mouseClick(dialog.delete_button, Qt.MouseButton.LeftButton)
    assert dialog.preset_name() == "Sea captain"  # not confirmed: kept
    dialog.confirm_delete = lambda _parent, _name: True
    qtbot.mouseClick(dialog.delete_button, Qt.MouseButton.LeftButton)
    assert dialog.preset_name() == ""
    assert dialog.preset_combo.findData("Sea captain") < 0
    assert "deleted" in window.instructions_button.text()
    restarted.shutdown()
    window.close()

    again = make_controller(engine, load_settings(app_paths))
    assert again.conversations.user_presets() == ()
