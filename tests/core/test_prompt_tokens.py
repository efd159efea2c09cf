"""Prompt tokenization on the real llama.cpp tokenizer: right-sized buffers and cached pieces."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from app.core.engine import LlamaEngine, tokenize_bytes
from app.core.engine.tokens import BREAK, MIN_CACHED_CHARS, LiteralSpecials, PromptTokenizer
from app.core.types import ChatMessage, LoadParams

if TYPE_CHECKING:
    from pathlib import Path


@pytest.fixture(scope="module")
def engine(tiny_model: Path):
    eng = LlamaEngine()
    eng.load(LoadParams(tiny_model, n_ctx=4096))
    yield eng
    eng.unload()


def whole(engine: LlamaEngine, messages: list[ChatMessage]) -> list[int]:
    """What llama-cpp-python's own tokenizer makes of the rendered prompt, in one call."""
    prompt = engine.render_prompt(messages)
    return list(engine._llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True))


DOCUMENT = "\n\n".join(
    f"[p. {i // 3 + 1}] The committee reviewed the budget, line by line; item {i} was approved (€ {i * 7}).  "
    for i in range(120)
)


def test_tokenize_bytes_matches_llama_cpp_python(engine: LlamaEngine) -> None:
    llm = engine._llm
    assert llm._model.tokenize.func.__name__ == "tokenize_vocab"  # llama-cpp-python's callers use it
    for text in ["", "a", " leading space", "<|eot|>x<|header_start|>", "é ü 日本 🙂\n\t", DOCUMENT]:
        data = text.encode("utf-8")
        for add_bos in (True, False):
            for special in (True, False):
                ours = tokenize_bytes(llm, data, add_bos=add_bos, special=special)
                theirs = type(llm._model).tokenize(llm._model, data, add_bos, special)  # the original
                assert ours == theirs, (text[:20], add_bos, special)
                assert llm.tokenize(data, add_bos=add_bos, special=special) == theirs  # ours installed


def test_piecewise_tokens_equal_whole_prompt_tokens_and_long_pieces_are_reused(engine: LlamaEngine) -> None:
    tokenizer = engine._tokenizer
    assert tokenizer is not None
    assert tokenizer.enabled  # the probe found llama4's BPE consistent
    tokenizer.clear()
    history = [
        ChatMessage.system("Answer from the document."),
        ChatMessage.user(DOCUMENT + "\n\nWhat happened to item 3?"),
    ]
    assert len(history[1].content) > MIN_CACHED_CHARS
    assert engine.prompt_tokens(history) == whole(engine, history)
    hits = tokenizer.hits
    for turn in range(3):
        answer = ChatMessage.assistant(f"Item {turn} was approved. " * 3)
        history += [answer, ChatMessage.user(f"And {turn}?")]
        assert engine.prompt_tokens(history) == whole(engine, history)
        assert tokenizer.hits > hits  # the document's tokens came from the cache
        hits = tokenizer.hits


def test_the_same_prompt_twice_is_tokenized_once(engine: LlamaEngine) -> None:
    messages = [ChatMessage.user(DOCUMENT)]
    first = engine.prompt_tokens(messages)
    calls: list[bytes] = []
    tokenizer = engine._tokenizer
    real = tokenizer._tokenize
    tokenizer._tokenize = lambda data, add_bos: calls.append(data) or real(data, add_bos)
    try:
        assert engine.count_chat_tokens(messages) == len(first)
        assert engine.prompt_tokens(messages) == first
    finally:
        tokenizer._tokenize = real
    assert calls == []


def test_a_vocabulary_where_pieces_differ_falls_back_to_whole_prompts() -> None:
    """A tokenizer whose output depends on what surrounds a special token (like SentencePiece's
    space prefix) must not be cut into pieces."""

    def spm_like(data: bytes, add_bos: bool) -> list[int]:
        text = data.decode()
        out = [1] if add_bos else []
        for i, part in enumerate(text.split("<s>")):
            if i:
                out.append(2)
            if part:
                out += [ord(c) for c in (" " + part if i == 0 else part)]  # prefix only at the start
        return out

    tokenizer = PromptTokenizer(spm_like, {"<s>": 2}, ["a<s>b"])
    assert not tokenizer.enabled
    text = "x" * (MIN_CACHED_CHARS + 10) + "<s>" + "tail"
    assert tokenizer.tokens(text, True) == spm_like(text.encode(), True)


def test_the_piece_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from app.core.engine import tokens as tokens_module

    monkeypatch.setattr(tokens_module, "MAX_CACHED_TOKENS", 5000)

    def chars(data: bytes, add_bos: bool) -> list[int]:
        parts = data.decode().split("<e>")
        out = [1] if add_bos else []
        for i, part in enumerate(parts):
            if i:
                out.append(2)
            out += [ord(c) % 200 + 3 for c in part]
        return out

    tokenizer = PromptTokenizer(chars, {"<e>": 2})
    assert tokenizer.enabled
    for i in range(10):
        text = f"<e>{chr(65 + i) * 2000}<e>q"
        assert tokenizer.tokens(text, False) == chars(text.encode(), False)
    assert tokenizer._cached_tokens <= 5000
    assert len(tokenizer._pieces) == 2


def test_a_follow_up_does_not_tokenize_the_document_again(engine: LlamaEngine) -> None:
    """Counted in bytes handed to the tokenizer, not timed (bench/documents.py times it)."""
    tokenizer = engine._tokenizer
    tokenizer.clear()
    sizes: list[int] = []
    real = tokenizer._tokenize
    tokenizer._tokenize = lambda data, add_bos: sizes.append(len(data)) or real(data, add_bos)
    try:
        big = DOCUMENT * 8
        engine.prompt_tokens([ChatMessage.user(big), ChatMessage.assistant("ok"), ChatMessage.user("a")])
        first = sum(sizes)
        sizes.clear()
        engine.prompt_tokens([ChatMessage.user(big), ChatMessage.assistant("ok"), ChatMessage.user("b")])
        assert sum(sizes) < first / 100  # the document was not tokenized again
    finally:
        tokenizer._tokenize = real


def test_the_special_token_pattern_finds_what_a_longest_first_alternation_finds() -> None:
    import random
    import re

    from app.core.engine.tokens import _trie_pattern

    rng = random.Random(3)
    words = [f"<|reserved_special_token_{i}|>" for i in range(300)] + ["<|eot|>", "<|eo", "ab", "abc", "<s>"]
    alphabet = ["<", "|", "e", "o", "t", ">", "a", "b", "c", "s", " ", "\n", "é", *words[:5], *words[-5:]]
    text = "".join(rng.choice(alphabet) for _ in range(20_000))
    longest_first = re.compile("|".join(re.escape(w) for w in sorted(words, key=len, reverse=True)))
    trie = re.compile(_trie_pattern(words))
    expected = [(m.start(), m.group()) for m in longest_first.finditer(text)]
    assert [(m.start(), m.group()) for m in trie.finditer(text)] == expected
    assert len(expected) > 1000


def test_literal_specials_break_only_whole_control_tokens() -> None:
    guard = LiteralSpecials(["<|eot|>", "<|header_start|>", "<s>", "[INST]", "<__media__>", "|", ""])
    zw = BREAK
    assert guard("a<|eot|>b") == f"a<{zw}|eot|>b"
    assert guard("<<|header_start|>>") == f"<<{zw}|header_start|>>"
    assert guard("<s>[INST] x [/INST]") == f"<{zw}s>[{zw}INST] x [/INST]"
    assert guard("see <__media__> here") == f"see <{zw}__media__> here"
    # look-alikes that are not tokens of the vocabulary, and single characters, are left alone
    for text in ["<|not_a_token|>", "a | b", "<|eot|", "|eot|>", "<div>", "if (a<b) {}", "", "plain"]:
        assert guard(text) == text
    assert LiteralSpecials([])("<|eot|>") == "<|eot|>"


def test_literal_specials_handle_a_vocabulary_padded_with_thousands_of_reserved_tokens() -> None:
    reserved = [f"<|reserved_special_token_{i}|>" for i in range(200_000)]
    guard = LiteralSpecials([*reserved, "<|eot|>"])
    text = "x <|reserved_special_token_199999|> y <|reserved_special_token_200000|> z"
    assert guard(text) == f"x <{BREAK}|reserved_special_token_199999|> y <|reserved_special_token_200000|> z"
