"""The search model (:class:`~app.core.engine.embedder.Embedder`) in a process of its own.

Like the chat model's engine process (:mod:`.process`, :mod:`.child`), the embedder runs in a
child started with ``multiprocessing``'s ``spawn`` context, so a native abort or a kill ends that
process and never the window, and embedding never runs on the chat model's thread or in its
process. This module's GUI-side half never imports ``llama_cpp``.

:class:`EmbedderProcess` is used from two threads: the embedding worker (documents, in batches)
and the inference thread (one question per turn, :meth:`EmbedderProcess.embed_query`). A lock
makes each request and its reply one unit; a batch is a few pieces, so a question waits at most
one batch.

Protocol (pickled tuples): ``("load", path, n_threads)`` → ``("ok", dimensions)``;
``("embed", texts)`` → ``("ok", float32 rows)`` or ``("cancelled",)``; any failure →
``("error", kind, message, detail)``. The child checks a shared cancel flag between the
decodes of a request (each at most :data:`~app.core.engine.embedder.BATCH_TOKENS` tokens, a
fraction of a second), so a cancel is answered well within a second without killing anything.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import threading
import time
from multiprocessing.connection import wait
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.core.engine.child import HEARTBEAT_INDEX
from app.core.engine.process import SharedFlag, _exit_text
from app.core.retrieval import EmbedderUnavailable

if TYPE_CHECKING:
    from collections.abc import Sequence
    from multiprocessing.connection import Connection

    import numpy as np

log = logging.getLogger(__name__)

WATCHDOG_S = 30.0
POLL_S = 0.05
_CANCEL = 0
GROUP = 2
"""Texts embedded between two looks at the cancel flag (two ~200-word pieces fill one decode)."""


class EmbedderProcess:
    """The search model at ``model_path`` in a spawned process, started with the first request.

    Thread-safe. :meth:`embed` and :meth:`embed_query` raise :class:`EmbedderUnavailable` when the
    process cannot load the model, ended unasked (crash, kill) or stopped responding; the next
    request starts a new process. :meth:`close` ends it (any thread).
    """

    def __init__(
        self,
        model_path: Path,
        *,
        n_threads: int = 1,
        log_path: Path | None = None,
        watchdog_s: float = WATCHDOG_S,
    ) -> None:
        self.model_path = Path(model_path)
        self.n_threads = n_threads
        self.log_path = log_path
        self.watchdog_s = watchdog_s
        self._lock = threading.Lock()
        self._process: Any = None
        self._conn: Connection | None = None
        self._shared: Any = None
        self._closed = False

    @property
    def pid(self) -> int | None:
        """The embedder process's id (None before the first request and after it ended)."""
        process = self._process
        return process.pid if process is not None else None

    # -- requests ---------------------------------------------------------------------------------
    def embed(self, texts: Sequence[str], cancel: threading.Event | None = None) -> np.ndarray | None:
        """One normalised float32 row per text; None when ``cancel`` was set meanwhile."""
        with self._lock:
            self._start()
            reply = self._request(("embed", list(texts)), cancel)
        if reply[0] == "cancelled":
            return None
        rows: np.ndarray = reply[1]
        return rows

    def embed_query(self, question: str) -> np.ndarray:
        """The question's row (for :class:`app.core.retrieval.HybridSource`, on the inference thread)."""
        rows = self.embed([question])
        assert rows is not None
        row: np.ndarray = rows[0]
        return row

    def close(self) -> None:
        """End the process (waiting for the request in progress, if any, to finish first)."""
        self._closed = True
        if self._shared is not None:
            SharedFlag(self._shared, _CANCEL).set()
        with self._lock:
            self._stop()

    # -- the process ------------------------------------------------------------------------------
    def _start(self) -> None:
        if self._closed:
            raise EmbedderUnavailable("The search model was closed.")
        if self._process is not None:
            return
        ctx = multiprocessing.get_context("spawn")
        log_path = self.log_path or self.model_path.with_suffix(".log")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_bytes(b"")
        self._shared = ctx.RawArray("Q", 3)  # cancel, unused, heartbeat (as the engine process)
        self._conn, child_conn = ctx.Pipe(duplex=True)
        self._process = ctx.Process(
            target=serve,
            args=(child_conn, self._shared, str(log_path)),
            name="scout-embedder",
            daemon=True,
        )
        self._process.start()
        child_conn.close()
        self.log_path = log_path
        log.info("embedder process %d started for %s", self._process.pid, self.model_path.name)
        self._request(("load", str(self.model_path), self.n_threads), None)

    def _stop(self) -> None:
        process, conn, self._process, self._conn = self._process, self._conn, None, None
        if process is None:
            return
        if process.is_alive() and conn is not None:
            with contextlib.suppress(OSError):
                conn.send(("quit",))
            process.join(2.0)
        if process.is_alive():
            process.kill()
        process.join()
        if conn is not None:
            conn.close()
        process.close()

    def _request(self, request: tuple[Any, ...], cancel: threading.Event | None) -> tuple[Any, ...]:
        """Send ``request`` and wait for its reply (with the lock held)."""
        assert self._conn is not None
        assert self._process is not None
        flag = SharedFlag(self._shared, _CANCEL)
        flag.clear()
        conn, process = self._conn, self._process
        try:
            conn.send(request)
        except OSError as exc:
            raise self._died() from exc
        alive_at = time.monotonic()
        beat = int(self._shared[HEARTBEAT_INDEX])
        while True:
            ready = wait([conn, process.sentinel], timeout=POLL_S)
            if conn in ready or conn.poll():
                try:
                    reply: tuple[Any, ...] = conn.recv()
                except (EOFError, OSError) as exc:
                    raise self._died() from exc
                if reply[0] == "error":
                    _kind, message, detail = reply[1:]
                    raise EmbedderUnavailable(message, detail)
                return reply
            if ready:
                raise self._died()
            if cancel is not None and cancel.is_set():
                flag.set()
            now = time.monotonic()
            if int(self._shared[HEARTBEAT_INDEX]) != beat:
                beat, alive_at = int(self._shared[HEARTBEAT_INDEX]), now
            elif now - alive_at > self.watchdog_s:
                log.error("the embedder process stopped responding; stopping it")
                self._stop()
                raise EmbedderUnavailable(
                    "The search model stopped responding, so it was stopped. Keyword search still works.",
                    f"No sign of life for {now - alive_at:.1f} s.",
                )

    def _died(self) -> EmbedderUnavailable:
        process = self._process
        code = None
        if process is not None:
            process.join(1.0)
            code = process.exitcode
        tail = self._log_tail()
        self._stop()
        how = _exit_text(code)
        log.error("the embedder process %s; its last lines:\n%s", how, tail)
        return EmbedderUnavailable(
            "The search model stopped unexpectedly. Keyword search still works; the search model "
            "starts again with the next document.",
            f"The embedder process {how}.\n\n{tail}".strip(),
        )

    def _log_tail(self, n: int = 20) -> str:
        if self.log_path is None:
            return ""
        try:
            text = self.log_path.read_bytes()[-32768:].decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join([line for line in text.splitlines() if line.strip()][-n:])


# -- the child ---------------------------------------------------------------------------------------
def serve(conn: Connection, shared: Any, log_path: str) -> None:
    """The embedder process's entry point: one :class:`Embedder`, requests until ``quit`` or EOF."""
    from app.core.engine.child import _beat, _redirect_output

    _redirect_output(log_path)
    os.environ.setdefault("GGML_NO_BACKTRACE", "1")
    threading.Thread(target=_beat, args=(shared,), name="embedder-heartbeat", daemon=True).start()
    cancel = SharedFlag(shared, _CANCEL)
    embedder: Any = None
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            break
        command, *args = request
        if command == "quit":
            break
        try:
            if command == "load":
                from app.core.engine.embedder import Embedder

                embedder = Embedder(Path(args[0]), n_threads=int(args[1]))
                reply: tuple[Any, ...] = ("ok", embedder.dimensions)
            elif command == "embed":
                reply = _embed(embedder, args[0], cancel)
            else:
                reply = ("error", "ValueError", f"unknown request {command!r}", "")
        except Exception as exc:  # process boundary: the proxy gets a reply
            log.exception("embedder request %s failed", command)
            message = getattr(exc, "message", None) or f"The search model failed: {exc}"
            reply = ("error", type(exc).__name__, message, f"{type(exc).__name__}: {exc}")
        try:
            conn.send(reply)
        except OSError:
            break
    if embedder is not None:
        embedder.close()
    conn.close()


def _embed(embedder: Any, texts: list[str], cancel: SharedFlag) -> tuple[Any, ...]:
    import numpy as np

    if embedder is None:
        raise RuntimeError("no search model is loaded")
    parts = []
    for start in range(0, len(texts), GROUP):
        if cancel.is_set():
            return ("cancelled",)
        parts.append(embedder.embed(texts[start : start + GROUP]))
    if not parts:
        return ("ok", np.zeros((0, embedder.dimensions), dtype=np.float32))
    return ("ok", np.concatenate(parts))
