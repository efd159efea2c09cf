"""Small fakes implementing the core Protocols, for fast deterministic worker/controller tests.

The real engine is covered by tests/core/test_engine.py and the e2e tests; never let a fake be
the only proof that a feature works.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from app.core.engine import EngineError, LoadCancelled
from app.core.ports import EngineState
from app.core.types import ChatMessage, GenerationStats, LoadParams, ModelInfo, SamplingParams

if TYPE_CHECKING:
    import threading
    from collections.abc import Callable, Iterator, Sequence

    from app.core.turns import TurnRequest


class FakeEngine(EngineState):
    """Implements app.core.ports.Engine: one 'token' per character-group, 4 tokens per word."""

    def __init__(
        self,
        pieces: list[str] | None = None,
        fail_at: int | None = None,
        n_ctx: int = 4096,
        delay: float = 0.0,
        load_error: str | None = None,
    ) -> None:
        super().__init__()
        self.pieces = pieces if pieces is not None else ["Hel", "lo", " there", "!"]
        self.fail_at = fail_at
        self.n_ctx = n_ctx
        self.delay = delay
        self.load_error = load_error
        self.seen: list[list[ChatMessage]] = []
        self.continued: list[bool] = []  # per answer: was it Continue (the last message carried on)
        self.sampling: list[SamplingParams] = []  # per answer: the sampling it was asked with
        self.hold = False  # True: after its pieces the answer stays open until it is stopped

    def load(self, params: LoadParams, progress: Callable[[float], bool] | None = None) -> ModelInfo:
        for step in range(11):
            if progress is not None and not progress(step / 10):
                raise LoadCancelled()
            time.sleep(self.delay)
        if self.load_error:
            raise EngineError(self.load_error, "fake detail")
        self._info = ModelInfo(
            path=Path(params.model_path),
            name="Fake",
            architecture="llama4",
            n_ctx=min(params.n_ctx, self.n_ctx),
            n_ctx_train=10_485_760,
            n_params=1,
            size_bytes=1,
            has_chat_template=True,
        )
        return self._info

    def unload(self) -> None:
        self._info = None

    def count_tokens(self, text: str) -> int:
        return max(1, len(text) // 4)

    def count_chat_tokens(self, messages: Sequence[ChatMessage]) -> int:
        return sum(4 + self.count_tokens(m.content) for m in messages) + 3

    def stream_chat(
        self,
        messages: Sequence[ChatMessage],
        sampling: SamplingParams,
        cancel: threading.Event,
        on_prompt_progress: Callable[[int, int], None] | None = None,
        *,
        continue_last: bool = False,
    ) -> Iterator[str]:
        self.seen.append(list(messages))
        self.continued.append(continue_last)
        self.sampling.append(sampling)
        prompt = self.count_chat_tokens(messages)
        if on_prompt_progress:
            on_prompt_progress(prompt, prompt)
        finish = "stop"
        produced = 0
        for i, piece in enumerate(self.pieces[: sampling.max_tokens]):
            if cancel.is_set():
                finish = "cancelled"
                break
            if i == self.fail_at:
                raise RuntimeError("boom")
            time.sleep(self.delay)
            produced += 1
            yield piece
        self._stats = GenerationStats(
            prompt_tokens=prompt,
            prompt_tokens_evaluated=prompt,
            completion_tokens=produced,
            ttft_s=0.001,
            tokens_per_s=100.0,
            n_ctx=self._info.n_ctx if self._info else 0,
            context_used=prompt + produced,
            finish_reason=finish,
        )
        # hold: the answer stays open (the window can be looked at while it is written) until it
        # is stopped, or a test sets hold back to False (it then ends as it would have)
        waited = 0
        while self.hold and waited < 1000 and not cancel.wait(0.01):
            waited += 1


def turn_request(messages: Sequence[ChatMessage], *, max_tokens: int = 64) -> TurnRequest:
    """A TurnRequest for plain chat messages (a leading system message becomes the system prompt),
    for tests that drive the inference worker without a store."""
    from app.core.store import StoredMessage
    from app.core.turns import TurnRequest

    system = messages[0].content if messages and messages[0].role == "system" else ""
    rest = messages[1:] if system else messages
    stored = tuple(
        StoredMessage(i, 1, m.role, m.content, float(i), "", {}, {}, "complete")
        for i, m in enumerate(rest, start=1)
    )
    return TurnRequest(stored, {}, system, max_tokens)
