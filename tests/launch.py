"""Start the whole app the way ``scout-chat --data-dir DIR ...`` does, for the tests that need the real
entry point (the ``start_app`` fixture in tests/conftest.py), and close it cleanly afterwards."""

from __future__ import annotations

from typing import TYPE_CHECKING

from app.config import AppPaths, save_settings

if TYPE_CHECKING:
    from pathlib import Path

    from pytestqt.qtbot import QtBot

    from app.config import Settings
    from app.main import Application


class AppLauncher:
    """``launcher(data_dir, *args, settings=...)`` builds the app through ``build_application`` (with
    ``settings`` saved first when given, else ``first_settings`` when the folder has no settings yet),
    shows its window (unless ``show`` is False; resized to ``size`` when set; ``wait_exposed``: until
    it is exposed) and keeps it in ``running``; ``wait_loaded`` waits for the model it loads at start,
    ``close`` shuts one down cleanly (``close_all``: the rest)."""

    def __init__(self, qtbot: QtBot) -> None:
        self.qtbot = qtbot
        self.size: tuple[int, int] | None = None
        self.wait_exposed = False
        self.show = True
        self.first_settings: Settings | None = None
        self.running: list[Application] = []

    def __call__(self, data_dir: Path, *extra: str, settings: Settings | None = None) -> Application:
        from app.main import build_application, parse_args

        paths = AppPaths.default(str(data_dir))
        if settings is None and not paths.settings_file.exists():
            settings = self.first_settings
        if settings is not None:
            save_settings(paths.ensure(), settings)
        application = build_application(parse_args(["--data-dir", str(data_dir), *extra]))
        self.qtbot.addWidget(application.window)
        if self.size is not None:
            application.window.resize(*self.size)
        if self.show:
            application.window.show()
        if self.wait_exposed:
            self.qtbot.waitExposed(application.window)
        self.running.append(application)
        return application

    def wait_loaded(self, application: Application, timeout_ms: int = 60_000) -> None:
        """Wait until the model the app loads at start is loaded (at once when it is already)."""
        models = application.controller.models
        if models.model_info is None:
            with self.qtbot.waitSignal(models.model_loaded, timeout=timeout_ms):
                pass

    def close(self, application: Application) -> None:
        application.controller.shutdown()
        if application.downloads is not None:
            application.downloads.shutdown()
        application.window.close()
        application.store.close()
        self.running.remove(application)

    def close_all(self) -> None:
        for application in list(self.running):
            self.close(application)
