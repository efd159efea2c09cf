"""Model downloads off the GUI thread: a :class:`DownloadWorker` on one long-lived QThread, driven by a
GUI-thread :class:`DownloadController` that owns the thread and a FIFO queue of builds.

About 600 lines: the worker and the controller that owns its thread, queue and token store belong
together (each request and its result pass between the two).

The :class:`~app.core.downloads.Downloader` is blocking, so the worker runs one build at a time; the
controller sends the next build when the previous one ended (finished, failed, paused or cancelled).
Pause and cancel reach a running transfer directly from the GUI thread (:meth:`DownloadWorker.request_stop`
sets the Downloader's ``threading.Event``s), keyed by a job id so a late request never stops a later job.

Progress from the Downloader arrives in the controller unthrottled (at most one per 0.1 s plus phase
changes); the controller keeps the latest report per build and emits ``progress_changed`` from a 100 ms
timer, so the UI gets at most 10 reports per second. Builds whose download is unfinished are listed in
:class:`~app.core.downloads.QueueState` (``downloads.json``);
:meth:`DownloadController.pending_from_last_session`
reads it at start so the app can *ask* whether to resume: nothing downloads by itself.
"""

from __future__ import annotations

import collections
import json
import logging
import re
import threading
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QObject, QThread, QTimer, Signal, Slot

from app.core.downloads import (
    BuildState,
    DownloadCancelled,
    Downloader,
    DownloadError,
    DownloadPaused,
    DownloadProgress,
    Phase,
    QueueState,
)
from app.core.manifest import Build, ManifestError, parse_manifest
from app.core.splits import parse_split_name

if TYPE_CHECKING:
    from pathlib import Path

    from app.core.downloads import InstalledBuild, TokenStore
    from app.core.manifest import Manifest

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_MS = 100  # the UI gets at most 10 progress reports per second
SHUTDOWN_WAIT_MS = 15000

# Live states (the controller's); a build that is none of these has its state on disk (BuildState).
QUEUED = "queued"
RESOLVING = "resolving"
DOWNLOADING = "downloading"
PAUSED = "paused"
VERIFYING = "verifying"
INSTALLED = "installed"
FAILED = "failed"
CANCELLED = "cancelled"
DELETED = "deleted"
ACTIVE_STATES = frozenset({QUEUED, RESOLVING, DOWNLOADING, VERIFYING})

_PHASE_STATE = {
    Phase.RESOLVING: RESOLVING,
    Phase.REHASHING: DOWNLOADING,
    Phase.DOWNLOADING: DOWNLOADING,
    Phase.VERIFYING: VERIFYING,
}
CUSTOM_PREFIX = "custom-"


class DownloadWorker(QObject):
    """Runs the blocking Downloader on the download thread; never raises across threads.

    Signals:
        progress_reported(int job_id, object DownloadProgress): a report that starts a phase or a file
            (the latest report of any kind is polled with :meth:`latest_progress`).
        download_finished(int job_id, str build_id, object InstalledBuild)
        download_failed(int job_id, str build_id, str message, str detail)
        download_stopped(int job_id, str build_id, str outcome): outcome is "paused" or "cancelled".
        files_changed(str build_id): a delete / discard / delete-corrupt request was carried out.
        operation_failed(str build_id, str message, str detail): such a request failed.
    """

    progress_reported = Signal(int, object)
    download_finished = Signal(int, str, object)
    download_failed = Signal(int, str, str, str)
    download_stopped = Signal(int, str, str)
    files_changed = Signal(str)
    operation_failed = Signal(str, str, str)

    def __init__(self, downloader: Downloader) -> None:
        super().__init__()  # no parent: it is moved to the download thread
        self._downloader = downloader
        self._downloader.progress = self._on_downloader_progress
        self._lock = threading.Lock()
        self._current_job: int | None = None
        self._stops: dict[int, tuple[str, bool]] = {}  # job id -> ("pause" | "cancel", keep_partial)
        self._latest: tuple[int, DownloadProgress] | None = None

    # -- any thread -------------------------------------------------------------------------
    def request_stop(self, job_id: int, kind: str, keep_partial: bool = True) -> None:
        """Pause or cancel job ``job_id`` (thread-safe; also works before the job has started)."""
        with self._lock:
            if kind == "pause" and self._stops.get(job_id, ("", True))[0] == "cancel":
                return  # a cancel already asked for wins over a later pause
            self._stops[job_id] = (kind, keep_partial)
            if self._current_job == job_id:
                self._apply_stop(job_id)

    def latest_progress(self) -> tuple[int, DownloadProgress] | None:
        """(job id, the newest report): the controller polls it on its timer (thread-safe)."""
        with self._lock:
            return self._latest

    def _apply_stop(self, job_id: int) -> None:  # with self._lock held
        stop = self._stops.get(job_id)
        if stop is None:
            return
        kind, keep = stop
        if kind == "cancel":
            self._downloader.cancel(keep)
        else:
            self._downloader.pause()

    def _on_downloader_progress(self, progress: DownloadProgress) -> None:
        """Called on the download thread from inside ``Downloader.download``."""
        with self._lock:
            job_id = self._current_job
            if job_id is None:
                return
            # download() clears pause/cancel when it starts: re-apply a request made before that.
            self._apply_stop(job_id)
            previous = self._latest[1] if self._latest and self._latest[0] == job_id else None
            self._latest = (job_id, progress)
        if previous is None or (previous.phase, previous.file_index) != (progress.phase, progress.file_index):
            self.progress_reported.emit(job_id, progress)  # phase or file changed: the state may change

    # -- slots (download thread) ------------------------------------------------------------
    @Slot(str)
    def set_token(self, token: str) -> None:
        self._downloader.token = token or None

    @Slot(int, object)
    def download(self, job_id: int, build: Build) -> None:
        with self._lock:
            self._current_job = job_id
        try:
            installed = self._downloader.download(build)
        except DownloadPaused:
            self.download_stopped.emit(job_id, build.id, PAUSED)
        except DownloadCancelled:
            self.download_stopped.emit(job_id, build.id, CANCELLED)
        except DownloadError as exc:
            log.info("download of %s failed: %s (%s)", build.id, exc.message, exc.detail)
            self.download_failed.emit(job_id, build.id, exc.message, exc.detail)
        except Exception as exc:
            log.exception("download of %s failed unexpectedly", build.id)
            self.download_failed.emit(
                job_id, build.id, f"The download failed unexpectedly: {exc}", f"{type(exc).__name__}: {exc}"
            )
        else:
            self.download_finished.emit(job_id, build.id, installed)
        finally:
            with self._lock:
                self._current_job = None
                self._stops.pop(job_id, None)

    @Slot(object)
    def delete(self, build: Build) -> None:
        self._file_operation(build, self._downloader.delete, "delete")

    @Slot(object)
    def discard_partial(self, build: Build) -> None:
        self._file_operation(build, self._downloader.discard_partial, "delete the partial data of")

    @Slot(object)
    def delete_corrupt(self, build: Build) -> None:
        self._file_operation(build, self._downloader.delete_corrupt, "delete the damaged data of")

    def _file_operation(self, build: Build, operation: Any, what: str) -> None:
        try:
            operation(build)
        except Exception as exc:
            log.exception("could not %s %s", what, build.id)
            self.operation_failed.emit(build.id, f"Could not {what} {build.display_name}: {exc}", repr(exc))
        self.files_changed.emit(build.id)


class DownloadController(QObject):
    """GUI-thread side of downloads: the queue, the download thread, throttled progress. No widgets.

    Signals:
        progress_changed(str build_id, object DownloadProgress): at most 10 per second.
        state_changed(str build_id, str state): queued, resolving, downloading, paused, verifying,
            installed, failed, cancelled, or deleted (the build's files were removed).
        download_failed(str build_id, str message, str detail): ``message`` is for the user.
        download_finished(str build_id, object InstalledBuild)
        queue_changed(): the queue or the running build changed.
        download_requested(int job_id, object Build): to the worker.
        delete_requested / discard_partial_requested / delete_corrupt_requested(object Build): to the worker.
        token_changed(str token): to the worker.
    """

    progress_changed = Signal(str, object)
    state_changed = Signal(str, str)
    download_failed = Signal(str, str, str)
    download_finished = Signal(str, object)
    queue_changed = Signal()
    download_requested = Signal(int, object)
    delete_requested = Signal(object)
    discard_partial_requested = Signal(object)
    delete_corrupt_requested = Signal(object)
    token_changed = Signal(str)

    def __init__(
        self,
        manifest: Manifest,
        models_dir: Path,
        state_file: Path,
        token_store: TokenStore,
        *,
        endpoint: str | None = None,
        custom_builds_file: Path | None = None,
        downloader_options: dict[str, Any] | None = None,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.manifest = manifest
        self.models_dir = models_dir
        self._token_store = token_store
        self._custom_file = custom_builds_file
        self._custom_raw: list[dict[str, Any]] = []
        self._builds: dict[str, Build] = {b.id: b for b in manifest.builds}
        self._load_custom_builds()
        self.queue_state = QueueState(state_file)
        entries = [
            e
            for e in self.queue_state.entries()
            if e.get("state") != FAILED and e["build_id"] in self._builds
        ]
        # Builds that had started (downloading at a crash, paused at quit) first, then those still waiting.
        entries.sort(key=lambda e: e.get("state") == QUEUED)
        self._pending_at_start = [e["build_id"] for e in entries]
        options = dict(downloader_options or {})
        # Every report is kept by the worker; the controller polls the newest one (no signal flood).
        options.setdefault("progress_interval_s", 0.0)
        # Only this controller's files view (GUI thread; file-system reads, never the network).
        self._files = Downloader(models_dir, endpoint=endpoint, **options)
        downloader = Downloader(models_dir, endpoint=endpoint, token=token_store.get(), **options)
        downloader.queue = self.queue_state  # one QueueState (one lock) for both threads

        self._queue: collections.deque[str] = collections.deque()
        self._current: tuple[int, str] | None = None  # (job id, build id) at the worker
        self._job_seq = 0
        self._states: dict[str, str] = {}
        self._messages: dict[str, str] = {}
        self._progress: dict[str, DownloadProgress] = {}
        self._dirty: set[str] = set()
        self._delete_after_stop: set[str] = set()
        self._shut_down = False

        self._timer = QTimer(self)
        self._timer.setInterval(PROGRESS_INTERVAL_MS)
        self._timer.timeout.connect(self._on_timer_timeout)

        self._thread = QThread()
        self._thread.setObjectName("downloads")
        self._worker = DownloadWorker(downloader)
        self._worker.moveToThread(self._thread)
        self.download_requested.connect(self._worker.download)
        self.delete_requested.connect(self._worker.delete)
        self.discard_partial_requested.connect(self._worker.discard_partial)
        self.delete_corrupt_requested.connect(self._worker.delete_corrupt)
        self.token_changed.connect(self._worker.set_token)
        self._worker.progress_reported.connect(self._on_worker_progress_reported)
        self._worker.download_finished.connect(self._on_worker_download_finished)
        self._worker.download_failed.connect(self._on_worker_download_failed)
        self._worker.download_stopped.connect(self._on_worker_download_stopped)
        self._worker.files_changed.connect(self._on_worker_files_changed)
        self._worker.operation_failed.connect(self._on_worker_operation_failed)
        # The thread starts with the first command: an app that never downloads never runs it.

    # -- queries ----------------------------------------------------------------------------
    def builds(self) -> list[Build]:
        """Manifest builds, then the user's custom ones."""
        return list(self._builds.values())

    def build(self, build_id: str) -> Build:
        return self._builds[build_id]

    def is_custom(self, build_id: str) -> bool:
        return build_id.startswith(CUSTOM_PREFIX)

    def live_state(self, build_id: str) -> str | None:
        """The state this session knows (queued, downloading, paused, failed…), else None."""
        return self._states.get(build_id)

    def disk_state(self, build_id: str) -> BuildState:
        return self._files.state(self._builds[build_id])

    def installed(self, build_id: str) -> InstalledBuild | None:
        return self._files.installed(self._builds[build_id])

    def partial_bytes(self, build_id: str) -> int:
        return self._files.partial_bytes(self._builds[build_id])

    def build_dir(self, build_id: str) -> Path:
        return self._files.build_dir(self._builds[build_id])

    def progress(self, build_id: str) -> DownloadProgress | None:
        return self._progress.get(build_id)

    def last_message(self, build_id: str) -> str:
        return self._messages.get(build_id, "")

    def running(self) -> str | None:
        return self._current[1] if self._current else None

    def queued(self) -> list[str]:
        """The running build first, then the waiting ones in order."""
        return ([self._current[1]] if self._current else []) + list(self._queue)

    def is_active(self, build_id: str) -> bool:
        return build_id in self.queued()

    def has_token(self) -> bool:
        return bool(self._token_store.get())

    def pending_from_last_session(self) -> list[str]:
        """Builds whose download was unfinished when the app last quit (ask before resuming them)."""
        return [b for b in self._pending_at_start if not self.is_active(b) and self.installed(b) is None]

    # -- commands ---------------------------------------------------------------------------
    def enqueue(self, build_id: str) -> None:
        """Queue a build (FIFO); it starts when nothing else transfers. Resuming is enqueuing."""
        if self._shut_down or build_id not in self._builds or self.is_active(build_id):
            return
        self._queue.append(build_id)
        self._messages.pop(build_id, None)
        self.queue_state.mark(build_id, QUEUED)
        self._set_state(build_id, QUEUED)
        self.queue_changed.emit()
        self._start_next()

    def resume(self, build_id: str) -> None:
        self.enqueue(build_id)

    def pause(self, build_id: str) -> None:
        if self._current and self._current[1] == build_id:
            self._worker.request_stop(self._current[0], "pause")
        elif build_id in self._queue:
            self._queue.remove(build_id)
            self.queue_state.mark(build_id, PAUSED)
            self._set_state(build_id, PAUSED)
            self.queue_changed.emit()

    def cancel(self, build_id: str, keep_partial: bool) -> None:
        """Stop (or unqueue) a download; delete its partial data unless ``keep_partial``."""
        if self._current and self._current[1] == build_id:
            self._worker.request_stop(self._current[0], "cancel", keep_partial)
            return
        if build_id in self._queue:
            self._queue.remove(build_id)
            self.queue_changed.emit()
        self.queue_state.remove(build_id)
        if not keep_partial:
            self._ensure_thread()
            self.discard_partial_requested.emit(self._builds[build_id])
        self._progress.pop(build_id, None)
        self._set_state(build_id, CANCELLED)

    def delete(self, build_id: str) -> None:
        """Remove every file of the build (stopping its download first)."""
        if self._current and self._current[1] == build_id:
            self._delete_after_stop.add(build_id)
            self._worker.request_stop(self._current[0], "cancel", False)
            return
        if build_id in self._queue:
            self._queue.remove(build_id)
            self.queue_changed.emit()
        self.queue_state.remove(build_id)
        self._progress.pop(build_id, None)
        self._messages.pop(build_id, None)
        self._states.pop(build_id, None)
        self._ensure_thread()
        self.delete_requested.emit(self._builds[build_id])

    def redownload(self, build_id: str) -> None:
        """After a failed verification: delete the kept damaged data, then download again."""
        self._ensure_thread()
        self.delete_corrupt_requested.emit(self._builds[build_id])
        self.enqueue(build_id)

    def set_token(self, token: str) -> None:
        """Store the Hugging Face token (keyring or a private file) and use it from now on."""
        token = token.strip()
        self._token_store.set(token)
        self._ensure_thread()
        self.token_changed.emit(token)

    def add_custom_build(self, repo_id: str, file_path: str, projector_path: str = "") -> Build:
        """A build outside the manifest: ``file_path`` in ``repo_id`` (a ``-00001-of-0000N`` name brings
        all its parts), and optionally a projector in the same repo. Sizes and hashes come from the Hub.
        Raises ManifestError (a message for the user) when the input is unusable."""
        repo_id, file_path, projector_path = repo_id.strip(), file_path.strip(), projector_path.strip()
        files = [file_path]
        name = file_path.rsplit("/", 1)[-1]
        split = parse_split_name(name)
        if split:
            folder = file_path[: len(file_path) - len(name)]
            files = [folder + part for part in split.parts()]
        slug = re.sub(r"[^a-z0-9_.-]+", "-", f"{repo_id}-{split.stem if split else name}".lower())
        build_id = (CUSTOM_PREFIX + slug.removesuffix(".gguf")).strip("-.")[:120]
        raw: dict[str, Any] = {
            "id": build_id,
            "display_name": (split.stem if split else name.removesuffix(".gguf")),
            "repo_id": repo_id,
            "revision": "main",
            "revision_note": "Added by the user: resolved to the current commit at download time.",
            "quantization": _guess_quant(name),
            "bits_per_weight": 1.0,
            "approx_size_bytes": 1,
            "files": [{"path": p, "size": None, "sha256": None} for p in files],
            "projector": {"path": projector_path, "size": None, "sha256": None} if projector_path else None,
            "gated": False,
            "licence": {
                "name": "See the model page",
                "url": f"https://huggingface.co/{repo_id}",
                "note": f"Added from Hugging Face: check the licence on https://huggingface.co/{repo_id}.",
            },
            "recommended": {"context": 16384, "temperature": 0.6, "top_p": 0.9, "min_p": 0.01},
            "who_for": "Your own choice from Hugging Face (size and fit are known after the download)",
        }
        try:
            build = parse_manifest({"schema_version": 1, "builds": [raw]}).builds[0]
        except ManifestError as exc:
            raise ManifestError(_friendly_manifest_error(str(exc))) from exc
        if build.id not in self._builds:
            self._custom_raw.append(raw)
            self._save_custom_builds()
        self._builds[build.id] = build
        return build

    def _ensure_thread(self) -> None:
        if not self._thread.isRunning() and not self._shut_down:
            self._thread.start()

    def shutdown(self) -> None:
        """Pause the running transfer (its ``.part`` survives for the next start) and stop the thread."""
        if self._shut_down:
            return
        self._shut_down = True
        self._timer.stop()
        if self._current is not None:
            self._worker.request_stop(self._current[0], "pause")
        for build_id in self._queue:  # still listed in QueueState as queued: offered next start
            log.info("download of %s left queued at quit", build_id)
        if self._thread.isRunning():
            self._thread.quit()
            if not self._thread.wait(SHUTDOWN_WAIT_MS):
                log.error("download thread did not stop within %d s", SHUTDOWN_WAIT_MS // 1000)

    # -- internals --------------------------------------------------------------------------
    def _start_next(self) -> None:
        if self._shut_down or self._current is not None or not self._queue:
            return
        build_id = self._queue.popleft()
        self._job_seq += 1
        self._current = (self._job_seq, build_id)
        self._timer.start()
        self._ensure_thread()
        self.download_requested.emit(self._job_seq, self._builds[build_id])
        self.queue_changed.emit()

    def _end_current(self, job_id: int) -> str | None:
        """Finish the running job if ``job_id`` is it; returns its build id (None when stale)."""
        if self._current is None or self._current[0] != job_id:
            return None
        build_id = self._current[1]
        self._flush_progress()
        self._current = None
        self._timer.stop()
        return build_id

    def _set_state(self, build_id: str, state: str) -> None:
        if self._states.get(build_id) != state:
            self._states[build_id] = state
            self.state_changed.emit(build_id, state)

    def _flush_progress(self) -> None:
        latest = self._worker.latest_progress()
        if latest is not None and self._current is not None and latest[0] == self._current[0]:
            self._take_progress(latest[1])
        for build_id in sorted(self._dirty):
            self.progress_changed.emit(build_id, self._progress[build_id])
        self._dirty.clear()

    def _load_custom_builds(self) -> None:
        if self._custom_file is None:
            return
        try:
            data = json.loads(self._custom_file.read_text(encoding="utf-8"))
            raws = [r for r in data.get("builds", []) if isinstance(r, dict)]
            for raw in raws:
                build = parse_manifest({"schema_version": 1, "builds": [raw]}).builds[0]
                if build.id.startswith(CUSTOM_PREFIX) and build.id not in self._builds:
                    self._builds[build.id] = build
                    self._custom_raw.append(raw)
        except FileNotFoundError:
            return
        except (OSError, ValueError, AttributeError) as exc:
            log.info("custom builds file %s unreadable: %s", self._custom_file, exc)

    def _save_custom_builds(self) -> None:
        if self._custom_file is None:
            return
        self._custom_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._custom_file.with_name(self._custom_file.name + ".tmp")
        tmp.write_text(json.dumps({"builds": self._custom_raw}, indent=1), encoding="utf-8")
        tmp.replace(self._custom_file)

    # -- slots ------------------------------------------------------------------------------
    @Slot()
    def _on_timer_timeout(self) -> None:
        self._flush_progress()

    @Slot(int, object)
    def _on_worker_progress_reported(self, job_id: int, progress: DownloadProgress) -> None:
        if self._current is None or self._current[0] != job_id:
            return
        self._take_progress(progress)

    def _take_progress(self, progress: DownloadProgress) -> None:
        build_id = progress.build_id
        if self._progress.get(build_id) is not progress:
            self._progress[build_id] = progress
            self._dirty.add(build_id)
        state = _PHASE_STATE.get(progress.phase)
        if state is not None:
            self._set_state(build_id, state)

    @Slot(int, str, object)
    def _on_worker_download_finished(self, job_id: int, build_id: str, installed: InstalledBuild) -> None:
        if self._end_current(job_id) is None:
            return
        self._progress.pop(build_id, None)
        self._set_state(build_id, INSTALLED)
        self.download_finished.emit(build_id, installed)
        self.queue_changed.emit()
        self._start_next()

    @Slot(int, str, str, str)
    def _on_worker_download_failed(self, job_id: int, build_id: str, message: str, detail: str) -> None:
        if self._end_current(job_id) is None:
            return
        self._messages[build_id] = message
        self._set_state(build_id, FAILED)
        self.download_failed.emit(build_id, message, detail)
        self.queue_changed.emit()
        self._start_next()

    @Slot(int, str, str)
    def _on_worker_download_stopped(self, job_id: int, build_id: str, outcome: str) -> None:
        if self._end_current(job_id) is None:
            return
        if build_id in self._delete_after_stop:
            self._delete_after_stop.discard(build_id)
            self._states.pop(build_id, None)
            self._progress.pop(build_id, None)
            self._ensure_thread()
            self.delete_requested.emit(self._builds[build_id])
        else:
            if outcome == CANCELLED:
                self._progress.pop(build_id, None)
            self._set_state(build_id, outcome)
        self.queue_changed.emit()
        self._start_next()

    @Slot(str)
    def _on_worker_files_changed(self, build_id: str) -> None:
        if build_id in self._builds and not self.is_active(build_id) and self._states.get(build_id) is None:
            self.state_changed.emit(build_id, DELETED)

    @Slot(str, str, str)
    def _on_worker_operation_failed(self, build_id: str, message: str, detail: str) -> None:
        self._messages[build_id] = message
        self.download_failed.emit(build_id, message, detail)


def _guess_quant(name: str) -> str:
    match = re.search(r"((?:UD-)?(?:I?Q\d[A-Z0-9_]*|BF16|F16|F32))", name.upper())
    return match.group(1).rstrip("_-") if match else "GGUF"


def _friendly_manifest_error(text: str) -> str:
    if "expected a .gguf file" in text:
        return "The file name must end in .gguf."
    if "repo_id" in text:
        return "The repository must look like owner/name, e.g. unsloth/Llama-4-Scout-17B-16E-Instruct-GGUF."
    if "relative POSIX path" in text:
        return "The file name must be a path inside the repository (no leading / or ..)."
    return f"That does not describe a downloadable file: {text}"
