"""The inference worker's document source on a search model: one source while the search model
stays, so the documents' vectors are read from SQLite once, not on every turn."""

from __future__ import annotations

from typing import TYPE_CHECKING

from app.core.bert_gguf import write_tiny_bert
from app.core.chunking import Chunk
from app.core.engine.embedder import Embedder
from app.core.retrieval import ChunkIndex
from app.core.store import Store
from app.core.turns import TurnRequest
from app.core.types import DocumentMode, LoadParams, SamplingParams
from app.workers.inference import LlamaWorker
from tests.fakes import FakeEngine

if TYPE_CHECKING:
    from pathlib import Path

    from app.core.retrieval import PieceVectors

MODEL = "tiny-bert"


class CountingIndex(ChunkIndex):
    """A real index that counts how often a document's vectors are read from SQLite."""

    reads = 0

    def piece_vectors(self, doc_id: int, model: str) -> PieceVectors:
        CountingIndex.reads += 1
        return super().piece_vectors(doc_id, model)


def test_vectors_are_read_once_across_turns_and_again_when_the_search_model_changes(
    qtbot, tmp_path: Path
) -> None:
    embedder = Embedder(write_tiny_bert(tmp_path / "tiny-bert.gguf"), n_threads=1)
    with Store(tmp_path / "chat.sqlite3") as store:
        conversation = store.create_conversation()
        doc = store.add_attachment(conversation.id, "document", "ledger.md", meta={"state": "ready"})
        text = "Crate {i} of herring was weighed on the quay and found to hold {i} barrels of salt."
        chunks = [Chunk(i, f"p. {i + 1}", i + 1, text.format(i=i), 24) for i in range(80)]
        store.finish_document(doc.id, chunks, {"state": "ready"})
        index = store.chunk_index()
        todo = index.unembedded(doc.id, MODEL)
        vectors = embedder.embed([t for _id, t in todo])
        index.add_vectors(MODEL, [(piece, v) for (piece, _t), v in zip(todo, vectors, strict=True)])

        def embed_query(question: str) -> object:
            return embedder.embed([question])[0]

        model = [MODEL]
        CountingIndex.reads = 0
        worker = LlamaWorker(
            lambda: FakeEngine(["ok"], n_ctx=512),
            documents=lambda: CountingIndex.open(store.path),
            search_model=lambda: (embed_query, model[0]),  # type: ignore[arg-type,return-value]
        )
        with qtbot.waitSignal(worker.model_loaded):
            worker.load_model(LoadParams(tmp_path / "fake.gguf", n_ctx=512))
        turns: list[object] = []
        worker.turn_built.connect(lambda _g, turn: turns.append(turn))
        sampling = SamplingParams(max_tokens=16)
        attached = store.get_attachment(doc.id)
        assert attached is not None
        for n, question in enumerate(("How heavy was crate 7?", "Which crate held salt?", "Crate 9?")):
            request = TurnRequest.for_question(question, max_tokens=16, attachments=(attached,))
            with qtbot.waitSignal(worker.generation_finished):
                worker.answer(n, request, sampling)
        assert all(turn.documents.mode == DocumentMode.RETRIEVAL for turn in turns)  # type: ignore[attr-defined]
        assert CountingIndex.reads == 1
        model[0] = "another-model"  # the search model changed: its vectors (none yet) are looked up anew
        index.add_vectors("another-model", [(piece, v) for (piece, _t), v in zip(todo, vectors, strict=True)])
        with qtbot.waitSignal(worker.generation_finished):
            worker.answer(
                9, TurnRequest.for_question("Crate 3?", max_tokens=16, attachments=(attached,)), sampling
            )
        assert CountingIndex.reads == 2
        worker.close()
    embedder.close()
