"""The user's settings and the app's passing messages, shared by the controllers (GUI thread)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QObject, Signal

from app.config import save_settings

if TYPE_CHECKING:
    from app.config import AppPaths, DefaultChange, Settings

log = logging.getLogger(__name__)


class Preferences(QObject):
    """The current :class:`~app.config.Settings`, saved on every change (unless ``save`` is
    False: the headless API server runs with the command line's choices and never writes them).

    Signals:
        settings_changed(object, object): the old Settings, the new Settings.
    """

    settings_changed = Signal(object, object)

    def __init__(self, paths: AppPaths, settings: Settings, notices: Notices, *, save: bool = True) -> None:
        super().__init__()
        self._save = save
        self._paths = paths
        self._settings = settings
        self._notices = notices
        # defaults an upgrade changed for settings the user had left alone (app/config.py): the
        # window announces them once (announce_default_changes)
        self.default_changes: tuple[DefaultChange, ...] = ()

    @property
    def settings(self) -> Settings:
        return self._settings

    def update(self, settings: Settings) -> None:
        """The user changed settings: save them (saying so when that fails) and announce them."""
        old, self._settings = self._settings, settings
        try:
            if self._save:
                save_settings(self._paths, settings)
        except OSError as exc:
            self._notices.error_occurred.emit(f"Your settings could not be saved: {exc.strerror or exc}")
        self.settings_changed.emit(old, settings)

    def announce_default_changes(self) -> str:
        """The sentence announcing :attr:`default_changes` ("" for none); the settings are saved
        with this version's defaults, so the next start does not announce them again."""
        if not self.default_changes:
            return ""
        changes, self.default_changes = self.default_changes, ()
        try:
            save_settings(self._paths, self._settings)
        except OSError:
            log.exception("could not save settings")
        if len(changes) == 1:
            return f"This version of Scout Chat changed a default you had kept: {changes[0].sentence()}"
        lines = " ".join(change.sentence() for change in changes)
        return f"This version of Scout Chat changed defaults you had kept: {lines}"

    def remember(self, **changes: Any) -> None:
        """Bookkeeping the user did not ask for (last model, last conversation): saved quietly."""
        self._settings = self._settings.replace(**changes)
        if not self._save:
            return
        try:
            save_settings(self._paths, self._settings)
        except OSError:
            log.exception("could not save settings")


class Notices(QObject):
    """Sentences for the user from any controller.

    Signals:
        error_occurred(str): a human message for an error banner.
        info_message(str): a passing note for the status bar.
    """

    error_occurred = Signal(str)
    info_message = Signal(str)
