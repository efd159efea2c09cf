"""Attachment chips: the composer's chips bar and the attachments shown with a sent message.

The widgets only show ``Attachment`` records (app/core/store.py); they never read or decode documents
themselves. Thumbnails are read scaled with ``QImageReader`` from the normalised image (at most
1344 px), so they stay cheap enough for the GUI thread.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import QEvent, QSize, Qt, Signal
from PySide6.QtGui import (
    QImage,
    QImageReader,
    QPixmap,
)
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app.core.forecast import format_time_left
from app.core.store import AttachmentState
from app.core.types import DocumentMode
from app.core.units import format_token_count
from app.ui import theme
from app.ui.attachment_viewer import ImageViewerDialog, open_image_viewer
from app.ui.flow_layout import FlowLayout

if TYPE_CHECKING:
    from PySide6.QtGui import QMouseEvent

    from app.core.store import Attachment
    from app.workers.embedding import SearchStatus

log = logging.getLogger(__name__)

MAX_IMAGES_TESTED = 5  # Meta tested Scout with up to 5 images per prompt
CHIP_THUMB = QSize(40, 40)
HISTORY_THUMB = QSize(220, 160)
NO_VISION_TEXT = "This model cannot read images: it has no vision projector (mmproj)."
BADGE_TIPS: dict[str, str] = {
    DocumentMode.WHOLE: "The whole document goes to the model with every question.",
    DocumentMode.RETRIEVAL: (
        "Too long for the context: each question sends the passages that match it best, "
        "and the answer can cite their pages."
    ),
}


@functools.lru_cache(maxsize=128)
def _scaled_image(path: str, width: int, height: int, mtime: float) -> QImage:
    reader = QImageReader(path)
    reader.setAutoTransform(True)
    size = reader.size()
    if size.isValid() and (size.width() > width or size.height() > height):
        reader.setScaledSize(size.scaled(QSize(width, height), Qt.AspectRatioMode.KeepAspectRatio))
    image = reader.read()
    if image.isNull():
        log.warning("cannot read image %s: %s", path, reader.errorString())
    return image


def load_thumbnail(path: str, size: QSize, device_ratio: float = 1.0) -> QPixmap:
    """``path`` read already scaled to fit ``size`` (cached); a null pixmap when unreadable."""
    try:
        mtime = Path(path).stat().st_mtime
    except OSError:
        return QPixmap()
    ratio = max(1.0, device_ratio)
    image = _scaled_image(path, round(size.width() * ratio), round(size.height() * ratio), mtime)
    if image.isNull():
        return QPixmap()
    pixmap = QPixmap.fromImage(image)
    pixmap.setDevicePixelRatio(ratio)
    return pixmap


class AttachmentChip(QFrame):
    """An image (thumbnail) or a document (name, pages, tokens, badge) in the composer or a message.

    Signals:
        remove_requested(int): attachment id (the × button; it also cancels reading).
        unlock_requested(int): attachment id of a password-protected PDF.
        open_requested(int): attachment id of an image whose thumbnail was clicked.
        search_cancel_requested(int): attachment id whose indexing for search should stop.
    """

    remove_requested = Signal(int)
    unlock_requested = Signal(int)
    open_requested = Signal(int)
    search_cancel_requested = Signal(int)

    def __init__(
        self, attachment: Attachment, *, removable: bool = True, parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self.setObjectName("attachmentChip")
        self.attachment = attachment
        self.attachment_id = attachment.id
        self.progress_value = 0.0
        self.search_status: SearchStatus | None = None
        self.model_reading: tuple[float, float | None] | None = None  # the model reads it: 0..1, s left
        self.setSizePolicy(QSizePolicy.Policy.Fixed, QSizePolicy.Policy.Fixed)

        self.thumb = QLabel()
        self.thumb.setObjectName("chipThumb")
        self.thumb.setFixedSize(CHIP_THUMB)
        self.thumb.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.name_label = QLabel()
        self.name_label.setObjectName("chipName")
        self.detail_label = QLabel()
        self.detail_label.setObjectName("chipDetail")
        self.badge = QLabel()
        self.badge.setObjectName("chipBadge")
        self.badge.hide()
        self.progress = QProgressBar()
        self.progress.setObjectName("chipProgress")
        self.progress.setRange(0, 1000)
        self.progress.setTextVisible(False)
        self.progress.setFixedHeight(4)
        self.progress.hide()
        self.unlock_button = QPushButton("Unlock…")
        self.unlock_button.setObjectName("chipUnlock")
        self.unlock_button.setCursor(Qt.CursorShape.PointingHandCursor)
        self.unlock_button.clicked.connect(self._on_unlock_button_clicked)
        self.unlock_button.hide()
        self.remove_button = QToolButton()
        self.remove_button.setObjectName("chipRemove")
        self.remove_button.setIcon(theme.icon("close"))
        self.remove_button.setIconSize(QSize(12, 12))
        self.remove_button.setCursor(Qt.CursorShape.PointingHandCursor)
        self.remove_button.clicked.connect(self._on_remove_button_clicked)
        self.remove_button.setVisible(removable)
        self.search_label = QLabel()
        self.search_label.setObjectName("chipSearch")
        self.search_label.hide()
        self.search_stop = QToolButton()
        self.search_stop.setObjectName("chipSearchStop")
        self.search_stop.setText("Stop")
        self.search_stop.setToolTip("Stop indexing: questions use keyword search")
        self.search_stop.setCursor(Qt.CursorShape.PointingHandCursor)
        self.search_stop.clicked.connect(self._on_search_stop_clicked)
        self.search_stop.hide()

        text_box = QVBoxLayout()
        text_box.setContentsMargins(0, 0, 0, 0)
        text_box.setSpacing(1)
        name_row = QHBoxLayout()
        name_row.setSpacing(6)
        name_row.addWidget(self.name_label)
        name_row.addWidget(self.badge)
        name_row.addStretch(1)
        text_box.addLayout(name_row)
        text_box.addWidget(self.detail_label)
        search_row = QHBoxLayout()
        search_row.setSpacing(6)
        search_row.addWidget(self.search_label)
        search_row.addWidget(self.search_stop)
        search_row.addStretch(1)
        text_box.addLayout(search_row)
        text_box.addWidget(self.progress)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(5, 5, 5, 5)
        layout.setSpacing(8)
        layout.addWidget(self.thumb)
        layout.addLayout(text_box)
        layout.addWidget(self.unlock_button, 0, Qt.AlignmentFlag.AlignVCenter)
        layout.addWidget(self.remove_button, 0, Qt.AlignmentFlag.AlignTop)
        self.set_attachment(attachment)

    # -- state ------------------------------------------------------------------------------
    @property
    def state(self) -> AttachmentState:
        return AttachmentState(self.attachment.meta.get("state", AttachmentState.READY))

    @property
    def is_image(self) -> bool:
        return self.attachment.kind == "image"

    def set_attachment(self, attachment: Attachment) -> None:
        self.attachment = attachment
        meta = attachment.meta
        state = self.state
        metrics = self.name_label.fontMetrics()
        self.name_label.setText(metrics.elidedText(attachment.name, Qt.TextElideMode.ElideMiddle, 220))
        tips = [attachment.name]
        note = str(meta.get("note") or "")
        if note:
            tips.append(note)
        self.setToolTip("\n".join(tips))
        self.remove_button.setToolTip(
            "Cancel and remove" if state == AttachmentState.PROCESSING else "Remove"
        )
        self.remove_button.setAccessibleName(f"Remove {attachment.name}")
        self.unlock_button.setVisible(state == AttachmentState.LOCKED)
        self.set_search_status(self.search_status)
        mode = str(meta.get("mode") or "") if not self.is_image and state == AttachmentState.READY else ""
        self.badge.setText(mode)
        self.badge.setProperty("mode", mode)
        reason = str(meta.get("mode_reason") or "")
        self.badge.setToolTip(f"{reason}\n{BADGE_TIPS.get(mode, '')}".strip() if mode else "")
        if mode and reason:
            tips.append(reason)
            self.setToolTip("\n".join(tips))
        self.badge.style().unpolish(self.badge)
        self.badge.style().polish(self.badge)
        self.badge.setVisible(bool(mode))
        self.detail_label.setText(self._detail_text())
        self._update_thumb()
        self.setCursor(
            Qt.CursorShape.PointingHandCursor
            if self.is_image and state == AttachmentState.READY
            else Qt.CursorShape.ArrowCursor
        )
        self.setProperty("state", state.value)
        self.style().unpolish(self)
        self.style().polish(self)

    def set_search_status(self, status: SearchStatus | None) -> None:
        """How questions search this document (keyword only, indexing 40 %, ready…)."""
        self.search_status = status
        ready_document = not self.is_image and self.state == AttachmentState.READY
        shown = status is not None and ready_document
        self.search_label.setVisible(shown)
        self.search_stop.setVisible(shown and status is not None and status.cancellable)
        if status is not None:
            self.search_label.setText(status.text)
            self.search_label.setToolTip(status.tip)
            self.search_label.setProperty("state", status.state.value)
            self.search_label.style().unpolish(self.search_label)
            self.search_label.style().polish(self.search_label)
            self.search_stop.setAccessibleName(f"Stop indexing {self.attachment.name}")
        self._show_progress()
        layout = self.layout()
        if layout is not None:  # the line's text changed: the chip's size follows it at once
            layout.activate()
        self.adjustSize()

    def _show_progress(self) -> None:
        """The bar shows reading (processing, or the model reading it in a prompt) or the search
        model's download or indexing."""
        if self.state == AttachmentState.PROCESSING:
            self.progress.setVisible(True)
            self.progress.setValue(round(self.progress_value * 1000))
            return
        if self.model_reading is not None:
            self.progress.setVisible(True)
            self.progress.setValue(round(self.model_reading[0] * 1000))
            return
        status = self.search_status
        busy = status is not None and status.busy and not self.is_image
        self.progress.setVisible(busy)
        if busy and status is not None:
            self.progress.setValue(round(status.fraction * 1000))

    def set_model_reading(self, fraction: float | None, seconds_left: float | None = None) -> None:
        """The model is reading this document in a prompt: ``fraction`` 0..1 of the prompt read and
        the time left (None: not known yet) — ``Reading — about 2 min left``; ``fraction`` None:
        it is read (the chip shows its pages and tokens again)."""
        if self.is_image or self.state != AttachmentState.READY:
            return
        self.model_reading = None if fraction is None else (max(0.0, min(1.0, fraction)), seconds_left)
        self.detail_label.setText(self._detail_text())
        self._show_progress()
        layout = self.layout()
        if layout is not None:
            layout.activate()
        self.adjustSize()

    def set_progress(self, fraction: float) -> None:
        self.progress_value = max(0.0, min(1.0, fraction))
        self.progress.setValue(round(self.progress_value * 1000))
        if self.state == AttachmentState.PROCESSING:
            self.detail_label.setText(self._detail_text())

    def _detail_text(self) -> str:
        meta = self.attachment.meta
        state = self.state
        if state == AttachmentState.PROCESSING:
            if self.is_image:
                return "Preparing…"
            return f"Reading… {round(self.progress_value * 100)}%" if self.progress_value else "Reading…"
        if state == AttachmentState.LOCKED:
            return "Password-protected"
        if self.model_reading is not None and not self.is_image:
            left = self.model_reading[1]
            return "Reading…" if left is None else f"Reading — {format_time_left(left)}"
        parts: list[str] = []
        if self.is_image:
            width, height = meta.get("width"), meta.get("height")
            if isinstance(width, int) and isinstance(height, int):
                parts.append(f"{width}×{height}")
        else:
            pages = meta.get("pages")
            if isinstance(pages, int) and pages > 0:
                parts.append(f"{pages} page" + ("" if pages == 1 else "s"))
        tokens = meta.get("tokens")
        if isinstance(tokens, int) and tokens > 0:
            parts.append(format_token_count(tokens))
        return " · ".join(parts)

    def _update_thumb(self) -> None:
        if self.is_image and self.state == AttachmentState.READY and self.attachment.path:
            pixmap = load_thumbnail(self.attachment.path, CHIP_THUMB, self.devicePixelRatioF())
            if not pixmap.isNull():
                self.thumb.setPixmap(pixmap)
                self.thumb.setProperty("kind", "image")
                return
        icon = "lock" if self.state == AttachmentState.LOCKED else ("paperclip" if self.is_image else "file")
        self.thumb.setPixmap(theme.icon(icon).pixmap(20, 20))
        self.thumb.setProperty("kind", "icon")

    def has_thumbnail(self) -> bool:
        return bool(self.thumb.property("kind") == "image")

    # -- events -----------------------------------------------------------------------------
    def changeEvent(self, event: QEvent) -> None:
        super().changeEvent(event)
        if event.type() == QEvent.Type.PaletteChange and self.thumb.property("kind") == "icon":
            self._update_thumb()  # the file/lock icon is a pixmap: redraw it in the new colours

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:
        if (
            event.button() == Qt.MouseButton.LeftButton
            and self.is_image
            and self.state == AttachmentState.READY
        ):
            self.open_requested.emit(self.attachment_id)
            event.accept()
            return
        super().mouseReleaseEvent(event)

    def _on_remove_button_clicked(self) -> None:
        self.remove_requested.emit(self.attachment_id)

    def _on_unlock_button_clicked(self) -> None:
        self.unlock_requested.emit(self.attachment_id)

    def _on_search_stop_clicked(self) -> None:
        self.search_cancel_requested.emit(self.attachment_id)


class AttachmentsBar(QWidget):
    """The chips above the composer's text box, with notes about images (how many; no projector).

    Signals:
        remove_requested(int): attachment id.
        unlock_requested(int): attachment id of a locked PDF.
        models_requested(): the "Models…" button (get the vision projector).
        search_cancel_requested(int): attachment id whose indexing for search should stop.
    """

    remove_requested = Signal(int)
    unlock_requested = Signal(int)
    models_requested = Signal()
    search_cancel_requested = Signal(int)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("attachmentsBar")
        self._chips: dict[int, AttachmentChip] = {}
        self._search: dict[int, SearchStatus] = {}  # kept for chips made again (a conversation reopened)
        self._has_vision: bool | None = None
        self.viewer: ImageViewerDialog | None = None

        self.note_label = QLabel(f"Scout was tested with up to {MAX_IMAGES_TESTED} images in one message.")
        self.note_label.setObjectName("attachmentNote")
        self.note_label.setWordWrap(True)
        self.note_label.hide()
        self.vision_row = QWidget()
        vision_layout = QHBoxLayout(self.vision_row)
        vision_layout.setContentsMargins(0, 0, 0, 0)
        vision_layout.setSpacing(8)
        self.vision_label = QLabel(NO_VISION_TEXT)
        self.vision_label.setObjectName("attachmentWarning")
        self.vision_label.setWordWrap(True)
        self.models_button = QPushButton("Models…")
        self.models_button.setObjectName("attachmentModels")
        self.models_button.setToolTip("Download the vision projector for this model")
        self.models_button.clicked.connect(self._on_models_button_clicked)
        vision_layout.addWidget(self.vision_label, 1)
        vision_layout.addWidget(self.models_button, 0)
        self.vision_row.hide()

        self.chips_box = QWidget()
        self.flow = FlowLayout(self.chips_box, spacing=6)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 4)
        layout.setSpacing(4)
        layout.addWidget(self.note_label)
        layout.addWidget(self.vision_row)
        layout.addWidget(self.chips_box)
        self.hide()

    # -- public API -------------------------------------------------------------------------
    def chips(self) -> list[AttachmentChip]:
        return list(self._chips.values())

    def chip(self, attachment_id: int) -> AttachmentChip | None:
        return self._chips.get(attachment_id)

    def image_count(self) -> int:
        return sum(1 for chip in self._chips.values() if chip.is_image)

    def add_attachment(self, attachment: Attachment) -> AttachmentChip:
        chip = self._chips.get(attachment.id)
        if chip is not None:
            chip.set_attachment(attachment)
            return chip
        chip = AttachmentChip(attachment, removable=True, parent=self.chips_box)
        chip.remove_requested.connect(self._on_chip_remove_requested)
        chip.unlock_requested.connect(self._on_chip_unlock_requested)
        chip.open_requested.connect(self._on_chip_open_requested)
        chip.search_cancel_requested.connect(self._on_chip_search_cancel_requested)
        chip.set_search_status(self._search.get(attachment.id))
        self._chips[attachment.id] = chip
        self.flow.addWidget(chip)
        chip.show()
        self._update_notes()
        return chip

    def update_attachment(self, attachment: Attachment) -> None:
        self.add_attachment(attachment)
        self._update_notes()

    def remove_attachment(self, attachment_id: int) -> None:
        chip = self._chips.pop(attachment_id, None)
        if chip is None:
            return
        self.flow.removeWidget(chip)
        chip.hide()
        chip.deleteLater()
        self._update_notes()

    def set_progress(self, attachment_id: int, fraction: float) -> None:
        chip = self._chips.get(attachment_id)
        if chip is not None:
            chip.set_progress(fraction)

    def set_search_status(self, attachment_id: int, status: SearchStatus) -> None:
        self._search[attachment_id] = status
        chip = self._chips.get(attachment_id)
        if chip is not None:
            chip.set_search_status(status)
            self.flow.invalidate()

    def clear(self) -> None:
        for attachment_id in list(self._chips):
            self.remove_attachment(attachment_id)

    def set_vision(self, has_vision: bool | None, *, models_available: bool = True) -> None:
        """``None``: no model loaded (nothing to warn about yet)."""
        self._has_vision = has_vision
        self.models_button.setVisible(models_available)
        self.vision_label.setText(
            NO_VISION_TEXT + ("" if models_available else " Download its mmproj file to ask about images.")
        )
        self._update_notes()

    # -- internals --------------------------------------------------------------------------
    def _update_notes(self) -> None:
        images = self.image_count()
        self.note_label.setText(
            f"{images} images: Scout was tested with up to {MAX_IMAGES_TESTED} images in one message, "
            "so answers may get less reliable."
        )
        self.note_label.setVisible(images > MAX_IMAGES_TESTED)
        self.vision_row.setVisible(images > 0 and self._has_vision is False)
        self.setVisible(bool(self._chips))
        self.flow.invalidate()
        self.updateGeometry()

    def _on_chip_remove_requested(self, attachment_id: int) -> None:
        self.remove_requested.emit(attachment_id)

    def _on_chip_unlock_requested(self, attachment_id: int) -> None:
        self.unlock_requested.emit(attachment_id)

    def _on_chip_search_cancel_requested(self, attachment_id: int) -> None:
        self.search_cancel_requested.emit(attachment_id)

    def _on_chip_open_requested(self, attachment_id: int) -> None:
        chip = self._chips.get(attachment_id)
        if chip is not None:
            self.viewer = open_image_viewer(self.window(), chip.attachment)

    def _on_models_button_clicked(self) -> None:
        self.models_requested.emit()


class ImageThumbnail(QLabel):
    """A clickable thumbnail of an image sent with a message.

    Signals:
        clicked(int): attachment id.
    """

    clicked = Signal(int)

    def __init__(self, attachment: Attachment, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("historyImage")
        self.attachment = attachment
        pixmap = (
            load_thumbnail(attachment.path, HISTORY_THUMB, self.devicePixelRatioF())
            if attachment.path
            else None
        )
        if pixmap is None or pixmap.isNull():
            self.setText(f"{attachment.name}\n(image no longer available)")
            self.setObjectName("historyImageMissing")
            self.setAlignment(Qt.AlignmentFlag.AlignCenter)
            self.setFixedSize(QSize(160, 80))
        else:
            self.setPixmap(pixmap)
            self.setFixedSize(pixmap.deviceIndependentSize().toSize())
            self.setCursor(Qt.CursorShape.PointingHandCursor)
        self.setToolTip(f"{attachment.name} — click to view full size")
        self.setAccessibleName(f"Image {attachment.name}")

    def has_image(self) -> bool:
        pixmap = self.pixmap()
        return pixmap is not None and not pixmap.isNull()

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:
        if event.button() == Qt.MouseButton.LeftButton and self.has_image():
            self.clicked.emit(self.attachment.id)
            event.accept()
            return
        super().mouseReleaseEvent(event)


class MessageAttachmentsWidget(QWidget):
    """The attachments a user message was sent with: image thumbnails and document chips."""

    def __init__(self, attachments: list[Attachment], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("messageAttachments")
        self.viewer: ImageViewerDialog | None = None
        self.thumbnails: list[ImageThumbnail] = []
        self.chips: list[AttachmentChip] = []
        self.flow = FlowLayout(self, spacing=6)
        for attachment in attachments:
            if attachment.kind == "image":
                thumb = ImageThumbnail(attachment, self)
                thumb.clicked.connect(self._on_thumbnail_clicked)
                self.thumbnails.append(thumb)
                self.flow.addWidget(thumb)
            else:
                chip = AttachmentChip(attachment, removable=False, parent=self)
                self.chips.append(chip)
                self.flow.addWidget(chip)

    def _on_thumbnail_clicked(self, attachment_id: int) -> None:
        for thumb in self.thumbnails:
            if thumb.attachment.id == attachment_id:
                self.viewer = open_image_viewer(self.window(), thumb.attachment)
