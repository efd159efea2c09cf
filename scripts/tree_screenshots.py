"""Render the screenshots of the conversation tree offscreen: the branch control ‹ 2/3 ›, two
messages queued under an answer being written, and a comparison of two presets side by side.

The real window, controllers, worker thread and store; the answers come from a scripted engine
(the tiny test models write random text). Usage:

    QT_QPA_PLATFORM=offscreen python scripts/tree_screenshots.py docs
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from demo_app import ScriptedEngine, demo_window, settle, until

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


class TreeDemoEngine(ScriptedEngine):
    """Replays scripted answers chosen by the question and the temperature (implements
    app.core.ports.Engine). ``delay``: seconds per 4-character piece."""

    def __init__(self) -> None:
        super().__init__()
        self._turns: dict[str, int] = {}

    def answer_for(self, messages, sampling) -> str:  # type: ignore[no-untyped-def]
        question = next(m.content for m in reversed(messages) if m.role == "user")
        if question == COMPARE_QUESTION:
            return COMPARE_ANSWERS.get(round(sampling.temperature, 2), COMPARE_ANSWERS[0.6])
        answers = ANSWERS.get(question, ["That depends on what you need it for."])
        turn = self._turns.get(question, 0)
        self._turns[question] = turn + 1
        return answers[min(turn, len(answers) - 1)]

    def tokens_per_s(self, sampling) -> float:  # type: ignore[no-untyped-def]
        return 21.4 if sampling.temperature >= 0.5 else 22.1


def main() -> int:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "docs")
    out.mkdir(parents=True, exist_ok=True)
    from PySide6.QtWidgets import QApplication

    from app.ui.theme import apply_theme
    from app.workers.conversations import CompareSide

    app = QApplication.instance() or QApplication(sys.argv[:1])
    apply_theme(app, "light")

    engine = TreeDemoEngine()
    with demo_window(engine, (1100, 680)) as demo:
        controller, window = demo.controller, demo.window
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

    sys.stdout.write(f"wrote {out}/screenshot-branches.png, screenshot-queue.png, screenshot-compare.png\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
