"""app.excepthooks: uncaught exceptions are logged, surfaced through ``notify`` and handed on (no Qt)."""

from __future__ import annotations

import logging
import sys
import threading
from typing import TYPE_CHECKING

import pytest

from app import excepthooks

if TYPE_CHECKING:
    from collections.abc import Iterator

# sys.excepthook is called directly here: pytest-qt must not take that for an error in the Qt event loop.
pytestmark = pytest.mark.qt_no_exception_capture


@pytest.fixture
def notes() -> Iterator[list[tuple[str, str]]]:
    seen: list[tuple[str, str]] = []
    excepthooks.install(lambda message, detail: seen.append((message, detail)))
    yield seen
    excepthooks.uninstall()


def _raise_and_hook(exc: BaseException) -> None:
    try:
        raise exc
    except BaseException as caught:  # noqa: BLE001 - handed to the hook as Python would
        sys.excepthook(type(caught), caught, caught.__traceback__)


def test_an_exception_in_a_thread_is_logged_surfaced_and_handed_on(
    notes: list[tuple[str, str]], uncaught_exceptions: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    def run() -> None:
        raise OSError("disk on fire")

    thread = threading.Thread(target=run, name="worker-7")
    with caplog.at_level(logging.CRITICAL, logger="app.excepthooks"):
        thread.start()
        thread.join()
    assert [r.getMessage() for r in caplog.records] == ["uncaught exception in thread worker-7"]
    assert caplog.records[0].exc_info is not None
    ((message, detail),) = notes
    assert message == (
        "Unexpected error in thread worker-7 (OSError: disk on fire). The details are in the log; "
        "please report it."
    )
    assert "Traceback" in detail
    assert "disk on fire" in detail
    assert len(uncaught_exceptions) == 1  # the hook that was there before still saw it
    assert "OSError: disk on fire" in uncaught_exceptions[0]


def test_an_uncaught_exception_on_the_main_thread_is_logged_and_surfaced(
    notes: list[tuple[str, str]], caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    with caplog.at_level(logging.CRITICAL, logger="app.excepthooks"):
        _raise_and_hook(ValueError("bad value"))
    assert [r.getMessage() for r in caplog.records] == ["uncaught exception"]
    assert notes[0][0].startswith("Unexpected error (ValueError: bad value).")
    assert "ValueError: bad value" in capsys.readouterr().err  # Python's own hook printed it too


def test_ctrl_c_is_neither_logged_nor_surfaced(
    notes: list[tuple[str, str]], caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    _raise_and_hook(KeyboardInterrupt())
    assert notes == []
    assert caplog.records == []
    assert "KeyboardInterrupt" in capsys.readouterr().err


def test_a_failing_notify_is_logged_never_raised(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    def gone(_message: str, _detail: str) -> None:
        raise RuntimeError("Internal C++ object already deleted")

    excepthooks.install(gone)
    try:
        _raise_and_hook(LookupError("x"))
    finally:
        excepthooks.uninstall()
    assert [r.getMessage() for r in caplog.records] == [
        "uncaught exception",
        "could not show an unexpected error to the user",
    ]
    assert "LookupError: x" in capsys.readouterr().err


def test_installing_twice_does_not_chain_the_hook_to_itself_and_uninstall_restores() -> None:
    before_sys, before_threading = sys.excepthook, threading.excepthook
    seen: list[str] = []
    excepthooks.install()
    excepthooks.install(lambda message, _detail: seen.append(message))
    try:
        assert sys.excepthook is not before_sys
        assert threading.excepthook is not before_threading
        _raise_and_hook(ZeroDivisionError("once"))
        assert len(seen) == 1
    finally:
        excepthooks.uninstall()
    assert sys.excepthook is before_sys
    assert threading.excepthook is before_threading


def test_describe_without_a_message() -> None:
    assert excepthooks.describe(MemoryError, MemoryError()) == (
        "Unexpected error (MemoryError). The details are in the log; please report it."
    )
