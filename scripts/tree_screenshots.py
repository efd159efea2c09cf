"""Render the screenshots of the conversation tree offscreen: the branch control ‹ 2/3 ›, two
messages queued under an answer being written, and a comparison of two presets side by side.

The real window, controllers, worker thread and store; the answers come from a scripted engine
(the tiny test models write random text). Usage:

    QT_QPA_PLATFORM=offscreen python scripts/tree_screenshots.py docs
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.core.types import GenerationStats, ModelInfo

if TYPE_CHECKING:
    import threading
    from collections.abc import Callable

MODEL_NAME = "Llama-4-Scout-17B-16E-Instruct-Q4_K_M"

# (question, temperature) → answer; a question with several answers gives them in turn
ANSWERS: dict[str, list[str]] = {
    "Where does space begin?": [
        "There is no physical boundary. The **Kármán line** at 100 km is the usual convention: above "
        "it, a wing would have to fly at orbital speed to get any lift.",
        "Most agencies use the Kármán line (100 km); the US Air Force and NASA give astronaut wings "
        "from **80 km** (50 miles).",
        "Somewhere between 80 and 100 km, depending on who you ask; the atmosphere thins out "
        "gradually and never quite ends.",
    ],
    "Why exactly 100 km?": [
        "It is a round number close to where aerodynamic flight stops working: at that height a "
        "plane would need orbital speed to stay up, so it is no longer a plane.",
    ],
    "Explain mixture-of-experts routing in two sentences.": [
        "Mixture-of-experts layers send each token to a few of many expert networks. A small "
        "**router** scores the experts for every token and keeps the best one (Scout uses 16 "
        "experts, one routed plus a shared expert), so only a fraction of the weights work on "
        "each token.\n\nThat is why Scout has 109B parameters but runs at the cost of about 17B "
        "per token, and why its experts can sit in system RAM while the rest stays on the GPU.",
    ],
}
COMPARE_QUESTION = "Suggest a name for a lighthouse-keeping robot."
COMPARE_ANSWERS = {
    0.6: "How about **Beacon**? Other ideas:\n\n- *Lumen*, for the light it keeps\n- *Keeper-7*, "
    "a nod to the long line of human keepers\n- *Fresnel*, after the lens",
    0.2: "**Beacon**: short, clear, and it says what the robot does.",
}


class TreeDemoEngine:
    """Replays scripted answers chosen by the question and the temperature (implements
    app.core.ports.Engine). ``delay``: seconds per 4-character piece."""

    def __init__(self) -> None:
        self._info: ModelInfo | None = None
        self._stats = GenerationStats()
        self._turns: dict[str, int] = {}
        self.delay = 0.004

    @property
    def model_info(self) -> ModelInfo | None:
        return self._info

    @property
    def last_stats(self) -> GenerationStats:
        return self._stats

    def load(self, params, progress=None) -> ModelInfo:  # type: ignore[no-untyped-def]
        if progress:
            progress(1.0)
        self._info = ModelInfo(
            path=Path(params.model_path), name=MODEL_NAME, architecture="llama4", n_ctx=32768,
            n_ctx_train=10_485_760, n_params=107_770_000_000, size_bytes=65_360_000_000,
            has_chat_template=True, load_seconds=41.0,
        )  # fmt: skip
        return self._info

    def unload(self) -> None:
        self._info = None

    def count_tokens(self, text: str) -> int:
        return max(1, len(text) // 4)

    def count_chat_tokens(self, messages) -> int:  # type: ignore[no-untyped-def]
        return 40 + sum(self.count_tokens(m.content) for m in messages)

    def _answer(self, question: str, temperature: float) -> str:
        if question == COMPARE_QUESTION:
            return COMPARE_ANSWERS.get(round(temperature, 2), COMPARE_ANSWERS[0.6])
        answers = ANSWERS.get(question, ["That depends on what you need it for."])
        turn = self._turns.get(question, 0)
        self._turns[question] = turn + 1
        return answers[min(turn, len(answers) - 1)]

    def stream_chat(self, messages, sampling, cancel: threading.Event, on_prompt_progress=None):  # type: ignore[no-untyped-def]
        question = next(m.content for m in reversed(messages) if m.role == "user")
        answer = self._answer(question, sampling.temperature)
        pieces = [answer[i : i + 4] for i in range(0, len(answer), 4)]
        finish = "stop"
        for piece in pieces:
            if cancel.is_set():
                finish = "cancelled"
                break
            time.sleep(self.delay)
            yield piece
        prompt = self.count_chat_tokens(messages)
        tps = 21.4 if sampling.temperature >= 0.5 else 22.1
        self._stats = GenerationStats(
            prompt_tokens=prompt, prompt_tokens_evaluated=40, completion_tokens=len(pieces), ttft_s=0.62,
            tokens_per_s=tps, n_ctx=32768, context_used=prompt + len(pieces), finish_reason=finish,
        )  # fmt: skip


def main() -> int:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "docs")
    out.mkdir(parents=True, exist_ok=True)
    from PySide6.QtWidgets import QApplication

    from app.config import AppPaths, Settings
    from app.core.store import Store
    from app.ui.main_window import MainWindow
    from app.ui.theme import apply_theme
    from app.workers.controller import AppController
    from app.workers.conversations import CompareSide

    app = QApplication.instance() or QApplication(sys.argv[:1])
    apply_theme(app, "light")

    def settle(seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            app.processEvents()
            time.sleep(0.005)

    def until(condition: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 30
        while not condition():
            if time.monotonic() > deadline:
                raise RuntimeError("the scripted conversation did not get there")
            settle(0.02)

    with tempfile.TemporaryDirectory() as tmp:
        paths = AppPaths.under(Path(tmp)).ensure()
        store = Store(paths.database)
        engine = TreeDemoEngine()
        controller = AppController(store, paths, Settings(theme="light"), lambda: engine)
        window = MainWindow(controller)
        window.resize(1100, 680)
        window.show()
        controller.models.load_model(f"/models/{MODEL_NAME}.gguf")
        until(lambda: controller.models.model_info is not None)
        chats = controller.conversations
        idle = lambda: not chats.is_busy  # noqa: E731 - a condition for until()

        # 1. branches: an answer regenerated twice, the second of three shown, then a follow-up
        chats.send("Where does space begin?")
        until(idle)
        for _ in range(2):
            chats.regenerate()
            until(idle)
        answer = chats.messages()[-1].id
        chats.switch_branch(answer, -1)
        chats.send("Why exactly 100 km?")
        until(idle)
        settle(0.3)
        window.grab().save(str(out / "screenshot-branches.png"))

        # 2. the queue: two messages wait under the answer being written
        chats.new_conversation()
        engine.delay = 0.05
        chats.send("Explain mixture-of-experts routing in two sentences.")
        until(lambda: bool(chats.messages()) and len(chats.messages()[-1].content) > 120)
        chats.send("How much memory does that save compared with a dense 109B model?")
        chats.send("Give me a small PyTorch sketch of a top-1 router.")
        window.composer.set_text("And how does the shared expert fit in?")
        settle(1.5)
        window.grab().save(str(out / "screenshot-queue.png"))
        window.composer.set_text("")
        chats.stop()
        until(idle)

        # 3. compare: one message, Default and Precise side by side
        engine.delay = 0.004
        chats.new_conversation()
        chats.compare(COMPARE_QUESTION, CompareSide("Default"), CompareSide("Precise"))
        until(lambda: idle() and chats.compare_run is not None and chats.compare_run.done)
        settle(0.3)
        window.grab().save(str(out / "screenshot-compare.png"))

        controller.shutdown()
        window.close()
        store.close()
    sys.stdout.write(f"wrote {out}/screenshot-branches.png, screenshot-queue.png, screenshot-compare.png\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
