#!/usr/bin/env python3
"""Set up Scout Chat's virtual environment, then run the app or the tests.

One portable script (Linux, macOS, Windows) behind the README's two commands::

    python3 scripts/bootstrap.py --run [app args...]     # make run
    python3 scripts/bootstrap.py --test [pytest args...] # make test

It creates ``.venv`` next to the project, picks the llama.cpp backend for this machine
(CUDA when ``nvidia-smi`` works, Metal on Apple silicon, Vulkan or ROCm when asked for with
``SCOUT_BACKEND``/``--backend``, else CPU), builds llama-cpp-python for it, installs the
project with its dev tools, and records what it did in a stamp so that the next call is
instant when nothing changed. It uses only the standard library: it runs before any
dependency exists.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
STAMP = VENV / ".scout-chat-setup.json"
CONSTRAINTS = ROOT / "constraints.txt"
LLAMA_CPP_PIN = "llama-cpp-python==0.3.36"
MIN_PYTHON = (3, 10)

BACKEND_CMAKE_ARGS = {
    "cpu": "",
    "cuda": "-DGGML_CUDA=on",
    "metal": "-DGGML_METAL=on",
    "vulkan": "-DGGML_VULKAN=on",
    "rocm": "-DGGML_HIP=on",
}


def say(message: str) -> None:
    sys.stderr.write(f"[setup] {message}\n")
    sys.stderr.flush()


def venv_python() -> Path:
    if os.name == "nt":
        return VENV / "Scripts" / "python.exe"
    return VENV / "bin" / "python"


def detect_backend(requested: str | None) -> tuple[str, str]:
    """Return (backend, why)."""
    if requested and requested != "auto":
        if requested not in BACKEND_CMAKE_ARGS:
            raise SystemExit(f"unknown backend {requested!r}; choose from {', '.join(BACKEND_CMAKE_ARGS)}")
        return requested, "requested"
    if sys.platform == "darwin" and platform.machine() == "arm64":
        return "metal", "Apple silicon"
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            result = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20, check=False)
        except (OSError, subprocess.SubprocessError):
            result = None
        if result is not None and result.returncode == 0 and "GPU" in result.stdout:
            first = result.stdout.strip().splitlines()[0]
            if (
                shutil.which("nvcc")
                or os.environ.get("CUDA_HOME")
                or Path("/usr/local/cuda/bin/nvcc").exists()
            ):
                return "cuda", f"nvidia-smi sees {first}"
            say(f"nvidia-smi sees {first} but no CUDA toolkit (nvcc) was found: building for CPU.")
            say("Install the CUDA toolkit and run again with SCOUT_BACKEND=cuda to use the GPU.")
            return "cpu", "GPU present but no CUDA toolkit"
    return "cpu", "no GPU toolkit detected"


def fingerprint(backend: str) -> dict[str, str]:
    digest = hashlib.sha256()
    for name in ("pyproject.toml", "constraints.txt"):
        path = ROOT / name
        if path.exists():
            digest.update(path.read_bytes())
    return {
        "project": digest.hexdigest(),
        "backend": backend,
        "python": sys.version.split()[0],
        "llama_cpp": LLAMA_CPP_PIN,
    }


def pip(*args: str, env: dict[str, str] | None = None) -> None:
    cmd = [str(venv_python()), "-m", "pip", *args]
    say("$ " + " ".join(cmd))
    subprocess.run(cmd, check=True, cwd=ROOT, env=env)


def install_llama_cpp(backend: str) -> None:
    env = dict(os.environ)
    env.pop("CMAKE_ARGS", None)
    extra = os.environ.get("CMAKE_ARGS", "")
    cmake_args = " ".join(part for part in (BACKEND_CMAKE_ARGS[backend], extra) if part)
    if cmake_args:
        env["CMAKE_ARGS"] = cmake_args
    constraint = ["-c", str(CONSTRAINTS)] if CONSTRAINTS.exists() else []
    if backend == "cpu" and not extra:
        # pip's wheel cache keeps the compiled wheel: later set-ups take seconds.
        say("building llama-cpp-python for CPU (about 7 minutes on 2 cores the first time; cached after)")
        pip("install", *constraint, LLAMA_CPP_PIN, env=env)
        return
    # pip's wheel cache is keyed by the source archive only, not by CMAKE_ARGS, so a GPU build must
    # not come from (or pollute) it: build once into a wheelhouse of our own, one per backend.
    wheelhouse = Path(os.environ.get("SCOUT_WHEELHOUSE", Path.home() / ".cache" / "scout-chat" / "wheels"))
    wheelhouse = wheelhouse / (
        backend + ("-" + hashlib.sha1(extra.encode()).hexdigest()[:8] if extra else "")
    )
    if not any(wheelhouse.glob("llama_cpp_python-*.whl")):
        say(f"building llama-cpp-python with CMAKE_ARGS={cmake_args!r} into {wheelhouse}")
        wheelhouse.mkdir(parents=True, exist_ok=True)
        pip(
            "wheel",
            "--no-deps",
            "--no-cache-dir",
            "--no-binary",
            "llama-cpp-python",
            "-w",
            str(wheelhouse),
            LLAMA_CPP_PIN,
            env=env,
        )
    pip(
        "install",
        *constraint,
        "--force-reinstall",
        "--no-deps",
        "--find-links",
        str(wheelhouse),
        "--no-index",
        LLAMA_CPP_PIN,
    )
    pip("install", *constraint, LLAMA_CPP_PIN)  # its pure-Python dependencies


def ensure_venv() -> None:
    if venv_python().exists():
        return
    say(f"creating virtual environment {VENV}")
    venv.EnvBuilder(with_pip=True, clear=False).create(VENV)


def setup(backend_request: str | None) -> None:
    if sys.version_info < MIN_PYTHON:
        raise SystemExit(f"Scout Chat needs Python {MIN_PYTHON[0]}.{MIN_PYTHON[1]} or newer")
    backend, why = detect_backend(backend_request or os.environ.get("SCOUT_BACKEND"))
    ensure_venv()
    wanted = fingerprint(backend)
    try:
        current = json.loads(STAMP.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        current = {}
    if current == wanted:
        say(f"environment up to date (llama.cpp backend: {backend})")
        return
    say(f"llama.cpp backend: {backend} ({why})")
    pip("install", "--quiet", "--upgrade", "pip", "wheel", "setuptools")
    if current.get("backend") != backend or current.get("llama_cpp") != LLAMA_CPP_PIN or not current:
        install_llama_cpp(backend)
    constraint = ["-c", str(CONSTRAINTS)] if CONSTRAINTS.exists() else []
    pip("install", *constraint, "-e", ".[dev]")
    STAMP.write_text(json.dumps(wanted, indent=2), encoding="utf-8")
    say("environment ready")


def exec_in_venv(args: list[str]) -> int:
    say("$ " + " ".join(args))
    return subprocess.call(args, cwd=ROOT)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--run", action="store_true", help="set up, then launch Scout Chat")
    group.add_argument("--test", action="store_true", help="set up, then run the test suite")
    parser.add_argument(
        "--backend",
        choices=["auto", *BACKEND_CMAKE_ARGS],
        default=None,
        help="llama.cpp backend (default: auto-detect; env SCOUT_BACKEND)",
    )
    args, rest = parser.parse_known_args()
    setup(args.backend)
    python = str(venv_python())
    if args.run:
        return exec_in_venv([python, "-m", "app", *rest])
    if args.test:
        return exec_in_venv([python, "-m", "pytest", *rest])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
