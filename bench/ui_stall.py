"""GUI event-loop stalls while the window streams a long Markdown answer.

The real pipeline — inference worker on its QThread → AppController → MainWindow (chat view with
Markdown, Pygments-highlighted code blocks) — streams a ~4,000-token answer full of code blocks,
lists and tables. The engine is a stand-in that emits tokens at a fixed rate (a CPU-bound model
would compete with the GUI for the two cores and measure the machine, not the UI). A 5 ms heartbeat
QTimer on the GUI thread records how late each tick fires: a stall is the lateness beyond the
period. Baseline: the same heartbeat with an idle window, measured in the same run.

    python -m bench.ui_stall [--tokens 4000] [--rate 150]

Target: p99 stall <= 33 ms (two frames at 60 Hz) while streaming.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.heartbeat import gui_stalls

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

CHUNK = """
## Part {n}: reading and averaging a column

Here is **step {n}** of the walkthrough, with `inline code`, a [link](https://example.org) and
some *emphasis*. The function below reads the file and returns the mean of one column.

```python
import csv
from statistics import mean


def average_{n}(path: str, column: str) -> float:
    with open(path, newline="", encoding="utf-8") as fh:
        rows = csv.DictReader(fh)
        return mean(float(row[column]) for row in rows if row[column])
```

1. Open the file with `newline=""` so the csv module handles line endings.
2. `DictReader` maps each row to a dict keyed by the header.
3. Skip empty cells before converting.

| library | speed | memory |
|---------|-------|--------|
| csv     | ok    | low    |
| pandas  | fast  | higher |

> Tip: pass `encoding="utf-8-sig"` when the file starts with a byte-order mark.
"""


def markdown_answer(tokens: int) -> list[str]:
    text = ""
    n = 1
    while len(text) < tokens * 4:
        text += CHUNK.format(n=n)
        n += 1
    text = text[: tokens * 4]
    return [text[i : i + 4] for i in range(0, len(text), 4)]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=4000)
    parser.add_argument("--rate", type=float, default=150.0, help="tokens per second from the engine")
    args = parser.parse_args()

    from PySide6.QtWidgets import QApplication

    from app.config import AppPaths, Settings
    from app.core.store import Store
    from app.ui.main_window import MainWindow
    from app.ui.theme import apply_theme
    from app.workers.controller import AppController
    from tests.fakes import FakeEngine

    app = QApplication.instance() or QApplication(sys.argv[:1])
    apply_theme(app, "light")
    with tempfile.TemporaryDirectory() as tmp:
        paths = AppPaths.under(Path(tmp)).ensure()
        store = Store(paths.database)
        pieces = markdown_answer(args.tokens)
        engine = FakeEngine(pieces, delay=1.0 / args.rate)
        controller = AppController(store, paths, Settings(max_tokens=args.tokens + 10), lambda: engine)
        window = MainWindow(controller)
        window.resize(1200, 820)
        window.show()

        controller.models.load_model("stand-in.gguf")
        idle_end = time.monotonic() + 1.5
        idle = gui_stalls(lambda: time.monotonic() > idle_end)  # baseline: idle window, same run

        finished = [False]
        controller.conversations.generation_finished.connect(lambda *_: finished.__setitem__(0, True))
        controller.conversations.send("Show me, in many parts, how to read a CSV file and average a column.")
        started = time.monotonic()
        streaming = gui_stalls(lambda: finished[0] or time.monotonic() - started >= 300)
        elapsed = time.monotonic() - started
        rendered = window.chat_view.last_message("assistant")
        controller.shutdown()
        window.close()
        store.close()

    print(f"streamed {len(pieces)} tokens of Markdown in {elapsed:.1f} s ({len(pieces) / elapsed:.0f} tok/s)")
    print(f"rendered message widget present: {rendered is not None}")
    for name, data in (("idle window (baseline)", idle), ("while streaming", streaming)):
        print(
            f"{name:24s} ticks {len(data):6d}  p50 {statistics.median(data):5.1f} ms  "
            f"p99 {percentile(data, 99):5.1f} ms  max {max(data):6.1f} ms"
        )
    p99 = percentile(streaming, 99)
    print(
        f"p99 stall while streaming: {p99:.1f} ms (target <= 33 ms); vs idle p99 ratio "
        f"{p99 / max(0.1, percentile(idle, 99)):.1f}x"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
