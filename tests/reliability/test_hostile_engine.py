"""Model files that make llama.cpp abort or refuse, through the real window (offscreen) with the
real engine process, the real planner (llama.cpp's dry run in the engine process) and real
llama.cpp: for each, the window shows a message, the conversation before it is intact, and the
next good load answers."""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING

import pytest

from app.config import Settings
from app.core.engine.process import EngineProxy
from app.core.hardware import SimulatedHardware
from app.core.planner import plan_load
from tests.reliability import corpus

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from app.config import AppPaths

pytestmark = pytest.mark.qt_log_ignore("This plugin does not support propagateSizeHints")

HARDWARE = SimulatedHardware.cpu_only(32)
# what the window says for each file: the signal that carries it, and words of the banner
EXPECTED = {
    "no-attention-temperature": ("answer", "The model engine stopped unexpectedly while answering"),
    "too-many-experts-used": ("load", "stopped the engine process that tried it"),
    "tensor-data-past-eof": ("load", "is damaged"),
    "mismatched-projector": ("notice", "does not match llama4-with-a-foreign-projector.gguf"),
}
DETAIL = {
    "no-attention-temperature": "GGML_ASSERT(f_attn_temp_scale != 0.0f)",
    "too-many-experts-used": "GGML_ASSERT(n_expert_used_max <= hparams.n_expert)",
}


@pytest.fixture(scope="module")
def engine_corpus(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("engine corpus")
    good = folder / "good" / "tiny-llama4.gguf"  # alone in its folder: no projector beside it
    good.parent.mkdir()
    shutil.copyfile(tiny_model, good)
    return {"good": good, **corpus.write_engine_corpus(folder / "hostile", good)}


@pytest.fixture
def proxy(app_paths: AppPaths) -> Iterator[EngineProxy]:
    made = EngineProxy(log_path=app_paths.log_dir / "engine.log")
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def make_controller(app_paths: AppPaths) -> Iterator[object]:
    """Real AppControllers (real Store, worker threads) on the given engine; shut down afterwards."""
    from app.core.store import Store
    from app.workers.controller import AppController

    made: list[tuple[AppController, Store]] = []

    def make(engine: EngineProxy, settings: Settings, *, planner: object) -> AppController:
        store = Store(app_paths.database)
        controller = AppController(store, app_paths, settings, lambda: engine, planner=planner)  # type: ignore[arg-type]
        made.append((controller, store))
        return controller

    yield make
    for controller, store in made:
        controller.shutdown()
        store.close()


def answer(qtbot, controller, text: str) -> int:  # type: ignore[no-untyped-def]
    with qtbot.waitSignal(controller.conversations.generation_finished, timeout=60_000) as done:
        controller.conversations.send(text)
    message_id: int = done.args[0]
    assert controller.store.get_message(message_id).status == "complete"
    return message_id


@pytest.mark.parametrize("case", list(EXPECTED))
def test_a_hostile_model_file_is_a_message_and_the_chat_and_the_next_load_survive(
    qtbot, make_controller, proxy: EngineProxy, engine_corpus: dict[str, Path], case: str
) -> None:
    from app.ui.main_window import MainWindow

    controller = make_controller(
        proxy,
        Settings(n_ctx=1024, n_threads=1, max_tokens=8),
        planner=lambda request: plan_load(request, HARDWARE.probe(), proxy.measure_buffers),
    )
    window = MainWindow(controller)
    qtbot.addWidget(window)
    window.show()
    good, hostile = engine_corpus["good"], engine_corpus[case]
    with qtbot.waitSignal(controller.models.model_loaded, timeout=60_000):
        controller.models.load_model(str(good))
    first = answer(qtbot, controller, "A first question.")
    conversation = controller.conversations.current_conversation_id
    before = [(m.role, m.content, m.status) for m in controller.conversations.messages()]

    kind, words = EXPECTED[case]
    banner = window.error_banner
    if kind == "load":
        with qtbot.waitSignal(controller.models.model_load_failed, timeout=60_000):
            controller.models.load_model(str(hostile))
        assert banner.text().endswith("Tiny Llama 4 (random weights) is still loaded.")
        assert controller.models.model_info is not None
    elif kind == "notice":
        with qtbot.waitSignal(controller.models.model_loaded, timeout=60_000):
            controller.models.load_model(str(hostile))
        assert not controller.models.model_info.has_vision  # loaded for text only
    else:
        with qtbot.waitSignal(controller.models.model_loaded, timeout=60_000):
            controller.models.load_model(str(hostile))  # llama.cpp loads it; the abort comes later
        with qtbot.waitSignal(controller.conversations.generation_failed, timeout=60_000) as failed:
            controller.conversations.send("And this one?")
        assert controller.store.get_message(failed.args[0]).status == "error"  # aborted before a word
        assert window.model_label.text() == "No model"
        assert banner.action_button.text() == "Reload model"
    assert banner.isVisible()
    assert words in banner.text()
    if case in DETAIL:
        assert DETAIL[case] in banner.label.toolTip()  # llama.cpp's own words under Details
    assert controller.conversations.current_conversation_id == conversation
    assert [(m.role, m.content, m.status) for m in controller.conversations.messages()][
        : len(before)
    ] == before
    assert window.chat_view.message_widget(first) is not None

    with qtbot.waitSignal(controller.models.model_loaded, timeout=60_000):
        controller.models.load_model(str(good))
    answer(qtbot, controller, "Once more.")
    assert window.model_label.text() == controller.models.model_info.name
