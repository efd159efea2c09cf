"""``scout-chat --self-test``: load a model headless and stream one answer through the same worker
the window uses (and, when a vision projector sits beside the model, a second turn about a picture)."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import QCoreApplication, QEventLoop, QObject, QThread, QTimer, Signal, Slot

from app.core.store import Attachment, AttachmentState
from app.core.turns import TurnRequest
from app.core.types import LoadParams, SamplingParams

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable

    from app.core.engine.remote import ServerConfig
    from app.core.forecast import LlamaFigures
    from app.core.types import GenerationStats, ModelInfo
    from app.workers.inference import LlamaWorker

SYSTEM_PROMPT = "You are a helpful assistant."


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


class Driver(QObject):
    """GUI-thread side: sends commands to the worker (queued) and receives its results."""

    load_requested = Signal(object)
    answer_requested = Signal(int, object, object)

    def __init__(self, worker: LlamaWorker, loop: QEventLoop, image: Path | None = None) -> None:
        super().__init__()
        self.loop = loop
        self.text = ""
        self.error = ""
        self.info: ModelInfo | None = None
        self.stats: GenerationStats | None = None
        self.image = image  # a stored picture: a second turn asks about it
        self.image_text = ""
        self.image_stats: GenerationStats | None = None
        self.forecast_line = ""  # local models: the forecast next to what was measured
        self.load_requested.connect(worker.load_model)
        self.answer_requested.connect(worker.answer)
        worker.model_loaded.connect(self._on_worker_model_loaded)
        worker.load_failed.connect(self._on_worker_load_failed)
        worker.tokens_generated.connect(self._on_worker_tokens_generated)
        worker.generation_finished.connect(self._on_worker_generation_finished)
        worker.generation_failed.connect(self._on_worker_generation_failed)

    @Slot(object)
    def _on_worker_model_loaded(self, info: ModelInfo) -> None:
        self.info = info
        hello = TurnRequest.for_question("Say hello.", system_prompt=SYSTEM_PROMPT, max_tokens=48)
        self.answer_requested.emit(1, hello, SamplingParams(max_tokens=48))

    @Slot(str, str)
    def _on_worker_load_failed(self, message: str, _detail: str) -> None:
        self.error = message
        self.loop.quit()

    @Slot(int, str)
    def _on_worker_tokens_generated(self, gen: int, text: str) -> None:
        if gen == 2:
            self.image_text += text
        else:
            self.text += text

    @Slot(int, object)
    def _on_worker_generation_finished(self, gen: int, stats: GenerationStats) -> None:
        if gen == 2:
            self.image_stats = stats
        else:
            self.stats = stats
            if self.image is not None:
                picture = Attachment(
                    1,
                    0,
                    1,
                    "image",
                    self.image.name,
                    str(self.image),
                    "",
                    {"state": AttachmentState.READY},
                    0.0,
                )
                question = "What is in this picture?"
                image_turn = TurnRequest.for_question(question, max_tokens=16, attachments=(picture,))
                self.answer_requested.emit(2, image_turn, SamplingParams(max_tokens=16))
                return
        self.loop.quit()

    @Slot(int, str, str)
    def _on_worker_generation_failed(self, _gen: int, message: str, _detail: str) -> None:
        self.error = message
        self.loop.quit()


def run_self_test(args: argparse.Namespace) -> int:
    """Load a model and stream one answer through the same worker the window uses."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    _qapp = QCoreApplication.instance() or QCoreApplication(sys.argv[:1])
    if getattr(args, "server", None):
        return _run_server_self_test(args)
    tmp: tempfile.TemporaryDirectory[str] | None = None
    if args.model:
        model = Path(args.model).expanduser()
        say(f"self-test: model {model}")
    else:
        from app.core.tiny_model import write_tiny_model

        tmp = tempfile.TemporaryDirectory(prefix="scout-selftest-")
        model = write_tiny_model(Path(tmp.name) / "tiny-llama4.gguf")[0]
        say("self-test: no --model given; generated a tiny random-weight llama4 model")
    with tempfile.TemporaryDirectory(prefix="scout-selftest-image-") as images:
        try:
            params, image = _load_params(model, args.n_ctx, Path(images))
        except ValueError as exc:
            say(f"self-test FAILED: {exc}")
            return 2
        driver = _drive(params, image, speeds_file(args))
    if tmp is not None:
        tmp.cleanup()
    return _report(driver, image is not None)


def _run_server_self_test(args: argparse.Namespace) -> int:
    """``--server URL --self-test``: one answer from that server through the remote engine."""
    from app.main import server_config

    try:
        config = server_config(args)
    except ValueError as exc:
        say(f"self-test FAILED: {exc}")
        return 2
    say(f"self-test: server {config.address}{' (with an API key)' if config.api_key else ''}")
    driver = _drive(config, None)
    return _report(driver, False)


def _load_params(model: Path, n_ctx: int | None, images: Path) -> tuple[LoadParams, Path | None]:
    """The load parameters for ``model`` and, when a vision projector sits beside it, a picture."""
    from app.core.gguf_info import find_projector

    projector = find_projector(model)
    if projector is None:
        return LoadParams(model_path=model, n_ctx=n_ctx or 2048), None
    # Image encoding with more threads than cores crawls on small machines: one thread.
    params = LoadParams(
        model_path=model,
        n_ctx=n_ctx or 2048,
        mmproj_path=projector,
        n_threads=1,
        n_threads_batch=1,
    )
    image = _self_test_image(images)
    say(f"self-test: vision projector {projector.name}")
    return params, image


def speeds_file(args: argparse.Namespace) -> Path | None:
    """Where the forecast's probe is cached (the app's data folder); None when it cannot be made."""
    from app.config import AppPaths

    try:
        return AppPaths.default(getattr(args, "data_dir", None)).ensure().speeds_file
    except OSError:
        return None


def _drive(params: LoadParams | ServerConfig, image: Path | None, speeds: Path | None = None) -> Driver:
    """Run the worker on its own thread until the turns are done (or ten minutes have passed), on
    the app's engine: llama.cpp in an engine process; then, for a local model, the forecast of its
    speed here (the probe measured in the same engine process) next to what was measured."""
    from app.core.engine.process import EngineProxy
    from app.workers.inference import LlamaWorker

    engine = EngineProxy()
    thread = QThread()
    worker = LlamaWorker(lambda: engine)
    worker.moveToThread(thread)
    loop = QEventLoop()
    driver = Driver(worker, loop, image)
    thread.start()
    driver.load_requested.emit(params)
    QTimer.singleShot(600_000, loop.quit)  # never hang
    loop.exec()
    worker.cancel_event.set()
    thread.quit()
    thread.wait(30_000)
    if isinstance(params, LoadParams) and driver.stats is not None and not driver.error:
        try:
            driver.forecast_line = forecast_line(params, driver.stats, engine.measure_speeds, speeds)
        except Exception as exc:  # noqa: BLE001 - the forecast must not fail the self-test
            driver.forecast_line = f"forecast unavailable: {exc}"
    engine.close()
    return driver


def forecast_line(
    params: LoadParams,
    stats: GenerationStats,
    measure: Callable[[int], LlamaFigures],
    cache_file: Path | None,
) -> str:
    """``forecast 812 tok/s, measured 790 tok/s; prompt: forecast …, measured …`` for the answer
    just given: the plan's forecast for this model at this machine's measured speeds (the probe
    cached under ``cache_file``), at the answer's depth and prompt length."""
    import dataclasses

    from app.core import forecast as fc
    from app.core.gguf_info import read_gguf_info
    from app.core.hardware import SystemHardware
    from app.core.planner import PlanOverrides, forecast_for, make_plan

    hw = SystemHardware().probe()
    threads = params.n_threads or max(1, hw.physical_cores)
    cache = fc.SpeedCache(cache_file) if cache_file is not None else None
    hw = dataclasses.replace(hw, speeds=fc.machine_speeds(hw, threads, cache, measure_llama=measure))
    info = read_gguf_info(params.model_path)
    overrides = PlanOverrides(n_ctx=params.n_ctx, n_gpu_layers=params.n_gpu_layers, n_ubatch=params.n_ubatch)
    plan = make_plan(info, hw, overrides, n_threads=threads)
    evaluated = max(1, stats.prompt_tokens_evaluated)
    f = forecast_for(info, hw, plan, depth=stats.prompt_tokens, prompt_tokens=evaluated)
    prompt = evaluated / stats.prompt_eval_s if stats.prompt_eval_s > 0 else 0.0
    return (
        f"forecast {fc.speed_figure(f.tokens_per_s)} tok/s, measured {fc.speed_figure(stats.tokens_per_s)} "
        f"tok/s; prompt ({evaluated} tokens): forecast {fc.speed_figure(f.prompt_tokens_per_s)} tok/s, "
        f"measured {fc.speed_figure(prompt)} tok/s"
    )


def _report(driver: Driver, with_image: bool) -> int:
    """Print what the turns gave; the exit code (0 when the model answered)."""
    if driver.error:
        say(f"self-test FAILED: {driver.error}")
        return 1
    stats, info, text = driver.stats, driver.info, driver.text
    if not text.strip() or stats is None or info is None:
        say("self-test FAILED: the model produced no text")
        return 1
    if info.server:
        say(f"model: {info.name} on {info.server}, context {info.n_ctx:,} tokens")
        say(f"connect time: {info.load_seconds:.2f} s")
    else:
        say(f"model: {info.name} ({info.architecture}, {info.n_params / 1e6:.1f} M parameters)")
        say(f"load time: {info.load_seconds:.2f} s")
    say(f"time to first token: {stats.ttft_s * 1000:.0f} ms")
    say(f"tokens per second: {stats.tokens_per_s:.1f} ({stats.completion_tokens} tokens)")
    if driver.forecast_line:
        say(driver.forecast_line)
    say(f"answer: {text[:120]!r}")
    if with_image:
        image_stats = driver.image_stats
        if image_stats is None or not driver.image_text.strip() or not info.has_vision:
            say("self-test FAILED: the vision projector produced no answer about the picture")
            return 1
        say(f"image turn: {image_stats.prompt_tokens} prompt tokens, {image_stats.completion_tokens} tokens")
        say(f"image answer: {driver.image_text[:120]!r}")
    say("self-test OK")
    return 0


def _self_test_image(folder: Path) -> Path:
    """A small generated picture (PIL), normalised and stored exactly as a dropped image would be."""
    import io

    from PIL import Image, ImageDraw

    from app.core.images import normalize_image, store_image

    im = Image.new("RGB", (64, 48), (240, 240, 235))
    draw = ImageDraw.Draw(im)
    draw.rectangle((8, 8, 40, 36), fill=(200, 30, 30))
    draw.ellipse((30, 12, 58, 40), fill=(30, 90, 200))
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return store_image(folder, normalize_image(buf.getvalue(), name="self-test.png"))
