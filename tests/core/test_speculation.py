"""Draft-free speculative decoding (app/core/engine/speculation.py) on the real llama.cpp.

The engine tests use the tiny Q8_0 model with flash attention: llama.cpp then computes every row
of a verification batch exactly as it computes that token alone, so the greedy answer with
speculation must be the same token for token.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import pytest

from app.core.engine import NATIVE_LOG, LlamaEngine
from app.core.engine.native import import_llama_cpp
from app.core.engine.speculation import COOLDOWN, MAX_DRAFT, DraftPolicy, NgramDrafter
from app.core.tiny_model import TinyModelSpec, write_tiny_model
from app.core.types import ChatMessage, LoadParams, SamplingParams

if TYPE_CHECKING:
    from pathlib import Path

GREEDY = SamplingParams(temperature=0.0, max_tokens=96)
QUESTION = "What does the report say about the harbour and the ships?"


# -- the drafter and the policy (pure) -------------------------------------------------------
def test_draft_follows_the_latest_earlier_occurrence_of_the_longest_suffix() -> None:
    drafter = NgramDrafter([1, 2, 3, 4, 5, 9, 2, 3, 7, 8, 6, 2, 3])
    # suffix (2, 3): its latest earlier occurrence is followed by 7, 8 ...
    assert drafter.draft(3) == [7, 8, 6]
    drafter.append(4)  # suffix (2, 3, 4) occurred once, at the start: 5 followed
    assert drafter.draft(2) == [5, 9]
    assert drafter.draft(0) == []


def test_no_draft_without_a_match_of_min_n_tokens() -> None:
    drafter = NgramDrafter([1, 2, 3, 1], min_n=2)
    assert drafter.draft(4) == []  # (3, 1) never occurred before; a single 1 is not enough
    assert NgramDrafter([1, 2, 3, 1], min_n=1).draft(4) == [2, 3, 1]
    with pytest.raises(ValueError, match="n-gram"):
        NgramDrafter(min_n=0)


def test_the_guarded_policy_drafts_as_much_as_the_measurements_make_worth_it() -> None:
    policy = DraftPolicy(guarded=True)
    assert policy.next_size() == 0  # no plain decode timed yet
    policy.decoded(0.010)
    # p = 1/2 and a drafted token costing half a decode: no draft pays, so a one-token probe ...
    assert policy.best_size() == 0
    assert policy.next_size() == 1
    # ... which lost time (1 token for the time of 2): the next probe waits COOLDOWN tokens
    policy.verified(drafted=1, accepted=0, seconds=0.020)
    assert [policy.next_size() for _ in range(COOLDOWN)] == [0] * COOLDOWN
    assert policy.next_size() == 1
    policy.verified(drafted=1, accepted=0, seconds=0.020)  # lost again: twice as long
    assert [policy.next_size() for _ in range(2 * COOLDOWN)] == [0] * (2 * COOLDOWN)
    # quoting: drafts accepted in batches that cost little more than one token (a GPU) -> long drafts
    for _ in range(6):
        policy.verified(drafted=8, accepted=8, seconds=0.012)
    assert policy.acceptance > 0.9
    assert policy.beta < 0.2
    assert policy.next_size() == MAX_DRAFT
    # the same acceptance where each drafted token costs a whole decode: never worth it
    costly = DraftPolicy(guarded=True)
    costly.decoded(0.010)
    for _ in range(6):
        costly.verified(drafted=2, accepted=2, seconds=0.030)
    assert costly.best_size() == 0


def test_the_unguarded_policy_adapts_the_size_only() -> None:
    policy = DraftPolicy(guarded=False, initial=4)
    assert policy.next_size() == 4  # no timing needed
    policy.verified(drafted=4, accepted=4, seconds=1.0)
    assert policy.next_size() == 8
    policy.verified(drafted=8, accepted=0, seconds=1.0)
    assert policy.next_size() == 4


# -- the engine ------------------------------------------------------------------------------
@pytest.fixture
def load(tiny_model_q8: Path):
    """Fresh engines on the Q8_0 tiny model with flash attention (a fresh cache each: what an
    answer reuses of the previous one's cache changes how its prompt is batched, and so its
    rounding, with or without speculation)."""
    made: list[LlamaEngine] = []

    def make(mode: str) -> LlamaEngine:
        engine = LlamaEngine()
        engine.load(LoadParams(tiny_model_q8, n_ctx=2048, n_threads=1, flash_attn=True, speculation=mode))
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.unload()


def answer(engine: LlamaEngine, messages: list[ChatMessage], cancel_after: int = 0) -> tuple[str, list[int]]:
    """The answer's text and tokens (cancelled after ``cancel_after`` pieces when > 0)."""
    cancel = threading.Event()
    pieces = []
    for piece in engine.stream_chat(messages, GREEDY, cancel):
        pieces.append(piece)
        if len(pieces) == cancel_after:
            cancel.set()
    stats = engine.last_stats
    llm = engine._llm
    n_prompt = stats.prompt_tokens
    return "".join(pieces), [int(t) for t in llm._input_ids[n_prompt : llm.n_tokens]]


def quoting_prompt(engine: LlamaEngine) -> list[ChatMessage]:
    """A document the answer copies from: the model's own earlier answer (a model with random
    weights follows no instruction to quote; given its own words, it writes much of them again)."""
    earlier, _ = answer(engine, [ChatMessage.user(QUESTION)])
    return [ChatMessage.user(f"The report:\n\n{earlier}\n\nEnd of the report.\n\n{QUESTION}")]


@pytest.mark.parametrize("case", ["document-quoting", "free"])
def test_greedy_answers_are_the_same_token_for_token(load: Any, case: str) -> None:
    free = [ChatMessage.user("Tell me something new about foxes and dogs.")]
    messages = quoting_prompt(load("off")) if case == "document-quoting" else free
    engines = {mode: load(mode) for mode in ("off", "on", "auto")}
    reference = answer(engines["off"], messages)
    assert engines["off"].last_speculation.drafted == 0
    for mode in ("on", "auto"):
        assert answer(engines[mode], messages) == reference, mode
    spec = engines["on"].last_speculation
    assert spec.batches > 0
    assert 1 < spec.max_logit_rows <= MAX_DRAFT + 1
    if case == "document-quoting":
        assert spec.accepted > GREEDY.max_tokens // 4  # the quotes were drafted and accepted
        stats = engines["on"].last_stats
        assert (stats.drafted_tokens, stats.accepted_tokens) == (spec.drafted, spec.accepted)


def test_cancel_mid_draft_leaves_exactly_the_written_tokens_in_the_cache(load: Any) -> None:
    engine = load("on")
    llama_cpp = import_llama_cpp()
    messages = quoting_prompt(load("off"))
    full_text, full_tokens = answer(engine, messages)
    dropped = 0
    for cancel_after in range(1, 40):
        text, tokens = answer(engine, messages, cancel_after=cancel_after)
        stats = engine.last_stats
        assert stats.finish_reason == "cancelled"
        assert full_text.startswith(text)
        assert tokens == full_tokens[: len(tokens)]
        assert len(tokens) <= stats.completion_tokens
        llm = engine._llm
        # llama.cpp's own cache ends where the engine's token list ends: no rejected or unwritten
        # draft token is left behind
        assert llama_cpp.llama_memory_seq_pos_max(llama_cpp.llama_get_memory(llm.ctx), 0) == llm.n_tokens - 1
        dropped += engine.last_speculation.dropped
    assert dropped > 0  # some cancellations came while verified draft tokens were still queued
    # and the next answer, reusing that cache, is the same as a fresh one
    assert answer(engine, messages) == (full_text, full_tokens)


# -- memory: the logits do not grow with the context -------------------------------------------
SCOUT_VOCAB = 202_048


@pytest.fixture(scope="module")
def big_vocab_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("big-vocab")
    return write_tiny_model(folder / "big-vocab.gguf", TinyModelSpec(n_vocab=SCOUT_VOCAB, dtype="F16"))[0]


@pytest.mark.parametrize("n_ctx", [2048, 32768])
def test_logits_stay_a_few_rows_of_a_scout_sized_vocabulary_at_any_context(
    big_vocab_model: Path, n_ctx: int
) -> None:
    engine = LlamaEngine()
    mark = NATIVE_LOG.mark()
    engine.load(LoadParams(big_vocab_model, n_ctx=n_ctx, n_threads=1, flash_attn=True, speculation="on"))
    try:
        llm = engine._llm
        assert llm.n_vocab() == SCOUT_VOCAB
        # llama.cpp's output buffer, as it reports it: one row of logits (n_seq_max = 1) ...
        lines = [line for line in NATIVE_LOG.since(mark) if "output buffer size" in line]
        assert lines
        mib = float(lines[-1].split("=")[1].split("MiB")[0])
        assert mib == pytest.approx(SCOUT_VOCAB * 4 / 2**20, abs=0.01)
        # ... and what speculation asks of it: at most MAX_DRAFT + 1 rows per batch, not n_ctx
        document = " ".join(["the quick brown fox jumps over the lazy dog"] * 30)
        "".join(engine.stream_chat([ChatMessage.user(document)], GREEDY, threading.Event()))
        spec = engine.last_speculation
        assert spec.accepted > 0
        assert 1 < spec.max_logit_rows <= MAX_DRAFT + 1
        # llama-cpp-python's own scores array stays n_batch rows (logits_all would make it n_ctx)
        assert not llm._logits_all
        assert llm.scores.shape == (llm.n_batch, SCOUT_VOCAB)
    finally:
        engine.unload()


def test_the_engine_process_speculates_and_reports_it(load: Any, tiny_model_q8: Path) -> None:
    from app.core.engine.process import EngineProxy

    messages = [ChatMessage.user(" ".join(["the quick brown fox jumps over the lazy dog"] * 20))]
    reference = answer(load("off"), messages)[0]
    proxy = EngineProxy()
    try:
        proxy.load(LoadParams(tiny_model_q8, n_ctx=2048, n_threads=1, flash_attn=True, speculation="on"))
        assert "".join(proxy.stream_chat(messages, GREEDY, threading.Event())) == reference
        stats = proxy.last_stats
        assert 0 < stats.accepted_tokens <= stats.drafted_tokens
    finally:
        proxy.close()
