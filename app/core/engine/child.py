"""The engine process: one :class:`LlamaEngine` serving the GUI's :class:`EngineProxy` over a pipe.

Started by :mod:`.process` with ``multiprocessing``'s ``spawn`` context (a fresh interpreter: no
Qt, no threads inherited from the window). It is the only process that imports ``llama_cpp``
when the app runs. Its stdout and stderr go to a file the proxy names, so that when llama.cpp
stops the process (``GGML_ASSERT``, a segfault, a GPU driver abort) the proxy can show the
last lines it wrote; llama.cpp's own log (the log callback) is written there too.

The protocol (plain tuples, pickled by ``multiprocessing.connection``):

* requests: ``(command, *args)`` — ``load``, ``unload``, ``count_tokens``, ``count_chat_tokens``,
  ``stream_chat``, ``measure_buffers`` (the planner's dry run), ``compute_devices`` (the compute
  servers' devices and free memory, for the planner), ``measure_speeds`` (the forecast's
  probe: :mod:`.speed_probe`), ``state_key``, ``save_state``,
  ``load_state``, ``version``, ``trial`` (a file never loaded before, in a throw-away process:
  :func:`~app.core.engine.probe.try_model_file`), ``quit``;
* replies: ``("progress", fraction)`` while loading, ``("prompt", done, total)`` and
  ``("pieces", text)`` while answering, then exactly one of ``("ok", value)`` (``stream_chat``:
  the ``GenerationStats``) or ``("error", kind, message, detail)``.

Cancellation does not go through the pipe (the child is busy in llama.cpp while the GUI wants to
stop it): two shared events are checked between load-progress steps, prompt batches and tokens.
A daemon thread bumps a shared counter twice a second: the proxy's watchdog tells a busy engine
from a stopped one by it.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from app.core.engine.errors import EngineError

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    from app.core.forecast import LlamaFigures

log = logging.getLogger(__name__)

HEARTBEAT_S = 0.5
HEARTBEAT_INDEX = 2  # in the shared array: cancel, load cancel, heartbeat
PIECE_FLUSH_S = 0.025  # pieces sampled within this travel together (the worker shows 30/s)


def serve(conn: Connection, cancel: Any, load_cancel: Any, shared: Any, log_path: str) -> None:
    """The child's entry point (``multiprocessing.Process(target=serve, ...)``). ``cancel`` and
    ``load_cancel`` have ``is_set()``; ``shared[HEARTBEAT_INDEX]`` is the heartbeat counter."""
    _redirect_output(log_path)
    os.environ.setdefault("GGML_NO_BACKTRACE", "1")  # no gdb session in the log on an abort
    faulthandler.enable(sys.stderr)  # a Python stack in the log when the process crashes
    if hasattr(signal, "SIGUSR1"):  # and when the watchdog asks (POSIX)
        faulthandler.register(signal.SIGUSR1, sys.stderr, all_threads=True)
    threading.Thread(target=_beat, args=(shared,), name="engine-heartbeat", daemon=True).start()
    from app.core.engine.llama import LlamaEngine

    engine = LlamaEngine()
    handlers = _Handlers(engine, conn, cancel, load_cancel)
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            break  # the GUI process is gone: so is our reason to live
        command, *args = request
        if command == "quit":
            break
        try:
            conn.send(_answer(handlers, command, args))
        except OSError:  # BrokenPipeError mid-answer: the GUI process is gone
            break
    engine.unload()
    conn.close()


def _answer(handlers: _Handlers, command: str, args: list[Any]) -> tuple[Any, ...]:
    """Run one request; its final reply (``ok`` or ``error``)."""
    _LOADING.active = command in ("load", "measure_buffers", "trial", "measure_speeds")
    try:
        return ("ok", getattr(handlers, command)(*args))
    except OSError as exc:
        if isinstance(exc, BrokenPipeError):
            raise  # a piece could not be sent: the GUI process is gone
        log.exception("engine command %s failed", command)
        return ("error", type(exc).__name__, str(exc), f"{type(exc).__name__}: {exc}")
    except EngineError as exc:
        return ("error", type(exc).__name__, exc.message, exc.detail)
    except Exception as exc:  # process boundary: the GUI gets a reply
        log.exception("engine command %s failed", command)
        return ("error", type(exc).__name__, str(exc), f"{type(exc).__name__}: {exc}")


def _redirect_output(log_path: str) -> None:
    """Point fds 1 and 2 (C's stdout/stderr: ``GGML_ASSERT`` writes there) and Python's logging at
    ``log_path``, line-buffered, so the last lines survive the process being killed."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = open(1, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    logging.getLogger("app.core.engine.llama_cpp").setLevel(logging.DEBUG)
    handler.addFilter(_LOADING)


class _VerboseWhileLoading(logging.Filter):
    """llama.cpp's every line while a model loads (what explains a failed load), its errors only
    otherwise: it logs dozens of lines per decoded token, and writing them costs 90 % of the speed."""

    active = False

    def filter(self, record: logging.LogRecord) -> bool:
        return self.active or record.levelno >= logging.INFO


_LOADING = _VerboseWhileLoading()


def _beat(shared: Any) -> None:
    while True:
        shared[HEARTBEAT_INDEX] += 1
        time.sleep(HEARTBEAT_S)


class _Handlers:
    """One method per request; each returns the ``ok`` value or raises."""

    def __init__(self, engine: Any, conn: Connection, cancel: Any, load_cancel: Any) -> None:
        self._engine = engine
        self._conn = conn
        self._cancel = cancel
        self._load_cancel = load_cancel

    def version(self) -> dict[str, Any]:
        from app.core.engine.native import import_llama_cpp

        llama_cpp = import_llama_cpp()
        return {"pid": os.getpid(), "llama_cpp": llama_cpp.__version__, "python": sys.version.split()[0]}

    def load(self, params: Any) -> Any:
        send = self._conn.send

        def progress(fraction: float) -> bool:
            send(("progress", fraction))
            return not self._load_cancel.is_set()

        return self._engine.load(params, progress)

    def unload(self) -> None:
        self._engine.unload()

    def count_tokens(self, text: str) -> int:
        return int(self._engine.count_tokens(text))

    def count_chat_tokens(self, messages: Any) -> int:
        return int(self._engine.count_chat_tokens(messages))

    def measure_buffers(self, params: Any) -> Any:
        from app.core.engine.probe import measure_buffers

        return measure_buffers(params)

    def measure_speeds(self, n_threads: int) -> LlamaFigures:
        from app.core.engine.speed_probe import measure_llama

        return measure_llama(int(n_threads))

    def compute_devices(self, endpoints: Any) -> Any:
        return self._engine.compute_devices(list(endpoints))

    def trial(self, path: Any) -> None:
        from app.core.engine.probe import try_model_file

        try_model_file(path)

    def state_key(self) -> str:
        return str(self._engine.state_key())

    def save_state(self, path: Any) -> int:
        return int(self._engine.save_state(path))

    def load_state(self, path: Any) -> int:
        return int(self._engine.load_state(path))

    def stream_chat(self, messages: Any, sampling: Any, continue_last: bool = False) -> Any:
        send = self._conn.send

        def on_prompt_progress(done: int, total: int) -> None:
            send(("prompt", done, total))

        pending: list[str] = []
        last = 0.0
        for piece in self._engine.stream_chat(
            messages, sampling, self._cancel, on_prompt_progress, continue_last=continue_last
        ):
            pending.append(piece)
            now = time.perf_counter()
            if now - last >= PIECE_FLUSH_S:
                send(("pieces", "".join(pending)))
                pending.clear()
                last = now
        if pending:
            send(("pieces", "".join(pending)))
        return self._engine.last_stats
