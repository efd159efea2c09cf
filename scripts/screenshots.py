"""Render the README screenshots offscreen: the real window, controller, worker thread and store.

The answers come from a scripted demo engine (a replay of a realistic answer, streamed token by
token through the real worker), because the tiny test models speak random text. Usage:

    QT_QPA_PLATFORM=offscreen python scripts/screenshots.py docs
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from demo_app import MODEL_NAME, ScriptedEngine, demo_window, settle

if TYPE_CHECKING:
    from app.core.store import Conversation, Store

ANSWER_1 = """Here is a quick way to **read a CSV file** in Python and average one column:

```python
import csv
from statistics import mean


def average(path: str, column: str) -> float:
    with open(path, newline="", encoding="utf-8") as fh:
        return mean(float(row[column]) for row in csv.DictReader(fh) if row[column])


print(average("prices.csv", "price"))  # 12.75
```

1. `newline=""` lets the csv module handle line endings.
2. `DictReader` maps each row to a dict keyed by the header.
3. Empty cells are skipped before converting.

| library | speed | memory |
|---------|-------|--------|
| csv     | ok    | low    |
| pandas  | fast  | higher |
"""

ANSWER_2 = """With **pandas** it is one line once the file is loaded:

```python
import pandas as pd

df = pd.read_csv("prices.csv")
print(df["price"].mean())
```

For files larger than memory, read them in chunks with `chunksize=100_000` and keep a running
sum and count; the average is then `total / count`, which gives exactly the same result as
loading everything at once.
"""


class DemoEngine(ScriptedEngine):
    """Replays scripted answers in turn (implements app.core.ports.Engine)."""

    prompt_overhead = 900
    has_vision = True

    def __init__(self, answers: list[str]) -> None:
        super().__init__()
        self._answers = answers
        self._turn = 0

    def answer_for(self, messages, sampling) -> str:  # type: ignore[no-untyped-def]
        answer = self._answers[min(self._turn, len(self._answers) - 1)]
        self._turn += 1
        return answer


def main() -> int:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "docs")
    out.mkdir(parents=True, exist_ok=True)
    from PySide6.QtWidgets import QApplication

    from app.ui.theme import apply_theme

    app = QApplication.instance() or QApplication(sys.argv[:1])

    def seed(store: Store) -> None:
        for title in ("Explain mixture-of-experts routing", "Summarise the lease agreement"):
            store.create_conversation(title, MODEL_NAME)

    for theme in ("light", "dark"):
        apply_theme(app, theme)
        engine = DemoEngine([ANSWER_1, ANSWER_2])
        with demo_window(engine, (1200, 800), theme, seed) as demo:
            controller = demo.controller
            settle(0.5)
            done: list[int] = []
            controller.conversations.generation_finished.connect(lambda m, _s, done=done: done.append(m))
            controller.conversations.send("How do I read a CSV file in Python and average one column?")
            while not done:
                settle(0.05)
            controller.conversations.send("And with pandas, for a file too big for memory?")
            settle(0.9)  # mid-answer: the screenshot shows streaming
            demo.window.grab().save(str(out / f"screenshot-{theme}.png"))
            while len(done) < 2:
                settle(0.05)
    apply_theme(app, "light")
    shoot_presets_and_pins(out)
    sys.stdout.write(
        f"wrote {out}/screenshot-light.png, screenshot-dark.png, screenshot-instructions.png "
        "and screenshot-pinned.png\n"
    )
    return 0


def shoot_presets_and_pins(out: Path) -> None:
    """The "Instructions & preset" dialog over the window, and a sidebar with pinned chats."""
    from app.core.presets import ConversationOptions, Preset

    titles = [
        "Lease agreement: notice periods",
        "Trip to Lisbon in May",
        "Explain mixture-of-experts routing",
        "Quarterly report summary",
        "Regex for ISO dates",
        "Birthday speech ideas",
        "Compare two job offers",
    ]

    def seed(store: Store) -> list[Conversation]:
        made = [store.create_conversation(title, MODEL_NAME) for title in titles]
        for pinned in (made[0], made[3]):
            store.set_pinned(pinned.id, True)
        return made

    with demo_window(DemoEngine([ANSWER_1]), (1200, 800), seed=seed) as demo:
        window, made = demo.window, demo.seeded
        chats = demo.controller.conversations
        chats.save_preset(
            Preset("Legal reviewer", 0.3, 0.9, 0.05, "Quote the clause you rely on.", builtin=False)
        )
        settle(0.5)
        chats.open_conversation(made[0].id)
        chats.set_conversation_options(
            ConversationOptions(preset="Document analyst", sampling=(0.3, 0.9, 0.1))
        )
        window.sidebar.reload()
        settle(0.3)
        window.sidebar.grab().save(str(out / "screenshot-pinned.png"))
        dialog = window.open_instructions()
        settle(0.3)
        shot = window.grab()
        # the dialog is a window of its own offscreen: paint it over the main window's picture,
        # under a title bar, framed, below the button that opens it
        from PySide6.QtCore import QRect, Qt
        from PySide6.QtGui import QColor, QPainter

        left, top, bar = window.width() - dialog.width() - 24, 110, 30
        painter = QPainter(shot)
        frame = QRect(left - 1, top - bar - 1, dialog.width() + 2, dialog.height() + bar + 2)
        painter.fillRect(frame.adjusted(4, 4, 4, 4), QColor(0, 0, 0, 40))
        painter.fillRect(frame, QColor("#cfd3d8"))
        painter.fillRect(QRect(left, top - bar, dialog.width(), bar), QColor("#e9ebee"))
        painter.setPen(QColor("#1f2328"))
        painter.drawText(
            QRect(left, top - bar, dialog.width(), bar), Qt.AlignmentFlag.AlignCenter, dialog.windowTitle()
        )
        painter.drawPixmap(left, top, dialog.grab())
        painter.end()
        shot.save(str(out / "screenshot-instructions.png"))
        dialog.close()


if __name__ == "__main__":
    raise SystemExit(main())
