"""The message composer: attachment chips, a paperclip, a text box that grows with its content,
and a Send / Stop button."""

from __future__ import annotations

from typing import TYPE_CHECKING

from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QFontMetrics
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app.ui import theme
from app.ui.attachment_chips import AttachmentsBar
from app.ui.attachment_drops import has_attachments, mime_attachments

if TYPE_CHECKING:
    from PySide6.QtCore import QMimeData
    from PySide6.QtGui import QFocusEvent, QKeyEvent

MAX_LINES = 8


class ComposerEdit(QPlainTextEdit):
    """Enter submits, Shift+Enter inserts a line break, Esc cancels. Files and images pasted or
    dropped here become attachments; plain text still pastes as text.

    Signals:
        submitted(): Enter was pressed.
        escape_pressed(): Esc was pressed.
        focus_changed(bool): the edit gained (True) or lost focus.
        attachments_pasted(object): DroppedItems (files, image bytes, web addresses).
    """

    submitted = Signal()
    escape_pressed = Signal()
    focus_changed = Signal(bool)
    attachments_pasted = Signal(object)

    def canInsertFromMimeData(self, source: QMimeData) -> bool:
        return has_attachments(source) or super().canInsertFromMimeData(source)

    def insertFromMimeData(self, source: QMimeData) -> None:
        items = mime_attachments(source) if has_attachments(source) else None
        if items and (items.paths or items.images or not source.hasText()):
            self.attachments_pasted.emit(items)
            return
        super().insertFromMimeData(source)

    def keyPressEvent(self, event: QKeyEvent) -> None:
        key = event.key()
        if key in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
            if event.modifiers() & Qt.KeyboardModifier.ShiftModifier:
                self.insertPlainText("\n")
            else:
                self.submitted.emit()
            event.accept()
            return
        if key == Qt.Key.Key_Escape:
            self.escape_pressed.emit()
            event.accept()
            return
        super().keyPressEvent(event)

    def focusInEvent(self, event: QFocusEvent) -> None:
        super().focusInEvent(event)
        self.focus_changed.emit(True)

    def focusOutEvent(self, event: QFocusEvent) -> None:
        super().focusOutEvent(event)
        self.focus_changed.emit(False)


class Composer(QFrame):
    """Where the user writes. Send turns into Stop while an answer is being generated.

    Signals:
        send_requested(str): the text to send (already stripped; the box is cleared).
        edit_requested(str): the new text for the message being edited (edit mode).
        stop_requested(): stop the answer being generated.
        attachments_pasted(object): DroppedItems pasted or dropped into the text box.
        read_whole_requested(str): "Read the whole document" with the text typed (may be empty).
    """

    send_requested = Signal(str)
    edit_requested = Signal(str)
    stop_requested = Signal()
    attachments_pasted = Signal(object)
    read_whole_requested = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("composer")
        self._can_read_whole = False
        self._busy = False
        self._model_ready = False
        self._editing = False

        self.editing_bar = QWidget()
        editing_layout = QHBoxLayout(self.editing_bar)
        editing_layout.setContentsMargins(4, 0, 0, 0)
        self.editing_label = QLabel(
            "Editing — Enter sends it as a new branch (the old one stays), Esc cancels"
        )
        self.editing_label.setObjectName("editingBar")
        self.cancel_edit_button = QToolButton()
        self.cancel_edit_button.setObjectName("messageAction")
        self.cancel_edit_button.setIcon(theme.icon("close"))
        self.cancel_edit_button.setToolTip("Cancel editing")
        self.cancel_edit_button.clicked.connect(self._on_cancel_edit_button_clicked)
        editing_layout.addWidget(self.editing_label, 1)
        editing_layout.addWidget(self.cancel_edit_button)
        self.editing_bar.hide()

        self.edit = ComposerEdit()
        self.edit.setObjectName("composerEdit")
        self.edit.setFrameShape(QFrame.Shape.NoFrame)
        self.edit.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.edit.setTabChangesFocus(True)
        self.edit.setPlaceholderText("Message Scout…")
        self.edit.document().setDocumentMargin(2)
        self.edit.textChanged.connect(self._on_edit_text_changed)
        self.edit.submitted.connect(self._on_edit_submitted)
        self.edit.escape_pressed.connect(self._on_edit_escape_pressed)
        self.edit.focus_changed.connect(self._on_edit_focus_changed)
        self.edit.attachments_pasted.connect(self._on_edit_attachments_pasted)

        self.attachments_bar = AttachmentsBar()
        self.attach_button = QToolButton()
        self.attach_button.setObjectName("attachButton")
        self.attach_button.setFixedSize(QSize(34, 34))
        self.attach_button.setIconSize(QSize(18, 18))
        self.attach_button.setIcon(theme.icon("paperclip"))
        self.attach_button.setCursor(Qt.CursorShape.PointingHandCursor)
        self.attach_button.setToolTip("Attach images or documents")
        self.attach_button.setAccessibleName("Attach files")

        self.read_whole_button = QToolButton()
        self.read_whole_button.setObjectName("readWholeButton")
        self.read_whole_button.setText("Read whole")
        self.read_whole_button.setIcon(theme.icon("file"))
        self.read_whole_button.setIconSize(QSize(16, 16))
        self.read_whole_button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.read_whole_button.setFixedHeight(34)
        self.read_whole_button.setCursor(Qt.CursorShape.PointingHandCursor)
        self.read_whole_button.setToolTip(
            "Read the whole document for this question, in parts (slower; for questions like "
            "“list every deadline”). Without a question: summarize it."
        )
        self.read_whole_button.setAccessibleName("Read the whole document")
        self.read_whole_button.clicked.connect(self._on_read_whole_button_clicked)
        self.read_whole_button.hide()

        self.send_button = QToolButton()
        self.send_button.setObjectName("sendButton")
        self.send_button.setFixedSize(QSize(34, 34))
        self.send_button.setIconSize(QSize(18, 18))
        self.send_button.setCursor(Qt.CursorShape.PointingHandCursor)
        self.send_button.clicked.connect(self._on_send_button_clicked)

        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.setSpacing(8)
        row.addWidget(self.attach_button, 0, Qt.AlignmentFlag.AlignBottom)
        row.addWidget(self.edit, 1)
        row.addWidget(self.read_whole_button, 0, Qt.AlignmentFlag.AlignBottom)
        row.addWidget(self.send_button, 0, Qt.AlignmentFlag.AlignBottom)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(12, 8, 8, 8)
        layout.setSpacing(4)
        layout.addWidget(self.editing_bar)
        layout.addWidget(self.attachments_bar)
        layout.addLayout(row)
        self._fit_height()
        self._update_button()

    # -- public API -------------------------------------------------------------------------
    @property
    def is_busy(self) -> bool:
        return self._busy

    @property
    def is_editing(self) -> bool:
        return self._editing

    def text(self) -> str:
        return self.edit.toPlainText()

    def set_text(self, text: str) -> None:
        self.edit.setPlainText(text)
        cursor = self.edit.textCursor()
        cursor.movePosition(cursor.MoveOperation.End)
        self.edit.setTextCursor(cursor)

    def set_busy(self, busy: bool) -> None:
        self._busy = busy
        self._update_button()

    def set_model_ready(self, ready: bool) -> None:
        self._model_ready = ready
        self.edit.setPlaceholderText("Message Scout…" if ready else "Load a model to start chatting")
        self._update_button()

    def set_can_read_whole(self, can: bool) -> None:
        """Show "Read whole" while the conversation has a document too long to send whole."""
        self._can_read_whole = can
        self._update_button()

    def begin_edit(self, text: str) -> None:
        """Put a message in the box; Enter sends the edit through ``edit_requested``."""
        self._editing = True
        self.editing_bar.show()
        self.set_text(text)
        self.focus()
        self._update_button()

    def cancel_edit(self) -> None:
        if self._editing:
            self._editing = False
            self.editing_bar.hide()
            self.edit.clear()
            self._update_button()

    def focus(self) -> None:
        self.edit.setFocus(Qt.FocusReason.ShortcutFocusReason)

    def can_send(self) -> bool:
        return self._model_ready and not self._busy and bool(self.text().strip())

    # -- internals --------------------------------------------------------------------------
    def _submit(self) -> None:
        if not self.can_send():
            return
        text = self.text().strip()
        editing = self._editing
        self._editing = False
        self.editing_bar.hide()
        self.edit.clear()
        if editing:
            self.edit_requested.emit(text)
        else:
            self.send_requested.emit(text)

    def _update_button(self) -> None:
        if self._busy:
            self.send_button.setIcon(theme.icon("stop", "#ffffff"))
            self.send_button.setToolTip("Stop (Esc)")
            self.send_button.setAccessibleName("Stop")
            self.send_button.setEnabled(True)
        else:
            self.send_button.setIcon(theme.icon("send", "#ffffff"))
            self.send_button.setToolTip("Resend (Enter)" if self._editing else "Send (Enter)")
            self.send_button.setAccessibleName("Send")
            self.send_button.setEnabled(self.can_send())
        self.read_whole_button.setVisible(self._can_read_whole and not self._editing)
        self.read_whole_button.setEnabled(self._model_ready and not self._busy)
        self.send_button.setProperty("busy", self._busy)
        self.send_button.style().unpolish(self.send_button)
        self.send_button.style().polish(self.send_button)

    def _fit_height(self) -> None:
        metrics = QFontMetrics(self.edit.font())
        wanted = self._visual_lines()
        lines = max(1, min(MAX_LINES, wanted))
        self.edit.setVerticalScrollBarPolicy(
            Qt.ScrollBarPolicy.ScrollBarAsNeeded
            if wanted > MAX_LINES
            else Qt.ScrollBarPolicy.ScrollBarAlwaysOff
        )
        margins = int(self.edit.document().documentMargin() * 2) + 6
        self.edit.setFixedHeight(lines * metrics.lineSpacing() + margins)

    def _visual_lines(self) -> int:
        document = self.edit.document()
        return max(document.blockCount(), document.lineCount())

    # -- slots ------------------------------------------------------------------------------
    def _on_edit_text_changed(self) -> None:
        self._fit_height()
        self._update_button()

    def _on_edit_submitted(self) -> None:
        self._submit()

    def _on_edit_escape_pressed(self) -> None:
        if self._busy:
            self.stop_requested.emit()
        elif self._editing:
            self.cancel_edit()

    def _on_edit_focus_changed(self, focused: bool) -> None:
        self.setProperty("focused", focused)
        self.style().unpolish(self)
        self.style().polish(self)

    def _on_send_button_clicked(self) -> None:
        if self._busy:
            self.stop_requested.emit()
        else:
            self._submit()

    def _on_read_whole_button_clicked(self) -> None:
        if not self._model_ready or self._busy:
            return
        text = self.text().strip()
        self.edit.clear()
        self.read_whole_requested.emit(text)

    def _on_cancel_edit_button_clicked(self) -> None:
        self.cancel_edit()

    def _on_edit_attachments_pasted(self, items: object) -> None:
        self.attachments_pasted.emit(items)
