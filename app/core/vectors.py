"""The vector half of hybrid retrieval: pieces to embed, vectors as BLOBs, ranking by meaning, fusion.

Pure functions on plain data (numpy arrays, tuples); :class:`app.core.retrieval.ChunkIndex` stores
pieces and vectors in SQLite and :class:`app.core.retrieval.HybridSource` ranks with them.

- A **piece** is the unit the embedder scores: a run of whole sentences of one chunk of at most
  :data:`PIECE_UNITS` words and symbols (:func:`split_pieces`), so the embedder's 256-token cut loses
  nothing. A chunk's meaning score is the best score of its pieces.
- **Fusion** (:func:`fuse`): both rankings are merged by weighted reciprocal rank, the ranking by
  meaning weighing more (BM25 alone misses questions asked in other words and brings noise for
  them); chunks holding a rare code-like token of the question, and BM25's very best hits, keep
  their place at the top, so a question that shares words with its answer is never ranked worse
  than by BM25 alone. The choices and their measurements are in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

    import numpy as np

PIECE_UNITS = 160
"""Words and symbols per piece at most (all-MiniLM-L6-v2 reads 256 WordPiece tokens; a word is
1.2–1.5 of them in English prose and code)."""

KEYWORDS = "keywords"
MEANING = "meaning"

_UNIT = re.compile(r"\w+|[^\w\s]", re.UNICODE)
_BOUNDARY = re.compile(r"(?<=[.!?;:。！？；])\s+|\n\s*")


def count_units(text: str) -> int:
    """Words and symbols of ``text``: a lower bound of its WordPiece tokens."""
    return len(_UNIT.findall(text))


def split_pieces(text: str, max_units: int = PIECE_UNITS) -> list[tuple[int, int]]:
    """``[start, end)`` spans of ``text`` of whole sentences (lines), each within ``max_units``;
    a longer sentence is cut between words. Together they cover every word of ``text``, in order."""
    bounds = [0, *(m.end() for m in _BOUNDARY.finditer(text)), len(text)]
    sentences: list[tuple[int, int]] = []
    for a, b in itertools.pairwise(bounds):
        if not text[a:b].strip():
            continue
        if count_units(text[a:b]) <= max_units:
            sentences.append((a, b))
            continue
        units = list(_UNIT.finditer(text, a, b))
        for n in range(0, len(units), max_units):
            part = units[n : n + max_units]
            sentences.append(
                (
                    part[0].start(),
                    part[-1].end() if n + max_units >= len(units) else units[n + max_units].start(),
                )
            )
    pieces: list[tuple[int, int]] = []
    start: int | None = None
    end = used = 0
    for a, b in sentences:
        size = count_units(text[a:b])
        if start is not None and used + size > max_units:
            pieces.append(_strip(text, start, end))
            start = None
        if start is None:
            start, used = a, 0
        end = b
        used += size
    if start is not None:
        pieces.append(_strip(text, start, end))
    return pieces


def _strip(text: str, start: int, end: int) -> tuple[int, int]:
    piece = text[start:end]
    left = len(piece) - len(piece.lstrip())
    return start + left, start + left + len(piece.strip())


def to_blob(vector: np.ndarray) -> bytes:
    """A vector as stored: little-endian float32."""
    import numpy as np

    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


def from_blobs(blobs: Sequence[bytes], dimensions: int | None = None) -> np.ndarray:
    """Stored vectors as one float32 matrix (one row each)."""
    import numpy as np

    if not blobs:
        return np.zeros((0, dimensions or 0), dtype=np.float32)
    return np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(blobs), -1)


def best_per_chunk(scores: np.ndarray, chunk_of: np.ndarray, n_chunks: int) -> np.ndarray:
    """The best piece score of each chunk (``-inf`` for a chunk without pieces)."""
    import numpy as np

    best = np.full(n_chunks, -np.inf, dtype=np.float32)
    np.maximum.at(best, chunk_of, scores)
    return best


@dataclass(frozen=True)
class Fusion:
    """How the two rankings are merged and what a hit brings (the defaults are the measured choice)."""

    meaning_weight: float = 1.0
    keyword_weight: float = 0.5
    k: int = 20  # reciprocal-rank constant: the smaller, the more the first places of each count
    keyword_first: int = 1  # BM25's best hits that keep their place at the top
    depth: int = 40  # hits of each ranking considered
    neighbours: int | None = None  # chunks either side of a hit (None: as the caller asks)


def fuse(
    keyword: Sequence[tuple[int, int]],
    meaning: Sequence[tuple[int, int]],
    literal: Sequence[tuple[int, int]] = (),
    fusion: Fusion = Fusion(),
) -> list[tuple[tuple[int, int], str]]:
    """One ranking of ``(doc_id, idx)`` keys, best first, each with who found it.

    ``keyword`` is BM25's order, ``meaning`` the embedder's, ``literal`` the chunks holding a rare
    code-like token of the question (they come first, as in BM25 alone). The first
    ``fusion.keyword_first`` BM25 hits follow, then weighted reciprocal-rank fusion orders the rest.
    ``found_by`` is "keywords", "meaning" or "keywords+meaning".
    """
    keyword = list(keyword)[: fusion.depth]
    meaning = list(meaning)[: fusion.depth]
    found: dict[tuple[int, int], set[str]] = {}
    score: dict[tuple[int, int], float] = {}
    for weight, name, ranking in (
        (fusion.keyword_weight, KEYWORDS, keyword),
        (fusion.meaning_weight, MEANING, meaning),
    ):
        for rank, key in enumerate(ranking):
            found.setdefault(key, set()).add(name)
            score[key] = score.get(key, 0.0) + weight / (fusion.k + rank + 1)
    head = [key for key in literal if key in found] + keyword[: fusion.keyword_first]
    first = list(dict.fromkeys(head))
    rest = sorted((key for key in score if key not in first), key=lambda key: -score[key])
    return [(key, "+".join(sorted(found[key]))) for key in [*first, *rest]]
