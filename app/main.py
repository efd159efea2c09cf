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
from app.config import AppPaths, Settings, load_settings, setup_logging

if TYPE_CHECKING:
    from collections.abc import Sequence

    from app.core.store import Store
    from app.ui.main_window import MainWindow
    from app.workers.controller import AppController
    from app.workers.downloads import DownloadController

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
    parser.add_argument(
        "--check",
        action="store_true",
        help="print versions, llama.cpp backends, devices and memory, directories, installed models "
        "and the plan for each, then exit",
    )
    parser.add_argument("--n-ctx", type=int, default=None, help="context size in tokens (overrides settings)")
    return parser.parse_args(argv)


@dataclass
class Application:
    """Everything the running app consists of (returned for tests and the entry point)."""

    paths: AppPaths
    store: Store
    controller: AppController
    window: MainWindow
    downloads: DownloadController | None = None


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

    from app.core.heap import freeze_long_lived
    from app.core.store import StorageError, Store
    from app.ui.main_window import MainWindow
    from app.workers.controller import AppController

    paths = AppPaths.default(args.data_dir).ensure()
    setup_logging(paths)
    settings = load_settings(paths)
    if args.n_ctx:
        settings = settings.replace(n_ctx=args.n_ctx)
    try:
        store = Store(paths.database)
    except StorageError:
        raise
    controller = AppController(store, paths, settings, engine_factory, planner=planner)  # type: ignore[arg-type]
    window = MainWindow(controller)
    window.app_paths = paths
    if not args.model and is_first_run(paths, settings):
        from app.ui.welcome import WelcomePage

        models_dir = Path(settings.models_dir).expanduser() if settings.models_dir else paths.models_dir
        window.set_welcome_page(WelcomePage(models_dir))
    downloads = make_download_controller(paths, settings)
    if downloads is not None:
        window.set_download_controller(downloads)
    app = QCoreApplication.instance()
    if app is not None:
        app.aboutToQuit.connect(controller.shutdown)
        if downloads is not None:
            app.aboutToQuit.connect(downloads.shutdown)
    controller.restore_session()
    if args.model:
        controller.models.load_model(str(Path(args.model).expanduser()))
    freeze_long_lived()  # the window, modules and Qt wrappers: full collections skip them from now on
    return Application(paths=paths, store=store, controller=controller, window=window, downloads=downloads)


def make_download_controller(paths: AppPaths, settings: Settings) -> DownloadController | None:
    """The one DownloadController (its thread starts with the first download); None without a manifest."""
    from app.core.downloads import TokenStore
    from app.core.manifest import ManifestError, load_manifest
    from app.workers.downloads import DownloadController

    try:
        manifest = load_manifest()
    except (ManifestError, OSError):
        log.exception("the models manifest is unreadable: the model manager is disabled")
        return None
    models_dir = Path(settings.models_dir).expanduser() if settings.models_dir else paths.models_dir
    return DownloadController(
        manifest,
        models_dir,
        paths.downloads_state,
        TokenStore(paths.data_dir),
        endpoint=settings.hf_endpoint or None,  # empty: HF_ENDPOINT, else huggingface_hub's default
        custom_builds_file=paths.data_dir / "custom_models.json",
    )


def is_first_run(paths: AppPaths, settings: Settings) -> bool:
    """No model to load: none installed in the models folder and no last model on disk."""
    from app.core.manifest import ManifestError, load_manifest
    from app.diagnostics import installed_models

    if settings.last_model and Path(settings.last_model).expanduser().is_file():
        return False
    models_dir = Path(settings.models_dir).expanduser() if settings.models_dir else paths.models_dir
    try:
        manifest = load_manifest()
    except (ManifestError, OSError):
        log.warning("manifest unreadable; looking for loose GGUF files only", exc_info=True)
        manifest = None
    return not any(m.usable for m in installed_models(models_dir, manifest, with_plans=False))


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
    from PySide6.QtCore import QTimer

    QTimer.singleShot(0, application.window.offer_resume_downloads)  # asks; never resumes by itself
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

        def __init__(self, worker: LlamaWorker, loop: QEventLoop, image_uri: str = "") -> None:
            super().__init__()
            self.loop = loop
            self.text = ""
            self.error = ""
            self.info: object = None
            self.stats: object = None
            self.image_uri = image_uri  # non-empty: a second turn asks about this picture
            self.image_text = ""
            self.image_stats: object = None
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
        def _on_worker_tokens_generated(self, gen: int, text: str) -> None:
            if gen == 2:
                self.image_text += text
            else:
                self.text += text

        @Slot(int, object)
        def _on_worker_generation_finished(self, gen: int, stats: object) -> None:
            if gen == 2:
                self.image_stats = stats
            else:
                self.stats = stats
                if self.image_uri:
                    image_turn = [ChatMessage.user("What is in this picture?", (self.image_uri,))]
                    self.generate_requested.emit(2, image_turn, SamplingParams(max_tokens=16), 16)
                    return
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
    from app.core.gguf_info import find_projector

    projector = find_projector(model)
    image_uri = ""
    try:
        if projector is None:
            params = LoadParams(model_path=model, n_ctx=args.n_ctx or 2048)
        else:
            # Image encoding with more threads than cores crawls on small machines: one thread.
            params = LoadParams(
                model_path=model,
                n_ctx=args.n_ctx or 2048,
                mmproj_path=projector,
                n_threads=1,
                n_threads_batch=1,
            )
            image_uri = _self_test_image_uri()
            say(f"self-test: vision projector {projector.name}")
    except ValueError as exc:
        say(f"self-test FAILED: {exc}")
        return 2

    thread = QThread()
    worker = LlamaWorker(LlamaEngine)
    worker.moveToThread(thread)
    loop = QEventLoop()
    driver = Driver(worker, loop, image_uri)
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
    if image_uri:
        image_stats = driver.image_stats
        if image_stats is None or not driver.image_text.strip() or not info.has_vision:  # type: ignore[attr-defined]
            say("self-test FAILED: the vision projector produced no answer about the picture")
            return 1
        say(f"image turn: {image_stats.prompt_tokens} prompt tokens, {image_stats.completion_tokens} tokens")  # type: ignore[attr-defined]
        say(f"image answer: {driver.image_text[:120]!r}")
    say("self-test OK")
    return 0


def _self_test_image_uri() -> str:
    """A small generated picture (PIL), normalised exactly as a dropped image would be."""
    import io

    from PIL import Image, ImageDraw

    from app.core.images import data_uri, normalize_image

    im = Image.new("RGB", (64, 48), (240, 240, 235))
    draw = ImageDraw.Draw(im)
    draw.rectangle((8, 8, 40, 36), fill=(200, 30, 30))
    draw.ellipse((30, 12, 58, 40), fill=(30, 90, 200))
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return data_uri(normalize_image(buf.getvalue(), name="self-test.png"))


def run_check(args: argparse.Namespace) -> int:
    """``--check``: the system report (app/diagnostics.py) on stdout; exit code 0."""
    from app.diagnostics import run_check as write_report

    paths = AppPaths.default(args.data_dir)
    settings = load_settings(paths)
    extra = [Path(p).expanduser() for p in (args.model, settings.last_model) if p]
    return write_report(paths, extra_models=extra)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.check:
        return run_check(args)
    if args.self_test:
        return run_self_test(args)
    return run_gui(args)
