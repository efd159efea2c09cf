"""Search the text of every conversation (SQLite FTS5 through ``Store.search_messages``)."""

from __future__ import annotations

import html
import logging
import re
import time
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QModelIndex, QPersistentModelIndex, QSize, Qt, QTimer, Signal
from PySide6.QtGui import QAbstractTextDocumentLayout, QPalette, QTextDocument
from PySide6.QtWidgets import (
    QAbstractItemView,
    QApplication,
    QDialog,
    QDialogButtonBox,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QStyle,
    QStyledItemDelegate,
    QStyleOptionViewItem,
    QVBoxLayout,
    QWidget,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from PySide6.QtGui import QKeyEvent, QPainter

log = logging.getLogger(__name__)

SEARCH_DELAY_MS = 180
SNIPPET_CHARS = 140
ROLE_LABELS = {"user": "You", "assistant": "Scout", "system": "System"}
HIT_ROLE = Qt.ItemDataRole.UserRole + 1
HTML_ROLE = Qt.ItemDataRole.UserRole + 2  # the result as rich text, the query's words marked
ITEM_PADDING = 6
# a highlighter's yellow with dark text, readable on light, dark and selected rows alike
MARK_STYLE = "background-color: #ffe27a; color: #1f2328"


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


def highlight(text: str, query: str) -> str:
    """``text`` as HTML with every word of ``query`` that starts a word in it (the search matches
    word prefixes) marked: bold, on a highlighter's yellow; case-insensitive."""
    words = sorted({w.strip('"*') for w in query.split()} - {""}, key=len, reverse=True)
    if not words:
        return html.escape(text)
    pattern = re.compile(r"(?<!\w)(" + "|".join(re.escape(w) for w in words) + ")", re.IGNORECASE)
    out: list[str] = []
    last = 0
    for match in pattern.finditer(text):
        out.append(html.escape(text[last : match.start()]))
        out.append(f'<b style="{MARK_STYLE}">{html.escape(match.group(0))}</b>')
        last = match.end()
    out.append(html.escape(text[last:]))
    return "".join(out)


class _HighlightDelegate(QStyledItemDelegate):
    """Paints a result's ``HTML_ROLE`` rich text (marked query words) in the item's rectangle."""

    def _document(
        self, option: QStyleOptionViewItem, index: QModelIndex | QPersistentModelIndex
    ) -> QTextDocument:
        doc = QTextDocument()
        doc.setDefaultFont(option.font)
        doc.setDocumentMargin(ITEM_PADDING)
        doc.setHtml(str(index.data(HTML_ROLE) or ""))
        doc.setTextWidth(max(1, option.rect.width()))
        return doc

    def paint(
        self, painter: QPainter, option: QStyleOptionViewItem, index: QModelIndex | QPersistentModelIndex
    ) -> None:
        self.initStyleOption(option, index)
        opt = QStyleOptionViewItem(option)
        opt.text = ""
        widget = opt.widget
        style = widget.style() if widget is not None else QApplication.style()
        style.drawControl(QStyle.ControlElement.CE_ItemViewItem, opt, painter, widget)
        doc = self._document(option, index)
        context = QAbstractTextDocumentLayout.PaintContext()
        selected = bool(opt.state & QStyle.StateFlag.State_Selected)
        role = QPalette.ColorRole.HighlightedText if selected else QPalette.ColorRole.Text
        context.palette.setColor(QPalette.ColorRole.Text, opt.palette.color(role))
        painter.save()
        painter.translate(opt.rect.topLeft())
        painter.setClipRect(opt.rect.translated(-opt.rect.topLeft()))
        doc.documentLayout().draw(painter, context)
        painter.restore()

    def sizeHint(self, option: QStyleOptionViewItem, index: QModelIndex | QPersistentModelIndex) -> QSize:
        self.initStyleOption(option, index)
        widget = option.widget
        if isinstance(widget, QAbstractItemView):
            option.rect.setWidth(widget.viewport().width())
        doc = self._document(option, index)
        return QSize(int(doc.idealWidth()), int(doc.size().height()))


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
        self.results.setItemDelegate(_HighlightDelegate(self.results))
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
            if message.role == "assistant" and message.model:
                role = message.model
            when = time.strftime("%Y-%m-%d", time.localtime(message.created_at))
            heading = f"{conversation.title}  ·  {role}, {when}"
            found = snippet(message.content, text)
            item = QListWidgetItem(f"{heading}\n{found}")
            title = html.escape(conversation.title)
            rich_heading = f"<b>{title}</b> &nbsp;·&nbsp; {html.escape(role)}, {when}"
            item.setData(HTML_ROLE, f"{rich_heading}<br>{highlight(found, text)}")
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
