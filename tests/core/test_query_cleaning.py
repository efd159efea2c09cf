"""The question as the retriever reads it: code-like tokens, meaning-bearing words, and passages
trimmed to the room left rather than skipped."""

from __future__ import annotations

import contextlib
import sqlite3
from typing import TYPE_CHECKING

import pytest

from app.core.chunking import Chunk, estimate_tokens
from app.core.retrieval import (
    ChunkIndex,
    DocumentChunks,
    code_tokens,
    compose_document_context,
    fts_query,
    trim_passage,
)

if TYPE_CHECKING:
    from collections.abc import Iterator


@pytest.fixture
def index() -> Iterator[ChunkIndex]:
    with contextlib.closing(sqlite3.connect(":memory:")) as db:
        yield ChunkIndex(db)


@pytest.mark.parametrize(
    ("question", "tokens"),
    [
        ("How do I use C++ templates?", ["C++"]),
        ("Where is $HOME set?", ["$HOME"]),
        ("what does -> mean in a signature", ["->"]),
        ("What does the --flag option do?", ["--flag"]),
        ("why does a.b() fail here.", ["a.b()"]),
        ("What is (x.y)?", ["x.y"]),
        ('is "os.path.join" slow', ["os.path.join"]),
        ("plain words only, nothing else!", []),
    ],
)
def test_code_like_tokens_are_kept_as_written(question: str, tokens: list[str]) -> None:
    assert code_tokens(question) == tokens


def test_code_tokens_search_their_parts_and_as_a_phrase() -> None:
    assert fts_query("How do I use C++ templates?") == '"c" OR "use" OR "templates"'
    assert fts_query("why does a.b() fail") == '"a b" OR "a" OR "b" OR "fail"'
    assert fts_query("Where is $HOME set?") == '"home" OR "set"'


def test_words_that_change_the_question_are_not_stopwords() -> None:
    assert fts_query("Which fees are not due before the first month?") == (
        '"fees" OR "not" OR "due" OR "before" OR "first" OR "month"'
    )
    assert fts_query("list all the deadlines under the contract") == (
        '"list" OR "all" OR "deadlines" OR "under" OR "contract"'
    )


def _chunks(texts: list[str]) -> list[Chunk]:
    return [Chunk(i, f"p. {i + 1}", i + 1, t, estimate_tokens(t)) for i, t in enumerate(texts)]


def test_a_rare_code_token_ranks_its_chunk_first(index: ChunkIndex) -> None:
    filler = [f"Your home folder number {i} holds the home settings of the home user." for i in range(60)]
    filler[41] = "The installer reads $HOME once, at start-up."
    index.add_document(1, _chunks(filler))

    found = index.ranked("Where is $HOME read?", [1])

    assert found[0].index == 41
    assert index.search("Where is $HOME read?", [1], budget_tokens=20, neighbours=0)[0].index == 41


def test_symbol_only_tokens_are_found_literally(index: ChunkIndex) -> None:
    texts = [f"Section {i} describes ordinary functions and their return values." for i in range(60)]
    texts[17] = "An annotation like def f() -> int names the return type."
    index.add_document(1, _chunks(texts))

    assert index.ranked("what does -> mean", [1])[0].index == 17
    assert index.ranked("the -> arrow", [1])[0].index == 17


def test_a_common_code_token_does_not_reorder_the_ranking(index: ChunkIndex) -> None:
    texts = [f"Item {i}: see e.g. the table." for i in range(60)]
    texts[30] = "The lighthouse keeper, e.g. Ann, holds the key."
    index.add_document(1, _chunks(texts))

    assert index.ranked("who holds the lighthouse key, e.g. which keeper", [1])[0].index == 30


SENTENCES = (
    "The tenancy begins on the first of May. Rent is due monthly in advance. "
    "The tenant must vacate the premises within thirty days of notice. "
    "Pets are allowed with written consent. The deposit is two months of rent."
)


def test_trimming_keeps_whole_sentences_that_match_the_question() -> None:
    trimmed = trim_passage(SENTENCES, 20, "within how many days must the tenant vacate?")

    assert trimmed in SENTENCES
    assert estimate_tokens(trimmed) <= 20
    assert "vacate the premises within thirty days of notice." in trimmed
    assert trimmed.endswith(".")


def test_trimming_returns_the_text_when_it_fits_and_nothing_when_no_sentence_does() -> None:
    assert trim_passage(SENTENCES, 1000, "rent") == SENTENCES
    assert trim_passage(SENTENCES, 3, "rent") == ""


def test_search_trims_a_hit_too_long_for_the_room_left(index: ChunkIndex) -> None:
    index.add_document(1, _chunks([SENTENCES, "Unrelated text about gardens."]))

    found = index.search("when must the tenant vacate", [1], budget_tokens=60, neighbours=0)

    assert len(found) == 1
    assert found[0].tokens <= 60
    assert "vacate the premises" in found[0].text
    assert found[0].text in SENTENCES


def test_a_tokenizer_counting_more_than_the_estimate_still_gets_a_passage() -> None:
    """The chunks were sized with the estimate; the model's tokenizer makes three times as many
    tokens: the only passage is trimmed to its best sentences instead of being dropped."""
    docs = [DocumentChunks(1, "lease.txt", tuple(_chunks([SENTENCES] + ["Filler about gardens."] * 40)))]

    def heavy(text: str) -> int:
        return 3 * estimate_tokens(text)

    composed = compose_document_context(
        docs, "when must the tenant vacate", 500, count_tokens=heavy, neighbours=0
    )

    assert composed.mode == "retrieval"
    assert composed.tokens <= 500
    assert "vacate the premises within thirty days" in composed.text
