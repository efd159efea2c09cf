"""Retrieval: how often the passage that answers a question reaches the model's prompt.

    python -m bench.retrieval [--contexts 8192 32768] [--verbose]

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

For absent questions there is no passage to find: the figure is how well the retriever's confidence
in its best match separates answerable questions from absent ones (the probability that an
answerable question's best match is more confident than an absent one's; 0.5 = no separation).
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import re
import sqlite3
import statistics
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from app.config import DEFAULT_SYSTEM_PROMPT
from app.core.chunking import chunk_document, estimate_tokens
from app.core.documents import extract
from app.core.retrieval import ChunkIndex
from app.core.store import Attachment, StoredMessage
from app.core.turns import ModelLimits, TurnRequest, build_turn

if TYPE_CHECKING:
    from collections.abc import Sequence

    from app.core.chunking import Chunk
    from app.core.types import ChatMessage

DATA = Path(__file__).parent / "data"
QA_FILE = DATA / "retrieval_qa.json"
KINDS = ("keyword", "paraphrased", "aggregate")
MAX_TOKENS = 2048  # the app's default answer length (app.config)


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


def prompt_text(question: str, name: str, doc_id: int, n_ctx: int, index: ChunkIndex) -> str:
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


def run(contexts: Sequence[int], verbose: bool) -> dict[int, dict[str, float]]:
    with tempfile.TemporaryDirectory() as tmp, contextlib.closing(sqlite3.connect(":memory:")) as db:
        docs, questions = load(Path(tmp))
        index = ChunkIndex(db)
        ids = {key: n + 1 for n, key in enumerate(docs)}
        for key, (_name, chunks) in docs.items():
            index.add_document(ids[key], chunks)
            print(f"{key}: {len(chunks)} chunks, {sum(c.tokens for c in chunks):,} tokens")
        results: dict[int, dict[str, float]] = {}
        for n_ctx in contexts:
            recall: dict[str, list[float]] = defaultdict(list)
            times: list[float] = []
            for q in questions:
                if not q.gold:
                    continue
                start = time.perf_counter()
                prompt = prompt_text(q.text, docs[q.doc][0], ids[q.doc], n_ctx, index)
                times.append(time.perf_counter() - start)
                found = [_norm(g) in prompt for g in q.gold]
                score = sum(found) / len(found) if q.kind == "aggregate" else float(any(found))
                recall[q.kind].append(score)
                if verbose and score < 1:
                    print(f"  miss {n_ctx} {q.kind} {q.doc}: {q.text} ({score:.2f})")
            row = {kind: statistics.mean(recall[kind]) for kind in KINDS}
            row["answerable"] = statistics.mean(
                s for kind in ("keyword", "paraphrased") for s in recall[kind]
            )
            row["turn_ms"] = 1000 * statistics.median(times)
            results[n_ctx] = row
        confidence = {
            q: bm25_confidence(index, q.text, ids[q.doc]) for q in questions if q.kind != "aggregate"
        }
        auc = separation(
            [c for q, c in confidence.items() if q.gold], [c for q, c in confidence.items() if not q.gold]
        )
    counts = defaultdict(int)
    for q in questions:
        counts[q.kind] += 1
    print(
        f"\n{len(questions)} questions: "
        + ", ".join(f"{counts[k]} {k}" for k in (*KINDS, "absent"))
        + "\nRecall of the gold passage in the prompt (BM25):\n"
    )
    print("| context | keyword | paraphrased | aggregate (items) | keyword + paraphrased | turn (median) |")
    print("|---|---|---|---|---|---|")
    for n_ctx, row in results.items():
        print(
            f"| {n_ctx // 1024}k | {row['keyword']:.0%} | {row['paraphrased']:.0%} | "
            f"{row['aggregate']:.0%} | {row['answerable']:.0%} | {row['turn_ms']:.0f} ms |"
        )
    print(f"\nAbsent vs answerable, separation of the best BM25 score (AUC): {auc:.2f}")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--contexts", type=int, nargs="+", default=[8192, 32768])
    parser.add_argument("--verbose", action="store_true", help="print every question not fully found")
    args = parser.parse_args()
    run(args.contexts, args.verbose)


if __name__ == "__main__":
    main()
