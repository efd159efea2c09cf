"""The ingest worker: turns dropped/pasted/picked files into attachments, off the GUI thread.

Images are decoded, oriented, bounded and stored under the data dir (by hash); documents are
extracted (with page/heading/line anchors) and chunked. One job at a time on one long-lived
QThread (pypdfium2 is not thread-safe); each job can be cancelled between pages. Results are plain
data; the controller stores them on the GUI thread.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Signal, Slot

from app.core.chunking import Chunk, chunk_document, estimate_tokens
from app.core.documents import DocumentError, ExtractionCancelled, extract
from app.core.images import ImageError, is_image_path, normalize_image, store_image

log = logging.getLogger(__name__)

__all__ = ["IngestWorker", "is_image_path"]


@dataclass(frozen=True)
class ImageResult:
    path: str  # the normalised copy under the data dir
    sha256: str
    width: int
    height: int
    original_width: int
    original_height: int
    note: str


@dataclass(frozen=True)
class DocumentResult:
    kind: str
    pages: int | None
    chars: int
    tokens: int
    note: str
    chunks: tuple[Chunk, ...]


class IngestWorker(QObject):
    """Lives on its own QThread.

    Signals:
        progress(int, int, int): job id, done, total (pages for PDFs).
        image_ready(int, object): job id, ImageResult.
        document_ready(int, object): job id, DocumentResult.
        failed(int, str, bool): job id, human message, whether a password would help.
        cancelled(int): job id.
    """

    progress = Signal(int, int, int)
    image_ready = Signal(int, object)
    document_ready = Signal(int, object)
    failed = Signal(int, str, bool)
    cancelled = Signal(int)

    def __init__(self, images_dir: Path) -> None:
        super().__init__()
        self._images_dir = images_dir
        self._cancel: dict[int, threading.Event] = {}
        self._lock = threading.Lock()

    def cancel(self, job_id: int) -> None:
        """Thread-safe: called from the GUI thread while the job runs (or before it starts)."""
        with self._lock:
            self._cancel.setdefault(job_id, threading.Event()).set()

    def _event(self, job_id: int) -> threading.Event:
        with self._lock:
            return self._cancel.setdefault(job_id, threading.Event())

    def _done(self, job_id: int) -> None:
        with self._lock:
            self._cancel.pop(job_id, None)

    @Slot(int, object, str)
    def ingest_image(self, job_id: int, source: Any, name: str) -> None:
        """``source``: a file path (str) or the image's bytes (paste, browser drag)."""
        try:
            if self._event(job_id).is_set():
                self.cancelled.emit(job_id)
                return
            data = Path(source) if isinstance(source, str) else bytes(source)
            image = normalize_image(data, name=name)
            stored = store_image(self._images_dir.parent, image)
            result = ImageResult(
                path=str(stored),
                sha256=image.sha256,
                width=image.width,
                height=image.height,
                original_width=image.original_width,
                original_height=image.original_height,
                note=image.note or "",
            )
        except ImageError as exc:
            self.failed.emit(job_id, exc.message, False)
            return
        except Exception as exc:
            log.exception("image ingest %d failed", job_id)
            self.failed.emit(job_id, f"{name} could not be read as an image: {exc}", False)
            return
        finally:
            self._done(job_id)
        self.image_ready.emit(job_id, result)

    @Slot(int, str, object)
    def ingest_document(self, job_id: int, path: str, password: Any) -> None:
        cancel = self._event(job_id)
        try:
            document = extract(
                Path(path),
                password=password or None,
                cancel=cancel,
                progress=lambda done, total: self.progress.emit(job_id, done, total),
            )
            chunks = tuple(chunk_document(document))
            result = DocumentResult(
                kind=document.kind,
                pages=document.pages,
                chars=document.text_chars,
                tokens=sum(c.tokens for c in chunks) or estimate_tokens(document.text),
                note=document.note or "",
                chunks=chunks,
            )
        except ExtractionCancelled:
            self.cancelled.emit(job_id)
            return
        except DocumentError as exc:
            self.failed.emit(job_id, exc.message, exc.needs_password)
            return
        except Exception as exc:
            log.exception("document ingest %d failed", job_id)
            self.failed.emit(job_id, f"{Path(path).name} could not be read: {exc}", False)
            return
        finally:
            self._done(job_id)
        self.document_ready.emit(job_id, result)
