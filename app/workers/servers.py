"""Testing a server (Servers… dialog's Test button) off the GUI thread."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from PySide6.QtCore import QObject, Signal

from app.core.engine.remote import probe_server
from app.core.errors import UserError

if TYPE_CHECKING:
    from app.core.engine.remote import ServerConfig

log = logging.getLogger(__name__)


class ServerProber(QObject):
    """Identifies servers on short-lived threads (one request each; results are queued to the
    GUI thread by Qt because they are emitted from another thread).

    Signals:
        probed(int, object): request id, ServerIdentity.
        probe_failed(int, str, str): request id, human message, detail.
    """

    probed = Signal(int, object)
    probe_failed = Signal(int, str, str)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._count = 0
        self._threads: list[threading.Thread] = []

    def probe(self, config: ServerConfig) -> int:
        self._count += 1
        thread = threading.Thread(
            target=self._run, args=(self._count, config), name="server-probe", daemon=True
        )
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()
        return self._count

    def _run(self, request_id: int, config: ServerConfig) -> None:
        try:
            identity = probe_server(config)
        except UserError as exc:
            self.probe_failed.emit(request_id, exc.message, exc.detail)
            return
        except Exception as exc:
            log.exception("testing %s failed", config.address)
            self.probe_failed.emit(request_id, f"Testing the server failed: {exc}", "")
            return
        self.probed.emit(request_id, identity)

    def shutdown(self, timeout_s: float = 10.0) -> None:
        """Wait for the tests still running (each ends within the server's time-out)."""
        for thread in self._threads:
            thread.join(timeout_s)
        self._threads = []
