"""Search across every conversation (FTS5) from View → Search all conversations… (Ctrl+Shift+F)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QKeySequence

from app.ui.main_window import MainWindow
from app.ui.search_dialog import SearchDialog, snippet

if TYPE_CHECKING:
    from app.core.store import Store
    from app.workers.controller import AppController

pytestmark = pytest.mark.qt_log_ignore(
    "This plugin does not support propagateSizeHints", "This plugin does not support raise"
)


@pytest.fixture
def controller(make_controller) -> AppController:
    c = make_controller()
    s = c.store
    old = s.create_conversation("Sourdough")
    s.add_message(old.id, "user", "How long should a sourdough levain ferment?")
    s.add_message(old.id, "assistant", "Usually 4 to 12 hours, until it doubles and smells tangy.")
    other = s.create_conversation("Rust lifetimes")
    s.add_message(other.id, "user", "Explain lifetimes in Rust with an example.")
    s.add_message(other.id, "notice", "levain in a notice is never a hit")
    s.create_conversation("Empty")
    return c


@pytest.fixture
def store(controller: AppController) -> Store:
    return controller.store


@pytest.fixture
def window(qtbot, controller: AppController) -> tuple[MainWindow, AppController]:
    win = MainWindow(controller)
    qtbot.addWidget(win)
    win.show()
    qtbot.waitExposed(win)
    return win, controller


def test_shortcut_search_finds_old_text_and_opens_the_conversation(qtbot, window, store: Store) -> None:
    win, controller = window
    assert win.global_search_action.shortcut() == QKeySequence("Ctrl+Shift+F")
    win.global_search_action.trigger()
    dialog = win.findChild(SearchDialog)
    assert dialog is not None
    assert dialog.isVisible()
    qtbot.keyClicks(dialog.query_edit, "levai")  # prefix match, typed
    qtbot.waitUntil(lambda: dialog.hit_count() == 1, timeout=2000)
    assert dialog.status_label.text() == "1 message found."
    item = dialog.results.item(0)
    assert item.text().startswith("Sourdough  ·  You, ")
    assert "sourdough levain ferment" in item.text()
    sourdough = next(c for c in store.list_conversations() if c.title == "Sourdough")
    with qtbot.waitSignal(controller.conversations.conversation_opened) as opened:
        qtbot.keyClick(dialog.query_edit, Qt.Key.Key_Return)
    assert opened.args[0] == sourdough.id
    assert controller.conversations.current_conversation_id == sourdough.id
    assert not dialog.isVisible()


def test_several_hits_keyboard_navigation_and_no_match(qtbot, window, store: Store) -> None:
    win, controller = window
    dialog = win.open_global_search()
    assert dialog is not None
    dialog.set_query("rust OR lifetimes")  # operators are plain words: all must match
    assert dialog.hit_count() == 0
    assert dialog.status_label.text() == "No messages match."
    dialog.set_query("hours")
    assert dialog.hit_count() == 1
    assert "Scout" in dialog.results.item(0).text()
    dialog.set_query("lifetimes rust")
    assert dialog.hit_count() == 1
    dialog.results.setFocus()
    rust = next(c for c in store.list_conversations() if c.title == "Rust lifetimes")
    with qtbot.waitSignal(controller.conversations.conversation_opened) as opened:
        qtbot.keyClick(dialog.results, Qt.Key.Key_Return)  # activating the selected hit opens it
    assert opened.args[0] == rust.id
    assert controller.conversations.current_conversation_id == rust.id
    assert win.sidebar.current_id() == rust.id
    assert win.open_global_search() is dialog  # one dialog, reused


def test_snippet_centres_on_the_match() -> None:
    text = "x " * 200 + "the needle is here " + "y " * 200
    cut = snippet(text, "needle", width=60)
    assert "needle" in cut
    assert cut.startswith("…")
    assert cut.endswith("…")
    assert len(cut) <= 62
    assert snippet("short text", "absent") == "short text"
