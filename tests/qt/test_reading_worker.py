"""Reading a whole document in parts through the real worker on the real tiny llama.cpp model."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import pytest

from app.core.chunking import Chunk
from app.core.engine import LlamaEngine
from app.core.reading import PartExtract, ReadingRequest, question_key
from app.core.retrieval import ChunkIndex
from app.core.store import Store
from app.core.turns import TurnRequest
from app.core.types import DocumentMode, FinishReason, LoadParams, SamplingParams
from app.workers.inference import LlamaWorker

if TYPE_CHECKING:
    import threading
    from collections.abc import Callable, Iterator, Sequence
    from pathlib import Path

    from app.core.types import ChatMessage, GenerationStats

QUESTION = "List all the fees in this ledger."
SAMPLING = SamplingParams(temperature=0.0, max_tokens=24, seed=7)
N_CHUNKS = 60


class RecordingEngine(LlamaEngine):
    """The real engine, remembering each prompt it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.prompts: list[list[ChatMessage]] = []

    def stream_chat(
        self,
        messages: Sequence[ChatMessage],
        sampling: SamplingParams,
        cancel: threading.Event | None = None,
        on_prompt_progress: Callable[[int, int], None] | None = None,
    ) -> Iterator[str]:
        self.prompts.append(list(messages))
        return super().stream_chat(messages, sampling, cancel, on_prompt_progress)


def chunk_text(i: int) -> str:
    return f"Entry {i}: the fee for delivery number {i} was {i * 3} crowns, paid on day {i + 1}."


@pytest.fixture
def library(tmp_path: Path) -> Iterator[tuple[Store, int]]:
    """A store with one document of 60 chunks on 20 pages (its attachment id is returned)."""
    with Store(tmp_path / "chat.sqlite3") as store:
        conversation = store.create_conversation()
        doc = store.add_attachment(conversation.id, "document", "ledger.pdf", meta={"state": "ready"})
        chunks = [Chunk(i, f"p. {i // 3 + 1}", i // 3 + 1, chunk_text(i), 20) for i in range(N_CHUNKS)]
        store.finish_document(doc.id, chunks, {"state": "ready"})
        yield store, doc.id


@pytest.fixture
def reader(
    qtbot, tiny_model: Path, library: tuple[Store, int]
) -> Iterator[tuple[LlamaWorker, RecordingEngine]]:
    store, _doc = library
    engine = RecordingEngine()
    worker = LlamaWorker(lambda: engine, documents=lambda: ChunkIndex.open(store.path))
    with qtbot.waitSignal(worker.model_loaded, timeout=60_000):
        worker.load_model(LoadParams(tiny_model, n_ctx=2048, n_threads=1, n_threads_batch=1))
    yield worker, engine
    worker.close()
    engine.unload()


def request(doc_id: int, saved: dict[tuple[int, str], str] | None = None) -> ReadingRequest:
    turn = TurnRequest.for_question(QUESTION, max_tokens=64)
    return ReadingRequest(turn, QUESTION, ((doc_id, "ledger.pdf"),), saved=saved or {})


class Recorder:
    """What the worker emitted for one reading."""

    def __init__(self, worker: LlamaWorker) -> None:
        self.progress: list[tuple[int, int]] = []
        self.extracts: list[PartExtract] = []
        self.text: list[str] = []
        self.turns: list[object] = []
        self.finished: list[GenerationStats] = []
        self.failed: list[str] = []
        worker.reading_progress.connect(lambda _g, done, total: self.progress.append((done, total)))
        worker.extract_read.connect(lambda _g, extract: self.extracts.append(extract))
        worker.tokens_generated.connect(lambda _g, text: self.text.append(text))
        worker.turn_built.connect(lambda _g, turn: self.turns.append(turn))
        worker.generation_finished.connect(lambda _g, stats: self.finished.append(stats))
        worker.generation_failed.connect(lambda _g, message, _d: self.failed.append(message))


def covered(keys: Sequence[str]) -> list[int]:
    out: list[int] = []
    for key in keys:
        first, last = (int(n) for n in re.match(r"(\d+)-(\d+)", key).groups())  # type: ignore[union-attr]
        out += range(first, last + 1)
    return out


def test_the_document_is_read_in_parts_that_cover_every_chunk_once(
    reader: tuple[LlamaWorker, RecordingEngine], library: tuple[Store, int]
) -> None:
    worker, engine = reader
    _store, doc_id = library
    seen = Recorder(worker)
    worker.read_whole(1, request(doc_id), SAMPLING)

    assert not seen.failed
    total = seen.progress[0][1]
    assert total > 2  # the document does not fit one part of a 2,048-token context
    assert seen.progress == [(n, total) for n in range(total + 1)]
    assert len(seen.extracts) == total
    assert sorted(covered([e.part_key for e in seen.extracts])) == list(range(N_CHUNKS))
    extract_prompts = [p for p in engine.prompts if "extract everything relevant to" in p[-1].content]
    assert len(extract_prompts) == total
    for i in range(N_CHUNKS):  # each chunk went to the model in exactly one part
        assert sum(chunk_text(i) in p[-1].content for p in extract_prompts) == 1
    assert all(len(p[-1].content) < 4 * 2048 for p in extract_prompts)
    assert all(e.question == question_key(QUESTION) for e in seen.extracts)
    (turn,) = seen.turns
    assert turn.documents.mode is DocumentMode.WHOLE
    assert turn.documents.reason.startswith(f"read whole in {total} parts")
    assert engine.prompts[-1] == list(turn.messages)  # the answer was combined from the notes
    assert turn.prompt_tokens + turn.reserve <= 2048
    assert seen.finished[-1].finish_reason != FinishReason.CANCELLED
    assert "".join(seen.text).strip()


def test_stopping_mid_way_keeps_the_parts_read_and_shows_a_partial_answer(
    reader: tuple[LlamaWorker, RecordingEngine], library: tuple[Store, int]
) -> None:
    worker, engine = reader
    _store, doc_id = library
    seen = Recorder(worker)

    def stop_after_two(_gen: int, _extract: object) -> None:
        if len(seen.extracts) == 2:
            worker.cancel_event.set()

    worker.extract_read.connect(stop_after_two)
    worker.read_whole(2, request(doc_id), SAMPLING)

    total = seen.progress[0][1]
    assert len(seen.extracts) == 2  # the parts read before Stop are kept (and saved)
    assert seen.progress == [(0, total), (1, total), (2, total)]
    assert not seen.turns  # no combined answer was started
    assert seen.finished[-1].finish_reason == FinishReason.CANCELLED
    text = "".join(seen.text)
    assert text.startswith(f"**Partial answer: stopped after reading 2 of {total} parts")
    assert len([p for p in engine.prompts if "extract everything" in p[-1].content]) == 2


def test_saved_extracts_are_reused_and_only_the_missing_parts_are_read(
    reader: tuple[LlamaWorker, RecordingEngine], library: tuple[Store, int]
) -> None:
    worker, engine = reader
    store, doc_id = library
    first = Recorder(worker)
    worker.read_whole(3, request(doc_id), SAMPLING)
    for e in first.extracts[:-1]:  # the last part was not saved (say the app was closed)
        store.save_extract(e.doc_id, e.question, e.part_key, e.text)
    engine.prompts.clear()

    again = Recorder(worker)
    saved = store.extracts([doc_id], question_key("  list ALL the fees in this ledger. "))
    worker.cancel_event.clear()
    worker.read_whole(4, request(doc_id, saved), SAMPLING)

    total = again.progress[0][1]
    assert again.progress == [(n, total) for n in range(total + 1)]
    assert [e.part_key for e in again.extracts] == [first.extracts[-1].part_key]
    assert len([p for p in engine.prompts if "extract everything" in p[-1].content]) == 1
    assert again.turns
    assert again.finished[-1].finish_reason != FinishReason.CANCELLED
