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
    from app.ui.main_window import MainWindow


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
def show_window(qtbot):
    """Show a MainWindow on ``controller`` (resized to ``size`` first when given)."""

    def show(controller: AppController, size: tuple[int, int] | None = None) -> MainWindow:
        from app.ui.main_window import MainWindow

        window = MainWindow(controller)
        qtbot.addWidget(window)
        if size is not None:
            window.resize(*size)
        window.show()
        return window

    return show


@pytest.fixture
def fake_window(make_controller, load_fake_model, show_window):
    """A shown MainWindow on a real AppController around the FakeEngine ``engine``, its model loaded."""

    def make(engine: FakeEngine, size: tuple[int, int] | None = None) -> MainWindow:
        controller = make_controller(engine)
        load_fake_model(controller)
        return show_window(controller, size)

    return make


@pytest.fixture
def llama_controller(qtbot, make_controller, tiny_model: Path):
    """A real AppController on the real llama.cpp (a LlamaEngine) with the tiny model loaded; returns
    ``(controller, engine)``. ``planned``: the plan is made for a simulated 32 GB CPU-only machine
    and the context is 1,024 tokens (else the app's own planner and the settings' context)."""
    from app.core.engine import LlamaEngine
    from app.core.hardware import SimulatedHardware
    from app.core.planner import PlanOverrides, plan_load

    def make(settings: Settings, *, planned: bool = True) -> tuple[AppController, LlamaEngine]:
        engine = LlamaEngine()
        if planned:
            hardware = SimulatedHardware.cpu_only(ram_gb=32).probe()
            controller = make_controller(
                engine, settings, planner=lambda request: plan_load(request, hardware)
            )
        else:
            controller = make_controller(engine, settings)
        with qtbot.waitSignal(controller.models.model_loaded, timeout=60_000):
            controller.models.load_model(str(tiny_model), PlanOverrides(n_ctx=1024) if planned else None)
        return controller, engine

    return make


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
