"""Pinned conversations: pin and unpin from the sidebar's context menu in the real window, a
"Pinned" group at the top, kept in SQLite across a restart (schema 6), and a migration that leaves
every older conversation unpinned."""

from __future__ import annotations

import dataclasses
import sqlite3
from typing import TYPE_CHECKING

import pytest
from PySide6.QtCore import Qt

from app.core.store import SCHEMA_VERSION, Store
from app.ui.main_window import MainWindow
from app.ui.sidebar import PINNED_GROUP, RECENT_GROUP, ConversationListModel, ConversationRole
from tests.qt.test_ui_doubles import Conv

if TYPE_CHECKING:
    from app.ui.sidebar import ConversationSidebar

pytestmark = pytest.mark.qt_log_ignore(
    "This plugin does not support propagateSizeHints", "This plugin does not support raise"
)


def _rows(sidebar: ConversationSidebar) -> list[object]:
    """The list as shown: group headings by name, conversations by id."""
    model = sidebar.model
    out: list[object] = []
    for row in range(model.rowCount()):
        index = model.index(row)
        found = index.data(ConversationRole.ID)
        out.append(found if found is not None else index.data())
    return out


def _pin_from_menu(sidebar: ConversationSidebar, conversation_id: int) -> str:
    """Trigger the context menu's pin action as a click would; returns its text."""
    menu = sidebar.context_menu(conversation_id)
    action = next(a for a in menu.actions() if a.objectName() == "pinAction")
    text = action.text()
    action.trigger()
    menu.deleteLater()
    return text


def test_pin_and_unpin_from_the_context_menu_survive_a_restart(
    qtbot, make_controller, app_paths, show_window
) -> None:
    controller = make_controller()
    store = Store(app_paths.database)
    made = [store.create_conversation(f"Chat {n}") for n in range(1, 5)]  # 4 is the newest
    store.close()
    window = show_window(controller)
    sidebar = window.sidebar
    sidebar.reload()
    first, second, _third, newest = (c.id for c in made)
    assert _rows(sidebar) == [newest, 3, second, first]  # nothing pinned: no headings, as before

    sidebar.set_current(second)
    resets: list[bool] = []
    sidebar.model.modelReset.connect(lambda: resets.append(True))
    with qtbot.waitSignal(controller.conversations.conversation_pinned):
        assert _pin_from_menu(sidebar, first) == "Pin to top"
    assert _rows(sidebar) == [PINNED_GROUP.upper(), first, RECENT_GROUP.upper(), newest, 3, second]
    assert sidebar.list_view.currentIndex().data(ConversationRole.ID) == second  # selection kept
    headings = [sidebar.model.index(0), sidebar.model.index(2)]
    assert all(not h.flags() & h.flags().ItemIsSelectable for h in headings)
    assert _pin_from_menu(sidebar, 3) == "Pin to top"
    assert _rows(sidebar)[:4] == [PINNED_GROUP.upper(), 3, first, RECENT_GROUP.upper()]  # newest first

    # an answer in a pinned conversation moves it to the top of the pinned group, not above it
    listed = {c.id: c for c in controller.conversations.conversations()}
    later = max(c.updated_at for c in listed.values()) + 60
    sidebar.conversation_updated(dataclasses.replace(listed[first], updated_at=later))
    assert _rows(sidebar)[:3] == [PINNED_GROUP.upper(), first, 3]
    # an answer in an unpinned one moves it to the top of "Recent"
    sidebar.conversation_updated(dataclasses.replace(listed[second], updated_at=later + 1))
    assert _rows(sidebar)[3:5] == [RECENT_GROUP.upper(), second]

    assert _pin_from_menu(sidebar, 3) == "Unpin"
    assert _rows(sidebar) == [PINNED_GROUP.upper(), first, RECENT_GROUP.upper(), second, newest, 3]
    assert resets  # a pin lays the list out again; it does not query the store
    controller.shutdown()

    # after a restart the pin is still there (SQLite) and the group shows
    reopened = make_controller()
    window2 = MainWindow(reopened)
    qtbot.addWidget(window2)
    window2.sidebar.reload()
    assert _rows(window2.sidebar)[:3] == [PINNED_GROUP.upper(), first, RECENT_GROUP.upper()]
    assert [c.pinned for c in reopened.conversations.conversations()][:2] == [True, False]
    # unpinning the last pinned conversation removes the headings
    _pin_from_menu(window2.sidebar, first)
    assert PINNED_GROUP.upper() not in _rows(window2.sidebar)
    assert sorted(_rows(window2.sidebar)) == sorted(c.id for c in made)


def test_keyboard_skips_the_headings(qtbot, make_controller, show_window) -> None:
    controller = make_controller()
    window = show_window(controller)
    chats = controller.conversations
    ids = [chats.ensure_conversation()]
    chats.new_conversation()
    ids.append(chats.ensure_conversation())
    chats.set_pinned(ids[0], True)
    window.sidebar.reload()
    view = window.sidebar.list_view
    window.sidebar.set_current(ids[0])
    view.setFocus()
    with qtbot.waitSignal(window.sidebar.conversation_selected) as picked:
        qtbot.keyClick(view, Qt.Key.Key_Down)  # over the "Recent" heading
    assert picked.args == [ids[1]]


def test_the_model_with_groups_passes_the_modeltester(qtmodeltester) -> None:
    model = ConversationListModel()
    model.set_conversations(
        [
            Conv(1, "a", updated_at="2025-01-01T09:00:00", pinned=True),
            Conv(2, "b", updated_at="2025-02-01T09:00:00"),
            Conv(3, "c", updated_at="2025-03-01T09:00:00"),
        ]
    )
    qtmodeltester.check(model)
    model.put_first(Conv(3, "c", updated_at="2025-04-01T09:00:00", pinned=True))  # changes group
    assert [model.conversation_id(r) for r in range(model.rowCount())] == [0, 3, 1, 0, 2]
    model.put_first(Conv(4, "new", updated_at="2025-05-01T09:00:00"))
    assert [model.conversation_id(r) for r in range(model.rowCount())] == [0, 3, 1, 0, 4, 2]


def test_a_schema_5_database_migrates_with_nothing_pinned(tmp_path) -> None:
    path = tmp_path / "old.sqlite3"
    store = Store(path)
    kept = store.create_conversation("Before pins")
    store.close()
    with sqlite3.connect(path) as conn:  # as schema 5 left it: no pinned column
        conn.execute("ALTER TABLE conversations DROP COLUMN pinned")
        conn.execute("PRAGMA user_version = 5")
    conn.close()
    with Store(path) as store:
        assert store.user_version() == SCHEMA_VERSION == 6
        assert store.list_conversations() == [kept]
        assert not kept.pinned
        store.set_pinned(kept.id, True)
        assert store.get_conversation(kept.id).pinned
