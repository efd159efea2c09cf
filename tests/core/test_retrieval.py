"""Chunking, FTS5 retrieval, composing the document part of a prompt, and citations in answers."""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

import pytest

from app.core.chunking import Chunk, chunk_document, estimate_tokens
from app.core.documents import Document, Section, extract
from app.core.retrieval import (
    ChunkIndex,
    DocumentChunks,
    PageCitation,
    compose_document_context,
    find_citations,
    fts_query,
)
from tests.core.test_documents import LONG_PAGES, NEEDLE, NEEDLE_PAGE, long_pdf_pages, write_pdf

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from pytest_qt.qtbot import QApplication  # type: ignore[attr-defined]

QUESTION = "Where does the harbour master keep the spare lighthouse key?"


@pytest.fixture(scope="session")
def ledger(qapp: QApplication, tmp_path_factory: pytest.TempPathFactory) -> Document:
    """The 500-page PDF with the needle on page 347, extracted."""
    return extract(write_pdf(tmp_path_factory.mktemp("ledger") / "ledger.pdf", long_pdf_pages()))


@pytest.fixture(scope="session")
def ledger_chunks(ledger: Document) -> tuple[Chunk, ...]:
    return tuple(chunk_document(ledger))


@pytest.fixture
def db() -> Iterator[sqlite3.Connection]:
    connection = sqlite3.connect(":memory:")
    yield connection
    connection.close()


def _doc(*sections: Section, kind: str = "text") -> Document:
    return Document("t", kind, None, sections, sum(len(s.text) for s in sections))  # type: ignore[arg-type]


# --- chunking -------------------------------------------------------------------------------------


def test_estimate_tokens_is_about_four_characters_per_token() -> None:
    assert estimate_tokens("") == 0
    assert estimate_tokens("abcd" * 100) == 100
    assert estimate_tokens("abc") == 1
    assert estimate_tokens("日本語の文章") == 5  # non-ASCII counts 3/4 of a token per character


def test_pdf_chunks_stay_within_their_page_in_document_order(
    ledger: Document, ledger_chunks: tuple[Chunk, ...]
) -> None:
    assert [c.index for c in ledger_chunks] == list(range(len(ledger_chunks)))
    assert [c.page for c in ledger_chunks] == list(range(1, LONG_PAGES + 1))  # one short page, one chunk
    assert all(c.anchor == f"p. {c.page}" for c in ledger_chunks)
    assert all(c.text == ledger.sections[c.page - 1].text for c in ledger_chunks if c.page)  # type: ignore[operator]
    assert NEEDLE in ledger_chunks[NEEDLE_PAGE - 1].text


def test_long_sections_split_at_paragraphs_within_the_limit() -> None:
    paragraphs = [
        f"Paragraph {n}. " + "Tides rise and fall twice a day. " * 11 + "Tides turn." for n in range(30)
    ]
    page_one = Section("p. 1", 1, None, None, "\n\n".join(paragraphs))
    page_two = Section("p. 2", 2, None, None, "Short second page.")

    chunks = chunk_document(_doc(page_one, page_two, kind="pdf"), max_tokens=400)

    assert [c.page for c in chunks] == [1] * (len(chunks) - 1) + [2]
    assert chunks[-1].text == "Short second page."
    body = chunks[:-1]
    assert len(body) > 4
    assert all(c.tokens <= 400 for c in chunks)
    assert all(c.tokens >= 250 for c in body[:-1])  # packed, not one paragraph each
    assert all(c.text.startswith("Paragraph ") for c in body)  # never cut inside a paragraph
    assert all(c.tokens == estimate_tokens(c.text) for c in chunks)
    rebuilt = "\n\n".join(c.text for c in body)
    assert rebuilt == page_one.text.strip()


def test_an_unbroken_run_is_cut_to_fit() -> None:
    blob = "QUJD" * 3000  # 12,000 characters, no spaces: a base64 attachment pasted in
    chunks = chunk_document(
        _doc(Section("§ Data", None, "Data", None, f"Intro sentence. {blob}")), max_tokens=500
    )

    assert all(c.tokens <= 500 for c in chunks)
    assert "".join(c.text for c in chunks[1:]) == blob
    assert all(c.anchor == "§ Data" for c in chunks)


def test_a_long_paragraph_splits_at_sentences() -> None:
    sentences = [f"Sentence number {n} says something about the sea." for n in range(200)]
    chunks = chunk_document(_doc(Section("§ A", None, "A", None, " ".join(sentences))), max_tokens=100)

    assert all(c.tokens <= 100 for c in chunks)
    assert all(c.text.startswith("Sentence number") and c.text.endswith("sea.") for c in chunks)


def test_code_chunks_narrow_the_line_range(tmp_path: Path) -> None:
    path = tmp_path / "wide.py"
    lines = [
        f"value_{n} = compute_something_rather_long({n}, 'a string that makes the line long enough')"
        for n in range(80)
    ]
    path.write_text("\n".join(lines) + "\n")

    chunks = chunk_document(extract(path), max_tokens=300)

    assert len(chunks) > 1
    first_line = 1
    for c in chunks:
        start, end = (int(x) for x in c.anchor.removeprefix("lines ").split("–"))
        assert start == first_line
        assert c.text.split("\n") == lines[start - 1 : end]
        first_line = end + 1
    assert first_line == 81


def test_table_chunks_repeat_the_header(tmp_path: Path) -> None:
    path = tmp_path / "stock.csv"
    path.write_text("sku,name,qty\n" + "".join(f"{n},Widget number {n},{n % 9}\n" for n in range(300)))

    chunks = chunk_document(extract(path), max_tokens=120)

    assert len(chunks) > 10
    for c in chunks:
        assert c.text.startswith("| sku | name | qty |\n|---|---|---|\n| ")
        assert c.tokens <= 120
    assert sum(c.text.count("| Widget number") for c in chunks) == 300


def test_a_real_tokenizer_can_be_injected() -> None:
    def words(text: str) -> int:
        return len(text.split())

    section = Section("§ W", None, "W", None, "\n\n".join("one two three four five" for _ in range(20)))
    chunks = chunk_document(_doc(section), max_tokens=22, count_tokens=words)

    assert [c.tokens for c in chunks] == [20] * 5


# --- FTS5 index -----------------------------------------------------------------------------------


def test_search_finds_the_needle_with_neighbours_in_document_order(
    db: sqlite3.Connection, ledger_chunks: tuple[Chunk, ...]
) -> None:
    index = ChunkIndex(db)
    index.add_document(7, ledger_chunks)

    found = index.search(QUESTION, [7], budget_tokens=1000)

    assert [c.page for c in found] == [NEEDLE_PAGE - 1, NEEDLE_PAGE, NEEDLE_PAGE + 1]
    assert NEEDLE in found[1].text
    assert found[1].score is not None
    assert found[0].score is None  # a neighbour
    assert {c.doc_id for c in found} == {7}


def test_search_respects_budget_doc_filter_and_replacement(db: sqlite3.Connection) -> None:
    index = ChunkIndex(db)
    chunks = [Chunk(i, f"p. {i + 1}", i + 1, f"Lighthouse report {i} with keepers.", 10) for i in range(20)]
    index.add_document(1, chunks)
    index.add_document(2, [Chunk(0, "§ Start", None, "A lighthouse in another document.", 10)])

    assert sum(c.tokens for c in index.search("lighthouse", [1], budget_tokens=35)) <= 35
    assert len(index.search("lighthouse", [1], budget_tokens=35)) == 3
    assert {c.doc_id for c in index.search("lighthouse", [2], budget_tokens=1000)} == {2}
    both = index.search("lighthouse", [2, 1], budget_tokens=10_000, neighbours=0)
    assert both[0].doc_id == 2  # document order follows doc_ids
    assert [c.index for c in both if c.doc_id == 1] == list(range(20))

    index.add_document(1, [Chunk(0, "p. 1", 1, "Replaced entirely.", 3)])
    assert index.search("lighthouse", [1], budget_tokens=100) == []
    assert [c.text for c in index.chunks(1)] == ["Replaced entirely."]

    index.delete_document(2)
    assert index.search("lighthouse another", [1, 2], budget_tokens=100) == []
    assert db.execute(
        "SELECT count(*) FROM doc_chunks_fts WHERE doc_chunks_fts MATCH 'another'"
    ).fetchone() == (0,)


def test_index_survives_reopening_on_the_same_database(tmp_path: Path) -> None:
    path = tmp_path / "chunks.sqlite3"
    first = sqlite3.connect(path)
    ChunkIndex(first).add_document(3, [Chunk(0, "p. 1", 1, "Stored lighthouse keepers.", 5)])
    first.commit()
    first.close()

    second = sqlite3.connect(path)
    try:
        found = ChunkIndex(second).search("keepers", [3], budget_tokens=50)
    finally:
        second.close()
    assert [c.text for c in found] == ["Stored lighthouse keepers."]


@pytest.mark.parametrize(
    "question",
    [
        'what about "unbalanced quotes',
        'he said ""hello""',
        "NEAR(lighthouse key, 3)",
        "lighthouse NEAR key",
        "light*",
        "*",
        "-lighthouse",
        "lighthouse AND NOT key OR",
        "((key)",
        ")",
        "^start",
        "text:key",
        "{text}: key",
        "'; DROP TABLE doc_chunks; --",
        "",
        "   \n\t",
        "what is it?",
        "🙂 ✓ ☃",
        "鍵はどこ",
        "a" * 5000,
    ],
)
def test_hostile_questions_never_break_the_match_syntax(
    db: sqlite3.Connection, ledger_chunks: tuple[Chunk, ...], question: str
) -> None:
    index = ChunkIndex(db)
    index.add_document(1, ledger_chunks[:20])

    found = index.search(question, [1], budget_tokens=500)

    assert isinstance(found, list)
    assert db.execute("SELECT count(*) FROM doc_chunks").fetchone() == (20,)


def test_fts_query_quotes_words_and_drops_stopwords() -> None:
    assert fts_query('What is the NEAR(key*) of -the "vault"?') == '"near key" OR "near" OR "key" OR "vault"'
    assert fts_query("Where is it?") == ""
    assert fts_query("page 347 and p 12") == '"347" OR "12"'


# --- composing the prompt -------------------------------------------------------------------------


def test_whole_mode_when_the_document_fits(ledger_chunks: tuple[Chunk, ...]) -> None:
    docs = [DocumentChunks(1, "ledger.pdf", ledger_chunks)]

    composed = compose_document_context(docs, QUESTION, budget_tokens=200_000)

    assert composed.mode == "whole"
    assert composed.tokens <= 200_000
    assert len(composed.used_chunks) == LONG_PAGES
    text = composed.text
    assert text.count("[p. ") == LONG_PAGES
    positions = [text.index(f"[p. {n}]\n") for n in range(1, LONG_PAGES + 1)]
    assert positions == sorted(positions)
    assert NEEDLE in text
    assert text.index(f"[p. {NEEDLE_PAGE}]\n") < text.index(NEEDLE) < text.index(f"[p. {NEEDLE_PAGE + 1}]\n")
    assert '<document name="ledger.pdf">' in text
    assert '"(p. 12)"' in text
    assert all(chunk.text in text for chunk in ledger_chunks)


def test_retrieval_mode_when_it_does_not_fit(ledger_chunks: tuple[Chunk, ...]) -> None:
    docs = [DocumentChunks(1, "ledger.pdf", ledger_chunks)]

    composed = compose_document_context(docs, QUESTION, budget_tokens=600)

    assert composed.mode == "retrieval"
    assert composed.tokens <= 600
    assert composed.tokens == estimate_tokens(composed.text)
    assert NEEDLE in composed.text
    assert f"[p. {NEEDLE_PAGE}]\n" in composed.text
    assert composed.text.index(f"[p. {NEEDLE_PAGE}]") < composed.text.index(NEEDLE)
    assert '"(p. 12)"' in composed.text
    pages = [c.page for c in composed.used_chunks]
    assert NEEDLE_PAGE in pages
    assert pages == sorted(pages)
    assert len(pages) < 20
    assert [p.page for p in composed.passages_for_page(NEEDLE_PAGE)] == [NEEDLE_PAGE]
    assert NEEDLE in composed.passages_for_page(NEEDLE_PAGE)[0].text


def test_retrieval_through_a_persistent_index_gives_the_same_passages(
    db: sqlite3.Connection, ledger_chunks: tuple[Chunk, ...]
) -> None:
    index = ChunkIndex(db)
    index.add_document(1, ledger_chunks)
    docs = [DocumentChunks(1, "ledger.pdf", ledger_chunks)]

    stored = compose_document_context(docs, QUESTION, budget_tokens=600, index=index)
    temporary = compose_document_context(docs, QUESTION, budget_tokens=600)

    assert stored.text == temporary.text


def test_retrieval_across_several_documents(ledger_chunks: tuple[Chunk, ...]) -> None:
    notes = (Chunk(0, "§ Keys", None, "The lighthouse key was copied in 1998 for the harbour master.", 15),)
    docs = [DocumentChunks(1, "ledger.pdf", ledger_chunks), DocumentChunks(2, "notes.md", notes)]

    composed = compose_document_context(docs, QUESTION, budget_tokens=700)

    assert composed.mode == "retrieval"
    assert NEEDLE in composed.text
    assert "[§ Keys]\nThe lighthouse key was copied" in composed.text
    assert composed.text.index('name="ledger.pdf"') < composed.text.index('name="notes.md"')
    assert {p.doc_name for p in composed.citations} == {"ledger.pdf", "notes.md"}


def test_a_question_with_no_searchable_words_gets_the_beginning(ledger_chunks: tuple[Chunk, ...]) -> None:
    composed = compose_document_context([DocumentChunks(1, "ledger.pdf", ledger_chunks)], "Why?", 300)

    assert composed.mode == "retrieval"
    assert composed.used_chunks
    assert composed.used_chunks[0].page == 1
    assert composed.tokens <= 300


def test_nothing_attached_composes_nothing() -> None:
    composed = compose_document_context([], QUESTION, 1000)

    assert (composed.text, composed.used_chunks, composed.citations) == ("", (), ())


# --- citations ------------------------------------------------------------------------------------


def test_find_citations_pages_and_ranges() -> None:
    answer = (
        "The key is under the blue anchor (p. 347). Deliveries are on pages 3–4 and pp. 10, 12 and 14; "
        "see Page 9 and p.2. Not citations: app. 5, step 3, 2 pages, map 7."
    )

    found = find_citations(answer)

    assert [c.page for c in found] == [347, 3, 4, 10, 12, 14, 9, 2]
    assert [answer[slice(*c.span)] for c in found] == [
        "p. 347",
        "pages 3",
        "4",
        "pp. 10",
        "12",
        "14",
        "Page 9",
        "p.2",
    ]
    assert all(isinstance(c, PageCitation) for c in found)


def test_find_citations_ignores_pages_out_of_range() -> None:
    assert [c.page for c in find_citations("(p. 0) (p. 12) (p. 999)", max_page=500)] == [12]


def test_an_answers_citation_leads_to_the_passage_sent(ledger_chunks: tuple[Chunk, ...]) -> None:
    composed = compose_document_context([DocumentChunks(1, "ledger.pdf", ledger_chunks)], QUESTION, 600)
    answer = "Under the blue anchor, according to the ledger (p. 347)."

    (citation,) = find_citations(answer, max_page=LONG_PAGES)
    passages = composed.passages_for_page(citation.page)

    assert citation.page == NEEDLE_PAGE
    assert len(passages) == 1
    assert NEEDLE in passages[0].text
    assert passages[0].anchor == f"p. {NEEDLE_PAGE}"
