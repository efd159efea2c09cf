"""The suite's own guards (tests/conftest.py), proved on small suites run in a child pytest.

The child runs with pytest's thread-exception plugin and pytest-qt's exception capture turned off, so
what fails its tests there is this suite's fixtures alone.
"""

from __future__ import annotations

import locale
import os
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import SUITE_TMP

REPO = Path(__file__).resolve().parent.parent

CHILD_SUITE = """
import threading

import pytest
from PySide6.QtCore import QObject, QThread, Signal

from app import excepthooks


class Emitter(QObject):
    fired = Signal()


def test_a_slot_raises(qapp):
    emitter = Emitter()
    emitter.fired.connect(lambda: 1 / 0)
    emitter.fired.emit()  # PySide6 prints the ZeroDivisionError and carries on


def test_a_thread_raises():
    def run():
        raise KeyError("lost in a thread")

    thread = threading.Thread(target=run, name="doomed")
    thread.start()
    thread.join()


def test_a_thread_raises_while_the_app_hooks_are_installed():
    seen = []
    excepthooks.install(lambda message, detail: seen.append(message))
    thread = threading.Thread(target=lambda: [][1], name="app-hooked")
    thread.start()
    thread.join()
    assert seen and "IndexError" in seen[0]  # the app surfaced it, and the fixture still sees it


def test_fails_with_a_qthread_running(qapp):
    thread = QThread()
    thread.setObjectName("still-running")
    thread.start()
    assert thread.isRunning()
    pytest.fail("a failure while a QThread runs must not abort the run")


def test_passes_but_leaves_a_qthread_running(qapp):
    thread = QThread()
    thread.setObjectName("left-behind")
    thread.start()
    test_passes_but_leaves_a_qthread_running.thread = thread  # referenced: only the fixture stops it


def test_a_clean_test_passes(qapp):
    thread = QThread()
    thread.start()
    thread.quit()
    thread.wait()
"""


def _run_child_suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.RunResult:
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("COLUMNS", "400")  # summary lines in full
    pytester.makeini("[pytest]\nqt_api = pyside6\nqt_no_exception_capture = true\n")
    pytester.makeconftest('pytest_plugins = ["tests.conftest"]\n')
    pytester.makepyfile(test_child=CHILD_SUITE)
    return pytester.runpytest_subprocess("-p", "no:threadexception", "-p", "no:cacheprovider", "-rA")


def test_uncaught_exceptions_and_running_qthreads_fail_the_test_without_aborting_the_run(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = _run_child_suite(pytester, monkeypatch)
    out = result.stdout.str()
    # The run ends with a report (no abort: "QThread: Destroyed while thread ... is still running").
    assert result.ret == pytest.ExitCode.TESTS_FAILED, out
    assert "Destroyed while thread" not in out + result.stderr.str()
    result.assert_outcomes(passed=5, failed=1, errors=5)
    result.stdout.fnmatch_lines_random(
        [
            "ERROR test_child.py::test_a_slot_raises - Failed: uncaught exception(s) during the test*",
            "ERROR test_child.py::test_a_thread_raises - Failed: uncaught exception(s) during the test*",
            "ERROR test_child.py::test_a_thread_raises_while_the_app_hooks_are_installed*",
            "ERROR test_child.py::test_passes_but_leaves_a_qthread_running - Failed: QThreads left*",
            "ERROR test_child.py::test_fails_with_a_qthread_running - Failed: QThreads left*",
            "FAILED test_child.py::test_fails_with_a_qthread_running - Failed: a failure while*",
            "PASSED test_child.py::test_a_clean_test_passes",
            "*uncaught in a Qt slot or callback on thread 'MainThread'*",
            "ZeroDivisionError: division by zero",
            "*uncaught in thread 'doomed'*",
            "KeyError: 'lost in a thread'",
            "*uncaught in thread 'app-hooked'*",
            "*QThreads left running by the test (stopped in teardown): ?'still-running'?",
            "*QThreads left running by the test (stopped in teardown): ?'left-behind'?",
        ]
    )


def test_the_suite_runs_in_a_clean_environment() -> None:
    """What a user's shell exports (offline mode, a token, an endpoint, a locale, app settings, a
    read-only home) is not what the tests see."""
    for name in os.environ:
        assert not name.startswith(("HF_TOKEN", "HUGGING_FACE_", "HF_HUB_OFFLINE", "HF_ENDPOINT")), name
        assert not name.lower().endswith("_proxy"), name
    assert os.environ["QT_QPA_PLATFORM"] == "offscreen"
    assert locale.getlocale(locale.LC_CTYPE)[1] in ("UTF-8", "utf8", "UTF8")
    assert "LANGUAGE" not in os.environ
    home = Path(os.environ["HOME"])
    assert home.is_relative_to(SUITE_TMP)
    assert Path.home() == home
    for name in ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "HF_HOME"):
        assert Path(os.environ[name]).is_relative_to(tempfile.gettempdir()), name
    assert sys.flags.utf8_mode or locale.getpreferredencoding(False).lower().replace("-", "") == "utf8"
