"""The manifest-level download manager: :class:`Downloader` resolves a build's files against the
Hub, checks disk space, downloads each file with a resumable transfer (:mod:`.transfer`), verifies
it, reports progress, and keeps the state of every build's folder."""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import re
import shutil
import stat
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.core.downloads.errors import (
    DownloadCancelled,
    DownloadError,
    DownloadPaused,
    GatedRepoAccessError,
    ManifestMismatchError,
    NotEnoughDiskSpaceError,
    OfflineError,
)
from app.core.downloads.models import (
    BuildState,
    DownloadProgress,
    InstalledBuild,
    Phase,
    ResolvedBuild,
    ResolvedFile,
    TransferStats,
)
from app.core.downloads.state import QueueState
from app.core.downloads.transfer import CHUNK_SIZE, ResumableTransfers, make_opener

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from app.core.manifest import Downloadable, ModelFile

log = logging.getLogger(__name__)


_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_TRUTHY = {"1", "on", "yes", "true"}


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


class Downloader(ResumableTransfers):
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

    def build_dir(self, build: Downloadable) -> Path:
        return self.models_dir / build.id

    def dest_path(self, build: Downloadable, file: ModelFile) -> Path:
        return self.build_dir(build) / file.name

    def installed(self, build: Downloadable) -> InstalledBuild | None:
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

    def state(self, build: Downloadable) -> BuildState:
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

    def partial_bytes(self, build: Downloadable) -> int:
        total = 0
        for f in build.all_files:
            dest = self.dest_path(build, f)
            for p in (dest, dest.with_name(dest.name + ".part")):
                with contextlib.suppress(FileNotFoundError):
                    total += p.stat().st_size
        return total

    def corrupt_files(self, build: Downloadable) -> list[Path]:
        folder = self.build_dir(build)
        return sorted(folder.glob("*.corrupt*")) if folder.is_dir() else []

    def discard_partial(self, build: Downloadable) -> None:
        """Delete ``.part`` files and sidecars of a build (finished files stay)."""
        for f in build.all_files:
            dest = self.dest_path(build, f)
            for p in (dest.with_name(dest.name + ".part"), dest.with_name(dest.name + ".part.json")):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
        if self.queue is not None:
            self.queue.remove(build.id)

    def delete_corrupt(self, build: Downloadable) -> None:
        """The user chose to re-download: remove the kept ``.corrupt`` data."""
        for p in self.corrupt_files(build):
            p.unlink()

    def delete(self, build: Downloadable) -> None:
        """Remove the build's folder entirely (installed, partial and corrupt data)."""
        folder = self.build_dir(build)
        if folder.is_dir():
            shutil.rmtree(folder)
        if self.queue is not None:
            self.queue.remove(build.id)

    # ----------------------------------------------------------------- resolve

    def resolve(self, build: Downloadable) -> ResolvedBuild:
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

    def download(self, build: Downloadable) -> InstalledBuild:
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
        opener = make_opener()
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
