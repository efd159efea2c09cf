"""What the app does about model files that stop the engine, on the real engine process (EngineProxy,
real llama.cpp, tiny generated models), the real controllers and, where the user sees it, the
real window:

* a file never loaded before is tried in a throw-away engine process first: one that aborts
  llama.cpp there is a message, and the engine serving the chat (its process, its model) is
  untouched; a file loaded once is not tried again;
* loads that stopped the engine are counted per file; a model whose load stopped it twice is
  not loaded at the next start — the window asks; a successful load resets the count;
* an engine that looks like it died of memory (its log tail, a SIGKILL we did not send) is
  offered back "with less on the GPU".
"""

from __future__ import annotations

import os
import signal
from typing import TYPE_CHECKING

import pytest
from PySide6.QtCore import Qt

from app.config import Settings, load_settings
from app.core.engine.process import EngineProxy
from app.core.hardware import SimulatedHardware
from app.core.planner import plan_load
from app.core.tiny_model import TinyModelSpec, write_tiny_model
from app.workers.models import LOAD_DEATHS_KEY, file_key

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from app.config import AppPaths

SETTINGS = Settings(n_ctx=1024, n_threads=1, max_tokens=8)


@pytest.fixture
def proxy(app_paths: AppPaths) -> Iterator[EngineProxy]:
    made = EngineProxy(log_path=app_paths.log_dir / "engine.log")
    try:
        yield made
    finally:
        made.close()


@pytest.fixture(scope="module")
def aborts_while_loading(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A llama4 file whose header reads well but whose load aborts llama.cpp (more experts used per
    token than it has: ``GGML_ASSERT(n_expert_used_max <= hparams.n_expert)`` in the dry run)."""
    path = tmp_path_factory.mktemp("hostile") / "tiny-llama4-too-many-experts-used.gguf"
    return write_tiny_model(path, TinyModelSpec(n_expert_used=8))[0]


def load(qtbot, controller, path: Path, **kwargs: object) -> None:  # type: ignore[no-untyped-def]
    with qtbot.waitSignal(controller.models.model_loaded, timeout=60_000):
        controller.models.load_model(str(path), **kwargs)


def test_an_unknown_file_that_aborts_llama_cpp_is_tried_apart_and_the_chat_engine_stays(
    qtbot, make_controller, proxy: EngineProxy, tiny_model: Path, aborts_while_loading: Path
) -> None:
    controller = make_controller(proxy, SETTINGS)  # type: ignore[arg-type]
    worker = controller._inference.worker
    tried: list[tuple[str, float]] = []
    worker.file_tried.connect(lambda path, seconds: tried.append((path, seconds)))
    load(qtbot, controller, tiny_model)
    qtbot.waitUntil(lambda: len(tried) == 1, timeout=10_000)
    assert tried[0][0] == str(tiny_model)
    assert controller.models.known_good(str(tiny_model))
    with qtbot.waitSignal(controller.conversations.generation_finished, timeout=60_000) as first:
        controller.conversations.send("A first question.")
    engine_pid = proxy.pid

    with qtbot.waitSignal(controller.models.model_load_failed, timeout=60_000) as failed:
        controller.models.load_model(str(aborts_while_loading))
    message, detail = failed.args
    assert message.startswith(f"{aborts_while_loading.name} stopped the engine process that tried it")
    assert message.endswith("is still loaded.")
    assert "SIGABRT" in detail
    assert "GGML_ASSERT(n_expert_used_max <= hparams.n_expert)" in detail  # llama.cpp's own words
    assert proxy.pid == engine_pid  # the engine serving the chat was never touched
    assert controller.models.model_info is not None
    assert controller.models.model_info.path == tiny_model
    assert not controller.models.known_good(str(aborts_while_loading))
    assert controller.models.engine_deaths_while_loading(str(aborts_while_loading)) == 1

    with qtbot.waitSignal(controller.conversations.generation_finished, timeout=60_000) as again:
        controller.conversations.send("And now?")  # the loaded model answers on, in the same engine
    assert controller.store.get_message(first.args[0]).status == "complete"
    assert controller.store.get_message(again.args[0]).status == "complete"
    load(qtbot, controller, tiny_model)  # known good now: loaded without a trial
    assert len(tried) == 1


def test_a_model_whose_load_stopped_the_engine_twice_is_not_loaded_at_start_but_asked_for(
    qtbot, make_controller, proxy: EngineProxy, app_paths: AppPaths, aborts_while_loading: Path
) -> None:
    from app.ui.main_window import MainWindow

    controller = make_controller(proxy, SETTINGS)  # type: ignore[arg-type]
    for _ in range(2):
        with qtbot.waitSignal(controller.models.model_load_failed, timeout=60_000):
            controller.models.load_model(str(aborts_while_loading))
    assert controller.models.engine_deaths_while_loading(str(aborts_while_loading)) == 2
    saved = load_settings(app_paths)  # persisted: the next start reads it
    assert saved.extra[LOAD_DEATHS_KEY] == {file_key(aborts_while_loading): 2}

    restarted = make_controller(proxy, saved.replace(last_model=str(aborts_while_loading)))  # type: ignore[arg-type]
    window = MainWindow(restarted)
    qtbot.addWidget(window)
    window.show()
    started: list[str] = []
    restarted.models.model_load_started.connect(started.append)
    with qtbot.waitSignal(restarted.models.load_confirmation_needed, timeout=5_000):
        restarted.restore_session()
    assert started == []  # not loaded unasked
    banner = window.error_banner
    assert banner.isVisible()
    assert banner.text() == (
        f"Scout Chat closed the engine twice while loading {aborts_while_loading.name}. Load it anyway?"
    )
    assert banner.action_button.text() == "Load anyway"
    with qtbot.waitSignal(restarted.models.model_load_failed, timeout=60_000) as failed:
        qtbot.mouseClick(banner.action_button, Qt.MouseButton.LeftButton)  # the user insists
    assert started == [str(aborts_while_loading)]
    assert "stopped the engine process that tried it" in failed.args[0]
    assert restarted.models.engine_deaths_while_loading(str(aborts_while_loading)) == 3


def test_a_load_that_stopped_the_engine_counts_and_a_good_load_resets_the_count(
    qtbot, make_controller, proxy: EngineProxy, tiny_model: Path, tmp_path: Path
) -> None:
    model = write_tiny_model(tmp_path / "fresh-tiny.gguf")[0]  # never loaded: tried first
    controller = make_controller(proxy, SETTINGS)  # type: ignore[arg-type]
    worker = controller._inference.worker
    killed: list[int] = []

    def kill_the_engine(_fraction: float) -> None:  # on the inference thread, during the real load
        if not killed and proxy.pid is not None:
            killed.append(proxy.pid)
            os.kill(proxy.pid, signal.SIGKILL)

    worker.load_progress.connect(kill_the_engine, Qt.ConnectionType.DirectConnection)
    with qtbot.waitSignal(controller.models.model_load_failed, timeout=60_000) as failed:
        controller.models.load_model(str(model))
    worker.load_progress.disconnect(kill_the_engine)
    assert killed
    assert "while loading fresh-tiny.gguf" in failed.args[0]
    assert controller.models.engine_deaths_while_loading(str(model)) == 1
    assert not controller.models.known_good(str(model))
    assert not controller.models.ask_before_loading(str(model))  # once is not enough to ask

    load(qtbot, controller, model)
    assert controller.models.engine_deaths_while_loading(str(model)) == 0
    assert controller.models.known_good(str(model))
    assert file_key(model) not in load_settings(controller.paths).extra[LOAD_DEATHS_KEY]


def _planner(proxy: EngineProxy):  # type: ignore[no-untyped-def]
    """The planner on a simulated 24 GB GPU, with llama.cpp's dry run in the engine process."""
    hardware = SimulatedHardware.nvidia(24, 64).probe()
    return lambda request: plan_load(request, hardware, proxy.measure_buffers)


@pytest.mark.parametrize(
    ("tail", "sig", "offered"),
    [
        ("ggml_backend_cuda_buffer_type_alloc_buffer: allocating 812.00 MiB on device 0: "
         "cudaMalloc failed: out of memory", signal.SIGABRT, True),
        ("", signal.SIGKILL, True),  # not our kill: the kernel's OOM killer
        ("GGML_ASSERT(n_tokens_all <= cparams.n_batch) failed", signal.SIGABRT, False),
    ],
    ids=["cuda-oom-in-log", "sigkill", "other-abort"],
)  # fmt: skip
def test_an_engine_that_died_of_memory_is_offered_back_with_less_on_the_gpu(
    qtbot,
    make_controller,
    proxy: EngineProxy,
    tiny_model: Path,
    tail: str,
    sig: signal.Signals,
    offered: bool,
) -> None:
    from app.ui.main_window import MainWindow

    controller = make_controller(
        proxy, Settings(n_ctx=8192, n_threads=1, max_tokens=100_000), planner=_planner(proxy)
    )  # type: ignore[arg-type]
    window = MainWindow(controller)
    qtbot.addWidget(window)
    window.show()
    load(qtbot, controller, tiny_model)
    plan = controller.models.plan
    assert plan is not None
    assert plan.n_gpu_layers > 0  # the simulated GPU holds the tiny model
    with qtbot.waitSignal(controller.conversations.tokens_streamed, timeout=60_000):
        controller.conversations.send("Tell me a very long story.")
    pid = proxy.pid
    assert pid is not None
    with qtbot.waitSignal(controller.conversations.generation_failed, timeout=60_000) as failed:
        if tail:  # what llama.cpp writes before GGML_ABORT on a failed GPU allocation
            with (controller.paths.log_dir / "engine.log").open("a", encoding="utf-8") as log:
                log.write(tail + "\n")
        os.kill(pid, sig)
    assert controller.store.get_message(failed.args[0]).status == "interrupted"
    banner = window.error_banner
    assert banner.action_button.text() == "Reload model"
    assert banner.second_button.isVisible() is offered
    if not offered:
        return
    assert banner.second_button.text() == "Reload with less on the GPU"
    with qtbot.waitSignal(controller.models.model_loaded, timeout=60_000):
        qtbot.mouseClick(banner.second_button, Qt.MouseButton.LeftButton)
    overrides = controller.models.overrides
    assert overrides is not None
    assert overrides.n_cpu_moe == plan.n_layer  # the experts stay in system RAM now
    assert controller.models.plan is not None
    assert controller.models.plan.n_cpu_moe > plan.n_cpu_moe
    assert window.model_label.text() == controller.models.model_info.name
