"""Guards against known-bad Qt bindings."""

from __future__ import annotations

import sys

from PySide6.QtCore import QObject, Signal


class _Emitter(QObject):
    flag = Signal(bool)


def test_bool_signals_keep_python_refcounts(qapp) -> None:
    """PySide6 6.12.0 drops a reference to True/False on every Signal(bool).emit(); on Python < 3.12
    (bools not immortal) a long session then aborts with "deallocating True or False"."""
    emitter = _Emitter()
    before = sys.getrefcount(True), sys.getrefcount(False)
    for _ in range(50):
        emitter.flag.emit(True)
        emitter.flag.emit(False)
    after = sys.getrefcount(True), sys.getrefcount(False)
    assert after[0] >= before[0] - 5
    assert after[1] >= before[1] - 5
