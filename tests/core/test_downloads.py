"""The downloader against a real HTTP server on 127.0.0.1 standing in for the Hub (tests/hub_server.py)."""

from __future__ import annotations

import json
import logging
import os
import stat
import time
from typing import TYPE_CHECKING, Any

import pytest

from app.core.downloads import (
    BuildState,
    DownloadCancelled,
    Downloader,
    DownloadPaused,
    DownloadProgress,
    GatedRepoAccessError,
    ManifestMismatchError,
    NotEnoughDiskSpaceError,
    OfflineError,
    Phase,
    QueueState,
    TokenStore,
    TransferError,
    VerificationError,
)
from app.core.manifest import Build, parse_manifest
from tests.hub_server import FakeHub, random_bytes, sha256_of

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

MODEL_REPO = "unsloth/Tiny-Scout-GGUF"
PROJ_REPO = "ggml-org/Tiny-Scout-GGUF"
GATED_REPO = "bartowski/Tiny-Scout-GGUF"
PART1 = "Q4_K_M/Tiny-Scout-Q4_K_M-00001-of-00002.gguf"
PART2 = "Q4_K_M/Tiny-Scout-Q4_K_M-00002-of-00002.gguf"
PROJ = "mmproj-Tiny-Scout-f16.gguf"
SINGLE = "Tiny-Scout-Q2.gguf"
TOKEN = "hf_secret_test_token_123"
MiB = 1 << 20

CONTENT = {
    PART1: random_bytes(3 * MiB + 12345, seed=1),
    PART2: random_bytes(2 * MiB + 777, seed=2),
    PROJ: random_bytes(1 * MiB + 99, seed=3),
    SINGLE: random_bytes(2 * MiB + 5, seed=4),
}


def make_build(
    *,
    repo: str = MODEL_REPO,
    files: tuple[str, ...] = (PART1, PART2),
    sizes: dict[str, int | None] | None = None,
    shas: dict[str, str | None] | None = None,
    gated: bool = False,
    build_id: str = "tiny-q4_k_m",
) -> Build:
    sizes = sizes or {}
    shas = shas or {}

    def entry(path: str, **extra: object) -> dict[str, object]:
        return {
            "path": path,
            "size": sizes.get(path, len(CONTENT[path])),
            "sha256": shas.get(path, sha256_of(CONTENT[path])),
            **extra,
        }

    doc = {
        "schema_version": 1,
        "builds": [
            {
                "id": build_id,
                "display_name": "Tiny Scout",
                "repo_id": repo,
                "revision": "main",
                "revision_note": "resolved at download time",
                "quantization": "Q4_K_M",
                "bits_per_weight": 4.85,
                "approx_size_bytes": 6 * MiB,
                "files": [entry(p) for p in files],
                "projector": entry(PROJ, repo_id=PROJ_REPO, revision="main"),
                "gated": gated,
                "licence": {
                    "name": "Llama 4 Community License",
                    "url": "https://example.invalid",
                    "note": "n",
                },
                "recommended": {"context": 8192, "temperature": 0.6, "top_p": 0.9, "min_p": 0.01},
                "who_for": "tests",
            }
        ],
    }
    return parse_manifest(doc).builds[0]


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    server = FakeHub()
    server.add_repo(MODEL_REPO, {PART1: CONTENT[PART1], PART2: CONTENT[PART2], SINGLE: CONTENT[SINGLE]})
    server.add_repo(PROJ_REPO, {PROJ: CONTENT[PROJ]})
    server.add_repo(GATED_REPO, {SINGLE: CONTENT[SINGLE]}, gated=True, token=TOKEN)
    with server:
        yield server


@pytest.fixture
def make_downloader(
    hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., Downloader]:
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def factory(**kwargs: Any) -> Downloader:
        kwargs.setdefault("endpoint", hub.url)
        kwargs.setdefault("queue_state", tmp_path / "downloads.json")
        kwargs.setdefault("backoff_base_s", 0.01)
        kwargs.setdefault("progress_interval_s", 0.0)
        return Downloader(tmp_path / "models", **kwargs)

    return factory


def file_gets(hub: FakeHub) -> list[str]:
    return [r.path for r in hub.requests if r.method == "GET" and "/api/" not in r.path]


def pause_after(downloader: Downloader, name: str, n_bytes: int) -> list[DownloadProgress]:
    seen: list[DownloadProgress] = []

    def on_progress(p: DownloadProgress) -> None:
        seen.append(p)
        if p.phase is Phase.DOWNLOADING and p.file_name == name and p.file_done >= n_bytes:
            downloader.pause()

    downloader.progress = on_progress
    return seen


# ----------------------------------------------------------------------------- the happy path


@pytest.mark.parametrize("redirect", [False, True], ids=["direct", "cdn-redirect"])
def test_full_download_of_a_split_build_and_projector(
    hub: FakeHub, make_downloader: Callable[..., Downloader], tmp_path: Path, redirect: bool
) -> None:
    hub.redirect = redirect
    reports: list[DownloadProgress] = []
    downloader = make_downloader(progress=reports.append)
    build = make_build()

    installed = downloader.download(build)

    folder = tmp_path / "models" / build.id
    assert installed.folder == folder
    assert installed.model_files == (folder / PART1.split("/")[-1], folder / PART2.split("/")[-1])
    assert installed.model_path.name.endswith("-00001-of-00002.gguf")
    assert installed.projector == folder / PROJ
    for path, data in ((PART1, CONTENT[PART1]), (PART2, CONTENT[PART2]), (PROJ, CONTENT[PROJ])):
        assert (folder / path.split("/")[-1]).read_bytes() == data
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        p.name for p in (*installed.model_files, folder / PROJ)
    )
    assert downloader.state(build) is BuildState.INSTALLED
    assert QueueState(tmp_path / "downloads.json").entries() == []

    total = sum(len(CONTENT[p]) for p in (PART1, PART2, PROJ))
    downloading = [r for r in reports if r.phase is Phase.DOWNLOADING]
    assert [r.build_done for r in downloading] == sorted(r.build_done for r in downloading)
    assert {r.file_index for r in downloading} == {0, 1, 2}
    assert all(r.build_total == total for r in downloading)
    assert reports[-1].phase is Phase.DONE
    assert reports[-1].build_done == total
    assert any(r.speed_bps > 0 and r.eta_s is not None for r in downloading)
    assert downloader.stats.bytes_received == total
    if redirect:
        assert any(r.path.startswith("/_cdn/") for r in hub.requests)

    # A second call finds everything in place and fetches nothing.
    before = len(file_gets(hub))
    downloader.download(build)
    assert len(file_gets(hub)) == before


def test_the_pinned_commit_is_used_for_every_file(
    hub: FakeHub, make_downloader: Callable[..., Downloader]
) -> None:
    downloader = make_downloader()
    resolved = downloader.resolve(make_build())
    commit = hub.repos[MODEL_REPO].commit
    assert resolved.files[0].commit == commit
    assert f"/resolve/{commit}/" in resolved.files[0].url
    assert resolved.files[0].url.startswith(hub.url)
    assert resolved.files[2].commit == hub.repos[PROJ_REPO].commit


# ----------------------------------------------------------------------------- pause, resume, restart


def test_pause_then_resume_continues_from_the_partial_byte(
    hub: FakeHub, make_downloader: Callable[..., Downloader], tmp_path: Path
) -> None:
    downloader = make_downloader()
    build = make_build()
    name1 = PART1.split("/")[-1]
    pause_after(downloader, name1, MiB)

    with pytest.raises(DownloadPaused):
        downloader.download(build)

    part = tmp_path / "models" / build.id / f"{name1}.part"
    kept = part.stat().st_size
    assert MiB <= kept < len(CONTENT[PART1])
    sidecar = json.loads(part.with_name(part.name + ".json").read_text())
    assert sidecar["bytes_done"] == kept
    assert sidecar["sha256"] == sha256_of(CONTENT[PART1])
    assert sidecar["size"] == len(CONTENT[PART1])
    assert sidecar["url"].startswith(hub.url)
    assert not (tmp_path / "models" / build.id / name1).exists()
    assert downloader.state(build) is BuildState.PARTIAL
    assert QueueState(tmp_path / "downloads.json").entries()[0]["state"] == "paused"

    downloader.progress = None
    downloader.download(build)

    assert (tmp_path / "models" / build.id / name1).read_bytes() == CONTENT[PART1]
    assert hub.ranges_seen(PART1) == [None, f"bytes={kept}-"]
    assert downloader.stats.bytes_rehashed == kept
    assert QueueState(tmp_path / "downloads.json").pending_build_ids() == []


def test_a_new_downloader_object_resumes_the_part_file(
    hub: FakeHub, make_downloader: Callable[..., Downloader], tmp_path: Path
) -> None:
    """An app restart: a fresh Downloader (and queue state read back from disk) resumes."""
    build = make_build()
    name2 = PART2.split("/")[-1]
    first = make_downloader()
    pause_after(first, name2, MiB)
    with pytest.raises(DownloadPaused):
        first.download(build)
    part = tmp_path / "models" / build.id / f"{name2}.part"
    kept = part.stat().st_size
    del first

    assert QueueState(tmp_path / "downloads.json").pending_build_ids() == [build.id]
    second = make_downloader()
    installed = second.download(build)

    assert installed.model_files[1].read_bytes() == CONTENT[PART2]
    assert hub.ranges_seen(PART2)[-1] == f"bytes={kept}-"
    assert second.stats.bytes_received == len(CONTENT[PART2]) - kept + len(CONTENT[PROJ])
    assert len(hub.ranges_seen(PART1)) == 1  # the finished first shard was not fetched again


def test_after_a_crash_the_part_file_size_wins_over_a_stale_sidecar(
    hub: FakeHub, make_downloader: Callable[..., Downloader], tmp_path: Path
) -> None:
    build = make_build(files=(SINGLE,), build_id="tiny-single")
    downloader = make_downloader()
    pause_after(downloader, SINGLE, MiB)
    with pytest.raises(DownloadPaused):
        downloader.download(build)
    part = tmp_path / "models" / build.id / f"{SINGLE}.part"
    sidecar = part.with_name(part.name + ".json")
    data = json.loads(sidecar.read_text())
    data["bytes_done"] = 0  # the process died before the sidecar caught up
    sidecar.write_text(json.dumps(data))
    kept = part.stat().st_size

    make_downloader().download(build)

    assert hub.ranges_seen(SINGLE)[-1] == f"bytes={kept}-"
    assert (tmp_path / "models" / build.id / SINGLE).read_bytes() == CONTENT[SINGLE]


def test_connection_dropped_mid_file_resumes_from_the_partial_byte(
    hub: FakeHub, make_downloader: Callable[..., Downloader], tmp_path: Path
) -> None:
    cut = 1_500_000
    hub.drop_connection(PART1, at=cut)
    downloader = make_downloader()

    installed = downloader.download(make_build())

    assert installed.model_files[0].read_bytes() == CONTENT[PART1]
    assert hub.ranges_seen(PART1) == [None, f"bytes={cut}-"]
    assert downloader.stats.retries == 1
    assert downloader.stats.bytes_received == sum(len(CONTENT[p]) for p in (PART1, PART2, PROJ))


def test_transient_server_errors_are_retried_with_backoff(
    hub: FakeHub, make_downloader: Callable[..., Downloader]
) -> None:
    hub.fail_with(PART1, status=503, times=2)
    hub.fail_with(PROJ, status=429, times=1, retry_after=0.05)
    downloader = make_downloader()
    t0 = time.monotonic()
    installed = downloader.download(make_build())
    assert installed.model_files[0].read_bytes() == CONTENT[PART1]
    assert downloader.stats.retries == 3
    assert time.monotonic() - t0 >= 0.05  # Retry-After was honoured


def test_retries_are_bounded_and_the_partial_data_is_kept(
    hub: FakeHub, make_downloader: Callable[..., Downloader], tmp_path: Path
) -> None:
    hub.drop_connection(SINGLE, at=MiB + 10)
    hub.fail_with(SINGLE, status=502, times=-1, skip=1)  # after the first GET, only 502s
    build = make_build(files=(SINGLE,), build_id="tiny-single")
    downloader = make_downloader(max_attempts=3)

    with pytest.raises(TransferError) as err:
        downloader.download(build)

    assert "keeps failing" in err.value.message
    assert "resume later" in err.value.message
    part = tmp_path / "models" / build.id / f"{SINGLE}.part"
    assert part.stat().st_size == MiB + 10
    assert json.loads(part.with_name(part.name + ".json").read_text())["bytes_done"] == MiB + 10
    assert QueueState(tmp_path / "downloads.json").entries()[0]["state"] == "failed"


def test_a_server_that_ignores_range_restarts_the_file_cleanly(
    hub: FakeHub, make_downloader: Callable[..., Downloader], tmp_path: Path
) -> None:
    build = make_build(files=(SINGLE,), build_id="tiny-single")
    downloader = make_downloader()
    pause_after(downloader, SINGLE, MiB)
    with pytest.raises(DownloadPaused):
        downloader.download(build)
    hub.ignore_range(SINGLE)
    downloader.progress = None

    installed = downloader.download(build)

    assert installed.model_files[0].read_bytes() == CONTENT[SINGLE]
    assert downloader.stats.range_restarts == 1
    assert hub.ranges_seen(SINGLE)[-1] is not None  # we asked for a range; got 200; started over


@pytest.mark.parametrize("keep", [True, False])
def test_cancel_keeps_or_deletes_the_partial_data(
    hub: FakeHub, make_downloader: Callable[..., Downloader], tmp_path: Path, keep: bool
) -> None:
    build = make_build(files=(SINGLE,), build_id="tiny-single")
    downloader = make_downloader()

    def on_progress(p: DownloadProgress) -> None:
        if p.file_done >= MiB:
            downloader.cancel(keep_partial=keep)

    downloader.progress = on_progress
    with pytest.raises(DownloadCancelled) as err:
        downloader.download(build)

    assert err.value.kept_partial is keep
    part = tmp_path / "models" / build.id / f"{SINGLE}.part"
    assert part.exists() is keep
    assert part.with_name(part.name + ".json").exists() is keep
    assert QueueState(tmp_path / "downloads.json").entries() == []


def test_pause_from_another_thread(hub: FakeHub, make_downloader: Callable[..., Downloader]) -> None:
    import threading

    downloader = make_downloader()
    started = threading.Event()
    downloader.progress = lambda p: started.set() if p.file_done else None
    hub.fail_with(PART1, status=503, times=-1)  # the worker sits in back-off: pause must wake it
    result: list[BaseException] = []

    def work() -> None:
        try:
            downloader.download(make_build())
        except Exception as exc:  # noqa: BLE001 - handed to the test thread
            result.append(exc)

    downloader.backoff_base_s = 30.0
    worker = threading.Thread(target=work)
    worker.start()
    time.sleep(0.3)
    t0 = time.monotonic()
    downloader.pause()
    worker.join(timeout=5)
    assert not worker.is_alive()
    assert time.monotonic() - t0 < 2
    assert isinstance(result[0], DownloadPaused)


# ----------------------------------------------------------------------------- verification


def test_a_flipped_byte_fails_verification_and_keeps_the_data(
    hub: FakeHub, make_downloader: Callable[..., Downloader], tmp_path: Path
) -> None:
    hub.flip_byte(PART2, offset=1_000_001)
    downloader = make_downloader()
    build = make_build()

    with pytest.raises(VerificationError) as err:
        downloader.download(build)

    folder = tmp_path / "models" / build.id
    name2 = PART2.split("/")[-1]
    assert not (folder / name2).exists()
    assert not (folder / f"{name2}.part").exists()
    corrupt = folder / f"{name2}.corrupt"
    assert err.value.corrupt_path == corrupt
    bad = corrupt.read_bytes()
    assert len(bad) == len(CONTENT[PART2])
    assert bad[1_000_001] == CONTENT[PART2][1_000_001] ^ 0xFF
    assert "failed verification" in err.value.message
    assert "sha256" in err.value.message
    assert "download the file again" in err.value.message
    assert downloader.state(build) is BuildState.CORRUPT
    assert downloader.installed(build) is None
    assert QueueState(tmp_path / "downloads.json").entries()[0]["state"] == "failed"

    # The user accepts the offer: the kept data goes, the download starts over and succeeds.
    hub.faults.clear()
    downloader.delete_corrupt(build)
    installed = downloader.download(build)
    assert installed.model_files[1].read_bytes() == CONTENT[PART2]


# ----------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("what", ["size", "sha256"])
def test_manifest_mismatch_with_the_hub_refuses_to_download(
    hub: FakeHub, make_downloader: Callable[..., Downloader], tmp_path: Path, what: str
) -> None:
    build = (
        make_build(sizes={PART2: len(CONTENT[PART2]) + 1})
        if what == "size"
        else make_build(shas={PART2: "0" * 64})
    )
    with pytest.raises(ManifestMismatchError) as err:
        make_downloader().download(build)
    assert "Nothing was downloaded" in err.value.message
    assert PART2.split("/")[-1] in err.value.message
    assert file_gets(hub) == []
    assert not (tmp_path / "models" / build.id).exists()


def test_a_file_missing_at_the_pinned_revision_refuses(
    hub: FakeHub, make_downloader: Callable[..., Downloader]
) -> None:
    del hub.repos[MODEL_REPO].files[PART2]
    with pytest.raises(ManifestMismatchError, match="not in"):
        make_downloader().download(make_build(sizes={PART2: None}, shas={PART2: None}))


def test_unknown_sizes_and_hashes_are_taken_from_the_hub(
    hub: FakeHub, make_downloader: Callable[..., Downloader]
) -> None:
    build = make_build(sizes={PART1: None}, shas={PART1: None})
    resolved = make_downloader().resolve(build)
    assert resolved.files[0].size == len(CONTENT[PART1])
    assert resolved.files[0].sha256 == sha256_of(CONTENT[PART1])


def test_not_enough_disk_space_is_refused_before_any_transfer(
    hub: FakeHub, make_downloader: Callable[..., Downloader], tmp_path: Path
) -> None:
    asked: list[Path] = []

    def tiny_disk(path: Path) -> int:
        asked.append(path)
        return 1_000_000

    build = make_build()
    with pytest.raises(NotEnoughDiskSpaceError) as err:
        make_downloader(free_space=tiny_disk).download(build)

    total = sum(len(CONTENT[p]) for p in (PART1, PART2, PROJ))
    assert err.value.needed == total
    assert err.value.message.startswith("Not enough disk space: need ")
    assert err.value.message.endswith(f"more in {tmp_path / 'models' / build.id}")
    assert f"need {(total - 1_000_000) / 1e6:.1f} MB more" in err.value.message
    assert asked
    assert asked[0].exists()
    assert file_gets(hub) == []


def test_disk_check_counts_only_what_is_still_missing(
    hub: FakeHub, make_downloader: Callable[..., Downloader]
) -> None:
    build = make_build()
    downloader = make_downloader()
    pause_after(downloader, PART2.split("/")[-1], MiB)
    with pytest.raises(DownloadPaused):
        downloader.download(build)
    downloader.progress = None
    already = downloader.partial_bytes(build)
    total = sum(len(CONTENT[p]) for p in (PART1, PART2, PROJ))

    downloader.free_space = lambda _path: total - already  # exactly enough
    downloader.download(build)
    assert downloader.state(build) is BuildState.INSTALLED


# ----------------------------------------------------------------------------- gated repos, tokens


def test_gated_repo_without_a_token_explains_the_licence(
    hub: FakeHub, make_downloader: Callable[..., Downloader]
) -> None:
    build = make_build(repo=GATED_REPO, files=(SINGLE,), gated=True, build_id="tiny-gated")
    with pytest.raises(GatedRepoAccessError) as err:
        make_downloader().download(build)
    assert err.value.message == (
        "This model is gated: accept the licence on the model page "
        f"(https://huggingface.co/{GATED_REPO}), then paste a Hugging Face token."
    )


def test_gated_repo_with_a_wrong_token_gives_the_same_message(
    hub: FakeHub, make_downloader: Callable[..., Downloader]
) -> None:
    build = make_build(repo=GATED_REPO, files=(SINGLE,), gated=True, build_id="tiny-gated")
    with pytest.raises(GatedRepoAccessError, match="accept the licence"):
        make_downloader(token="hf_wrong").download(build)


def test_gated_repo_with_the_token_downloads_and_never_logs_it(
    hub: FakeHub, make_downloader: Callable[..., Downloader], caplog: pytest.LogCaptureFixture
) -> None:
    build = make_build(repo=GATED_REPO, files=(SINGLE,), gated=True, build_id="tiny-gated")
    with caplog.at_level(logging.DEBUG):
        installed = make_downloader(token=TOKEN).download(build)
    assert installed.model_files[0].read_bytes() == CONTENT[SINGLE]
    assert any(r.authorized for r in hub.requests if "/resolve/" in r.path)
    assert TOKEN not in caplog.text


def test_token_store_file_fallback_is_private(tmp_path: Path) -> None:
    store = TokenStore(tmp_path, use_keyring=False)
    assert store.backend == "file"
    assert store.get() is None
    store.set(f"  {TOKEN}\n")
    assert store.get() == TOKEN
    if os.name == "posix":
        assert stat.S_IMODE(store.file.stat().st_mode) == 0o600
    store.clear()
    assert store.get() is None
    assert not store.file.exists()


# ----------------------------------------------------------------------------- offline


def test_offline_mode_gives_a_clear_message_at_once(
    hub: FakeHub, make_downloader: Callable[..., Downloader], monkeypatch: pytest.MonkeyPatch
) -> None:
    downloader = make_downloader()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.monotonic()
    with pytest.raises(OfflineError) as err:
        downloader.download(make_build())
    assert time.monotonic() - t0 < 1.0
    assert err.value.message.startswith("You are offline")
    assert hub.requests == []


def test_an_unreachable_hub_gives_the_offline_message_promptly(
    make_downloader: Callable[..., Downloader], tmp_path: Path
) -> None:
    with FakeHub() as gone:
        dead_url = gone.url  # a port nobody listens on once stopped
    downloader = make_downloader(endpoint=dead_url)
    t0 = time.monotonic()
    with pytest.raises(OfflineError) as err:
        downloader.download(make_build())
    assert time.monotonic() - t0 < 5.0
    assert "cannot be reached" in err.value.message
    assert QueueState(tmp_path / "downloads.json").entries()[0]["state"] == "failed"


def test_installed_treats_a_file_vanishing_meanwhile_as_not_installed(tmp_path, monkeypatch) -> None:
    """The GUI thread asks while the download thread moves or deletes files: no exception."""
    from pathlib import Path

    from app.core.downloads import BuildState, Downloader
    from app.core.manifest import load_manifest

    build = load_manifest().builds[0]
    downloader = Downloader(tmp_path)
    for file in build.all_files:
        target = downloader.dest_path(build, file)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"")
    real_stat = Path.stat
    looks: dict[str, int] = {}

    def vanishing_stat(self, *args, **kwargs):
        # the projector is there at the first look and gone at the next (moved/deleted meanwhile)
        if self.name == build.all_files[-1].name:
            looks[self.name] = looks.get(self.name, 0) + 1
            if looks[self.name] > 1:
                raise FileNotFoundError(self)
        return real_stat(self, *args, **kwargs)

    monkeypatch.setattr(Path, "stat", vanishing_stat)
    assert downloader.installed(build) is None  # sizes differ from the manifest: not installed
    looks.clear()
    assert downloader.state(build) is not BuildState.INSTALLED  # and no exception either way
