"""Draft-free speculative decoding: drafts looked up in the context, verified in one batch.

Scout has no small draft model of its own vocabulary, but answers about a document often copy
it: names, figures, whole sentences. *Prompt lookup* drafts the next tokens from the context
itself: the last 3 (then 2, then 1) tokens written are searched for earlier in the prompt and
the answer so far, and the tokens that followed them there are proposed (:class:`NgramDrafter`).

The engine (``llama.py``) then feeds the token just sampled plus the draft to llama.cpp as one
batch in which every position asks for logits — ``1 + len(draft)`` rows, never more than
:data:`MAX_DRAFT` + 1, whatever the context size (llama-cpp-python's own prompt-lookup path sets
``logits_all`` and keeps ``n_ctx × n_vocab`` floats: ≈ 26 GB for Scout at 32k). The sampler
picks a token at each row in turn; the draft is accepted as long as the pick equals it, so every
token written is the one the sampler would have picked without speculation (greedy output is
unchanged, and sampling draws exactly as often as without). The first pick that differs is the
next token; the cache entries of the rejected draft tokens are removed (``llama_memory_seq_rm``).

The cost: a batch of a few tokens takes longer than one token, so a rejected draft is a loss.
:class:`DraftPolicy` keeps that small: it drafts only after a match of :data:`MIN_NGRAM` tokens or
more, and ("auto") drafts only as many tokens as the measured acceptance and batch cost make
worth it, probing now and then when none is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable

SPECULATION_CHOICES = ("auto", "on", "off")
MAX_NGRAM = 3  # the longest suffix looked up
MIN_NGRAM = 2  # a single repeated token predicts too little to be worth a batch
MAX_DRAFT = 8  # drafted tokens per batch (the batch requests at most MAX_DRAFT + 1 logits rows)
COOLDOWN = 8  # "auto": plain decodes between probes (doubling while probes lose time)
MAX_COOLDOWN = 256
MARGIN = 0.05  # "auto" drafts when the expected gain is at least 5 %
DECAY = 0.8  # weight of the older acceptance counts at each verification


@dataclass
class SpeculationStats:
    """What speculation did for one answer."""

    drafted: int = 0  # draft tokens sent for verification
    accepted: int = 0  # of them, the ones the sampler picked too
    batches: int = 0  # verification batches
    max_logit_rows: int = 0  # the most logits rows one batch requested
    dropped: int = 0  # verified tokens not written: the answer ended (stop, Stop, limit) before them

    @property
    def acceptance(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0


class NgramDrafter:
    """The tokens of the context (prompt, then the answer as it is written) and, for every n-gram
    of ``min_n``..``max_n`` tokens in it, where it last occurred: the draft after a suffix is what
    followed its latest earlier occurrence. Appending a token is O(max_n); a draft is a lookup."""

    def __init__(self, tokens: Iterable[int] = (), *, min_n: int = MIN_NGRAM, max_n: int = MAX_NGRAM) -> None:
        if not 1 <= min_n <= max_n:
            raise ValueError("n-gram sizes must satisfy 1 <= min_n <= max_n")
        self.min_n, self.max_n = min_n, max_n
        self.tokens: list[int] = []
        self._next: dict[tuple[int, ...], int] = {}  # n-gram -> index of the token after it
        for token in tokens:
            self.append(token)

    def append(self, token: int) -> None:
        # the n-grams that end at the current last token now have a continuation: this token
        end = len(self.tokens)
        for n in range(self.min_n, min(self.max_n, end) + 1):
            self._next[tuple(self.tokens[end - n : end])] = end
        self.tokens.append(int(token))

    def extend(self, tokens: Iterable[int]) -> None:
        for token in tokens:
            self.append(token)

    def draft(self, limit: int) -> list[int]:
        """Up to ``limit`` tokens that followed the longest suffix (``max_n`` down to ``min_n``
        tokens) at its latest earlier occurrence; [] when no suffix occurred before."""
        if limit <= 0:
            return []
        tokens = self.tokens
        for n in range(min(self.max_n, len(tokens)), self.min_n - 1, -1):
            start = self._next.get(tuple(tokens[len(tokens) - n :]))
            if start is not None:
                return tokens[start : start + limit]
        return []


class DraftPolicy:
    """How many tokens to draft next.

    Unguarded ("on"): the size starts at ``initial``, doubles (up to :data:`MAX_DRAFT`) after a
    fully accepted draft and halves (down to ``minimum``) after a draft rejected at its first token.

    Guarded ("auto"): drafts only where the measurements say it saves time. A batch of ``1 + d``
    tokens costs ``1 + beta * d`` plain decodes (``beta`` measured: on a mixture of experts on a
    CPU each drafted token may read another expert's weights, ≈ 0.5; on a GPU holding the model
    ≈ 0); with a chance ``p`` that a drafted token is accepted (measured, decaying counts) the batch
    gives ``1 + p + p² + … + p^d`` tokens on average. The size with the best ratio is drafted when
    it beats a plain decode by :data:`MARGIN`; otherwise a one-token probe keeps the estimates
    fresh, after :data:`COOLDOWN` plain tokens, twice as long after each probe that lost time
    (up to :data:`MAX_COOLDOWN`). Nothing is drafted before a plain decode was timed."""

    def __init__(
        self, *, guarded: bool, initial: int = 4, minimum: int = 2, maximum: int = MAX_DRAFT
    ) -> None:
        self.guarded = guarded
        self.size, self.minimum, self.maximum = initial, minimum, maximum
        self.single_s: float | None = None  # a plain one-token decode (moving average)
        self.beta = 0.5  # extra cost of one drafted token, in plain decodes (moving average)
        self._accepted, self._rejected = 1.0, 1.0  # decaying counts: p starts at 1/2
        self._wait = 0  # plain decodes before the next probe
        self._cooldown = COOLDOWN

    @property
    def acceptance(self) -> float:
        return self._accepted / (self._accepted + self._rejected)

    def best_size(self) -> int:
        """The draft size with the best expected tokens per time, 0 when none beats a plain
        decode by :data:`MARGIN`."""
        p = self.acceptance
        best, best_gain = 0, 1.0 + MARGIN
        tokens, term = 1.0, 1.0
        for d in range(1, self.maximum + 1):
            term *= p
            tokens += term
            gain = tokens / (1.0 + self.beta * d)
            if gain > best_gain:
                best, best_gain = d, gain
        return best

    def next_size(self) -> int:
        """Tokens to draft now, where the context offers a draft (0: decode plainly)."""
        if not self.guarded:
            return self.size
        if self.single_s is None:
            return 0
        size = self.best_size()
        if size:
            return size
        if self._wait > 0:
            self._wait -= 1
            return 0
        self._wait = self._cooldown
        return 1  # a probe

    def decoded(self, seconds: float) -> None:
        """A plain one-token decode took ``seconds``."""
        self.single_s = seconds if self.single_s is None else 0.7 * self.single_s + 0.3 * seconds

    def verified(self, drafted: int, accepted: int, seconds: float) -> None:
        """A verification of ``drafted`` tokens gave ``accepted`` + 1 tokens in ``seconds``."""
        if accepted == drafted:
            self.size = min(self.maximum, self.size * 2)
        elif accepted == 0:
            self.size = max(self.minimum, self.size // 2)
        self._accepted = DECAY * self._accepted + accepted
        self._rejected = DECAY * self._rejected + (1 if accepted < drafted else 0)
        if self.single_s is None:
            return
        extra = max(0.0, (seconds / self.single_s - 1.0) / drafted)
        self.beta = 0.7 * self.beta + 0.3 * extra
        if (accepted + 1) * self.single_s >= seconds:
            self._cooldown = COOLDOWN
        else:
            self._cooldown = min(MAX_COOLDOWN, self._cooldown * 2)
