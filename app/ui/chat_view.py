"""The conversation: one widget per message in a scroll area, Markdown answers, incremental streaming.

Rendering cost is what matters here (a 4,000-token answer must never stall the GUI), so:

* streamed deltas are only buffered by :meth:`ChatView.append_delta`; a 40 ms single-shot
  ``QTimer`` (qutebrowser's ``_update_timer``) flushes them, so the answer is re-rendered at most
  25 times a second however fast tokens arrive;
* an answer is split into *segments* at Markdown block boundaries that later text cannot change
  (:func:`app.ui.markdown_render.stable_boundaries`). Finished segments are rendered once and
  frozen; only the live tail (a paragraph or two, or the code block being written) is re-parsed
  and re-laid out per flush. Finished code blocks come highlighted from a cache.

Each segment is a frameless, scroll-bar-less ``QTextBrowser`` sized to its document; code-block
"Copy" buttons are ``copy:<n>`` anchors handled in ``anchorClicked``.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QEvent, QSize, Qt, QTimer, QUrl, Signal
from PySide6.QtGui import QDesktopServices, QFontDatabase, QFontMetrics, QGuiApplication
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QStackedWidget,
    QTextBrowser,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app.ui import theme
from app.ui.attachment_chips import MessageAttachmentsWidget
from app.ui.citations import CITE_SCHEME, link_citations, max_source_page
from app.ui.markdown_render import (
    COPY_SCHEME,
    MarkdownColors,
    chunk_text,
    render_markdown,
    render_plain,
    split_stable,
)

if TYPE_CHECKING:
    from PySide6.QtGui import QResizeEvent, QWheelEvent

    from app.core.store import Attachment

log = logging.getLogger(__name__)

UPDATE_INTERVAL_MS = 40
RETIRE_PER_PASS = 4  # replaced message widgets deleted per event-loop pass
FREEZE_MIN_CHARS = 700  # a live segment is frozen once this much of it can no longer change
COLUMN_MAX_WIDTH = 860
BOTTOM_SLACK_PX = 32  # "at the bottom" tolerance for keeping the view pinned while streaming

STATUS_BADGES = {
    "cancelled": "stopped",
    "interrupted": "interrupted — the app closed while answering",
    "error": "error",
}


def _colors_for(widget: QWidget) -> MarkdownColors:
    dark = theme.is_dark(widget.palette())
    colors = theme.markdown_colors(dark)
    return colors


def _mono_family() -> str:
    return QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont).family()


class RichTextSegment(QTextBrowser):
    """A read-only piece of rich text that is exactly as tall as its content.

    Signals:
        code_copied(int): the index of the code block whose "Copy" link was clicked.
        citation_clicked(int): the page of a "p. 12" citation link that was clicked.
    """

    code_copied = Signal(int)
    citation_clicked = Signal(int)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("richText")
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setOpenLinks(False)
        self.setOpenExternalLinks(False)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setFocusPolicy(Qt.FocusPolicy.ClickFocus)
        self.viewport().setAutoFillBackground(False)
        self.setStyleSheet("QTextBrowser { background: transparent; border: none; }")
        self.document().setDocumentMargin(0)
        self.code_blocks: list[str] = []
        self.source_text = ""
        self._natural_width: int | None = None
        self.document().documentLayout().documentSizeChanged.connect(self._on_layout_document_size_changed)
        self.anchorClicked.connect(self._on_self_anchor_clicked)
        self.setFixedHeight(1)

    def set_html(self, html: str, code_blocks: list[str] | None = None) -> None:
        self.code_blocks = code_blocks or []
        self.document().setDefaultStyleSheet(self._css())
        self.setHtml(html)
        self._fit_height()

    def _css(self) -> str:
        colors = _colors_for(self)
        mono = _mono_family()
        return (
            f"a {{ color: {colors.link}; }}"
            f"pre, code {{ font-family: '{mono}'; }}"
            "p { margin-top: 0px; margin-bottom: 8px; }"
            "ul, ol { margin-top: 0px; margin-bottom: 8px; }"
            "li { margin-bottom: 2px; }"
            "h1 { font-size: x-large; margin-top: 10px; margin-bottom: 6px; }"
            "h2 { font-size: large; margin-top: 10px; margin-bottom: 6px; }"
            "h3, h4, h5, h6 { font-size: medium; margin-top: 8px; margin-bottom: 4px; }"
        )

    def set_natural_width(self, width: int | None) -> None:
        """Prefer ``width`` (a short user message's bubble shrinks to fit its text)."""
        self._natural_width = width
        self.updateGeometry()

    def sizeHint(self) -> QSize:
        hint = super().sizeHint()
        if self._natural_width is not None:
            hint.setWidth(self._natural_width)
        return QSize(hint.width(), self.height())

    def minimumSizeHint(self) -> QSize:
        return QSize(40, self.height())

    def resizeEvent(self, event: QResizeEvent) -> None:
        super().resizeEvent(event)
        self._fit_height()

    def wheelEvent(self, event: QWheelEvent) -> None:
        event.ignore()  # the chat's scroll area scrolls, not this fixed-height text

    def loadResource(self, kind: int, name: QUrl) -> Any:
        return None  # never load files or URLs named in a model's answer

    def _fit_height(self) -> None:
        height = max(1, math.ceil(self.document().size().height()))
        if height != self.height():
            self.setFixedHeight(height)

    def _on_layout_document_size_changed(self, _size: object) -> None:
        self._fit_height()

    def _on_self_anchor_clicked(self, url: QUrl) -> None:
        if url.scheme() == COPY_SCHEME:
            try:
                index = int(url.path())
                code = self.code_blocks[index]
            except (ValueError, IndexError):
                log.warning("copy link %s names no code block", url.toString())
                return
            QGuiApplication.clipboard().setText(code)
            self.code_copied.emit(index)
        elif url.scheme() == CITE_SCHEME:
            try:
                self.citation_clicked.emit(int(url.path()))
            except ValueError:
                log.warning("citation link %s names no page", url.toString())
        elif url.scheme() in ("http", "https", "mailto"):
            QDesktopServices.openUrl(url)


class MessageWidget(QFrame):
    """One message: header, body segments, status badge, stats and actions.

    Signals:
        copy_requested(int): message id ("Copy message").
        edit_requested(int): message id (the last user message's "Edit").
        regenerate_requested(int): message id (the last answer's "Regenerate").
        code_copied(str): the code that was copied.
        citation_clicked(int, int): message id, page of the clicked "p. 12" citation.
        sources_requested(int): message id ("What the model saw").
    """

    copy_requested = Signal(int)
    edit_requested = Signal(int)
    regenerate_requested = Signal(int)
    code_copied = Signal(str)
    citation_clicked = Signal(int, int)
    sources_requested = Signal(int)

    def __init__(self, message: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.message_id: int = int(message.id)
        self.role: str = str(message.role)
        self.text: str = str(message.content or "")
        self.status: str = str(message.status or "complete")
        self.model: str = str(getattr(message, "model", "") or "")
        self.stats: dict[str, Any] = dict(getattr(message, "stats", None) or {})
        self.error_text = str(self.stats.get("error", ""))
        self.setObjectName(f"{self.role}Message")
        self._frozen_len = 0  # characters of self.text rendered into frozen segments
        self._live_rendered: str | None = None
        self.segments: list[RichTextSegment] = []
        self.attachments_widget: MessageAttachmentsWidget | None = None

        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 6, 0, 6)
        outer.setSpacing(4)

        self.header = QHBoxLayout()
        self.header.setSpacing(8)
        self.role_label = QLabel("You" if self.role == "user" else "Scout")
        self.role_label.setObjectName("roleLabel")
        self.meta_label = QLabel(self.model if self.role == "assistant" else "")
        self.meta_label.setObjectName("metaLabel")
        self.badge = QLabel()
        self.badge.setObjectName("statusBadge")
        self.badge.hide()
        self.header.addWidget(self.role_label)
        self.header.addWidget(self.meta_label)
        self.header.addWidget(self.badge)
        self.header.addStretch(1)

        self.body = QWidget()
        self.body_layout = QVBoxLayout(self.body)
        self.body_layout.setContentsMargins(0, 0, 0, 0)
        self.body_layout.setSpacing(0)
        self.typing_label = QLabel("Thinking…")
        self.typing_label.setObjectName("metaLabel")
        self.typing_label.hide()
        self.body_layout.addWidget(self.typing_label)
        self.error_label = QLabel()
        self.error_label.setObjectName("metaLabel")
        self.error_label.setWordWrap(True)
        self.error_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.error_label.hide()

        self.actions_row = QHBoxLayout()
        self.actions_row.setSpacing(2)
        self.stats_label = QLabel()
        self.stats_label.setObjectName("statsLabel")
        self.copy_button = self._action("copy", "Copy message", self._on_copy_button_clicked)
        self.edit_button = self._action("edit", "Edit and resend", self._on_edit_button_clicked)
        self.regenerate_button = self._action("regenerate", "Regenerate", self._on_regenerate_button_clicked)
        self.sources_button = self._action("eye", "What the model saw", self._on_sources_button_clicked)
        self.edit_button.hide()
        self.regenerate_button.hide()
        self.sources_button.hide()

        if self.role == "user":
            self.bubble = QFrame()
            self.bubble.setObjectName("userBubble")
            bubble_layout = QVBoxLayout(self.bubble)
            bubble_layout.setContentsMargins(14, 10, 14, 10)
            bubble_layout.addWidget(self.body)
            self.bubble_layout = bubble_layout
            self.bubble.setSizePolicy(QSizePolicy.Policy.Maximum, QSizePolicy.Policy.Preferred)
            row = QHBoxLayout()
            row.addStretch(1)
            row.addWidget(self.bubble)
            outer.addLayout(row)
            self.actions_row.addStretch(1)
            self.actions_row.addWidget(self.edit_button)
            self.actions_row.addWidget(self.copy_button)
            self.role_label.hide()
        else:
            self.bubble = None
            outer.addLayout(self.header)
            outer.addWidget(self.body)
            outer.addWidget(self.error_label)
            self.actions_row.addWidget(self.copy_button)
            self.actions_row.addWidget(self.regenerate_button)
            self.actions_row.addWidget(self.sources_button)
            self.actions_row.addSpacing(6)
            self.actions_row.addWidget(self.stats_label)
            self.actions_row.addStretch(1)
        outer.addLayout(self.actions_row)
        self.render_all()
        self._update_decorations()

    # -- construction helpers ---------------------------------------------------------------
    def _action(self, icon_name: str, tip: str, slot: Any) -> QToolButton:
        button = QToolButton()
        button.setObjectName("messageAction")
        button.setToolTip(tip)
        button.setAccessibleName(tip)
        button.setIcon(theme.icon(icon_name, self.palette().color(self.foregroundRole()).name()))
        button.setIconSize(QSize(15, 15))
        button.setCursor(Qt.CursorShape.PointingHandCursor)
        button.setFocusPolicy(Qt.FocusPolicy.TabFocus)
        button.clicked.connect(slot)
        return button

    def _new_segment(self) -> RichTextSegment:
        segment = RichTextSegment(self.body)
        segment.code_copied.connect(self._on_segment_code_copied)
        segment.citation_clicked.connect(self._on_segment_citation_clicked)
        self.body_layout.addWidget(segment)
        self.segments.append(segment)
        return segment

    def _render(self, segment: RichTextSegment, source: str) -> None:
        segment.source_text = source
        if self.role == "user":
            segment.set_html(render_plain(source))
            metrics = QFontMetrics(segment.font())
            widest = max((metrics.horizontalAdvance(line) for line in source.splitlines() or [""]), default=0)
            segment.set_natural_width(widest + 6)
        else:
            colors = _colors_for(self)
            rendered = render_markdown(source, colors)
            segment.set_html(rendered.html, rendered.code_blocks)
            if self.stats.get("sources") and self.status != "streaming":
                link_citations(segment.document(), colors.link, max_source_page(self.stats))

    # -- content ----------------------------------------------------------------------------
    def render_all(self) -> None:
        """Render the whole text from scratch (loading, theme change, final text)."""
        for segment in self.segments:
            self.body_layout.removeWidget(segment)
            segment.deleteLater()
        self.segments = []
        pieces = [self.text] if self.role == "user" else chunk_text(self.text, FREEZE_MIN_CHARS)
        self._frozen_len = len(self.text) - len(pieces[-1])  # the last piece stays live
        for piece in pieces:
            self._render(self._new_segment(), piece)
        self._live_rendered = pieces[-1] if pieces else ""

    def append_text(self, delta: str) -> None:
        """Add streamed text and re-render only the live tail."""
        self.text += delta
        self._update_live()
        self._update_decorations()

    def _update_live(self) -> None:
        if not self.segments:
            self._new_segment()
        tail = self.text[self._frozen_len :]
        stable = split_stable(tail)
        if stable >= FREEZE_MIN_CHARS:
            self._render(self.segments[-1], tail[:stable])
            self._frozen_len += stable
            self._new_segment()
            tail = tail[stable:]
            self._live_rendered = None
            if self.status == "streaming":
                return  # one render per tick: the new tail comes with the next flush
        if tail != self._live_rendered:
            self._render(self.segments[-1], tail)
            self._live_rendered = tail

    def has_unrendered_text(self) -> bool:
        return self._live_rendered != self.text[self._frozen_len :]

    def set_text(self, text: str) -> None:
        self.text = text
        self.render_all()
        self._update_decorations()

    def set_attachments(self, attachments: list[Attachment]) -> None:
        """Show the images and documents this (user) message was sent with, above its text."""
        if self.attachments_widget is not None:
            self.attachments_widget.hide()
            self.attachments_widget.deleteLater()
            self.attachments_widget = None
        if not attachments or self.bubble is None:
            return
        self.attachments_widget = MessageAttachmentsWidget(attachments, self.bubble)
        self.bubble_layout.insertWidget(0, self.attachments_widget)

    def set_document_stats(self, stats: dict[str, Any]) -> None:
        """Stats saved with the answer (context mode, sources): citations become links."""
        self.stats = {**self.stats, **stats}
        self.render_all()
        self._update_decorations()

    def finish(self, status: str, stats: dict[str, Any] | None = None, error: str = "") -> None:
        self.status = status
        if stats is not None:
            self.stats = stats
        if error:
            self.error_text = error
        self._update_live()
        self._update_decorations()

    # -- decorations ------------------------------------------------------------------------
    def _update_decorations(self) -> None:
        streaming = self.status == "streaming"
        self.typing_label.setVisible(streaming and not self.text)
        badge = STATUS_BADGES.get(self.status, "")
        if not badge and self.stats.get("finish_reason") == "length":
            badge = "cut off at the max-tokens limit"
        self.badge.setText(badge)
        self.badge.setProperty("kind", "error" if self.status == "error" else "info")
        self.badge.style().unpolish(self.badge)
        self.badge.style().polish(self.badge)
        self.badge.setVisible(bool(badge))
        self.error_label.setText(self.error_text)
        self.error_label.setVisible(self.status == "error" and bool(self.error_text))
        self.stats_label.setText(self._stats_text())
        self.copy_button.setVisible(not streaming or bool(self.text))
        self.sources_button.setVisible(
            self.role == "assistant" and not streaming and bool(self.stats.get("sources"))
        )

    def _stats_text(self) -> str:
        if self.status == "streaming" or self.role != "assistant":
            return ""
        parts = []
        tps = self.stats.get("tokens_per_s")
        if isinstance(tps, (int, float)) and tps > 0:
            parts.append(f"{tps:.1f} tok/s")
        tokens = self.stats.get("completion_tokens")
        if isinstance(tokens, int) and tokens > 0:
            parts.append(f"{tokens} tokens")
        return " · ".join(parts)

    def set_actions(self, *, can_edit: bool, can_regenerate: bool) -> None:
        self.edit_button.setVisible(self.role == "user" and can_edit)
        self.regenerate_button.setVisible(self.role == "assistant" and can_regenerate)

    def resizeEvent(self, event: QResizeEvent) -> None:
        super().resizeEvent(event)
        if self.bubble is not None:
            self.bubble.setMaximumWidth(max(120, int(self.width() * 0.8)))

    def code_block_count(self) -> int:
        return sum(len(s.code_blocks) for s in self.segments)

    # -- slots ------------------------------------------------------------------------------
    def _on_copy_button_clicked(self) -> None:
        QGuiApplication.clipboard().setText(self.text)
        self.copy_requested.emit(self.message_id)

    def _on_edit_button_clicked(self) -> None:
        self.edit_requested.emit(self.message_id)

    def _on_regenerate_button_clicked(self) -> None:
        self.regenerate_requested.emit(self.message_id)

    def _on_sources_button_clicked(self) -> None:
        self.sources_requested.emit(self.message_id)

    def _on_segment_citation_clicked(self, page: int) -> None:
        self.citation_clicked.emit(self.message_id, page)

    def _on_segment_code_copied(self, index: int) -> None:
        segment = self.sender()
        if isinstance(segment, RichTextSegment):
            self.code_copied.emit(segment.code_blocks[index])


class NoticeWidget(QWidget):
    """A subtle centred marker (e.g. "2 earlier messages were left out to fit the context")."""

    def __init__(self, message: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.message_id: int = int(message.id)
        self.role = "notice"
        self.text = str(message.content or "")
        self.status = str(message.status or "complete")
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 8, 0, 8)
        self.label = QLabel(self.text)
        self.label.setObjectName("noticeLabel")
        self.label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        layout.addStretch(1)
        layout.addWidget(self.label, 0)
        layout.addStretch(1)

    def render_all(self) -> None:
        self.label.setText(self.text)


class _EmptyPage(QWidget):
    def __init__(self, title: str, text: str, button_text: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("chatPage")
        layout = QVBoxLayout(self)
        layout.addStretch(2)
        self.logo = QLabel()
        self.logo.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.logo.setPixmap(theme.app_icon().pixmap(72, 72))
        layout.addWidget(self.logo)
        layout.addSpacing(8)
        self.title = QLabel(title)
        self.title.setObjectName("emptyTitle")
        self.title.setAlignment(Qt.AlignmentFlag.AlignCenter)
        layout.addWidget(self.title)
        self.text = QLabel(text)
        self.text.setObjectName("emptyText")
        self.text.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.text.setWordWrap(True)
        layout.addWidget(self.text)
        self.button: QPushButton | None = None
        if button_text:
            layout.addSpacing(12)
            self.button = QPushButton(button_text)
            self.button.setObjectName("primaryButton")
            self.button.setCursor(Qt.CursorShape.PointingHandCursor)
            row = QHBoxLayout()
            row.addStretch(1)
            row.addWidget(self.button)
            row.addStretch(1)
            layout.addLayout(row)
        layout.addStretch(3)


class ChatView(QWidget):
    """The messages of the open conversation, or an empty state.

    Signals:
        open_model_requested(): the empty state's "Open a GGUF model file…" button.
        edit_requested(int): message id of the last user message to edit and resend.
        regenerate_requested(): answer the last user message again.
        copied(str): what was copied, for a status message ("message" or "code").
        citation_clicked(int, int): message id, page of a clicked citation in an answer.
        sources_requested(int): message id of the answer whose "What the model saw" was clicked.
    """

    open_model_requested = Signal()
    edit_requested = Signal(int)
    regenerate_requested = Signal()
    copied = Signal(str)
    citation_clicked = Signal(int, int)
    sources_requested = Signal(int)

    PAGE_NO_MODEL, PAGE_EMPTY, PAGE_MESSAGES = range(3)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._widgets: dict[int, MessageWidget | NoticeWidget] = {}
        self._order: list[int] = []
        self._pending: dict[int, list[str]] = {}
        self._model_loaded = False
        self._busy = False
        self._stick_to_bottom = True

        self._update_timer = QTimer(self)
        self._update_timer.setSingleShot(True)
        self._update_timer.setInterval(UPDATE_INTERVAL_MS)
        self._update_timer.timeout.connect(self._on_update_timer_timeout)
        # Widgets of a conversation that was replaced, deleted a few per event-loop pass: deleting
        # a 40-message conversation's widgets at once held the GUI thread for 50-90 ms (bench/soak).
        self._retired: list[QWidget] = []
        self._retire_timer = QTimer(self)
        self._retire_timer.setInterval(0)
        self._retire_timer.timeout.connect(self._on_retire_timer_timeout)

        self._rerender_timer = QTimer(self)
        self._rerender_timer.setSingleShot(True)
        self._rerender_timer.setInterval(0)
        self._rerender_timer.timeout.connect(self._on_rerender_timer_timeout)

        self.stack = QStackedWidget()
        self.no_model_page = _EmptyPage(
            "No model loaded",
            "Open a GGUF model file (Llama 4 Scout or any llama.cpp chat model) to start chatting.\n"
            "Everything runs on this computer; nothing leaves it.",
            "Open a GGUF model file…",
        )
        assert self.no_model_page.button is not None
        self.no_model_page.button.clicked.connect(self._on_open_button_clicked)
        self.empty_page = _EmptyPage(
            "Start a conversation",
            "Ask anything. Enter sends, Shift+Enter adds a line, Esc stops the answer.",
        )

        self.scroll_area = QScrollArea()
        self.scroll_area.setObjectName("chatArea")
        self.scroll_area.setWidgetResizable(True)
        self.scroll_area.setFrameShape(QFrame.Shape.NoFrame)
        self.scroll_area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        canvas = QWidget()
        canvas.setObjectName("chatCanvas")
        canvas_layout = QHBoxLayout(canvas)
        canvas_layout.setContentsMargins(24, 16, 24, 16)
        canvas_layout.addStretch(1)
        self.column = QWidget()
        self.column.setMaximumWidth(COLUMN_MAX_WIDTH)
        self.column.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.column_layout = QVBoxLayout(self.column)
        self.column_layout.setContentsMargins(0, 0, 0, 0)
        self.column_layout.setSpacing(6)
        self.column_layout.addStretch(1)
        canvas_layout.addWidget(self.column, 100)
        canvas_layout.addStretch(1)
        self.scroll_area.setWidget(canvas)
        bar = self.scroll_area.verticalScrollBar()
        bar.valueChanged.connect(self._on_scrollbar_value_changed)
        bar.rangeChanged.connect(self._on_scrollbar_range_changed)

        self.stack.addWidget(self.no_model_page)
        self.stack.addWidget(self.empty_page)
        self.stack.addWidget(self.scroll_area)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.stack)
        self._update_page()

    # -- public API -------------------------------------------------------------------------
    def set_model_loaded(self, loaded: bool) -> None:
        self._model_loaded = loaded
        self._update_page()

    def set_busy(self, busy: bool) -> None:
        self._busy = busy
        self._refresh_actions()

    def clear(self) -> None:
        self._pending.clear()
        self._update_timer.stop()
        for widget in self._widgets.values():
            self.column_layout.removeWidget(widget)
            widget.hide()
            self._retired.append(widget)
        if self._retired:
            self._retire_timer.start()
        self._widgets.clear()
        self._order.clear()
        self._update_page()

    def _on_retire_timer_timeout(self) -> None:
        for widget in self._retired[-RETIRE_PER_PASS:]:
            widget.deleteLater()
        del self._retired[-RETIRE_PER_PASS:]
        if not self._retired:
            self._retire_timer.stop()

    def set_messages(self, messages: list[Any]) -> None:
        """Show a conversation (replaces what is shown)."""
        self.clear()
        self.setUpdatesEnabled(False)
        try:
            for message in messages:
                self._insert(message)
        finally:
            self.setUpdatesEnabled(True)
        self._stick_to_bottom = True
        self._refresh_actions()
        self._update_page()
        self.scroll_to_bottom()

    def add_message(self, message: Any) -> None:
        self._insert(message)
        self._refresh_actions()
        self._update_page()
        if message.role == "user":
            self._stick_to_bottom = True  # sending always shows the answer
            self.scroll_to_bottom()

    def remove_message(self, message_id: int) -> None:
        widget = self._widgets.pop(message_id, None)
        self._pending.pop(message_id, None)
        if widget is None:
            return
        self._order.remove(message_id)
        self.column_layout.removeWidget(widget)
        widget.deleteLater()
        self._refresh_actions()
        self._update_page()

    def append_delta(self, message_id: int, text: str) -> None:
        """Buffer streamed text; it is rendered by the update timer (at most every 40 ms)."""
        self._pending.setdefault(message_id, []).append(text)
        if not self._update_timer.isActive():
            self._update_timer.start()

    def flush(self) -> None:
        """Render buffered deltas now."""
        self._update_timer.stop()
        pending, self._pending = self._pending, {}
        for message_id, parts in pending.items():
            widget = self._widgets.get(message_id)
            if isinstance(widget, MessageWidget):
                widget.append_text("".join(parts))
                if widget.has_unrendered_text():
                    self._pending.setdefault(message_id, [])
                    self._update_timer.start()

    def finish_message(self, message_id: int, stats: Any) -> None:
        """The answer ended (``stats``: GenerationStats); show its status and figures."""
        self.flush()
        widget = self._widgets.get(message_id)
        if not isinstance(widget, MessageWidget):
            return
        reason = str(getattr(stats, "finish_reason", "stop"))
        stats_dict = {
            "tokens_per_s": float(getattr(stats, "tokens_per_s", 0.0)),
            "completion_tokens": int(getattr(stats, "completion_tokens", 0)),
            "finish_reason": reason,
        }
        widget.finish("cancelled" if reason == "cancelled" else "complete", stats_dict)
        self._refresh_actions()

    def fail_message(self, message_id: int, error: str) -> None:
        self.flush()
        widget = self._widgets.get(message_id)
        if isinstance(widget, MessageWidget):
            widget.finish("error", error=error)
        self._refresh_actions()

    def set_attachments(self, message_id: int, attachments: list[Attachment]) -> None:
        """The images and documents a user message was sent with (shown in its bubble)."""
        widget = self._widgets.get(message_id)
        if isinstance(widget, MessageWidget):
            widget.set_attachments(attachments)

    def set_message_stats(self, message_id: int, stats: dict[str, Any]) -> None:
        """The saved stats of an answer (sources make its page citations clickable)."""
        widget = self._widgets.get(message_id)
        if isinstance(widget, MessageWidget):
            widget.set_document_stats(stats)

    def message_widget(self, message_id: int) -> MessageWidget | NoticeWidget | None:
        return self._widgets.get(message_id)

    def message_widgets(self) -> list[MessageWidget | NoticeWidget]:
        return [self._widgets[i] for i in self._order]

    def last_message(self, role: str) -> MessageWidget | None:
        for message_id in reversed(self._order):
            widget = self._widgets[message_id]
            if isinstance(widget, MessageWidget) and widget.role == role:
                return widget
        return None

    def has_messages(self) -> bool:
        return bool(self._order)

    def is_at_bottom(self) -> bool:
        bar = self.scroll_area.verticalScrollBar()
        return bar.value() >= bar.maximum() - BOTTOM_SLACK_PX

    def scroll_to_bottom(self) -> None:
        bar = self.scroll_area.verticalScrollBar()
        bar.setValue(bar.maximum())

    def current_page(self) -> int:
        return self.stack.currentIndex()

    # -- internals --------------------------------------------------------------------------
    def _insert(self, message: Any) -> None:
        if message.id in self._widgets:
            return
        widget: MessageWidget | NoticeWidget
        if message.role == "notice":
            widget = NoticeWidget(message)
        elif message.role in ("user", "assistant"):
            widget = MessageWidget(message)
            widget.copy_requested.connect(self._on_message_copy_requested)
            widget.edit_requested.connect(self._on_message_edit_requested)
            widget.regenerate_requested.connect(self._on_message_regenerate_requested)
            widget.code_copied.connect(self._on_message_code_copied)
            widget.citation_clicked.connect(self._on_message_citation_clicked)
            widget.sources_requested.connect(self._on_message_sources_requested)
        else:
            return  # system prompts are not shown in the conversation
        self._widgets[message.id] = widget
        self._order.append(message.id)
        self.column_layout.insertWidget(self.column_layout.count() - 1, widget)

    def _refresh_actions(self) -> None:
        last_user = self.last_message("user")
        last_assistant = self.last_message("assistant")
        for message_id in self._order:
            widget = self._widgets[message_id]
            if isinstance(widget, MessageWidget):
                widget.set_actions(
                    can_edit=not self._busy and widget is last_user,
                    can_regenerate=not self._busy
                    and widget is last_assistant
                    and last_user is not None
                    and self._order.index(last_assistant.message_id)
                    > self._order.index(last_user.message_id),
                )

    def _update_page(self) -> None:
        if self._order:
            page = self.PAGE_MESSAGES
        elif self._model_loaded:
            page = self.PAGE_EMPTY
        else:
            page = self.PAGE_NO_MODEL
        self.stack.setCurrentIndex(page)

    def changeEvent(self, event: QEvent) -> None:
        super().changeEvent(event)
        if event.type() == QEvent.Type.PaletteChange and not self._rerender_timer.isActive():
            self._rerender_timer.start()  # after the children have the new palette too

    def rerender(self) -> None:
        """Render every message again (the palette changed)."""
        self.flush()
        for widget in self._widgets.values():
            widget.render_all()

    # -- slots ------------------------------------------------------------------------------
    def _on_update_timer_timeout(self) -> None:
        self.flush()

    def _on_rerender_timer_timeout(self) -> None:
        self.rerender()

    def _on_scrollbar_value_changed(self, _value: int) -> None:
        self._stick_to_bottom = self.is_at_bottom()

    def _on_scrollbar_range_changed(self, _minimum: int, maximum: int) -> None:
        if self._stick_to_bottom:
            self.scroll_area.verticalScrollBar().setValue(maximum)

    def _on_open_button_clicked(self) -> None:
        self.open_model_requested.emit()

    def _on_message_copy_requested(self, _message_id: int) -> None:
        self.copied.emit("message")

    def _on_message_edit_requested(self, message_id: int) -> None:
        self.edit_requested.emit(message_id)

    def _on_message_regenerate_requested(self, _message_id: int) -> None:
        self.regenerate_requested.emit()

    def _on_message_code_copied(self, _code: str) -> None:
        self.copied.emit("code")

    def _on_message_citation_clicked(self, message_id: int, page: int) -> None:
        self.citation_clicked.emit(message_id, page)

    def _on_message_sources_requested(self, message_id: int) -> None:
        self.sources_requested.emit(message_id)
