"""``EngineProxy``: the :class:`~app.core.ports.Engine` the window uses, with llama.cpp in a child.

llama.cpp stops its process on an internal assertion, on many GPU errors and on a segfault; in
the GUI process that makes the window vanish. So the model lives in an engine process
(:mod:`.child`) started with ``multiprocessing``'s ``spawn`` context — a fresh interpreter, never
a fork of a process running Qt — and this proxy speaks to it over a pipe. The inference worker
and everything above it see the same ``Engine`` as with an in-process :class:`LlamaEngine`.

This module never imports ``llama_cpp``: the GUI process stays free of it.

* **Death is an event.** When the child ends unasked (a native abort, a crash, a kill), the call
  in progress raises :class:`EngineCrashedError` with a sentence for the user ("… while
  answering" / "… while loading this file") and the last lines the engine wrote (llama.cpp's log
  and its assertion text) as detail. The model is gone with it; the next load starts a new child.
* **A watchdog.** While the child has work, it must show a sign of life — a reply, a progress
  step, or the heartbeat its daemon thread bumps twice a second — at least every ``watchdog_s``
  seconds (a stopped or frozen process), and send something — a reply, a load step, a prompt
  batch, a piece — at least every ``stall_s`` seconds (a native call that never returns while the
  heartbeat thread still runs); otherwise it is stopped (``SIGKILL``) and the call raises
  :class:`EngineHungError`.
* **Unknown files are tried first.** :meth:`EngineProxy.try_file` opens a model file in a
  throw-away engine process (header, vocab-only load, dry run: nothing allocated), so a file that
  makes llama.cpp abort while it builds the model ends that process, not the one serving the chat.
* **Stop within a second.** Cancelling an answer sets a flag the child checks between prompt
  batches and tokens. If the child has not finished within ``CANCEL_GRACE_S`` (a long prompt
  batch on a slow machine), the stream ends anyway; the child's late reply is read and dropped
  before the next request.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import tempfile
import time
from multiprocessing.connection import wait
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.core.engine import errors
from app.core.engine.child import HEARTBEAT_INDEX
from app.core.engine.errors import (
    EngineCrashedError,
    EngineError,
    EngineHungError,
    LoadCancelled,
    TrialCrashedError,
)
from app.core.engine.rpc import lost_compute_server
from app.core.ports import EngineState
from app.core.types import FinishReason, GenerationStats

if TYPE_CHECKING:
    import threading
    from collections.abc import Callable, Iterator, Sequence

    from app.core.engine.probe import MeasuredBuffers
    from app.core.engine.rpc import ComputeDevice
    from app.core.forecast import LlamaFigures
    from app.core.types import ChatMessage, LoadParams, ModelInfo, SamplingParams

log = logging.getLogger(__name__)

WATCHDOG_S = 30.0
STALL_S = 600.0  # far above the slowest step: a Scout prompt batch deep in a long context on a CPU
CANCEL_GRACE_S = 0.8
POLL_S = 0.1
TRIAL_STALL_S = 300.0  # a dry run of Scout takes ~1 s; reading a huge vocabulary off a slow disk more
LOG_TAIL_LINES = 25
_CANCEL, _LOAD_CANCEL = 0, 1
_ERRORS: dict[str, type[EngineError]] = {
    cls.__name__: cls
    for cls in vars(errors).values()
    if isinstance(cls, type) and issubclass(cls, EngineError)
}


class SharedFlag:
    """A flag in memory shared with the engine process, with ``threading.Event``'s ``is_set``."""

    def __init__(self, shared: Any, index: int) -> None:
        self._shared = shared
        self._index = index

    def is_set(self) -> bool:
        return bool(self._shared[self._index])

    def set(self) -> None:
        self._shared[self._index] = 1

    def clear(self) -> None:
        self._shared[self._index] = 0


class _Child:
    """One engine process: the process, its end of the pipe, the shared flags and its log file."""

    def __init__(self, log_path: Path) -> None:
        from app.core.engine.child import serve

        ctx = multiprocessing.get_context("spawn")
        self.shared = ctx.RawArray("Q", 3)  # cancel, load cancel, heartbeat counter
        self.cancel = SharedFlag(self.shared, _CANCEL)
        self.load_cancel = SharedFlag(self.shared, _LOAD_CANCEL)
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_bytes(b"")  # this child's lines only
        self.conn, child_conn = ctx.Pipe(duplex=True)
        self.process = ctx.Process(
            target=serve,
            args=(child_conn, self.cancel, self.load_cancel, self.shared, str(log_path)),
            name="scout-engine",
            daemon=True,  # ended by multiprocessing at exit, should close() not run
        )
        self.process.start()
        child_conn.close()
        self.ended = False

    @property
    def heartbeat(self) -> int:
        return int(self.shared[HEARTBEAT_INDEX])

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the child to quit; kill it if it does not within ``timeout``."""
        if not self.ended and self.process.is_alive():
            with contextlib.suppress(OSError):
                self.conn.send(("quit",))
            self.process.join(timeout)
        self.kill()

    def kill(self) -> None:
        if self.ended:
            return
        self.ended = True
        if self.process.is_alive():
            self.process.kill()
        self.process.join()
        self.conn.close()
        self.process.close()

    def log_tail(self, n: int = LOG_TAIL_LINES) -> str:
        try:
            with self.log_path.open("rb") as f:
                f.seek(max(0, self.log_path.stat().st_size - 65536))
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return ""
        lines = [line for line in text.splitlines() if line.strip()]
        return "\n".join(lines[-n:])


class EngineProxy(EngineState):
    """The ``Engine`` of the app: a :class:`LlamaEngine` in an engine process. One thread only
    (the inference worker's), like the engine it stands for."""

    def __init__(
        self, watchdog_s: float = WATCHDOG_S, log_path: Path | None = None, stall_s: float = STALL_S
    ) -> None:
        super().__init__()
        self.watchdog_s = watchdog_s
        self.stall_s = stall_s
        self._log_path = log_path
        self._own_log = log_path is None
        self._child: _Child | None = None
        self._owed = False  # a cancelled stream's final reply has not been read yet
        self._compute_servers: tuple[str, ...] = ()  # of the last load: named if the engine dies

    # -- the process ----------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        """The engine process's id (None before the first request, and after it ended)."""
        return self._child.process.pid if self._child is not None else None

    def start(self) -> None:
        """Start the engine process now (it otherwise starts with the first request)."""
        if self._child is None:
            if self._log_path is None:
                fd, name = tempfile.mkstemp(prefix="scout-engine-", suffix=".log")
                os.close(fd)
                self._log_path = Path(name)
            self._child = _Child(self._log_path)
            self._owed = False
            log.info("engine process %d started", self._child.process.pid)

    def close(self) -> None:
        """End the engine process (the model with it)."""
        child, self._child = self._child, None
        self._info = None
        if child is not None:
            child.stop()
        if self._own_log and self._log_path is not None:
            self._log_path.unlink(missing_ok=True)
            self._log_path = None

    def try_file(self, path: Path) -> float:
        """Open ``path`` in a throw-away engine process first (:func:`~app.core.engine.probe.try_model_file`:
        header, vocab-only load, dry run); the seconds it took. A file that stops that process
        raises :class:`TrialCrashedError` and leaves this proxy's engine process (and its model)
        as it was; llama.cpp's refusals raise the engine's usual errors."""
        started = time.monotonic()
        if self._log_path is not None:
            trial_log, own = self._log_path.with_name("engine-trial.log"), False
        else:
            fd, name = tempfile.mkstemp(prefix="scout-engine-trial-", suffix=".log")
            os.close(fd)
            trial_log, own = Path(name), True
        child = _Child(trial_log)
        log.info("trying %s in engine process %d", path.name, child.process.pid)
        stall_s, self.stall_s = self.stall_s, min(self.stall_s, TRIAL_STALL_S)
        try:
            try:
                child.conn.send(("trial", path))
                while True:
                    message = self._next(child, f"loading {path.name}")
                    assert message is not None
                    if message[0] == "ok":
                        break
                    if message[0] == "error":
                        raise _rebuild(*message[1:])
            except (EngineCrashedError, EngineHungError) as exc:
                how = exc.detail.split("\n", 1)[0].rstrip(".")
                raise TrialCrashedError(
                    f"{path.name} stopped the engine process that tried it before loading, so it was "
                    "not loaded — the file may be damaged or made for a newer llama.cpp.",
                    f"Trying {path.name}: {how[0].lower() + how[1:]}.\n\n"
                    + exc.detail.split("\n", 1)[-1].strip(),
                ) from exc
        finally:
            self.stall_s = stall_s
            child.stop()
            if own:
                trial_log.unlink(missing_ok=True)
        return time.monotonic() - started

    def version(self) -> dict[str, Any]:
        """The engine process's id and llama.cpp version (``--check``)."""
        version: dict[str, Any] = self._call("working", ("version",))
        return version

    # -- Engine -----------------------------------------------------------------------------------
    def load(self, params: LoadParams, progress: Callable[[float], bool] | None = None) -> ModelInfo:
        self._info = None
        self.start()
        child = self._child
        assert child is not None

        def on_message(message: tuple[Any, ...]) -> None:
            if message[0] == "progress" and progress is not None and not progress(message[1]):
                child.load_cancel.set()

        name = Path(params.model_path).name
        self._compute_servers = params.compute_servers
        info: ModelInfo = self._call(f"loading {name}", ("load", params), on_message)
        if child.load_cancel.is_set():  # asked while the child was finishing: cancelled all the same
            self.unload()
            raise LoadCancelled()
        self._info = info
        return info

    def unload(self) -> None:
        """Free the model (the engine process stays for the next load). An engine that died or
        hung meanwhile has freed it too: that is logged, not raised."""
        self._info = None
        if self._child is not None:
            try:
                self._call("unloading the model", ("unload",))
            except (EngineCrashedError, EngineHungError) as exc:
                log.warning("%s", exc.message)

    def count_tokens(self, text: str) -> int:
        return int(self._call("counting tokens", ("count_tokens", text)))

    def count_chat_tokens(self, messages: Sequence[ChatMessage]) -> int:
        return int(self._call("counting tokens", ("count_chat_tokens", list(messages))))

    def measure_buffers(self, params: LoadParams) -> MeasuredBuffers:
        """llama.cpp's dry run for the planner (:func:`app.core.engine.probe.measure_buffers`), in
        the engine process: a file that aborts llama.cpp takes down that process, not the window."""
        buffers: MeasuredBuffers = self._call(
            f"loading {Path(params.model_path).name}", ("measure_buffers", params)
        )
        return buffers

    def measure_speeds(self, n_threads: int) -> LlamaFigures:
        """llama.cpp's speeds on this machine for the forecast
        (:func:`app.core.engine.speed_probe.measure_llama`), in the engine process."""
        figures = self._call("measuring this computer's speed", ("measure_speeds", n_threads))
        return tuple(float(x) for x in figures)  # type: ignore[return-value]

    def compute_devices(self, endpoints: Sequence[str]) -> list[ComputeDevice]:
        """The compute servers' devices with their free memory, asked in the engine process
        (where ggml and the RPC client live: :func:`app.core.engine.rpc.compute_devices`)."""
        devices: list[ComputeDevice] = self._call(
            "asking the compute servers for their memory", ("compute_devices", tuple(endpoints))
        )
        return devices

    def state_key(self) -> str:
        return str(self._call("working", ("state_key",)))

    def save_state(self, path: Path) -> int:
        return int(self._call("saving the conversation's cache", ("save_state", path)))

    def load_state(self, path: Path) -> int:
        return int(self._call("restoring the conversation's cache", ("load_state", path)))

    def stream_chat(
        self,
        messages: Sequence[ChatMessage],
        sampling: SamplingParams,
        cancel: threading.Event,
        on_prompt_progress: Callable[[int, int], None] | None = None,
        *,
        continue_last: bool = False,
    ) -> Iterator[str]:
        child = self._send("answering", ("stream_chat", list(messages), sampling, continue_last))
        give_up_at: float | None = None
        finished = False
        try:
            while True:
                if give_up_at is None and cancel.is_set():
                    child.cancel.set()
                    give_up_at = time.monotonic() + CANCEL_GRACE_S
                message = self._next(child, "answering", give_up_at)
                if message is None:  # cancelled, and the child is still busy: stop waiting
                    self._owed = True
                    self._stats = GenerationStats(finish_reason=FinishReason.CANCELLED)
                    finished = True
                    return
                kind = message[0]
                if kind == "pieces":
                    yield message[1]
                elif kind == "prompt":
                    if on_prompt_progress is not None:
                        on_prompt_progress(message[1], message[2])
                elif kind == "ok":
                    self._stats = message[1]
                    finished = True
                    return
                elif kind == "error":
                    finished = True
                    raise _rebuild(*message[1:])
        finally:
            if not finished and self._child is child:  # the caller stopped reading early
                child.cancel.set()
                self._owed = True

    # -- requests and replies ---------------------------------------------------------------------
    def _send(self, phase: str, request: tuple[Any, ...]) -> _Child:
        self.start()
        child = self._child
        assert child is not None
        if self._owed:
            self._owed = False
            while self._next(child, phase)[0] not in ("ok", "error"):  # type: ignore[index]
                pass  # the rest of a cancelled answer
        child.cancel.clear()
        child.load_cancel.clear()
        try:
            child.conn.send(request)
        except OSError as exc:
            raise self._died(child, phase) from exc
        return child

    def _call(
        self,
        phase: str,
        request: tuple[Any, ...],
        on_message: Callable[[tuple[Any, ...]], None] | None = None,
    ) -> Any:
        child = self._send(phase, request)
        while True:
            message = self._next(child, phase)
            assert message is not None
            if message[0] == "ok":
                return message[1]
            if message[0] == "error":
                raise _rebuild(*message[1:])
            if on_message is not None:
                on_message(message)

    def _next(self, child: _Child, phase: str, give_up_at: float | None = None) -> tuple[Any, ...] | None:
        """The child's next message. Raises when it dies or hangs; None once ``give_up_at`` passed."""
        alive_at = asked_at = time.monotonic()
        beat = child.heartbeat
        while True:
            ready = wait([child.conn, child.process.sentinel], timeout=POLL_S)
            if child.conn in ready or child.conn.poll():
                try:
                    received: tuple[Any, ...] = child.conn.recv()
                    return received
                except (EOFError, OSError) as exc:
                    raise self._died(child, phase) from exc
            if ready:  # the sentinel alone: the process ended with nothing left to read
                raise self._died(child, phase)
            now = time.monotonic()
            if give_up_at is not None and now >= give_up_at:
                return None
            if child.heartbeat != beat:
                beat, alive_at = child.heartbeat, now
            elif now - alive_at > self.watchdog_s:
                raise self._hung(child, phase, f"no sign of life for {now - alive_at:.1f} s")
            if now - asked_at > self.stall_s:
                raise self._hung(child, phase, f"no progress for {now - asked_at:.1f} s")

    def _forget(self, child: _Child) -> str:
        """Drop a dead or hung child (killing it); return the last lines it wrote."""
        tail = child.log_tail()
        if self._child is child:
            self._child = None
            self._info = None
            self._owed = False
        child.kill()
        return tail

    def _died(self, child: _Child, phase: str) -> EngineCrashedError:
        child.process.join(1.0)
        code = child.process.exitcode
        tail = self._forget(child)
        how = _exit_text(code)
        log.error("the engine process ended (%s) while %s; its last lines:\n%s", how, phase, tail)
        lost = lost_compute_server(tail, self._compute_servers)
        if lost:
            message = lost
        elif phase.startswith("loading "):
            message = (
                f"The model engine stopped unexpectedly while {phase} — the file may be damaged or "
                "made for a newer llama.cpp."
            )
        else:
            message = (
                f"The model engine stopped unexpectedly while {phase}. Load the model again to continue."
            )
        return EngineCrashedError(message, f"The engine process {how}.\n\n{tail}".strip())

    def _hung(self, child: _Child, phase: str, why: str) -> EngineHungError:
        with contextlib.suppress(OSError):  # its threads' stacks into its log, when it can
            if child.process.pid is not None and hasattr(signal, "SIGUSR1"):
                os.kill(child.process.pid, signal.SIGUSR1)
                child.process.join(0.2)
        tail = self._forget(child)
        log.error(
            "the engine process stopped responding while %s (%s); its last lines:\n%s", phase, why, tail
        )
        return EngineHungError(
            f"The model engine stopped responding while {phase} ({why}), so it was stopped. "
            "Load the model again to continue.",
            f"Watchdog: {why}.\n\n{tail}".strip(),
        )


def _rebuild(kind: str, message: str, detail: str) -> EngineError:
    """The engine's exception, from what the child sent."""
    cls = _ERRORS.get(kind, EngineError)
    exc = cls.__new__(cls)
    EngineError.__init__(exc, message, detail)
    return exc


def _exit_text(code: int | None) -> str:
    if code is None:
        return "ended"
    if code < 0:
        try:
            return f"was stopped by {signal.Signals(-code).name}"
        except ValueError:
            return f"was stopped by signal {-code}"
    return f"exited with code {code}"
