"""The GUI thread's responsiveness, as the benchmarks measure it: a precise 5 ms QTimer heartbeat on the
GUI thread, and how late each tick fires while the event loop runs."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable


def gui_stalls(until: Callable[[], bool], period_ms: int = 5) -> list[float]:
    """Run the Qt event loop until ``until()`` and return how late (ms beyond its ``period_ms``
    period) each heartbeat tick fired."""
    from PySide6.QtCore import QCoreApplication, QElapsedTimer, Qt, QTimer

    lateness: list[float] = []
    clock = QElapsedTimer()
    last = [0.0]

    def beat() -> None:
        now = clock.nsecsElapsed() / 1e6
        lateness.append(max(0.0, now - last[0] - period_ms))
        last[0] = now

    heartbeat = QTimer()
    heartbeat.setTimerType(Qt.TimerType.PreciseTimer)
    heartbeat.setInterval(period_ms)
    heartbeat.timeout.connect(beat)
    clock.start()
    heartbeat.start()
    while not until():
        QCoreApplication.processEvents()
        time.sleep(0.0005)
    heartbeat.stop()
    return lateness
