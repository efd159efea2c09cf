"""PDF text through pypdfium2, one section per page (not thread-safe: one thread at a time)."""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

from app.core.documents.model import Document, DocumentError, Section, check_cancel, make_doc, with_note

if TYPE_CHECKING:
    import threading
    from collections.abc import Callable
    from pathlib import Path


log = logging.getLogger(__name__)


_PDF_JUNK = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def extract_pdf(
    path: Path,
    password: str | None,
    cancel: threading.Event | None,
    progress: Callable[[int, int], None] | None,
) -> Document:
    import pypdfium2 as pdfium  # lazily: startup stays fast
    import pypdfium2.raw as pdfium_c

    name = path.name
    with path.open("rb") as fh:
        if b"%PDF-" not in fh.read(1024):
            raise DocumentError(f"“{name}” is damaged or not a PDF file.", reason="corrupt")
    try:
        pdf = pdfium.PdfDocument(path, password=password or None)
    except pdfium.PdfiumError as exc:
        if exc.err_code == pdfium_c.FPDF_ERR_PASSWORD:
            if password:
                raise DocumentError(
                    f"The password for “{name}” is incorrect.", reason="wrong_password", needs_password=True
                ) from None
            raise DocumentError(
                f"This PDF is password-protected: enter its password to read “{name}”.",
                reason="password",
                needs_password=True,
            ) from None
        if exc.err_code == pdfium_c.FPDF_ERR_SECURITY:
            raise DocumentError(
                f"“{name}” uses an encryption scheme that is not supported.", reason="encryption"
            ) from None
        raise DocumentError(f"“{name}” is damaged or not a PDF file.", reason="corrupt") from None

    sections: list[Section] = []
    empty_pages = 0
    try:
        n_pages = len(pdf)
        for index in range(n_pages):
            check_cancel(cancel)
            text = _pdf_page_text(pdf, index, pdfium_c)
            if not text:
                empty_pages += 1
            sections.append(Section(f"p. {index + 1}", index + 1, None, None, text))
            if progress is not None:
                progress(index + 1, n_pages)
    finally:
        pdf.close()

    if empty_pages == len(sections):
        raise DocumentError(
            f"“{name}” is a scanned PDF: no text to read. Reading text from images (OCR) is not supported; "
            "export it with a text layer, or paste its text.",
            reason="scanned",
        )
    doc = make_doc(name, "pdf", sections, pages=len(sections))
    if empty_pages:
        doc = with_note(doc, f"{empty_pages} of {len(sections)} pages have no text layer and were skipped.")
    return doc


def _pdf_page_text(pdf: Any, index: int, pdfium_c: Any) -> str:
    """One page's text through the raw API (no per-object finalizers: ~2× faster than the helpers)."""
    import ctypes

    c = pdfium_c
    page = c.FPDF_LoadPage(pdf.raw, index)
    if not page:
        log.warning("PDF page %d could not be loaded", index + 1)
        return ""
    try:
        textpage = c.FPDFText_LoadPage(page)
        if not textpage:
            return ""
        try:
            n_chars = c.FPDFText_CountChars(textpage)
            if n_chars <= 0:
                return ""
            buffer = ctypes.create_string_buffer((n_chars + 1) * 2)
            written = c.FPDFText_GetText(
                textpage, 0, n_chars, ctypes.cast(buffer, ctypes.POINTER(ctypes.c_ushort))
            )
            raw = buffer.raw[: max(written - 1, 0) * 2].decode("utf-16-le", errors="ignore")
        finally:
            c.FPDFText_ClosePage(textpage)
    finally:
        c.FPDF_ClosePage(page)
    text = raw.replace("\r\n", "\n").replace("\r", "\n")
    text = text.replace("\x02\n", "").replace("\x02", "")  # PDFium's mark for a hyphen it joined
    text = _PDF_JUNK.sub("", text)
    return text.strip()
