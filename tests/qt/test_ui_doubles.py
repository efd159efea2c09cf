"""Message and conversation records for the widget tests (the views take any object with these
fields, as they take the store's StoredMessage and Conversation).

Shared by the tests/qt/test_ui_*.py files (this module holds no tests itself). Tests of the window
use a real AppController around a FakeEngine instead (tests/qt/conftest.py: ``make_controller``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from app.core.types import GenerationStats

_ids = itertools.count(1)


@dataclass(frozen=True)
class Conv:
    id: int
    title: str
    created_at: str = "2025-01-01T10:00:00"
    updated_at: str = "2025-01-01T10:00:00"
    model: str = "tiny"
    pinned: bool = False


@dataclass(frozen=True)
class Msg:
    id: int
    conversation_id: int
    role: str
    content: str
    created_at: str = "2025-01-01T10:00:00"
    model: str = "Llama-4-Scout-17B-16E-Instruct Q4_K_M"
    sampling: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    status: str = "complete"


def msg(role: str, content: str, conversation_id: int = 1, **kw: Any) -> Msg:
    return Msg(next(_ids), conversation_id, role, content, **kw)


def stats(tps: float = 42.5, reason: str = "stop", tokens: int = 120) -> GenerationStats:
    return GenerationStats(completion_tokens=tokens, tokens_per_s=tps, finish_reason=reason, ttft_s=0.2)
