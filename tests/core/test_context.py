from __future__ import annotations

import pytest

from app.core.context import MessageTooLongError, dropped_notice, fit_messages, reply_reserve
from app.core.types import ChatMessage


def count(messages) -> int:  # 1 token per word + 4 per message
    return sum(4 + len(m.content.split()) for m in messages)


def conversation(turns: int) -> list[ChatMessage]:
    msgs = [ChatMessage.system("be nice"), ChatMessage.user("first question " * 5)]
    for i in range(turns):
        msgs += [ChatMessage.assistant(f"answer {i} " * 10), ChatMessage.user(f"question {i} " * 5)]
    return msgs


def test_everything_fits() -> None:
    msgs = conversation(2)
    fitted = fit_messages(msgs, count, n_ctx=1000, reserve=100)
    assert fitted.messages == tuple(msgs)
    assert fitted.dropped == 0
    assert fitted.prompt_tokens == count(msgs)


def test_oldest_turns_dropped_keeping_system_first_user_and_newest() -> None:
    msgs = conversation(10)
    fitted = fit_messages(msgs, count, n_ctx=150, reserve=40)
    kept = fitted.messages
    assert kept[0] == msgs[0]  # system prompt
    assert kept[1] == msgs[1]  # first user message
    assert kept[-1] == msgs[-1]  # the question being answered
    assert fitted.dropped > 0
    assert len(kept) + fitted.dropped == len(msgs)
    assert fitted.prompt_tokens <= 150 - 40
    assert kept[2].role == "user"  # no orphan answer right after the first message
    # the kept history is the newest, contiguous
    tail = list(kept[2:])
    assert msgs[len(msgs) - len(tail) :] == tail


def test_single_message_too_large_is_a_clear_error() -> None:
    msgs = [ChatMessage.system("s"), ChatMessage.user("word " * 500)]
    with pytest.raises(MessageTooLongError, match="too long for the context window"):
        fit_messages(msgs, count, n_ctx=200, reserve=50)


def test_reply_reserve_bounds() -> None:
    assert reply_reserve(8192, 2048) == 2048
    assert reply_reserve(1024, 2048) == 512  # never more than half the window
    assert reply_reserve(8192, 10) == 256  # at least a useful answer


def test_notice_text() -> None:
    assert dropped_notice(1).startswith("1 earlier message was left out")
    assert dropped_notice(3).startswith("3 earlier messages were left out")
