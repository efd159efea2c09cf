"""Garbage collection on the GUI thread only (the approach qutebrowser takes).

Python's cyclic GC runs in whichever thread happens to allocate when a threshold is crossed. If
that is a worker thread (the inference or ingest thread) and the cycle holds a PySide object, Qt
objects are finalized off the GUI thread, which can crash the process. While a session runs,
automatic collection is switched off and a GUI-thread timer collects instead, with the same
generation thresholds.
"""

from __future__ import annotations

import gc
import logging

from PySide6.QtCore import QObject, QTimer, Slot

log = logging.getLogger(__name__)

_active = 0  # sessions running; automatic GC is off while any is
_was_enabled = True


class MainThreadGarbageCollector(QObject):
    """Create and start on the GUI thread; ``stop()`` when the session ends."""

    def __init__(self, parent: QObject | None = None, interval_ms: int = 250) -> None:
        super().__init__(parent)
        self._timer = QTimer(self)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self._on_timer_timeout)
        self._running = False

    def start(self) -> None:
        global _active, _was_enabled
        if self._running:
            return
        if _active == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _active += 1
        self._running = True
        self._timer.start()

    def stop(self) -> None:
        global _active
        if not self._running:
            return
        self._timer.stop()
        self._running = False
        _active -= 1
        gc.collect()
        if _active == 0 and _was_enabled:
            gc.enable()

    @Slot()
    def _on_timer_timeout(self) -> None:
        counts, thresholds = gc.get_count(), gc.get_threshold()
        generation = -1
        for gen in (0, 1, 2):
            if counts[gen] > thresholds[gen]:
                generation = gen
        if generation >= 0:
            gc.collect(generation)
