"""Word (.docx) text through python-docx: paragraphs under their headings, tables as Markdown."""

from __future__ import annotations

import io
import logging
from typing import TYPE_CHECKING

from app.core.documents.model import Document, DocumentError, SectionBuilder, make_doc, markdown_table

if TYPE_CHECKING:
    from docx.table import Table as DocxTable


log = logging.getLogger(__name__)


def extract_docx(name: str, data: bytes) -> Document:
    if data.startswith(b"\xd0\xcf\x11\xe0"):
        raise DocumentError(
            f"“{name}” is password-protected (or an old Word format); it cannot be read. "
            "Save an unprotected .docx copy first.",
            reason="encryption",
        )
    try:
        import docx  # python-docx, lazily
        from docx.table import Table
        from docx.text.paragraph import Paragraph

        document = docx.Document(io.BytesIO(data))
        builder = SectionBuilder()
        for block in document.iter_inner_content():
            if isinstance(block, Paragraph):
                text = block.text.strip()
                if not text:
                    continue
                style = (block.style.name if block.style is not None else "") or ""
                if style.startswith("Heading") or style == "Title":
                    builder.heading(text)
                elif style.startswith("List"):
                    builder.add(f"- {text}")
                else:
                    builder.add(text)
            elif isinstance(block, Table):
                rows = _docx_table_rows(block)
                if rows:
                    builder.add(markdown_table(rows))
    except DocumentError:
        raise
    except Exception as exc:  # noqa: BLE001 - zipfile, lxml and python-docx raise many kinds
        log.info("DOCX %s unreadable: %r", name, exc)
        raise DocumentError(f"“{name}” is damaged or not a Word document.", reason="corrupt") from None
    return make_doc(name, "docx", builder.sections())


def _docx_table_rows(table: DocxTable) -> list[list[str]]:
    rows: list[list[str]] = []
    for row in table.rows:
        cells: list[str] = []
        previous = None
        for cell in row.cells:
            if cell._tc is previous:  # a merged cell repeats itself: keep it once
                continue
            previous = cell._tc
            cells.append(" ".join(cell.text.split()))
        if any(cells):
            rows.append(cells)
    return rows
