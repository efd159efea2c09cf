"""The conversation: one widget per message in a scroll area, Markdown answers, incremental streaming.

Rendering cost is what matters here (a 4,000-token answer must never stall the GUI), so:

* streamed deltas are only buffered by :meth:`ChatView.append_delta`; a 40 ms single-shot
  ``QTimer`` (qutebrowser's ``_update_timer``) flushes them, so the answer is re-rendered at most
  25 times a second however fast tokens arrive;
* an answer is split into *segments* at Markdown block boundaries that later text cannot change
  (:func:`app.ui.markdown_render.stable_boundaries`). Finished segments are rendered once and
  frozen; only the live tail (a paragraph or two, or the code block being written) is re-parsed
  and re-laid out per flush. Finished code blocks come highlighted from a cache.

The message widgets are in :mod:`app.ui.message_widget`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QEvent, Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from app.core.store import MessageStatus
from app.core.types import FinishReason
from app.ui import theme
from app.ui.compare_view import ComparePanel
from app.ui.message_widget import MessageWidget, NoticeWidget
from app.ui.queue_panel import QueuePanel
from app.ui.tool_card import ToolCallCard

if TYPE_CHECKING:
    from app.core.store import Attachment
    from app.core.types import GenerationStats
    from app.workers.conversations import CompareRun, MessageQueue

log = logging.getLogger(__name__)

UPDATE_INTERVAL_MS = 40
RETIRE_PER_PASS = 4  # replaced message widgets deleted per event-loop pass
COLUMN_MAX_WIDTH = 860
BOTTOM_SLACK_PX = 32  # "at the bottom" tolerance for keeping the view pinned while streaming


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
        edit_requested(int): message id of the user message to edit (sent as a new branch).
        continue_requested(int): message id of the stopped or cut-off answer to continue.
        regenerate_requested(int): message id of the answer to write again (a new branch).
        branch_requested(int, int): message id, step (-1, +1): show the branch beside it.
        copied(str): what was copied, for a status message ("message" or "code").
        citation_clicked(int, int): message id, page of a clicked citation in an answer.
        sources_requested(int): message id of the answer whose "What the model saw" was clicked.
        tool_decision_requested(int, str): answer message id, ``once`` | ``always`` | ``deny``.
        delete_branch_requested(int): message id whose branch the user wants deleted (menu).
        keep_requested(int): the answer of a comparison the user keeps ("Keep this one").
    """

    open_model_requested = Signal()
    edit_requested = Signal(int)
    regenerate_requested = Signal(int)
    continue_requested = Signal(int)
    branch_requested = Signal(int, int)
    copied = Signal(str)
    citation_clicked = Signal(int, int)
    sources_requested = Signal(int)
    tool_decision_requested = Signal(int, str)
    delete_branch_requested = Signal(int)
    keep_requested = Signal(int)

    PAGE_NO_MODEL, PAGE_EMPTY, PAGE_MESSAGES = range(3)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._widgets: dict[int, MessageWidget | NoticeWidget] = {}
        self._cards: dict[int, ToolCallCard] = {}
        self.compare_panel: ComparePanel | None = None  # a comparison's two answers, side by side
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

        self._focus: int | None = None  # a message to bring into view once laid out
        self._focus_timer = QTimer(self)
        self._focus_timer.setSingleShot(True)
        self._focus_timer.setInterval(0)
        self._focus_timer.timeout.connect(self._on_focus_timer_timeout)

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
        self.queue_panel = QueuePanel()  # messages sent while the answer is written, under it
        self.column_layout.addWidget(self.queue_panel)
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
        panel: list[QWidget] = [self._take_compare_panel()] if self.compare_panel is not None else []
        for widget in [*self._widgets.values(), *self._cards.values(), *panel]:
            self.column_layout.removeWidget(widget)
            widget.hide()
            self._retired.append(widget)
        self._cards.clear()
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

    def show_path(self, messages: list[Any], focus: int) -> None:
        """Show another branch of the conversation, keeping message ``focus`` in view."""
        self.set_messages(messages)
        if focus in self._widgets and focus != self._order[-1]:
            self._stick_to_bottom = False
            self._focus = focus
            self._focus_timer.start()

    def set_queue(self, queue: MessageQueue | None) -> None:
        """The messages waiting to be sent after the answer (None: none)."""
        at_bottom = self._stick_to_bottom
        self.queue_panel.set_queue(queue)
        if at_bottom:
            self._stick_to_bottom = True
            self.scroll_to_bottom()

    def set_branches(self, positions: dict[int, tuple[int, int]]) -> None:
        """Which messages have branches beside them: message id → (its place from 1, how many)."""
        for message_id in self._order:  # a comparison's answers are not on the path yet
            widget = self._widgets[message_id]
            if isinstance(widget, MessageWidget):
                widget.set_branch(positions.get(message_id))
        self._refresh_actions()

    def add_message(self, message: Any) -> None:
        self._insert(message)
        self._refresh_actions()
        self._update_page()
        if message.role == "user":
            self._stick_to_bottom = True  # sending always shows the answer
            self.scroll_to_bottom()

    # -- compare: two answers side by side ---------------------------------------------------------
    def start_compare(self, run: CompareRun) -> None:
        """A comparison starts: its panel goes under the question (the last message shown)."""
        self.end_compare()
        panel = ComparePanel(run)
        panel.keep_requested.connect(self._on_compare_panel_keep_requested)
        self.compare_panel = panel
        self.column_layout.insertWidget(self.column_layout.count() - 2, panel)  # above the queue
        self._stick_to_bottom = True
        self.scroll_to_bottom()

    def add_compare_answer(self, side: int, message: Any) -> None:
        """One side's answer starts: it streams in its column (``append_delta`` by its id)."""
        if self.compare_panel is None:
            return
        widget = MessageWidget(message)
        widget.copy_requested.connect(self._on_message_copy_requested)
        widget.code_copied.connect(self._on_message_code_copied)
        self._widgets[message.id] = widget  # streamed into like any answer, not on the path (_order)
        self.compare_panel.set_answer(side, widget)

    def finish_compare(self, run: CompareRun) -> None:
        if self.compare_panel is not None:
            self.flush()
            self.compare_panel.finish(run)

    def end_compare(self) -> None:
        """Take the comparison's panel away (its answers are then shown as branches)."""
        if self.compare_panel is None:
            return
        panel = self._take_compare_panel()
        self.column_layout.removeWidget(panel)
        panel.hide()
        panel.deleteLater()

    def _take_compare_panel(self) -> ComparePanel:
        """The panel, no longer the chat's: its answers leave the streamed-into widgets (they are
        the panel's children and go with it)."""
        panel = self.compare_panel
        assert panel is not None
        self.compare_panel = None
        for side in range(2):
            answer = panel.answer(side)
            if answer is not None:
                self._widgets.pop(answer.message_id, None)
                self._pending.pop(answer.message_id, None)
        return panel

    def _on_compare_panel_keep_requested(self, message_id: int) -> None:
        self.keep_requested.emit(message_id)

    def show_tool_call(self, message_id: int, record: dict[str, Any]) -> None:
        """Show (or update) the tool call card under the answer ``message_id``."""
        card = self._cards.get(message_id)
        if card is not None:
            card.set_record(record)
            return
        anchor = self._widgets.get(message_id)
        if anchor is None:
            return
        card = ToolCallCard(message_id, record)
        card.decided.connect(self._on_card_decided)
        self._cards[message_id] = card
        self.column_layout.insertWidget(self.column_layout.indexOf(anchor) + 1, card)
        if self._stick_to_bottom:
            self.scroll_to_bottom()

    def tool_card(self, message_id: int) -> ToolCallCard | None:
        return self._cards.get(message_id)

    def _on_card_decided(self, message_id: int, decision: str) -> None:
        self.tool_decision_requested.emit(message_id, decision)

    def remove_message(self, message_id: int) -> None:
        card = self._cards.pop(message_id, None)
        if card is not None:
            self.column_layout.removeWidget(card)
            card.deleteLater()
        widget = self._widgets.pop(message_id, None)
        self._pending.pop(message_id, None)
        if widget is None:
            return
        self._order.remove(message_id)
        self.column_layout.removeWidget(widget)
        widget.hide()  # at once: deletion waits for the event loop
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

    def resume_message(self, message_id: int) -> None:
        """The answer is being continued: it streams again (Continue)."""
        widget = self._widgets.get(message_id)
        if isinstance(widget, MessageWidget):
            widget.resume()
        self._refresh_actions()

    def set_reading_progress(self, message_id: int, done: int, total: int) -> None:
        """An answer whose document is being read in parts: part ``done`` of ``total``."""
        widget = self._widgets.get(message_id)
        if isinstance(widget, MessageWidget):
            widget.set_reading_progress(done, total)

    def finish_message(self, message_id: int, stats: GenerationStats) -> None:
        """The answer ended; show its status and figures."""
        self.flush()
        widget = self._widgets.get(message_id)
        if not isinstance(widget, MessageWidget):
            return
        stats_dict = {
            "tokens_per_s": stats.tokens_per_s,
            "completion_tokens": stats.completion_tokens,
            "finish_reason": stats.finish_reason,
        }
        cancelled = stats.finish_reason == FinishReason.CANCELLED
        widget.finish(MessageStatus.CANCELLED if cancelled else MessageStatus.COMPLETE, stats_dict)
        self._refresh_actions()

    def fail_message(self, message_id: int, error: str) -> None:
        self.flush()
        widget = self._widgets.get(message_id)
        if isinstance(widget, MessageWidget):
            widget.finish(MessageStatus.ERROR, error=error)
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

    def message_stats(self, message_id: int) -> dict[str, Any]:
        """The figures shown with an answer (sources, context mode…); empty for other messages."""
        widget = self._widgets.get(message_id)
        return widget.stats if isinstance(widget, MessageWidget) else {}

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
            widget.continue_requested.connect(self._on_message_continue_requested)
            widget.branch_requested.connect(self._on_message_branch_requested)
            widget.delete_branch_requested.connect(self._on_message_delete_branch_requested)
            widget.code_copied.connect(self._on_message_code_copied)
            widget.citation_clicked.connect(self._on_message_citation_clicked)
            widget.sources_requested.connect(self._on_message_sources_requested)
        else:
            return  # system prompts are not shown in the conversation
        self._widgets[message.id] = widget
        self._order.append(message.id)
        self.column_layout.insertWidget(self.column_layout.count() - 2, widget)  # above the queue
        record = message.stats.get("tool_call") if message.role == "assistant" and message.stats else None
        if isinstance(record, dict):
            self.show_tool_call(message.id, record)

    def _refresh_actions(self) -> None:
        """Any user message can be edited and any answer written again (each a new branch), and
        branches switched, while no answer is being written."""
        previous_role = ""
        last = self._order[-1] if self._order else None
        for message_id in self._order:
            widget = self._widgets[message_id]
            if isinstance(widget, MessageWidget):
                widget.set_actions(
                    can_edit=not self._busy,
                    can_regenerate=not self._busy and previous_role in ("user", "notice"),
                    can_switch=not self._busy,
                    can_continue=not self._busy and message_id == last,
                )
            previous_role = widget.role

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

    def _on_message_regenerate_requested(self, message_id: int) -> None:
        self.regenerate_requested.emit(message_id)

    def _on_message_continue_requested(self, message_id: int) -> None:
        self.continue_requested.emit(message_id)

    def _on_message_delete_branch_requested(self, message_id: int) -> None:
        self.delete_branch_requested.emit(message_id)

    def _on_message_branch_requested(self, message_id: int, step: int) -> None:
        self.branch_requested.emit(message_id, step)

    def _on_focus_timer_timeout(self) -> None:
        widget = self._widgets.get(self._focus) if self._focus is not None else None
        self._focus = None
        if widget is not None:
            self.scroll_area.ensureWidgetVisible(widget, 0, 80)

    def _on_message_code_copied(self, _code: str) -> None:
        self.copied.emit("code")

    def _on_message_citation_clicked(self, message_id: int, page: int) -> None:
        self.citation_clicked.emit(message_id, page)

    def _on_message_sources_requested(self, message_id: int) -> None:
        self.sources_requested.emit(message_id)
