"""ModelManagerDialog: rows and badges for the real manifest on simulated machines, and a real download
from the loopback Hub (tests/hub_server.py) shown in its row, through to "Use this model"."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QApplication

from app.core.downloads import TokenStore
from app.core.fit import assess_build
from app.core.manifest import Manifest, load_manifest
from app.core.planner import VERDICT_CPU, VERDICT_FULL, VERDICT_NO, VERDICT_SPLIT
from app.ui.model_manager import ModelManagerDialog
from app.workers.downloads import DownloadController
from tests.core.test_downloads import CONTENT, GATED_REPO, PART1
from tests.qt import test_download_worker
from tests.qt.test_download_worker import (
    GATED,
    SPLIT,
    STALL_AT,
    TEST_MANIFEST,
    new_controller,
    part_file,
    wait_for_stall,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from app.workers.controller import AppController
    from tests.hub_server import FakeHub

from app.core.hardware import SimulatedHardware

pytestmark = pytest.mark.qt_log_ignore(
    "This plugin does not support propagateSizeHints", "This plugin does not support raise"
)
hub = test_download_worker.hub  # the loopback Hub fixture
new_downloads = test_download_worker.new_downloads  # DownloadControllers shut down after each test

SHOTS = Path(os.environ.get("SCOUT_UI_SHOTS", "/tmp/ui_shots"))


@pytest.fixture
def make_dialog(
    qtbot: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., tuple[ModelManagerDialog, DownloadController]]]:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    controllers: list[DownloadController] = []

    def factory(
        manifest: Manifest | None = None,
        hardware: SimulatedHardware | None = None,
        server: FakeHub | None = None,
        **options: Any,
    ) -> tuple[ModelManagerDialog, DownloadController]:
        if server is not None:
            monkeypatch.setenv("HF_ENDPOINT", server.url)
            controller = new_controller(server, tmp_path, manifest or TEST_MANIFEST, **options)
        else:
            controller = DownloadController(
                manifest or load_manifest(),
                tmp_path / "models",
                tmp_path / "downloads.json",
                TokenStore(tmp_path, use_keyring=False),
                endpoint="http://127.0.0.1:9",
            )
        controllers.append(controller)
        dialog = ModelManagerDialog(controller, hardware_probe=hardware or SimulatedHardware.nvidia(24, 64))
        qtbot.addWidget(dialog)
        return dialog, controller

    yield factory
    for controller in controllers:
        controller.shutdown()


def shoot(dialog: ModelManagerDialog, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    dialog.show()
    QApplication.processEvents()
    path = SHOTS / f"models_{name}.png"
    dialog.grab().save(str(path))
    return path


# ----------------------------------------------------------------------------- fit badges


@pytest.mark.parametrize(
    ("hardware", "verdict"),
    [
        (SimulatedHardware.nvidia(80, 128), VERDICT_FULL),
        (SimulatedHardware.nvidia(24, 64), VERDICT_SPLIT),
        (SimulatedHardware.cpu_only(96), VERDICT_CPU),
        (SimulatedHardware.cpu_only(32), VERDICT_NO),
    ],
)
def test_a_build_not_on_disk_is_planned_from_the_manifest(hardware: SimulatedHardware, verdict: str) -> None:
    build = next(b for b in load_manifest().builds if b.id == "unsloth-ud-q2_k_xl")
    fit = assess_build(build, hardware.probe())
    assert fit.verdict == verdict
    assert fit.memory_bytes > 0
    assert "needs about" in fit.sentence


# ----------------------------------------------------------------------------- the real manifest


def test_rows_and_badges_for_the_real_manifest(
    make_dialog: Callable[..., tuple[ModelManagerDialog, DownloadController]],
    themed: Callable[[str], None],
) -> None:
    themed("light")
    manifest = load_manifest()
    dialog, _controller = make_dialog(manifest, SimulatedHardware.nvidia(24, 64))
    assert set(dialog.rows) == {b.id for b in manifest.builds}
    assert set(dialog._section_labels) == set(manifest.by_repo())
    for build in manifest.builds:
        row = dialog.rows[build.id]
        assert row.name_label.text() == build.display_name
        assert row.quant_badge.text() == build.quantization
        assert row.bits_badge.text() == f"{build.bits_per_weight:.2f} bits/weight"
        assert row.vision_badge.isVisibleTo(dialog) is (build.projector is not None)
        exact = Manifest.total_size(build)
        assert row.size_badge.text().startswith("≈") is (exact is None)
        assert row.fit_badge.text() == assess_build(build, dialog.hardware()).label
        assert row.fit_badge.toolTip().startswith("Planned from the manifest's figures: ")
        assert row.state_label.text() == "Not installed"
        assert row.who_label.text() == build.who_for
        assert f'href="{build.licence.url}"' in row.licence_label.text()
        assert row.buttons["download"].isVisibleTo(dialog)
        assert not row.buttons["use"].isVisibleTo(dialog)
    verdicts = {dialog.rows[b.id].fit_badge.property("verdict") for b in manifest.builds}
    assert VERDICT_SPLIT in verdicts  # 24 GB GPU + 64 GB RAM: Scout builds split
    assert "25.8 GB free of 25.8 GB" in dialog.hardware_label.text()  # 24 GiB in GB of 10^9 bytes
    shot = shoot(dialog, "idle")
    assert shot.stat().st_size > 0


def test_a_small_machine_gets_wont_fit_badges_and_a_partial_shows_its_percentage(
    make_dialog: Callable[..., tuple[ModelManagerDialog, DownloadController]], tmp_path: Path
) -> None:
    manifest = load_manifest()
    big = max(manifest.builds, key=Manifest.estimated_size)
    small = min(manifest.builds, key=Manifest.estimated_size)
    folder = tmp_path / "models" / small.id
    folder.mkdir(parents=True)
    with open(folder / (small.files[0].name + ".part"), "wb") as fh:
        fh.truncate(Manifest.estimated_size(small) // 4)  # sparse: a quarter downloaded
    dialog, _controller = make_dialog(manifest, SimulatedHardware.cpu_only(32))
    assert dialog.rows[big.id].fit_badge.property("verdict") == VERDICT_NO
    assert dialog.rows[big.id].fit_badge.text().startswith("Won't fit")
    assert (
        dialog.row_state_text(small.id) == "Partial 24%" or dialog.row_state_text(small.id) == "Partial 25%"
    )
    assert dialog.rows[small.id].buttons["resume"].isVisibleTo(dialog)


# ----------------------------------------------------------------------------- a real download


def test_a_real_download_shows_progress_and_ends_installed_with_use_this_model(
    qtbot: Any,
    hub: FakeHub,
    make_dialog: Callable[..., tuple[ModelManagerDialog, DownloadController]],
    tmp_path: Path,
    themed: Callable[[str], None],
) -> None:
    themed("light")
    hub.drop_connection(PART1, at=STALL_AT)
    dialog, controller = make_dialog(server=hub, backoff_base_s=3.0)
    dialog.show()
    row = dialog.rows[SPLIT.id]
    qtbot.mouseClick(row.buttons["download"], Qt.MouseButton.LeftButton)
    wait_for_stall(qtbot, part_file(tmp_path, SPLIT))
    qtbot.waitUntil(lambda: row.progress_bar.isVisible() and row.progress_bar.value() > 0, timeout=5000)
    assert row.state_label.text().startswith("Downloading")
    assert " of " in row.progress_label.text()
    assert row.buttons["pause"].isVisible()
    assert row.buttons["cancel"].isVisible()
    assert "Downloading Tiny Scout" in dialog.total_label.text()
    shoot(dialog, "downloading")

    # Cancel asks first; "don't cancel" leaves the download running.
    asked: list[str] = []
    dialog.ask_keep_partial = lambda _parent, name: asked.append(name)  # type: ignore[assignment,func-returns-value]
    qtbot.mouseClick(row.buttons["cancel"], Qt.MouseButton.LeftButton)
    assert asked == ["Tiny Scout"]
    assert controller.running() == SPLIT.id

    with qtbot.waitSignal(controller.download_finished, timeout=20000):
        pass
    assert row.state_label.text() == "Installed"
    assert not row.progress_bar.isVisible()
    assert row.buttons["use"].isVisible()
    with qtbot.waitSignal(dialog.load_requested) as blocker:
        qtbot.mouseClick(row.buttons["use"], Qt.MouseButton.LeftButton)
    first_shard = tmp_path / "models" / SPLIT.id / PART1.rsplit("/", 1)[-1]
    assert blocker.args == [str(first_shard)]
    assert first_shard.read_bytes() == CONTENT[PART1]
    shoot(dialog, "installed")

    opened: list[str] = []
    dialog.open_url = lambda url: opened.append(url.toLocalFile()) or True  # type: ignore[assignment,func-returns-value]
    qtbot.mouseClick(row.buttons["reveal"], Qt.MouseButton.LeftButton)
    assert opened == [str(first_shard.parent)]

    dialog.confirm = lambda *_: True  # type: ignore[assignment]
    with qtbot.waitSignal(controller.state_changed, check_params_cb=lambda b, s: s == "deleted"):
        qtbot.mouseClick(row.buttons["delete"], Qt.MouseButton.LeftButton)
    assert row.state_label.text() == "Not installed"
    assert not first_shard.parent.exists()


def test_an_error_shows_its_message_once_in_the_row(
    qtbot: Any,
    hub: FakeHub,
    make_dialog: Callable[..., tuple[ModelManagerDialog, DownloadController]],
) -> None:
    dialog, controller = make_dialog(server=hub)
    dialog.show()
    row = dialog.rows[GATED.id]
    with qtbot.waitSignal(controller.download_failed, timeout=20000):
        qtbot.mouseClick(row.buttons["download"], Qt.MouseButton.LeftButton)
    page = f"https://huggingface.co/{GATED_REPO}"
    assert row.message_label.isVisible()
    assert "accept the licence on the model page" in row.message_label.text()
    assert f'href="{page}"' in row.message_label.text()
    assert not dialog.banner.isVisible()  # not twice: the row's card says it
    assert row.state_label.text() == "Failed"
    retry = next(row.buttons[a] for a in ("download", "resume") if row.buttons[a].isVisible())
    shoot(dialog, "error")

    # The token field stores the token (masked) and the retry works.
    assert dialog.token_edit.echoMode() == dialog.token_edit.EchoMode.Password
    from tests.core.test_downloads import TOKEN

    dialog.token_edit.setText(TOKEN)
    qtbot.mouseClick(dialog.save_token_button, Qt.MouseButton.LeftButton)
    assert controller.has_token()
    assert dialog.token_edit.text() == ""
    with qtbot.waitSignal(controller.download_finished, timeout=20000):
        qtbot.mouseClick(retry, Qt.MouseButton.LeftButton)
    assert row.state_label.text() == "Installed"
    assert not row.message_label.isVisible()


def test_add_a_local_gguf_emits_load_requested_without_copying(
    qtbot: Any, make_dialog: Callable[..., tuple[ModelManagerDialog, DownloadController]], tmp_path: Path
) -> None:
    model = tmp_path / "elsewhere" / "my-model.gguf"
    model.parent.mkdir()
    model.write_bytes(b"GGUF" + bytes(64))
    (model.parent / "mmproj-my-model-f16.gguf").write_bytes(b"GGUF" + bytes(64))
    dialog, _controller = make_dialog(TEST_MANIFEST)
    dialog.choose_gguf_file = lambda _parent, _start: str(model)  # type: ignore[assignment]
    with qtbot.waitSignal(dialog.load_requested) as blocker:
        qtbot.mouseClick(dialog.add_file_button, Qt.MouseButton.LeftButton)
    assert blocker.args == [str(model)]
    assert "mmproj-my-model-f16.gguf" in dialog.total_label.text()
    assert not (tmp_path / "models" / "my-model.gguf").exists()


def test_add_from_hugging_face_downloads_a_custom_build(
    qtbot: Any,
    hub: FakeHub,
    make_dialog: Callable[..., tuple[ModelManagerDialog, DownloadController]],
) -> None:
    from tests.core.test_downloads import MODEL_REPO

    dialog, controller = make_dialog(server=hub)
    dialog.ask_hf_source = lambda _parent: ("bad repo", "x.gguf", "")  # type: ignore[assignment]
    qtbot.mouseClick(dialog.add_hf_button, Qt.MouseButton.LeftButton)
    assert "owner/name" in dialog.banner.text()
    dialog.ask_hf_source = lambda _parent: (MODEL_REPO, PART1, "")  # type: ignore[assignment]
    with qtbot.waitSignal(controller.download_finished, timeout=20000) as blocker:
        qtbot.mouseClick(dialog.add_hf_button, Qt.MouseButton.LeftButton)
    build_id = blocker.args[0]
    assert build_id in dialog.rows
    assert dialog.row_state_text(build_id) == "Installed"
    assert "Your additions" in dialog._section_labels


# ----------------------------------------------------------------------------- the main window


def test_file_models_opens_the_manager_and_use_this_model_loads_it(
    qtbot: Any,
    hub: FakeHub,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    make_controller: Callable[..., AppController],
    new_downloads: Callable[..., DownloadController],
) -> None:
    from app.ui.main_window import MainWindow

    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    downloads = new_downloads(hub, tmp_path)
    controller = make_controller()
    window = MainWindow(controller)
    qtbot.addWidget(window)
    window.hardware_probe = SimulatedHardware.nvidia(24, 64)
    assert window.models_action.shortcut().toString() == "Ctrl+M"
    assert not window.models_action.isEnabled()
    window.set_download_controller(downloads)
    window.models_action.trigger()
    dialog = window._model_manager
    assert isinstance(dialog, ModelManagerDialog)
    assert dialog.isVisible()
    assert not dialog.isModal()
    with qtbot.waitSignal(downloads.download_finished, timeout=20000):
        qtbot.mouseClick(dialog.rows[SPLIT.id].buttons["download"], Qt.MouseButton.LeftButton)
    with (
        qtbot.waitSignal(controller.models.model_loaded, timeout=5000) as loaded,
        qtbot.waitSignal(controller.models.model_load_started) as started,
    ):
        qtbot.mouseClick(dialog.rows[SPLIT.id].buttons["use"], Qt.MouseButton.LeftButton)
    first_shard = tmp_path / "models" / SPLIT.id / PART1.rsplit("/", 1)[-1]
    assert started.args == [str(first_shard)]
    assert loaded.args[0].path == first_shard
    assert window.model_label.text() == loaded.args[0].name
    window.models_action.trigger()
    assert window._model_manager is dialog  # one manager, raised again


@pytest.mark.parametrize("answer", [True, False])
def test_at_start_the_window_asks_before_resuming_last_sessions_downloads(
    qtbot: Any,
    hub: FakeHub,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    make_controller: Callable[..., AppController],
    new_downloads: Callable[..., DownloadController],
    answer: bool,
) -> None:
    from app.ui.main_window import MainWindow

    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    first = new_downloads(hub, tmp_path, backoff_base_s=5.0)
    hub.drop_connection(PART1, at=STALL_AT)
    first.enqueue(SPLIT.id)
    wait_for_stall(qtbot, part_file(tmp_path, SPLIT))
    first.shutdown()  # the app quits mid-download

    downloads = new_downloads(hub, tmp_path)
    window = MainWindow(make_controller())
    qtbot.addWidget(window)
    window.hardware_probe = SimulatedHardware.nvidia(24, 64)
    window.set_download_controller(downloads)
    asked: list[list[str]] = []

    def ask(_parent: Any, names: list[str]) -> bool:
        asked.append(names)
        return answer

    window.ask_resume_downloads = ask
    window.offer_resume_downloads()
    assert asked == [["Tiny Scout"]]
    if answer:
        assert downloads.queued() == [SPLIT.id]
        assert window._model_manager is not None
        with qtbot.waitSignal(downloads.download_finished, timeout=20000):
            pass
        assert f"bytes={STALL_AT}-" in hub.ranges_seen(PART1)
    else:
        assert downloads.queued() == []
        assert downloads.live_state(SPLIT.id) is None
