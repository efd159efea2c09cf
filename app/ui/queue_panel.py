"""Messages sent while an answer was being written, shown under the answer until they go out."""

from __future__ import annotations

from typing import TYPE_CHECKING

from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QPushButton, QToolButton, QVBoxLayout, QWidget

from app.ui import theme

if TYPE_CHECKING:
    from app.workers.conversations import MessageQueue, QueuedMessage


class QueuedMessageWidget(QFrame):
    """One waiting message: its text, Edit and Cancel.

    Signals:
        edit_requested(int): queue item id.
        cancel_requested(int): queue item id.
    """

    edit_requested = Signal(int)
    cancel_requested = Signal(int)

    def __init__(self, item: QueuedMessage, position: int, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.item_id = item.id
        self.text = item.text
        self.setObjectName("queuedMessage")
        layout = QHBoxLayout(self)
        layout.setContentsMargins(12, 6, 6, 6)
        layout.setSpacing(6)
        self.tag = QLabel(f"Queued {position}")
        self.tag.setObjectName("statusBadge")
        self.tag.setProperty("kind", "info")
        self.label = QLabel(item.text)
        self.label.setObjectName("queuedText")
        self.label.setWordWrap(True)
        self.label.setTextFormat(Qt.TextFormat.PlainText)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.edit_button = self._button("edit", "Edit this queued message", self._on_edit_button_clicked)
        self.cancel_button = self._button("close", "Cancel: never send it", self._on_cancel_button_clicked)
        layout.addWidget(self.tag, 0, Qt.AlignmentFlag.AlignTop)
        layout.addWidget(self.label, 1)
        layout.addWidget(self.edit_button, 0, Qt.AlignmentFlag.AlignTop)
        layout.addWidget(self.cancel_button, 0, Qt.AlignmentFlag.AlignTop)

    def _button(self, icon: str, tip: str, slot: object) -> QToolButton:
        button = QToolButton()
        button.setObjectName("messageAction")
        button.setIcon(theme.icon(icon, role=self.foregroundRole()))
        button.setIconSize(QSize(15, 15))
        button.setToolTip(tip)
        button.setAccessibleName(tip)
        button.setCursor(Qt.CursorShape.PointingHandCursor)
        button.clicked.connect(slot)
        return button

    def _on_edit_button_clicked(self) -> None:
        self.edit_requested.emit(self.item_id)

    def _on_cancel_button_clicked(self) -> None:
        self.cancel_requested.emit(self.item_id)


class QueuePanel(QWidget):
    """The queue of the conversation shown: a line saying when the messages go out, then each.

    Signals:
        edit_requested(int): queue item id.
        cancel_requested(int): queue item id.
        resume_requested(): send the messages of a paused queue.
    """

    edit_requested = Signal(int)
    cancel_requested = Signal(int)
    resume_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("queuePanel")
        self.items: list[QueuedMessageWidget] = []
        layout = QVBoxLayout(self)
        layout.setContentsMargins(48, 4, 0, 4)
        layout.setSpacing(4)
        head = QHBoxLayout()
        head.setSpacing(8)
        self.note = QLabel()
        self.note.setObjectName("metaLabel")
        self.note.setWordWrap(True)
        self.resume_button = QPushButton("Resume")
        self.resume_button.setToolTip("Send the queued messages, one after the other")
        self.resume_button.setCursor(Qt.CursorShape.PointingHandCursor)
        self.resume_button.clicked.connect(self._on_resume_button_clicked)
        head.addWidget(self.note, 1)
        head.addWidget(self.resume_button)
        layout.addLayout(head)
        self.list_layout = QVBoxLayout()
        self.list_layout.setSpacing(4)
        layout.addLayout(self.list_layout)
        self.hide()

    def set_queue(self, queue: MessageQueue | None) -> None:
        for widget in self.items:
            self.list_layout.removeWidget(widget)
            widget.hide()
            widget.deleteLater()
        self.items = []
        if queue is None or not queue.items:
            self.hide()
            return
        count = len(queue.items)
        if queue.paused:
            self.note.setText(queue.paused)
        else:
            waiting = "It goes" if count == 1 else "They go"
            self.note.setText(f"{waiting} out when this answer ends, in this order.")
        self.resume_button.setVisible(bool(queue.paused))
        for position, item in enumerate(queue.items, start=1):
            widget = QueuedMessageWidget(item, position)
            widget.edit_requested.connect(self._on_item_edit_requested)
            widget.cancel_requested.connect(self._on_item_cancel_requested)
            self.list_layout.addWidget(widget)
            self.items.append(widget)
        self.show()

    def texts(self) -> list[str]:
        return [w.text for w in self.items]

    def _on_item_edit_requested(self, item_id: int) -> None:
        self.edit_requested.emit(item_id)

    def _on_item_cancel_requested(self, item_id: int) -> None:
        self.cancel_requested.emit(item_id)

    def _on_resume_button_clicked(self) -> None:
        self.resume_requested.emit()
