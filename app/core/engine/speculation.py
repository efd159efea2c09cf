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
more, shortens the drafts after rejections and lengthens them after acceptances.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable

    from app.core.types import SamplingParams

SPECULATION_CHOICES = ("auto", "on", "off")
MAX_NGRAM = 3  # the longest suffix looked up
MIN_NGRAM = 2  # a single repeated token predicts too little to be worth a batch
MAX_DRAFT = 8  # drafted tokens per batch (the batch requests at most MAX_DRAFT + 1 logits rows)


@dataclass
class SpeculationStats:
    """What speculation did for one answer."""

    drafted: int = 0  # draft tokens sent for verification
    accepted: int = 0  # of them, the ones the sampler picked too
    batches: int = 0  # verification batches
    max_logit_rows: int = 0  # the most logits rows one batch requested

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
    """How many tokens to draft next: starts at ``initial``, doubles (up to :data:`MAX_DRAFT`)
    after a fully accepted draft, halves after a draft rejected at its first token (down to
    ``minimum``)."""

    def __init__(self, initial: int = 4, minimum: int = 2, maximum: int = MAX_DRAFT) -> None:
        self.size, self.minimum, self.maximum = initial, minimum, maximum

    def next_size(self) -> int:
        return self.size

    def update(self, drafted: int, accepted: int) -> None:
        if accepted == drafted:
            self.size = min(self.maximum, self.size * 2)
        elif accepted == 0:
            self.size = max(self.minimum, self.size // 2)



def auto_enabled(sampling: SamplingParams) -> bool:
    """Whether "auto" speculates for an answer with these sampling settings."""
    del sampling
    return True
