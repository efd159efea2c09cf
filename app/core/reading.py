"""Reading a whole document in parts (map-reduce), for questions that need all of it.

Retrieval sends the passages that best match a question; a question that asks for *everything* of a
kind ("list every deadline", "how many invoices…", "summarise the whole report") needs every part of
the document. When the document does not fit the context whole (or is over the whole-document limit),
the chat model reads it in parts that fit:

1. :func:`plan_parts` splits the documents into parts by the model's own token counts: every chunk
   goes into exactly one part, in document order; a chunk too long for a part is cut at sentence
   boundaries into pieces.
2. Each part is read with :func:`extract_messages` ("From this part of the document, extract
   everything relevant to: …; keep page anchors like (p. 12); say NONE if nothing").
3. :func:`combine_groups` says which extracts go together: one group is the final answer
   (:func:`combine_messages`); more than one means the extracts do not fit the context together, so
   each group is merged first (:func:`merge_messages`) and the merged notes are combined again.

Everything here is pure: token counting is passed in. The running lives in
``app.workers.inference.LlamaWorker.read_whole``; the extracts are saved per document, question and
part (``app.core.store.Store.save_extract``), so asking the same again does not read it again.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from app.core.retrieval import find_citations
from app.core.types import ChatMessage

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from app.core.retrieval import DocumentChunks
    from app.core.turns import TurnRequest

EXTRACT_MAX_TOKENS = 512
"""The longest extract of one part (its answer's room in the context)."""
EXPECTED_EXTRACT_TOKENS = 120
"""What an extract usually takes, for the time estimate (many parts say NONE)."""
EXPECTED_ANSWER_TOKENS = 400
"""What the final answer usually takes, for the time estimate."""
ANSWER_RESERVE = 1024
"""Room kept for the combined answer (never more than a quarter of the context)."""
MAX_MERGE_PASSES = 12
MIN_PART_TOKENS = 64
"""A context too small for parts of this many tokens cannot read a document in parts."""
EXTRACT_TEMPERATURE = 0.3
"""Extracts copy, they do not invent: at most this temperature."""
NONE_MARK = "NONE"

EXTRACT_SYSTEM = (
    "You read one part of a long document for a user. Copy out what the question needs, with the "
    "page marker of each item; add nothing that is not in the part."
)
EXTRACT_INSTRUCTION = (
    "From this part of the document, extract everything relevant to: {question}\n"
    "Keep the page anchors like (p. 12) after each item. Say {none} if nothing is relevant."
)
COMBINE_INSTRUCTION = (
    "The user asked about the document{s} {names}. The notes below were taken from every part of "
    "{them}, in order: they are all that is relevant in {them}. Answer the question from these notes "
    "alone, completely (every item when it asks for all of them), and cite the page of each fact like "
    '"(p. 12)". If the notes hold nothing relevant, say that the document{s} do{es} not seem to cover it.'
)
MERGE_INSTRUCTION = (
    "Merge these notes, taken from consecutive parts of a document, into one list for the question: "
    "{question}\nKeep every item and its page anchor like (p. 12); drop only exact repeats. Say "
    "{none} if there is nothing."
)

# --- aggregate questions ---------------------------------------------------------------------------

_AGGREGATE = re.compile(
    r"""
    \b(?:list|name|enumerate|count|collect|extract|find|show|give|tell)\b(?:\s+\w+){0,2}?\s+
        (?:all|every|each)\b                                   # list all / find every / give me all
    | \blist\s+(?:the|of)\b                                    # list the deadlines
    | \bhow\s+many\b                                            # how many
    | \bevery\s+(?!(?:day|days|time|now|once|other|so|bit|week|year|morning|night)\b)[a-z]\w*
    | \ball\s+(?:of\s+)?the\s+[a-z]\w*s\b                      # all the deadlines / all of the fees
    | \b(?:summari[sz]e|summary\s+of|overview\s+of|outline)\s+(?:the\s+|this\s+)?
        (?:whole|entire|full|complete|document|file|pdf|book|report|paper|contract|manual|text)\b
    | \b(?:whole|entire)\s+(?:document|file|pdf|book|report|paper|contract|manual|text)\b
    """,
    re.IGNORECASE | re.VERBOSE,
)


def is_aggregate_question(question: str) -> bool:
    """Whether ``question`` asks for everything of a kind, so that it needs the whole document:
    "list all…", "how many…", "every…", "all the …s", "summarise the whole…". Ordinary questions
    ("What is the deadline?", "Is it all right to sublet?") are not."""
    return bool(_AGGREGATE.search(question))


def question_key(question: str) -> str:
    """The question as saved extracts are keyed: case and spacing do not matter."""
    return " ".join(question.casefold().split())


# --- parts -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    """A run of consecutive chunks of one document read at once (or a piece of one long chunk)."""

    doc_id: int
    doc_name: str
    first: int  # chunk index
    last: int
    piece: int  # 0: whole chunks; 1, 2, …: the pieces of one chunk too long for a part
    text: str  # the chunks under their "[p. 12]" markers
    tokens: int
    pages: tuple[int, int] | None  # first and last page, when the document has pages

    @property
    def key(self) -> str:
        """Where it lies in its document: saved extracts are found by this (and the question)."""
        return f"{self.first}-{self.last}" + (f".{self.piece}" if self.piece else "")

    @property
    def where(self) -> str:
        if self.pages is None:
            return f"chunks {self.first + 1}–{self.last + 1}"
        first, last = self.pages
        return f"p. {first}" if first == last else f"pp. {first}–{last}"


def _block(anchor: str, text: str) -> str:
    return f"[{anchor}]\n{text}"


_SENTENCE_END = re.compile(r"(?<=[.!?;:。！？；])\s+|\n\s*")


def _pieces(text: str, budget: int, count_tokens: Callable[[str], int]) -> list[str]:
    """``text`` cut into pieces of at most ``budget`` tokens, at sentence ends where it can be
    (a sentence longer than that is cut between words, a word longer than that between characters)."""
    sentences = [s for s in _SENTENCE_END.split(text) if s.strip()]
    out: list[str] = []
    current = ""
    for sentence in sentences:
        candidate = f"{current} {sentence}".strip()
        if count_tokens(candidate) <= budget:
            current = candidate
            continue
        if current:
            out.append(current)
        current = ""
        if count_tokens(sentence) <= budget:
            current = sentence
            continue
        for word in sentence.split():  # a sentence longer than a part
            candidate = f"{current} {word}".strip()
            if count_tokens(candidate) <= budget:
                current = candidate
                continue
            if current:
                out.append(current)
            current = word
            while count_tokens(current) > budget and len(current) > 1:
                cut = max(1, len(current) * budget // max(1, count_tokens(current)))
                out.append(current[:cut])
                current = current[cut:]
    if current:
        out.append(current)
    return out


def plan_parts(docs: Sequence[DocumentChunks], budget: int, count_tokens: Callable[[str], int]) -> list[Part]:
    """The parts of ``docs``, each at most ``budget`` tokens of the model's (``count_tokens``).

    Every chunk lies in exactly one part (or, cut into pieces, in consecutive parts of its own), in
    document order; a part never spans two documents.
    """
    if budget < 16:
        raise ValueError(f"a part needs room for at least 16 tokens, not {budget}")
    parts: list[Part] = []
    for doc in docs:
        run: list[tuple[int, str, int | None]] = []  # (index, block, page)
        run_tokens = 0

        def close(run: list[tuple[int, str, int | None]], doc: DocumentChunks = doc) -> None:
            if not run:
                return
            text = "\n\n".join(block for _i, block, _p in run)
            pages = [p for _i, _b, p in run if p is not None]
            parts.append(
                Part(
                    doc.doc_id,
                    doc.name,
                    run[0][0],
                    run[-1][0],
                    0,
                    text,
                    count_tokens(text),
                    (min(pages), max(pages)) if pages else None,
                )
            )

        for chunk in doc.chunks:
            block = _block(chunk.anchor, chunk.text)
            tokens = count_tokens(block)
            if tokens > budget:  # one chunk longer than a part: its own parts, in pieces
                close(run)
                run, run_tokens = [], 0
                room = budget - count_tokens(_block(chunk.anchor, ""))
                for n, piece in enumerate(_pieces(chunk.text, max(1, room), count_tokens), start=1):
                    text = _block(chunk.anchor, piece)
                    page = (chunk.page, chunk.page) if chunk.page is not None else None
                    parts.append(
                        Part(
                            doc.doc_id, doc.name, chunk.index, chunk.index, n, text, count_tokens(text), page
                        )
                    )
                continue
            # separators and merges across blocks cost a few tokens: checked on the joined text
            if run and run_tokens + tokens + 2 > budget:
                close(run)
                run, run_tokens = [], 0
            run.append((chunk.index, block, chunk.page))
            run_tokens += tokens + 2
        close(run)
    return _fitted(parts, budget, count_tokens)


def _fitted(parts: list[Part], budget: int, count_tokens: Callable[[str], int]) -> list[Part]:
    """Parts whose joined text still came out over ``budget`` are split in two (rare: a tokenizer
    that merges across the blank line between blocks)."""
    out: list[Part] = []
    for part in parts:
        if part.tokens <= budget or part.first == part.last:
            out.append(part)
            continue
        blocks = part.text.split("\n\n[")
        half = len(blocks) // 2
        texts = ["\n\n[".join(blocks[:half]), "[" + "\n\n[".join(blocks[half:])]
        middle = part.first + half
        pages = part.pages
        for text, first, last in ((texts[0], part.first, middle - 1), (texts[1], middle, part.last)):
            sub = Part(part.doc_id, part.doc_name, first, last, 0, text, count_tokens(text), pages)
            out.extend(_fitted([sub], budget, count_tokens))
    return out


def part_budget(n_ctx: int, question: str, count_chat_tokens: Callable[[Sequence[ChatMessage]], int],
                limit: int = 0) -> int:  # fmt: skip
    """Tokens of document one part may hold: the context less the extract prompt and the extract's
    room, and at most ``limit`` (the whole-document limit: a part is read as well as a short
    document is)."""
    overhead = count_chat_tokens(extract_messages(question, Part(0, "", 0, 0, 0, "", 0, None), 1, 1))
    room = n_ctx - overhead - extract_reserve(n_ctx)
    return min(room, limit) if limit > 0 else room


def extract_reserve(n_ctx: int) -> int:
    return min(EXTRACT_MAX_TOKENS, n_ctx // 4)


# --- prompts ---------------------------------------------------------------------------------------


def extract_messages(question: str, part: Part, number: int, total: int) -> list[ChatMessage]:
    name = part.doc_name.replace('"', "'")
    document = f'<document name="{name}" part="{number} of {total}">\n{part.text}\n</document>'
    instruction = EXTRACT_INSTRUCTION.format(question=question.strip(), none=NONE_MARK)
    return [ChatMessage.system(EXTRACT_SYSTEM), ChatMessage.user(f"{document}\n\n{instruction}")]


def is_none(extract: str) -> bool:
    """Whether an extract says that its part holds nothing relevant."""
    text = extract.strip().strip(".*_`'\"").strip()
    return not text or (text.upper().startswith(NONE_MARK) and len(text) <= len(NONE_MARK) + 40)


@dataclass(frozen=True)
class Note:
    """What was found in one stretch of the documents (an extract, or merged extracts)."""

    label: str  # "report.pdf, pp. 3–9"
    text: str


def notes_of(extracts: Sequence[tuple[Part, str]]) -> list[Note]:
    """The extracts that found something, labelled with where they come from."""
    return [
        Note(f"{part.doc_name}, {part.where}", text.strip()) for part, text in extracts if not is_none(text)
    ]


def _render_notes(notes: Sequence[Note]) -> str:
    return "\n\n".join(f'<notes from="{n.label}">\n{n.text}\n</notes>' for n in notes)


def combine_messages(
    question: str, notes: Sequence[Note], names: Sequence[str], system_prompt: str = ""
) -> list[ChatMessage]:
    """The final prompt: the question answered from the notes of every part."""
    plural = len(names) > 1
    instruction = COMBINE_INSTRUCTION.format(
        s="s" if plural else "",
        es="" if plural else "es",
        them="them" if plural else "it",
        names=", ".join(f"“{n}”" for n in names),
    )
    body = _render_notes(notes) if notes else "(Nothing relevant was found in any part.)"
    head = [ChatMessage.system(system_prompt.strip())] if system_prompt.strip() else []
    return [*head, ChatMessage.user(f"{instruction}\n\n{body}\n\nQuestion: {question.strip()}")]


def merge_messages(question: str, notes: Sequence[Note]) -> list[ChatMessage]:
    """A merge pass: the notes of consecutive parts into one note."""
    instruction = MERGE_INSTRUCTION.format(question=question.strip(), none=NONE_MARK)
    return [ChatMessage.system(EXTRACT_SYSTEM), ChatMessage.user(f"{_render_notes(notes)}\n\n{instruction}")]


def combine_groups(
    notes: Sequence[Note],
    budget: int,
    count_chat_tokens: Callable[[Sequence[ChatMessage]], int],
    final: Callable[[Sequence[Note]], list[ChatMessage]],
) -> list[list[Note]]:
    """Consecutive groups of ``notes`` whose prompt fits ``budget`` tokens. One group: it is the
    final answer's (``final`` renders that prompt). More: each must be merged first. A note too long
    for a group alone is cut to fit (between words)."""
    if count_chat_tokens(final(notes)) <= budget:
        return [list(notes)]
    groups: list[list[Note]] = []
    current: list[Note] = []
    for note in notes:
        if count_chat_tokens(final([note])) > budget:
            note = _cut(note, budget, count_chat_tokens, final)
        if current and count_chat_tokens(final([*current, note])) > budget:
            groups.append(current)
            current = []
        current.append(note)
    if current:
        groups.append(current)
    return groups


def _cut(
    note: Note,
    budget: int,
    count_chat_tokens: Callable[[Sequence[ChatMessage]], int],
    final: Callable[[Sequence[Note]], list[ChatMessage]],
) -> Note:
    words = note.text.split()
    low, high = 0, len(words)
    while low < high:  # the most words that fit
        mid = (low + high + 1) // 2
        if count_chat_tokens(final([Note(note.label, " ".join(words[:mid]) + " …")])) <= budget:
            low = mid
        else:
            high = mid - 1
    return Note(note.label, " ".join(words[:low]) + " …")


def squeeze_notes(
    notes: Sequence[Note],
    budget: int,
    count_chat_tokens: Callable[[Sequence[ChatMessage]], int],
    final: Callable[[Sequence[Note]], list[ChatMessage]],
) -> list[Note]:
    """The last resort when merging does not make the notes fit: all of them as one note, cut to
    ``budget`` (the end is lost, and says so with "…")."""
    if not notes:
        return []
    joined = Note(f"{notes[0].label} to {notes[-1].label}", "\n".join(f"{n.label}: {n.text}" for n in notes))
    return [_cut(joined, budget, count_chat_tokens, final)]


def cited_pages(notes: Sequence[Note]) -> list[int]:
    """The pages the notes cite, in order, once each."""
    pages: dict[int, None] = {}
    for note in notes:
        for citation in find_citations(note.text):
            pages.setdefault(citation.page, None)
    return list(pages)


def partial_answer(extracts: Sequence[tuple[Part, str]], total: int) -> str:
    """What a stopped reading shows: the extracts found so far, marked as partial."""
    read = len(extracts)
    found = notes_of(extracts)
    where = f" (up to {extracts[-1][0].where} of {extracts[-1][0].doc_name})" if extracts else ""
    head = f"**Partial answer: stopped after reading {read} of {total} parts{where}.**"
    if not extracts:
        return f"{head}\n\nNothing had been read yet."
    if not found:
        return f"{head}\n\nNothing relevant was found in the parts read so far."
    body = "\n\n".join(f"*{n.label}*\n\n{n.text}" for n in found)
    return f"{head} What those parts say:\n\n{body}"


# --- the request and the estimate ------------------------------------------------------------------


@dataclass(frozen=True)
class ReadingRequest:
    """Read ``documents`` whole for ``question`` (plain data, built on the GUI thread).

    ``saved`` holds the extracts already made for this question, by (document id, part key).
    ``turn`` is the conversation (for the system prompt and the answer's length).
    """

    turn: TurnRequest
    question: str
    documents: tuple[tuple[int, str], ...]  # (attachment id, name)
    whole_limit: int = 0
    saved: Mapping[tuple[int, str], str] = field(default_factory=dict)


@dataclass(frozen=True)
class PartExtract:
    """One part read: what the worker hands the store."""

    doc_id: int
    part_key: str
    question: str
    text: str


@dataclass(frozen=True)
class Speeds:
    """This machine's measured speeds (the engine's last answer), tokens per second."""

    prompt: float
    generation: float

    @property
    def known(self) -> bool:
        return self.prompt > 0 and self.generation > 0


@dataclass(frozen=True)
class ReadingEstimate:
    parts: int
    tokens: int
    seconds: float | None  # None: no speed measured yet on this computer


@dataclass(frozen=True)
class ReadingOffer:
    """What the user is asked before a document is read whole: how much and how long."""

    question: str
    documents: tuple[tuple[int, str], ...]  # (attachment id, name)
    pages: int
    estimate: ReadingEstimate
    saved_parts: int = 0

    @property
    def title(self) -> str:
        return "Read the whole document?" if len(self.documents) == 1 else "Read the whole documents?"

    @property
    def text(self) -> str:
        """ "Read all 212 pages? About 9 minutes on this computer." """
        what = f"all {self.pages:,} pages" if self.pages > 1 else f"all {self.estimate.tokens:,} tokens"
        if len(self.documents) == 1:
            what += f" of “{self.documents[0][1]}”"
        if self.estimate.seconds is None:
            when = "How long it takes on this computer is known once it has answered a question."
        else:
            when = f"{format_duration(self.estimate.seconds).capitalize()} on this computer."
        return f"Read {what}? {when}"

    @property
    def detail(self) -> str:
        parts = self.estimate.parts
        saved = f" ({self.saved_parts} already read for this question)" if self.saved_parts else ""
        return (
            f"This question asks about the whole document, which is too long to send at once. Scout "
            f"reads it in {parts} part{'s' if parts != 1 else ''}{saved}, notes what each says about "
            "the question, then answers from the notes. Stop keeps what was read so far. Otherwise "
            "the answer uses only the passages that best match the question."
        )


def rough_part_budget(n_ctx: int, limit: int = 0) -> int:
    """:func:`part_budget` before the tokenizer is asked (the estimate on the GUI thread)."""
    room = max(MIN_PART_TOKENS, n_ctx - extract_reserve(n_ctx) - 300)
    return min(room, limit) if limit > 0 else room


def estimate_reading(
    tokens: int, budget: int, speeds: Speeds | None, *, saved_parts: int = 0
) -> ReadingEstimate:
    """How long reading ``tokens`` of document in parts of ``budget`` tokens takes here: the
    prompt tokens times the measured prompt speed plus the expected extracts and answer times the
    generation speed. Parts already read (``saved_parts``) cost nothing."""
    parts = max(1, math.ceil(tokens / max(1, budget)))
    if speeds is None or not speeds.known:
        return ReadingEstimate(parts, tokens, None)
    todo = max(0, parts - saved_parts)
    share = todo / parts
    prompt_tokens = tokens * share + 200 * todo  # the instruction around each part
    generated = EXPECTED_EXTRACT_TOKENS * todo + EXPECTED_ANSWER_TOKENS
    combine_prompt = EXPECTED_EXTRACT_TOKENS * parts
    seconds = (prompt_tokens + combine_prompt) / speeds.prompt + generated / speeds.generation
    return ReadingEstimate(parts, tokens, seconds)


def format_duration(seconds: float) -> str:
    """ "about 40 seconds", "about 9 minutes", "about 2 hours 10 minutes"."""
    if seconds < 60:
        return f"about {max(5, round(seconds / 5) * 5)} seconds"
    minutes = round(seconds / 60)
    if minutes < 90:
        return f"about {minutes} minute" + ("" if minutes == 1 else "s")
    hours, rest = divmod(minutes, 60)
    return f"about {hours} hours" + (f" {rest} minutes" if rest else "")
