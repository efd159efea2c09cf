"""The PyInstaller build: it builds, and the built binary passes ``--self-test`` (vision included)
and ``--check`` offscreen. Slow (minutes): marked ``slow``; skipped without PyInstaller."""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger(__name__)


def test_desktop_entry_and_icons_are_consistent() -> None:
    entry = (ROOT / "packaging" / "linux" / "scout-chat.desktop").read_text(encoding="utf-8")
    fields = dict(
        line.split("=", 1) for line in entry.splitlines() if "=" in line and not line.startswith("#")
    )
    assert fields["Type"] == "Application"
    assert fields["Exec"].startswith("scout-chat")
    assert fields["Icon"] == "scout-chat"
    assert fields["StartupWMClass"] == "scout-chat"  # app.setDesktopFileName("scout-chat")
    script = (ROOT / "packaging" / "linux" / "install-desktop-entry.sh").read_text(encoding="utf-8")
    for size in (16, 32, 48, 64, 128, 256):
        assert (ROOT / "assets" / "icons" / f"scout-chat-{size}.png").is_file()
    assert "hicolor" in script
    assert ".local/share/applications" in script
    assert (ROOT / "assets" / "icons" / "scout-chat.svg").is_file()


@pytest.mark.slow
def test_pyinstaller_build_passes_self_test(tmp_path: Path, tiny_model: Path, tiny_projector: Path) -> None:
    if importlib.util.find_spec("PyInstaller") is None:
        pytest.skip("PyInstaller is not installed: pip install -e .[packaging]")
    started = time.perf_counter()
    built = subprocess.run(
        [sys.executable, str(ROOT / "packaging" / "build.py"), "--dist", str(tmp_path / "dist"),
         "--work", str(tmp_path / "work")],
        capture_output=True, text=True, timeout=1800, check=False,
    )  # fmt: skip
    build_seconds = time.perf_counter() - started
    assert built.returncode == 0, built.stdout[-4000:] + built.stderr[-4000:]
    folder = Path(built.stdout.strip().splitlines()[-1])
    exe = folder / ("scout-chat.exe" if sys.platform == "win32" else "scout-chat")
    assert exe.is_file()
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())
    log.warning("PyInstaller build: %.0f s, %.0f MB in %s", build_seconds, size / 1e6, folder)
    assert (folder / "_internal" / "models_manifest.json").is_file()
    assert list((folder / "_internal" / "llama_cpp" / "lib").glob("*llama*"))
    assert list((folder / "_internal").rglob("*qoffscreen*"))

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    model = model_dir / tiny_model.name
    shutil.copy(tiny_model, model)
    shutil.copy(tiny_projector, model_dir / tiny_projector.name)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["QT_QPA_PLATFORM"] = "offscreen"
    data = str(tmp_path / "data")
    run = subprocess.run(
        [str(exe), "--self-test", "--model", str(model), "--data-dir", data],
        capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert "vision projector" in run.stdout
    assert "self-test OK" in run.stdout
    generated = subprocess.run(
        [str(exe), "--self-test", "--data-dir", data],
        capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert generated.returncode == 0, generated.stdout + generated.stderr
    assert "self-test OK" in generated.stdout
    check = subprocess.run(
        [str(exe), "--check", "--data-dir", data],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    assert "(packaged)" in check.stdout
    assert "== Devices ==" in check.stdout
    assert "llama-cpp-python: 0.3" in check.stdout
    assert "Engine process: starts (spawn): pid" in check.stdout  # the executable started itself


def test_the_packaged_entry_point_starts_the_engine_process_from_itself(tmp_path: Path) -> None:
    """The PyInstaller entry (``packaging/entry.py``) as the main script: the engine process is
    spawned from it (the child re-imports the main script, which must not start the app again;
    frozen, ``multiprocessing.freeze_support()`` there runs the child instead of ``main``)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "QT_QPA_PLATFORM": "offscreen", "HF_HUB_OFFLINE": "1"}
    check = subprocess.run(
        [sys.executable, str(ROOT / "packaging" / "entry.py"), "--check", "--data-dir", str(tmp_path / "d")],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    assert "Engine process: starts (spawn): pid" in check.stdout
    assert check.stdout.count("== Devices ==") == 1  # the report once: the engine did not run main
