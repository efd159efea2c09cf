"""Suite-wide fixtures: a clean environment, offscreen Qt, isolated data dirs, no network, no thread or
uncaught exception left behind by a test, generated tiny models."""

from __future__ import annotations

import locale
import os
import shutil
import tempfile

# --- the environment the suite runs in: the same wherever it is started ---------------------------------
# This runs when pytest loads this file, before Qt, huggingface_hub or the app are imported (some of them
# read the environment once, at import). Child processes the tests start inherit it.

SUITE_KNOBS = frozenset(
    {"SCOUT_RELIABILITY_KILLS", "SCOUT_RELIABILITY_SEED", "SCOUT_TEST_ARTIFACTS", "SCOUT_UI_SHOTS"}
)
"""The suite's own settings (how many kills, which seed, where screenshots go): kept from the caller."""

_PROXIES = frozenset({"http_proxy", "https_proxy", "all_proxy", "ftp_proxy", "no_proxy"})


def _utf8_locale() -> str:
    """A UTF-8 locale this system has (Qt warns, and a WARNING fails a Qt test, on any other)."""
    for name in ("C.UTF-8", "C.utf8", "en_US.UTF-8"):
        try:
            locale.setlocale(locale.LC_ALL, name)
        except locale.Error:
            continue
        return name
    raise RuntimeError("the tests need a UTF-8 locale (C.UTF-8 or en_US.UTF-8); none is installed")


def _hermetic_environment() -> str:
    """Drop what the caller's environment would change (Hub endpoint, token, offline mode, app and Qt
    settings, proxies, locale) and point HOME and the XDG folders at a fresh temporary folder, so the suite
    never writes outside temporary folders. Return that folder. llama.cpp's tools that the set-up builds
    (llama-server, rpc-server) stay found in the caller's cache: SCOUT_LLAMA_TOOLS_CACHE names it."""
    tools_cache = os.environ.get("SCOUT_LLAMA_TOOLS_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "scout-chat", "llama-tools"
    )
    tools_folder = os.environ.get("SCOUT_LLAMA_TOOLS")
    for name in list(os.environ):
        if (
            name.startswith(("HF_", "HUGGING_FACE_", "QT_", "LC_"))
            or (name.startswith("SCOUT_") and name not in SUITE_KNOBS)
            or name.lower() in _PROXIES
        ):
            del os.environ[name]
    root = tempfile.mkdtemp(prefix="scout-tests-")
    home = os.path.join(root, "home")
    for name, folder in (
        ("HOME", home),
        ("XDG_CACHE_HOME", os.path.join(home, ".cache")),
        ("XDG_CONFIG_HOME", os.path.join(home, ".config")),
        ("XDG_DATA_HOME", os.path.join(home, ".local", "share")),
        ("XDG_STATE_HOME", os.path.join(home, ".local", "state")),
        ("XDG_RUNTIME_DIR", os.path.join(root, "runtime")),
        ("HF_HOME", os.path.join(root, "hf-home")),
    ):
        os.makedirs(folder, mode=0o700, exist_ok=True)
        os.environ[name] = folder
    os.environ["QT_QPA_PLATFORM"] = "offscreen"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    # every app the suite starts shares one speed probe (measured by the first model load, ~10 s)
    os.environ["SCOUT_SPEEDS_FILE"] = os.path.join(root, "machine-speeds.json")
    os.environ["PYTHON_KEYRING_BACKEND"] = "keyring.backends.fail.Keyring"  # never the user's keyring
    os.environ.pop("LANGUAGE", None)
    os.environ["LANG"] = os.environ["LC_ALL"] = _utf8_locale()
    os.environ["SCOUT_LLAMA_TOOLS_CACHE"] = tools_cache
    if tools_folder:
        os.environ["SCOUT_LLAMA_TOOLS"] = tools_folder
    return root


SUITE_TMP = _hermetic_environment()

import gc  # noqa: E402 - after the environment is set
import socket  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import traceback  # noqa: E402
from typing import TYPE_CHECKING  # noqa: E402

import pytest  # noqa: E402

from app.config import DATA_DIR_ENV, AppPaths  # noqa: E402
from app.core.tiny_model import TinyModelSpec, quantized, write_tiny_model  # noqa: E402
from tests.launch import AppLauncher  # noqa: E402

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from PySide6.QtCore import QThread
    from pytestqt.qtbot import QtBot


pytest_plugins = ["pytester"]  # tests/test_suite_guards.py runs small suites to prove the guards below


def pytest_configure(config: pytest.Config) -> None:
    sys.addaudithook(_on_audit_event)  # for good: audit hooks cannot be removed
    _track_qthread_starts()


def pytest_unconfigure(config: pytest.Config) -> None:
    _wait_for_abandoned_qthreads()
    shutil.rmtree(SUITE_TMP, ignore_errors=True)


# --- uncaught exceptions fail the test they happen in ----------------------------------------------------
# An exception nobody caught in a Qt slot (on any thread) reaches sys.excepthook through PyErr_Print, which
# raises the "sys.excepthook" audit event first: seen here whichever hook is installed (pytest-qt's, the
# app's). One in a threading.Thread reaches threading.excepthook: the fixture puts a recorder in front.

_uncaught: list[str] = []
_expecting_uncaught = threading.Event()  # set by the uncaught_exceptions fixture


def _on_audit_event(event: str, args: tuple[object, ...]) -> None:
    if event == "sys.excepthook":
        _hook, exc_type, exc, tb = args
        where = f"uncaught in a Qt slot or callback on thread {threading.current_thread().name!r}"
        _uncaught.append(_format_uncaught(where, exc_type, exc, tb))


def _format_uncaught(where: str, exc_type: object, exc: object, tb: object) -> str:
    lines = traceback.format_exception(exc_type, exc, tb)  # type: ignore[arg-type]
    return f"{where}:\n{''.join(lines)}"


@pytest.fixture(autouse=True)
def _fail_on_uncaught_exceptions() -> Iterator[None]:
    """Fail the test when an exception escaped a Qt slot or a Python thread while it ran (they are
    printed and swallowed otherwise); afterwards put back the exception hooks the test found, so hooks
    the app installs (app.excepthooks) never outlive the test that built the app."""
    saved_sys_hook, saved_threading_hook = sys.excepthook, threading.excepthook

    def record(args: threading.ExceptHookArgs) -> None:
        name = args.thread.name if args.thread is not None else "?"
        if not issubclass(args.exc_type, SystemExit):
            _uncaught.append(
                _format_uncaught(
                    f"uncaught in thread {name!r}", args.exc_type, args.exc_value, args.exc_traceback
                )
            )
        if not _expecting_uncaught.is_set():  # pytest's own hook would fail the test
            saved_threading_hook(args)

    _uncaught.clear()
    threading.excepthook = record
    try:
        yield
    finally:
        sys.excepthook, threading.excepthook = saved_sys_hook, saved_threading_hook
    found, _uncaught[:] = list(_uncaught), []
    if found and not _expecting_uncaught.is_set():
        pytest.fail("\n".join(["uncaught exception(s) during the test:", *found]), pytrace=False)


@pytest.fixture
def uncaught_exceptions() -> Iterator[list[str]]:
    """For a test that provokes uncaught exceptions on purpose: those seen so far (formatted tracebacks),
    which then do not fail it. Mark it ``qt_no_exception_capture`` too when they happen in Qt slots."""
    _expecting_uncaught.set()
    try:
        yield _uncaught
    finally:
        _expecting_uncaught.clear()
        _uncaught.clear()


# --- every QThread a test starts is stopped when it ends, passed or failed ----------------------------------
# A QThread destroyed while it runs aborts the whole process ("QThread: Destroyed while thread ... is still
# running"): one failing test would end the run with no report. Every QThread.start() is recorded; after
# the test (and after its own fixtures shut their controllers down) one still running is asked to quit and
# waited for, and the test fails. A thread that will not stop is kept referenced, never destroyed.

_started_qthreads: list[QThread] = []
_abandoned_qthreads: list[QThread] = []
QTHREAD_STOP_WAIT_MS = 15_000


def _track_qthread_starts() -> None:
    from PySide6.QtCore import QThread

    real_start = QThread.start

    def start(self: QThread, *args: object) -> None:
        _started_qthreads.append(self)
        real_start(self, *args)  # type: ignore[arg-type]

    QThread.start = start  # type: ignore[method-assign]


def _thread_label(thread: QThread) -> str:
    return thread.objectName() or type(thread).__name__


@pytest.fixture(autouse=True)
def _stop_qthreads_left_running() -> Iterator[None]:
    _started_qthreads.clear()
    yield
    started, _started_qthreads[:] = list(_started_qthreads), []
    left: list[str] = []
    for thread in started:
        try:
            if not thread.isRunning():
                continue
        except RuntimeError:  # its C++ object is gone, so it had stopped (Qt aborts otherwise)
            continue
        left.append(_thread_label(thread))
        thread.requestInterruption()
        thread.quit()
        if not thread.wait(QTHREAD_STOP_WAIT_MS):
            _abandoned_qthreads.append(thread)
    if left:
        pytest.fail(f"QThreads left running by the test (stopped in teardown): {left}", pytrace=False)


def _wait_for_abandoned_qthreads() -> None:
    """At the end of the run, give the threads that would not stop a last chance before the process exits."""
    for thread in _abandoned_qthreads:
        thread.wait(60_000)


@pytest.fixture(autouse=True)
def _isolated_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing a test does reaches the user's real data, config or Hub cache."""
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "scout-data"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_TOKEN", raising=False)


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing may be fetched at run time: any connection outside 127.0.0.1 fails the test."""
    real_connect = socket.socket.connect

    def guarded_connect(self: socket.socket, address: object) -> object:
        host = address[0] if isinstance(address, tuple) else address
        if self.family in (socket.AF_INET, socket.AF_INET6) and host not in ("127.0.0.1", "::1", "localhost"):
            raise AssertionError(f"test tried to reach the network: {address!r}")
        return real_connect(self, address)  # type: ignore[arg-type]

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)


@pytest.fixture(autouse=True)
def _collect_garbage_on_the_main_thread() -> object:
    """A test's garbage (Qt objects in cycles among it) is collected here, on the main thread,
    not later by whichever worker thread of the next test crosses a GC threshold."""
    yield
    gc.collect()


@pytest.fixture(autouse=True)
def _no_leaked_threads() -> object:
    before = set(threading.enumerate())
    yield
    leaked = [
        t
        for t in threading.enumerate()
        if t not in before and t.is_alive() and not t.daemon and not t.name.startswith(("Dummy-", "QThread"))
    ]
    for thread in leaked:
        thread.join(timeout=5)
    still = [t.name for t in leaked if t.is_alive()]
    assert not still, f"threads leaked by the test: {still}"


@pytest.fixture
def start_app(qtbot: QtBot) -> Iterator[AppLauncher]:
    """Start the app like ``scout-chat --data-dir DIR ...`` (tests/launch.py); every app started is
    closed cleanly after the test."""
    launcher = AppLauncher(qtbot)
    yield launcher
    launcher.close_all()


@pytest.fixture
def app_paths(tmp_path: Path) -> AppPaths:
    return AppPaths.under(tmp_path / "scout-data").ensure()


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_model(models_dir: Path) -> Path:
    """The tiny llama4 model every test uses (F32, ~1.4 MB, generated once per session)."""
    return write_tiny_model(models_dir / "tiny-llama4.gguf")[0]


@pytest.fixture(scope="session")
def tiny_projector(tiny_model: Path) -> Path:
    """The tiny llama4 vision projector (mmproj), written next to the tiny model."""
    from app.core.tiny_vision import write_tiny_projector

    return write_tiny_projector(tiny_model.with_name("mmproj-tiny-llama4.gguf"), TinyModelSpec())


@pytest.fixture(scope="session")
def tiny_model_q8(models_dir: Path) -> Path:
    return write_tiny_model(models_dir / "tiny-llama4-q8_0.gguf", quantized(TinyModelSpec(), "Q8_0"))[0]


@pytest.fixture(scope="session")
def tiny_model_no_template(models_dir: Path) -> Path:
    return write_tiny_model(models_dir / "tiny-llama4-notemplate.gguf", TinyModelSpec(chat_template=None))[0]


@pytest.fixture(scope="session")
def tiny_model_split(models_dir: Path) -> list[Path]:
    return write_tiny_model(models_dir / "tiny-llama4-split.gguf", n_shards=2)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    """Keep each phase's report on the item, so fixtures can save a screenshot when a test failed."""
    report = yield
    setattr(item, "rep_" + report.when, report)
    return report
