"""One verdict everywhere: the model manager, the welcome page and the plan panel show the planner's
same verdict and label for the same build on the same machine."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from app.core.downloads import TokenStore
from app.core.fit import assess_build, assess_file
from app.core.hardware import SimulatedHardware
from app.core.manifest import load_manifest
from app.core.scout_shape import write_scout_shape
from app.ui.model_manager import ModelManagerDialog
from app.ui.plan_panel import PlanPanel
from app.ui.welcome import WelcomePage
from app.workers.downloads import DownloadController

if TYPE_CHECKING:
    from pathlib import Path

    from app.core.manifest import Build

pytestmark = pytest.mark.qt_log_ignore("This plugin does not support propagateSizeHints")

MACHINES = {
    "80 GB GPU + 128 GB": SimulatedHardware.nvidia(80, 128),
    "24 GB GPU + 64 GB": SimulatedHardware.nvidia(24, 64),
    "CPU + 96 GB": SimulatedHardware.cpu_only(96),
    "CPU + 32 GB": SimulatedHardware.cpu_only(32),
}
BUILD_ID = "unsloth-q4_k_m"


@pytest.fixture(scope="module")
def build() -> Build:
    return next(b for b in load_manifest().builds if b.id == BUILD_ID)


@pytest.fixture(scope="module")
def scout_file(tmp_path_factory: pytest.TempPathFactory, build: Build) -> Path:
    """The build's Scout-shaped header on disk, with a projector of the manifest's size beside it."""
    folder = tmp_path_factory.mktemp("scout")
    model = write_scout_shape(folder / "Llama-4-Scout-Q4_K_M.gguf", "Q4_K_M")[0]
    assert build.projector is not None
    assert build.projector.size
    with open(folder / "mmproj-F16.gguf", "wb") as fh:
        fh.truncate(build.projector.size)  # sparse: only its size matters to the planner
    return model


@pytest.mark.parametrize("machine", list(MACHINES))
def test_the_three_screens_agree(
    qtbot: Any, tmp_path: Path, build: Build, scout_file: Path, machine: str, make_controller
) -> None:
    hardware = MACHINES[machine]
    expected = assess_build(build, hardware.probe())
    assert (
        expected.verdict
        == assess_file(scout_file, hardware.probe(), scout_file.parent / "mmproj-F16.gguf").verdict
    )

    downloads = DownloadController(
        load_manifest(),
        tmp_path / "models",
        tmp_path / "downloads.json",
        TokenStore(tmp_path, use_keyring=False),
        endpoint="http://127.0.0.1:9",
    )
    try:
        manager = ModelManagerDialog(downloads, hardware_probe=hardware)
        qtbot.addWidget(manager)
        badge = manager.rows[BUILD_ID].fit_badge
        assert (badge.property("verdict"), badge.text()) == (expected.verdict, expected.label)
    finally:
        downloads.shutdown()

    welcome = WelcomePage(tmp_path / "models", hardware_probe=hardware, free_space=lambda _p: 10**12)
    qtbot.addWidget(welcome)
    fit = next(f for f in welcome.recommendation.fits if f.build.id == BUILD_ID)  # type: ignore[union-attr]
    assert (fit.fit.verdict, fit.fit.label) == (expected.verdict, expected.label)
    action = next(a for a in welcome.menu_actions() if a.data() == BUILD_ID)
    assert action.text().endswith(expected.label)

    panel = PlanPanel(make_controller(), hardware_probe=hardware)
    qtbot.addWidget(panel)
    assert panel.set_model_path(scout_file)
    assert panel.plan is not None
    assert panel.verdict_text() == expected.label
