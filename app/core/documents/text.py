"""Text files: decoding (BOM, declared charset, UTF-8, fallbacks) and the sections of Markdown
(by heading), plain text and code (by line ranges) and CSV/TSV (by rows, header repeated)."""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import re

from app.core.documents.model import (
    CODE_SECTION_LINES,
    TABLE_SECTION_CHARS,
    DocumentError,
    Section,
    heading_anchor,
    markdown_table,
)

_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_\-:.]+)""", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")


def decode_text(name: str, data: bytes, *, html: bool = False) -> tuple[str, str]:
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


_ATX = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)[ \t#]*$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(```|~~~)")


def markdown_sections(text: str) -> list[Section]:
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
        sections.append(Section(heading_anchor(heading), None, heading, offset + 1, body))
    return sections


def line_sections(text: str, target: int = CODE_SECTION_LINES) -> list[Section]:
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


def table_sections(text: str, suffix: str) -> list[Section]:
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
    head = markdown_table([header, header]).split("\n")[:2]  # header line + separator
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
