"""LlamaWorker: synchronous tests with a FakeEngine, plus real-thread tests (fake and real llama.cpp)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from PySide6.QtCore import QObject, QThread, Signal, Slot

from app.core.engine import LlamaEngine
from app.core.images import ImageError
from app.core.store import StorageError
from app.core.types import ChatMessage, GenerationStats, LoadParams, SamplingParams
from app.workers.inference import MAX_UI_UPDATES_PER_SECOND, LlamaWorker
from tests.fakes import FakeEngine, turn_request

if TYPE_CHECKING:
    from collections.abc import Iterator


def test_streams_then_finishes_synchronously(qtbot) -> None:
    worker = LlamaWorker(lambda: FakeEngine(["Hel", "lo"]))
    worker.load_model(LoadParams(Path("fake.gguf")))
    texts: list[str] = []
    worker.tokens_generated.connect(lambda _g, t: texts.append(t))
    with qtbot.waitSignal(worker.generation_finished) as blocker:
        worker.answer(3, turn_request([ChatMessage.user("hi")], max_tokens=64), SamplingParams())
    gen_id, stats = blocker.args
    assert gen_id == 3
    assert isinstance(stats, GenerationStats)
    assert "".join(texts) == "Hello"


def test_failure_is_a_signal_not_an_exception(qtbot, caplog) -> None:
    worker = LlamaWorker(lambda: FakeEngine(["a", "b"], fail_at=1))
    worker.load_model(LoadParams(Path("fake.gguf")))
    with caplog.at_level(logging.CRITICAL), qtbot.waitSignal(worker.generation_failed) as blocker:
        worker.answer(3, turn_request([ChatMessage.user("hi")], max_tokens=64), SamplingParams())
    assert blocker.args[0] == 3
    assert "boom" in blocker.args[1]


class _RaisingEngine(FakeEngine):
    def __init__(self, exc: Exception) -> None:
        super().__init__()
        self.exc = exc

    def stream_chat(self, *_args: object, **_kwargs: object) -> Iterator[str]:
        raise self.exc


class _ThirdPartyError(Exception):
    def __init__(self) -> None:
        super().__init__("socket closed")
        self.message = "this attribute is not written for the user"


@pytest.mark.parametrize(
    ("exc", "message", "detail"),
    [
        (
            ImageError("“cat.png” is not a picture.", "cannot identify"),
            "“cat.png” is not a picture.",
            "cannot identify",
        ),
        (
            StorageError("The chat database is locked."),
            "The chat database is locked.",
            "StorageError: The chat database is locked.",
        ),
        (_ThirdPartyError(), "Something went wrong: socket closed", "_ThirdPartyError: socket closed"),
    ],
)
def test_only_user_errors_reach_the_user_as_written(
    qtbot, caplog, exc: Exception, message: str, detail: str
) -> None:
    worker = LlamaWorker(lambda: _RaisingEngine(exc))
    worker.load_model(LoadParams(Path("fake.gguf")))
    with caplog.at_level(logging.CRITICAL), qtbot.waitSignal(worker.generation_failed) as blocker:
        worker.answer(3, turn_request([ChatMessage.user("hi")], max_tokens=64), SamplingParams())
    assert blocker.args == [3, message, detail]


def test_generate_without_model_fails_cleanly(qtbot) -> None:
    worker = LlamaWorker(FakeEngine)
    with qtbot.waitSignal(worker.generation_failed) as blocker:
        worker.answer(1, turn_request([ChatMessage.user("hi")], max_tokens=64), SamplingParams())
    assert "No model is loaded" in blocker.args[1]


def test_load_failure_and_cancel(qtbot, caplog) -> None:
    worker = LlamaWorker(lambda: FakeEngine(load_error="That file is broken."))
    with caplog.at_level(logging.CRITICAL), qtbot.waitSignal(worker.load_failed) as blocker:
        worker.load_model(LoadParams(Path("fake.gguf")))
    assert blocker.args == ["That file is broken.", "fake detail"]

    worker = LlamaWorker(FakeEngine)
    worker.load_progress.connect(lambda f: f >= 0.3 and worker.load_cancel_event.set())
    with caplog.at_level(logging.CRITICAL), qtbot.waitSignal(worker.load_failed) as blocker:
        worker.load_model(LoadParams(Path("fake.gguf")))
    assert blocker.args[0] == "Loading was cancelled."


def test_token_signals_are_throttled(qtbot) -> None:
    pieces = ["x"] * 400
    worker = LlamaWorker(lambda: FakeEngine(pieces, delay=0.001))
    worker.load_model(LoadParams(Path("fake.gguf")))
    emissions: list[str] = []
    worker.tokens_generated.connect(lambda _g, t: emissions.append(t))
    import time

    started = time.monotonic()
    with qtbot.waitSignal(worker.generation_finished, timeout=10_000):
        worker.answer(
            1, turn_request([ChatMessage.user("hi")], max_tokens=64), SamplingParams(max_tokens=1000)
        )
    elapsed = time.monotonic() - started
    assert "".join(emissions) == "x" * 400  # nothing lost
    assert len(emissions) <= elapsed * MAX_UI_UPDATES_PER_SECOND + 2


def test_history_is_trimmed_to_fit(qtbot) -> None:
    engine = FakeEngine(n_ctx=200)
    worker = LlamaWorker(lambda: engine)
    worker.load_model(LoadParams(Path("fake.gguf"), n_ctx=200))
    history = [ChatMessage.system("sys")]
    for i in range(30):
        history += [ChatMessage.user(f"question {i} " * 5), ChatMessage.assistant(f"answer {i} " * 5)]
    history.append(ChatMessage.user("last"))
    with qtbot.waitSignal(worker.turn_built) as built, qtbot.waitSignal(worker.generation_finished):
        worker.answer(1, turn_request(history, max_tokens=50), SamplingParams(max_tokens=50))
    _gen, turn = built.args
    assert turn.dropped > 0
    assert turn.prompt_tokens <= 150
    assert engine.seen[-1][-1].content == "last"


class Requester(QObject):
    """GUI-thread side: sends commands, and re-emits the worker's results on the GUI thread.

    Cross-thread signals go to @Slot methods of a GUI-thread QObject (queued), never to bare
    callables, which would run in the worker's thread.
    """

    load_requested = Signal(object)
    generate_requested = Signal(int, object, object)
    loaded = Signal(object)
    progressed = Signal(float)
    tokens = Signal(int, str)
    finished = Signal(int, object)

    def __init__(self, worker: LlamaWorker) -> None:
        super().__init__()
        self.load_requested.connect(worker.load_model)
        self.generate_requested.connect(worker.answer)
        worker.model_loaded.connect(self._on_worker_model_loaded)
        worker.load_progress.connect(self._on_worker_load_progress)
        worker.tokens_generated.connect(self._on_worker_tokens_generated)
        worker.generation_finished.connect(self._on_worker_generation_finished)

    @Slot(object)
    def _on_worker_model_loaded(self, info: object) -> None:
        self.loaded.emit(info)

    @Slot(float)
    def _on_worker_load_progress(self, fraction: float) -> None:
        self.progressed.emit(fraction)

    @Slot(int, str)
    def _on_worker_tokens_generated(self, gen_id: int, text: str) -> None:
        self.tokens.emit(gen_id, text)

    @Slot(int, object)
    def _on_worker_generation_finished(self, gen_id: int, stats: object) -> None:
        self.finished.emit(gen_id, stats)


@pytest.fixture
def start_worker(qtbot):
    started: list[tuple[QThread, LlamaWorker]] = []

    def start(engine_factory):
        thread = QThread()
        worker = LlamaWorker(engine_factory)
        worker.moveToThread(thread)
        requester = Requester(worker)
        thread.start()
        started.append((thread, worker))
        return worker, requester

    yield start
    for thread, worker in started:
        worker.cancel_event.set()
        thread.quit()
        assert thread.wait(10_000)
        if worker._engine is not None:
            worker._engine.unload()


def test_streams_in_order_across_threads(qtbot, start_worker) -> None:
    _worker, requester = start_worker(lambda: FakeEngine(["Hel", "lo"]))
    with qtbot.waitSignal(requester.loaded):
        requester.load_requested.emit(LoadParams(Path("fake.gguf")))
    # the first piece goes out at once (TTFT), the rest is batched: "Hel", then "lo", then finished
    signals = [requester.tokens, requester.tokens, requester.finished]
    with qtbot.waitSignals(signals, order="strict", timeout=5000):
        requester.generate_requested.emit(
            7, turn_request([ChatMessage.user("hi")], max_tokens=64), SamplingParams()
        )


def test_real_llama_cpp_in_the_worker_thread(qtbot, start_worker, tiny_model: Path) -> None:
    _worker, requester = start_worker(LlamaEngine)
    progress: list[float] = []
    requester.progressed.connect(progress.append)
    with qtbot.waitSignal(requester.loaded, timeout=30_000) as loaded:
        requester.load_requested.emit(LoadParams(tiny_model, n_ctx=512))
    assert loaded.args[0].architecture == "llama4"
    assert progress
    assert progress[-1] == pytest.approx(1.0)
    text: list[str] = []
    requester.tokens.connect(lambda _g, t: text.append(t))
    with qtbot.waitSignal(requester.finished, timeout=30_000) as finished:
        requester.generate_requested.emit(
            1, turn_request([ChatMessage.user("Hello")], max_tokens=64), SamplingParams(max_tokens=32)
        )
    assert "".join(text).strip()
    assert finished.args[1].completion_tokens == 32


class OomUntilSmall(FakeEngine):
    """Fails like llama.cpp does when a buffer cannot be allocated, until the context is small."""

    def __init__(self, max_ok_ctx: int) -> None:
        super().__init__()
        self.max_ok_ctx = max_ok_ctx
        self.attempts: list[int] = []

    def load(self, params, progress=None):
        from app.core.engine import OutOfMemoryError

        self.attempts.append(params.n_ctx)
        if params.n_ctx > self.max_ok_ctx:
            raise OutOfMemoryError("Not enough memory to load the model.", "failed to allocate CPU buffer")
        return super().load(params, progress)


def test_planned_load_retries_with_a_safer_plan_after_out_of_memory(qtbot, tiny_model: Path) -> None:
    from app.core.hardware import SimulatedHardware
    from app.core.planner import LoadRequest, PlanOverrides, plan_load

    hardware = SimulatedHardware.cpu_only(ram_gb=32).probe()
    engine = OomUntilSmall(max_ok_ctx=8192)
    worker = LlamaWorker(lambda: engine, lambda request: plan_load(request, hardware))
    plans: list[object] = []
    notices: list[str] = []
    worker.plan_ready.connect(plans.append)
    worker.load_notice.connect(notices.append)
    with qtbot.waitSignal(worker.model_loaded, timeout=10_000):
        worker.load_model(LoadRequest(tiny_model, PlanOverrides(n_ctx_target=32768)))
    assert engine.attempts == [32768, 16384, 8192]
    assert len(plans) == 3
    assert plans[0].n_ctx == 32768
    assert "context reduced from 32k to 16k; context reduced from 16k to 8k" in notices[-1]


def test_planned_load_gives_up_with_the_memory_message(qtbot, tiny_model: Path, caplog) -> None:
    from app.core.hardware import SimulatedHardware
    from app.core.planner import LoadRequest, plan_load

    hardware = SimulatedHardware.cpu_only(ram_gb=32).probe()
    engine = OomUntilSmall(max_ok_ctx=0)
    worker = LlamaWorker(lambda: engine, lambda request: plan_load(request, hardware))
    with caplog.at_level(logging.CRITICAL), qtbot.waitSignal(worker.load_failed, timeout=10_000) as failed:
        worker.load_model(LoadRequest(tiny_model))
    assert failed.args[0].startswith("Not enough memory")
    assert engine.attempts[-1] == 4096  # shrank to the floor before giving up


def test_planned_load_of_a_real_model_with_the_dry_run(qtbot, tiny_model: Path) -> None:
    """The real chain: header → free memory → llama.cpp dry run → plan → load."""
    from app.core.engine.probe import measure_buffers
    from app.core.hardware import SystemHardware
    from app.core.planner import LoadRequest, PlanOverrides, plan_load

    hardware = SystemHardware().probe()
    worker = LlamaWorker(LlamaEngine, lambda request: plan_load(request, hardware, measure_buffers))
    plans: list[object] = []
    worker.plan_ready.connect(plans.append)
    with qtbot.waitSignal(worker.model_loaded, timeout=30_000) as loaded:
        worker.load_model(LoadRequest(tiny_model, PlanOverrides(n_ctx_target=4096)))
    try:
        plan = plans[-1]
        assert plan.fits
        assert plan.compute_source == "measured"
        assert loaded.args[0].n_ctx == plan.n_ctx == 4096
        assert "CPU" in plan.verdict or "GPU" in plan.verdict
    finally:
        worker.engine.unload()


def test_session_state_saved_and_restored_by_conversation(qtbot, tiny_model: Path, tmp_path: Path) -> None:
    first = LlamaWorker(LlamaEngine)
    second = LlamaWorker(LlamaEngine)
    try:
        first.load_model(LoadParams(tiny_model, n_ctx=1024))
        with qtbot.waitSignal(first.generation_finished, timeout=30_000):
            first.answer(
                1,
                turn_request([ChatMessage.user("Remember this conversation.")], max_tokens=64),
                SamplingParams(max_tokens=8),
            )
        with qtbot.waitSignal(first.session_saved) as saved:
            first.save_session(42, str(tmp_path))
        assert saved.args[0] == 42
        assert saved.args[1] > 0
        files = list(tmp_path.glob("conversation-42-*.llamastate"))
        assert len(files) == 1

        second.load_model(LoadParams(tiny_model, n_ctx=1024))
        with qtbot.waitSignal(second.session_restored) as restored:
            second.restore_session(42, str(tmp_path))
        assert restored.args == [42, saved.args[1]]

        second.load_model(LoadParams(tiny_model, n_ctx=2048))  # another plan: the state does not apply
        with qtbot.waitSignal(second.session_restored) as none:
            second.restore_session(42, str(tmp_path))
        assert none.args == [42, 0]

        # saving under the new plan replaces conversation 42's stale state, and only that one
        decoys = [tmp_path / f"conversation-{n}-0123abcd.llamastate" for n in (4, 420)]
        for decoy in decoys:
            decoy.write_bytes(b"another conversation")
        with qtbot.waitSignal(second.generation_finished, timeout=30_000):
            second.answer(
                2,
                turn_request([ChatMessage.user("Remember this one.")], max_tokens=64),
                SamplingParams(max_tokens=8),
            )
        with qtbot.waitSignal(second.session_saved):
            second.save_session(42, str(tmp_path))
        fresh = list(tmp_path.glob("conversation-42-*.llamastate"))
        assert len(fresh) == 1
        assert fresh != files
        assert all(decoy.exists() for decoy in decoys)
    finally:
        first.engine.unload()
        second.engine.unload()
