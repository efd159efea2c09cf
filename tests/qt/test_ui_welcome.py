"""First run: the welcome page on simulated machines, and the whole app with no model installed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PySide6.QtCore import Qt

from app.core.hardware import SimulatedHardware
from app.core.units import format_gb
from app.ui.welcome import WelcomePage

pytestmark = pytest.mark.qt_log_ignore("This plugin does not support propagateSizeHints")

SHOTS = Path(os.environ.get("SCOUT_UI_SHOTS", "/tmp/ui_shots"))
FREE_DISK = 412_000_000_000


def _page(qtbot, tmp_path: Path, hardware: SimulatedHardware, free: int | None = FREE_DISK) -> WelcomePage:
    page = WelcomePage(tmp_path / "models", hardware_probe=hardware, free_space=lambda _p: free)
    qtbot.addWidget(page)
    page.resize(900, 720)
    page.show()
    qtbot.waitExposed(page)
    return page


def test_24gb_gpu_and_64gb_ram_gets_a_q4_recommendation(qtbot, tmp_path: Path) -> None:
    page = _page(qtbot, tmp_path, SimulatedHardware.nvidia(24, 64))
    hardware = page.hardware_label.text()
    assert "NVIDIA GeForce RTX 4090: 25.8 GB free of 25.8 GB" in hardware
    assert "RAM: 68.7 GB available of 68.7 GB" in hardware
    assert page.disk_label.text() == f"Disk: 412.0 GB free in {tmp_path / 'models'}"
    text = page.recommendation_label.text()
    assert text.startswith("Recommended for this machine: Scout Q4_K_M (unsloth)")
    assert "Split GPU + RAM, 32k context" in text
    assert page.selected_build is not None
    assert page.selected_build.id == "unsloth-q4_k_m"
    assert page.download_button.text() == "Download Scout Q4_K_M (unsloth) (67.1 GB)"
    assert page.download_button.isEnabled()
    with qtbot.waitSignal(page.download_requested) as blocker:
        qtbot.mouseClick(page.download_button, Qt.MouseButton.LeftButton)
    assert blocker.args == ["unsloth-q4_k_m"]
    assert not (tmp_path / "models").exists()  # the page itself never downloads anything


def test_cpu_only_16gb_is_told_honestly_it_is_too_small(qtbot, tmp_path: Path) -> None:
    page = _page(qtbot, tmp_path, SimulatedHardware.cpu_only(16))
    assert "No GPU that llama.cpp can use" in page.hardware_label.text()
    assert page.recommendation is not None
    assert page.recommendation.too_small
    text = page.recommendation_label.text()
    assert text.startswith("This machine is too small for Llama 4 Scout: the smallest workable build")
    assert "needs about 3" in text
    assert "GB of RAM + VRAM" in text
    assert page.recommendation is not None
    assert page.recommendation.smallest is not None
    need = f"needs about {format_gb(page.recommendation.smallest.memory_bytes)}"
    assert need in text
    assert need in page.intro.text()  # one figure for the memory needed, from the planner
    assert page.recommend_heading.text() == "Not enough memory for Scout"
    assert page.download_button.text().endswith("anyway")
    assert page.download_button.objectName() != "primaryButton"


def test_choose_another_build_and_low_disk_warning(qtbot, tmp_path: Path) -> None:
    page = _page(qtbot, tmp_path, SimulatedHardware.nvidia(24, 64), free=40_000_000_000)
    labels = [a.text() for a in page.menu_actions()]
    assert len(labels) == 10
    assert labels[0].startswith("Scout UD-IQ1_S")  # smallest download first
    iq2 = next(a for a in page.menu_actions() if a.data() == "unsloth-ud-iq2_xxs")
    iq2.trigger()
    assert page.selected_build is not None
    assert page.selected_build.id == "unsloth-ud-iq2_xxs"
    assert page.recommend_heading.text() == "Chosen build"
    assert page.download_button.text().startswith("Download Scout UD-IQ2_XXS (unsloth)")
    assert "Not enough free disk space" in page.detail_label.text()
    with qtbot.waitSignal(page.open_file_requested):
        qtbot.mouseClick(page.open_button, Qt.MouseButton.LeftButton)


@pytest.mark.parametrize("mode", ["light", "dark"])
def test_screenshot(qtbot, tmp_path: Path, themed, mode: str) -> None:
    themed(mode)
    page = _page(qtbot, tmp_path, SimulatedHardware.nvidia(24, 64))
    SHOTS.mkdir(parents=True, exist_ok=True)
    qtbot.wait(100)  # let the word-wrapped labels settle their heights
    assert page.grab().save(str(SHOTS / f"welcome_{mode}.png"))
    small = _page(qtbot, tmp_path, SimulatedHardware.cpu_only(16))
    qtbot.wait(100)
    assert small.grab().save(str(SHOTS / f"welcome_too_small_{mode}.png"))


@pytest.fixture
def start_app(start_app):
    """The app, at 1100x760 and exposed."""
    start_app.size = (1100, 760)
    start_app.wait_exposed = True
    return start_app


def test_first_run_shows_welcome_until_a_gguf_is_opened(
    qtbot, start_app, tmp_path: Path, tiny_model: Path
) -> None:
    app = start_app(tmp_path / "data")
    window = app.window
    page = window.welcome_page
    assert page is not None
    assert page.isVisible()
    assert not window.chat_view.isVisible()
    assert not window.composer.isVisible()
    assert page.recommendation_label.text()  # this machine's verdict, whatever it is
    assert list((tmp_path / "data" / "models").iterdir()) == []

    # "Download" goes to the model manager's download entry point (recorded here: no network)
    assert page.selected_build is not None
    assert page.download_button.isEnabled()
    requested: list[str] = []
    window.download_build_handler = requested.append
    qtbot.mouseClick(page.download_button, Qt.MouseButton.LeftButton)
    assert requested == [page.selected_build.id]
    # without one (and no enabled Models… action): a clear message saying where to get the build
    window.download_build_handler = None
    models_action = getattr(window, "models_action", None)
    if models_action is not None:
        models_action.setEnabled(False)
    qtbot.mouseClick(page.download_button, Qt.MouseButton.LeftButton)
    assert f"huggingface.co/{page.selected_build.repo_id}" in window.error_banner.text()
    assert list((tmp_path / "data" / "models").iterdir()) == []  # a click never downloads by itself

    window.choose_model_file = lambda _parent, _start: str(tiny_model)
    with qtbot.waitSignal(app.controller.models.model_loaded, timeout=60_000):
        qtbot.mouseClick(page.open_button, Qt.MouseButton.LeftButton)
    assert not page.isVisible()
    assert window.chat_view.isVisible()
    assert window.composer.isVisible()


def test_no_welcome_when_a_model_is_installed(qtbot, start_app, tmp_path: Path, tiny_model: Path) -> None:
    models = tmp_path / "data" / "models" / "mine"
    models.mkdir(parents=True)
    (models / "model.gguf").write_bytes(tiny_model.read_bytes())
    app = start_app(tmp_path / "data")
    assert app.window.welcome_page is None
    assert app.window.chat_view.isVisible()
