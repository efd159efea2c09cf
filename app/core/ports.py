"""Interfaces between the layers. Workers depend on these, not on llama_cpp."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import threading
    from collections.abc import Callable, Iterator, Sequence
    from pathlib import Path

    from app.core.types import ChatMessage, LoadParams, ModelInfo, SamplingParams

from app.core.types import GenerationStats

ProgressCallback = "Callable[[float], bool]"


class Engine(Protocol):
    """What the inference worker needs from a model runtime (LlamaEngine, or a FakeEngine in tests)."""

    @property
    def model_info(self) -> ModelInfo | None: ...

    @property
    def last_stats(self) -> GenerationStats: ...

    def load(self, params: LoadParams, progress: Callable[[float], bool] | None = None) -> ModelInfo:
        """Load a model. ``progress`` gets 0..1 and returns False to cancel."""
        ...

    def unload(self) -> None: ...

    def count_tokens(self, text: str) -> int: ...

    def count_chat_tokens(self, messages: Sequence[ChatMessage]) -> int:
        """Tokens of the whole rendered prompt (chat template applied, generation prompt added)."""
        ...

    def stream_chat(
        self,
        messages: Sequence[ChatMessage],
        sampling: SamplingParams,
        cancel: threading.Event,
        on_prompt_progress: Callable[[int, int], None] | None = None,
        *,
        continue_last: bool = False,
    ) -> Iterator[str]:
        """Yield text pieces of the answer; afterwards ``last_stats`` describes the run.

        ``continue_last``: the last message is an unfinished answer to carry on (Continue): the
        prompt ends with its text, without the end of its turn, and the pieces continue it."""
        ...


class EngineState:
    """The part of ``Engine`` every implementation keeps alike: the loaded model's info (``_info``,
    None when no model is loaded) and the last answer's stats (``_stats``), read as properties."""

    def __init__(self) -> None:
        self._info: ModelInfo | None = None
        self._stats = GenerationStats()

    @property
    def model_info(self) -> ModelInfo | None:
        return self._info

    @property
    def last_stats(self) -> GenerationStats:
        return self._stats


@runtime_checkable
class SavesKVState(Protocol):
    """An engine that can keep a conversation's KV cache on disk (LlamaEngine; not every fake)."""

    def state_key(self) -> str:
        """What a saved state is valid for (model file and cache shape): another key means stale."""
        ...

    def save_state(self, path: Path) -> int:
        """Write the KV cache to ``path``; return the tokens saved."""
        ...

    def load_state(self, path: Path) -> int:
        """Restore a state written by ``save_state``; return the tokens restored (0: none)."""
        ...


@runtime_checkable
class TriesFiles(Protocol):
    """An engine that can open a model file in a throw-away process first (EngineProxy), so a
    file that makes llama.cpp abort takes down that process, not the engine serving the chat."""

    def try_file(self, path: Path) -> float:
        """Header check, vocab-only load and dry run of ``path`` in a short-lived process; the
        seconds it took. Raises the engine's errors (a crash: ``TrialCrashedError``)."""
        ...
