"""Text extraction with anchors: PDF, DOCX, HTML, Markdown, plain text, source code, CSV/TSV.

``extract(path)`` turns a file into a :class:`Document`: a tuple of :class:`Section` s in reading
order, each carrying the anchor a citation can point to ("p. 12", "§ Introduction", "lines 1–80",
"rows 2–41"). Chunking (``app.core.chunking``) never lets a chunk cross a section boundary.

Everything that can go wrong with a user's file ends in a :class:`DocumentError` whose message is
a sentence fit to show as it is. Cancellation (a ``threading.Event`` set from any thread) is
checked between PDF pages and between stages, and ends in :class:`ExtractionCancelled`.

pypdfium2 is not thread-safe: call ``extract`` from one thread at a time (the ingest worker's).
This module is pure Python with no Qt; it is meant to run off the GUI thread.
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import logging
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import threading
    from collections.abc import Callable, Iterable
    from pathlib import Path

    from docx.table import Table as DocxTable

log = logging.getLogger(__name__)

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

TEXT_EXTENSIONS = frozenset({".txt", ".text", ".log", ".rst", ".adoc", ".org", ".tex", ".srt", ".vtt"})
MARKDOWN_EXTENSIONS = frozenset({".md", ".markdown", ".mdown", ".mkd", ".mdx"})
HTML_EXTENSIONS = frozenset({".html", ".htm", ".xhtml"})
TABLE_EXTENSIONS = frozenset({".csv", ".tsv", ".tab"})
CODE_EXTENSIONS = frozenset(
    {
        ".py", ".pyi", ".pyw", ".ipynb", ".js", ".mjs", ".cjs", ".jsx", ".ts", ".tsx", ".c", ".h",
        ".cc", ".cpp", ".cxx", ".hpp", ".hh", ".hxx", ".m", ".mm", ".java", ".kt", ".kts", ".scala",
        ".groovy", ".gradle", ".go", ".rs", ".rb", ".php", ".pl", ".pm", ".lua", ".r", ".jl", ".swift",
        ".cs", ".fs", ".vb", ".dart", ".zig", ".nim", ".hs", ".ml", ".mli", ".ex", ".exs", ".erl",
        ".clj", ".el", ".lisp", ".scm", ".sh", ".bash", ".zsh", ".fish", ".ps1", ".bat", ".cmd",
        ".json", ".jsonl", ".yaml", ".yml", ".toml", ".ini", ".cfg", ".conf", ".properties", ".env",
        ".xml", ".xsd", ".svg", ".sql", ".graphql", ".proto", ".css", ".scss", ".sass", ".less",
        ".vue", ".svelte", ".cmake", ".mk", ".dockerfile", ".tf", ".hcl", ".nix", ".diff", ".patch",
    }
)  # fmt: skip
CODE_FILENAMES = frozenset(
    {"makefile", "dockerfile", "containerfile", "cmakelists.txt", "gemfile", "rakefile", "justfile"}
)
TEXT_FILENAMES = frozenset({"readme", "license", "licence", "copying", "authors", "changelog", "notice"})

SUPPORTED_TYPES = (
    "PDF, Word (.docx), HTML, Markdown, plain text (.txt and other text files), "
    "source code (.py, .js, .ts, .c, .java, .go, .rs, .json, .yaml, …) and CSV/TSV"
)


class DocumentError(Exception):
    """A file that cannot be read, with a sentence for the user as its message.

    ``needs_password`` is true for an encrypted PDF (and for a wrong password): the UI may ask
    for one and call ``extract`` again with ``password=``.
    """

    def __init__(self, message: str, *, reason: ErrorReason, needs_password: bool = False) -> None:
        super().__init__(message)
        self.message = message
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


def extract(
    path: Path,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    password: str | None = None,
    cancel: threading.Event | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Document:
    """Read ``path`` into a :class:`Document`; raise :class:`DocumentError` with a user-facing sentence.

    ``progress(done, total)`` is called per PDF page (once at the end for other formats).
    """
    name = path.name
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise DocumentError(f"“{name}” no longer exists.", reason="corrupt") from None
    except OSError as exc:
        raise DocumentError(
            f"“{name}” could not be opened: {exc.strerror or exc}.", reason="corrupt"
        ) from exc
    if not path.is_file():
        raise DocumentError(f"“{name}” is not a file.", reason="unsupported")
    if size > max_bytes:
        raise DocumentError(
            f"“{name}” is {_human_bytes(size)}, over the {_human_bytes(max_bytes)} limit for documents.",
            reason="too_large",
        )
    if size == 0:
        raise DocumentError(f"“{name}” is empty.", reason="empty")

    kind = _kind_for(path)
    _check_cancel(cancel)
    if kind == "pdf":
        doc = _extract_pdf(path, password, cancel, progress)
    else:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise DocumentError(
                f"“{name}” could not be read: {exc.strerror or exc}.", reason="corrupt"
            ) from exc
        if kind == "docx":
            doc = _extract_docx(name, data)
        else:
            text, encoding = _decode_text(name, data, html=kind == "html")
            _check_cancel(cancel)
            if kind == "html":
                doc = _extract_html(name, text)
            elif kind == "markdown":
                doc = _make_doc(name, "markdown", _markdown_sections(text))
            elif kind == "table":
                doc = _make_doc(name, "table", _table_sections(text, path.suffix.lower()))
            else:
                doc = _make_doc(name, kind, _line_sections(text))
            if encoding not in ("utf-8", "ascii"):
                doc = _with_note(doc, f"Decoded as {encoding}.")
        if progress is not None:
            progress(1, 1)
    if not doc.text_chars:
        raise DocumentError(f"“{name}” contains no text.", reason="no_text")
    log.info("extracted %s: %s, %d sections, %d chars", name, doc.kind, len(doc.sections), doc.text_chars)
    return doc


# --- type detection ---------------------------------------------------------------------------


def _kind_for(path: Path) -> DocumentKind:
    suffix = path.suffix.lower()
    lower = path.name.lower()
    if suffix == ".pdf":
        return "pdf"
    if suffix == ".docx":
        return "docx"
    if suffix in HTML_EXTENSIONS:
        return "html"
    if suffix in MARKDOWN_EXTENSIONS:
        return "markdown"
    if suffix in TABLE_EXTENSIONS:
        return "table"
    if suffix in CODE_EXTENSIONS or lower in CODE_FILENAMES:
        return "code"
    if suffix in TEXT_EXTENSIONS or lower in TEXT_FILENAMES or lower.startswith(("readme", "license")):
        return "text"
    try:
        with path.open("rb") as fh:
            head = fh.read(8)
    except OSError:
        head = b""
    if head.startswith(b"%PDF-"):
        return "pdf"
    if suffix == ".doc":
        raise DocumentError(
            f"“{path.name}” is an old Word .doc file, which is not supported: save it as .docx, PDF or text.",
            reason="unsupported",
        )
    what = f"{suffix} files are" if suffix else "Files without an extension are"
    raise DocumentError(
        f"“{path.name}”: {what} not supported. Supported: {SUPPORTED_TYPES}.", reason="unsupported"
    )


# --- PDF ------------------------------------------------------------------------------------------

_PDF_JUNK = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _extract_pdf(
    path: Path,
    password: str | None,
    cancel: threading.Event | None,
    progress: Callable[[int, int], None] | None,
) -> Document:
    import pypdfium2 as pdfium  # type: ignore[import-untyped]  # lazily: startup stays fast
    import pypdfium2.raw as pdfium_c  # type: ignore[import-untyped]

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
            _check_cancel(cancel)
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
    doc = _make_doc(name, "pdf", sections, pages=len(sections))
    if empty_pages:
        doc = _with_note(doc, f"{empty_pages} of {len(sections)} pages have no text layer and were skipped.")
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


# --- DOCX -----------------------------------------------------------------------------------------


def _extract_docx(name: str, data: bytes) -> Document:
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
        builder = _SectionBuilder()
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
                    builder.add(_markdown_table(rows))
    except DocumentError:
        raise
    except Exception as exc:  # noqa: BLE001 - zipfile, lxml and python-docx raise many kinds
        log.info("DOCX %s unreadable: %r", name, exc)
        raise DocumentError(f"“{name}” is damaged or not a Word document.", reason="corrupt") from None
    return _make_doc(name, "docx", builder.sections())


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


def _markdown_table(rows: list[list[str]]) -> str:
    """Rows as a Markdown-ish table; the first row is the header."""

    def line(cells: Iterable[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    if len(rows) == 1:
        return line(rows[0])
    return "\n".join([line(rows[0]), "|" + "---|" * len(rows[0]), *(line(r) for r in rows[1:])])


class _SectionBuilder:
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
            self._sections.append(Section(_heading_anchor(self._heading), None, self._heading, None, body))
        self._parts = []

    def sections(self) -> list[Section]:
        self._flush()
        return self._sections


def _heading_anchor(heading: str | None) -> str:
    if heading is None:
        return "§ Start"
    return "§ " + (heading if len(heading) <= 80 else heading[:79] + "…")


# --- text decoding ----------------------------------------------------------------------------

_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_\-:.]+)""", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")


def _decode_text(name: str, data: bytes, *, html: bool = False) -> tuple[str, str]:
    """Decode bytes of a text file: BOM, then UTF-8, then charset-normalizer; refuse binary data."""
    binary = DocumentError(f"“{name}” does not look like text: it contains binary data.", reason="binary")
    text: str | None = None
    encoding = ""
    for bom, codec in _BOMS:
        if data.startswith(bom):
            try:
                text, encoding = data.decode(codec), codec.replace("-sig", "")
            except UnicodeDecodeError:
                raise binary from None
            break
    if text is None and html and (match := _META_CHARSET.search(data[:4096])):
        declared = match.group(1).decode("ascii", "ignore").lower()
        try:
            text, encoding = data.decode(declared), codecs.lookup(declared).name
        except (LookupError, UnicodeDecodeError):
            text = None
    if text is None and b"\x00" not in data:
        try:
            text, encoding = data.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            text = None
    if text is None:
        from charset_normalizer import from_bytes  # lazily

        matches = from_bytes(data[: 4 * 1024 * 1024])
        best = matches.best()
        if best is None or best.encoding is None:
            raise binary
        encoding = best.encoding
        # Windows-1252 is by far the most common legacy encoding; charset-normalizer sometimes
        # prefers a sibling code page (cp1257, cp1250) on Western text by a hair: take cp1252 then.
        for candidate in matches:
            if (
                "cp1252" in candidate.could_be_from_charset
                and candidate.chaos <= best.chaos + 0.1
                and candidate.coherence >= best.coherence - 0.05
            ):
                encoding = "cp1252"
                break
        if b"\x00" in data and not encoding.startswith(("utf_16", "utf_32")):
            raise binary
        try:
            text = data.decode(encoding)
        except (UnicodeDecodeError, LookupError):
            raise binary from None
        encoding = codecs.lookup(encoding).name
    sample = text[:65536]
    if sample and len(_CONTROL.findall(sample)) > max(8, len(sample) // 100):
        raise binary
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text, encoding


# --- HTML -----------------------------------------------------------------------------------------

_HTML_SKIP = frozenset(
    {"script", "style", "nav", "template", "noscript", "svg", "canvas", "iframe", "object", "head"}
)
_HTML_VOID = frozenset(
    {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
)
_HTML_BLOCK = frozenset(
    {
        "p", "div", "section", "article", "main", "header", "footer", "aside", "blockquote", "pre",
        "ul", "ol", "li", "dl", "dt", "dd", "table", "figure",
        "figcaption", "form", "fieldset", "address", "details", "summary", "hr", "br", "body", "html",
    }
)  # fmt: skip
_HTML_HEADINGS = frozenset({"h1", "h2", "h3", "h4", "h5", "h6"})


class _ReadableText(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.builder = _SectionBuilder()
        self.title = ""
        self._skip: list[str] = []  # open skipped elements
        self._in_title = False
        self._pre = 0
        self._line: list[str] = []
        self._block: list[str] = []
        self._heading: list[str] | None = None
        self._cells: list[str] | None = None
        self._in_cell = False

    # text is gathered in _line (inline run), lines in _block, blocks go to the builder
    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._skip:
            if tag in _HTML_SKIP and tag not in _HTML_VOID:
                self._skip.append(tag)
            return
        if tag == "title":
            self._in_title = True
            return
        if tag in _HTML_SKIP:
            self._skip.append(tag)
            return
        if tag in _HTML_HEADINGS:
            self._end_block()
            self._heading = []
        elif tag == "br":
            self._end_line()
        elif tag == "pre":
            self._end_block()
            self._pre += 1
        elif tag == "tr":
            self._end_line()
            self._cells = []
        elif tag in ("td", "th"):
            self._end_cell()
            self._in_cell = self._cells is not None
        elif tag == "li":
            self._end_line()
            self._line.append("- ")
        elif tag in _HTML_BLOCK:
            self._end_block()
        elif tag == "img":
            alt = dict(attrs).get("alt")
            if alt:
                self._text(f"[{alt}]")

    def handle_endtag(self, tag: str) -> None:
        if self._skip:
            if tag == self._skip[-1]:
                self._skip.pop()
            return
        if tag == "title":
            self._in_title = False
        elif tag in _HTML_HEADINGS and self._heading is not None:
            heading = " ".join("".join(self._heading).split())
            self._heading = None
            if heading:
                self.builder.heading(heading)
        elif tag == "pre":
            self._end_block()
            self._pre = max(0, self._pre - 1)
        elif tag in ("td", "th"):
            self._end_cell()
        elif tag == "tr":
            self._end_cell()
            if self._cells is not None and any(self._cells):
                self._block.append("| " + " | ".join(self._cells) + " |")
            self._cells = None
        elif tag == "li":
            self._end_line()
        elif tag in _HTML_BLOCK:
            self._end_block()

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        if self._in_title:
            self.title += data
        elif self._heading is not None:
            self._heading.append(data)
        else:
            self._text(data)

    def _text(self, data: str) -> None:
        if self._pre:
            lines = data.split("\n")
            self._line.append(lines[0])
            for line in lines[1:]:
                self._end_line(keep_space=True)
                self._line.append(line)
        else:
            self._line.append(data)

    def _end_cell(self) -> None:
        if self._cells is not None:
            cell = " ".join("".join(self._line).split())
            self._line = []
            if self._in_cell:
                self._cells.append(cell.replace("|", "\\|"))
        self._in_cell = False

    def _end_line(self, *, keep_space: bool = False) -> None:
        raw = "".join(self._line)
        self._line = []
        line = raw.rstrip() if keep_space or self._pre else " ".join(raw.split())
        if line.strip() and line.strip() != "-":
            self._block.append(line)

    def _end_block(self) -> None:
        self._end_line()
        if self._block:
            self.builder.add("\n".join(self._block))
        self._block = []

    def close(self) -> None:
        super().close()
        self._end_block()


def _extract_html(name: str, text: str) -> Document:
    parser = _ReadableText()
    parser.feed(text)
    parser.close()
    return _make_doc(name, "html", parser.builder.sections())


# --- Markdown, text and code --------------------------------------------------------------------

_ATX = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)[ \t#]*$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(```|~~~)")


def _markdown_sections(text: str) -> list[Section]:
    lines = text.split("\n")
    starts: list[tuple[int, str | None]] = [(0, None)]  # (line index, heading)
    fence: str | None = None
    for i, line in enumerate(lines):
        if m := _FENCE.match(line):
            fence = None if fence == m.group(1) else (fence or m.group(1))
            continue
        if fence:
            continue
        if m := _ATX.match(line):
            starts.append((i, m.group(2).strip()))
        elif (
            i > 0
            and _SETEXT.match(line)
            and lines[i - 1].strip()
            and not _ATX.match(lines[i - 1])
            and (starts[-1][0] != i - 1)
            and (i < 2 or not lines[i - 2].strip())
        ):
            starts.append((i - 1, lines[i - 1].strip()))
    sections: list[Section] = []
    bounds = [*starts, (len(lines), None)]
    for (start, heading), (end, _) in itertools.pairwise(bounds):
        body = "\n".join(lines[start:end]).strip("\n")
        if not body.strip():
            continue
        offset = next(k for k in range(start, end) if lines[k].strip())
        sections.append(Section(_heading_anchor(heading), None, heading, offset + 1, body))
    return sections


def _line_sections(text: str, target: int = CODE_SECTION_LINES) -> list[Section]:
    """Line-range sections of about ``target`` lines, preferring to end at a blank line."""
    lines = text.split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    sections: list[Section] = []
    start = 0
    low, high = target * 3 // 4, target * 5 // 4
    while start < len(lines):
        end = min(start + target, len(lines))
        if end < len(lines):
            blanks = [k for k in range(start + low, min(start + high, len(lines))) if not lines[k].strip()]
            if blanks:
                end = min(blanks, key=lambda k: abs(k - (start + target))) + 1
        block = lines[start:end]
        if any(line.strip() for line in block):
            first = start + next(k for k, line in enumerate(block) if line.strip())
            last = start + max(k for k, line in enumerate(block) if line.strip())
            body = "\n".join(lines[first : last + 1])
            sections.append(Section(f"lines {first + 1}–{last + 1}", None, None, first + 1, body))
        start = end
    return sections


# --- CSV / TSV ------------------------------------------------------------------------------------


def _table_sections(text: str, suffix: str) -> list[Section]:
    if suffix in (".tsv", ".tab"):
        delimiter = "\t"
    else:
        try:
            delimiter = csv.Sniffer().sniff(text[:8192], delimiters=",;\t|").delimiter
        except csv.Error:
            delimiter = ","
    rows = [[" ".join(c.split()) for c in row] for row in csv.reader(io.StringIO(text), delimiter=delimiter)]
    rows = [r for r in rows if any(r)]
    if not rows:
        return []
    header, body = rows[0], rows[1:]
    head = _markdown_table([header, header]).split("\n")[:2]  # header line + separator
    if not body:
        return [Section("rows 1–1", None, None, None, head[0])]
    sections: list[Section] = []
    current: list[str] = []
    first_row = 2
    size = sum(len(h) + 1 for h in head)
    for number, row in enumerate(body, start=2):
        line = "| " + " | ".join(c.replace("|", "\\|") for c in row) + " |"
        if current and size + len(line) + 1 > TABLE_SECTION_CHARS:
            sections.append(_rows_section(head, current, first_row, number - 1))
            current, first_row, size = [], number, sum(len(h) + 1 for h in head)
        current.append(line)
        size += len(line) + 1
    sections.append(_rows_section(head, current, first_row, len(body) + 1))
    return sections


def _rows_section(head: list[str], lines: list[str], first: int, last: int) -> Section:
    anchor = f"row {first}" if first == last else f"rows {first}–{last}"
    return Section(anchor, None, None, None, "\n".join([*head, *lines]))


# --- helpers --------------------------------------------------------------------------------------


def _make_doc(
    name: str, kind: DocumentKind, sections: Iterable[Section], *, pages: int | None = None
) -> Document:
    secs = tuple(sections)
    return Document(name, kind, pages, secs, sum(len(s.text) for s in secs))


def _with_note(doc: Document, note: str) -> Document:
    from dataclasses import replace

    return replace(doc, note=f"{doc.note} {note}" if doc.note else note)


def _check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise ExtractionCancelled


def _human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("bytes", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{int(value)} {unit}" if unit == "bytes" else f"{value:.1f} {unit}".replace(".0 ", " ")
        value /= 1024
    raise AssertionError  # pragma: no cover
