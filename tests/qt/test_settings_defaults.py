"""Settings carry a version and the defaults they were written with: a default an upgrade changed
is announced once in the window (naming the setting, old and new value) when the user had left it
alone, and a value the user set is never changed. Through the real entry point (build_application)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from app.config import (
    DEFAULT_SYSTEM_PROMPT,
    DEFAULTS_KEY,
    SETTINGS_SCHEMA_VERSION,
    AppPaths,
    Settings,
    apply_default_changes,
    current_defaults,
    read_settings,
)

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.qt_log_ignore("This plugin does not support propagateSizeHints")

# a settings file as the first release wrote it: no version, context 8,192 (its default then)
FIRST_RELEASE_FILE = {
    "system_prompt": DEFAULT_SYSTEM_PROMPT,
    "temperature": 0.6,
    "top_p": 0.9,
    "min_p": 0.01,
    "max_tokens": 2048,
    "n_ctx": 8192,
    "n_threads": 0,
    "theme": "dark",
}


def _write(tmp_path: Path, data: dict[str, object]) -> AppPaths:
    paths = AppPaths.under(tmp_path).ensure()
    paths.settings_file.write_text(json.dumps(data), encoding="utf-8")
    return paths


def test_an_old_file_is_migrated_and_the_changed_default_announced_once(tmp_path, start_app) -> None:
    paths = _write(tmp_path, FIRST_RELEASE_FILE)
    first = start_app(tmp_path)
    banner = first.window.info_banner
    assert banner.isVisible()
    assert "Context size is now automatic" in banner.text()
    assert "it was 8,192" in banner.text()
    assert first.controller.settings.n_ctx == 0  # the user never chose 8,192: the new default
    assert first.controller.settings.theme == "dark"  # what the user set stays
    saved = json.loads(paths.settings_file.read_text(encoding="utf-8"))
    assert saved["schema_version"] == SETTINGS_SCHEMA_VERSION == 2
    assert saved[DEFAULTS_KEY] == current_defaults()
    first.controller.shutdown()

    second = start_app(tmp_path)  # the next start: nothing to announce
    assert not second.window.info_banner.isVisible()
    assert second.window.info_banner.text() == ""
    assert second.controller.settings.n_ctx == 0


def test_a_value_the_user_set_is_kept_and_not_announced(tmp_path, start_app) -> None:
    _write(tmp_path, {**FIRST_RELEASE_FILE, "n_ctx": 4096})
    application = start_app(tmp_path)
    assert application.controller.settings.n_ctx == 4096
    assert not application.window.info_banner.isVisible()


def test_a_version_1_file_keeps_every_value() -> None:
    # version 1 recorded no defaults: a context of 8,192 may be the user's choice; it is kept
    settings, changes = Settings.read({**FIRST_RELEASE_FILE, "schema_version": 1})
    assert (settings.n_ctx, changes) == (8192, ())


def test_any_changed_default_is_announced_for_untouched_values_only() -> None:
    # a file written by a version whose defaults were 0.7 / 1024: one value kept, one set
    written = {
        **Settings().replace(temperature=0.7).__dict__,
        "max_tokens": 4000,
        "schema_version": 2,
        DEFAULTS_KEY: {**current_defaults(), "temperature": 0.7, "max_tokens": 1024},
    }
    data, changes = apply_default_changes(written)
    assert [(c.label, c.old, c.new) for c in changes] == [("Temperature", 0.7, 0.6)]
    assert changes[0].sentence() == "Temperature is now 0.6 (the new default; it was 0.7, the old default)."
    assert (data["temperature"], data["max_tokens"]) == (0.6, 4000)
    again, none = apply_default_changes(data)  # once migrated, nothing more to announce
    assert none == ()
    assert again["temperature"] == 0.6


def test_reading_and_saving_without_changes(tmp_path) -> None:
    paths = AppPaths.under(tmp_path).ensure()
    assert read_settings(paths) == (Settings(), ())
    paths.settings_file.write_text(Settings(temperature=0.3).to_json(), encoding="utf-8")
    assert read_settings(paths) == (Settings(temperature=0.3), ())
