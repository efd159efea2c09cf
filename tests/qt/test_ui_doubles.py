"""A controller double with AppController's signals and commands, plus message/conversation records.

Shared by the tests/qt/test_ui_*.py files (this module holds no tests itself).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Signal

from app.config import Settings
from app.core.types import GenerationStats, ModelInfo

_ids = itertools.count(1)


@dataclass(frozen=True)
class Conv:
    id: int
    title: str
    created_at: str = "2025-01-01T10:00:00"
    updated_at: str = "2025-01-01T10:00:00"
    model: str = "tiny"


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


def model_info(name: str = "Llama-4-Scout-17B-16E-Instruct Q4_K_M") -> ModelInfo:
    return ModelInfo(
        path=Path("/models/scout.gguf"),
        name=name,
        architecture="llama4",
        n_ctx=8192,
        n_ctx_train=10_485_760,
        n_params=108_000_000_000,
        size_bytes=65_000_000_000,
        has_chat_template=True,
        load_seconds=3.2,
    )


def stats(tps: float = 42.5, reason: str = "stop", tokens: int = 120) -> GenerationStats:
    return GenerationStats(completion_tokens=tokens, tokens_per_s=tps, finish_reason=reason, ttft_s=0.2)


class FakeController(QObject):
    """AppController's contract: same signals, commands recorded in ``calls``."""

    model_load_started = Signal(str)
    model_load_progress = Signal(float)
    model_loaded = Signal(object)
    model_load_failed = Signal(str, str)
    conversations_changed = Signal()
    conversation_updated = Signal(object)
    conversation_opened = Signal(int, list)
    message_added = Signal(object)
    message_removed = Signal(int)
    tokens_streamed = Signal(int, str)
    generation_finished = Signal(int, object)
    generation_failed = Signal(int, str, str)
    prompt_progress = Signal(float)
    context_changed = Signal(int, int)
    busy_changed = Signal(bool)
    error_occurred = Signal(str)

    def __init__(self, conversations: list[Conv] | None = None) -> None:
        super().__init__()
        self.calls: list[tuple[Any, ...]] = []
        self.convs = list(conversations or [])
        self._settings = Settings()
        self.current_conversation_id: int | None = None
        self.model_info: ModelInfo | None = None
        self.is_busy = False

    @property
    def settings(self) -> Settings:
        return self._settings

    def update_settings(self, settings: Settings) -> None:
        self.calls.append(("update_settings", settings))
        self._settings = settings

    def conversations(self, filter_text: str = "") -> list[Conv]:
        needle = filter_text.lower()
        return [c for c in self.convs if needle in c.title.lower()]

    def __getattr__(self, name: str) -> Any:
        commands = {
            "load_model",
            "cancel_load",
            "new_conversation",
            "open_conversation",
            "rename_conversation",
            "delete_conversation",
            "send",
            "stop",
            "regenerate",
            "edit_last_user_message",
        }
        if name in commands:
            return lambda *args: self.calls.append((name, *args))
        raise AttributeError(name)

    def called(self, name: str) -> list[tuple[Any, ...]]:
        return [c[1:] for c in self.calls if c[0] == name]

    # helpers for tests
    def load(self, info: ModelInfo | None = None) -> ModelInfo:
        self.model_info = info or model_info()
        self.model_loaded.emit(self.model_info)
        return self.model_info
