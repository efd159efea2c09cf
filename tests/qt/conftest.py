"""Fixtures shared by the Qt tests."""

from __future__ import annotations

import pytest

from app.config import AppPaths, Settings
from app.core.store import Store
from app.workers.controller import AppController
from tests.fakes import FakeEngine


@pytest.fixture
def make_controller(app_paths: AppPaths):
    """Build real AppControllers (real Store, worker and ingest threads) around a FakeEngine;
    shut them down and close their stores afterwards."""
    made: list[tuple[AppController, Store]] = []

    def make(engine: FakeEngine | None = None, settings: Settings | None = None) -> AppController:
        store = Store(app_paths.database)
        fake = engine or FakeEngine()
        controller = AppController(store, app_paths, settings or Settings(), lambda: fake)
        made.append((controller, store))
        return controller

    yield make
    for controller, store in made:
        controller.shutdown()
        store.close()
