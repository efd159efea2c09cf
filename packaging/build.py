"""Build the one-folder app with PyInstaller and print where it is.

    python packaging/build.py [--dist DIR] [--work DIR]

Needs ``pip install -e .[packaging]`` (PyInstaller) in the environment whose llama-cpp-python
(CPU, CUDA, Metal or Vulkan build) should be bundled.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "packaging" / "scout-chat.spec"
NAME = "scout-chat"

log = logging.getLogger("build")


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def build(dist: Path, work: Path) -> Path:
    """Run PyInstaller on the spec; return the app folder (``dist/scout-chat``)."""
    command = [
        sys.executable,
        "-m",
        "PyInstaller",
        "--noconfirm",
        "--clean",
        "--log-level",
        "WARN",
        "--distpath",
        str(dist),
        "--workpath",
        str(work),
        str(SPEC),
    ]
    log.info("running %s", " ".join(command))
    subprocess.run(command, cwd=ROOT, check=True)
    return dist / NAME


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dist", type=Path, default=ROOT / "dist", help="output folder (default: dist/)")
    parser.add_argument("--work", type=Path, default=ROOT / "build", help="PyInstaller's work folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    started = time.perf_counter()
    try:
        folder = build(args.dist.resolve(), args.work.resolve())
    except subprocess.CalledProcessError as exc:
        log.error("PyInstaller failed (exit %d)", exc.returncode)
        return exc.returncode or 1
    seconds = time.perf_counter() - started
    exe = folder / (NAME + (".exe" if sys.platform == "win32" else ""))
    log.info("built in %.0f s, %.0f MB", seconds, folder_size(folder) / 1e6)
    log.info("run it: %s --self-test", exe)
    sys.stdout.write(f"{folder}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
