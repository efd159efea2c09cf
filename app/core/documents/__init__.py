"""Text extraction with anchors: PDF, DOCX, HTML, Markdown, plain text, source code, CSV/TSV.

``extract(path)`` turns a file into a :class:`Document`: a tuple of :class:`Section` s in reading
order, each carrying the anchor a citation can point to ("p. 12", "§ Introduction", "lines 1–80",
"rows 2–41"). Chunking (``app.core.chunking``) never lets a chunk cross a section boundary.

Everything that can go wrong with a user's file ends in a :class:`DocumentError` whose message is
a sentence fit to show as it is. Cancellation (a ``threading.Event`` set from any thread) is
checked between PDF pages and between stages, and ends in :class:`ExtractionCancelled`.

pypdfium2 is not thread-safe: call ``extract`` from one thread at a time (the ingest worker's).
This module is pure Python with no Qt; it is meant to run off the GUI thread.

Modules: :mod:`.reader` (``extract`` and type detection), :mod:`.model` (documents, sections, errors),
:mod:`.pdf`, :mod:`.word`, :mod:`.html_text`, :mod:`.text` (decoding, Markdown, text, code, tables).
"""

from app.core.documents.model import (
    CODE_SECTION_LINES,
    DEFAULT_MAX_BYTES,
    TABLE_SECTION_CHARS,
    Document,
    DocumentError,
    DocumentKind,
    ErrorReason,
    ExtractionCancelled,
    Section,
)
from app.core.documents.reader import SUPPORTED_TYPES, extract

__all__ = [
    "CODE_SECTION_LINES",
    "DEFAULT_MAX_BYTES",
    "SUPPORTED_TYPES",
    "TABLE_SECTION_CHARS",
    "Document",
    "DocumentError",
    "DocumentKind",
    "ErrorReason",
    "ExtractionCancelled",
    "Section",
    "extract",
]
