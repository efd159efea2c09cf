"""Composition root: parses the command line and wires core, workers and UI, once."""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from app import __version__, excepthooks
from app.config import AppPaths, Settings, load_settings, read_settings, setup_logging
from app.core.forecast import set_default_cache

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from app.core.engine.probe import MeasuredBuffers
    from app.core.engine.remote import ServerConfig
    from app.core.engine.rpc import ComputeDevice
    from app.core.forecast import LlamaFigures
    from app.core.planner import LoadRequest, PlannedLoad
    from app.core.ports import Engine
    from app.core.store import Store
    from app.core.types import LoadParams
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
    server = parser.add_argument_group("a model on a server (any OpenAI-compatible server)")
    server.add_argument(
        "--server", metavar="URL", help="use the model on this server (http://host:port or https://…)"
    )
    server.add_argument(
        "--api-key-env",
        metavar="VAR",
        help="read the server's API key from environment variable VAR (with --api-server: the key "
        "clients must send)",
    )
    server.add_argument(
        "--server-model", metavar="NAME", help="the server's model to use (default: its first)"
    )
    server.add_argument(
        "--allow-plain-http",
        action="store_true",
        help="allow unencrypted http:// to an address outside this computer and the private networks",
    )
    api = parser.add_argument_group("the local OpenAI-compatible API server without a window")
    api.add_argument(
        "--api-server",
        action="store_true",
        help="serve --model to other programs at http://HOST:PORT/v1 (no window; stop with Ctrl+C "
        "or SIGTERM); --host (default 127.0.0.1), --port (default: Settings → API server, 1236), "
        "--threads, --api-key-env",
    )
    api.add_argument(
        "--allow-other-computers",
        action="store_true",
        help="let --api-server listen on an address other computers can reach (only the key "
        "protects the model)",
    )
    machines = parser.add_argument_group("lend this machine to another Scout Chat (llama.cpp RPC)")
    machines.add_argument(
        "--compute-server",
        action="store_true",
        help="run a compute server: another Scout Chat puts part of its model on this machine "
        "(trusted networks only: no authentication, no encryption)",
    )
    machines.add_argument("--host", metavar="ADDR", help="address to listen on (default 127.0.0.1)")
    machines.add_argument(
        "--port", type=int, default=None, help="port to listen on (default 50052; --api-server: 1236)"
    )
    machines.add_argument(
        "--threads", type=int, default=0, help="CPU threads of the compute server (or of --api-server)"
    )
    machines.add_argument("--device", metavar="DEV,…", help="llama.cpp devices to lend (default: all)")
    machines.add_argument(
        "--i-understand-this-is-unauthenticated",
        action="store_true",
        help="allow a compute server on a public address or on every interface",
    )
    return parser.parse_args(argv)


def server_config(args: argparse.Namespace, stored_key: str | None = None) -> ServerConfig:
    """The server named on the command line; the key from ``--api-key-env`` (never a flag: command
    lines are visible to other users), else the one stored for that server. ValueError if bad."""
    from app.core.engine.remote import ServerConfig

    key = stored_key or ""
    if args.api_key_env:
        if args.api_key_env not in os.environ:
            raise ValueError(f"the environment variable {args.api_key_env} is not set")
        key = os.environ[args.api_key_env].strip()
    config = ServerConfig(
        args.server,
        api_key=key,
        model=args.server_model or "",
        allow_plain_http=args.allow_plain_http,
        n_ctx=args.n_ctx or 0,
    )
    _ = config.address  # a malformed address fails here
    return config


@dataclass
class Application:
    """Everything the running app consists of (returned for tests and the entry point)."""

    paths: AppPaths
    store: Store
    controller: AppController
    window: MainWindow
    downloads: DownloadController | None = None


IN_PROCESS_ENV = "SCOUT_ENGINE_IN_PROCESS"


def make_engine(paths: AppPaths) -> Engine:
    """The app's engine: llama.cpp in its own process (``app/core/engine/process.py``), started
    with the first request; its log (llama.cpp's lines, a native assertion's text) is ``engine.log``.
    ``SCOUT_ENGINE_IN_PROCESS=1`` runs llama.cpp in this process instead (debugging only: a
    native abort then ends the window)."""
    if os.environ.get(IN_PROCESS_ENV) == "1":
        from app.core.engine import LlamaEngine

        return LlamaEngine()
    from app.core.engine.process import EngineProxy

    return EngineProxy(log_path=paths.log_dir / "engine.log")


def planner(
    request: LoadRequest,
    measure: Callable[[LoadParams], MeasuredBuffers] | None = None,
    measure_speeds: Callable[[int], LlamaFigures] | None = None,
    compute_devices: Callable[[Sequence[str]], Sequence[ComputeDevice]] | None = None,
) -> PlannedLoad:
    """Runs on the inference thread: fresh free-memory figures and llama.cpp's dry run each load
    (``measure``: in the engine process; None: in this process), the speed probe the first
    time at this thread count on this hardware (``measure_speeds``: in the engine process; None:
    in this process), cached for the forecast, and with compute servers (Settings → Machines)
    their devices and free memory (``compute_devices``: in the engine process, where they are
    registered with ggml; None: in this process)."""
    import dataclasses

    from app.core import forecast
    from app.core.hardware import SystemHardware, with_remote_devices
    from app.core.planner import plan_load

    if measure is None:
        from app.core.engine.probe import measure_buffers as measure
    if measure_speeds is None:
        from app.core.engine.speed_probe import measure_llama

        measure_speeds = measure_llama
    hardware = SystemHardware().probe()
    if request.compute_servers:
        if compute_devices is None:
            from app.core.engine.rpc import compute_devices as in_this_process

            compute_devices = in_this_process
        remote = [d.as_device() for d in compute_devices(request.compute_servers)]
        hardware = with_remote_devices(hardware, remote)
    threads = request.n_threads or max(1, hardware.physical_cores)
    try:
        speeds = forecast.machine_speeds(
            hardware, threads, forecast.default_cache(), measure_llama=measure_speeds
        )
        hardware = dataclasses.replace(hardware, speeds=speeds)
    except Exception:
        log.warning("the speed probe failed; the plan's forecast uses assumed figures", exc_info=True)
    return plan_load(request, hardware, measure)


def make_controller(
    store: Store, paths: AppPaths, settings: Settings, *, save_settings: bool = True
) -> AppController:
    """The app's controllers on the app's engine (``make_engine``) and planner (its dry run and
    speed probe in the engine process): the window's, and the headless API server's."""
    from app.workers.controller import AppController

    engine = make_engine(paths)
    return AppController(
        store,
        paths,
        settings,
        lambda: engine,
        planner=functools.partial(
            planner,
            measure=getattr(engine, "measure_buffers", None),
            measure_speeds=getattr(engine, "measure_speeds", None),
            compute_devices=getattr(engine, "compute_devices", None),
        ),
        save_settings=save_settings,
    )


def build_application(args: argparse.Namespace) -> Application:
    """Create the store, controller and main window (a QApplication must exist)."""
    from PySide6.QtCore import QCoreApplication

    from app.core.heap import freeze_long_lived
    from app.core.store import StorageError, Store
    from app.ui.main_window import MainWindow

    paths = AppPaths.default(args.data_dir).ensure()
    setup_logging(paths)
    set_default_cache(paths.speeds_file)
    settings, default_changes = read_settings(paths)
    if args.n_ctx:
        settings = settings.replace(n_ctx=args.n_ctx)
    try:
        store = Store(paths.database)
    except StorageError:
        raise
    controller = make_controller(store, paths, settings)
    controller.preferences.default_changes = default_changes  # the window announces them once
    window = MainWindow(controller)
    window.app_paths = paths
    if not args.model and not args.server and is_first_run(paths, settings):
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
    controller.restore_session(reload_model=not (args.server or args.model))
    if args.server:
        from app.core.server_keys import ServerKeyStore

        config = server_config(args, ServerKeyStore(paths.data_dir).get(args.server))
        controller.models.connect_server(config)
    elif args.model:
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
    from app.workers.error_relay import install_error_relay

    app = QApplication.instance()
    if not isinstance(app, QApplication):
        app = QApplication(sys.argv[:1])
    app.setApplicationName("Scout Chat")
    app.setOrganizationName("ScoutChat")
    app.setApplicationVersion(__version__)
    app.setDesktopFileName("scout-chat")
    icon = Path(__file__).resolve().parent.parent / "assets" / "icons" / "scout-chat.svg"
    if icon.exists():
        app.setWindowIcon(QIcon(str(icon)))
    try:
        application = build_application(args)
    except (StorageError, ValueError) as exc:
        QMessageBox.critical(None, "Scout Chat", str(exc))
        return 2
    apply_theme(app, application.controller.settings.theme)
    install_error_relay(application.window).error_reported.connect(application.window.show_error)
    application.window.show()
    from PySide6.QtCore import QTimer

    QTimer.singleShot(0, application.window.offer_resume_downloads)  # asks; never resumes by itself
    code = app.exec()
    application.store.close()
    return int(code)


def run_check(args: argparse.Namespace) -> int:
    """``--check``: the system report (app/diagnostics.py) on stdout; exit code 0."""
    from app.diagnostics import run_check as write_report

    paths = AppPaths.default(args.data_dir)
    settings = load_settings(paths)
    extra = [Path(p).expanduser() for p in (args.model, settings.last_model) if p]
    return write_report(paths, extra_models=extra, compute_servers=settings.compute_servers)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    excepthooks.install()  # uncaught exceptions are logged (run_gui also shows them in the window)
    if args.check:
        return run_check(args)
    if args.compute_server:
        from app.compute_server import run_compute_server

        return run_compute_server(args)
    if args.api_server:
        from app.headless import run_api_server

        return run_api_server(args)
    if args.self_test:
        from app.self_test import run_self_test

        return run_self_test(args)
    return run_gui(args)
