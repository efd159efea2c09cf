"""Turn a conversation into the messages sent to the model, within the context budget.

This module is pure: token counting is passed in (the engine's tokenizer on the worker thread).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from app.core.errors import UserError
from app.core.types import ChatMessage, Role

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

MIN_REPLY_RESERVE = 256


@dataclass(frozen=True)
class FittedContext:
    messages: tuple[ChatMessage, ...]
    prompt_tokens: int
    dropped: int  # history messages left out (oldest first)


class MessageTooLongError(UserError):
    """``can_grow``: whether a larger context size can be asked for (False when the context is
    already the model's maximum: the message then does not advise it)."""

    def __init__(self, needed: int, available: int, *, can_grow: bool = True) -> None:
        advice = (
            "Shorten it, or raise the context size in Settings."
            if can_grow
            else "The context is already the largest this model allows: shorten it."
        )
        super().__init__(
            f"This message is too long for the context window: it needs about {needed:,} tokens, but only "
            f"{available:,} are available with the current context size. {advice}"
        )
        self.can_grow = can_grow
        self.needed = needed
        self.available = available


def reply_reserve(n_ctx: int, max_tokens: int) -> int:
    """Room kept free for the answer: the user's max_tokens, but never more than half the window."""
    return max(min(MIN_REPLY_RESERVE, n_ctx // 4), min(max_tokens, n_ctx // 2))


def fit_messages(
    messages: Sequence[ChatMessage],
    count_tokens: Callable[[Sequence[ChatMessage]], int],
    n_ctx: int,
    reserve: int,
) -> FittedContext:
    """Keep the system prompt, the first user message and the newest turns that fit.

    Drops the oldest history messages (after the first user message) until the rendered prompt plus
    ``reserve`` fits in ``n_ctx``. Raises MessageTooLongError when even the system prompt and the
    newest message alone do not fit.
    """
    budget = n_ctx - reserve
    msgs = list(messages)
    total = count_tokens(msgs)
    if total <= budget:
        return FittedContext(tuple(msgs), total, 0)

    head: list[ChatMessage] = []
    rest = msgs
    if rest and rest[0].role == Role.SYSTEM.value:
        head.append(rest[0])
        rest = rest[1:]
    last = rest[-1:]  # the message being answered always goes in
    history = rest[:-1]
    first_user = history[:1] if history and history[0].role == Role.USER.value else []
    middle = history[len(first_user) :]

    minimal = head + last
    needed = count_tokens(minimal)
    if needed > budget:
        raise MessageTooLongError(needed, budget)

    with_first = head + first_user + last
    keep_first = bool(first_user) and count_tokens(with_first) <= budget
    base = head + (first_user if keep_first else [])

    # Binary search the largest suffix of `middle` that fits (token counts grow with the suffix).
    lo, hi = 0, len(middle)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count_tokens(base + middle[len(middle) - mid :] + last) <= budget:
            lo = mid
        else:
            hi = mid - 1
    kept_middle = middle[len(middle) - lo :] if lo else []
    # Don't start the kept history with an orphan assistant reply.
    if kept_middle and kept_middle[0].role == Role.ASSISTANT.value:
        kept_middle = kept_middle[1:]
    final = base + kept_middle + last
    dropped = len(history) - len(kept_middle) - (1 if keep_first else 0)
    return FittedContext(tuple(final), count_tokens(final), dropped)


def dropped_notice(dropped: int) -> str:
    noun = "message was" if dropped == 1 else "messages were"
    return (
        f"{dropped} earlier {noun} left out of what the model sees, to make room in its context window. "
        "The first message and the most recent ones are kept."
    )
