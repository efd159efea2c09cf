"""Icons and badges follow the theme at once: a real MainWindow (real AppController on a FakeEngine)
started in dark as the app starts (window built first, theme applied after), then switched live.
Icon colours are read from the icons' own pixmaps and from the window's rendered pixels.
Screenshots go to $SCOUT_UI_SHOTS (default /tmp/ui_shots)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from PySide6.QtCore import QSize
from PySide6.QtGui import QColor, QIcon, QImage, QPalette
from PySide6.QtWidgets import QApplication, QLineEdit, QToolButton

from app.ui import theme
from app.ui.main_window import MainWindow

if TYPE_CHECKING:
    from app.workers.controller import AppController

pytestmark = pytest.mark.qt_log_ignore("This plugin does not support propagateSizeHints")

SHOTS = Path(os.environ.get("SCOUT_UI_SHOTS", "/tmp/ui_shots"))


def _luminance(color: QColor) -> float:
    def channel(value: float) -> float:
        return value / 12.92 if value <= 0.03928 else ((value + 0.055) / 1.055) ** 2.4

    return 0.2126 * channel(color.redF()) + 0.7152 * channel(color.greenF()) + 0.0722 * channel(color.blueF())


def contrast(a: QColor, b: QColor) -> float:
    """WCAG contrast ratio (1 to 21)."""
    la, lb = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def ink(image: QImage) -> QColor:
    """The colour of an icon's strokes: its most opaque pixel."""
    best, best_alpha = QColor(), -1
    for y in range(image.height()):
        for x in range(image.width()):
            pixel = image.pixelColor(x, y)
            if pixel.alpha() > best_alpha:
                best, best_alpha = pixel, pixel.alpha()
    assert best_alpha > 128, "the icon drew nothing"
    return best


def icon_ink(icon: QIcon) -> QColor:
    return ink(icon.pixmap(QSize(24, 24)).toImage())


def background() -> QColor:
    return QApplication.palette().color(QPalette.ColorRole.Window)


def window_icons(win: MainWindow) -> dict[str, QIcon]:
    """The icons drawn in the palette's colours: composer, sidebar search, message actions."""
    icons = {
        "paperclip": win.composer.attach_button.icon(),
        "cancel edit": win.composer.cancel_edit_button.icon(),
    }
    search = [a for a in win.sidebar.filter_edit.actions() if not a.icon().isNull()]
    assert search, "the conversation filter has no search icon"
    icons["search"] = search[0].icon()
    buttons = [b for b in win.chat_view.findChildren(QToolButton) if b.objectName() == "messageAction"]
    assert buttons, "the open conversation shows no message actions"
    for button in buttons:
        icons[f"message {button.toolTip()}"] = button.icon()
    return icons


def assert_icons_contrast(win: MainWindow) -> None:
    bg = background()
    for name, icon in window_icons(win).items():
        ratio = contrast(icon_ink(icon), bg)
        assert ratio >= 3.0, f"{name} icon {icon_ink(icon).name()} on {bg.name()}: contrast {ratio:.1f}"


def rendered_ink(win: MainWindow) -> QColor:
    """The paperclip as the window really draws it: the pixel of the button's grab farthest from
    the window colour."""
    image = win.composer.attach_button.grab().toImage()
    bg = background()
    pixels = (image.pixelColor(x, y) for y in range(image.height()) for x in range(image.width()))
    return max(pixels, key=lambda c: contrast(c, bg))


@pytest.fixture
def window(qtbot, make_controller, load_fake_model) -> MainWindow:
    controller: AppController = make_controller()
    conversation = controller.store.create_conversation("Icons")
    controller.store.add_message(conversation.id, "user", "Hello")
    controller.store.add_message(conversation.id, "assistant", "Hi! How can I help?")
    load_fake_model(controller)
    win = MainWindow(controller)  # built in the default (light) palette, as at start-up
    qtbot.addWidget(win)
    controller.conversations.open_conversation(conversation.id)
    return win


def test_icons_follow_dark_at_start_and_a_live_switch(qtbot, window: MainWindow, themed) -> None:
    themed("dark")  # the app applies the theme after building the window
    window.resize(1100, 720)
    window.show()
    qtbot.waitExposed(window)
    assert theme.is_dark()
    assert_icons_contrast(window)
    assert contrast(rendered_ink(window), background()) >= 3.0
    qtbot.wait(50)  # the chat view re-renders its HTML on the next turn of the event loop
    SHOTS.mkdir(parents=True, exist_ok=True)
    assert window.grab().save(str(SHOTS / "theme_dark_at_start.png"))
    dark_ink = icon_ink(window.composer.attach_button.icon())

    themed("light")  # a live switch (Settings → Theme)
    qtbot.wait(50)
    assert not theme.is_dark()
    assert_icons_contrast(window)
    assert icon_ink(window.composer.attach_button.icon()) != dark_ink
    assert contrast(rendered_ink(window), background()) >= 3.0
    assert window.grab().save(str(SHOTS / "theme_light_after_switch.png"))

    themed("dark")
    qtbot.wait(50)
    assert_icons_contrast(window)
    assert icon_ink(window.composer.attach_button.icon()).name() == dark_ink.name()
    assert window.grab().save(str(SHOTS / "theme_dark_after_switch.png"))


def test_disabled_icons_take_the_disabled_colour(themed) -> None:
    themed("dark")
    drawn = theme.icon("paperclip")
    normal = ink(drawn.pixmap(QSize(24, 24), QIcon.Mode.Normal).toImage())
    disabled = ink(drawn.pixmap(QSize(24, 24), QIcon.Mode.Disabled).toImage())
    palette = QApplication.palette()
    assert normal.name() == palette.color(QPalette.ColorRole.Text).name()
    assert disabled.name() == palette.color(QPalette.ColorGroup.Disabled, QPalette.ColorRole.Text).name()


def test_search_icon_survives_a_switch_on_a_line_edit(qtbot, themed) -> None:
    """A QLineEdit's leading action draws the icon itself: it must repaint in the new colour."""
    themed("light")
    edit = QLineEdit()
    qtbot.addWidget(edit)
    action = edit.addAction(theme.icon("search"), QLineEdit.ActionPosition.LeadingPosition)
    light = icon_ink(action.icon())
    themed("dark")
    dark = icon_ink(action.icon())
    assert contrast(light, dark) > 3.0
    assert contrast(dark, background()) >= 3.0
