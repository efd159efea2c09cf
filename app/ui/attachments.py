"""Attachments in the window: the composer's chips bar, chips in the chat history, the image viewer,
clickable page citations and the "What the model saw" dialog.

:class:`WindowAttachments` wires all of it to the ``ChatController`` (drag and drop onto any part of
the window, paste, the paperclip's file picker, passwords for locked PDFs, citations). The widgets
only show ``Attachment`` records (app/core/store.py); they never read or decode documents themselves.
Thumbnails are read scaled with ``QImageReader`` from the normalised image (at most 1344 px), so
they stay cheap enough for the GUI thread.
"""

from __future__ import annotations

import functools
import html
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QBuffer, QByteArray, QEvent, QIODevice, QObject, QPoint, QRect, QSize, Qt, Signal
from PySide6.QtGui import (
    QAction,
    QColor,
    QDragEnterEvent,
    QDragMoveEvent,
    QDropEvent,
    QGuiApplication,
    QImage,
    QImageReader,
    QKeySequence,
    QPixmap,
    QTextCharFormat,
    QTextCursor,
)
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFrame,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QLayout,
    QLayoutItem,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QTextBrowser,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app.core.retrieval import find_citations
from app.core.units import format_token_count
from app.ui import theme

if TYPE_CHECKING:
    from collections.abc import Callable

    from PySide6.QtCore import QMimeData
    from PySide6.QtGui import QMouseEvent, QTextDocument

    from app.core.store import Attachment
    from app.ui.main_window import MainWindow

log = logging.getLogger(__name__)

MAX_IMAGES_TESTED = 5  # Meta tested Scout with up to 5 images per prompt
CITE_SCHEME = "cite"
CHIP_THUMB = QSize(40, 40)
HISTORY_THUMB = QSize(220, 160)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff")
DOCUMENT_SUFFIXES = (
    ".pdf",
    ".docx",
    ".html",
    ".htm",
    ".xhtml",
    ".md",
    ".markdown",
    ".txt",
    ".text",
    ".log",
    ".rst",
    ".csv",
    ".tsv",
    ".json",
    ".yaml",
    ".yml",
    ".toml",
    ".xml",
    ".py",
    ".js",
    ".ts",
    ".tsx",
    ".jsx",
    ".java",
    ".c",
    ".h",
    ".cpp",
    ".hpp",
    ".cs",
    ".go",
    ".rs",
    ".rb",
    ".php",
    ".swift",
    ".kt",
    ".sh",
    ".sql",
    ".ini",
    ".cfg",
)
NO_VISION_TEXT = "This model cannot read images: it has no vision projector (mmproj)."
BADGE_TIPS = {
    "whole": "The whole document goes to the model with every question.",
    "retrieval": (
        "Too long for the context: each question sends the passages that match it best, "
        "and the answer can cite their pages."
    ),
}


# -- helpers ----------------------------------------------------------------------------------------
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


@dataclass(frozen=True)
class DroppedItems:
    """What a drop or a paste brings: local files, image bytes, and web addresses we will not fetch."""

    paths: tuple[str, ...] = ()
    images: tuple[tuple[bytes, str], ...] = ()
    remote: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.paths or self.images or self.remote)


def _raw_image_formats(mime: QMimeData) -> list[str]:
    return [f for f in mime.formats() if f.startswith("image/") and "svg" not in f]


def has_attachments(mime: QMimeData | None) -> bool:
    """Cheap test (for drag-move events): files, web addresses, or image data."""
    if mime is None:
        return False
    if mime.hasImage() or _raw_image_formats(mime):
        return True
    return any(u.isLocalFile() or u.scheme() in ("http", "https") for u in mime.urls())


def image_png_bytes(image: QImage) -> bytes:
    data = QByteArray()
    buffer = QBuffer(data)
    buffer.open(QIODevice.OpenModeFlag.WriteOnly)
    image.save(buffer, "PNG")
    buffer.close()
    return bytes(data.data())


def mime_attachments(mime: QMimeData | None) -> DroppedItems:
    """Local files win (a file manager may offer the image too); then image data; then web URLs."""
    if mime is None:
        return DroppedItems()
    urls = mime.urls()
    paths = tuple(u.toLocalFile() for u in urls if u.isLocalFile() and u.toLocalFile())
    if paths:
        return DroppedItems(paths=paths)
    remote = tuple(u.toString() for u in urls if u.scheme() in ("http", "https"))
    name = "pasted image.png"
    if remote:
        tail = remote[0].split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
        if tail.lower().endswith(IMAGE_SUFFIXES):
            name = tail
    for fmt in _raw_image_formats(mime):
        data = bytes(mime.data(fmt).data())
        if data:
            suffix = fmt.split("/", 1)[1].split(";", 1)[0].replace("jpeg", "jpg")
            if not name.lower().endswith(IMAGE_SUFFIXES) or name == "pasted image.png":
                name = f"pasted image.{suffix}"
            return DroppedItems(images=((data, name),))
    if mime.hasImage():
        image = mime.imageData()
        if isinstance(image, QPixmap):
            image = image.toImage()
        if isinstance(image, QImage) and not image.isNull():
            if not name.lower().endswith(".png"):
                name = f"{Path(name).stem or 'pasted image'}.png"
            return DroppedItems(images=((image_png_bytes(image), name),))
    return DroppedItems(remote=remote)


def attachment_file_filter() -> str:
    images = " ".join(f"*{s}" for s in IMAGE_SUFFIXES)
    documents = " ".join(f"*{s}" for s in DOCUMENT_SUFFIXES)
    return (
        f"Images and documents ({images} {documents});;Images ({images});;"
        f"Documents ({documents});;All files (*)"
    )


def choose_attachment_files(parent: QWidget) -> list[str]:
    paths, _chosen = QFileDialog.getOpenFileNames(parent, "Attach files", "", attachment_file_filter())
    return list(paths)


def ask_password(parent: QWidget, name: str) -> str | None:
    text, ok = QInputDialog.getText(
        parent,
        "Password needed",
        f"{name} is protected by a password.\nPassword:",
        QLineEdit.EchoMode.Password,
    )
    return text if ok and text else None


def link_citations(document: QTextDocument, color: str, max_page: int | None = None) -> int:
    """Turn "p. 12" / "page 12" / "pp. 3–4" into ``cite:<page>`` links; code is left alone."""
    spans: list[tuple[int, int, int]] = []
    block = document.begin()
    while block.isValid():
        for citation in find_citations(block.text(), max_page):
            start, end = citation.span
            spans.append((block.position() + start, block.position() + end, citation.page))
        block = block.next()
    cursor = QTextCursor(document)
    linked = 0
    for start, end, page in spans:
        cursor.setPosition(start + 1)
        if cursor.charFormat().fontFixedPitch() or cursor.charFormat().isAnchor():
            continue  # inside code, or already a link
        cursor.setPosition(start)
        cursor.setPosition(end, QTextCursor.MoveMode.KeepAnchor)
        fmt = QTextCharFormat()
        fmt.setAnchor(True)
        fmt.setAnchorHref(f"{CITE_SCHEME}:{page}")
        fmt.setForeground(QColor(color))
        fmt.setFontUnderline(True)
        fmt.setToolTip(f"Show what the model read on page {page}")
        cursor.mergeCharFormat(fmt)
        linked += 1
    return linked


def max_source_page(stats: dict[str, Any]) -> int | None:
    pages = [int(s["page"]) for s in stats.get("sources") or [] if isinstance(s.get("page"), int)]
    return max(pages) if pages else None


# -- layout -----------------------------------------------------------------------------------------
class FlowLayout(QLayout):
    """Lays its items out left to right, wrapping onto new rows (Qt's flow layout example)."""

    def __init__(self, parent: QWidget | None = None, spacing: int = 6) -> None:
        super().__init__(parent)
        self._items: list[QLayoutItem] = []
        self._gap = spacing
        self.setContentsMargins(0, 0, 0, 0)

    def addItem(self, item: QLayoutItem) -> None:
        self._items.append(item)

    def count(self) -> int:
        return len(self._items)

    def itemAt(self, index: int) -> QLayoutItem | None:  # type: ignore[override]
        return self._items[index] if 0 <= index < len(self._items) else None

    def takeAt(self, index: int) -> QLayoutItem | None:  # type: ignore[override]
        return self._items.pop(index) if 0 <= index < len(self._items) else None

    def expandingDirections(self) -> Qt.Orientation:
        return Qt.Orientation(0)

    def hasHeightForWidth(self) -> bool:
        return True

    def heightForWidth(self, width: int) -> int:
        return self._arrange(QRect(0, 0, width, 0), apply=False)

    def setGeometry(self, rect: QRect) -> None:
        super().setGeometry(rect)
        self._arrange(rect, apply=True)

    def _visible(self) -> list[QLayoutItem]:
        return [item for item in self._items if not item.isEmpty()]

    def sizeHint(self) -> QSize:
        items = self._visible()
        if not items:
            return QSize(0, 0)
        width = sum(i.sizeHint().width() for i in items) + self._gap * (len(items) - 1)
        height = max(i.sizeHint().height() for i in items)
        m = self.contentsMargins()
        return QSize(width + m.left() + m.right(), height + m.top() + m.bottom())

    def minimumSize(self) -> QSize:
        size = QSize(0, 0)
        for item in self._visible():
            size = size.expandedTo(item.minimumSize())
        m = self.contentsMargins()
        return size + QSize(m.left() + m.right(), m.top() + m.bottom())

    def _arrange(self, rect: QRect, *, apply: bool) -> int:
        m = self.contentsMargins()
        area = rect.adjusted(m.left(), m.top(), -m.right(), -m.bottom())
        x, y, row_height = area.x(), area.y(), 0
        for item in self._visible():
            hint = item.sizeHint()
            if x + hint.width() > area.right() + 1 and row_height > 0:
                x, y, row_height = area.x(), y + row_height + self._gap, 0
            if apply:
                item.setGeometry(QRect(QPoint(x, y), hint))
            x += hint.width() + self._gap
            row_height = max(row_height, hint.height())
        return y + row_height - rect.y() + m.bottom()


# -- chips ------------------------------------------------------------------------------------------
class AttachmentChip(QFrame):
    """An image (thumbnail) or a document (name, pages, tokens, badge) in the composer or a message.

    Signals:
        remove_requested(int): attachment id (the × button; it also cancels reading).
        unlock_requested(int): attachment id of a password-protected PDF.
        open_requested(int): attachment id of an image whose thumbnail was clicked.
    """

    remove_requested = Signal(int)
    unlock_requested = Signal(int)
    open_requested = Signal(int)

    def __init__(
        self, attachment: Attachment, *, removable: bool = True, parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self.setObjectName("attachmentChip")
        self.attachment = attachment
        self.attachment_id = attachment.id
        self.progress_value = 0.0
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
        self.remove_button.setIcon(theme.icon("close", widget=self))
        self.remove_button.setIconSize(QSize(12, 12))
        self.remove_button.setCursor(Qt.CursorShape.PointingHandCursor)
        self.remove_button.clicked.connect(self._on_remove_button_clicked)
        self.remove_button.setVisible(removable)

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
    def state(self) -> str:
        return str(self.attachment.meta.get("state", "ready"))

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
        self.remove_button.setToolTip("Cancel and remove" if state == "processing" else "Remove")
        self.remove_button.setAccessibleName(f"Remove {attachment.name}")
        self.unlock_button.setVisible(state == "locked")
        self.progress.setVisible(state == "processing")
        if state == "processing":
            self.progress.setValue(round(self.progress_value * 1000))
        mode = str(meta.get("mode") or "") if not self.is_image and state == "ready" else ""
        self.badge.setText(mode)
        self.badge.setProperty("mode", mode)
        self.badge.setToolTip(BADGE_TIPS.get(mode, ""))
        self.badge.style().unpolish(self.badge)
        self.badge.style().polish(self.badge)
        self.badge.setVisible(bool(mode))
        self.detail_label.setText(self._detail_text())
        self._update_thumb()
        self.setCursor(
            Qt.CursorShape.PointingHandCursor
            if self.is_image and state == "ready"
            else Qt.CursorShape.ArrowCursor
        )
        self.setProperty("state", state)
        self.style().unpolish(self)
        self.style().polish(self)

    def set_progress(self, fraction: float) -> None:
        self.progress_value = max(0.0, min(1.0, fraction))
        self.progress.setValue(round(self.progress_value * 1000))
        if self.state == "processing":
            self.detail_label.setText(self._detail_text())

    def _detail_text(self) -> str:
        meta = self.attachment.meta
        state = self.state
        if state == "processing":
            if self.is_image:
                return "Preparing…"
            return f"Reading… {round(self.progress_value * 100)}%" if self.progress_value else "Reading…"
        if state == "locked":
            return "Password-protected"
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
        if self.is_image and self.state == "ready" and self.attachment.path:
            pixmap = load_thumbnail(self.attachment.path, CHIP_THUMB, self.devicePixelRatioF())
            if not pixmap.isNull():
                self.thumb.setPixmap(pixmap)
                self.thumb.setProperty("kind", "image")
                return
        icon = "lock" if self.state == "locked" else ("paperclip" if self.is_image else "file")
        self.thumb.setPixmap(theme.icon(icon, widget=self).pixmap(20, 20))
        self.thumb.setProperty("kind", "icon")

    def has_thumbnail(self) -> bool:
        return self.thumb.property("kind") == "image"

    # -- events -----------------------------------------------------------------------------
    def mouseReleaseEvent(self, event: QMouseEvent) -> None:
        if event.button() == Qt.MouseButton.LeftButton and self.is_image and self.state == "ready":
            self.open_requested.emit(self.attachment_id)
            event.accept()
            return
        super().mouseReleaseEvent(event)

    def _on_remove_button_clicked(self) -> None:
        self.remove_requested.emit(self.attachment_id)

    def _on_unlock_button_clicked(self) -> None:
        self.unlock_requested.emit(self.attachment_id)


class AttachmentsBar(QWidget):
    """The chips above the composer's text box, with notes about images (how many; no projector).

    Signals:
        remove_requested(int): attachment id.
        unlock_requested(int): attachment id of a locked PDF.
        models_requested(): the "Models…" button (get the vision projector).
    """

    remove_requested = Signal(int)
    unlock_requested = Signal(int)
    models_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("attachmentsBar")
        self._chips: dict[int, AttachmentChip] = {}
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


# -- dialogs ----------------------------------------------------------------------------------------
class ImageViewerDialog(QDialog):
    """An attached image at full size (scrollable when larger than the screen)."""

    def __init__(self, attachment: Attachment, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("imageViewer")
        self.setWindowTitle(attachment.name)
        self.image_label = QLabel()
        self.image_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        pixmap = QPixmap(attachment.path) if attachment.path else QPixmap()
        if pixmap.isNull():
            self.image_label.setText("This image can no longer be read.")
        else:
            self.image_label.setPixmap(pixmap)
        scroll = QScrollArea()
        scroll.setWidget(self.image_label)
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        meta = attachment.meta
        info = [attachment.name]
        if isinstance(meta.get("width"), int) and isinstance(meta.get("height"), int):
            info.append(f"{meta['width']}×{meta['height']} as sent to the model")
        if meta.get("note"):
            info.append(str(meta["note"]))
        self.info_label = QLabel(" · ".join(info))
        self.info_label.setObjectName("metaLabel")
        self.info_label.setWordWrap(True)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(scroll, 1)
        layout.addWidget(self.info_label)
        layout.addWidget(buttons)
        screen = (parent.screen() if parent is not None else None) or QGuiApplication.primaryScreen()
        available = screen.availableGeometry().size() * 0.85 if screen is not None else QSize(1000, 800)
        wanted = QSize(pixmap.width() + 40, pixmap.height() + 110) if not pixmap.isNull() else QSize(360, 160)
        self.resize(wanted.boundedTo(available).expandedTo(QSize(320, 160)))


def open_image_viewer(parent: QWidget | None, attachment: Attachment) -> ImageViewerDialog:
    dialog = ImageViewerDialog(attachment, parent)
    dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
    dialog.show()
    return dialog


class SourcesDialog(QDialog):
    """What the model saw for one answer: the context mode, the document tokens and every passage
    sent with its anchor — or, for a clicked citation, the passages from that page."""

    def __init__(self, stats: dict[str, Any], page: int | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("sourcesDialog")
        sources = [s for s in stats.get("sources") or [] if isinstance(s, dict)]
        self.page = page
        self.passages = [s for s in sources if page is None or s.get("page") == page]
        mode = str(stats.get("context_mode") or "")
        tokens = stats.get("document_tokens")
        if page is None:
            self.setWindowTitle("What the model saw")
            if mode == "whole":
                summary = "Whole documents: all of their text was sent with the question."
            elif mode == "retrieval":
                summary = (
                    "Retrieval: the documents were too long for the context, so only the passages "
                    "below (the best matches for the question, with their neighbours) were sent."
                )
            else:
                summary = "Passages sent with the question."
            if isinstance(tokens, int) and tokens > 0:
                summary += f" Document text: {format_token_count(tokens)}."
            summary += f" {len(self.passages)} passage" + ("." if len(self.passages) == 1 else "s.")
        else:
            self.setWindowTitle(f"Page {page}")
            summary = (
                f"What the model read on page {page}:"
                if self.passages
                else f"No passage from page {page} was sent to the model, so it cannot have read it there."
            )
        self.summary_label = QLabel(summary)
        self.summary_label.setObjectName("sourcesSummary")
        self.summary_label.setWordWrap(True)
        self.mode_label = QLabel(mode)
        self.mode_label.setObjectName("chipBadge")
        self.mode_label.setProperty("mode", mode)
        self.mode_label.setToolTip(BADGE_TIPS.get(mode, ""))
        self.mode_label.setVisible(page is None and bool(mode))
        self.browser = QTextBrowser()
        self.browser.setObjectName("sourcesText")
        self.browser.setOpenLinks(False)
        self.browser.setHtml(self._html())
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        top = QHBoxLayout()
        top.addWidget(self.mode_label, 0, Qt.AlignmentFlag.AlignTop)
        top.addWidget(self.summary_label, 1)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.browser, 1)
        layout.addWidget(buttons)
        self.resize(QSize(620, 480) if page is None else QSize(520, 340))

    def _html(self) -> str:
        colors = theme.markdown_colors(theme.is_dark(self.palette()))
        parts = []
        for source in self.passages:
            where = " — ".join(str(x) for x in (source.get("doc"), source.get("anchor")) if x)
            text = html.escape(str(source.get("text", ""))).replace("\n", "<br>")
            parts.append(
                f'<p style="margin-bottom:2px;"><b>{html.escape(where)}</b></p>'
                f'<p style="margin-top:0px; margin-bottom:12px; color:{colors.text};">{text}</p>'
            )
        return "".join(parts)

    def text(self) -> str:
        return self.browser.toPlainText()


def open_sources_dialog(
    parent: QWidget | None, stats: dict[str, Any], page: int | None = None
) -> SourcesDialog:
    dialog = SourcesDialog(stats, page, parent)
    dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
    dialog.show()
    return dialog


# -- wiring -----------------------------------------------------------------------------------------
class WindowAttachments(QObject):
    """Connects a MainWindow's attachment UI to its AppController: the paperclip, drops anywhere in
    the window, paste, chips, locked PDFs, attachments and citations in the history, info messages.

    ``choose_files(parent) -> list[str]`` and ``ask_password(parent, name) -> str | None`` are
    dialogs; tests replace them.
    """

    def __init__(self, window: MainWindow) -> None:
        super().__init__(window)
        self._window = window
        self._controller = window.controller
        self._attachments = window.controller.attachments
        self.composer = window.composer
        self.chat_view = window.chat_view
        self.bar: AttachmentsBar = window.composer.attachments_bar
        self.choose_files: Callable[[QWidget], list[str]] = choose_attachment_files
        self.ask_password: Callable[[QWidget, str], str | None] = ask_password
        self.last_dialog: QDialog | None = None

        a, c, m = self._attachments, self._controller.conversations, self._controller.models
        a.attachment_added.connect(self._on_attachments_attachment_added)
        a.attachment_updated.connect(self._on_attachments_attachment_updated)
        a.attachment_removed.connect(self._on_attachments_attachment_removed)
        a.attachment_progress.connect(self._on_attachments_attachment_progress)
        a.attachment_failed.connect(self._on_attachments_attachment_failed)
        self._controller.notices.info_message.connect(self._on_notices_info_message)
        c.conversation_opened.connect(self._on_conversations_conversation_opened)
        c.message_added.connect(self._on_conversations_message_added)
        c.generation_finished.connect(self._on_conversations_generation_finished)
        m.model_loaded.connect(self._on_models_model_loaded)
        m.model_load_failed.connect(self._on_models_model_load_failed)
        self.composer.attach_button.clicked.connect(self._on_attach_button_clicked)
        self.composer.attachments_pasted.connect(self._on_composer_attachments_pasted)
        self.bar.remove_requested.connect(self._on_bar_remove_requested)
        self.bar.unlock_requested.connect(self._on_bar_unlock_requested)
        self.bar.models_requested.connect(self._on_bar_models_requested)
        self.chat_view.citation_clicked.connect(self._on_chat_view_citation_clicked)
        self.chat_view.sources_requested.connect(self._on_chat_view_sources_requested)

        self.paste_action = QAction("Paste attachment", window)
        self.paste_action.setShortcut(QKeySequence(QKeySequence.StandardKey.Paste))
        self.paste_action.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
        self.paste_action.triggered.connect(self._on_paste_action_triggered)
        window.addAction(self.paste_action)

        window.setAcceptDrops(True)
        window.installEventFilter(self)
        for child in window.findChildren(QWidget):
            if (
                child.acceptDrops()
                and child is not self.composer.edit
                and child is not self.composer.edit.viewport()
            ):
                child.installEventFilter(self)  # line edits would take the dropped file's path as text
        self._update_vision()
        for attachment in self._pending():
            self.bar.add_attachment(attachment)

    # -- public API -------------------------------------------------------------------------
    def attach(self, items: DroppedItems) -> None:
        """Hand what was dropped or pasted to the controller."""
        if items.paths:
            self._attachments.attach_files(list(items.paths))
        for data, name in items.images:
            self._attachments.attach_image_data(data, name)
        if items.remote and not items.paths and not items.images:
            self._window.show_error(
                f"{items.remote[0]} is on the web, and Scout Chat does not download it. "
                "Save the file first, then drop or attach it."
            )

    def paste(self) -> bool:
        """Attach what the clipboard holds (files or an image); False when it holds neither."""
        items = mime_attachments(QGuiApplication.clipboard().mimeData())
        if not (items.paths or items.images):
            return False
        self.attach(items)
        return True

    # -- internals --------------------------------------------------------------------------
    def _pending(self) -> list[Attachment]:
        return self._attachments.pending_attachments()

    def _has_vision(self) -> bool | None:
        info = self._controller.models.model_info
        return None if info is None else info.has_vision

    def _models_action(self) -> QAction:
        return self._window.models_action

    def _update_vision(self) -> None:
        has_vision = self._has_vision()
        self.bar.set_vision(has_vision, models_available=True)
        tip = (
            "Attach images or documents (PDF, Word, HTML, Markdown, text, code).\n"
            "You can also drop or paste them anywhere in the window."
        )
        if has_vision is False:
            tip = (
                "Attach documents (PDF, Word, HTML, Markdown, text, code).\n"
                f"{NO_VISION_TEXT}\nGet its projector in Models… to ask about images."
            )
        self.composer.attach_button.setToolTip(tip)

    def _show_message_attachments(self, message_ids: list[int]) -> None:
        if not message_ids:
            return
        for message_id, attachments in self._attachments.message_attachments(message_ids).items():
            if attachments:
                self.chat_view.set_attachments(message_id, attachments)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        kind = event.type()
        if kind in (QEvent.Type.DragEnter, QEvent.Type.DragMove) and isinstance(
            event, (QDragEnterEvent, QDragMoveEvent)
        ):
            if has_attachments(event.mimeData()):
                event.acceptProposedAction()
                return True
        elif kind == QEvent.Type.Drop and isinstance(event, QDropEvent):
            items = mime_attachments(event.mimeData())
            if items:
                event.acceptProposedAction()
                self.attach(items)
                return True
        return super().eventFilter(watched, event)

    # -- controller slots -------------------------------------------------------------------
    def _on_attachments_attachment_added(self, attachment: Attachment) -> None:
        if attachment.message_id is None:
            self.bar.add_attachment(attachment)

    def _on_attachments_attachment_updated(self, attachment: Attachment) -> None:
        if attachment.message_id is None:
            self.bar.update_attachment(attachment)

    def _on_attachments_attachment_removed(self, attachment_id: int) -> None:
        self.bar.remove_attachment(attachment_id)

    def _on_attachments_attachment_progress(self, attachment_id: int, fraction: float) -> None:
        self.bar.set_progress(attachment_id, fraction)

    def _on_attachments_attachment_failed(self, name: str, message: str, _attachment_id: int) -> None:
        self._window.show_error(message if name in message else f"{name}: {message}")

    def _on_notices_info_message(self, text: str) -> None:
        self._window.show_activity(text)

    def _on_conversations_conversation_opened(self, _conversation_id: int, messages: list[Any]) -> None:
        self.bar.clear()  # the controller re-announces what waits in the composer of this conversation
        self._show_message_attachments([m.id for m in messages if m.role == "user"])

    def _on_conversations_message_added(self, message: Any) -> None:
        if message.role == "user":
            self._show_message_attachments([message.id])

    def _on_conversations_generation_finished(self, message_id: int, _stats: object) -> None:
        stored = self._controller.store.get_message(message_id)
        if stored is not None and stored.stats and stored.stats.get("sources"):
            self.chat_view.set_message_stats(message_id, stored.stats)

    def _on_models_model_loaded(self, _info: object) -> None:
        self._update_vision()

    def _on_models_model_load_failed(self, _message: str, _detail: str) -> None:
        self._update_vision()

    # -- widget slots -----------------------------------------------------------------------
    def _on_attach_button_clicked(self) -> None:
        paths = self.choose_files(self._window)
        if paths:
            self._attachments.attach_files(paths)

    def _on_composer_attachments_pasted(self, items: DroppedItems) -> None:
        self.attach(items)

    def _on_paste_action_triggered(self) -> None:
        if not self.paste():
            self.composer.focus()
            self.composer.edit.paste()

    def _on_bar_remove_requested(self, attachment_id: int) -> None:
        self._attachments.remove_attachment(attachment_id)

    def _on_bar_unlock_requested(self, attachment_id: int) -> None:
        chip = self.bar.chip(attachment_id)
        name = chip.attachment.name if chip is not None else "This document"
        password = self.ask_password(self._window, name)
        if password:
            self._attachments.unlock_document(attachment_id, password)

    def _on_bar_models_requested(self) -> None:
        action = self._models_action()
        if action.isEnabled():
            action.trigger()
        else:
            self._window.show_activity("Download the model's vision projector (mmproj) to ask about images")

    def _on_chat_view_citation_clicked(self, message_id: int, page: int) -> None:
        stats = self.chat_view.message_stats(message_id)
        self.last_dialog = open_sources_dialog(self._window, stats, page)

    def _on_chat_view_sources_requested(self, message_id: int) -> None:
        stats = self.chat_view.message_stats(message_id)
        self.last_dialog = open_sources_dialog(self._window, stats)
