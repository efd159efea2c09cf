"""Downloads under faults, against a loopback Hub (tests/hub_server.py, extended in hubtools.py).

Every completed file must verify by sha256, no corrupt file may ever sit at the destination, and
the bytes sent by the server must stay ≤ 1.05 × the file size (the wrong-byte case, which must
download again, is reported on its own).
"""

from __future__ import annotations

import builtins
import errno
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

import app.core.downloads.transfer as downloads_module
from app.core.downloads import (
    BuildState,
    Downloader,
    DownloadError,
    NotEnoughDiskSpaceError,
    TransferError,
    VerificationError,
)
from tests.hub_server import HubFile, random_bytes, sha256_of
from tests.reliability.figures import emit
from tests.reliability.hubtools import FILE, REPO, FaultyHub, Stall, build_doc, make_build

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

ROOT = Path(__file__).resolve().parents[2]
MiB = 1 << 20
DATA = random_bytes(4 * MiB + 4321, seed=11)
OVERHEAD = 1.05


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultyHub]:
    server = FaultyHub()
    server.add_repo(REPO, {FILE: DATA})
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server


@pytest.fixture
def make_downloader(hub: FaultyHub, tmp_path: Path) -> Callable[..., Downloader]:
    def factory(**kwargs: Any) -> Downloader:
        kwargs.setdefault("endpoint", hub.url)
        kwargs.setdefault("queue_state", tmp_path / "downloads.json")
        kwargs.setdefault("backoff_base_s", 0.01)
        kwargs.setdefault("chunk_size", 128 * 1024)
        kwargs.setdefault("read_timeout_s", 0.5)
        return Downloader(tmp_path / "models", **kwargs)

    return factory


def _dest(tmp_path: Path) -> Path:
    return tmp_path / "models" / "rel-q2" / FILE


def _assert_installed(tmp_path: Path) -> None:
    dest = _dest(tmp_path)
    assert sha256_of(dest.read_bytes()) == sha256_of(DATA)
    assert not dest.with_name(dest.name + ".part").exists()
    assert not dest.with_name(dest.name + ".part.json").exists()


def _assert_nothing_corrupt_in_place(tmp_path: Path) -> None:
    dest = _dest(tmp_path)
    if dest.exists():  # anything at the destination must be the verified file
        assert sha256_of(dest.read_bytes()) == sha256_of(DATA)


RUNS = [
    ("drop x1", lambda h, r: h.drop_connection(FILE, at=r.randrange(1, len(DATA)))),
    (
        "drop x3",
        lambda h, r: [h.drop_connection(FILE, at=o) for o in sorted(r.sample(range(1, len(DATA)), 3))],
    ),
    ("drop at 1", lambda h, r: h.drop_connection(FILE, at=1)),
    ("drop at end-1", lambda h, r: h.drop_connection(FILE, at=len(DATA) - 1)),
    ("503 x2", lambda h, r: h.fail_with(FILE, 503, times=2)),
    (
        "500 then drop",
        lambda h, r: (h.fail_with(FILE, 500), h.drop_connection(FILE, at=r.randrange(1, len(DATA)))),
    ),
    ("429 retry-after", lambda h, r: h.fail_with(FILE, 429, retry_after=0.05)),
    ("503 after a drop", lambda h, r: (h.drop_connection(FILE, at=MiB), h.fail_with(FILE, 503, skip=1))),
    ("stall 2s", lambda h, r: h.stalls.append(Stall(after=r.randrange(1, len(DATA)), seconds=1.5))),
    (
        "stall x2",
        lambda h, r: h.stalls.extend([Stall(after=100_000, seconds=1.0), Stall(after=30_000, seconds=1.0)]),
    ),
    ("ignore range after drop", lambda h, r: (h.drop_connection(FILE, at=64 * 1024), h.ignore_range(FILE))),
]


@pytest.mark.parametrize(("name", "inject"), RUNS, ids=[r[0] for r in RUNS])
def test_faults_recover_with_bounded_overhead(
    hub: FaultyHub, make_downloader: Callable[..., Downloader], tmp_path: Path, name: str, inject: Any
) -> None:
    inject(hub, random.Random(name))
    downloader = make_downloader()
    build = make_build(DATA)
    started = time.monotonic()
    downloader.download(build)
    elapsed = time.monotonic() - started
    _assert_installed(tmp_path)
    ratio = hub.body_bytes / len(DATA)
    emit(
        f"{name}: {hub.body_bytes} bytes sent for {len(DATA)} ({ratio:.4f}x), {elapsed:.2f} s, "
        f"{downloader.stats.retries} retries"
    )
    if name == "ignore range after drop":
        assert ratio <= 1 + 64 * 1024 / len(DATA) + 0.001  # the 64 KiB before the drop, fetched twice
    else:
        assert ratio <= OVERHEAD
    if name == "ignore range after drop":
        assert ratio <= 1 + 64 * 1024 / len(DATA) + 0.001  # the 64 KiB before the drop, fetched twice
    else:
        assert ratio <= OVERHEAD
    assert downloader.state(build) is BuildState.INSTALLED


def test_a_wrong_byte_is_never_installed_and_the_retry_verifies(
    hub: FaultyHub, make_downloader: Callable[..., Downloader], tmp_path: Path
) -> None:
    hub.flip_byte(FILE, offset=len(DATA) // 2, times=1)
    downloader = make_downloader()
    build = make_build(DATA)
    with pytest.raises(VerificationError) as err:
        downloader.download(build)
    assert "failed verification" in err.value.message
    assert not _dest(tmp_path).exists()
    assert err.value.corrupt_path.exists()
    assert downloader.state(build) is BuildState.CORRUPT
    first = hub.body_bytes
    err.value.corrupt_path.unlink()  # what the UI does after "Delete it and download again?"
    downloader.download(build)
    _assert_installed(tmp_path)
    emit(f"wrong byte: {hub.body_bytes / len(DATA):.3f}x in all ({first} bytes on the rejected copy)")
    assert hub.body_bytes <= 2 * len(DATA) * OVERHEAD


def test_a_server_that_always_sends_a_short_body_fails_cleanly(
    hub: FaultyHub, make_downloader: Callable[..., Downloader], tmp_path: Path
) -> None:
    hub.short_by = 1000
    downloader = make_downloader(max_attempts=3)
    build = make_build(DATA)
    started = time.monotonic()
    with pytest.raises(TransferError) as err:
        downloader.download(build)
    assert time.monotonic() - started < 10
    assert "keeps failing" in err.value.message
    assert "resume later" in err.value.message
    _assert_nothing_corrupt_in_place(tmp_path)
    assert not _dest(tmp_path).exists()
    part = _dest(tmp_path).with_name(FILE + ".part")
    assert part.stat().st_size == len(DATA) - 1000  # kept for a later resume
    assert hub.body_bytes <= len(DATA) * OVERHEAD
    hub.short_by = 0
    downloader.download(build)
    _assert_installed(tmp_path)
    assert hub.body_bytes <= len(DATA) * OVERHEAD


class _LyingSize(HubFile):
    """The Hub's metadata (size, sha256) describes the whole file, but fewer bytes exist."""

    @property
    def size(self) -> int:
        return len(DATA)


def test_a_file_shorter_than_the_hub_claims_does_not_loop_forever(
    hub: FaultyHub, make_downloader: Callable[..., Downloader], tmp_path: Path
) -> None:
    hub.repos[REPO].files[FILE] = _LyingSize(data=DATA[: len(DATA) - 5000], sha256_hex=sha256_of(DATA))
    downloader = make_downloader(max_attempts=3)
    result: dict[str, BaseException] = {}

    def run() -> None:
        try:
            downloader.download(make_build(DATA))
        except BaseException as exc:  # noqa: BLE001 - inspected below
            result["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=8)
    looping = thread.is_alive()
    if looping:
        downloader.cancel(keep_partial=True)
        thread.join(timeout=10)
    sent = hub.body_bytes
    _assert_nothing_corrupt_in_place(tmp_path)
    assert not _dest(tmp_path).exists()
    assert not looping, f"still downloading after 8 s: {sent / len(DATA):.1f}x the file sent"
    assert isinstance(result.get("error"), DownloadError)
    assert sent <= 2 * len(DATA)


def _enospc_open(after: int) -> Callable[..., Any]:
    """``open`` for app.core.downloads.transfer: its .part file raises ENOSPC after ``after`` bytes."""

    class Full:
        def __init__(self, inner: Any) -> None:
            self._inner = inner

        def write(self, data: Any) -> int:
            room = after - self._inner.tell()
            if room <= 0:
                raise OSError(errno.ENOSPC, "No space left on device")
            if len(data) > room:
                self._inner.write(memoryview(data)[:room])
                raise OSError(errno.ENOSPC, "No space left on device")
            return int(self._inner.write(data))

        def __enter__(self) -> Full:
            return self

        def __exit__(self, *exc: object) -> None:
            self._inner.close()

        def __getattr__(self, name: str) -> Any:
            return getattr(self._inner, name)

    def fake_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        inner = builtins.open(file, mode, *args, **kwargs)  # noqa: SIM115 - returned to the caller
        return Full(inner) if str(file).endswith(".part") else inner

    return fake_open


def test_disk_full_mid_download_keeps_the_partial_and_resumes(
    hub: FaultyHub,
    make_downloader: Callable[..., Downloader],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    build = make_build(DATA)
    hub.rate_bps = 40 * MiB  # the server does not run ahead of the client into socket buffers
    # a seam without touching app code: the module looks ``open`` up in its globals first
    monkeypatch.setattr(downloads_module, "open", _enospc_open(MiB + 7), raising=False)
    downloader = make_downloader()
    with pytest.raises(DownloadError) as err:
        downloader.download(build)
    assert err.value.message.startswith("The disk is full"), err.value.message
    assert "resume" in err.value.message
    part = _dest(tmp_path).with_name(FILE + ".part")
    assert part.stat().st_size == MiB + 7
    assert part.read_bytes() == DATA[: MiB + 7]
    assert json.loads((tmp_path / "downloads.json").read_text())["downloads"][0]["state"] == "failed"
    assert not _dest(tmp_path).exists()

    # the free-space check now counts only what is missing, and refuses before any transfer
    time.sleep(0.3)  # let the server's handler notice the closed connection
    before = hub.body_bytes
    with pytest.raises(NotEnoughDiskSpaceError) as space:
        make_downloader(free_space=lambda _p: 1000).download(build)
    assert space.value.needed == len(DATA) - (MiB + 7)
    assert hub.body_bytes == before
    assert part.stat().st_size == MiB + 7

    monkeypatch.delattr(downloads_module, "open")
    make_downloader().download(build)
    _assert_installed(tmp_path)
    assert hub.body_bytes <= len(DATA) * OVERHEAD


# ------------------------------------------------------------------ SIGKILL of the downloading process

KILL_FILE = random_bytes(48 * MiB + 99, seed=12)


def test_sigkill_the_downloading_process_then_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """20–24 SIGKILLs at random moments, each followed by a new process that resumes."""
    rng = random.Random(int(os.environ.get("SCOUT_RELIABILITY_SEED", "3")))
    kills = rng.randint(20, 24)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps(build_doc(KILL_FILE)), encoding="utf-8")
    models = tmp_path / "models"
    dest = models / "rel-q2" / FILE
    chunk = 64 * 1024
    hub = FaultyHub(rate_bps=8 * MiB)  # throttled: a run lasts long enough to be killed mid-file
    hub.add_repo(REPO, {FILE: KILL_FILE})
    done_line = ""
    killed = 0
    part_sizes = []
    with hub:
        env = {**os.environ, "HF_ENDPOINT": hub.url}
        for attempt in range(kills + 10):
            side = tmp_path / f"child{attempt}.side"
            proc = subprocess.Popen(
                [sys.executable, "-m", "tests.reliability.download_child",
                 hub.url, str(models), str(manifest), str(chunk), str(side)],
                cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )  # fmt: skip
            deadline = time.monotonic() + 30
            while not side.exists() or "started" not in side.read_text():
                assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
                assert time.monotonic() < deadline
                time.sleep(0.01)
            if killed < kills:
                time.sleep(rng.uniform(0.02, 0.3))
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
                if proc.returncode == -signal.SIGKILL:
                    killed += 1
            else:
                proc.wait(timeout=60)
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            if proc.stderr:
                proc.stderr.close()
            assert proc.returncode in (0, -signal.SIGKILL), err[-3000:]
            part = dest.with_name(FILE + ".part")
            part_sizes.append(part.stat().st_size if part.exists() else -1)
            _assert_dest_ok(dest)
            if proc.returncode == 0:
                done_line = side.read_text().splitlines()[-1]
                break
    assert done_line.startswith("done"), f"never finished after {killed} kills"
    assert sha256_of(dest.read_bytes()) == sha256_of(KILL_FILE)
    ratio = hub.body_bytes / len(KILL_FILE)
    emit(
        f"process kills: {killed}, bytes sent {hub.body_bytes} = {ratio:.4f}x the file; "
        f".part MiB after each run: {[round(s / MiB, 1) for s in part_sizes]}"
    )
    assert killed >= 20
    assert ratio <= OVERHEAD


def _assert_dest_ok(dest: Path) -> None:
    if dest.exists():
        assert sha256_of(dest.read_bytes()) == sha256_of(KILL_FILE), "a corrupt file was put in place"
