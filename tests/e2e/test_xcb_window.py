"""The real app on a real X server: ``python -m app`` on Qt's xcb platform under Xvfb.

Every other UI test runs on Qt's offscreen platform, which needs none of the X11 libraries a
user's desktop must have; this one starts the app as ``make run`` does, waits for its main window
to be mapped on the X server, takes a screenshot of it from the server, checks that it is drawn,
and quits the app with Ctrl+Q. A missing system library fails it with the set-up's message.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = os.environ.get("SCOUT_TEST_ARTIFACTS")
XVFB = shutil.which("Xvfb")
XDOTOOL = shutil.which("xdotool")
WAIT_S = 120  # a generous deadline for a slow runner; the test goes on as soon as the window is up

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="xcb (X11) is Linux's platform"),
    pytest.mark.skipif(
        XVFB is None or XDOTOOL is None,
        reason="needs Xvfb and xdotool (Debian/Ubuntu: apt-get install xvfb xdotool); .ci/run installs them",
    ),
]

GRAB = """\
import sys
from PySide6.QtGui import QGuiApplication
app = QGuiApplication(sys.argv[:1])
pixmap = app.primaryScreen().grabWindow(int(sys.argv[1]))
sys.exit(0 if not pixmap.isNull() and pixmap.save(sys.argv[2]) else 1)
"""


def _system_libs():
    """scripts/system_libs.py, the set-up's check (scripts/ is not a package)."""
    if "system_libs" not in sys.modules:
        spec = importlib.util.spec_from_file_location("system_libs", ROOT / "scripts" / "system_libs.py")
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["system_libs"] = module  # dataclasses look their module up while the class is built
        spec.loader.exec_module(module)
    return sys.modules["system_libs"]


@pytest.fixture
def x_display(tmp_path: Path) -> object:
    """A fresh Xvfb server on a free display number (Xvfb picks it: -displayfd)."""
    read_end, write_end = os.pipe()
    stderr = (tmp_path / "xvfb.log").open("wb")
    server = subprocess.Popen(
        [XVFB, "-displayfd", str(write_end), "-screen", "0", "1280x860x24", "-nolisten", "tcp", "-noreset"],
        pass_fds=(write_end,),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
    )
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        number = pipe.readline().strip()  # written once the server accepts clients; EOF if it died
    if not number:
        server.wait(timeout=30)
        stderr.close()
        pytest.fail(f"Xvfb did not start:\n{(tmp_path / 'xvfb.log').read_text(errors='replace')}")
    yield f":{number}"
    server.terminate()
    server.wait(timeout=30)
    stderr.close()


def _x_env(display: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("WAYLAND_DISPLAY", "XDG_SESSION_TYPE", "XAUTHORITY")
    }
    env.update(DISPLAY=display, QT_QPA_PLATFORM="xcb", PYTHONPATH=str(ROOT))
    return env


def _require_xcb_plugin() -> None:
    """Fail with the set-up's own message when Qt's xcb plugin cannot load here."""
    import PySide6

    system_libs = _system_libs()
    check = system_libs.check_plugin(Path(PySide6.__file__).resolve().parent / "Qt", "xcb")
    if check.ok:
        return
    manager = system_libs.package_manager(system_libs.read_os_release())
    lines, packages = system_libs.describe_failure(check, manager)
    if packages and manager:
        lines.append("install: " + " ".join(system_libs.install_command(manager, packages)))
    pytest.fail("\n".join(lines))


def _wait_for_window(app: subprocess.Popen, env: dict[str, str], log: Path) -> str:
    """The X id of the app's visible main window, once it is mapped."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if app.poll() is not None:
            pytest.fail(f"the app exited ({app.returncode}) before its window appeared:\n{log.read_text()}")
        found = subprocess.run(
            [XDOTOOL, "search", "--onlyvisible", "--name", "Scout Chat$"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if found.stdout.split():
            return found.stdout.split()[0]
        time.sleep(0.2)
    pytest.fail(f"no visible 'Scout Chat' window after {WAIT_S} s:\n{log.read_text()}")


def _drawn(png: Path) -> bool:
    """True when the picture holds a drawn window: many colours, no single one covering it all."""
    with Image.open(png) as image:
        rgb = image.convert("RGB")
        colours = rgb.getcolors(maxcolors=1 << 20) or []
        pixels = rgb.width * rgb.height
    top = max((count for count, _ in colours), default=pixels)
    return len(colours) >= 32 and top < 0.95 * pixels


def _grab_when_drawn(window: str, env: dict[str, str], png: Path) -> None:
    """Grab the window from the X server until it has been painted (the first frame may lag the map)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        grab = subprocess.run(
            [sys.executable, "-c", GRAB, window, str(png)],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert grab.returncode == 0, f"could not grab window {window}: {grab.stderr}"
        if _drawn(png) or time.monotonic() > deadline:
            return
        time.sleep(0.5)


def test_the_window_opens_on_a_real_x_server(x_display: str, tmp_path: Path) -> None:
    _require_xcb_plugin()
    env = _x_env(x_display)
    log = tmp_path / "app.log"
    with log.open("wb") as out:
        app = subprocess.Popen(
            [sys.executable, "-m", "app", "--data-dir", str(tmp_path / "data")],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            window = _wait_for_window(app, env, log)
            png = tmp_path / "xcb-window.png"
            _grab_when_drawn(window, env, png)
            if ARTIFACTS:
                Path(ARTIFACTS).mkdir(parents=True, exist_ok=True)
                shutil.copy(png, Path(ARTIFACTS) / png.name)
            with Image.open(png) as image:
                size = image.size
            assert size[0] >= 720, size  # the main window's minimum size
            assert size[1] >= 480, size
            assert _drawn(png), f"the window on the X server is blank: {png}"

            # Quit as a user would (real key events through the XTEST extension).
            subprocess.run(
                [XDOTOOL, "windowfocus", "--sync", window, "key", "--clearmodifiers", "ctrl+q"],
                env=env,
                check=True,
                timeout=60,
            )
            assert app.wait(timeout=WAIT_S) == 0, log.read_text()
        finally:
            if app.poll() is None:
                app.kill()
                app.wait()
    assert "Could not load the Qt platform plugin" not in log.read_text()
