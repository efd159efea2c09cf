"""One message in the conversation: its Markdown segments (frozen once later text cannot change
them), header, status badge, stats and actions; and the notices between messages.

Each segment is a frameless, scroll-bar-less ``QTextBrowser`` sized to its document; code-block
"Copy" buttons are ``copy:<n>`` anchors handled in ``anchorClicked``.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QSize, Qt, QUrl, Signal
from PySide6.QtGui import QAction, QDesktopServices, QFontDatabase, QFontMetrics, QGuiApplication
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QSizePolicy,
    QTextBrowser,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app.core.store import MessageStatus, answer_unfinished
from app.core.types import FinishReason
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
    from PySide6.QtGui import QContextMenuEvent, QResizeEvent, QWheelEvent

    from app.core.store import Attachment

log = logging.getLogger(__name__)

FREEZE_MIN_CHARS = 700  # a live segment is frozen once this much of it can no longer change

STATUS_BADGES = {
    MessageStatus.CANCELLED: "stopped",
    MessageStatus.INTERRUPTED: "interrupted — the app closed while answering",
    MessageStatus.ERROR: "error",
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

    def contextMenuEvent(self, event: QContextMenuEvent) -> None:
        """The text's own menu (Copy, Select all), then the message's actions (its parent's)."""
        menu = self.createStandardContextMenu(event.pos())
        owner = self.parentWidget()
        while owner is not None and not isinstance(owner, MessageWidget):
            owner = owner.parentWidget()
        extra = owner.menu_actions() if owner is not None else []
        if extra:
            menu.addSeparator()
            menu.addActions(extra)
        menu.exec(event.globalPos())
        menu.deleteLater()

    def wheelEvent(self, event: QWheelEvent) -> None:
        event.ignore()  # the chat's scroll area scrolls, not this fixed-height text

    def loadResource(self, kind: int, name: QUrl | str) -> Any:
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
        edit_requested(int): message id ("Edit": a user message; a new branch).
        regenerate_requested(int): message id ("Regenerate": an answer; a new branch).
        continue_requested(int): message id ("Continue": a stopped or cut-off answer, in place).
        code_copied(str): the code that was copied.
        citation_clicked(int, int): message id, page of the clicked "p. 12" citation.
        sources_requested(int): message id ("What the model saw").
        branch_requested(int, int): message id, step (-1 for ‹, +1 for ›): show another branch.
        delete_branch_requested(int): message id (context menu "Delete this branch…").
    """

    copy_requested = Signal(int)
    branch_requested = Signal(int, int)
    edit_requested = Signal(int)
    regenerate_requested = Signal(int)
    continue_requested = Signal(int)
    code_copied = Signal(str)
    citation_clicked = Signal(int, int)
    sources_requested = Signal(int)
    delete_branch_requested = Signal(int)

    def __init__(self, message: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.message_id: int = int(message.id)
        self.role: str = str(message.role)
        self.text: str = str(message.content or "")
        self.status = MessageStatus(message.status or MessageStatus.COMPLETE)
        self.model: str = str(getattr(message, "model", "") or "")
        self.stats: dict[str, Any] = dict(getattr(message, "stats", None) or {})
        self.error_text = str(self.stats.get("error", ""))
        self.setObjectName(f"{self.role}Message")
        self._frozen_len = 0  # characters of self.text rendered into frozen segments
        self._live_rendered: str | None = None
        self.segments: list[RichTextSegment] = []
        self.attachments_widget: MessageAttachmentsWidget | None = None
        self.bubble: QFrame | None = None  # the user's message bubble

        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 6, 0, 6)
        outer.setSpacing(4)

        self._build_header()
        self._build_body()
        self._build_actions()
        if self.role == "user":
            self._arrange_as_user(outer)
        else:
            self._arrange_as_answer(outer)
        outer.addLayout(self.actions_row)
        self.render_all()
        self._update_decorations()

    def _build_header(self) -> None:
        self.header = QHBoxLayout()
        self.header.setSpacing(8)
        self.role_label = QLabel(self.author())
        self.role_label.setObjectName("roleLabel")
        if self.role == "assistant" and self.model:
            self.role_label.setToolTip(f"Written by {self.model}")
        self.badge = QLabel()
        self.badge.setObjectName("statusBadge")
        self.badge.hide()
        self.header.addWidget(self.role_label)
        self.header.addWidget(self.badge)
        self.header.addStretch(1)

    def author(self) -> str:
        """Who wrote the message: "You", or the name of the model that wrote the answer."""
        if self.role == "user":
            return "You"
        return self.model or "Scout"

    def _build_body(self) -> None:
        self.body = QWidget()
        self.body_layout = QVBoxLayout(self.body)
        self.body_layout.setContentsMargins(0, 0, 0, 0)
        self.body_layout.setSpacing(0)
        self.typing_label = QLabel("Thinking…")
        self.typing_label.setObjectName("metaLabel")
        self.typing_label.hide()
        self.body_layout.addWidget(self.typing_label)
        self.reading_box: QWidget | None = None  # "Reading part 3 of 16…" while a document is read
        self.error_label = QLabel()
        self.error_label.setObjectName("metaLabel")
        self.error_label.setWordWrap(True)
        self.error_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.error_label.hide()

    def _build_actions(self) -> None:
        self.actions_row = QHBoxLayout()
        self.actions_row.setSpacing(2)
        self.stats_label = QLabel()
        self.stats_label.setObjectName("statsLabel")
        self.copy_button = self._action("copy", "Copy message", self._on_copy_button_clicked)
        self.edit_button = self._action("edit", "Edit and resend", self._on_edit_button_clicked)
        self.regenerate_button = self._action("regenerate", "Regenerate", self._on_regenerate_button_clicked)
        self.sources_button = self._action("eye", "What the model saw", self._on_sources_button_clicked)
        self.continue_button = QToolButton()
        self.continue_button.setObjectName("continueButton")
        self.continue_button.setText("Continue")
        self.continue_button.setToolTip("Carry on writing this answer from where it stopped")
        self.continue_button.setAccessibleName("Continue the answer")
        self.continue_button.setCursor(Qt.CursorShape.PointingHandCursor)
        self.continue_button.setFocusPolicy(Qt.FocusPolicy.TabFocus)
        self.continue_button.clicked.connect(self._on_continue_button_clicked)
        self.continue_button.hide()
        self.edit_button.hide()
        self.regenerate_button.hide()
        self.sources_button.hide()
        # ‹ 2/3 ›: this message has other branches beside it
        self.branch_box = QWidget()
        self.branch_box.setObjectName("branchControl")
        branch_layout = QHBoxLayout(self.branch_box)
        branch_layout.setContentsMargins(0, 0, 0, 0)
        branch_layout.setSpacing(0)
        self.branch_prev = self._branch_button("‹", "Previous branch", self._on_branch_prev_clicked)
        self.branch_label = QLabel()
        self.branch_label.setObjectName("branchLabel")
        self.branch_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.branch_next = self._branch_button("›", "Next branch", self._on_branch_next_clicked)
        branch_layout.addWidget(self.branch_prev)
        branch_layout.addWidget(self.branch_label)
        branch_layout.addWidget(self.branch_next)
        self.branch_box.hide()
        self.branch_position: tuple[int, int] | None = None
        # the context menu (right click): this message's branch can be deleted while it has siblings
        self.delete_branch_action = QAction("Delete this branch…", self)
        self.delete_branch_action.setToolTip(
            "Delete this message and everything after it on this branch (the branch beside it stays)"
        )
        self.delete_branch_action.triggered.connect(self._on_delete_branch_action_triggered)
        self.delete_branch_action.setEnabled(False)
        self.addAction(self.delete_branch_action)
        self.setContextMenuPolicy(Qt.ContextMenuPolicy.ActionsContextMenu)

    def menu_actions(self) -> list[QAction]:
        """The message's context-menu actions (also offered in its text's own menu)."""
        return [self.delete_branch_action]

    def _arrange_as_user(self, outer: QVBoxLayout) -> None:
        """A bubble on the right; Edit and Copy under it."""
        bubble = QFrame()
        self.bubble = bubble
        bubble.setObjectName("userBubble")
        bubble_layout = QVBoxLayout(bubble)
        bubble_layout.setContentsMargins(14, 10, 14, 10)
        bubble_layout.addWidget(self.body)
        self.bubble_layout = bubble_layout
        bubble.setSizePolicy(QSizePolicy.Policy.Maximum, QSizePolicy.Policy.Preferred)
        row = QHBoxLayout()
        row.addStretch(1)
        row.addWidget(bubble)
        outer.addLayout(row)
        self.actions_row.addStretch(1)
        self.actions_row.addWidget(self.branch_box)
        self.actions_row.addWidget(self.edit_button)
        self.actions_row.addWidget(self.copy_button)
        self.role_label.hide()

    def _arrange_as_answer(self, outer: QVBoxLayout) -> None:
        """Header, body and error across the column; actions and stats under them."""
        outer.addLayout(self.header)
        outer.addWidget(self.body)
        outer.addWidget(self.error_label)
        self.actions_row.addWidget(self.branch_box)
        self.actions_row.addWidget(self.copy_button)
        self.actions_row.addWidget(self.edit_button)
        self.actions_row.addWidget(self.regenerate_button)
        self.actions_row.addWidget(self.sources_button)
        self.actions_row.addWidget(self.continue_button)
        self.actions_row.addSpacing(6)
        self.actions_row.addWidget(self.stats_label)
        self.actions_row.addStretch(1)

    # -- construction helpers ---------------------------------------------------------------
    def _action(self, icon_name: str, tip: str, slot: Any) -> QToolButton:
        button = QToolButton()
        button.setObjectName("messageAction")
        button.setToolTip(tip)
        button.setAccessibleName(tip)
        button.setIcon(theme.icon(icon_name, role=self.foregroundRole()))  # follows the theme
        button.setIconSize(QSize(15, 15))
        button.setCursor(Qt.CursorShape.PointingHandCursor)
        button.setFocusPolicy(Qt.FocusPolicy.TabFocus)
        button.clicked.connect(slot)
        return button

    def _branch_button(self, text: str, tip: str, slot: Any) -> QToolButton:
        button = QToolButton()
        button.setObjectName("branchButton")
        button.setText(text)
        button.setToolTip(tip)
        button.setAccessibleName(tip)
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
            if self.stats.get("sources") and self.status != MessageStatus.STREAMING:
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
            if self.status == MessageStatus.STREAMING:
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

    def set_reading_progress(self, done: int, total: int) -> None:
        """Show that the document is being read in parts (part ``done`` + 1 of ``total``)."""
        if self.reading_box is None:
            self.reading_box = QWidget()
            self.reading_box.setObjectName("readingProgress")
            box = QVBoxLayout(self.reading_box)
            box.setContentsMargins(0, 2, 0, 8)
            box.setSpacing(4)
            self.reading_label = QLabel()
            self.reading_label.setObjectName("metaLabel")
            self.reading_bar = QProgressBar()
            self.reading_bar.setObjectName("readingBar")
            self.reading_bar.setTextVisible(False)
            self.reading_bar.setFixedHeight(6)
            self.reading_bar.setMaximumWidth(360)
            box.addWidget(self.reading_label)
            box.addWidget(self.reading_bar)
            self.body_layout.insertWidget(0, self.reading_box)
        self.reading_bar.setRange(0, max(1, total))
        self.reading_bar.setValue(done)
        if done < total:
            self.reading_label.setText(
                f"Reading the whole document: part {done + 1} of {total}… (Stop keeps what was read)"
            )
        else:
            self.reading_label.setText(f"Read all {total} parts; writing the answer from the notes…")
        self.reading_box.show()
        self._update_decorations()

    def finish(self, status: MessageStatus, stats: dict[str, Any] | None = None, error: str = "") -> None:
        if self.reading_box is not None:
            self.reading_box.hide()
        self.status = status
        if stats is not None:
            self.stats = stats
        if error:
            self.error_text = error
        self._update_live()
        self._update_decorations()

    # -- decorations ------------------------------------------------------------------------
    def _update_decorations(self) -> None:
        streaming = self.status == MessageStatus.STREAMING
        reading = self.reading_box is not None and self.reading_box.isVisibleTo(self)
        self.typing_label.setVisible(streaming and not self.text and not reading)
        badge = STATUS_BADGES.get(self.status, "")
        if self.status == MessageStatus.INTERRUPTED and self.stats.get("error"):
            badge = "interrupted — the model engine stopped"
        if not badge and self.stats.get("finish_reason") == FinishReason.LENGTH:
            badge = "cut off at the max-tokens limit"
        self.badge.setText(badge)
        self.badge.setProperty("kind", "error" if self.status == MessageStatus.ERROR else "info")
        self.badge.style().unpolish(self.badge)
        self.badge.style().polish(self.badge)
        self.badge.setVisible(bool(badge))
        self.error_label.setText(self.error_text)
        error_states = (MessageStatus.ERROR, MessageStatus.INTERRUPTED)
        self.error_label.setVisible(self.status in error_states and bool(self.error_text))
        self.stats_label.setText(self._stats_text())
        self.copy_button.setVisible(not streaming or bool(self.text))
        self.sources_button.setVisible(
            self.role == "assistant" and not streaming and bool(self.stats.get("sources"))
        )

    def _stats_text(self) -> str:
        if self.status == MessageStatus.STREAMING or self.role != "assistant":
            return ""
        parts = []
        tps = self.stats.get("tokens_per_s")
        if isinstance(tps, (int, float)) and tps > 0:
            parts.append(f"{tps:.1f} tok/s")
        tokens = self.stats.get("completion_tokens")
        if isinstance(tokens, int) and tokens > 0:
            parts.append(f"{tokens} tokens")
        return " · ".join(parts)

    def set_actions(
        self, *, can_edit: bool, can_regenerate: bool, can_switch: bool = True, can_continue: bool = False
    ) -> None:
        """Which actions show; ``can_continue``: this is the last answer and nothing is being
        written (Continue then shows if the answer stopped before its end)."""
        streaming = self.status == MessageStatus.STREAMING
        self.continue_button.setVisible(can_continue and self.is_unfinished())
        self.edit_button.setVisible(can_edit and not streaming)
        self.edit_button.setToolTip("Edit and resend" if self.role == "user" else "Edit this answer")
        self.regenerate_button.setVisible(self.role == "assistant" and can_regenerate)
        position = self.branch_position
        self.branch_prev.setEnabled(can_switch and position is not None and position[0] > 1)
        self.branch_next.setEnabled(can_switch and position is not None and position[0] < position[1])
        self.delete_branch_action.setEnabled(can_switch and position is not None and position[1] > 1)

    def is_unfinished(self) -> bool:
        """An answer that stopped before its end (stopped, interrupted, cut off by a limit)."""
        return answer_unfinished(self.role, self.text, self.status, self.stats.get("finish_reason"))

    def resume(self) -> None:
        """The answer streams again (Continue): its badge and figures wait for the new end."""
        self.status = MessageStatus.STREAMING
        self.error_text = ""
        self.continue_button.hide()
        self._update_decorations()

    def set_branch(self, position: tuple[int, int] | None) -> None:
        """``(2, 3)``: this message is the 2nd of 3 branches (shown as ‹ 2/3 ›); None: the only one."""
        self.branch_position = position
        if position is None:
            self.branch_box.hide()
            self.delete_branch_action.setEnabled(False)
            return
        index, count = position
        self.delete_branch_action.setEnabled(count > 1)
        self.branch_label.setText(f"{index}/{count}")
        self.branch_label.setAccessibleName(f"Branch {index} of {count}")
        self.branch_prev.setEnabled(index > 1)
        self.branch_next.setEnabled(index < count)
        self.branch_box.show()

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

    def _on_continue_button_clicked(self) -> None:
        self.continue_requested.emit(self.message_id)

    def _on_regenerate_button_clicked(self) -> None:
        self.regenerate_requested.emit(self.message_id)

    def _on_branch_prev_clicked(self) -> None:
        self.branch_requested.emit(self.message_id, -1)

    def _on_branch_next_clicked(self) -> None:
        self.branch_requested.emit(self.message_id, 1)

    def _on_delete_branch_action_triggered(self) -> None:
        self.delete_branch_requested.emit(self.message_id)

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
        self.status = MessageStatus(message.status or MessageStatus.COMPLETE)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 8, 0, 8)
        self.label = QLabel(self.text)
        self.label.setObjectName("noticeLabel")
        self.label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.label.setWordWrap(True)  # a long marker wraps in a narrow column instead of being cut
        layout.addWidget(self.label, 1)

    def render_all(self) -> None:
        self.label.setText(self.text)
