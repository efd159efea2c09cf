"""The turn builder: one decision for the prompt, the document chip and the context meter."""

from __future__ import annotations

import contextlib
import sqlite3
from typing import TYPE_CHECKING

import pytest

from app.core.chunking import Chunk
from app.core.context import MessageTooLongError
from app.core.retrieval import ChunkIndex
from app.core.store import Attachment, StoredMessage
from app.core.turns import (
    DRAFT_ID,
    QUESTION_ALLOWANCE,
    DocumentMode,
    ModelLimits,
    TurnRequest,
    build_turn,
)

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from app.core.types import ChatMessage

NEEDLE = "The vault combination is 31-17-42."


def words(text: str) -> int:
    return len(text.split())


def chat_tokens(messages: Sequence[ChatMessage]) -> int:
    """A deterministic stand-in tokenizer: a word is a token, each message costs 4 more."""
    return sum(4 + words(m.content) + 100 * len(m.images) for m in messages) + 3


def limits(n_ctx: int, *, vision: bool = True, scale: int = 1) -> ModelLimits:
    """``scale`` > 1 is another model whose tokenizer makes more tokens of the same text."""
    return ModelLimits(
        n_ctx,
        vision,
        lambda ms: scale * chat_tokens(ms),
        lambda text: scale * words(text),
    )


@pytest.fixture
def index() -> Iterator[ChunkIndex]:
    with contextlib.closing(sqlite3.connect(":memory:")) as db:
        yield ChunkIndex(db)


def document(index: ChunkIndex, doc_id: int, paragraphs: int, message_id: int | None = None) -> Attachment:
    chunks = []
    for i in range(paragraphs):
        text = NEEDLE if i == paragraphs // 2 else f"Paragraph {i} talks about item {i} of the budget."
        chunks.append(Chunk(i, f"p. {i + 1}", i + 1, text, words(text)))
    index.add_document(doc_id, chunks)
    meta = {"state": "ready", "tokens": sum(c.tokens for c in chunks)}
    return Attachment(doc_id, 1, message_id, "document", f"doc{doc_id}.txt", "", "", meta, 0.0)


def message(mid: int, role: str, text: str) -> StoredMessage:
    return StoredMessage(mid, 1, role, text, float(mid), "", {}, {}, "complete")


def history(turns: int) -> list[StoredMessage]:
    out: list[StoredMessage] = []
    for i in range(turns):
        out.append(message(2 * i + 1, "user", f"question {i} " * 5))
        out.append(message(2 * i + 2, "assistant", f"answer {i} " * 8))
    return out


def no_images(_attachment: Attachment) -> str | None:
    raise AssertionError("no image should be read")


def test_plain_conversation_passes_through_with_the_system_prompt(index) -> None:
    request = TurnRequest((*history(2), message(9, "user", "and now?")), {}, "Be brief.", 64)
    turn = build_turn(request, limits(4096), index, no_images)
    assert [m.role for m in turn.messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert turn.messages[0].content == "Be brief."
    assert turn.dropped == 0
    assert turn.documents is None
    assert turn.prompt_tokens == chat_tokens(turn.messages)


def test_answers_being_written_or_empty_are_left_out(index) -> None:
    rows = (
        message(1, "user", "hi"),
        StoredMessage(2, 1, "assistant", "half an ans", 2.0, "", {}, {}, "streaming"),
        message(3, "assistant", "   "),
        message(4, "notice", "earlier messages were left out"),
        message(5, "user", "again"),
    )
    turn = build_turn(TurnRequest(rows, {}, "", 64), limits(4096), index, no_images)
    assert [m.content for m in turn.messages] == ["hi", "again"]


def test_long_history_is_dropped_oldest_first_and_counted(index) -> None:
    rows = (*history(40), message(99, "user", "last question"))
    turn = build_turn(TurnRequest(rows, {}, "", 50), limits(400), index, no_images)
    assert turn.dropped > 0
    assert turn.messages[-1].content == "last question"
    assert turn.messages[0].content == rows[0].content  # the first message is kept
    assert turn.prompt_tokens <= 400 - turn.reserve


def test_a_question_too_long_for_the_window_raises(index) -> None:
    rows = (message(1, "user", "word " * 1000),)
    with pytest.raises(MessageTooLongError):
        build_turn(TurnRequest(rows, {}, "", 64), limits(512), index, no_images)


def test_small_document_goes_whole_into_its_message_and_stays_there(index) -> None:
    doc = document(index, 7, 10, message_id=1)
    rows = (message(1, "user", "read this"), message(2, "assistant", "done"), message(3, "user", "the code?"))
    turn = build_turn(TurnRequest(rows, {1: (doc,)}, "", 64), limits(4096), index, no_images)
    assert turn.documents is not None
    assert turn.documents.mode is DocumentMode.WHOLE
    assert turn.documents.host_message_id == 1  # a stable place: later turns reuse the KV cache
    assert NEEDLE in turn.messages[0].content
    assert NEEDLE not in turn.messages[-1].content
    assert turn.documents.sources
    assert turn.documents.reason == f"read whole: {turn.documents.tokens:,} tokens"


def test_long_document_is_searched_with_the_question(index) -> None:
    doc = document(index, 7, 400, message_id=1)
    rows = (message(1, "user", "What is the vault combination?"),)
    turn = build_turn(TurnRequest(rows, {1: (doc,)}, "", 64), limits(1024), index, no_images)
    assert turn.documents is not None
    assert turn.documents.mode is DocumentMode.RETRIEVAL
    assert NEEDLE in turn.messages[-1].content
    assert turn.prompt_tokens <= 1024 - turn.reserve
    assert turn.documents.reason == "passages: does not fit the 1,024-token context"


def test_a_document_over_the_whole_document_limit_goes_by_passages_and_says_why(index) -> None:
    doc = document(index, 7, 60, message_id=1)
    total = int(doc.meta["tokens"])
    rows = (message(1, "user", "What is the vault combination?"),)
    no_limit = build_turn(TurnRequest(rows, {1: (doc,)}, "", 64), limits(8192), index, no_images)
    assert no_limit.documents is not None
    assert no_limit.documents.mode is DocumentMode.WHOLE
    for limit in (total // 2, 100):
        limited = TurnRequest(rows, {1: (doc,)}, "", 64, whole_limit=limit)
        turn = build_turn(limited, limits(8192), index, no_images)
        assert turn.documents is not None
        assert turn.documents.mode is DocumentMode.RETRIEVAL
        assert turn.documents.reason == (
            f"passages: {total:,} tokens is over the {limit:,} you read whole (Settings)"
        )
        assert NEEDLE in turn.messages[-1].content
    roomy = TurnRequest(rows, {1: (doc,)}, "", 64, whole_limit=total * 2)
    turn = build_turn(roomy, limits(8192), index, no_images)
    assert turn.documents is not None
    assert turn.documents.mode is DocumentMode.WHOLE


def test_images_are_not_sent_to_a_model_without_vision(index) -> None:
    picture = Attachment(5, 1, 1, "image", "cat.png", "/nowhere/cat.png", "", {"state": "ready"}, 0.0)
    rows = (message(1, "user", "what is this?"),)
    request = TurnRequest(rows, {1: (picture,)}, "", 64)
    text_only = build_turn(request, limits(4096, vision=False), index, no_images)
    assert text_only.images_left_out == 1
    assert text_only.messages[-1].images == ()
    seeing = build_turn(request, limits(4096), index, lambda _a: "data:image/png;base64,AAAA")
    assert seeing.messages[-1].images == ("data:image/png;base64,AAAA",)
    assert seeing.prompt_tokens > text_only.prompt_tokens  # the meter counts what is really sent


def test_preview_counts_the_composer_attachments_as_the_next_question(index) -> None:
    doc = document(index, 7, 10)
    rows = tuple(history(1))
    preview = build_turn(
        TurnRequest(rows, {}, "", 64, draft="", pending=(doc,)), limits(4096), index, no_images
    )
    assert preview.documents is not None
    assert preview.documents.host_message_id == DRAFT_ID
    assert preview.documents.doc_ids == (7,)
    unready = Attachment(8, 1, None, "document", "x", "", "", {"state": "processing"}, 0.0)
    empty = build_turn(
        TurnRequest(rows, {}, "", 64, draft="", pending=(unready,)), limits(4096), index, no_images
    )
    assert empty.documents is None


@pytest.mark.parametrize("n_ctx", [512, 1024, 2048, 4096, 8192])
@pytest.mark.parametrize("turns", [0, 3, 12])
@pytest.mark.parametrize("paragraphs", [5, 40, 120, 400])
@pytest.mark.parametrize("scale", [1, 2])
def test_chip_and_prompt_agree(index, n_ctx: int, turns: int, paragraphs: int, scale: int) -> None:
    """The chip shows the preview's decision (an empty draft with the document in the composer); the
    prompt uses the send's. They agree across budgets, history lengths, document sizes and model
    swaps (another tokenizer), for any question up to the allowance."""
    doc = document(index, 7, paragraphs)
    rows = tuple(history(turns))
    model = limits(n_ctx, scale=scale)
    try:
        preview = build_turn(
            TurnRequest(rows, {}, "", 128, draft="", pending=(doc,)), model, index, no_images
        )
    except MessageTooLongError:
        pytest.skip("the history alone does not fit this window")
    for question in ("Code?", "What is the vault combination written in this document, exactly? " * 3):
        assert scale * words(question) <= QUESTION_ALLOWANCE
        sent = (*rows, message(1000, "user", question))
        sent_doc = Attachment(7, 1, 1000, "document", doc.name, "", "", doc.meta, 0.0)
        turn = build_turn(TurnRequest(sent, {1000: (sent_doc,)}, "", 128), model, index, no_images)
        assert preview.documents is not None
        assert turn.documents is not None
        assert turn.documents.mode is preview.documents.mode, (n_ctx, turns, paragraphs, question)
        assert turn.prompt_tokens <= n_ctx - turn.reserve


def test_no_advice_to_raise_a_context_that_is_already_the_models_largest(index) -> None:
    rows = (message(1, "user", "word " * 2000),)
    capped = ModelLimits(1024, True, chat_tokens, words, n_ctx_max=1024)
    with pytest.raises(MessageTooLongError) as at_max:
        build_turn(TurnRequest(rows, {}, "", 64), capped, index, no_images)
    assert "raise the context" not in str(at_max.value)
    assert "largest this model allows" in str(at_max.value)
    with pytest.raises(MessageTooLongError) as can_grow:
        build_turn(TurnRequest(rows, {}, "", 64), limits(1024), index, no_images)
    assert "raise the context size in Settings" in str(can_grow.value)


def test_a_4k_model_answers_questions_about_a_long_pdf_in_real_tokens(index, qapp, tmp_path) -> None:
    """Tried as a new user would: a model trained for 4,096 tokens, a 120-page PDF. Every question
    that fits gets passages counted with the model's own tokenizer and fitted to the budget."""
    from app.core.chunking import chunk_document
    from app.core.documents.reader import extract
    from app.core.engine import LlamaEngine
    from app.core.tiny_model import TinyModelSpec, write_tiny_model
    from app.core.types import LoadParams
    from tests.core.test_documents import write_pdf

    model_path = write_tiny_model(tmp_path / "tiny-4k.gguf", TinyModelSpec(context_length=4096))[0]
    pages = [
        [f"Page {n}: the depot received {n * 7} crates of timber and paid invoice {n} on time."] * 6
        for n in range(1, 121)
    ]
    pages[87].append(NEEDLE)
    pdf = write_pdf(tmp_path / "ledger.pdf", pages)
    engine = LlamaEngine()
    info = engine.load(LoadParams(model_path, n_ctx=4096, n_threads=1, n_threads_batch=1))
    try:
        assert info.n_ctx == info.n_ctx_train == 4096
        chunks = chunk_document(extract(pdf))  # chunk sizes estimated, as ingest does (no tokenizer)
        index.add_document(9, chunks)
        real_total = sum(engine.count_tokens(c.text) for c in chunks)
        assert real_total > 8 * 4096  # far too long to go whole
        doc = Attachment(9, 1, 1, "document", "ledger.pdf", "", "", {"state": "ready"}, 0.0)
        model = ModelLimits(4096, False, engine.count_chat_tokens, engine.count_tokens, info.n_ctx_train)
        for question in ("What is the vault combination?", "hello", "Which invoice was paid on page 88?"):
            turn = build_turn(TurnRequest.for_question(question, attachments=(doc,)), model, index, no_images)
            assert turn.documents is not None
            assert turn.documents.mode is DocumentMode.RETRIEVAL
            assert turn.documents.reason == "passages: does not fit the 4,096-token context"
            assert turn.documents.sources  # some of the document is sent with every question
            assert engine.count_chat_tokens(turn.messages) == turn.prompt_tokens
            assert turn.prompt_tokens + turn.reserve <= 4096
        vault = build_turn(
            TurnRequest.for_question("What is the vault combination?", attachments=(doc,)),
            model,
            index,
            no_images,
        )
        assert NEEDLE in vault.messages[-1].content
        with pytest.raises(MessageTooLongError) as too_long:  # only a question that cannot fit fails
            build_turn(
                TurnRequest.for_question("timber " * 3000, attachments=(doc,)), model, index, no_images
            )
        assert "raise the context" not in str(too_long.value)
    finally:
        engine.unload()
