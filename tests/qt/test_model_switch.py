"""Switching models with the real llama.cpp on tiny generated models: a projector that belongs to
another model is left out (the model loads for text), and a model that fails to load leaves the
one loaded before it loaded and usable."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import pytest

from app.core.engine import LlamaEngine
from app.core.gguf_info import projector_mismatch, read_gguf_info
from app.core.hardware import SimulatedHardware
from app.core.planner import LoadRequest, PlanOverrides, plan_load
from app.core.tiny_model import TinyModelSpec, write_tiny_model
from app.core.tiny_vision import write_tiny_projector
from app.core.types import ChatMessage, LoadParams, SamplingParams
from app.workers.inference import LlamaWorker
from tests.fakes import turn_request

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

SMALL = PlanOverrides(n_ctx=512)


@pytest.fixture(scope="module")
def text_model_beside_a_foreign_projector(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An F16 text model in a folder that also holds the projector of a 64-wide model."""
    folder = tmp_path_factory.mktemp("mixed folder")
    model = write_tiny_model(folder / "tiny-f16.gguf", TinyModelSpec(dtype="F16", name="Tiny F16"))[0]
    write_tiny_projector(folder / "mmproj-other-model-f16.gguf", TinyModelSpec(n_embd=64))
    return model


@pytest.fixture(scope="module")
def unsupported_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A well-formed GGUF whose header reads fine but whose architecture llama.cpp does not know:
    it fails only inside llama.cpp, after the loaded model was unloaded to make room."""
    import gguf
    import numpy as np

    path = tmp_path_factory.mktemp("unsupported") / "future-arch.gguf"
    writer = gguf.GGUFWriter(str(path), "scout-from-the-future")
    writer.add_block_count(1)
    writer.add_embedding_length(8)
    writer.add_head_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def worker(qtbot) -> Iterator[LlamaWorker]:
    hardware = SimulatedHardware.cpu_only(ram_gb=32).probe()
    made = LlamaWorker(LlamaEngine, lambda request: plan_load(request, hardware))
    yield made
    made.engine.unload()


def _load(qtbot, worker: LlamaWorker, request: LoadRequest | LoadParams) -> object:
    with qtbot.waitSignal(worker.model_loaded, timeout=30_000) as loaded:
        worker.load_model(request)
    return loaded.args[0]


def _fail(qtbot, worker: LlamaWorker, request: LoadRequest | LoadParams) -> tuple[list[object], str]:
    kept: list[object] = []
    worker.model_kept.connect(kept.append)
    with qtbot.waitSignal(worker.load_failed, timeout=30_000) as failed:
        worker.load_model(request)
    return kept, failed.args[0]


def _answers(qtbot, worker: LlamaWorker) -> bool:
    texts: list[str] = []
    worker.tokens_generated.connect(lambda _g, t: texts.append(t))
    with qtbot.waitSignal(worker.generation_finished, timeout=30_000):
        worker.answer(1, turn_request([ChatMessage.user("Hi")]), SamplingParams(max_tokens=4, seed=1))
    return bool("".join(texts).strip())


def test_header_check_finds_the_foreign_projector(text_model_beside_a_foreign_projector: Path) -> None:
    folder = text_model_beside_a_foreign_projector.parent
    reason = projector_mismatch(
        read_gguf_info(text_model_beside_a_foreign_projector), folder / "mmproj-other-model-f16.gguf"
    )
    assert reason == "it makes 64-wide image embeddings and Tiny F16 reads 128-wide ones"


def test_a_foreign_projector_is_left_out_and_the_model_loads_for_text(
    qtbot, worker: LlamaWorker, text_model_beside_a_foreign_projector: Path
) -> None:
    notices: list[str] = []
    worker.load_notice.connect(notices.append)
    info = _load(qtbot, worker, LoadRequest(text_model_beside_a_foreign_projector, SMALL))
    assert not info.has_vision
    assert len(notices) == 1
    assert "mmproj-other-model-f16.gguf does not match tiny-f16.gguf" in notices[0]
    assert "loaded for text only" in notices[0]
    assert _answers(qtbot, worker)


def test_a_projector_refused_by_llama_cpp_is_left_out_too(
    qtbot, worker: LlamaWorker, tiny_model: Path, tmp_path: Path
) -> None:
    """A projector whose header does not say its width: libmtmd refuses it when it is attached;
    the model is loaded again without it instead of failing."""
    import gguf

    projector = write_tiny_projector(tmp_path / "mmproj-other.gguf", TinyModelSpec(n_embd=64))
    reader = gguf.GGUFReader(projector)
    field = reader.fields["clip.vision.projection_dim"]
    assert int(field.parts[-1][0]) == 64
    raw = bytearray(projector.read_bytes())
    key = b"clip.vision.projection_dim"
    at = raw.index(key)
    raw[at : at + len(key)] = b"clip.vision.projection_XXX"  # the key is gone, the file stays valid
    projector.write_bytes(bytes(raw))
    notices: list[str] = []
    worker.load_notice.connect(notices.append)
    info = _load(qtbot, worker, LoadParams(tiny_model, n_ctx=512, n_threads=1, mmproj_path=projector))
    assert not info.has_vision
    assert notices[-1].startswith("llama.cpp could not attach the vision projector mmproj-other.gguf")
    assert "loaded for text only" in notices[-1]
    assert _answers(qtbot, worker)


def test_a_damaged_model_fails_before_the_loaded_one_is_unloaded(
    qtbot, worker: LlamaWorker, tiny_model: Path, tmp_path: Path, caplog
) -> None:
    first = _load(qtbot, worker, LoadRequest(tiny_model, SMALL))
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_model.read_bytes()[: tiny_model.stat().st_size // 2])
    with caplog.at_level(logging.ERROR):
        kept, message = _fail(qtbot, worker, LoadRequest(cut, SMALL))
    assert "truncated" in message
    assert kept == [first]  # the very same model: never unloaded
    assert worker.engine.model_info is first
    assert _answers(qtbot, worker)


@pytest.mark.parametrize("planned", [True, False])
def test_a_model_llama_cpp_refuses_leaves_the_previous_one_loaded(
    qtbot, worker: LlamaWorker, tiny_model: Path, unsupported_model: Path, planned: bool, caplog
) -> None:
    request: LoadRequest | LoadParams
    if planned:
        first = _load(qtbot, worker, LoadRequest(tiny_model, SMALL))
        request = LoadRequest(unsupported_model, SMALL)
    else:
        first = _load(qtbot, worker, LoadParams(tiny_model, n_ctx=512, n_threads=1))
        request = LoadParams(unsupported_model, n_ctx=512, n_threads=1)
    with caplog.at_level(logging.ERROR):
        kept, message = _fail(qtbot, worker, request)
    assert "does not support its architecture" in message
    assert len(kept) == 1
    assert kept[0].path == first.path
    assert kept[0].n_ctx == first.n_ctx
    assert _answers(qtbot, worker)


def test_a_cancelled_load_leaves_the_previous_model_loaded(
    qtbot, worker: LlamaWorker, tiny_model: Path, text_model_beside_a_foreign_projector: Path, caplog
) -> None:
    first = _load(qtbot, worker, LoadRequest(tiny_model, SMALL))
    worker.load_progress.connect(lambda _f: worker.load_cancel_event.set())
    with caplog.at_level(logging.ERROR):
        kept, message = _fail(qtbot, worker, LoadRequest(text_model_beside_a_foreign_projector, SMALL))
    assert message == "Loading was cancelled."
    assert [k.path for k in kept] == [first.path]
    assert _answers(qtbot, worker)


def test_the_controller_keeps_the_loaded_model_when_another_fails(
    make_controller, qtbot, tiny_model: Path, unsupported_model: Path, caplog
) -> None:
    hardware = SimulatedHardware.cpu_only(ram_gb=32).probe()
    engine = LlamaEngine()
    controller = make_controller(engine, planner=lambda request: plan_load(request, hardware))
    models = controller.models
    with qtbot.waitSignal(models.model_loaded, timeout=30_000) as loaded:
        models.load_model(str(tiny_model), SMALL)
    first, plan = loaded.args[0], models.plan
    with caplog.at_level(logging.ERROR), qtbot.waitSignal(models.model_load_failed, timeout=30_000) as failed:
        models.load_model(str(unsupported_model))
    assert failed.args[0].endswith(f"{first.name} is still loaded.")
    assert models.model_info is not None
    assert models.model_info.path == first.path
    assert models.plan is plan
    assert models.overrides == SMALL
