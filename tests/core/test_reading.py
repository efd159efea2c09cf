"""Reading a whole document in parts: which questions need it, the parts, the prompts, the plan."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from app.core.chunking import Chunk
from app.core.reading import (
    Note,
    Part,
    Speeds,
    combine_groups,
    combine_messages,
    estimate_reading,
    extract_messages,
    format_duration,
    is_aggregate_question,
    is_none,
    notes_of,
    part_budget,
    partial_answer,
    plan_parts,
    question_key,
)
from app.core.retrieval import DocumentChunks
from app.core.store import Store

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from app.core.types import ChatMessage


def words(text: str) -> int:
    """A stand-in tokenizer: a word is a token (the worker tests use the real one)."""
    return len(text.split())


def chat_words(messages: Sequence[ChatMessage]) -> int:
    return sum(4 + words(m.content) for m in messages) + 3


AGGREGATE = [
    "List all the deadlines in this contract.",
    "list every fee the tenant pays",
    "Can you list each invoice with its amount?",
    "How many invoices were paid late?",
    "Find all mentions of the warranty.",
    "Give me all the dates.",
    "What are all the obligations of the landlord?",
    "Name every person who signed.",
    "Summarise the whole document.",
    "summarize the entire report please",
    "Give an overview of the whole manual",
    "Which penalties apply to every late payment?",
    "Summarize this document",
]
ORDINARY = [
    "What is the deadline for payment?",
    "Who signed the contract?",
    "Is it all right to sublet the flat?",
    "Does the warranty cover water damage at all?",
    "What happens every day at noon?",
    "Summarise section 3.",
    "When was the report published?",
    "Explain clause 4.2 in plain words.",
    "What does the manual say about the power supply?",
    "After all that, is the deposit refundable?",
]


@pytest.mark.parametrize("question", AGGREGATE)
def test_questions_that_ask_for_everything_are_aggregate(question: str) -> None:
    assert is_aggregate_question(question)


@pytest.mark.parametrize("question", ORDINARY)
def test_ordinary_questions_are_not_aggregate(question: str) -> None:
    assert not is_aggregate_question(question)


def test_question_key_ignores_case_and_spacing() -> None:
    assert question_key("  List ALL\n the fees ") == question_key("list all the fees")


def document(doc_id: int, n: int, *, long_every: int = 0) -> DocumentChunks:
    chunks = []
    for i in range(n):
        text = f"Item {i} is on page {i // 3 + 1}. It costs {i} crowns."
        if long_every and i % long_every == 0:
            text = " ".join(f"Sentence {k} of the long clause {i}." for k in range(40))
        chunks.append(Chunk(i, f"p. {i // 3 + 1}", i // 3 + 1, text, words(text)))
    return DocumentChunks(doc_id, f"doc{doc_id}.pdf", tuple(chunks))


@pytest.mark.parametrize("budget", [40, 60, 100, 333, 5000])
@pytest.mark.parametrize("long_every", [0, 7])
def test_parts_cover_every_chunk_exactly_once_within_the_budget(budget: int, long_every: int) -> None:
    docs = [document(1, 50, long_every=long_every), document(2, 9)]
    parts = plan_parts(docs, budget, words)
    assert all(p.tokens <= budget for p in parts)
    assert all(p.tokens == words(p.text) for p in parts)
    covered: list[tuple[int, int]] = []
    for p in parts:
        if p.piece <= 1:  # the pieces of one chunk count once
            covered += [(p.doc_id, i) for i in range(p.first, p.last + 1)]
    expected = [(d.doc_id, c.index) for d in docs for c in d.chunks]
    assert covered == expected  # each chunk once, in document order, never across documents
    for d in docs:
        text = " ".join(p.text for p in parts if p.doc_id == d.doc_id)
        for c in d.chunks:  # no text lost: every word of every chunk is in its parts
            assert all(w in text for w in c.text.split())
    keys = [(p.doc_id, p.key) for p in parts]
    assert len(set(keys)) == len(keys)


def test_a_chunk_longer_than_a_part_is_cut_at_sentence_ends() -> None:
    docs = [document(1, 1, long_every=1)]
    parts = plan_parts(docs, 60, words)
    assert len(parts) > 1
    assert [p.piece for p in parts] == list(range(1, len(parts) + 1))
    for p in parts:
        assert p.text.startswith("[p. 1]\n")
        assert p.text.rstrip().endswith(".")  # whole sentences


def test_part_budget_leaves_room_for_the_prompt_and_the_extract_and_keeps_the_limit() -> None:
    budget = part_budget(4096, "List all the fees.", chat_words)
    part = plan_parts([document(1, 2000)], budget, words)[0]
    prompt = extract_messages("List all the fees.", part, 1, 9)
    assert chat_words(prompt) + 512 <= 4096
    assert part_budget(32768, "q", chat_words, limit=8000) == 8000


def test_extract_prompt_names_the_question_the_anchors_and_none() -> None:
    part = plan_parts([document(1, 6)], 500, words)[0]
    text = extract_messages("List all the fees.", part, 2, 5)[-1].content
    assert "[p. 1]" in text
    assert 'part="2 of 5"' in text
    assert "extract everything relevant to: List all the fees." in text
    assert "(p. 12)" in text
    assert "NONE" in text


def test_none_extracts_are_left_out_of_the_notes() -> None:
    part = Part(1, "a.pdf", 0, 3, 0, "", 0, (1, 2))
    assert is_none("NONE")
    assert is_none(" none. ")
    assert is_none("")
    assert not is_none("Fee of 3 crowns (p. 2)")
    notes = notes_of([(part, "NONE"), (part, "Fee of 3 crowns (p. 2)")])
    assert notes == [Note("a.pdf, pp. 1–2", "Fee of 3 crowns (p. 2)")]


def test_notes_that_fit_are_combined_in_one_pass() -> None:
    notes = [Note(f"d, p. {i}", f"fee {i} (p. {i})") for i in range(5)]

    def final(group: Sequence[Note]) -> list[ChatMessage]:
        return combine_messages("List all fees", group, ["d"])

    assert combine_groups(notes, 4096, chat_words, final) == [notes]


def test_notes_that_do_not_fit_are_merged_in_groups_in_order() -> None:
    notes = [Note(f"d, p. {i}", " ".join(["fee"] * 50) + f" (p. {i})") for i in range(20)]

    def final(group: Sequence[Note]) -> list[ChatMessage]:
        return combine_messages("List all fees", group, ["d"])

    groups = combine_groups(notes, 300, chat_words, final)
    assert len(groups) > 1
    assert [n for g in groups for n in g] == notes
    assert all(chat_words(final(g)) <= 300 for g in groups)
    assert all(len(g) >= 2 for g in groups[:-1])  # each pass shrinks the notes


def test_a_note_too_long_for_any_group_is_cut_to_fit() -> None:
    notes = [Note("d, p. 1", " ".join(["word"] * 1000))]

    def final(group: Sequence[Note]) -> list[ChatMessage]:
        return combine_messages("q", group, ["d"])

    groups = combine_groups(notes, 200, chat_words, final)
    assert len(groups) == 1
    assert chat_words(final(groups[0])) <= 200
    assert groups[0][0].text.endswith("…")


def test_partial_answer_says_it_is_partial_and_keeps_what_was_found() -> None:
    a = Part(1, "a.pdf", 0, 3, 0, "", 0, (1, 2))
    b = Part(1, "a.pdf", 4, 7, 0, "", 0, (3, 4))
    text = partial_answer([(a, "Fee of 3 crowns (p. 2)"), (b, "NONE")], 9)
    assert text.startswith("**Partial answer: stopped after reading 2 of 9 parts")
    assert "Fee of 3 crowns (p. 2)" in text
    assert "Nothing had been read yet" in partial_answer([], 9)


def test_the_estimate_uses_the_measured_speeds() -> None:
    unknown = estimate_reading(127_000, 30_000, None)
    assert unknown.parts == 5
    assert unknown.seconds is None
    slow = estimate_reading(127_000, 30_000, Speeds(prompt=100, generation=5))
    fast = estimate_reading(127_000, 30_000, Speeds(prompt=1000, generation=50))
    assert slow.seconds is not None
    assert fast.seconds is not None
    assert slow.seconds == pytest.approx(10 * fast.seconds)
    assert slow.seconds > 127_000 / 100  # at least every token of the document once
    half_saved = estimate_reading(127_000, 30_000, Speeds(100, 5), saved_parts=3)
    assert half_saved.seconds is not None
    assert half_saved.seconds < slow.seconds
    assert format_duration(530) == "about 9 minutes"
    assert format_duration(12) == "about 10 seconds"
    assert format_duration(7800) == "about 2 hours 10 minutes"


def test_the_store_keeps_extracts_per_document_question_and_part(tmp_path: Path) -> None:
    with Store(tmp_path / "db.sqlite3") as store:
        conversation = store.create_conversation()
        doc = store.add_attachment(conversation.id, "document", "a.pdf")
        other = store.add_attachment(conversation.id, "document", "b.pdf")
        key = question_key("List all fees")
        store.save_extract(doc.id, key, "0-9", "Fee (p. 1)", "tiny")
        store.save_extract(doc.id, key, "10-19", "NONE", "tiny")
        store.save_extract(doc.id, question_key("How many pages?"), "0-9", "nine", "tiny")
        store.save_extract(other.id, key, "0-9", "Other fee (p. 3)", "tiny")
        assert store.extracts([doc.id], key) == {(doc.id, "0-9"): "Fee (p. 1)", (doc.id, "10-19"): "NONE"}
        store.delete_attachment(doc.id)  # its extracts go with it
        assert store.extracts([doc.id, other.id], key) == {(other.id, "0-9"): "Other fee (p. 3)"}
