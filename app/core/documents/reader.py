"""``extract(path)``: checks on the file, its type from its name (or its first bytes), and the
extractor for that type."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from app.core.documents.html_text import extract_html
from app.core.documents.model import (
    DEFAULT_MAX_BYTES,
    Document,
    DocumentError,
    DocumentKind,
    check_cancel,
    make_doc,
    with_note,
)
from app.core.documents.pdf import extract_pdf
from app.core.documents.text import decode_text, line_sections, markdown_sections, table_sections
from app.core.documents.word import extract_docx

if TYPE_CHECKING:
    import threading
    from collections.abc import Callable
    from pathlib import Path


log = logging.getLogger(__name__)


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
    check_cancel(cancel)
    if kind == "pdf":
        doc = extract_pdf(path, password, cancel, progress)
    else:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise DocumentError(
                f"“{name}” could not be read: {exc.strerror or exc}.", reason="corrupt"
            ) from exc
        if kind == "docx":
            doc = extract_docx(name, data)
        else:
            text, encoding = decode_text(name, data, html=kind == "html")
            check_cancel(cancel)
            if kind == "html":
                doc = extract_html(name, text)
            elif kind == "markdown":
                doc = make_doc(name, "markdown", markdown_sections(text))
            elif kind == "table":
                doc = make_doc(name, "table", table_sections(text, path.suffix.lower()))
            else:
                doc = make_doc(name, kind, line_sections(text))
            if encoding not in ("utf-8", "ascii"):
                doc = with_note(doc, f"Decoded as {encoding}.")
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


def _human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("bytes", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{int(value)} {unit}" if unit == "bytes" else f"{value:.1f} {unit}".replace(".0 ", " ")
        value /= 1024
    raise AssertionError  # pragma: no cover
