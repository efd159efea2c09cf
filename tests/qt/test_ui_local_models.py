"""Models on this computer: the model manager lists the models folder's GGUFs and the recently opened
files with the planner's fit verdict and "Use this model"; File → Recent models switches between them.
Real tiny GGUF files, a real DownloadController and a real AppController (FakeEngine). Screenshots go to
$SCOUT_UI_SHOTS (default /tmp/ui_shots)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QPalette
from PySide6.QtWidgets import QApplication

from app.config import RECENT_MODELS_MAX, Settings, load_settings, push_recent_model
from app.core.downloads import TokenStore
from app.core.fit import assess_file
from app.core.hardware import SimulatedHardware
from app.core.manifest import load_manifest
from app.core.tiny_model import write_tiny_model
from app.ui.main_window import MainWindow
from app.ui.model_manager import ModelManagerDialog
from app.workers.downloads import DownloadController

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from app.config import AppPaths
    from app.workers.controller import AppController

pytestmark = pytest.mark.qt_log_ignore(
    "This plugin does not support propagateSizeHints", "This plugin does not support raise"
)

SHOTS = Path(os.environ.get("SCOUT_UI_SHOTS", "/tmp/ui_shots"))
HARDWARE = SimulatedHardware.nvidia(24, 64)


@pytest.fixture
def downloads(tmp_path: Path) -> Iterator[DownloadController]:
    controller = DownloadController(
        load_manifest(),
        tmp_path / "models",
        tmp_path / "downloads.json",
        TokenStore(tmp_path, use_keyring=False),
        endpoint="http://127.0.0.1:9",
    )
    yield controller
    controller.shutdown()


@pytest.fixture
def two_models(tmp_path: Path, tiny_model: Path, tiny_projector: Path) -> tuple[Path, Path]:
    """One tiny model in the models folder (with its vision projector), one opened from elsewhere."""
    folder = tmp_path / "models"
    folder.mkdir(exist_ok=True)
    in_folder = folder / "tiny-llama4.gguf"
    shutil.copyfile(tiny_model, in_folder)
    shutil.copyfile(tiny_projector, folder / tiny_projector.name)
    elsewhere = write_tiny_model(tmp_path / "elsewhere" / "other-tiny.gguf")[0]
    return in_folder, elsewhere


def test_push_recent_model_keeps_a_bounded_most_recent_first_list() -> None:
    recent: tuple[str, ...] = ()
    for n in range(RECENT_MODELS_MAX + 3):
        recent = push_recent_model(recent, f"/m/{n}.gguf")
    assert len(recent) == RECENT_MODELS_MAX
    assert recent[0] == f"/m/{RECENT_MODELS_MAX + 2}.gguf"
    assert push_recent_model(recent, "/m/5.gguf")[:2] == ("/m/5.gguf", recent[0])
    assert push_recent_model(recent, "/m/5.gguf").count("/m/5.gguf") == 1


def test_recent_models_survive_the_settings_file(app_paths: AppPaths) -> None:
    from app.config import save_settings

    save_settings(app_paths, Settings(recent_models=("/a.gguf", "/b.gguf")))
    assert load_settings(app_paths).recent_models == ("/a.gguf", "/b.gguf")


def test_dialog_lists_local_models_with_verdicts_and_uses_them(
    qtbot: Any, downloads: DownloadController, two_models: tuple[Path, Path], themed: Callable[[str], None]
) -> None:
    in_folder, elsewhere = two_models
    themed("light")
    dialog = ModelManagerDialog(downloads, hardware_probe=HARDWARE)
    qtbot.addWidget(dialog)
    gone = elsewhere.with_name("deleted.gguf")
    dialog.set_recent_models([str(elsewhere), str(gone)], current=str(elsewhere))

    assert [p for p, _where in dialog.local_models()] == [elsewhere, in_folder]  # the missing one skipped
    assert set(dialog.local_rows) == {str(elsewhere), str(in_folder)}
    for path in (in_folder, elsewhere):
        row = dialog.local_rows[str(path)]
        expected = assess_file(
            path,
            HARDWARE.probe(),
            row.path.with_name("mmproj-tiny-llama4.gguf") if path == in_folder else None,
        )
        assert not row.fit_badge.isHidden()
        assert row.fit_badge.text() == expected.label
        assert row.fit_badge.property("verdict") == expected.verdict
    folder_row, recent_row = dialog.local_rows[str(in_folder)], dialog.local_rows[str(elsewhere)]
    assert not folder_row.vision_badge.isHidden()  # its projector sits beside it
    assert recent_row.vision_badge.isHidden()
    assert recent_row.state_label.text() == "Loaded"
    assert not recent_row.use_button.isEnabled()
    assert folder_row.state_label.text() == "In the models folder"
    assert "No build downloaded yet" in dialog.total_label.text()
    assert "2 other models on this computer" in dialog.total_label.text()

    with qtbot.waitSignal(dialog.load_requested) as requested:
        qtbot.mouseClick(folder_row.use_button, Qt.MouseButton.LeftButton)
    assert requested.args == [str(in_folder)]

    dialog.resize(980, 720)
    dialog.show()
    qtbot.waitExposed(dialog)
    qtbot.wait(50)
    SHOTS.mkdir(parents=True, exist_ok=True)
    assert dialog.grab().save(str(SHOTS / "models_local_light.png"))

    themed("dark")  # a live switch: the cards and badges take dark colours
    qtbot.wait(50)
    window_colour = QApplication.palette().color(QPalette.ColorRole.Window)
    for badge in (folder_row.vision_badge, folder_row.fit_badge):
        image = badge.grab().toImage()
        fill = image.pixelColor(image.width() // 2, 1)
        assert fill.lightness() < 100, f"the {badge.text()} badge kept a light background {fill.name()}"
        assert window_colour.lightness() < 100
    assert dialog.grab().save(str(SHOTS / "models_local_dark.png"))


def test_unreadable_local_file_says_why(qtbot: Any, tmp_path: Path, downloads: DownloadController) -> None:
    bad = tmp_path / "models" / "notes.gguf"
    bad.parent.mkdir(exist_ok=True)
    bad.write_text("this is a text file renamed .gguf", encoding="utf-8")
    dialog = ModelManagerDialog(downloads, hardware_probe=HARDWARE)
    qtbot.addWidget(dialog)
    row = dialog.local_rows[str(bad)]
    assert row.fit_badge.isHidden()
    assert not row.message_label.isHidden()
    assert row.message_label.text().startswith("No memory plan for this file")


@pytest.fixture
def window(
    qtbot: Any, make_controller: Callable[..., AppController], downloads: DownloadController
) -> MainWindow:
    win = MainWindow(make_controller())
    win.hardware_probe = HARDWARE
    win.set_download_controller(downloads)
    qtbot.addWidget(win)
    return win


def test_recent_models_menu_switches_models(
    qtbot: Any,
    window: MainWindow,
    two_models: tuple[Path, Path],
    load_fake_model: Callable[..., Any],
    app_paths: AppPaths,
) -> None:
    in_folder, elsewhere = two_models
    controller = window.controller
    menu = window.recent_models_menu
    window.update_recent_models_menu()
    assert [a.text() for a in menu.actions()] == ["No recent models"]

    load_fake_model(controller, in_folder)
    load_fake_model(controller, elsewhere)
    assert controller.settings.recent_models == (str(elsewhere), str(in_folder))
    assert load_settings(app_paths).recent_models == (str(elsewhere), str(in_folder))  # saved

    window.update_recent_models_menu()
    actions = menu.actions()
    assert [a.data() for a in actions] == [str(elsewhere), str(in_folder)]
    assert [a.isChecked() for a in actions] == [True, False]  # the loaded one
    assert actions[1].text() == "&2 tiny-llama4.gguf"

    with qtbot.waitSignal(controller.models.model_loaded, timeout=5000) as loaded:
        actions[1].trigger()
    assert loaded.args[0].path == in_folder
    assert controller.settings.recent_models == (str(in_folder), str(elsewhere))
    assert [a.isChecked() for a in menu.actions()] == [True, False]

    dialog = window.open_model_manager()
    assert set(dialog.local_rows) == {str(in_folder), str(elsewhere)}
    assert dialog.local_rows[str(in_folder)].state_label.text() == "Loaded"

    elsewhere.unlink()  # a file deleted since: left out of the menu and the dialog
    window.update_recent_models_menu()
    assert [a.data() for a in menu.actions()] == [str(in_folder)]
    dialog.refresh()
    assert set(dialog.local_rows) == {str(in_folder)}
    dialog.close()
