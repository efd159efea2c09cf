"""Retrieval over document chunks with SQLite FTS5 (BM25), and the document part of a prompt.

- :class:`ChunkIndex` keeps chunks in ``doc_chunks`` with an external-content FTS5 index
  (``doc_chunks_fts``, porter + unicode61 tokenizer) kept in sync by triggers. It works on any
  ``sqlite3.Connection``: the app's store, or an in-memory one.
- :func:`compose_document_context` puts documents in whole (with "[p. 12]" markers) when they fit the
  token budget, else the passages that best match the question plus their neighbours, in document
  order, each under its anchor, with an instruction to cite pages like "(p. 12)".
- :func:`find_citations` finds "p. 12", "page 12", "pp. 3–4" in an answer, to make them clickable.

User text never reaches FTS5 syntax: questions are reduced to words, each quoted, OR-ed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import re
import sqlite3
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from app.core.chunking import Chunk, estimate_tokens
from app.core.types import DocumentMode

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence
    from pathlib import Path

    from app.core.turns import DocumentSource

log = logging.getLogger(__name__)

MAX_HITS = 40
"""BM25 hits considered per search (each brings its neighbours)."""
MAX_QUERY_TERMS = 32
MAX_CODE_TOKENS = 8
"""Code-like tokens of a question looked up literally."""
LITERAL_SHARE = 0.02
"""A code-like token in more than this share of the chunks is too common to rank by."""
MIN_TRIMMED_TOKENS = 48
"""A hit is trimmed to the room left only when at least this many tokens are left."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS doc_chunks (
    id INTEGER PRIMARY KEY,
    doc_id INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    anchor TEXT NOT NULL,
    page INTEGER,
    text TEXT NOT NULL,
    tokens INTEGER NOT NULL,
    UNIQUE (doc_id, idx)
);
CREATE VIRTUAL TABLE IF NOT EXISTS doc_chunks_fts USING fts5(
    text, content='doc_chunks', content_rowid='id', tokenize='porter unicode61 remove_diacritics 2'
);
CREATE TRIGGER IF NOT EXISTS doc_chunks_ai AFTER INSERT ON doc_chunks BEGIN
    INSERT INTO doc_chunks_fts (rowid, text) VALUES (new.id, new.text);
END;
CREATE TRIGGER IF NOT EXISTS doc_chunks_ad AFTER DELETE ON doc_chunks BEGIN
    INSERT INTO doc_chunks_fts (doc_chunks_fts, rowid, text) VALUES ('delete', old.id, old.text);
END;
CREATE TRIGGER IF NOT EXISTS doc_chunks_au AFTER UPDATE ON doc_chunks BEGIN
    INSERT INTO doc_chunks_fts (doc_chunks_fts, rowid, text) VALUES ('delete', old.id, old.text);
    INSERT INTO doc_chunks_fts (rowid, text) VALUES (new.id, new.text);
END;
"""

# Words that carry no meaning for BM25 in a question (English; other languages keep all words).
# Words that change what is asked ("not", "before", "all", "only", "under"…) are kept.
STOPWORDS = frozenset(
    """
    a about am an and are as at be because been being but by can could did do does doing for from had
    has have having he her here hers herself him himself his how i if in into is it its itself just me
    my myself of on or our ours ourselves she should so some such than that the their theirs them
    themselves then there these they this those through to too was we were what when where which while
    who whom why will with would you your yours yourself yourselves tell say says said please find show
    give explain describe mention mentioned mentions according document documents file text page pages
    any both out up down off again further once own very more most other same
    """.split()  # noqa: SIM905 - a word list reads better as prose
)
_WORD = re.compile(r"\w+", re.UNICODE)


@dataclass(frozen=True)
class RetrievedChunk(Chunk):
    """A chunk found by :meth:`ChunkIndex.search`, with where it came from and why."""

    doc_id: int
    score: float | None  # BM25 (lower is better); None for a neighbour or a whole-document chunk
    rank: int  # order of selection: the lower, the more relevant


class ChunkIndex:
    """Chunks of many documents, searchable with FTS5 BM25. Owns no connection unless it was
    made by :meth:`open`: the caller closes it."""

    def __init__(self, connection: sqlite3.Connection, *, owned: bool = False) -> None:
        self._db = connection
        self._owned = owned
        self._db.executescript(_SCHEMA)

    @classmethod
    def open(cls, database: Path) -> ChunkIndex:
        """An index on a connection of its own to ``database`` (WAL: it reads while the app's
        store writes), for the thread that calls it; :meth:`close` closes that connection."""
        connection = sqlite3.connect(str(database), isolation_level=None, check_same_thread=False)
        connection.execute("PRAGMA busy_timeout = 5000")
        return cls(connection, owned=True)

    def close(self) -> None:
        if self._owned:
            self._db.close()

    def add_document(self, doc_id: int, chunks: Iterable[Chunk]) -> None:
        """Store (or replace) the chunks of ``doc_id``."""
        rows = [(doc_id, c.index, c.anchor, c.page, c.text, c.tokens) for c in chunks]
        with self._savepoint():
            self._db.execute("DELETE FROM doc_chunks WHERE doc_id = ?", (doc_id,))
            self._db.executemany(
                "INSERT INTO doc_chunks (doc_id, idx, anchor, page, text, tokens) VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
        log.debug("indexed document %d: %d chunks", doc_id, len(rows))

    def delete_document(self, doc_id: int) -> None:
        with self._savepoint():
            self._db.execute("DELETE FROM doc_chunks WHERE doc_id = ?", (doc_id,))

    def chunks(self, doc_id: int) -> list[Chunk]:
        rows = self._db.execute(
            "SELECT idx, anchor, page, text, tokens FROM doc_chunks WHERE doc_id = ? ORDER BY idx", (doc_id,)
        ).fetchall()
        return [Chunk(*row) for row in rows]

    def search(
        self, question: str, doc_ids: Sequence[int], budget_tokens: int, neighbours: int = 1
    ) -> list[RetrievedChunk]:
        """The best matches for ``question`` in ``doc_ids`` plus ``neighbours`` chunks either side.

        Chunks holding a rare code-like token of the question (``C++``, ``$HOME``, ``a.b()``) come
        first, then BM25's order. Hits are taken best first, each with its neighbours (nearest first),
        as long as their tokens fit ``budget_tokens``; a hit too long for the room left is trimmed to
        its best sentences. The result is deduplicated and in document order (``doc_ids`` order,
        then chunk order).
        """
        if not doc_ids or budget_tokens <= 0:
            return []
        hits = self.ranked(question, doc_ids)
        return self._select(hits, question, doc_ids, budget_tokens, neighbours)

    def ranked(self, question: str, doc_ids: Sequence[int], limit: int = MAX_HITS) -> list[RetrievedChunk]:
        """The chunks matching ``question``, best first (rank 0 is the best)."""
        marks = ",".join("?" * len(doc_ids))
        query = fts_query(question)
        hits: list[tuple[int, int, str, int | None, str, int, float]] = []
        if query:
            hits = self._db.execute(
                f"SELECT c.doc_id, c.idx, c.anchor, c.page, c.text, c.tokens, bm25(doc_chunks_fts) AS score "
                f"FROM doc_chunks_fts JOIN doc_chunks AS c ON c.id = doc_chunks_fts.rowid "
                f"WHERE doc_chunks_fts MATCH ? AND c.doc_id IN ({marks}) ORDER BY score LIMIT ?",
                (query, *doc_ids, limit),
            ).fetchall()
        literal = self._literal_matches(question, doc_ids)
        if literal:
            known = {(h[0], h[1]) for h in hits}
            extra = [key for key in literal if key not in known][:limit]
            for doc_id, idx in extra:
                row = self._db.execute(
                    "SELECT anchor, page, text, tokens FROM doc_chunks WHERE doc_id = ? AND idx = ?",
                    (doc_id, idx),
                ).fetchone()
                hits.append((doc_id, idx, *row, 0.0))
            position = {(h[0], h[1]): n for n, h in enumerate(hits)}
            hits.sort(key=lambda h: (-literal.get((h[0], h[1]), 0), position[h[0], h[1]]))
        return [
            RetrievedChunk(idx, anchor, page, text, tokens, doc_id, score, n)
            for n, (doc_id, idx, anchor, page, text, tokens, score) in enumerate(hits[:limit])
        ]

    def _literal_matches(self, question: str, doc_ids: Sequence[int]) -> dict[tuple[int, int], int]:
        """(doc_id, idx) -> how many of the question's rare code-like tokens the chunk contains.

        A token found in more than :data:`LITERAL_SHARE` of the chunks (and more than 3) tells them
        apart no better than a common word and is ignored.
        """
        tokens = code_tokens(question)
        if not tokens:
            return {}
        marks = ",".join("?" * len(doc_ids))
        (total,) = self._db.execute(
            f"SELECT count(*) FROM doc_chunks WHERE doc_id IN ({marks})", tuple(doc_ids)
        ).fetchone()
        counts: dict[tuple[int, int], int] = {}
        for token in tokens[:MAX_CODE_TOKENS]:
            rows = self._db.execute(
                f"SELECT doc_id, idx FROM doc_chunks WHERE doc_id IN ({marks}) AND instr(lower(text), ?) > 0",
                (*doc_ids, token.lower()),
            ).fetchall()
            if len(rows) > max(3, total * LITERAL_SHARE):
                continue
            for doc_id, idx in rows:
                counts[doc_id, idx] = counts.get((doc_id, idx), 0) + 1
        return counts

    def _select(
        self,
        hits: Sequence[RetrievedChunk],
        question: str,
        doc_ids: Sequence[int],
        budget_tokens: int,
        neighbours: int,
    ) -> list[RetrievedChunk]:
        """Hits best first, each with its neighbours, within ``budget_tokens``, in document order."""
        selected: dict[tuple[int, int], RetrievedChunk] = {}
        used = 0
        for hit in hits:
            if used >= budget_tokens:
                break
            key = (hit.doc_id, hit.index)
            if key not in selected:
                room = budget_tokens - used
                if hit.tokens > room:
                    if room < MIN_TRIMMED_TOKENS:
                        continue
                    text = trim_passage(hit.text, room, question)
                    if not text:
                        continue
                    hit = dataclasses.replace(hit, text=text, tokens=estimate_tokens(text))
                selected[key] = dataclasses.replace(hit, rank=len(selected))
                used += hit.tokens
            for near in self._neighbours(hit.doc_id, hit.index, neighbours):
                if (hit.doc_id, near.index) not in selected and used + near.tokens <= budget_tokens:
                    selected[hit.doc_id, near.index] = RetrievedChunk(
                        near.index,
                        near.anchor,
                        near.page,
                        near.text,
                        near.tokens,
                        hit.doc_id,
                        None,
                        len(selected),
                    )
                    used += near.tokens
        order = {doc_id: n for n, doc_id in enumerate(doc_ids)}
        return sorted(selected.values(), key=lambda c: (order[c.doc_id], c.index))

    def _neighbours(self, doc_id: int, idx: int, n: int) -> list[Chunk]:
        if n <= 0:
            return []
        rows = self._db.execute(
            "SELECT idx, anchor, page, text, tokens FROM doc_chunks "
            "WHERE doc_id = ? AND idx BETWEEN ? AND ? AND idx != ?",
            (doc_id, idx - n, idx + n, idx),
        ).fetchall()
        return sorted((Chunk(*row) for row in rows), key=lambda c: (abs(c.index - idx), c.index))

    @contextlib.contextmanager
    def _savepoint(self) -> Iterator[None]:
        self._db.execute("SAVEPOINT chunk_index")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK TO chunk_index")
            self._db.execute("RELEASE chunk_index")
            raise
        self._db.execute("RELEASE chunk_index")


def fts_query(question: str) -> str:
    """A safe FTS5 MATCH expression: the question's words, quoted, OR-ed, stopwords dropped.

    Code-like tokens keep their parts, even single letters ("C++" -> "c"), and add them as a phrase
    ("a.b()" -> "a b"), which ranks chunks holding them together first. Returns "" when nothing
    searchable is left. Quoting makes operators (NEAR, AND, *, -, ^, :, parentheses) plain words;
    ``\\w+`` words never contain a double quote.
    """
    terms: list[str] = []
    for token in code_tokens(question):
        parts = [w.strip("_") or w for w in _WORD.findall(token.lower())]
        if len(parts) > 1:
            terms += [" ".join(parts), *parts]
        else:
            terms += [w for w in parts if w not in STOPWORDS]
    for word in _WORD.findall(question.lower()):
        word = word.strip("_")
        if not word or word in STOPWORDS or (len(word) == 1 and not word.isdigit()):
            continue
        terms.append(word)
    unique = list(dict.fromkeys(terms))
    return " OR ".join('"' + t.replace('"', '""') + '"' for t in unique[:MAX_QUERY_TERMS])


_CODE_SYMBOLS = frozenset("+#$@<>=*&|~%^/\\.:()[]{}-")
_QUOTES = "\"'`“”‘’«»,;?!"


def code_tokens(question: str) -> list[str]:
    """The question's code-like tokens, as written: ``C++``, ``$HOME``, ``->``, ``--flag``, ``a.b()``.

    A token is a whitespace-separated piece with a symbol in it, stripped of quotes, of sentence
    punctuation at its end and of an unbalanced bracket at either end.
    """
    out: list[str] = []
    for raw in question.split():
        token = raw.strip(_QUOTES)
        if token.endswith((".", ":")) and not token.endswith(("...", "::")):
            token = token.rstrip(".:")
        if len(token) > 2 and token[0] + token[-1] in ("()", "[]", "{}"):
            token = token[1:-1]
        for opening, closing in ("()", "[]", "{}"):
            if token.startswith(opening) and token.count(opening) > token.count(closing):
                token = token[1:]
            if token.endswith(closing) and token.count(closing) > token.count(opening):
                token = token[:-1]
        token = token.strip(_QUOTES)
        if len(token) >= 2 and any(ch in _CODE_SYMBOLS for ch in token) and token not in out:
            out.append(token)
    return out


_SENTENCE_END = re.compile(r"(?<=[.!?;:。！？；])\s+|\n\s*")


def trim_passage(
    text: str, budget: int, question: str, count_tokens: Callable[[str], int] = estimate_tokens
) -> str:
    """The run of whole sentences of ``text`` within ``budget`` tokens that shares most words with
    ``question`` (the earliest such run on ties); "" when not even one sentence fits. The result is
    a verbatim slice of ``text``.
    """
    if count_tokens(text) <= budget:
        return text
    bounds = [0, *(m.end() for m in _SENTENCE_END.finditer(text)), len(text)]
    spans = [(a, b) for a, b in itertools.pairwise(bounds) if text[a:b].strip()]
    wanted = {w for w in _WORD.findall(question.lower()) if w not in STOPWORDS}
    best: tuple[int, int, int] | None = None  # (-matches, start, end)
    for i in range(len(spans)):
        matches = 0
        for j in range(i, len(spans)):
            piece = text[spans[i][0] : spans[j][1]].strip()
            if count_tokens(piece) > budget:
                break
            matches += len(wanted & set(_WORD.findall(text[spans[j][0] : spans[j][1]].lower())))
            candidate = (-matches, spans[i][0], spans[j][1])
            if best is None or candidate[0] < best[0]:
                best = candidate
    if best is None:
        return ""
    return text[best[1] : best[2]].strip()


# --- composing the prompt's document part -----------------------------------------------------


@dataclass(frozen=True)
class DocumentChunks:
    """One attached document as the composer sees it."""

    doc_id: int
    name: str
    chunks: tuple[Chunk, ...]


@dataclass(frozen=True)
class SourcePassage:
    """Text sent to the model under one anchor: what a clicked citation shows."""

    doc_id: int
    doc_name: str
    anchor: str
    page: int | None
    text: str


@dataclass(frozen=True)
class ComposedContext:
    text: str
    mode: DocumentMode
    used_chunks: tuple[RetrievedChunk, ...]
    citations: tuple[SourcePassage, ...]
    tokens: int

    def passages_for_page(self, page: int, doc_id: int | None = None) -> list[SourcePassage]:
        """The passages sent from ``page`` (of ``doc_id``, or of any document)."""
        return [p for p in self.citations if p.page == page and (doc_id is None or p.doc_id == doc_id)]


WHOLE_INSTRUCTION = (
    "The user attached the document{s} below. Answer from {them}. After each fact you take from "
    '{them}, cite where it is with the marker in square brackets that precedes it, like "(p. 12)" '
    "for a page."
)
RETRIEVAL_INSTRUCTION = (
    "The user attached document{s} too long to include whole. Below are the passages that best match "
    "the question, in document order; each starts with where it comes from in square brackets. Answer "
    'from these passages and cite the page of each fact you use, like "(p. 12)" (or the marker, like '
    '"(§ Introduction)", where there are no pages). If the passages do not contain the answer, say so.'
)


def compose_document_context(
    docs_with_chunks: Sequence[DocumentChunks],
    question: str,
    budget_tokens: int,
    *,
    count_tokens: Callable[[str], int] = estimate_tokens,
    index: ChunkIndex | DocumentSource | None = None,
    neighbours: int = 1,
    retrieval_budget: int | None = None,
) -> ComposedContext:
    """The document part of the prompt: whole documents if they fit ``budget_tokens``, else the
    passages that best match ``question`` within ``retrieval_budget`` (default: ``budget_tokens``).

    ``index`` is a :class:`ChunkIndex` that already holds these documents (the app's store); without
    one, a temporary in-memory index is built for this call.
    """
    docs = [d for d in docs_with_chunks if d.chunks]
    if not docs:
        return ComposedContext("", DocumentMode.WHOLE, (), (), 0)
    plural = len(docs) > 1
    whole_instruction = WHOLE_INSTRUCTION.format(s="s" if plural else "", them="them" if plural else "it")
    rough = sum(c.tokens for d in docs for c in d.chunks)
    if rough <= budget_tokens:
        used = [
            RetrievedChunk(c.index, c.anchor, c.page, c.text, c.tokens, d.doc_id, None, 0)
            for d in docs
            for c in d.chunks
        ]
        text = _render(whole_instruction, docs, used, excerpts=False)
        tokens = count_tokens(text)
        if tokens <= budget_tokens:
            return ComposedContext(
                text, DocumentMode.WHOLE, tuple(used), tuple(_passages(docs, used)), tokens
            )

    instruction = RETRIEVAL_INSTRUCTION.format(s="s" if plural else "")
    if retrieval_budget is not None:
        budget_tokens = retrieval_budget
    overhead = count_tokens(_render(instruction, docs, [], excerpts=True))
    search_budget = max(0, budget_tokens - overhead)
    found = _retrieve(docs, question, search_budget, index, neighbours)
    if not found:  # nothing matched (or only stopwords): the beginning of each document
        found = _leading_chunks(docs, search_budget)
    while True:
        text = _render(instruction, docs, found, excerpts=True)
        tokens = count_tokens(text)
        if tokens <= budget_tokens or not found:
            break
        if len(found) > 1:
            worst = max(found, key=lambda c: c.rank)  # markers cost a little: drop the least relevant
            found = [c for c in found if c is not worst]
            continue
        # One passage left and still too long (the model's tokens outnumber the estimate): keep its
        # best sentences, so a question that fits always gets some of the document.
        only = found[0]
        room = count_tokens(only.text) - (tokens - budget_tokens)
        trimmed = trim_passage(only.text, room, question, count_tokens) if room > 0 else ""
        if not trimmed or len(trimmed) >= len(only.text):
            found = []
        else:
            found = [dataclasses.replace(only, text=trimmed, tokens=count_tokens(trimmed))]
    log.debug("retrieval: %d chunks, %d tokens of %d", len(found), tokens, budget_tokens)
    return ComposedContext(text, DocumentMode.RETRIEVAL, tuple(found), tuple(_passages(docs, found)), tokens)


def _retrieve(
    docs: Sequence[DocumentChunks],
    question: str,
    budget: int,
    index: ChunkIndex | DocumentSource | None,
    neighbours: int,
) -> list[RetrievedChunk]:
    doc_ids = [d.doc_id for d in docs]
    if index is not None:
        return index.search(question, doc_ids, budget, neighbours)
    with contextlib.closing(sqlite3.connect(":memory:")) as db:
        temporary = ChunkIndex(db)
        for d in docs:
            temporary.add_document(d.doc_id, d.chunks)
        return temporary.search(question, doc_ids, budget, neighbours)


def _leading_chunks(docs: Sequence[DocumentChunks], budget: int) -> list[RetrievedChunk]:
    out: list[RetrievedChunk] = []
    share = budget // len(docs)
    for d in docs:
        used = 0
        for c in d.chunks:
            if used + c.tokens > share:
                break
            out.append(RetrievedChunk(c.index, c.anchor, c.page, c.text, c.tokens, d.doc_id, None, len(out)))
            used += c.tokens
    return out


def _render(
    instruction: str, docs: Sequence[DocumentChunks], chunks: Sequence[RetrievedChunk], *, excerpts: bool
) -> str:
    parts = [instruction]
    for d in docs:
        own = [c for c in chunks if c.doc_id == d.doc_id]
        if excerpts and not own and chunks:
            continue
        name = d.name.replace('"', "'")
        body: list[str] = []
        previous: RetrievedChunk | None = None
        for c in own:
            if previous is not None and excerpts and c.index != previous.index + 1:
                body.append("[…]")
            if (
                previous is None
                or c.anchor != previous.anchor
                or (excerpts and c.index != previous.index + 1)
            ):
                body.append(f"[{c.anchor}]\n{c.text}")
            else:
                body.append(c.text)
            previous = c
        kind = ' part="excerpts"' if excerpts else ""
        parts.append(f'<document name="{name}"{kind}>\n' + "\n\n".join(body) + "\n</document>")
    return "\n\n".join(parts)


def _passages(docs: Sequence[DocumentChunks], chunks: Sequence[RetrievedChunk]) -> Iterator[SourcePassage]:
    names = {d.doc_id: d.name for d in docs}
    group: list[RetrievedChunk] = []
    for c in [*chunks, None]:
        if group and (c is None or c.doc_id != group[0].doc_id or c.anchor != group[0].anchor):
            first = group[0]
            text = "\n\n".join(g.text for g in group)
            yield SourcePassage(first.doc_id, names[first.doc_id], first.anchor, first.page, text)
            group = []
        if c is not None:
            group.append(c)


# --- citations in answers -------------------------------------------------------------------------


class PageCitation(NamedTuple):
    span: tuple[int, int]  # [start, end) in the answer text
    page: int


_CITATION = re.compile(
    r"\b(?:pp?\.|pages?\b|pgs?\.?)\s*(?P<first>\d{1,5})\b"
    r"(?P<rest>(?:\s*(?:[-–—,&]|\bto\b|\band\b)\s*\d{1,5}\b)*)",
    re.IGNORECASE,
)
_NUMBER = re.compile(r"\d{1,5}")


def find_citations(answer_text: str, max_page: int | None = None) -> list[PageCitation]:
    """Page references in an answer: "p. 12", "page 12", "pp. 3–4", "pages 3, 5 and 9".

    The label and first number form one span ("p. 12", "pp. 3"); each further number is a span of
    its own, so every page mentioned is clickable. Pages above ``max_page`` (or 0) are ignored.
    """
    found: list[PageCitation] = []

    def keep(span: tuple[int, int], page: int) -> None:
        if page >= 1 and (max_page is None or page <= max_page):
            found.append(PageCitation(span, page))

    for m in _CITATION.finditer(answer_text):
        keep((m.start(), m.end("first")), int(m.group("first")))
        base = m.start("rest")
        for n in _NUMBER.finditer(m.group("rest")):
            keep((base + n.start(), base + n.end()), int(n.group()))
    return found
