"""Composition root: parses the command line and wires core, workers and UI, once."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from app import __version__
from app.config import AppPaths, load_settings, setup_logging

if TYPE_CHECKING:
    from collections.abc import Sequence

    from app.core.store import Store
    from app.ui.main_window import MainWindow
    from app.workers.controller import ChatController

log = logging.getLogger(__name__)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scout-chat",
        description="Offline, private chat with Llama 4 Scout (GGUF models through llama.cpp).",
    )
    parser.add_argument(
        "--model", metavar="PATH", help="GGUF model file to load (first part of a split model)"
    )
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        help="keep all data (chats, settings, models, logs) in DIR (portable mode)",
    )
    parser.add_argument("--version", action="version", version=f"Scout Chat {__version__}")
    parser.add_argument(
        "--self-test",
        action="store_true",
        help="headless check: load the model (or a generated tiny llama4 model) and stream one answer",
    )
    parser.add_argument("--n-ctx", type=int, default=None, help="context size in tokens (overrides settings)")
    return parser.parse_args(argv)


@dataclass
class Application:
    """Everything the running app consists of (returned for tests and the entry point)."""

    paths: AppPaths
    store: Store
    controller: ChatController
    window: MainWindow


def engine_factory() -> object:
    from app.core.engine import LlamaEngine

    return LlamaEngine()


def planner(request: object) -> object:
    """Runs on the inference thread: fresh free-memory figures and llama.cpp's dry run each load."""
    from app.core.engine.probe import measure_buffers
    from app.core.hardware import SystemHardware
    from app.core.planner import plan_load

    return plan_load(request, SystemHardware().probe(), measure_buffers)  # type: ignore[arg-type]


def build_application(args: argparse.Namespace) -> Application:
    """Create the store, controller and main window (a QApplication must exist)."""
    from PySide6.QtCore import QCoreApplication

    from app.core.store import StorageError, Store
    from app.ui.main_window import MainWindow
    from app.workers.controller import ChatController

    paths = AppPaths.default(args.data_dir).ensure()
    setup_logging(paths)
    settings = load_settings(paths)
    if args.n_ctx:
        settings = settings.replace(n_ctx=args.n_ctx)
    try:
        store = Store(paths.database)
    except StorageError:
        raise
    controller = ChatController(store, paths, settings, engine_factory, planner=planner)  # type: ignore[arg-type]
    window = MainWindow(controller)
    app = QCoreApplication.instance()
    if app is not None:
        app.aboutToQuit.connect(controller.shutdown)
    controller.restore_session()
    if args.model:
        controller.load_model(str(Path(args.model).expanduser()))
    return Application(paths=paths, store=store, controller=controller, window=window)


def run_gui(args: argparse.Namespace) -> int:
    from PySide6.QtGui import QIcon
    from PySide6.QtWidgets import QApplication, QMessageBox

    from app.core.store import StorageError
    from app.ui.theme import apply_theme

    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("Scout Chat")
    app.setOrganizationName("ScoutChat")
    app.setApplicationVersion(__version__)
    app.setDesktopFileName("scout-chat")
    icon = Path(__file__).resolve().parent.parent / "assets" / "icons" / "scout-chat.svg"
    if icon.exists():
        app.setWindowIcon(QIcon(str(icon)))
    try:
        application = build_application(args)
    except StorageError as exc:
        QMessageBox.critical(None, "Scout Chat", str(exc))
        return 2
    apply_theme(app, application.controller.settings.theme)  # type: ignore[arg-type]
    application.window.show()
    code = app.exec()
    application.store.close()
    return int(code)


def run_self_test(args: argparse.Namespace) -> int:
    """Load a model and stream one answer through the same worker the window uses."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import QCoreApplication, QEventLoop, QObject, QThread, QTimer, Signal, Slot

    from app.core.engine import LlamaEngine
    from app.core.types import ChatMessage, LoadParams, SamplingParams
    from app.workers.inference import LlamaWorker

    def say(text: str) -> None:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    class Driver(QObject):
        """GUI-thread side: sends commands to the worker (queued) and receives its results."""

        load_requested = Signal(object)
        generate_requested = Signal(int, list, object, int)

        def __init__(self, worker: LlamaWorker, loop: QEventLoop) -> None:
            super().__init__()
            self.loop = loop
            self.text = ""
            self.error = ""
            self.info: object = None
            self.stats: object = None
            self.load_requested.connect(worker.load_model)
            self.generate_requested.connect(worker.generate)
            worker.model_loaded.connect(self._on_worker_model_loaded)
            worker.load_failed.connect(self._on_worker_load_failed)
            worker.tokens_generated.connect(self._on_worker_tokens_generated)
            worker.generation_finished.connect(self._on_worker_generation_finished)
            worker.generation_failed.connect(self._on_worker_generation_failed)

        @Slot(object)
        def _on_worker_model_loaded(self, info: object) -> None:
            self.info = info
            messages = [ChatMessage.system("You are a helpful assistant."), ChatMessage.user("Say hello.")]
            self.generate_requested.emit(1, messages, SamplingParams(max_tokens=48), 64)

        @Slot(str, str)
        def _on_worker_load_failed(self, message: str, _detail: str) -> None:
            self.error = message
            self.loop.quit()

        @Slot(int, str)
        def _on_worker_tokens_generated(self, _gen: int, text: str) -> None:
            self.text += text

        @Slot(int, object)
        def _on_worker_generation_finished(self, _gen: int, stats: object) -> None:
            self.stats = stats
            self.loop.quit()

        @Slot(int, str, str)
        def _on_worker_generation_failed(self, _gen: int, message: str, _detail: str) -> None:
            self.error = message
            self.loop.quit()

    _qapp = QCoreApplication.instance() or QCoreApplication(sys.argv[:1])
    tmp: tempfile.TemporaryDirectory[str] | None = None
    if args.model:
        model = Path(args.model).expanduser()
        say(f"self-test: model {model}")
    else:
        from app.core.tiny_model import write_tiny_model

        tmp = tempfile.TemporaryDirectory(prefix="scout-selftest-")
        model = write_tiny_model(Path(tmp.name) / "tiny-llama4.gguf")[0]
        say("self-test: no --model given; generated a tiny random-weight llama4 model")
    try:
        params = LoadParams(model_path=model, n_ctx=args.n_ctx or 2048)
    except ValueError as exc:
        say(f"self-test FAILED: {exc}")
        return 2

    thread = QThread()
    worker = LlamaWorker(LlamaEngine)
    worker.moveToThread(thread)
    loop = QEventLoop()
    driver = Driver(worker, loop)
    thread.start()
    driver.load_requested.emit(params)
    QTimer.singleShot(600_000, loop.quit)  # never hang
    loop.exec()
    worker.cancel_event.set()
    thread.quit()
    thread.wait(30_000)
    if worker._engine is not None:
        worker._engine.unload()
    if tmp is not None:
        tmp.cleanup()
    if driver.error:
        say(f"self-test FAILED: {driver.error}")
        return 1
    stats, info, text = driver.stats, driver.info, driver.text
    if not text.strip() or stats is None or info is None:
        say("self-test FAILED: the model produced no text")
        return 1
    say(f"model: {info.name} ({info.architecture}, {info.n_params / 1e6:.1f} M parameters)")  # type: ignore[attr-defined]
    say(f"load time: {info.load_seconds:.2f} s")  # type: ignore[attr-defined]
    say(f"time to first token: {stats.ttft_s * 1000:.0f} ms")  # type: ignore[attr-defined]
    say(f"tokens per second: {stats.tokens_per_s:.1f} ({stats.completion_tokens} tokens)")  # type: ignore[attr-defined]
    say(f"answer: {text[:120]!r}")
    say("self-test OK")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.self_test:
        return run_self_test(args)
    return run_gui(args)
