"""Uncaught exceptions reach the window as a non-modal error banner, on the GUI thread."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import pytest
from PySide6.QtCore import QObject, QTimer

from app import excepthooks
from app.ui.main_window import MainWindow
from app.workers.error_relay import install_error_relay

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from app.workers.controller import AppController


@pytest.fixture
def window(qtbot: Any, make_controller: Callable[[], AppController]) -> Iterator[MainWindow]:
    window = MainWindow(make_controller())
    qtbot.addWidget(window)
    install_error_relay(window).error_reported.connect(window.show_error)
    window.show()
    yield window
    excepthooks.uninstall()


class Receiver(QObject):
    """Records on which thread the relay's signal is delivered."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[str] = []

    def on_error_reported(self, _message: str, _detail: str) -> None:
        self.threads.append(threading.current_thread().name)


def test_an_exception_in_a_worker_thread_shows_the_error_banner(
    qtbot: Any, window: MainWindow, uncaught_exceptions: list[str]
) -> None:
    receiver = Receiver()
    relays = [c for c in window.children() if type(c).__name__ == "ErrorRelay"]
    assert len(relays) == 1
    relays[0].error_reported.connect(receiver.on_error_reported)

    def run() -> None:
        raise PermissionError("no access to the models folder")

    thread = threading.Thread(target=run, name="ingest-helper")
    thread.start()
    thread.join()
    qtbot.waitUntil(window.error_banner.isVisible)
    assert window.error_banner.text() == (
        "Unexpected error in thread ingest-helper (PermissionError: no access to the models folder). "
        "The details are in the log; please report it."
    )
    assert "Traceback" in window.error_banner.label.toolTip()
    assert receiver.threads == ["MainThread"]  # queued to the GUI thread, never called on the worker's
    assert len(uncaught_exceptions) == 1


@pytest.mark.qt_no_exception_capture
def test_an_exception_in_a_slot_shows_the_error_banner(
    qtbot: Any, window: MainWindow, uncaught_exceptions: list[str]
) -> None:
    def slot() -> None:
        raise ValueError("a slot went wrong")

    QTimer.singleShot(0, slot)
    qtbot.waitUntil(window.error_banner.isVisible)
    assert window.error_banner.text().startswith("Unexpected error (ValueError: a slot went wrong).")
    assert window.isVisible()  # the app carries on
    assert len(uncaught_exceptions) == 1
