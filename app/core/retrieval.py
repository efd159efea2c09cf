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
from typing import TYPE_CHECKING, NamedTuple, TypeAlias

from app.core.chunking import Chunk, estimate_tokens
from app.core.errors import UserError
from app.core.types import DocumentMode
from app.core.vectors import (
    KEYWORDS,
    Fusion,
    best_per_chunk,
    from_blobs,
    fuse,
    split_pieces,
    to_blob,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence
    from pathlib import Path

    import numpy as np

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
CREATE TABLE IF NOT EXISTS doc_pieces (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    chunk_id INTEGER NOT NULL,
    doc_id INTEGER NOT NULL,
    start INTEGER NOT NULL,
    stop INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS doc_pieces_by_doc ON doc_pieces (doc_id, id);
CREATE INDEX IF NOT EXISTS doc_pieces_by_chunk ON doc_pieces (chunk_id);
CREATE TABLE IF NOT EXISTS doc_vectors (
    piece_id INTEGER NOT NULL,
    model TEXT NOT NULL,
    doc_id INTEGER NOT NULL,
    vector BLOB NOT NULL,
    PRIMARY KEY (piece_id, model)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS doc_vectors_by_doc ON doc_vectors (model, doc_id, piece_id);
CREATE TRIGGER IF NOT EXISTS doc_chunks_drop_pieces AFTER DELETE ON doc_chunks BEGIN
    DELETE FROM doc_pieces WHERE chunk_id = old.id;
END;
CREATE TRIGGER IF NOT EXISTS doc_pieces_drop_vectors AFTER DELETE ON doc_pieces BEGIN
    DELETE FROM doc_vectors WHERE piece_id = old.id;
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
    found_by: str = ""  # "keywords", "meaning", "keywords+meaning"; "" for a neighbour or whole text


class PieceVectors(NamedTuple):
    """The embedded pieces of one document, one row each."""

    chunk: np.ndarray  # the chunk (``idx``) each piece belongs to
    spans: np.ndarray  # [start, stop) of each piece in its chunk's text
    vectors: np.ndarray  # float32, normalised


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
            self._add_pieces(doc_id)
        log.debug("indexed document %d: %d chunks", doc_id, len(rows))

    # --- pieces and their vectors (the API the embedding worker uses) ---

    def _add_pieces(self, doc_id: int) -> None:
        """Split the chunks of ``doc_id`` into pieces to embed (:func:`app.core.vectors.split_pieces`)."""
        rows = self._db.execute(
            "SELECT id, text FROM doc_chunks WHERE doc_id = ? ORDER BY idx", (doc_id,)
        ).fetchall()
        self._db.executemany(
            "INSERT INTO doc_pieces (chunk_id, doc_id, start, stop) VALUES (?, ?, ?, ?)",
            [(chunk_id, doc_id, a, b) for chunk_id, text in rows for a, b in split_pieces(text)],
        )

    def _ensure_pieces(self, doc_id: int) -> None:
        """Pieces for a document indexed before pieces existed."""
        if self._db.execute("SELECT 1 FROM doc_pieces WHERE doc_id = ? LIMIT 1", (doc_id,)).fetchone():
            return
        with self._savepoint():
            self._add_pieces(doc_id)

    def unembedded(self, doc_id: int, model: str) -> list[tuple[int, str]]:
        """(piece_id, text) of the pieces of ``doc_id`` that have no vector for ``model`` yet, in
        document order. A piece is at most :data:`app.core.vectors.PIECE_UNITS` words and symbols of
        one chunk (whole sentences where it can), so the embedder's 256-token cut loses nothing."""
        self._ensure_pieces(doc_id)
        rows = self._db.execute(
            "SELECT p.id, c.text, p.start, p.stop FROM doc_pieces AS p "
            "JOIN doc_chunks AS c ON c.id = p.chunk_id WHERE p.doc_id = ? AND NOT EXISTS "
            "(SELECT 1 FROM doc_vectors AS v WHERE v.piece_id = p.id AND v.model = ?) ORDER BY p.id",
            (doc_id, model),
        ).fetchall()
        return [(piece_id, text[a:b]) for piece_id, text, a, b in rows]

    def add_vectors(self, model: str, rows: Sequence[tuple[int, np.ndarray]]) -> None:
        """Store the vectors (float32, normalised) of pieces from :meth:`unembedded`, in one
        transaction; a piece stored again is replaced, one deleted meanwhile is skipped."""
        with self._savepoint():
            self._db.executemany(
                "INSERT OR REPLACE INTO doc_vectors (piece_id, model, doc_id, vector) "
                "SELECT id, ?, doc_id, ? FROM doc_pieces WHERE id = ?",
                [(model, to_blob(vector), piece_id) for piece_id, vector in rows],
            )

    def embedding_progress(self, doc_id: int, model: str) -> tuple[int, int]:
        """(pieces of ``doc_id`` embedded with ``model``, pieces in all)."""
        (total,) = self._db.execute("SELECT count(*) FROM doc_pieces WHERE doc_id = ?", (doc_id,)).fetchone()
        if not total:
            rows = self._db.execute("SELECT text FROM doc_chunks WHERE doc_id = ?", (doc_id,)).fetchall()
            return 0, sum(len(split_pieces(text)) for (text,) in rows)
        return self.vector_state(doc_id, model)[0], int(total)

    def vector_state(self, doc_id: int, model: str) -> tuple[int, int]:
        """(vectors of ``doc_id`` for ``model``, their newest piece id): it changes whenever they
        do, since piece ids are never reused."""
        done, newest = self._db.execute(
            "SELECT count(*), max(piece_id) FROM doc_vectors WHERE model = ? AND doc_id = ?", (model, doc_id)
        ).fetchone()
        return int(done), int(newest or 0)

    def forget_vectors(self, keep_model: str | None) -> None:
        """Delete the vectors of every model but ``keep_model`` (all of them for None)."""
        with self._savepoint():
            self._db.execute("DELETE FROM doc_vectors WHERE model IS NOT ?", (keep_model,))

    def piece_vectors(self, doc_id: int, model: str) -> PieceVectors:
        """The embedded pieces of ``doc_id``: their chunks, places in them and vectors."""
        rows = self._db.execute(
            "SELECT c.idx, p.start, p.stop, v.vector FROM doc_pieces AS p "
            "JOIN doc_chunks AS c ON c.id = p.chunk_id JOIN doc_vectors AS v ON v.piece_id = p.id "
            "WHERE p.doc_id = ? AND v.model = ? ORDER BY p.id",
            (doc_id, model),
        ).fetchall()
        import numpy as np

        return PieceVectors(
            np.array([r[0] for r in rows], dtype=np.int64),
            np.array([r[1:3] for r in rows], dtype=np.int64).reshape(-1, 2),
            from_blobs([r[3] for r in rows]),
        )

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

    def retrieve(
        self, question: str, doc_ids: Sequence[int], budget_tokens: int, neighbours: int = 1
    ) -> Retrieval:
        """:meth:`search` as a :class:`Retrieval` (keyword ranking does not judge coverage)."""
        return Retrieval(tuple(self.search(question, doc_ids, budget_tokens, neighbours)))

    def _chunk(self, doc_id: int, idx: int) -> RetrievedChunk:
        anchor, page, text, tokens = self._db.execute(
            "SELECT anchor, page, text, tokens FROM doc_chunks WHERE doc_id = ? AND idx = ?", (doc_id, idx)
        ).fetchone()
        return RetrievedChunk(idx, anchor, page, text, tokens, doc_id, None, 0)

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
            RetrievedChunk(idx, anchor, page, text, tokens, doc_id, score, n, KEYWORDS)
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


EmbedQuery: TypeAlias = "Callable[[str], np.ndarray]"
"""A question -> one L2-normalised float32 row (thread-safe; called on the inference thread)."""

MIN_CONFIDENCE = 0.47
"""A best match by meaning (cosine of question and piece) below this: the documents do not seem to
cover the question (calibrated on the benchmark's absent questions, ``docs/benchmarks.md``)."""

NO_SEARCH_MODEL = (
    "Keyword search only: the search model is not installed, so answers may miss questions asked "
    "in other words."
)
STILL_INDEXING = (
    "Keyword search only for now: the search model is still reading the document ({percent} %), "
    "so answers may miss questions asked in other words."
)


class EmbedderUnavailable(UserError):
    """The search model cannot embed now (not loaded, failed): ranking falls back to keywords."""


@dataclass(frozen=True)
class Retrieval:
    """The passages for a question, whether the documents seem to cover it, and how they were ranked."""

    chunks: tuple[RetrievedChunk, ...]
    covered: bool | None = None  # None: not judged (keyword ranking cannot tell)
    note: str = ""  # why ranking was by keywords only, for the document chip; "" when by meaning too


class HybridSource:
    """Documents ranked by keywords (BM25) and by meaning (vectors of ``model``), fused.

    A :class:`~app.core.turns.DocumentSource` over ``index``. A document is ranked by meaning once
    every piece of it has a vector of ``model``; until then, or without ``embed_query`` / ``model``,
    or when ``embed_query`` raises :class:`EmbedderUnavailable`, it is ranked by keywords alone and
    :attr:`Retrieval.note` says why. Vectors are read from SQLite once per document and kept while
    their :meth:`ChunkIndex.vector_state` does not change. Used from one thread (the inference thread).
    """

    def __init__(
        self,
        index: ChunkIndex,
        embed_query: EmbedQuery | None,
        model: str | None,
        *,
        fusion: Fusion | None = None,
        min_confidence: float = MIN_CONFIDENCE,
    ) -> None:
        self._index = index
        self._embed_query = embed_query
        self._model = model
        self.fusion = fusion or Fusion()
        self.min_confidence = min_confidence
        self._vectors: dict[int, tuple[tuple[int, int], PieceVectors]] = {}

    @property
    def embed_query(self) -> EmbedQuery | None:
        return self._embed_query

    @property
    def model(self) -> str | None:
        return self._model

    def chunks(self, doc_id: int) -> list[Chunk]:
        return self._index.chunks(doc_id)

    def search(
        self, question: str, doc_ids: Sequence[int], budget_tokens: int, neighbours: int = 1
    ) -> list[RetrievedChunk]:
        return list(self.retrieve(question, doc_ids, budget_tokens, neighbours).chunks)

    def retrieve(
        self, question: str, doc_ids: Sequence[int], budget_tokens: int, neighbours: int = 1
    ) -> Retrieval:
        """The passages for ``question`` within ``budget_tokens`` (as :meth:`ChunkIndex.search`),
        ranked by both retrievers where the documents have vectors (``fusion.neighbours``, when
        set, replaces ``neighbours``)."""
        vectors, note = self._ready_vectors(doc_ids)
        if not doc_ids or budget_tokens <= 0:
            return Retrieval((), None, note)
        keyword = self._index.ranked(question, doc_ids, limit=self.fusion.depth)
        query = None
        if vectors and question.strip():
            query, failure = self._query_vector(question)
            note = note or failure
        if query is None:
            chunks = self._index._select(keyword, question, doc_ids, budget_tokens, neighbours)
            return Retrieval(tuple(chunks), None, note)
        meaning: list[tuple[float, tuple[int, int]]] = []
        for doc_id, pieces in vectors.items():
            best = best_per_chunk(pieces.vectors @ query, pieces.chunk, int(pieces.chunk.max()) + 1)
            order = best.argsort()[::-1][: self.fusion.depth]
            meaning += [(float(best[i]), (doc_id, int(i))) for i in order if best[i] > -1]
        meaning.sort(key=lambda m: -m[0])
        confidence = meaning[0][0] if meaning else -1.0
        covered = None if note else confidence >= self.min_confidence
        known = {(h.doc_id, h.index): h for h in keyword}
        literal = list(self._index._literal_matches(question, doc_ids))
        fused = fuse(
            [(h.doc_id, h.index) for h in keyword], [key for _s, key in meaning], literal, self.fusion
        )
        hits: list[RetrievedChunk] = []
        for key, found_by in fused:
            hit = known.get(key) or self._index._chunk(*key)
            hits.append(dataclasses.replace(hit, rank=len(hits), found_by=found_by))
        if self.fusion.neighbours is not None:
            neighbours = self.fusion.neighbours
        chunks = self._index._select(hits, question, doc_ids, budget_tokens, neighbours)
        return Retrieval(tuple(chunks), covered, note)

    def confidence(self, question: str, doc_ids: Sequence[int]) -> float | None:
        """The best cosine of ``question`` with a piece of ``doc_ids`` (None when not ranked by meaning)."""
        vectors, _note = self._ready_vectors(doc_ids)
        query = self._query_vector(question)[0] if vectors else None
        if query is None:
            return None
        return max(float((pieces.vectors @ query).max()) for pieces in vectors.values())

    def _query_vector(self, question: str) -> tuple[np.ndarray | None, str]:
        """The question's vector, or None and why not."""
        if self._embed_query is None:
            return None, NO_SEARCH_MODEL
        try:
            return self._embed_query(question), ""
        except EmbedderUnavailable as exc:
            log.info("ranking by keywords only: %s", exc.message)
            return None, f"Keyword search only: {exc.message}"

    def _ready_vectors(self, doc_ids: Sequence[int]) -> tuple[dict[int, PieceVectors], str]:
        """The vectors of the documents embedded in full, and why the others are ranked by keywords."""
        if self._embed_query is None or self._model is None:
            return {}, NO_SEARCH_MODEL
        ready: dict[int, PieceVectors] = {}
        done_all = total_all = 0
        for doc_id in doc_ids:
            done, total = self._index.embedding_progress(doc_id, self._model)
            done_all, total_all = done_all + done, total_all + total
            if not total or done < total:
                continue
            state = self._index.vector_state(doc_id, self._model)
            cached = self._vectors.get(doc_id)
            if cached is None or cached[0] != state:
                cached = self._vectors[doc_id] = (state, self._index.piece_vectors(doc_id, self._model))
            ready[doc_id] = cached[1]
        if done_all < total_all:
            return ready, STILL_INDEXING.format(percent=100 * done_all // total_all)
        return ready, ""


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
    found_by: str = ""  # which retriever found it ("keywords", "meaning", both); "" for context


@dataclass(frozen=True)
class ComposedContext:
    text: str
    mode: DocumentMode
    used_chunks: tuple[RetrievedChunk, ...]
    citations: tuple[SourcePassage, ...]
    tokens: int
    covered: bool | None = None  # False: no passage matches the question with confidence
    note: str = ""  # why the passages were ranked by keywords only ("" when by meaning too)

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
NOT_COVERED_INSTRUCTION = (
    "None of the passages matches the question closely: the document{s} probably {do} not cover it. "
    "Unless a passage below does answer it, tell the user that the document{s} {do} not seem to "
    "cover this, rather than answering from general knowledge or guessing."
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
    retrieval = _retrieve(docs, question, search_budget, index, neighbours)
    if retrieval.covered is False:  # the passages below are the least unlikely; the loop fits them
        instruction += " " + NOT_COVERED_INSTRUCTION.format(
            s="s" if plural else "", do="do" if plural else "does"
        )
    found = list(retrieval.chunks)
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
    return ComposedContext(
        text,
        DocumentMode.RETRIEVAL,
        tuple(found),
        tuple(_passages(docs, found)),
        tokens,
        retrieval.covered,
        retrieval.note,
    )


def _retrieve(
    docs: Sequence[DocumentChunks],
    question: str,
    budget: int,
    index: ChunkIndex | DocumentSource | None,
    neighbours: int,
) -> Retrieval:
    doc_ids = [d.doc_id for d in docs]
    if index is not None:
        return index.retrieve(question, doc_ids, budget, neighbours)
    with contextlib.closing(sqlite3.connect(":memory:")) as db:
        temporary = ChunkIndex(db)
        for d in docs:
            temporary.add_document(d.doc_id, d.chunks)
        return temporary.retrieve(question, doc_ids, budget, neighbours)


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
            found_by = "+".join(sorted({part for g in group if g.found_by for part in g.found_by.split("+")}))
            yield SourcePassage(first.doc_id, names[first.doc_id], first.anchor, first.page, text, found_by)
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
