"""An attached image at full size (the chips' and the history thumbnails' click)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from PySide6.QtCore import QSize, Qt
from PySide6.QtGui import (
    QGuiApplication,
    QPixmap,
)
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFrame,
    QLabel,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

if TYPE_CHECKING:
    from app.core.store import Attachment


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
