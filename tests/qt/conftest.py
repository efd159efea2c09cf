"""Fixtures shared by the Qt tests."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from app.config import AppPaths, Settings
from app.core.store import Store
from app.workers.controller import AppController
from tests.fakes import FakeEngine

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from PySide6.QtWidgets import QApplication

    from app.core.planner import LoadRequest, PlannedLoad, PlanOverrides
    from app.core.types import ModelInfo


@pytest.fixture
def make_controller(app_paths: AppPaths):
    """Build real AppControllers (real Store, worker and ingest threads) around a FakeEngine;
    shut them down and close their stores afterwards."""
    made: list[tuple[AppController, Store]] = []

    def make(
        engine: FakeEngine | None = None,
        settings: Settings | None = None,
        *,
        planner: Callable[[LoadRequest], PlannedLoad] | None = None,
    ) -> AppController:
        store = Store(app_paths.database)
        fake = engine or FakeEngine()
        controller = AppController(store, app_paths, settings or Settings(), lambda: fake, planner=planner)
        made.append((controller, store))
        return controller

    yield make
    for controller, store in made:
        controller.shutdown()
        store.close()


@pytest.fixture
def load_fake_model(qtbot):
    """Load a model through ``controller.models`` (a FakeEngine takes any path) and wait until it
    is loaded; returns its ModelInfo."""

    def load(
        controller: AppController, path: str | Path = "fake.gguf", overrides: PlanOverrides | None = None
    ) -> ModelInfo:
        with qtbot.waitSignal(controller.models.model_loaded, timeout=5000) as loaded:
            controller.models.load_model(str(path), overrides)
        return loaded.args[0]

    return load


@pytest.fixture
def themed(qapp: QApplication) -> Iterator[Callable[[str], None]]:
    """Apply a theme ("light", "dark") to the application for a screenshot; the application's
    style, style sheet and palette are restored afterwards, so no later test sees the theme."""
    from PySide6.QtWidgets import QStyleFactory

    from app.ui import theme

    palette, sheet, style = qapp.palette(), qapp.styleSheet(), qapp.style().name()

    def apply(mode: str) -> None:
        theme.apply_theme(qapp, mode)

    yield apply
    restored = QStyleFactory.create(style)
    if restored is not None:
        qapp.setStyle(restored)
    qapp.setStyleSheet(sheet)
    qapp.setPalette(palette)
