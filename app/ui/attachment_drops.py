"""What a drop or a paste brings: local files, image bytes, and web addresses we will not fetch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import QBuffer, QByteArray, QIODevice
from PySide6.QtGui import (
    QImage,
    QPixmap,
)

from app.core.images import IMAGE_SUFFIXES

if TYPE_CHECKING:
    from PySide6.QtCore import QMimeData


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
    # PySide6's stub types the format as bytes; at run time only str is accepted
    image.save(buffer, "PNG")  # type: ignore[call-overload]
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
