"""``scout-chat --api-server --model PATH``: the local API server without a window.

The same server, controllers and inference worker as the window's Settings → API server, on a
``QCoreApplication``: the model is loaded with the planner's plan through the engine process, as
the window would load it. The server binds 127.0.0.1 unless ``--host`` names another address, which
is refused without ``--allow-other-computers`` (and then warned about, as Settings warns). Every
request needs the key: ``--api-key-env VAR`` (for this run only), else the one saved for the app's
API server (keyring, else a 0600 file); when there is none, one is made, saved and printed — the
only time a key is ever printed. SIGTERM and SIGINT stop it cleanly: the port is closed, answers in
flight are ended, the engine process is stopped, and the exit code is 0. Nothing of the run is
written to the user's settings; the log is the app's usual ``scout-chat.log``.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import QCoreApplication, QObject, QTimer, Slot

from app.config import AppPaths, load_settings, setup_logging
from app.core.api_server import EXPOSED_WARNING
from app.core.forecast import set_default_cache
from app.core.listen import is_loopback
from app.core.server_keys import ApiTokenStore

if TYPE_CHECKING:
    import argparse
    from types import FrameType

    from app.core.types import ModelInfo
    from app.workers.controller import AppController

log = logging.getLogger(__name__)

ALLOW_FLAG = "--allow-other-computers"
EXIT_FAILED = 1
EXIT_REFUSED = 2
SIGNAL_POLL_MS = 200  # Python runs signal handlers only when it has control: a timer gives it


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def api_key(args: argparse.Namespace, paths: AppPaths) -> tuple[str, bool]:
    """The key clients must send and whether it was made just now. ValueError if the variable
    named by ``--api-key-env`` is unset or empty."""
    if args.api_key_env:
        value = os.environ.get(args.api_key_env, "").strip()
        if not value:
            raise ValueError(f"The environment variable {args.api_key_env} is not set (or is empty).")
        return value, False
    tokens = ApiTokenStore(paths.data_dir)
    saved = tokens.saved()
    if saved:
        return saved, False
    return tokens.regenerate(), True


class _Session(QObject):
    """Waits for the model, says where the server listens, and quits on a signal or a failure."""

    def __init__(self, app: QCoreApplication, controller: AppController, new_key: str, key_env: str) -> None:
        super().__init__()
        self.app = app
        self.controller = controller
        self.new_key = new_key
        self.key_env = key_env
        self.code = 0
        self.stop_signal = 0
        controller.models.model_loaded.connect(self._on_models_model_loaded)
        controller.models.model_load_failed.connect(self._on_models_model_load_failed)
        controller.models.model_lost.connect(self._on_models_model_lost)
        controller.notices.error_occurred.connect(self._on_notices_error_occurred)
        self._ticks = QTimer(self)
        self._ticks.setInterval(SIGNAL_POLL_MS)
        self._ticks.timeout.connect(self._on_ticks_timeout)
        self._ticks.start()

    def on_signal(self, number: int, _frame: FrameType | None) -> None:
        self.stop_signal = number  # acted on by the next tick, on the event loop

    def fail(self, message: str) -> None:
        say(message)
        log.error("headless API server: %s", message)
        self.code = EXIT_FAILED
        self.app.quit()

    @Slot()
    def _on_ticks_timeout(self) -> None:
        if self.stop_signal:
            log.info("headless API server: %s received, stopping", signal.Signals(self.stop_signal).name)
            self._ticks.stop()
            self.app.quit()

    @Slot(object)
    def _on_models_model_loaded(self, info: ModelInfo) -> None:
        address = self.controller.api.address
        name = self.controller.api.chat_model()
        say(f"Scout Chat API server listening on http://{address}/v1 — model {name}")
        if self.new_key:
            say(
                "A new API key was made and saved (Settings → API server shows it; it is not printed "
                f"again): {self.new_key}"
            )
        elif self.key_env:
            say(f"Clients send the key in ${self.key_env} as 'Authorization: Bearer KEY'.")
        else:
            say("Clients send the saved key (Settings → API server) as 'Authorization: Bearer KEY'.")
        say("Stop with Ctrl+C or SIGTERM.")
        log.info("headless API server ready on %s with %s (n_ctx %d)", address, info.name, info.n_ctx)

    @Slot(str, str)
    def _on_models_model_load_failed(self, message: str, _detail: str) -> None:
        self.fail(f"The model could not be loaded: {message}")

    @Slot()
    def _on_models_model_lost(self) -> None:
        self.fail("The model engine stopped unexpectedly; see engine.log in the log folder.")

    @Slot(str)
    def _on_notices_error_occurred(self, message: str) -> None:
        if not self.controller.api.address:  # the server could not start (port in use, …)
            self.fail(message)
        else:
            log.warning("headless API server: %s", message)


def run_api_server(args: argparse.Namespace) -> int:
    from app.core.store import StorageError, Store
    from app.main import make_controller

    if not args.model:
        say("--api-server needs a model: --model PATH (a GGUF file, the first part of a split model).")
        return EXIT_REFUSED
    model = Path(args.model).expanduser()
    if not model.is_file():
        say(f"There is no model file at {model}.")
        return EXIT_REFUSED
    host = (args.host or "127.0.0.1").strip()
    if not is_loopback(host) and not args.allow_other_computers:
        say(f"Refusing to listen on {host}. {EXPOSED_WARNING} Add {ALLOW_FLAG} if you mean it.")
        return EXIT_REFUSED
    paths = AppPaths.default(args.data_dir).ensure()
    setup_logging(paths)
    set_default_cache(paths.speeds_file)
    try:
        key, made = api_key(args, paths)
    except ValueError as exc:
        say(str(exc))
        return EXIT_REFUSED
    settings = load_settings(paths)
    port = args.port if args.port is not None else settings.api_port
    settings = settings.replace(
        api_server=False,  # turned on below, once the failure to bind can be reported
        api_host=host,
        api_port=port,
        n_threads=args.threads or settings.n_threads,
        n_ctx=args.n_ctx or settings.n_ctx,
        tools_enabled=(),  # API requests use no tools
    )
    if not is_loopback(host):
        say(f"Warning: {EXPOSED_WARNING}")
    app = QCoreApplication.instance() or QCoreApplication(sys.argv[:1])
    try:
        store = Store(paths.database)
    except StorageError as exc:
        say(str(exc))
        return EXIT_FAILED
    controller = make_controller(store, paths, settings, save_settings=False)
    session = _Session(app, controller, key if made else "", args.api_key_env or "")
    previous = {s: signal.signal(s, session.on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        controller.api.use_token(key)
        controller.update_settings(settings.replace(api_server=True))  # not saved: save_settings=False
        if controller.api.address:
            log.info("headless API server: loading %s", model)
            controller.models.load_model(str(model))
            app.exec()
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        controller.shutdown()  # closes the port, ends answers in flight, stops the engine process
        store.close()
    if session.stop_signal:
        say("Scout Chat API server stopped.")
        return 0
    return session.code
