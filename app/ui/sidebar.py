"""The conversation list: New chat, a title filter, rename (F2 / context menu), delete with confirm,
pin to a "Pinned" group at the top (context menu)."""

from __future__ import annotations

import contextlib
import datetime as dt
from enum import IntEnum, auto
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import (
    QAbstractListModel,
    QByteArray,
    QEvent,
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    QSize,
    Qt,
    Signal,
)
from PySide6.QtGui import QAction, QFont, QKeyEvent, QKeySequence, QPalette
from PySide6.QtWidgets import (
    QAbstractItemView,
    QFrame,
    QLabel,
    QLineEdit,
    QListView,
    QMenu,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from app.ui import theme
from app.ui.window_dialogs import confirm_delete

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from PySide6.QtCore import QPoint

    from app.core.store import Conversation

    Index = QModelIndex | QPersistentModelIndex


class ConversationRole(IntEnum):
    ID = Qt.ItemDataRole.UserRole + 1
    TITLE = auto()
    UPDATED_AT = auto()
    MODEL = auto()
    PINNED = auto()


def _as_datetime(value: Any) -> dt.datetime | None:
    if isinstance(value, dt.datetime):
        return value
    if isinstance(value, (int, float)):
        return dt.datetime.fromtimestamp(value)
    if isinstance(value, str) and value:
        try:
            return dt.datetime.fromisoformat(value)
        except ValueError:
            return None
    return None


def _recency(conversation: Conversation) -> tuple[float, int]:
    when = _as_datetime(conversation.updated_at) or _as_datetime(conversation.created_at)
    try:
        stamp = when.timestamp() if when is not None else 0.0
    except (OverflowError, OSError, ValueError):
        stamp = 0.0
    return stamp, int(conversation.id)


def describe_time(value: Any) -> str:
    when = _as_datetime(value)
    if when is None:
        return ""
    if when.tzinfo is not None:
        when = when.astimezone().replace(tzinfo=None)
    return when.strftime("%Y-%m-%d %H:%M")


PINNED_GROUP = "Pinned"
RECENT_GROUP = "Recent"


def _order_key(conversation: Conversation) -> tuple[bool, float, int]:
    """Pinned first, then the most recently updated."""
    return (bool(conversation.pinned), *_recency(conversation))


class ConversationListModel(QAbstractListModel):
    """Conversations, most recently updated first; when some are pinned, they come first under a
    "Pinned" heading and the others under "Recent" (heading rows are neither selectable nor
    enabled, so the keyboard skips them). Editing a title emits ``title_edited``.

    Signals:
        title_edited(int, str): conversation id, the new title (the model shows it at once).
    """

    title_edited = Signal(int, str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._rows: list[Conversation | str] = []  # a str is a group heading
        self._titles: dict[int, str] = {}

    def set_conversations(self, conversations: Sequence[Conversation]) -> None:
        ordered = sorted(conversations, key=_order_key, reverse=True)
        pinned = [c for c in ordered if c.pinned]
        rows: list[Conversation | str] = list(ordered)
        if pinned:
            rows = [PINNED_GROUP, *pinned]
            if len(pinned) < len(ordered):
                rows += [RECENT_GROUP, *ordered[len(pinned) :]]
        self.beginResetModel()
        self._rows = rows
        self._titles = {c.id: c.title for c in ordered}
        self.endResetModel()

    def conversations(self) -> list[Conversation]:
        """The conversations shown, in their order (headings left out)."""
        return [row for row in self._rows if not isinstance(row, str)]

    def put_first(self, conversation: Conversation) -> None:
        """Show ``conversation`` (new, or updated just now) as the most recent of its group,
        without a reset: a move (or an insert) and one changed row, whatever the number of
        conversations. Only a change of group (pinned or not) lays the list out again."""
        row = self.row_of(conversation.id)
        target = self._group_start(conversation.pinned)
        if target < 0 or (row >= 0 and self._pinned_at(row) != conversation.pinned):
            self.place(conversation)
            return
        if row < 0:
            self.beginInsertRows(QModelIndex(), target, target)
            self._rows.insert(target, conversation)
            self.endInsertRows()
        elif row > target:
            self.beginMoveRows(QModelIndex(), row, row, QModelIndex(), target)
            self._rows.insert(target, self._rows.pop(row))
            self.endMoveRows()
        self._rows[target] = conversation
        self._titles[conversation.id] = conversation.title
        self.dataChanged.emit(self.index(target), self.index(target))

    def place(self, conversation: Conversation) -> None:
        """Show ``conversation`` (pinned or unpinned just now) where its order puts it: the list is
        laid out again from the rows it holds (no query)."""
        others = [c for c in self.conversations() if c.id != conversation.id]
        self.set_conversations([*others, conversation])

    def _pinned_at(self, row: int) -> bool:
        item = self._rows[row]
        return not isinstance(item, str) and bool(item.pinned)

    def _group_start(self, pinned: bool) -> int:
        """The row a conversation of that group goes first at; -1 when the group has no heading
        yet but needs one."""
        has_pinned = bool(self._rows) and self._rows[0] == PINNED_GROUP
        if pinned:
            return 1 if has_pinned else -1
        if not has_pinned:
            return 0
        try:
            return self._rows.index(RECENT_GROUP) + 1
        except ValueError:
            return -1

    def conversation_id(self, row: int) -> int:
        item = self._rows[row]
        return 0 if isinstance(item, str) else int(item.id)

    def row_of(self, conversation_id: int) -> int:
        for row, conversation in enumerate(self._rows):
            if not isinstance(conversation, str) and conversation.id == conversation_id:
                return row
        return -1

    def conversation(self, conversation_id: int) -> Conversation | None:
        row = self.row_of(conversation_id)
        item = self._rows[row] if row >= 0 else None
        return item if item is not None and not isinstance(item, str) else None

    def title(self, conversation_id: int) -> str:
        return self._titles.get(conversation_id, "")

    # -- Qt model API -----------------------------------------------------------------------
    def rowCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008 - Qt override
        return 0 if parent.isValid() else len(self._rows)

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or not 0 <= index.row() < len(self._rows):
            return None
        conversation = self._rows[index.row()]
        if isinstance(conversation, str):  # a group heading
            if role == Qt.ItemDataRole.DisplayRole:
                return conversation.upper()
            if role == Qt.ItemDataRole.AccessibleTextRole:
                return f"{conversation} conversations"
            if role == Qt.ItemDataRole.FontRole:
                font = QFont()
                font.setPointSizeF(max(font.pointSizeF() * 0.8, 7.0))
                font.setBold(True)
                return font
            return None
        title = self._titles.get(conversation.id, conversation.title) or "Untitled chat"
        if role in (Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.EditRole, ConversationRole.TITLE):
            return title
        if role == Qt.ItemDataRole.ToolTipRole:
            when = describe_time(conversation.updated_at)
            tip = f"{title}\n{when}" if when else title
            return f"{tip}\nPinned" if conversation.pinned else tip
        if role == ConversationRole.ID:
            return int(conversation.id)
        if role == ConversationRole.UPDATED_AT:
            return str(conversation.updated_at or "")
        if role == ConversationRole.MODEL:
            return str(conversation.model or "")
        if role == ConversationRole.PINNED:
            return bool(conversation.pinned)
        return None

    def setData(self, index: Index, value: Any, role: int = Qt.ItemDataRole.EditRole) -> bool:
        if role != Qt.ItemDataRole.EditRole or not index.isValid() or not isinstance(value, str):
            return False
        title = " ".join(value.split())
        if not title:
            return False
        item = self._rows[index.row()]
        if isinstance(item, str):
            return False
        conversation_id = int(item.id)
        if title == self._titles.get(conversation_id):
            return True
        self._titles[conversation_id] = title
        self.dataChanged.emit(index, index, [Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.EditRole])
        self.title_edited.emit(conversation_id, title)
        return True

    def flags(self, index: Index) -> Qt.ItemFlag:
        if not index.isValid() or isinstance(self._rows[index.row()], str):
            return Qt.ItemFlag.NoItemFlags
        return (
            Qt.ItemFlag.ItemIsEnabled
            | Qt.ItemFlag.ItemIsSelectable
            | Qt.ItemFlag.ItemIsEditable
            | Qt.ItemFlag.ItemNeverHasChildren
        )

    def roleNames(self) -> dict[int, QByteArray]:
        names = dict(super().roleNames())
        names.update({int(r): QByteArray(r.name.lower().encode()) for r in ConversationRole})
        return names


def ask_confirmation(parent: QWidget, title: str) -> bool:
    """The default delete confirmation (a modal question)."""
    return confirm_delete(
        parent,
        "Delete conversation",
        f"Delete “{title}”?\nIts messages are removed from this computer; this cannot be undone.",
    )


class ConversationSidebar(QFrame):
    """New chat, filter, and the list of conversations.

    ``load_conversations(filter_text)`` returns the conversations to show (the controller's
    ``conversations``). ``confirm_delete(parent, title) -> bool`` asks before deleting; tests
    replace it.

    Signals:
        new_chat_requested(): the New chat button.
        conversation_selected(int): the user picked a conversation (id).
        rename_requested(int, str): conversation id, new title.
        delete_requested(int): conversation id (after confirmation).
        pin_requested(int, bool): conversation id, whether to pin it (True) or unpin it.
    """

    new_chat_requested = Signal()
    conversation_selected = Signal(int)
    rename_requested = Signal(int, str)
    delete_requested = Signal(int)
    pin_requested = Signal(int, bool)

    def __init__(
        self,
        load_conversations: Callable[[str], Sequence[Conversation]],
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.setObjectName("sidebar")
        self._load = load_conversations
        self.confirm_delete: Callable[[QWidget, str], bool] = ask_confirmation
        self._current_id: int | None = None
        self._syncing = False

        self.new_button = QPushButton("  New chat")
        self.new_button.setObjectName("newChatButton")
        self.new_button.setIcon(theme.icon("plus", "#ffffff"))
        self.new_button.setToolTip("New chat (Ctrl+N)")
        self.new_button.setCursor(Qt.CursorShape.PointingHandCursor)
        self.new_button.clicked.connect(self._on_new_button_clicked)

        self.filter_edit = QLineEdit()
        self.filter_edit.setObjectName("conversationFilter")
        self.filter_edit.setPlaceholderText("Search conversations")
        self.filter_edit.setClearButtonEnabled(True)
        self.filter_edit.addAction(
            theme.icon("search", role=QPalette.ColorRole.PlaceholderText),
            QLineEdit.ActionPosition.LeadingPosition,
        )
        self.filter_edit.textChanged.connect(self._on_filter_edit_text_changed)

        self.model = ConversationListModel(self)
        self.model.title_edited.connect(self._on_model_title_edited)
        self.list_view = QListView()
        self.list_view.setObjectName("conversationList")
        self.list_view.setModel(self.model)
        self.list_view.setUniformItemSizes(True)
        self.list_view.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.list_view.setEditTriggers(
            QAbstractItemView.EditTrigger.EditKeyPressed | QAbstractItemView.EditTrigger.SelectedClicked
        )
        self.list_view.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.list_view.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.list_view.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.list_view.setIconSize(QSize(0, 0))
        self.list_view.customContextMenuRequested.connect(self._on_list_view_custom_context_menu_requested)
        self.list_view.selectionModel().currentChanged.connect(self._on_selection_current_changed)

        self.empty_label = QLabel("No conversations yet")
        self.empty_label.setObjectName("sidebarEmpty")
        self.empty_label.setAlignment(Qt.AlignmentFlag.AlignCenter)

        self.rename_action = QAction("Rename…", self)
        self.rename_action.setShortcut(QKeySequence(Qt.Key.Key_F2))
        self.rename_action.setShortcutContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
        self.rename_action.triggered.connect(self._on_rename_action_triggered)
        self.delete_action = QAction("Delete…", self)
        self.delete_action.setShortcut(QKeySequence(QKeySequence.StandardKey.Delete))
        self.delete_action.setShortcutContext(Qt.ShortcutContext.WidgetShortcut)  # the filter handles it
        self.delete_action.triggered.connect(self._on_delete_action_triggered)
        self.list_view.addAction(self.rename_action)
        self.list_view.addAction(self.delete_action)
        self.list_view.installEventFilter(self)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(10, 12, 10, 10)
        layout.setSpacing(8)
        layout.addWidget(self.new_button)
        layout.addWidget(self.filter_edit)
        layout.addWidget(self.list_view, 1)
        layout.addWidget(self.empty_label)
        self.setMinimumWidth(200)
        self.reload()

    # -- public API -------------------------------------------------------------------------
    def reload(self) -> None:
        """Ask for the conversations again (keeps the selection)."""
        with self._selection_kept():
            self.model.set_conversations(list(self._load(self.filter_edit.text().strip())))
        empty = self.model.rowCount() == 0
        self.empty_label.setText("No matches" if self.filter_edit.text().strip() else "No conversations yet")
        self.empty_label.setVisible(empty)

    def conversation_updated(self, conversation: Conversation) -> None:
        """A conversation just had activity: move it to the top (a filtered list is reloaded, as
        the filter decides whether it shows)."""
        if self.filter_edit.text().strip():
            self.reload()
            return
        with self._selection_kept():
            self.model.put_first(conversation)
        self.empty_label.setVisible(False)

    def conversation_pinned(self, conversation: Conversation) -> None:
        """A conversation was pinned or unpinned: it moves into or out of the "Pinned" group
        (a filtered list is asked again, as for an update)."""
        if self.filter_edit.text().strip():
            self.reload()
            return
        with self._selection_kept():
            self.model.place(conversation)

    def set_current(self, conversation_id: int | None) -> None:
        """Show ``conversation_id`` as selected without emitting ``conversation_selected``."""
        self._current_id = conversation_id or None
        with self._selection_kept():
            pass  # the model is unchanged: only the selection follows the new current id

    def current_id(self) -> int | None:
        return self._current_id

    def focus_filter(self) -> None:
        self.filter_edit.setFocus(Qt.FocusReason.ShortcutFocusReason)
        self.filter_edit.selectAll()

    def rename(self, conversation_id: int | None = None) -> None:
        """Start editing a title in place (default: the selected conversation)."""
        row = self.model.row_of(conversation_id) if conversation_id else self.list_view.currentIndex().row()
        if row < 0:
            return
        index = self.model.index(row)
        self.list_view.setCurrentIndex(index)
        self.list_view.edit(index)

    def delete(self, conversation_id: int | None = None) -> bool:
        """Ask, then emit ``delete_requested``; returns whether it was confirmed."""
        if conversation_id is None:
            index = self.list_view.currentIndex()
            if not index.isValid():
                return False
            conversation_id = int(index.data(ConversationRole.ID))
        title = self.model.title(conversation_id) or "this conversation"
        if not self.confirm_delete(self, title):
            return False
        self.delete_requested.emit(conversation_id)
        return True

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        # Delete / Backspace on the list asks to delete, even where shortcuts are not delivered.
        # The list is recognised by its name, not by ``self.list_view``: Qt also calls filters while
        # a window is being torn down, when the Python side of this object may have no attributes.
        if (
            watched.objectName() == "conversationList"
            and event.type() == QEvent.Type.KeyPress
            and isinstance(event, QKeyEvent)
            and event.key() in (Qt.Key.Key_Delete, Qt.Key.Key_Backspace)
            and self.list_view.state() != QAbstractItemView.State.EditingState
        ):
            self.delete()
            return True
        return super().eventFilter(watched, event)

    # -- internals --------------------------------------------------------------------------
    @contextlib.contextmanager
    def _selection_kept(self) -> Iterator[None]:
        """Model changes made inside end with the current conversation selected again, and
        neither they nor the re-selection emit ``conversation_selected``."""
        self._syncing = True
        try:
            yield
            self._select(self._current_id)
        finally:
            self._syncing = False

    def _select(self, conversation_id: int | None) -> None:
        selection = self.list_view.selectionModel()
        row = self.model.row_of(conversation_id) if conversation_id else -1
        if row < 0:
            selection.clearSelection()
            selection.setCurrentIndex(QModelIndex(), selection.SelectionFlag.Clear)
            return
        index = self.model.index(row)
        selection.setCurrentIndex(index, selection.SelectionFlag.ClearAndSelect)

    # -- slots ------------------------------------------------------------------------------
    def _on_new_button_clicked(self) -> None:
        self.new_chat_requested.emit()

    def _on_filter_edit_text_changed(self, _text: str) -> None:
        self.reload()

    def _on_model_title_edited(self, conversation_id: int, title: str) -> None:
        self.rename_requested.emit(conversation_id, title)

    def _on_selection_current_changed(self, current: QModelIndex, _previous: QModelIndex) -> None:
        if self._syncing or not current.isValid():
            return
        conversation_id = int(current.data(ConversationRole.ID))
        if conversation_id != self._current_id:
            self._current_id = conversation_id
            self.conversation_selected.emit(conversation_id)

    def _on_rename_action_triggered(self) -> None:
        self.rename()

    def _on_delete_action_triggered(self) -> None:
        self.delete()

    def context_menu(self, conversation_id: int) -> QMenu:
        """The menu of one conversation: Pin (or Unpin), Rename…, Delete… (the caller shows it
        and deletes it)."""
        menu = QMenu(self)
        found = self.model.conversation(conversation_id)
        pinned = found is not None and bool(found.pinned)
        pin = menu.addAction("Unpin" if pinned else "Pin to top")
        pin.setObjectName("pinAction")
        pin.triggered.connect(lambda _checked=False: self.pin_requested.emit(conversation_id, not pinned))
        menu.addSeparator()
        rename = menu.addAction("Rename…")
        rename.triggered.connect(lambda _checked=False: self.rename(conversation_id))
        delete = menu.addAction("Delete…")
        delete.triggered.connect(lambda _checked=False: self.delete(conversation_id))
        return menu

    def _on_list_view_custom_context_menu_requested(self, pos: QPoint) -> None:
        index = self.list_view.indexAt(pos)
        conversation_id = index.data(ConversationRole.ID) if index.isValid() else None
        if conversation_id is None:  # empty space or a group heading
            return
        menu = self.context_menu(int(conversation_id))
        menu.exec(self.list_view.viewport().mapToGlobal(pos))
        menu.deleteLater()
