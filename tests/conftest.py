"""Suite-wide fixtures: offscreen Qt, isolated data dirs, no network, generated tiny models."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before any Qt import
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

import gc
import socket
import threading
from typing import TYPE_CHECKING

import pytest

from app.config import DATA_DIR_ENV, AppPaths
from app.core.tiny_model import TinyModelSpec, quantized, write_tiny_model

if TYPE_CHECKING:
    from pathlib import Path


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
