"""Prompt tokenization that does not re-read a long document on every turn.

Each chat turn renders the whole conversation with the chat template and tokenizes it, and the
worker does it twice per turn (once to fit the context, once to generate). With a 400-page document
in the conversation that is ~250k tokens of byte-level BPE each time: about a second per turn on a
laptop, spent before the first new token is evaluated.

llama.cpp tokenizes a prompt with ``parse_special`` by first cutting it at every special token
(control, user-defined and unknown tokens: ``tokenizer_st_partition``) and then running BPE on each
raw piece on its own. So a prompt's tokens are the concatenation of the tokens of its pieces, and the
tokens of a long piece (a document, a long answer) can be kept and reused while that exact text comes
back. :class:`PromptTokenizer` does that, and remembers the last whole prompt too.

Whether the equivalence holds for a vocabulary is checked when the tokenizer is built: a probe that
puts every special token of the chat template against text and whitespace on both sides is tokenized
both ways. Vocabularies where it does not hold (SentencePiece's space prefix, tokens that strip the
whitespace next to them) fall back to tokenizing the whole prompt.
"""

from __future__ import annotations

import array
import collections
import logging
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

log = logging.getLogger(__name__)

# Pieces shorter than this are tokenized again each time: cheaper than hashing and caching them.
MIN_CACHED_CHARS = 1024
# At most this many tokens are kept (4 bytes each): a few long documents and their conversations.
MAX_CACHED_TOKENS = 4_000_000
# Scout has ~2k special tokens; a vocabulary with far more (the sparse Scout replica pads its vocab
# with 200k) is tokenized whole rather than compiling a huge pattern at load.
MAX_SPECIALS = 20_000


class PromptTokenizer:
    """Tokenizes rendered prompts; see the module docstring for why the pieces can be cached.

    ``tokenize(text, add_bos)`` is llama.cpp's tokenizer with special tokens parsed; ``specials``
    maps each special token's text to its id.
    """

    def __init__(
        self,
        tokenize: Callable[[bytes, bool], list[int]],
        specials: dict[str, int],
        probe_texts: Sequence[str] = (),
    ) -> None:
        self._tokenize = tokenize
        self._specials = {text: tid for text, tid in specials.items() if text}
        usable = 0 < len(self._specials) <= MAX_SPECIALS
        self._split_re = re.compile(_trie_pattern(self._specials)) if usable else None
        self._pieces: collections.OrderedDict[str, array.array[int]] = collections.OrderedDict()
        self._cached_tokens = 0
        self._last: tuple[str, bool, list[int]] | None = None
        self.hits = 0  # pieces served from the cache (for tests and benchmarks)
        self.enabled = self._split_re is not None and self._consistent(probe_texts)

    def _consistent(self, probe_texts: Sequence[str]) -> bool:
        specials = list(self._specials)
        around = ["", " ", "\n", "\n\n", "a", " a ", "word\n", "  x", "é"]
        probes = list(probe_texts)
        for i, special in enumerate(specials[:64]):
            left, right = around[i % len(around)], around[(i * 5 + 3) % len(around)]
            probes.append(f"{left}{special}{right}text {special}\n\n{left}")
        probes.append("".join(f"{a}{s}" for a, s in zip(around * 8, specials[:64], strict=False)) + " end ")
        for text in probes:
            for add_bos in (True, False):
                whole = list(self._tokenize(text.encode("utf-8"), add_bos))
                pieced = self._tokens_by_pieces(text, add_bos, cache=False)
                if whole != pieced:
                    log.info("piecewise tokenization differs for this vocabulary; tokenizing whole prompts")
                    return False
        return True

    def tokens(self, text: str, add_bos: bool) -> list[int]:
        """The tokens of ``text`` (special tokens parsed), as llama.cpp's tokenizer gives them."""
        last = self._last
        if last is not None and last[1] == add_bos and last[0] == text:
            return list(last[2])
        if self.enabled:
            result = self._tokens_by_pieces(text, add_bos, cache=True)
        else:
            result = list(self._tokenize(text.encode("utf-8"), add_bos))
        self._last = (text, add_bos, result)
        return list(result)

    def clear(self) -> None:
        self._pieces.clear()
        self._cached_tokens = 0
        self._last = None

    def _tokens_by_pieces(self, text: str, add_bos: bool, *, cache: bool) -> list[int]:
        assert self._split_re is not None
        out: list[int] = []
        bos_pending = add_bos
        pos = 0
        for match in self._split_re.finditer(text):
            if match.start() > pos:
                out += self._raw(text[pos : match.start()], bos_pending, cache)
            elif bos_pending:
                out += self._tokenize(b"", True)  # just the BOS
            bos_pending = False
            out.append(self._specials[match.group()])
            pos = match.end()
        if pos < len(text) or bos_pending:
            out += self._raw(text[pos:], bos_pending, cache)
        return out

    def _raw(self, piece: str, add_bos: bool, cache: bool) -> list[int]:
        if not cache or add_bos or len(piece) < MIN_CACHED_CHARS:
            return list(self._tokenize(piece.encode("utf-8"), add_bos))
        hit = self._pieces.get(piece)
        if hit is not None:
            self._pieces.move_to_end(piece)
            self.hits += 1
            return hit.tolist()
        tokens = list(self._tokenize(piece.encode("utf-8"), False))
        if len(tokens) <= MAX_CACHED_TOKENS:
            self._pieces[piece] = array.array("i", tokens)
            self._cached_tokens += len(tokens)
            while self._cached_tokens > MAX_CACHED_TOKENS:
                _text, old = self._pieces.popitem(last=False)
                self._cached_tokens -= len(old)
        return tokens


def _trie_pattern(words: Iterable[str]) -> str:
    """A regex matching any of ``words``, the longest where several start at the same place (as a
    longest-first alternation would), built as a trie: at a ``<`` in code that is not followed by
    ``|`` it fails after one character instead of trying thousands of alternatives (4x faster
    over a megabyte of C++ with Scout's 2k specials)."""
    trie: dict[str, Any] = {}
    for word in words:
        node = trie
        for ch in word:
            node = node.setdefault(ch, {})
        node[""] = {}  # a word ends here

    def build(node: dict[str, Any]) -> str:
        branches = [re.escape(ch) + build(child) for ch, child in sorted(node.items()) if ch]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        return f"(?:{body})?" if "" in node else body  # greedy: the longer word first

    return build(trie)


# Control tokens shaped like Llama 3/4's (``<|eot|>``, ``<|header_start|>``, ``<|reserved_…|>``): one
# pattern for all of them, however many the vocabulary has; other shapes go through a trie.
_PIPE_TOKEN = r"<\|[A-Za-z0-9_.:\-]{1,120}\|>"
# What :class:`LiteralSpecials` puts after a special token's first character: invisible, and no
# token of any vocabulary starts with it, so the text no longer matches the token.
BREAK = "\u200b"  # ZERO WIDTH SPACE


class LiteralSpecials:
    """Makes the text of control tokens in message contents stay text.

    The whole rendered prompt is tokenized with special tokens parsed (the template's own
    ``<|header_start|>`` and ``<|eot|>`` must become control tokens), so a document, a web page
    or a pasted answer that contains ``<|eot|><|header_start|>system<|header_end|>`` would end
    the turn and open a system turn of its own: a prompt injection through a file. Contents are
    passed through this before the template sees them: each control token's text gets a zero
    width space after its first character, so it is read as the characters it is made of. The
    vision path's image marker (``<__media__>``) is guarded the same way, so text cannot claim an
    image slot.
    """

    def __init__(self, texts: Iterable[str]) -> None:
        words = {t for t in texts if len(t) >= 2}
        self._words = frozenset(words)
        shape = re.compile(_PIPE_TOKEN)
        others = sorted(w for w in words if not shape.fullmatch(w))
        if len(others) > MAX_SPECIALS:
            log.warning("%d control tokens of unusual shape are not guarded in message text", len(others))
            others = []
        alternatives = [_PIPE_TOKEN] + ([_trie_pattern(others)] if others else [])
        self._re = re.compile("|".join(f"(?:{a})" for a in alternatives)) if words else None

    def _break(self, match: re.Match[str]) -> str:
        text = match.group()
        return text[0] + BREAK + text[1:] if text in self._words else text

    def __call__(self, text: str) -> str:
        if self._re is None or not text:
            return text
        return self._re.sub(self._break, text)
