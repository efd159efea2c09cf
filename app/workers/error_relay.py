"""Unexpected errors from any thread to the GUI thread: the Qt side of :mod:`app.excepthooks`."""

from __future__ import annotations

from PySide6.QtCore import QObject, Signal

from app import excepthooks


class ErrorRelay(QObject):
    """Carries what the exception hooks report to receivers in the GUI thread (queued across threads).

    Signals:
        error_reported(message: str, detail: str): an uncaught exception (message for people, traceback)
    """

    error_reported = Signal(str, str)

    def report(self, message: str, detail: str) -> None:
        """Any thread: emit ``error_reported`` (receivers living in another thread get it queued)."""
        self.error_reported.emit(message, detail)


def install_error_relay(parent: QObject) -> ErrorRelay:
    """Install the exception hooks (log + surface) with a relay owned by ``parent``, and return it."""
    relay = ErrorRelay(parent)
    excepthooks.install(relay.report)
    return relay
