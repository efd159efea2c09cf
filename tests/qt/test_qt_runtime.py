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


def test_garbage_is_collected_on_the_gui_thread_while_a_session_runs(qtbot, make_controller) -> None:
    import gc
    import threading

    assert gc.isenabled()
    controller = make_controller()
    assert not gc.isenabled()  # no worker thread can start a collection now
    finalized_on_main: list[bool] = []

    class Cycle:
        def __init__(self) -> None:
            self.me = self

        def __del__(self) -> None:
            finalized_on_main.append(threading.current_thread() is threading.main_thread())

    Cycle()
    keep = [[] for _ in range(gc.get_threshold()[0] * 2)]  # cross the generation-0 threshold
    qtbot.waitUntil(lambda: bool(finalized_on_main), timeout=5000)
    assert finalized_on_main == [True]
    del keep
    controller.shutdown()
    assert gc.isenabled()
