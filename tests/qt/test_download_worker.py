"""DownloadController + DownloadWorker on their real QThread against the loopback Hub (tests/hub_server)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import pytest

from app.core.downloads import DownloadProgress, InstalledBuild, TokenStore
from app.core.manifest import Manifest
from app.workers.downloads import DownloadController
from tests.core.test_downloads import (
    CONTENT,
    GATED_REPO,
    MODEL_REPO,
    PART1,
    PART2,
    PROJ,
    PROJ_REPO,
    SINGLE,
    TOKEN,
    make_build,
)
from tests.hub_server import FakeHub

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from app.core.manifest import Build

MiB = 1 << 20
STALL_AT = MiB + 4321  # the server cuts PART1 here; the client then backs off (a window to act in)

SPLIT = make_build()  # two parts + projector
SINGLE_BUILD = make_build(files=(SINGLE,), build_id="tiny-single")
GATED = make_build(repo=GATED_REPO, files=(SINGLE,), gated=True, build_id="tiny-gated")
TEST_MANIFEST = Manifest(schema_version=1, model="Tiny Scout", builds=(SPLIT, SINGLE_BUILD, GATED))


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    server = FakeHub()
    server.add_repo(MODEL_REPO, {PART1: CONTENT[PART1], PART2: CONTENT[PART2], SINGLE: CONTENT[SINGLE]})
    server.add_repo(PROJ_REPO, {PROJ: CONTENT[PROJ]})
    server.add_repo(GATED_REPO, {SINGLE: CONTENT[SINGLE]}, gated=True, token=TOKEN)
    with server:
        yield server


def new_controller(
    hub: FakeHub, root: Path, manifest: Manifest = TEST_MANIFEST, **options: Any
) -> DownloadController:
    options.setdefault("backoff_base_s", 0.01)
    return DownloadController(
        manifest,
        root / "models",
        root / "downloads.json",
        TokenStore(root, use_keyring=False),
        endpoint=hub.url,
        custom_builds_file=root / "custom_models.json",
        downloader_options=options,
    )


@pytest.fixture
def new_downloads() -> Iterator[Callable[..., DownloadController]]:
    """``new_controller``, with every controller made shut down after the test, passed or failed (a
    QThread destroyed while it runs would abort the whole run)."""
    made: list[DownloadController] = []

    def factory(
        hub: FakeHub, root: Path, manifest: Manifest = TEST_MANIFEST, **options: Any
    ) -> DownloadController:
        controller = new_controller(hub, root, manifest, **options)
        made.append(controller)
        return controller

    yield factory
    for controller in made:
        controller.shutdown()


@pytest.fixture
def make_controller(
    hub: FakeHub,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    new_downloads: Callable[..., DownloadController],
) -> Callable[..., DownloadController]:
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return lambda **options: new_downloads(hub, tmp_path, **options)


class Recorder:
    """Collects the controller's signals (connected on the GUI thread)."""

    def __init__(self, controller: DownloadController) -> None:
        self.states: list[tuple[str, str]] = []
        self.progress: list[tuple[float, str, DownloadProgress]] = []
        self.failures: list[tuple[str, str, str]] = []
        self.finished: list[tuple[str, InstalledBuild]] = []
        controller.state_changed.connect(self.on_state)
        controller.progress_changed.connect(self.on_progress)
        controller.download_failed.connect(self.on_failed)
        controller.download_finished.connect(self.on_finished)

    def on_state(self, build_id: str, state: str) -> None:
        self.states.append((build_id, state))

    def on_progress(self, build_id: str, progress: DownloadProgress) -> None:
        self.progress.append((time.monotonic(), build_id, progress))

    def on_failed(self, build_id: str, message: str, detail: str) -> None:
        self.failures.append((build_id, message, detail))

    def on_finished(self, build_id: str, installed: InstalledBuild) -> None:
        self.finished.append((build_id, installed))

    def of(self, build_id: str) -> list[str]:
        return [s for b, s in self.states if b == build_id]


def part_file(root: Path, build: Build, name: str = PART1) -> Path:
    return root / "models" / build.id / (name.rsplit("/", 1)[-1] + ".part")


def wait_for_stall(qtbot: Any, part: Path) -> None:
    qtbot.waitUntil(lambda: part.exists() and part.stat().st_size >= STALL_AT, timeout=10000)


def test_full_download_of_a_split_build_with_projector(
    qtbot: Any, make_controller: Callable[..., DownloadController], tmp_path: Path
) -> None:
    controller = make_controller()
    rec = Recorder(controller)
    with qtbot.waitSignal(controller.download_finished, timeout=20000) as blocker:
        controller.enqueue(SPLIT.id)
    build_id, installed = blocker.args
    assert build_id == SPLIT.id
    assert isinstance(installed, InstalledBuild)
    assert [p.name for p in installed.model_files] == [PART1.rsplit("/", 1)[-1], PART2.rsplit("/", 1)[-1]]
    assert installed.model_files[0].read_bytes() == CONTENT[PART1]
    assert installed.model_files[1].read_bytes() == CONTENT[PART2]
    assert installed.projector is not None
    assert installed.projector.read_bytes() == CONTENT[PROJ]
    states = rec.of(SPLIT.id)
    assert states[0] == "queued"
    assert states[-1] == "installed"
    assert "resolving" in states
    assert "downloading" in states
    assert rec.progress
    assert rec.progress[-1][2].build_done == rec.progress[-1][2].build_total
    assert controller.queued() == []
    assert controller.installed(SPLIT.id) is not None
    assert controller.queue_state.pending_build_ids() == []
    assert controller.pending_from_last_session() == []


def test_progress_signals_are_throttled_to_ten_per_second(
    qtbot: Any, hub: FakeHub, make_controller: Callable[..., DownloadController]
) -> None:
    # Small chunks and no Downloader-side throttle: the worker reports every 64 KiB. Three cuts with
    # back-off make the download last long enough to count.
    controller = make_controller(chunk_size=64 * 1024, progress_interval_s=0.0, backoff_base_s=0.25)
    for at in (MiB, 2 * MiB, 3 * MiB):
        hub.drop_connection(PART1, at=at)
    raw: list[float] = []
    downloader = controller._worker._downloader
    forward = downloader.progress
    assert forward is not None

    def counting(progress: DownloadProgress) -> None:
        raw.append(time.monotonic())
        forward(progress)

    downloader.progress = counting
    rec = Recorder(controller)
    started = time.monotonic()
    with qtbot.waitSignal(controller.download_finished, timeout=20000):
        controller.enqueue(SPLIT.id)
    elapsed = time.monotonic() - started
    assert elapsed > 0.6
    assert len(raw) > 50  # what the UI would get without the throttle
    assert 1 <= len(rec.progress) <= elapsed * 10 + 1
    times = [t for t, _, _ in rec.progress]
    assert all(sum(1 for u in times if t <= u < t + 1.0) <= 11 for t in times)  # any one second


def test_pause_then_resume_continues_from_the_partial_byte(
    qtbot: Any, hub: FakeHub, make_controller: Callable[..., DownloadController], tmp_path: Path
) -> None:
    controller = make_controller(backoff_base_s=5.0)
    hub.drop_connection(PART1, at=STALL_AT)
    rec = Recorder(controller)
    controller.enqueue(SPLIT.id)
    part = part_file(tmp_path, SPLIT)
    wait_for_stall(qtbot, part)
    with qtbot.waitSignal(controller.state_changed, check_params_cb=lambda b, s: s == "paused", timeout=5000):
        controller.pause(SPLIT.id)
    assert part.stat().st_size == STALL_AT
    assert controller.queued() == []
    assert controller.queue_state.entries()[0]["state"] == "paused"
    with qtbot.waitSignal(controller.download_finished, timeout=20000):
        controller.resume(SPLIT.id)
    assert f"bytes={STALL_AT}-" in hub.ranges_seen(PART1)
    assert controller.installed(SPLIT.id) is not None
    assert rec.of(SPLIT.id)[-1] == "installed"


@pytest.mark.parametrize("keep", [True, False])
def test_cancel_keeps_or_deletes_the_partial_data(
    qtbot: Any,
    hub: FakeHub,
    make_controller: Callable[..., DownloadController],
    tmp_path: Path,
    keep: bool,
) -> None:
    controller = make_controller(backoff_base_s=5.0)
    hub.drop_connection(PART1, at=STALL_AT)
    controller.enqueue(SPLIT.id)
    part = part_file(tmp_path, SPLIT)
    wait_for_stall(qtbot, part)
    with qtbot.waitSignal(
        controller.state_changed, check_params_cb=lambda b, s: s == "cancelled", timeout=5000
    ):
        controller.cancel(SPLIT.id, keep_partial=keep)
    assert part.exists() is keep
    assert controller.queue_state.pending_build_ids() == []
    assert controller.installed(SPLIT.id) is None


def test_a_queued_build_can_be_paused_and_cancelled_before_it_starts(
    qtbot: Any, hub: FakeHub, make_controller: Callable[..., DownloadController]
) -> None:
    controller = make_controller(backoff_base_s=5.0)
    hub.drop_connection(PART1, at=STALL_AT)
    controller.enqueue(SPLIT.id)
    controller.enqueue(SINGLE_BUILD.id)
    assert controller.queued() == [SPLIT.id, SINGLE_BUILD.id]
    controller.pause(SINGLE_BUILD.id)
    assert controller.live_state(SINGLE_BUILD.id) == "paused"
    assert controller.queued() == [SPLIT.id]
    controller.enqueue(SINGLE_BUILD.id)
    controller.cancel(SINGLE_BUILD.id, keep_partial=False)
    assert controller.live_state(SINGLE_BUILD.id) == "cancelled"
    assert controller.queued() == [SPLIT.id]


def test_gated_without_a_token_fails_with_the_licence_message_then_the_token_works(
    qtbot: Any, make_controller: Callable[..., DownloadController], tmp_path: Path
) -> None:
    controller = make_controller()
    with qtbot.waitSignal(controller.download_failed, timeout=20000) as blocker:
        controller.enqueue(GATED.id)
    build_id, message, _detail = blocker.args
    assert build_id == GATED.id
    assert message == (
        "This model is gated: accept the licence on the model page "
        f"(https://huggingface.co/{GATED_REPO}), then paste a Hugging Face token."
    )
    assert controller.live_state(GATED.id) == "failed"
    assert controller.last_message(GATED.id) == message
    assert controller.pending_from_last_session() == []  # a failure is not offered for resume
    controller.set_token(TOKEN)
    assert controller.has_token()
    assert TokenStore(tmp_path, use_keyring=False).get() == TOKEN
    with qtbot.waitSignal(controller.download_finished, timeout=20000):
        controller.enqueue(GATED.id)
    assert controller.installed(GATED.id) is not None


def test_two_queued_builds_download_one_after_the_other(
    qtbot: Any, hub: FakeHub, make_controller: Callable[..., DownloadController]
) -> None:
    controller = make_controller()
    rec = Recorder(controller)
    with qtbot.waitSignals([controller.download_finished, controller.download_finished], timeout=30000):
        controller.enqueue(SPLIT.id)
        controller.enqueue(SINGLE_BUILD.id)
        assert controller.queued() == [SPLIT.id, SINGLE_BUILD.id]
        assert controller.running() == SPLIT.id
    assert [b for b, _ in rec.finished] == [SPLIT.id, SINGLE_BUILD.id]
    first_done = rec.states.index((SPLIT.id, "installed"))
    second_started = rec.states.index((SINGLE_BUILD.id, "resolving"))
    assert second_started > first_done
    gets = [r.path for r in hub.requests if r.method == "GET" and "/api/" not in r.path]
    first_single = next(i for i, p in enumerate(gets) if p.endswith(SINGLE))
    last_part = max(i for i, p in enumerate(gets) if p.endswith((PART1, PART2)))
    assert first_single > last_part


def test_shutdown_mid_download_keeps_the_part_and_a_new_controller_resumes_it(
    qtbot: Any, hub: FakeHub, tmp_path: Path, make_controller: Callable[..., DownloadController]
) -> None:
    first = make_controller(backoff_base_s=5.0)
    hub.drop_connection(PART1, at=STALL_AT)
    first.enqueue(SPLIT.id)
    first.enqueue(SINGLE_BUILD.id)  # still waiting at quit: offered too
    part = part_file(tmp_path, SPLIT)
    wait_for_stall(qtbot, part)
    started = time.monotonic()
    first.shutdown()
    assert time.monotonic() - started < 4.0  # the back-off sleep was interrupted
    assert not first._thread.isRunning()
    assert part.stat().st_size == STALL_AT
    assert part.with_name(part.name + ".json").exists()

    second = make_controller()
    assert second.pending_from_last_session() == [SPLIT.id, SINGLE_BUILD.id]
    assert second.live_state(SPLIT.id) is None  # nothing starts by itself
    assert second.queued() == []
    with qtbot.waitSignals([second.download_finished] * 2, timeout=30000):
        for build_id in second.pending_from_last_session():
            second.enqueue(build_id)
    assert f"bytes={STALL_AT}-" in hub.ranges_seen(PART1)
    assert second.installed(SPLIT.id) is not None
    assert second.installed(SINGLE_BUILD.id) is not None
    assert second.queue_state.pending_build_ids() == []


def test_delete_removes_an_installed_build(
    qtbot: Any, make_controller: Callable[..., DownloadController], tmp_path: Path
) -> None:
    controller = make_controller()
    with qtbot.waitSignal(controller.download_finished, timeout=20000):
        controller.enqueue(SINGLE_BUILD.id)
    folder = controller.build_dir(SINGLE_BUILD.id)
    assert folder.is_dir()
    with qtbot.waitSignal(
        controller.state_changed, check_params_cb=lambda b, s: s == "deleted", timeout=5000
    ):
        controller.delete(SINGLE_BUILD.id)
    assert not folder.exists()
    assert controller.installed(SINGLE_BUILD.id) is None


def test_a_flipped_byte_fails_then_redownload_installs(
    qtbot: Any, hub: FakeHub, make_controller: Callable[..., DownloadController]
) -> None:
    controller = make_controller()
    hub.flip_byte(SINGLE, offset=1000, times=1)
    with qtbot.waitSignal(controller.download_failed, timeout=20000) as blocker:
        controller.enqueue(SINGLE_BUILD.id)
    assert "failed verification" in blocker.args[1]
    assert controller.disk_state(SINGLE_BUILD.id).value == "corrupt"
    with qtbot.waitSignal(controller.download_finished, timeout=20000):
        controller.redownload(SINGLE_BUILD.id)
    assert controller.disk_state(SINGLE_BUILD.id).value == "installed"


def test_a_custom_build_from_hugging_face_downloads_and_persists(
    qtbot: Any, make_controller: Callable[..., DownloadController], hub: FakeHub, tmp_path: Path
) -> None:
    controller = make_controller()
    build = controller.add_custom_build(MODEL_REPO, PART1, "")
    assert [f.path for f in build.files] == [PART1, PART2]  # the first part brings the others
    assert controller.is_custom(build.id)
    with qtbot.waitSignal(controller.download_finished, timeout=20000) as blocker:
        controller.enqueue(build.id)
    assert blocker.args[1].model_files[1].read_bytes() == CONTENT[PART2]
    again = make_controller()
    assert build.id in [b.id for b in again.builds()]
    with pytest.raises(ValueError, match=r"\.gguf"):
        controller.add_custom_build(MODEL_REPO, "README.md")


def test_worker_failures_become_signals(qtbot: Any, tmp_path: Path) -> None:
    """Synchronous: an unexpected exception inside the Downloader is a signal, not a raise."""
    from app.core.downloads import Downloader
    from app.workers.downloads import DownloadWorker

    class Broken(Downloader):
        def download(self, build: Build) -> InstalledBuild:
            raise RuntimeError("boom")

    worker = DownloadWorker(Broken(tmp_path))
    with qtbot.waitSignal(worker.download_failed) as blocker:
        worker.download(7, SPLIT)
    assert blocker.args[:2] == [7, SPLIT.id]
    assert "boom" in blocker.args[2]
