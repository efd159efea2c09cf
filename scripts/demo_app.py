"""What the screenshot scripts share: a scripted engine that streams realistic answers through the
real worker (the tiny test models speak random text), and the real window on a throw-away store.

Imported by scripts/screenshots.py and scripts/tree_screenshots.py (run as scripts, so this folder
is on sys.path and the repository root is put there by them).
"""

from __future__ import annotations

import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.core.ports import EngineState
from app.core.types import GenerationStats, ModelInfo

if TYPE_CHECKING:
    import threading
    from collections.abc import Callable, Iterator

    from app.core.store import Store
    from app.ui.main_window import MainWindow
    from app.workers.controller import AppController

MODEL_NAME = "Llama-4-Scout-17B-16E-Instruct-Q4_K_M"


class ScriptedEngine(EngineState):
    """Implements app.core.ports.Engine for a screenshot: a subclass picks the answer
    (``answer_for``); it is streamed in 4-character pieces, ``delay`` seconds apart, and the stats
    look like Scout's. ``prompt_overhead``: the tokens a chat costs beyond its messages."""

    prompt_overhead = 40
    has_vision = False

    def __init__(self) -> None:
        super().__init__()
        self.delay = 0.004

    def load(self, params, progress=None) -> ModelInfo:  # type: ignore[no-untyped-def]
        if progress:
            progress(1.0)
        self._info = ModelInfo(
            path=Path(params.model_path), name=MODEL_NAME, architecture="llama4", n_ctx=32768,
            n_ctx_train=10_485_760, n_params=107_770_000_000, size_bytes=65_360_000_000,
            has_chat_template=True, load_seconds=41.0, has_vision=self.has_vision,
        )  # fmt: skip
        return self._info

    def unload(self) -> None:
        self._info = None

    def count_tokens(self, text: str) -> int:
        return max(1, len(text) // 4)

    def count_chat_tokens(self, messages) -> int:  # type: ignore[no-untyped-def]
        return self.prompt_overhead + sum(self.count_tokens(m.content) for m in messages)

    def answer_for(self, messages, sampling) -> str:  # type: ignore[no-untyped-def]
        raise NotImplementedError

    def tokens_per_s(self, sampling) -> float:  # type: ignore[no-untyped-def]
        return 21.4

    def stream_chat(self, messages, sampling, cancel: threading.Event, on_prompt_progress=None):  # type: ignore[no-untyped-def]
        answer = self.answer_for(messages, sampling)
        pieces = [answer[i : i + 4] for i in range(0, len(answer), 4)]
        finish = "stop"
        for piece in pieces:
            if cancel.is_set():
                finish = "cancelled"
                break
            time.sleep(self.delay)
            yield piece
        prompt = self.count_chat_tokens(messages)
        self._stats = GenerationStats(
            prompt_tokens=prompt, prompt_tokens_evaluated=40, completion_tokens=len(pieces), ttft_s=0.62,
            tokens_per_s=self.tokens_per_s(sampling), n_ctx=32768, context_used=prompt + len(pieces),
            finish_reason=finish,
        )  # fmt: skip


def settle(seconds: float) -> None:
    """Let the Qt application run for ``seconds``."""
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        app.processEvents()
        time.sleep(0.005)


def until(condition: Callable[[], bool], seconds: float = 30) -> None:
    """Let the Qt application run until ``condition()`` holds; RuntimeError after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError("the scripted conversation did not get there")
        settle(0.02)


@dataclass
class Demo:
    store: Store
    controller: AppController
    window: MainWindow
    seeded: Any  # what ``seed`` returned


@contextmanager
def demo_window(
    engine: ScriptedEngine,
    size: tuple[int, int],
    theme: str = "light",
    seed: Callable[[Store], Any] | None = None,
) -> Iterator[Demo]:
    """The real window, controllers and worker thread on a fresh store in a temporary folder
    (``seed(store)`` fills it first), with ``engine``'s model loaded; shut down and closed after."""
    from app.config import AppPaths, Settings
    from app.core.store import Store
    from app.ui.main_window import MainWindow
    from app.workers.controller import AppController

    with tempfile.TemporaryDirectory() as tmp:
        paths = AppPaths.under(Path(tmp)).ensure()
        store = Store(paths.database)
        seeded = seed(store) if seed is not None else None
        controller = AppController(store, paths, Settings(theme=theme), lambda: engine)
        window = MainWindow(controller)
        window.resize(*size)
        window.show()
        controller.models.load_model(f"/models/{MODEL_NAME}.gguf")
        try:
            yield Demo(store, controller, window, seeded)
        finally:
            controller.shutdown()
            window.close()
            store.close()
