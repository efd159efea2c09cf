"""ConversationSidebar and its ConversationListModel."""

from __future__ import annotations

import pytest
from PySide6.QtCore import Qt

from app.ui.sidebar import ConversationListModel, ConversationRole, ConversationSidebar
from tests.qt.test_ui_doubles import Conv

# The offscreen platform cannot resize windows to size hints; not an app problem.
pytestmark = pytest.mark.qt_log_ignore("This plugin does not support propagateSizeHints")


def _convs() -> list[Conv]:
    return [
        Conv(1, "Old chat about Python", updated_at="2024-01-01T09:00:00"),
        Conv(2, "Newest: Lisbon trip", updated_at="2025-06-01T09:00:00"),
        Conv(3, "Middle: MoE routing", updated_at="2025-01-01T09:00:00"),
    ]


def _load(filter_text: str = "") -> list[Conv]:
    """What the sidebar asks for: the conversations whose title contains the filter text."""
    needle = filter_text.lower()
    return [c for c in _convs() if needle in c.title.lower()]


def test_model_passes_modeltester(qtmodeltester) -> None:
    model = ConversationListModel()
    model.set_conversations(_convs())
    qtmodeltester.check(model)


def test_most_recent_first_and_roles() -> None:
    model = ConversationListModel()
    model.set_conversations(_convs())
    ids = [model.index(r).data(ConversationRole.ID) for r in range(model.rowCount())]
    assert ids == [2, 3, 1]
    assert model.index(0).data() == "Newest: Lisbon trip"
    assert model.index(0).data(ConversationRole.MODEL) == "tiny"


def test_filter_reloads_with_the_text(qtbot) -> None:
    sidebar = ConversationSidebar(_load)
    qtbot.addWidget(sidebar)
    assert sidebar.model.rowCount() == 3
    qtbot.keyClicks(sidebar.filter_edit, "moe")
    assert sidebar.model.rowCount() == 1
    assert sidebar.model.index(0).data() == "Middle: MoE routing"
    sidebar.filter_edit.setText("nothing like this")
    assert sidebar.model.rowCount() == 0
    assert not sidebar.empty_label.isHidden()
    assert sidebar.empty_label.text() == "No matches"


def test_selecting_emits_and_set_current_does_not(qtbot) -> None:
    sidebar = ConversationSidebar(_load)
    qtbot.addWidget(sidebar)
    with qtbot.assertNotEmitted(sidebar.conversation_selected):
        sidebar.set_current(3)
    assert sidebar.list_view.currentIndex().data(ConversationRole.ID) == 3
    with qtbot.waitSignal(sidebar.conversation_selected) as blocker:
        sidebar.list_view.setCurrentIndex(sidebar.model.index(0))
    assert blocker.args == [2]


def test_rename_inline_with_f2(qtbot) -> None:
    sidebar = ConversationSidebar(_load)
    qtbot.addWidget(sidebar)
    sidebar.show()
    qtbot.waitExposed(sidebar)
    sidebar.set_current(1)
    sidebar.list_view.setFocus()
    qtbot.keyClick(sidebar.list_view, Qt.Key.Key_F2)
    editor = sidebar.list_view.focusWidget()
    assert editor is not sidebar.list_view
    editor.selectAll()
    qtbot.keyClicks(editor, "Renamed  chat ")
    with qtbot.waitSignal(sidebar.rename_requested) as blocker:
        qtbot.keyClick(editor, Qt.Key.Key_Return)
    assert blocker.args == [1, "Renamed chat"]


def test_rename_through_the_model_rejects_empty_titles() -> None:
    model = ConversationListModel()
    model.set_conversations(_convs())
    edited = []
    model.title_edited.connect(lambda cid, title: edited.append((cid, title)))
    assert not model.setData(model.index(0), "   ")
    assert model.setData(model.index(0), "Trip")
    assert edited == [(2, "Trip")]
    assert model.index(0).data() == "Trip"


def test_delete_asks_and_respects_the_answer(qtbot) -> None:
    sidebar = ConversationSidebar(_load)
    qtbot.addWidget(sidebar)
    asked: list[str] = []

    def decline(_parent, title: str) -> bool:
        asked.append(title)
        return False

    sidebar.confirm_delete = decline
    sidebar.set_current(3)
    with qtbot.assertNotEmitted(sidebar.delete_requested):
        assert sidebar.delete() is False
    assert asked == ["Middle: MoE routing"]

    sidebar.confirm_delete = lambda _parent, _title: True
    with qtbot.waitSignal(sidebar.delete_requested) as blocker:
        assert sidebar.delete() is True
    assert blocker.args == [3]


def test_delete_key_triggers_confirmation(qtbot) -> None:
    sidebar = ConversationSidebar(_load)
    qtbot.addWidget(sidebar)
    sidebar.show()
    qtbot.waitExposed(sidebar)
    sidebar.set_current(2)
    sidebar.list_view.setFocus()
    sidebar.confirm_delete = lambda _parent, _title: True
    with qtbot.waitSignal(sidebar.delete_requested) as blocker:
        qtbot.keyClick(sidebar.list_view, Qt.Key.Key_Delete)
    assert blocker.args == [2]


def test_new_chat_button(qtbot) -> None:
    sidebar = ConversationSidebar(lambda _f: [])
    qtbot.addWidget(sidebar)
    assert sidebar.empty_label.text() == "No conversations yet"
    with qtbot.waitSignal(sidebar.new_chat_requested):
        qtbot.mouseClick(sidebar.new_button, Qt.MouseButton.LeftButton)


def test_an_updated_conversation_moves_to_the_top_without_a_reset(qtbot, qtmodeltester) -> None:
    sidebar = ConversationSidebar(_load)
    qtbot.addWidget(sidebar)
    qtmodeltester.check(sidebar.model)  # keeps checking the model through the moves below
    sidebar.set_current(3)
    loads: list[str] = []
    sidebar._load = lambda text: loads.append(text) or _load(text)
    resets: list[bool] = []
    sidebar.model.modelReset.connect(lambda: resets.append(True))
    with qtbot.assertNotEmitted(sidebar.conversation_selected):
        sidebar.conversation_updated(Conv(1, "Old chat, now answered", updated_at="2026-11-23T10:00:00"))
    ids = [sidebar.model.index(r).data(ConversationRole.ID) for r in range(3)]
    assert ids == [1, 2, 3]
    assert sidebar.model.index(0).data() == "Old chat, now answered"
    assert sidebar.list_view.currentIndex().data(ConversationRole.ID) == 3  # selection kept
    sidebar.conversation_updated(Conv(4, "Brand new", updated_at="2026-11-23T10:01:00"))
    assert [sidebar.model.index(r).data(ConversationRole.ID) for r in range(4)] == [4, 1, 2, 3]
    sidebar.conversation_updated(Conv(4, "Brand new", updated_at="2026-11-23T10:02:00"))  # already first
    assert sidebar.model.rowCount() == 4
    assert (loads, resets) == ([], [])  # no query, no reset
    # with a filter the list is asked again: the filter decides whether the conversation shows
    sidebar.filter_edit.setText("lisbon")
    loads.clear()
    sidebar.conversation_updated(Conv(3, "Middle: MoE routing", updated_at="2026-11-23T10:03:00"))
    assert loads == ["lisbon"]
    assert [sidebar.model.index(r).data(ConversationRole.ID) for r in range(sidebar.model.rowCount())] == [2]
