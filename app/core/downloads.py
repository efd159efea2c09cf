"""Downloads of manifest builds from the Hugging Face Hub: the only module that touches the network.

A :class:`Downloader` is used from one worker thread; :meth:`Downloader.pause` and
:meth:`Downloader.cancel` may be called from any other thread (they set ``threading.Event``s
that the transfer checks between 1 MiB chunks and during back-off sleeps).

For each build it

1. resolves the files against the Hub (``model_info`` turns a branch into a commit, then
   ``get_paths_info(expand=True)`` gives each file's size and LFS sha256) and refuses on any
   mismatch with the manifest;
2. checks free disk space for everything still missing (shards + projector, minus partial bytes);
3. downloads each file with its own resumable transfer: ``GET`` with ``Range: bytes=N-`` on
   ``hf_hub_url(...)``, data appended to ``<dest>.part`` with a JSON sidecar ``<dest>.part.json``
   (url, size, sha256, etag, bytes done). A resume re-hashes the partial bytes (sequential read)
   instead of pickling hasher state; transient failures are retried with exponential back-off;
4. verifies size and the streaming sha256, and only then ``os.replace``s the file into place. A
   failed verify keeps the data as ``<dest>.corrupt`` and raises :class:`VerificationError`.

Files of a build go into one folder per build (``<models_dir>/<build id>/``), under their original
base names, so llama.cpp finds a split model's sibling shards; the projector lies beside them.

``huggingface_hub`` (and its ``httpx2``) is imported lazily. The byte transfer itself uses the standard
library (``urllib.request``, ``readinto`` into reused 1 MiB buffers; proxies from the environment, the
token dropped on cross-host redirects): httpx2's 64 KiB h11 read path measured 2.7x slower on loopback.
Tokens are passed in (see :class:`TokenStore`) and never logged.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import errno
import hashlib
import http.client
import json
import logging
import os
import queue
import re
import shutil
import stat
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.core.units import format_bytes

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from app.core.manifest import Build, ModelFile

log = logging.getLogger(__name__)

CHUNK_SIZE = 1 << 20  # pause/cancel are checked, and data written and hashed, per MiB
REHASH_BLOCK = 4 << 20
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_TRUTHY = {"1", "on", "yes", "true"}


# --------------------------------------------------------------------------- errors


class DownloadError(Exception):
    """A download problem with a ``message`` fit for the UI (and an optional technical ``detail``)."""

    def __init__(self, message: str, *, detail: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


class OfflineError(DownloadError):
    """``HF_HUB_OFFLINE`` is set, or the Hub cannot be reached."""


class GatedRepoAccessError(DownloadError):
    """401/403: the licence was not accepted or the token is missing/wrong."""

    def __init__(self, repo_id: str, *, detail: str = "") -> None:
        super().__init__(
            "This model is gated: accept the licence on the model page "
            f"(https://huggingface.co/{repo_id}), then paste a Hugging Face token.",
            detail=detail,
        )
        self.repo_id = repo_id


class ManifestMismatchError(DownloadError):
    """The Hub disagrees with the manifest (size, sha256, missing file): nothing is downloaded."""


class NotEnoughDiskSpaceError(DownloadError):
    def __init__(self, needed: int, available: int, directory: Path) -> None:
        super().__init__(
            f"Not enough disk space: need {format_bytes(needed - available)} more in {directory}",
            detail=f"needed={needed} available={available}",
        )
        self.needed, self.available, self.directory = needed, available, directory


class VerificationError(DownloadError):
    """Size or sha256 of a finished file is wrong. The data is kept at ``corrupt_path``."""

    def __init__(self, message: str, *, dest: Path, corrupt_path: Path, detail: str = "") -> None:
        super().__init__(message, detail=detail)
        self.dest, self.corrupt_path = dest, corrupt_path


class TransferError(DownloadError):
    """The transfer kept failing after all retries; the partial data is kept for a later resume."""


class DownloadInterrupted(DownloadError):
    """Base of the user's own interruptions (pause, cancel)."""


class DownloadPaused(DownloadInterrupted):
    def __init__(self) -> None:
        super().__init__("Download paused.")


class DownloadCancelled(DownloadInterrupted):
    def __init__(self, kept_partial: bool) -> None:
        super().__init__(
            "Download cancelled; the partial data was kept." if kept_partial else "Download cancelled."
        )
        self.kept_partial = kept_partial


class _TransientHTTPError(Exception):
    def __init__(self, status: int, retry_after: float | None) -> None:
        super().__init__(f"HTTP {status}")
        self.status, self.retry_after = status, retry_after


# Worth a retry: connection refused/reset/closed early, timeouts, 5xx and 429 (HTTPError is handled first).
_TRANSIENT = (
    _TransientHTTPError,
    urllib.error.URLError,
    http.client.HTTPException,
    ConnectionError,
    TimeoutError,
)


class _RedirectWithoutCrossHostAuth(urllib.request.HTTPRedirectHandler):
    """Follow the Hub's redirects (to its CDN) but never send the token to another host."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: Any,
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> urllib.request.Request | None:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None:
            old, target = urllib.parse.urlsplit(req.full_url), urllib.parse.urlsplit(new.full_url)
            if (old.scheme, old.netloc) != (target.scheme, target.netloc):
                new.remove_header("Authorization")
        return new


# --------------------------------------------------------------------------- data


class Phase(str, enum.Enum):
    RESOLVING = "resolving"
    REHASHING = "rehashing"  # reading back a partial file after a resume
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    DONE = "done"


class BuildState(str, enum.Enum):
    INSTALLED = "installed"
    PARTIAL = "partial"
    CORRUPT = "corrupt"
    ABSENT = "absent"


@dataclass(frozen=True)
class ResolvedFile:
    """A manifest file checked against the Hub: exact size, sha256 and the commit it comes from."""

    source: ModelFile
    commit: str
    url: str
    size: int
    sha256: str | None
    dest: Path

    @property
    def part(self) -> Path:
        return self.dest.with_name(self.dest.name + ".part")

    @property
    def sidecar(self) -> Path:
        return self.dest.with_name(self.dest.name + ".part.json")

    @property
    def corrupt(self) -> Path:
        return self.dest.with_name(self.dest.name + ".corrupt")


@dataclass(frozen=True)
class ResolvedBuild:
    build_id: str
    folder: Path
    files: tuple[ResolvedFile, ...]  # model shards in order, then the projector

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)


@dataclass(frozen=True)
class InstalledBuild:
    build_id: str
    folder: Path
    model_files: tuple[Path, ...]
    projector: Path | None

    @property
    def model_path(self) -> Path:
        """What llama.cpp opens: the single file, or the first shard of a split model."""
        return self.model_files[0]


@dataclass(frozen=True)
class DownloadProgress:
    """One progress report, per file and per build (plain data: safe to emit across threads)."""

    build_id: str
    phase: Phase
    file_name: str
    file_index: int  # 0-based
    file_count: int
    file_done: int
    file_total: int
    build_done: int
    build_total: int
    speed_bps: float  # moving average over the last few seconds; 0 when unknown
    eta_s: float | None  # for the whole build; None when the speed is unknown


@dataclass
class TransferStats:
    """Counters of the last :meth:`Downloader.download` (the benchmark reads them)."""

    bytes_received: int = 0  # over the network, re-fetched bytes included
    bytes_rehashed: int = 0
    attempts: int = 0  # HTTP GETs made
    retries: int = 0
    range_restarts: int = 0  # the server ignored Range or we had to start a file over
    hash_cpu_s: float = 0.0
    ranges_sent: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- persistent queue


class QueueState:
    """The builds with a download in progress, saved as JSON so the app can offer to resume.

    ``{"version": 1, "downloads": [{"build_id", "state", "message", "updated"}]}``; state is
    ``downloading`` (the app quit or crashed mid-download), ``paused`` or ``failed``.
    """

    VERSION = 1

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def entries(self) -> list[dict[str, Any]]:
        with self._lock:
            return self._read()

    def pending_build_ids(self) -> list[str]:
        return [e["build_id"] for e in self.entries()]

    def mark(self, build_id: str, state: str, message: str = "") -> None:
        with self._lock:
            entries = [e for e in self._read() if e["build_id"] != build_id]
            entries.append({"build_id": build_id, "state": state, "message": message, "updated": time.time()})
            self._write(entries)

    def remove(self, build_id: str) -> None:
        with self._lock:
            entries = self._read()
            kept = [e for e in entries if e["build_id"] != build_id]
            if kept != entries:
                self._write(kept)

    def _read(self) -> list[dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []
        except (OSError, ValueError):
            log.info("download queue file %s unreadable; starting empty", self.path)
            return []
        items = data.get("downloads", []) if isinstance(data, dict) else []
        return [e for e in items if isinstance(e, dict) and isinstance(e.get("build_id"), str)]

    def _write(self, entries: list[dict[str, Any]]) -> None:
        _atomic_write_json(self.path, {"version": self.VERSION, "downloads": entries})


def _atomic_write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    os.replace(tmp, path)


# --------------------------------------------------------------------------- tokens


class TokenStore:
    """The user's Hugging Face token: in the system keyring when ``keyring`` works, else a 0600 file."""

    SERVICE = "scout-chat"
    USERNAME = "huggingface-token"

    def __init__(self, data_dir: Path, *, use_keyring: bool = True) -> None:
        self.file = data_dir / "hf_token"
        self._keyring: Any = None
        if use_keyring:
            try:
                import keyring

                self._keyring = keyring
            except ImportError:
                self._keyring = None

    @property
    def backend(self) -> str:
        return "keyring" if self._keyring is not None else "file"

    def get(self) -> str | None:
        if self._keyring is not None:
            try:
                value = self._keyring.get_password(self.SERVICE, self.USERNAME)
                if value:
                    return str(value)
            except Exception:  # noqa: BLE001 - any keyring backend failure: fall back to the file
                log.info("keyring unavailable; using the token file")
        try:
            value = self.file.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        return value or None

    def set(self, token: str) -> None:
        token = token.strip()
        if not token:
            self.clear()
            return
        if self._keyring is not None:
            try:
                self._keyring.set_password(self.SERVICE, self.USERNAME, token)
                with contextlib.suppress(FileNotFoundError):
                    self.file.unlink()
                return
            except Exception:  # noqa: BLE001 - any keyring backend failure: fall back to the file
                log.info("keyring unavailable; storing the token in a private file")
        self.file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(token)
        with contextlib.suppress(OSError):
            os.chmod(self.file, stat.S_IRUSR | stat.S_IWUSR)

    def clear(self) -> None:
        if self._keyring is not None:
            with contextlib.suppress(Exception):
                self._keyring.delete_password(self.SERVICE, self.USERNAME)
        with contextlib.suppress(FileNotFoundError):
            self.file.unlink()


# --------------------------------------------------------------------------- hashing


class _Hasher:
    """sha256 fed from the download loop; hashing runs on a helper thread so it overlaps the
    network reads (hashlib releases the GIL for large buffers). ``close()`` always joins it."""

    QUEUE_SIZE = 8

    def __init__(self, threaded: bool = True) -> None:
        self._h = hashlib.sha256()
        self.cpu_s = 0.0
        self._q: queue.Queue[bytes | memoryview | None] | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        if threaded:
            self._q = queue.Queue(maxsize=self.QUEUE_SIZE)
            self._thread = threading.Thread(target=self._run, name="scout-sha256", daemon=False)
            self._thread.start()

    def _run(self) -> None:
        assert self._q is not None
        t0 = time.thread_time()
        while True:
            item = self._q.get()
            try:
                if item is None:
                    return
                if self._error is None:
                    self._h.update(item)
            except BaseException as exc:  # noqa: BLE001 - reported to the caller in digest()
                self._error = exc
            finally:
                self.cpu_s = time.thread_time() - t0
                self._q.task_done()

    def update(self, data: bytes | memoryview) -> None:
        if self._q is None:
            t0 = time.thread_time()
            self._h.update(data)
            self.cpu_s += time.thread_time() - t0
        else:
            self._q.put(data)

    def _drain(self) -> None:
        if self._q is not None:
            self._q.join()
        if self._error is not None:
            raise self._error

    def reset(self) -> None:
        self._drain()
        self._h = hashlib.sha256()

    def hexdigest(self) -> str:
        self._drain()
        return self._h.hexdigest()

    def close(self) -> None:
        if self._q is not None and self._thread is not None:
            self._q.put(None)
            self._thread.join()
            self._q = None


# --------------------------------------------------------------------------- the downloader


def _default_free_space(path: Path) -> int:
    return shutil.disk_usage(path).free


def _existing_ancestor(path: Path) -> Path:
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def _env_offline() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUTHY:
        return True
    from huggingface_hub import constants

    return bool(constants.is_offline_mode())


_OFFLINE_MESSAGE = (
    "You are offline, or the Hugging Face Hub cannot be reached. Models already downloaded keep "
    "working; connect to the internet to download this one."
)
_OFFLINE_MODE_MESSAGE = (
    "You are offline: HF_HUB_OFFLINE is set, so downloads are disabled. Models already downloaded "
    "keep working; unset HF_HUB_OFFLINE to download."
)


class Downloader:
    """Downloads manifest builds into ``models_dir/<build id>/``. Use from one worker thread.

    ``free_space(path) -> int`` is injectable (tests fake it); ``progress`` receives
    :class:`DownloadProgress` at most every ``progress_interval`` seconds (and at every file
    boundary). ``queue_state`` (a JSON path) lists builds whose download is unfinished.
    """

    def __init__(
        self,
        models_dir: Path,
        *,
        endpoint: str | None = None,
        token: str | None = None,
        free_space: Callable[[Path], int] = _default_free_space,
        progress: Callable[[DownloadProgress], None] | None = None,
        queue_state: Path | None = None,
        chunk_size: int = CHUNK_SIZE,
        max_attempts: int = 6,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 60.0,
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 60.0,
        api_timeout_s: float = 20.0,
        progress_interval_s: float = 0.1,
        threaded_hash: bool = True,
        fsync: bool = True,
    ) -> None:
        self.models_dir = Path(models_dir)
        self._endpoint = endpoint
        self.token = token
        self.free_space = free_space
        self.progress = progress
        self.queue = QueueState(queue_state) if queue_state is not None else None
        self.chunk_size = chunk_size
        self.max_attempts = max_attempts
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.api_timeout_s = api_timeout_s
        self.progress_interval_s = progress_interval_s
        self.threaded_hash = threaded_hash
        self.fsync = fsync  # flush a verified file to disk before renaming it into place
        self.stats = TransferStats()
        self._pause = threading.Event()
        self._cancel = threading.Event()
        self._wake = threading.Event()  # set by pause/cancel: interrupts back-off sleeps
        self._keep_partial = True
        self._speed: collections.deque[tuple[float, int]] = collections.deque()

    # ----------------------------------------------------------------- control (any thread)

    def pause(self) -> None:
        """Stop after the current chunk, keeping the partial data; ``download()`` raises DownloadPaused."""
        self._pause.set()
        self._wake.set()

    def cancel(self, keep_partial: bool) -> None:
        """Stop after the current chunk; delete the partial data unless ``keep_partial``."""
        self._keep_partial = keep_partial
        self._cancel.set()
        self._wake.set()

    # ----------------------------------------------------------------- paths and state

    @property
    def endpoint(self) -> str:
        if self._endpoint:
            return self._endpoint.rstrip("/")
        env = os.environ.get("HF_ENDPOINT")
        if env:
            return env.rstrip("/")
        from huggingface_hub import constants

        return str(constants.ENDPOINT)

    def build_dir(self, build: Build) -> Path:
        return self.models_dir / build.id

    def dest_path(self, build: Build, file: ModelFile) -> Path:
        return self.build_dir(build) / file.name

    def installed(self, build: Build) -> InstalledBuild | None:
        """The build's paths if every file is in place (files are only put there after verifying)."""
        paths = [self.dest_path(build, f) for f in build.all_files]
        for f, p in zip(build.all_files, paths, strict=True):
            # One stat per file: the download thread may move or delete files meanwhile, so a
            # separate exists-then-stat check could see a file vanish in between.
            try:
                st = p.stat()
            except OSError:
                return None
            if not stat.S_ISREG(st.st_mode) or (f.size is not None and st.st_size != f.size):
                return None
        n = len(build.files)
        return InstalledBuild(
            build.id, self.build_dir(build), tuple(paths[:n]), paths[n] if build.projector else None
        )

    def state(self, build: Build) -> BuildState:
        if self.installed(build) is not None:
            return BuildState.INSTALLED
        folder = self.build_dir(build)
        if not folder.is_dir():
            return BuildState.ABSENT
        try:
            names = {p.name for p in folder.iterdir()}
        except OSError:  # deleted meanwhile by the download thread
            return BuildState.ABSENT
        if any(".corrupt" in n for n in names):
            return BuildState.CORRUPT
        if any(f.name in names or f"{f.name}.part" in names for f in build.all_files):
            return BuildState.PARTIAL
        return BuildState.ABSENT

    def partial_bytes(self, build: Build) -> int:
        total = 0
        for f in build.all_files:
            dest = self.dest_path(build, f)
            for p in (dest, dest.with_name(dest.name + ".part")):
                with contextlib.suppress(FileNotFoundError):
                    total += p.stat().st_size
        return total

    def corrupt_files(self, build: Build) -> list[Path]:
        folder = self.build_dir(build)
        return sorted(folder.glob("*.corrupt*")) if folder.is_dir() else []

    def discard_partial(self, build: Build) -> None:
        """Delete ``.part`` files and sidecars of a build (finished files stay)."""
        for f in build.all_files:
            dest = self.dest_path(build, f)
            for p in (dest.with_name(dest.name + ".part"), dest.with_name(dest.name + ".part.json")):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
        if self.queue is not None:
            self.queue.remove(build.id)

    def delete_corrupt(self, build: Build) -> None:
        """The user chose to re-download: remove the kept ``.corrupt`` data."""
        for p in self.corrupt_files(build):
            p.unlink()

    def delete(self, build: Build) -> None:
        """Remove the build's folder entirely (installed, partial and corrupt data)."""
        folder = self.build_dir(build)
        if folder.is_dir():
            shutil.rmtree(folder)
        if self.queue is not None:
            self.queue.remove(build.id)

    # ----------------------------------------------------------------- resolve

    def resolve(self, build: Build) -> ResolvedBuild:
        """Check every file of ``build`` against the Hub; raise a :class:`DownloadError` on any problem."""
        if _env_offline():
            raise OfflineError(_OFFLINE_MODE_MESSAGE)
        from huggingface_hub import HfApi, hf_hub_url

        api = HfApi(endpoint=self.endpoint)
        token: str | None = self.token or None
        commits: dict[tuple[str, str], str] = {}
        infos: dict[tuple[str, str], dict[str, Any]] = {}
        groups: dict[tuple[str, str], list[ModelFile]] = {}
        for f in build.all_files:
            groups.setdefault((f.repo_id, f.revision), []).append(f)
        for (repo_id, revision), files in groups.items():
            with self._hub_errors(repo_id):
                if _COMMIT.match(revision):
                    commit = revision
                else:  # a branch: pin its current commit for every file of this download
                    info = api.model_info(repo_id, revision=revision, token=token, timeout=self.api_timeout_s)
                    if not info.sha:
                        raise DownloadError(f"The Hub did not say which commit {repo_id}@{revision} is.")
                    commit = info.sha
                    log.info("resolved %s@%s to commit %s", repo_id, revision, commit)
                commits[(repo_id, revision)] = commit
                entries = api.get_paths_info(
                    repo_id, [f.path for f in files], revision=commit, expand=True, token=token
                )
            infos[(repo_id, revision)] = {e.path: e for e in entries}

        resolved: list[ResolvedFile] = []
        for f in build.all_files:
            commit = commits[(f.repo_id, f.revision)]
            entry = infos[(f.repo_id, f.revision)].get(f.path)
            if entry is None or not hasattr(entry, "size"):
                raise ManifestMismatchError(
                    f"{f.path} is not in {f.repo_id} at commit {commit[:12]}: the catalog is out of date. "
                    "Nothing was downloaded; update the app or choose another build."
                )
            lfs = getattr(entry, "lfs", None)
            hub_size = int(lfs["size"] if lfs else entry.size)
            hub_sha = str(lfs["sha256"]).lower() if lfs else None
            if f.size is not None and f.size != hub_size:
                raise ManifestMismatchError(
                    f"{f.name}: the Hub says {hub_size:,} bytes but the catalog expects {f.size:,}. "
                    "Nothing was downloaded: the file on the Hub is not the one this app knows.",
                    detail=f"{f.repo_id}@{commit}:{f.path}",
                )
            if f.sha256 is not None and hub_sha is not None and f.sha256 != hub_sha:
                raise ManifestMismatchError(
                    f"{f.name}: the Hub's sha256 ({hub_sha[:12]}…) differs from the catalog's "
                    f"({f.sha256[:12]}…). Nothing was downloaded: the file on the Hub is not the one "
                    "this app knows.",
                    detail=f"{f.repo_id}@{commit}:{f.path}",
                )
            resolved.append(
                ResolvedFile(
                    source=f,
                    commit=commit,
                    url=hf_hub_url(f.repo_id, f.path, revision=commit, endpoint=self.endpoint),
                    size=hub_size,
                    sha256=f.sha256 or hub_sha,
                    dest=self.dest_path(build, f),
                )
            )
        return ResolvedBuild(build.id, self.build_dir(build), tuple(resolved))

    @contextlib.contextmanager
    def _hub_errors(self, repo_id: str) -> Iterator[None]:
        """Translate huggingface_hub / httpx2 exceptions into DownloadErrors with UI messages."""
        import httpx2
        from huggingface_hub import errors

        try:
            yield
        except DownloadError:
            raise
        except errors.OfflineModeIsEnabled as exc:
            raise OfflineError(_OFFLINE_MODE_MESSAGE, detail=str(exc)) from exc
        except errors.GatedRepoError as exc:
            raise GatedRepoAccessError(repo_id, detail=type(exc).__name__) from exc
        except errors.RevisionNotFoundError as exc:
            raise ManifestMismatchError(
                f"The pinned revision of {repo_id} no longer exists on the Hub: the catalog is out of date.",
                detail=str(exc),
            ) from exc
        except errors.RepositoryNotFoundError as exc:
            status = getattr(getattr(exc, "response", None), "status_code", None)
            if status in (401, 403):
                raise GatedRepoAccessError(repo_id, detail=f"HTTP {status}") from exc
            raise ManifestMismatchError(
                f"{repo_id} was not found on the Hub (renamed, removed or private).", detail=str(exc)
            ) from exc
        except errors.HfHubHTTPError as exc:
            status = getattr(getattr(exc, "response", None), "status_code", None)
            if status in (401, 403):
                raise GatedRepoAccessError(repo_id, detail=f"HTTP {status}") from exc
            raise DownloadError(
                f"The Hugging Face Hub answered with an error (HTTP {status}). Try again later.",
                detail=str(exc),
            ) from exc
        except (httpx2.TransportError, OSError) as exc:
            raise OfflineError(_OFFLINE_MESSAGE, detail=f"{type(exc).__name__}: {exc}") from exc

    # ----------------------------------------------------------------- disk space

    def check_disk_space(self, resolved: ResolvedBuild) -> None:
        """Raise :class:`NotEnoughDiskSpaceError` unless everything still missing fits."""
        needed = 0
        for f in resolved.files:
            if f.dest.is_file() and f.dest.stat().st_size == f.size:
                continue
            have = 0
            with contextlib.suppress(FileNotFoundError):
                have = min(f.part.stat().st_size, f.size)
            needed += f.size - have
        where = _existing_ancestor(resolved.folder)
        available = self.free_space(where)
        if needed > available:
            raise NotEnoughDiskSpaceError(needed, available, resolved.folder)

    # ----------------------------------------------------------------- download

    def download(self, build: Build) -> InstalledBuild:
        """Resolve, check space, download and verify every file of ``build`` (blocking).

        Clears any earlier pause/cancel first. Raises :class:`DownloadPaused`,
        :class:`DownloadCancelled` or another :class:`DownloadError`; partial data is kept unless
        the user cancelled with ``keep_partial=False``.
        """
        self._pause.clear()
        self._cancel.clear()
        self._wake.clear()
        self._speed.clear()
        self.stats = TransferStats()
        if self.queue is not None:
            self.queue.mark(build.id, "downloading")
        try:
            self._report(build.id, Phase.RESOLVING, "", 0, len(build.all_files), 0, 0, 0, 0)
            resolved = self.resolve(build)
            self._check_stop()
            self.check_disk_space(resolved)
            resolved.folder.mkdir(parents=True, exist_ok=True)
            self._download_files(resolved)
        except DownloadPaused:
            if self.queue is not None:
                self.queue.mark(build.id, "paused")
            raise
        except DownloadCancelled as exc:
            if not exc.kept_partial:
                self.discard_partial(build)
            if self.queue is not None:
                self.queue.remove(build.id)
            raise
        except DownloadError as exc:
            if self.queue is not None:
                self.queue.mark(build.id, "failed", exc.message)
            raise
        if self.queue is not None:
            self.queue.remove(build.id)
        result = self.installed(build)
        if result is None:  # pragma: no cover - every file was just verified into place
            raise DownloadError(f"{build.display_name}: files missing after download.")
        return result

    def _download_files(self, resolved: ResolvedBuild) -> None:
        from huggingface_hub.utils import build_hf_headers

        headers = build_hf_headers(token=self.token or None, library_name="scout-chat")
        headers["Accept-Encoding"] = "identity"  # byte offsets must be file offsets
        build_done = sum(
            f.size for f in resolved.files if f.dest.is_file() and f.dest.stat().st_size == f.size
        )
        opener = urllib.request.build_opener(_RedirectWithoutCrossHostAuth)
        for index, rf in enumerate(resolved.files):
            if rf.dest.is_file() and rf.dest.stat().st_size == rf.size:
                continue
            self._transfer(opener, headers, resolved, index, build_done)
            build_done += rf.size
        self._report(
            resolved.build_id, Phase.DONE, "", len(resolved.files), len(resolved.files),
            0, 0, resolved.total_size, resolved.total_size, force=True,
        )  # fmt: skip

    # ----------------------------------------------------------------- one file

    def _transfer(
        self,
        opener: urllib.request.OpenerDirector,
        base_headers: dict[str, str],
        resolved: ResolvedBuild,
        index: int,
        build_before: int,
    ) -> None:
        rf = resolved.files[index]
        report = self._reporter(resolved, index, build_before)
        sidecar = self._load_sidecar(rf)
        done = 0
        if rf.part.exists():
            done = rf.part.stat().st_size
            if sidecar is None or done > rf.size:
                log.info("discarding unusable partial file %s", rf.part.name)
                rf.part.unlink()
                done = 0
        etag = sidecar.get("etag") if sidecar else None
        hasher = _Hasher(threaded=self.threaded_hash)
        try:
            with open(rf.part, "r+b" if done else "wb") as fh:
                if done:
                    self._rehash(fh, done, hasher, report)
                fh.seek(done)
                fh.truncate(done)
                self._write_sidecar(rf, done, etag)
                failures = 0
                while done < rf.size:
                    self._check_stop()
                    before = done
                    try:
                        done, etag = self._get_once(opener, base_headers, rf, fh, hasher, done, etag, report)
                        if done < rf.size:  # a clean but short body
                            raise _TransientHTTPError(0, None)
                    except _TRANSIENT as exc:
                        done = fh.tell()
                        self._write_sidecar(rf, done, etag)
                        failures = 0 if done > before else failures
                        failures += 1
                        self.stats.retries += 1
                        if failures >= self.max_attempts:
                            raise TransferError(
                                f"The download of {rf.dest.name} keeps failing ({_describe(exc)}). "
                                f"{format_bytes(done)} are kept: resume later.",
                                detail=repr(exc),
                            ) from exc
                        delay = min(self.backoff_max_s, self.backoff_base_s * 2 ** (failures - 1))
                        if isinstance(exc, _TransientHTTPError) and exc.retry_after:
                            delay = max(delay, min(exc.retry_after, self.backoff_max_s))
                        log.info(
                            "%s: %s at byte %d; retry %d/%d in %.1f s",
                            rf.dest.name, _describe(exc), done, failures, self.max_attempts - 1, delay,
                        )  # fmt: skip
                        self._wake.wait(delay)
                    except DownloadInterrupted:
                        self._write_sidecar(rf, fh.tell(), etag)
                        raise
                    except OSError as exc:
                        if exc.errno != errno.ENOSPC:
                            raise
                        self._write_sidecar(rf, fh.tell(), etag)
                        raise DownloadError(
                            f"The disk is full: {rf.dest.name} could not be written in {rf.dest.parent}. "
                            "Free some space, then resume.",
                            detail=str(exc),
                        ) from exc
                report(Phase.VERIFYING, done, force=True)
                fh.flush()
                if self.fsync:
                    os.fsync(fh.fileno())
                actual_size = os.fstat(fh.fileno()).st_size
            digest = hasher.hexdigest()
            self.stats.hash_cpu_s += hasher.cpu_s
        finally:
            hasher.close()
        self._finish(rf, actual_size, digest)

    def _get_once(
        self,
        opener: urllib.request.OpenerDirector,
        base_headers: dict[str, str],
        rf: ResolvedFile,
        fh: Any,
        hasher: _Hasher,
        done: int,
        etag: str | None,
        report: Callable[..., None],
    ) -> tuple[int, str | None]:
        """One GET from ``done``; appends to ``fh`` and returns the new offset and ETag."""
        headers = dict(base_headers)
        if done:
            headers["Range"] = f"bytes={done}-"
            self.stats.ranges_sent.append(headers["Range"])
        self.stats.attempts += 1
        request = urllib.request.Request(rf.url, headers=headers)
        try:
            resp = opener.open(request, timeout=self.connect_timeout_s)
        except urllib.error.HTTPError as exc:
            with contextlib.closing(exc):
                status = exc.code
                if status in (401, 403):
                    raise GatedRepoAccessError(
                        rf.source.repo_id, detail=f"HTTP {status} for {rf.source.path}"
                    ) from None
                if status == 404:
                    raise ManifestMismatchError(
                        f"{rf.source.path} is not on the Hub any more (HTTP 404).", detail=rf.url
                    ) from None
                if status == 416:  # our offset is at/after the end: start the file over
                    self._restart(fh, hasher, rf)
                    return 0, etag
                if status == 429 or status >= 500:
                    raise _TransientHTTPError(status, _retry_after(exc.headers.get("retry-after"))) from None
                raise DownloadError(
                    f"Unexpected answer from the Hub: HTTP {status}.", detail=rf.url
                ) from None
        with resp:
            sock = getattr(getattr(getattr(resp, "fp", None), "raw", None), "_sock", None)
            if sock is not None:  # short timeout to connect, a longer one between reads
                sock.settimeout(self.read_timeout_s)
            status = resp.status
            if status not in (200, 206):
                raise DownloadError(f"Unexpected answer from the Hub: HTTP {status}.", detail=rf.url)
            if status == 206:
                start = _content_range_start(resp.headers.get("content-range"))
                if start != done:
                    log.info(
                        "%s: server answered range start %s for %d; starting over", rf.dest.name, start, done
                    )
                    self._restart(fh, hasher, rf)
                    return 0, etag
            elif done:  # 200 to a Range request: the server ignored Range
                log.info("%s: server ignored Range; downloading from byte 0", rf.dest.name)
                self._restart(fh, hasher, rf)
                done = 0
            new_etag = resp.headers.get("etag")
            if new_etag and etag and new_etag != etag:
                # Content is pinned by sha256 and commit; a different ETag is a CDN detail, and the
                # final sha256 check still guards against mixed data.
                log.info("%s: ETag changed on resume", rf.dest.name)
            etag = new_etag or etag
            # A ring of buffers: the hash thread may still read one while the next is filled.
            ring = [bytearray(self.chunk_size) for _ in range(_Hasher.QUEUE_SIZE + 3)]
            last_sidecar = time.monotonic()
            turn = 0
            while True:
                view = memoryview(ring[turn % len(ring)])
                turn += 1
                n = 0
                try:
                    while n < self.chunk_size:
                        got = resp.readinto(view[n:])
                        if not got:
                            break
                        n += got
                finally:
                    if n:  # bytes received before a drop are good: keep them
                        fh.write(view[:n])
                        hasher.update(view[:n])
                        done += n
                        self.stats.bytes_received += n
                if n < self.chunk_size:
                    break
                if done > rf.size:
                    raise _TransientHTTPError(0, None)
                report(Phase.DOWNLOADING, done)
                now = time.monotonic()
                if now - last_sidecar > 1.0:
                    self._write_sidecar(rf, done, etag)
                    last_sidecar = now
                self._check_stop()
        return done, etag

    def _restart(self, fh: Any, hasher: _Hasher, rf: ResolvedFile) -> None:
        self.stats.range_restarts += 1
        hasher.reset()
        fh.seek(0)
        fh.truncate(0)
        self._write_sidecar(rf, 0, None)

    def _rehash(self, fh: Any, done: int, hasher: _Hasher, report: Callable[..., None]) -> None:
        """Feed the bytes already on disk to the hasher (fast sequential read) before resuming."""
        fh.seek(0)
        read = 0
        while read < done:
            self._check_stop()
            block = fh.read(min(REHASH_BLOCK, done - read))
            if not block:
                break
            hasher.update(block)
            read += len(block)
            report(Phase.REHASHING, read)
        self.stats.bytes_rehashed += read

    def _finish(self, rf: ResolvedFile, actual_size: int, digest: str) -> None:
        problem = ""
        if actual_size != rf.size:
            problem = f"size {actual_size:,} bytes instead of {rf.size:,}"
        elif rf.sha256 is not None and digest != rf.sha256:
            problem = f"sha256 {digest[:12]}… instead of {rf.sha256[:12]}…"
        elif rf.sha256 is None:
            log.info("%s: no sha256 known; checked the size only", rf.dest.name)
        if problem:
            corrupt = rf.corrupt
            n = 1
            while corrupt.exists():  # never overwrite earlier evidence
                corrupt = rf.dest.with_name(f"{rf.dest.name}.corrupt.{n}")
                n += 1
            os.replace(rf.part, corrupt)
            with contextlib.suppress(FileNotFoundError):
                rf.sidecar.unlink()
            raise VerificationError(
                f"{rf.dest.name} failed verification ({problem}). It was not installed; the damaged "
                f"data was kept as {corrupt.name}. Delete it and download the file again?",
                dest=rf.dest,
                corrupt_path=corrupt,
                detail=f"expected sha256 {rf.sha256}, got {digest}",
            )
        os.replace(rf.part, rf.dest)
        with contextlib.suppress(FileNotFoundError):
            rf.sidecar.unlink()
        log.info("%s verified and installed", rf.dest.name)

    # ----------------------------------------------------------------- sidecar

    def _load_sidecar(self, rf: ResolvedFile) -> dict[str, Any] | None:
        """The sidecar if it describes this very file (same size, same sha256 or URL)."""
        try:
            data = json.loads(rf.sidecar.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError, OSError):
            return None
        if not isinstance(data, dict) or data.get("size") != rf.size:
            return None
        if rf.sha256 is not None:
            return data if data.get("sha256") == rf.sha256 else None
        return data if data.get("url") == rf.url else None

    def _write_sidecar(self, rf: ResolvedFile, done: int, etag: str | None) -> None:
        _atomic_write_json(
            rf.sidecar,
            {
                "url": rf.url,
                "repo_id": rf.source.repo_id,
                "path": rf.source.path,
                "commit": rf.commit,
                "size": rf.size,
                "sha256": rf.sha256,
                "etag": etag,
                "bytes_done": done,
            },
        )

    # ----------------------------------------------------------------- stop, progress

    def _check_stop(self) -> None:
        if self._cancel.is_set():
            raise DownloadCancelled(kept_partial=self._keep_partial)
        if self._pause.is_set():
            raise DownloadPaused

    def _reporter(self, resolved: ResolvedBuild, index: int, build_before: int) -> Callable[..., None]:
        rf = resolved.files[index]

        def report(phase: Phase, file_done: int, *, force: bool = False) -> None:
            self._report(
                resolved.build_id, phase, rf.dest.name, index, len(resolved.files),
                file_done, rf.size, build_before + file_done, resolved.total_size, force=force,
            )  # fmt: skip

        report(Phase.DOWNLOADING, 0, force=True)
        return report

    _last_report = 0.0

    def _report(
        self,
        build_id: str,
        phase: Phase,
        name: str,
        index: int,
        count: int,
        file_done: int,
        file_total: int,
        build_done: int,
        build_total: int,
        *,
        force: bool = True,
    ) -> None:
        now = time.monotonic()
        if phase is Phase.DOWNLOADING:
            self._speed.append((now, build_done))
            while len(self._speed) > 2 and now - self._speed[0][0] > 5.0:
                self._speed.popleft()
        if self.progress is None or (not force and now - self._last_report < self.progress_interval_s):
            return
        self._last_report = now
        speed = 0.0
        if len(self._speed) >= 2:
            (t0, b0), (t1, b1) = self._speed[0], self._speed[-1]
            speed = (b1 - b0) / (t1 - t0) if t1 > t0 and b1 >= b0 else 0.0
        eta = (build_total - build_done) / speed if speed > 0 else None
        self.progress(
            DownloadProgress(
                build_id,
                phase,
                name,
                index,
                count,
                file_done,
                file_total,
                build_done,
                build_total,
                speed,
                eta,
            )
        )


def _describe(exc: BaseException) -> str:
    if isinstance(exc, _TransientHTTPError):
        return f"HTTP {exc.status}" if exc.status else "connection closed early"
    return type(exc).__name__


def _retry_after(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None


def _content_range_start(value: str | None) -> int | None:
    match = re.match(r"^\s*bytes\s+(\d+)-\d+/(?:\d+|\*)\s*$", value or "")
    return int(match.group(1)) if match else None
