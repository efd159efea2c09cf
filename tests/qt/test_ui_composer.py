"""Composer: Enter sends, Shift+Enter adds a line, Esc stops; Send turns into Stop while busy."""

from __future__ import annotations

import pytest
from PySide6.QtCore import Qt

from app.ui.composer import Composer


@pytest.fixture
def composer(qtbot) -> Composer:
    widget = Composer()
    qtbot.addWidget(widget)
    widget.set_model_ready(True)
    widget.show()
    qtbot.waitExposed(widget)
    widget.focus()
    return widget


# The offscreen platform cannot resize windows to size hints; not an app problem.
pytestmark = pytest.mark.qt_log_ignore("This plugin does not support propagateSizeHints")


def test_enter_sends_and_clears(qtbot, composer: Composer) -> None:
    qtbot.keyClicks(composer.edit, "  hello  ")
    with qtbot.waitSignal(composer.send_requested) as blocker:
        qtbot.keyClick(composer.edit, Qt.Key.Key_Return)
    assert blocker.args == ["hello"]
    assert composer.text() == ""


def test_shift_enter_inserts_a_newline(qtbot, composer: Composer) -> None:
    qtbot.keyClicks(composer.edit, "line 1")
    with qtbot.assertNotEmitted(composer.send_requested):
        qtbot.keyClick(composer.edit, Qt.Key.Key_Return, Qt.KeyboardModifier.ShiftModifier)
    qtbot.keyClicks(composer.edit, "line 2")
    assert composer.text() == "line 1\nline 2"
    with qtbot.waitSignal(composer.send_requested) as blocker:
        qtbot.keyClick(composer.edit, Qt.Key.Key_Enter)
    assert blocker.args == ["line 1\nline 2"]


def test_empty_or_no_model_does_not_send(qtbot, composer: Composer) -> None:
    with qtbot.assertNotEmitted(composer.send_requested):
        qtbot.keyClick(composer.edit, Qt.Key.Key_Return)
    assert not composer.send_button.isEnabled()
    composer.set_model_ready(False)
    qtbot.keyClicks(composer.edit, "hi")
    assert not composer.send_button.isEnabled()
    with qtbot.assertNotEmitted(composer.send_requested):
        qtbot.keyClick(composer.edit, Qt.Key.Key_Return)
    assert composer.text() == "hi"


def test_busy_turns_send_into_stop_and_esc_stops(qtbot, composer: Composer) -> None:
    composer.set_busy(True)
    assert composer.send_button.isEnabled()
    assert composer.send_button.accessibleName() == "Stop"
    with qtbot.waitSignal(composer.stop_requested):
        qtbot.keyClick(composer.edit, Qt.Key.Key_Escape)
    with qtbot.waitSignal(composer.stop_requested):
        qtbot.mouseClick(composer.send_button, Qt.MouseButton.LeftButton)
    # text typed while busy: Enter (or the button, now "Queue") queues it; Esc still stops
    qtbot.keyClicks(composer.edit, "next question")
    assert composer.send_button.accessibleName() == "Queue"
    with qtbot.waitSignal(composer.send_requested) as queued:
        qtbot.keyClick(composer.edit, Qt.Key.Key_Return)
    assert queued.args == ["next question"]
    assert composer.send_button.accessibleName() == "Stop"
    qtbot.keyClicks(composer.edit, "one more")
    with qtbot.waitSignal(composer.stop_requested):
        qtbot.keyClick(composer.edit, Qt.Key.Key_Escape)
    composer.set_busy(False)
    assert composer.send_button.accessibleName() == "Send"
    with qtbot.waitSignal(composer.send_requested):
        qtbot.mouseClick(composer.send_button, Qt.MouseButton.LeftButton)


def test_grows_up_to_eight_lines(qtbot, composer: Composer) -> None:
    one_line = composer.edit.height()
    composer.set_text("\n".join(["x"] * 3))
    three_lines = composer.edit.height()
    composer.set_text("\n".join(["x"] * 30))
    many_lines = composer.edit.height()
    composer.set_text("\n".join(["x"] * 40))
    assert one_line < three_lines < many_lines
    assert composer.edit.height() == many_lines


def test_edit_mode_resends_through_edit_requested(qtbot, composer: Composer) -> None:
    composer.begin_edit("original question")
    assert composer.is_editing
    assert not composer.editing_bar.isHidden()
    qtbot.keyClicks(composer.edit, " (fixed)")
    with qtbot.waitSignal(composer.edit_requested) as blocker:
        qtbot.keyClick(composer.edit, Qt.Key.Key_Return)
    assert blocker.args == ["original question (fixed)"]
    assert not composer.is_editing
    composer.begin_edit("again")
    qtbot.keyClick(composer.edit, Qt.Key.Key_Escape)
    assert not composer.is_editing
    assert composer.text() == ""
