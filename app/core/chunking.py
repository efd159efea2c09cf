"""Split an extracted :class:`~app.core.documents.Document` into retrieval chunks.

Chunks follow paragraphs, are at most ``max_tokens`` long (about 300–500 tokens with the default),
never cross a section boundary (a PDF page, a heading, a line range), and come in document order.
A chunk's text is a verbatim slice of its section's text. Table sections (CSV/TSV) repeat their
header line in every chunk, so each chunk reads as a table on its own.

Token counting is injected: the loaded model's tokenizer when there is one, else
:func:`estimate_tokens`.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    from app.core.documents import Document, Section

log = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 480
"""Greedy packing fills chunks close to this; the last chunk of a section may be shorter."""


@dataclass(frozen=True)
class Chunk:
    index: int  # 0-based position in the document
    anchor: str  # where it comes from: "p. 12", "§ Introduction", "lines 81–160"
    page: int | None
    text: str
    tokens: int


def estimate_tokens(text: str) -> int:
    """Rough token count until a real tokenizer is available.

    About 4 characters per token for ASCII (English prose and code with BPE vocabularies such as
    Llama's), and 0.75 token per non-ASCII character, which over-counts accented Latin text a little
    and is close for CJK scripts (about one token per one or two characters). It errs on the high
    side so that budgets computed with it are safe.
    """
    if not text:
        return 0
    non_ascii = len(text) - len(text.encode("ascii", "ignore"))
    return math.ceil(((len(text) - non_ascii) + 3 * non_ascii) / 4)


# Each level splits a too-long span more finely: paragraphs, lines, sentences, words.
_SPLITTERS = (
    re.compile(r"\n[ \t]*\n\s*"),
    re.compile(r"\n\s*"),
    re.compile(r"(?<=[.!?;:。！？；])\s+"),
    re.compile(r"\s+"),
)


def chunk_document(
    doc: Document,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    count_tokens: Callable[[str], int] = estimate_tokens,
) -> list[Chunk]:
    """Paragraph-aware chunks of ``doc``, in document order, each within one section."""
    if max_tokens < 16:
        raise ValueError(f"max_tokens must be at least 16, not {max_tokens}")
    chunks: list[Chunk] = []
    for section in doc.sections:
        if not section.text.strip():
            continue
        if doc.kind == "table":
            pieces = _table_chunks(section, max_tokens, count_tokens)
        else:
            pieces = _section_chunks(section, max_tokens, count_tokens)
        for anchor, text, tokens in pieces:
            chunks.append(Chunk(len(chunks), anchor, section.page, text, tokens))
    log.debug("%s: %d sections -> %d chunks", doc.name, len(doc.sections), len(chunks))
    return chunks


def _section_chunks(
    section: Section, max_tokens: int, count: Callable[[str], int]
) -> list[tuple[str, str, int]]:
    text = section.text
    spans = _split(text, 0, len(text), max_tokens, count, level=0, force=True)
    out: list[tuple[str, str, int]] = []
    line_ranges = section.start_line is not None and section.anchor.startswith("lines ")
    # Line numbers are counted on from the previous chunk (chunks come in order): counting from the
    # section start every time was quadratic on long sections.
    counted_to, lines_before = 0, 0
    for start, end, tokens in _pack(text, spans, max_tokens, count):
        anchor = section.anchor
        if line_ranges:
            assert section.start_line is not None
            if start >= counted_to:
                lines_before += text.count("\n", counted_to, start)
            else:  # overlapping chunks (never produced today): count afresh
                lines_before = text.count("\n", 0, start)
            counted_to = start
            first = section.start_line + lines_before
            last = first + text.count("\n", start, end)
            anchor = f"lines {first}–{last}" if last > first else f"line {first}"
        out.append((anchor, text[start:end], tokens))
    return out


def _table_chunks(
    section: Section, max_tokens: int, count: Callable[[str], int]
) -> list[tuple[str, str, int]]:
    """Rows packed under a repeated header (the section's first two lines: header and separator)."""
    lines = section.text.split("\n")
    head = "\n".join(lines[:2]) if len(lines) > 2 and lines[1].startswith("|-") else ""
    if not head:
        return _section_chunks(section, max_tokens, count)
    body = "\n".join(lines[2:])
    room = max(16, max_tokens - count(head) - 1)
    spans = _split(body, 0, len(body), room, count, level=1, force=True)
    out = []
    for start, end, _ in _pack(body, spans, room, count):
        text = f"{head}\n{body[start:end]}"
        out.append((section.anchor, text, count(text)))
    return out


def _split(
    text: str, start: int, end: int, max_tokens: int, count: Callable[[str], int], *, level: int, force: bool
) -> list[tuple[int, int, int]]:
    """(start, end, tokens) spans covering text[start:end] (whitespace trimmed), each ≤ max_tokens."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    if start >= end:
        return []
    tokens = count(text[start:end])
    if tokens <= max_tokens and not force:
        return [(start, end, tokens)]
    if level >= len(_SPLITTERS):
        return _hard_cut(text, start, end, tokens, max_tokens, count)
    spans: list[tuple[int, int, int]] = []
    cursor = start
    parts = [(m.start(), m.end()) for m in _SPLITTERS[level].finditer(text, start, end)]
    if not parts and tokens <= max_tokens:
        return [(start, end, tokens)]
    for sep_start, sep_end in [*parts, (end, end)]:
        spans += _split(text, cursor, sep_start, max_tokens, count, level=level + 1, force=False)
        cursor = sep_end
    return spans


def _hard_cut(
    text: str, start: int, end: int, tokens: int, max_tokens: int, count: Callable[[str], int]
) -> list[tuple[int, int, int]]:
    """Last resort for an unbroken run (a base64 blob, a very long word): cut by characters."""
    step = max(1, (end - start) * max_tokens // max(tokens, 1))
    spans = []
    s = start
    while s < end:
        e = min(end, s + step)
        while e - s > 1 and count(text[s:e]) > max_tokens:
            e = s + (e - s) * 3 // 4
        spans.append((s, e, count(text[s:e])))
        s = e
    return spans


def _pack(
    text: str, spans: list[tuple[int, int, int]], max_tokens: int, count: Callable[[str], int]
) -> list[tuple[int, int, int]]:
    """Greedily merge consecutive spans into chunks of at most ``max_tokens`` tokens."""
    out: list[tuple[int, int, int]] = []
    i = 0
    while i < len(spans):
        j, total = i + 1, spans[i][2]
        while j < len(spans) and total + spans[j][2] <= max_tokens:
            total += spans[j][2]
            j += 1
        start = spans[i][0]
        while True:  # the separators may cost more than estimated: verify, and give back spans
            end = spans[j - 1][1]
            tokens = count(text[start:end])
            if tokens <= max_tokens or j - 1 == i:
                break
            j -= 1
        out.append((start, end, tokens))
        i = j
    return out
