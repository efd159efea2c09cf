"""Search the text of every conversation (SQLite FTS5 through ``Store.search_messages``)."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QVBoxLayout,
    QWidget,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from PySide6.QtGui import QKeyEvent

log = logging.getLogger(__name__)

SEARCH_DELAY_MS = 180
SNIPPET_CHARS = 140
ROLE_LABELS = {"user": "You", "assistant": "Scout", "system": "System"}
HIT_ROLE = Qt.ItemDataRole.UserRole + 1


def snippet(text: str, query: str, width: int = SNIPPET_CHARS) -> str:
    """One line of ``text`` around the first word of ``query`` it contains (case-insensitive)."""
    flat = " ".join(text.split())
    folded = flat.casefold()
    at = -1
    for word in query.split():
        at = folded.find(word.casefold())
        if at >= 0:
            break
    if at < 0 or len(flat) <= width:
        return flat[:width] + ("…" if len(flat) > width else "")
    start = max(0, at - width // 3)
    end = min(len(flat), start + width)
    start = max(0, end - width)
    return ("…" if start else "") + flat[start:end].strip() + ("…" if end < len(flat) else "")


class SearchDialog(QDialog):
    """Type to search all conversations; Enter or a double click opens the selected hit.

    ``search(text) -> [(Conversation, StoredMessage), …]`` is ``Store.search_messages``.

    Signals:
        conversation_requested(int, int): conversation id, message id of the chosen hit.
    """

    conversation_requested = Signal(int, int)

    def __init__(self, search: Callable[[str], list[tuple[Any, Any]]], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._search = search
        self.setWindowTitle("Search all conversations")
        self.setObjectName("searchDialog")
        self.resize(620, 460)
        self.query_edit = QLineEdit()
        self.query_edit.setPlaceholderText("Search the text of every conversation…")
        self.query_edit.setClearButtonEnabled(True)
        self.query_edit.setAccessibleName("Search text")
        self.results = QListWidget()
        self.results.setObjectName("searchResults")
        self.results.setWordWrap(True)
        self.results.setUniformItemSizes(False)
        self.results.setAccessibleName("Search results")
        self.status_label = QLabel("Type a word or two to search every conversation.")
        self.status_label.setObjectName("searchStatus")
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        self.open_button = buttons.addButton("Open", QDialogButtonBox.ButtonRole.AcceptRole)
        self.open_button.setEnabled(False)
        buttons.rejected.connect(self.reject)
        buttons.accepted.connect(self._on_buttons_accepted)
        layout = QVBoxLayout(self)
        layout.addWidget(self.query_edit)
        layout.addWidget(self.results, 1)
        layout.addWidget(self.status_label)
        layout.addWidget(buttons)

        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(SEARCH_DELAY_MS)
        self._timer.timeout.connect(self._on_timer_timeout)
        self.query_edit.textChanged.connect(self._on_query_edit_text_changed)
        self.query_edit.returnPressed.connect(self._on_query_edit_return_pressed)
        self.results.itemActivated.connect(self._on_results_item_activated)
        self.results.currentItemChanged.connect(self._on_results_current_item_changed)

    # -- public -----------------------------------------------------------------------------
    def set_query(self, text: str) -> None:
        """Search now (no typing delay)."""
        self.query_edit.setText(text)
        self._timer.stop()
        self.run_search()

    def run_search(self) -> None:
        text = self.query_edit.text().strip()
        self.results.clear()
        if not text:
            self.status_label.setText("Type a word or two to search every conversation.")
            self.open_button.setEnabled(False)
            return
        try:
            hits = self._search(text)
        except Exception as exc:
            log.exception("search failed")
            self.status_label.setText(f"Search failed: {exc}")
            return
        for conversation, message in hits:
            role = ROLE_LABELS.get(message.role, message.role)
            when = time.strftime("%Y-%m-%d", time.localtime(message.created_at))
            item = QListWidgetItem(
                f"{conversation.title}  ·  {role}, {when}\n{snippet(message.content, text)}"
            )
            item.setData(HIT_ROLE, (conversation.id, message.id))
            item.setToolTip(conversation.title)
            self.results.addItem(item)
        count = len(hits)
        self.status_label.setText(
            "No messages match." if count == 0 else f"{count} message{'s' if count != 1 else ''} found."
        )
        if count:
            self.results.setCurrentRow(0)

    def hit_count(self) -> int:
        return self.results.count()

    def open_current(self) -> bool:
        item = self.results.currentItem()
        if item is None:
            return False
        conversation_id, message_id = item.data(HIT_ROLE)
        self.conversation_requested.emit(int(conversation_id), int(message_id))
        self.accept()
        return True

    # -- events -----------------------------------------------------------------------------
    def keyPressEvent(self, event: QKeyEvent) -> None:
        if event.key() in (Qt.Key.Key_Down, Qt.Key.Key_Up) and self.query_edit.hasFocus():
            row = self.results.currentRow() + (1 if event.key() == Qt.Key.Key_Down else -1)
            if 0 <= row < self.results.count():
                self.results.setCurrentRow(row)
            return
        super().keyPressEvent(event)

    # -- slots ------------------------------------------------------------------------------
    def _on_query_edit_text_changed(self, _text: str) -> None:
        self._timer.start()

    def _on_timer_timeout(self) -> None:
        self.run_search()

    def _on_query_edit_return_pressed(self) -> None:
        if self._timer.isActive():
            self._timer.stop()
            self.run_search()
        self.open_current()

    def _on_results_item_activated(self, _item: QListWidgetItem) -> None:
        self.open_current()

    def _on_results_current_item_changed(self, current: QListWidgetItem | None, _previous: object) -> None:
        self.open_button.setEnabled(current is not None)

    def _on_buttons_accepted(self) -> None:
        self.open_current()
