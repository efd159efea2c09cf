"""What extraction produces: documents made of sections (the anchors citations point to), the
errors with a sentence for the user, and helpers shared by the extractors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from app.core.errors import UserError

if TYPE_CHECKING:
    import threading
    from collections.abc import Iterable


DEFAULT_MAX_BYTES = 200 * 1024 * 1024
"""Files larger than this are refused before anything is read."""

CODE_SECTION_LINES = 80
"""Target length of a line-range section for source code and plain text."""

TABLE_SECTION_CHARS = 1600
"""A CSV/TSV section (header + rows) stays under about this many characters (~400 tokens)."""

DocumentKind = Literal["pdf", "docx", "html", "markdown", "text", "code", "table"]
ErrorReason = Literal[
    "too_large",
    "empty",
    "unsupported",
    "password",
    "wrong_password",
    "encryption",
    "corrupt",
    "scanned",
    "binary",
    "no_text",
]


class DocumentError(UserError):
    """A file that cannot be read, with a sentence for the user as its message.

    ``needs_password`` is true for an encrypted PDF (and for a wrong password): the UI may ask
    for one and call ``extract`` again with ``password=``.
    """

    def __init__(self, message: str, *, reason: ErrorReason, needs_password: bool = False) -> None:
        super().__init__(message)
        self.reason: ErrorReason = reason
        self.needs_password = needs_password


class ExtractionCancelled(Exception):
    """The cancel event was set; nothing was extracted."""


@dataclass(frozen=True)
class Section:
    """A stretch of the document that a citation can point to; chunks never cross one."""

    anchor: str  # "p. 12", "§ Introduction", "lines 1–80", "rows 2–41"
    page: int | None  # 1-based PDF page
    heading: str | None
    start_line: int | None  # 1-based line of the file where ``text`` starts (text, code, Markdown)
    text: str


@dataclass(frozen=True)
class Document:
    name: str
    kind: DocumentKind
    pages: int | None  # PDF page count
    sections: tuple[Section, ...]
    text_chars: int
    note: str | None = None  # something the user may want to know ("decoded as cp1252", skipped pages)

    @property
    def text(self) -> str:
        return "\n\n".join(s.text for s in self.sections if s.text)


def markdown_table(rows: list[list[str]]) -> str:
    """Rows as a Markdown-ish table; the first row is the header."""

    def line(cells: Iterable[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    if len(rows) == 1:
        return line(rows[0])
    return "\n".join([line(rows[0]), "|" + "---|" * len(rows[0]), *(line(r) for r in rows[1:])])


class SectionBuilder:
    """Collects paragraphs into heading-anchored sections (DOCX, HTML)."""

    def __init__(self) -> None:
        self._sections: list[Section] = []
        self._heading: str | None = None
        self._parts: list[str] = []

    def heading(self, text: str) -> None:
        self._flush()
        self._heading = " ".join(text.split())
        self._parts = [self._heading]

    def add(self, text: str) -> None:
        if text:
            self._parts.append(text)

    def _flush(self) -> None:
        body = "\n\n".join(self._parts).strip()
        if body:
            self._sections.append(Section(heading_anchor(self._heading), None, self._heading, None, body))
        self._parts = []

    def sections(self) -> list[Section]:
        self._flush()
        return self._sections


def heading_anchor(heading: str | None) -> str:
    if heading is None:
        return "§ Start"
    return "§ " + (heading if len(heading) <= 80 else heading[:79] + "…")


def make_doc(
    name: str, kind: DocumentKind, sections: Iterable[Section], *, pages: int | None = None
) -> Document:
    secs = tuple(sections)
    return Document(name, kind, pages, secs, sum(len(s.text) for s in secs))


def with_note(doc: Document, note: str) -> Document:
    from dataclasses import replace

    return replace(doc, note=f"{doc.note} {note}" if doc.note else note)


def check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise ExtractionCancelled
