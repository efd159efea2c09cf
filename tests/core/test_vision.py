"""Real image turns through llama.cpp (libmtmd) on the tiny llama4 model + tiny projector.

n_threads=1 everywhere: with images on a 2-core machine, 2 threads are ~800× slower.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import pytest

from app.core.engine import ContextOverflowError, EngineError
from app.core.engine.vision import (
    IMAGE_FRAME_TOKENS,
    image_token_estimate,
    make_chat_handler,
    prepare_handler,
    stream_image_chat,
    tile_grid,
)
from app.core.images import data_uri, normalize_image
from app.core.tiny_model import TinyModelSpec
from app.core.tiny_vision import TinyProjectorSpec, write_tiny_projector
from app.core.types import ChatMessage, SamplingParams
from tests.vision_fixtures import TINY_GEOMETRY, png_bytes

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

SAMPLING = SamplingParams(max_tokens=6, seed=7)


def _open(model: Path, handler: Any, n_ctx: int = 1024) -> Any:
    import llama_cpp

    return llama_cpp.Llama(
        model_path=str(model),
        chat_handler=handler,
        n_ctx=n_ctx,
        n_threads=1,
        n_threads_batch=1,
        verbose=False,
    )


@pytest.fixture(scope="module")
def vision(tiny_model: Path, tiny_projector: Path) -> Iterator[tuple[Any, Any]]:
    handler = make_chat_handler(tiny_projector, n_threads=1, use_gpu=False)
    llm = _open(tiny_model, handler)
    prepare_handler(llm, handler)
    yield llm, handler
    llm.close()


def _uri(width: int, height: int, **kw: Any) -> str:
    return data_uri(normalize_image(png_bytes(width, height, **kw)))


def _run(vision: tuple[Any, Any], messages: list[ChatMessage], cancel: threading.Event | None = None) -> Any:
    llm, handler = vision
    pieces: list[str] = []
    gen = stream_image_chat(llm, handler, messages, SAMPLING, cancel or threading.Event())
    while True:
        try:
            pieces.append(next(gen))
        except StopIteration as stop:
            return "".join(pieces), stop.value


def test_projector_file_is_small_and_matches_the_text_model(tiny_projector: Path) -> None:
    import gguf

    reader = gguf.GGUFReader(tiny_projector)
    fields = {f.name: f for f in reader.fields.values()}
    assert bytes(fields["clip.projector_type"].parts[-1]).decode() == "llama4"
    assert int(fields["clip.vision.projection_dim"].parts[-1][0]) == TinyModelSpec().n_embd
    assert tiny_projector.stat().st_size < 1_000_000


def test_one_image_is_answered(vision: tuple[Any, Any]) -> None:
    text, stats = _run(vision, [ChatMessage.user("What is in this picture?", (_uri(32, 32),))])
    assert text.strip()
    assert stats.finish_reason == "length"
    assert stats.completion_tokens > 0
    # The prompt holds the image: 4 tokens for one 32-px tile + <|image_start|>/<|image_end|>.
    text_only, text_stats = _run(vision, [ChatMessage.user("What is in this picture?")])
    assert text_only.strip()
    assert stats.prompt_tokens - text_stats.prompt_tokens == image_token_estimate(32, 32, TINY_GEOMETRY)


def test_several_images_are_all_read(vision: tuple[Any, Any]) -> None:
    images = (_uri(32, 32), _uri(80, 50, gradient=True), _uri(20, 90, color=(0, 90, 200)))
    text, stats = _run(vision, [ChatMessage.user("Compare these pictures.", images)])
    _, text_stats = _run(vision, [ChatMessage.user("Compare these pictures.")])
    assert text.strip()
    expected = sum(image_token_estimate(w, h, TINY_GEOMETRY) for w, h in ((32, 32), (80, 50), (20, 90)))
    assert stats.prompt_tokens - text_stats.prompt_tokens == expected


@pytest.mark.parametrize(("width", "height"), [(33, 32), (64, 32), (100, 100), (40, 96), (200, 30)])
def test_token_estimate_matches_libmtmd(vision: tuple[Any, Any], width: int, height: int) -> None:
    _, stats = _run(vision, [ChatMessage.user("x", (_uri(width, height, gradient=True),))])
    _, text_stats = _run(vision, [ChatMessage.user("x")])
    assert stats.prompt_tokens - text_stats.prompt_tokens == image_token_estimate(
        width, height, TINY_GEOMETRY
    )


def test_different_images_give_different_image_embeddings(vision: tuple[Any, Any]) -> None:
    """The tokens after the picture see it: with the same seed, different pictures change the
    logits (sampling is seeded, so differing answers prove the image reached the model)."""
    answers = set()
    for color in ((255, 0, 0), (0, 0, 255), (255, 255, 255)):
        text, _ = _run(vision, [ChatMessage.user("Describe.", (_uri(32, 32, color=color),))])
        answers.add(text)
    assert len(answers) > 1


def test_image_with_a_document_and_history(vision: tuple[Any, Any]) -> None:
    document = "The quick brown fox jumps over the lazy dog. " * 20
    messages = [
        ChatMessage.system("You are Scout."),
        ChatMessage.user("Hello"),
        ChatMessage.assistant("Hello, how are you today?"),
        ChatMessage.user(f"Here is a document:\n{document}\nAnd a picture. Summarise both.", (_uri(48, 48),)),
    ]
    text, stats = _run(vision, messages)
    assert text.strip()
    assert stats.prompt_tokens > 100


def test_image_positions_never_match_a_token(vision: tuple[Any, Any]) -> None:
    """After an image turn the image positions of input_ids hold -1, so the engine's text-only
    prefix reuse stops before the first image instead of reusing image embeddings as text."""
    llm, _ = vision
    _run(vision, [ChatMessage.user("First", (_uri(32, 32),))])
    ids = llm.input_ids[: llm.n_tokens].tolist()
    assert ids.count(-1) == image_token_estimate(32, 32, TINY_GEOMETRY) - IMAGE_FRAME_TOKENS


def test_cancel_stops_the_stream(vision: tuple[Any, Any]) -> None:
    llm, handler = vision
    cancel = threading.Event()
    gen = stream_image_chat(
        llm, handler, [ChatMessage.user("Hi", (_uri(32, 32),))], SamplingParams(max_tokens=50), cancel
    )
    first = next(gen)
    cancel.set()
    with pytest.raises(StopIteration) as stop:
        next(gen)
    assert first
    assert stop.value.value.finish_reason == "cancelled"
    assert stop.value.value.completion_tokens < 50


def test_cancel_before_start_evaluates_nothing(vision: tuple[Any, Any]) -> None:
    llm, handler = vision
    cancel = threading.Event()
    cancel.set()
    gen = stream_image_chat(llm, handler, [ChatMessage.user("Hi", (_uri(32, 32),))], SAMPLING, cancel)
    with pytest.raises(StopIteration) as stop:
        next(gen)
    assert stop.value.value.finish_reason == "cancelled"


@pytest.mark.parametrize("uri", ["file:///etc/passwd", "http://127.0.0.1:9/x.png", "/tmp/x.png"])
def test_only_data_uris_reach_the_handler(vision: tuple[Any, Any], uri: str) -> None:
    with pytest.raises(ValueError, match="data: URIs"):
        _run(vision, [ChatMessage.user("Hi", (uri,))])


def test_images_outside_user_messages_are_refused(vision: tuple[Any, Any]) -> None:
    with pytest.raises(ValueError, match="user messages"):
        _run(vision, [ChatMessage("assistant", "look", (_uri(32, 32),)), ChatMessage.user("Hi")])


def test_context_overflow_is_a_clear_error(tiny_model: Path, tiny_projector: Path) -> None:
    handler = make_chat_handler(tiny_projector, n_threads=1)
    llm = _open(tiny_model, handler, n_ctx=256)
    try:
        images = tuple(_uri(96, 96, color=(i * 30, 0, 0)) for i in range(8))  # 8 × 42 tokens
        with pytest.raises(ContextOverflowError, match="do not fit"):
            _run((llm, handler), [ChatMessage.user("Look", images)])
    finally:
        llm.close()


def test_a_projector_for_another_model_is_refused(tiny_model: Path, tmp_path: Path) -> None:
    other = write_tiny_projector(tmp_path / "mmproj-other.gguf", TinyModelSpec(n_embd=64))
    handler = make_chat_handler(other, n_threads=1)
    llm = _open(tiny_model, handler)
    try:
        with pytest.raises(EngineError) as err:
            prepare_handler(llm, handler)
        assert "projector" in err.value.message
    finally:
        llm.close()


def test_model_without_chat_template_is_a_clear_error(
    tiny_model_no_template: Path,
    tiny_projector: Path,
) -> None:
    handler = make_chat_handler(tiny_projector, n_threads=1)
    llm = _open(tiny_model_no_template, handler, n_ctx=256)
    try:
        with pytest.raises(EngineError, match="no chat template"):
            _run((llm, handler), [ChatMessage.user("Hi", (_uri(32, 32),))])
    finally:
        llm.close()


def test_missing_projector_file(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="not found"):
        make_chat_handler(tmp_path / "nope.gguf")


def test_tiny_projector_spec_checks(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="multiple"):
        write_tiny_projector(tmp_path / "x.gguf", spec=TinyProjectorSpec(image_size=30))
    assert not (tmp_path / "x.gguf").exists()


# -- the Scout formula (no model needed) --------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "grid", "tokens"),
    [
        ((336, 336), (0, 0), 146),  # one global view
        ((100, 50), (0, 0), 146),  # small images are not upscaled into tiles
        ((672, 336), (2, 1), 3 * 144 + 2),
        ((337, 337), (2, 2), 5 * 144 + 2),  # just over one tile: 2×2 keeps most pixels
        ((1008, 1008), (3, 3), 10 * 144 + 2),
        ((6000, 4000), (3, 2), 7 * 144 + 2),  # a 3:2 photo fits 3×2 tiles exactly
        ((4000, 6000), (2, 3), 7 * 144 + 2),
        ((3000, 3000), (3, 3), 1442),  # the most an image can take
        ((1344, 336), (3, 1), 4 * 144 + 2),
        ((100, 2000), (1, 3), 4 * 144 + 2),
    ],
)
def test_scout_token_estimate(size: tuple[int, int], grid: tuple[int, int], tokens: int) -> None:
    assert tile_grid(*size) == grid
    assert image_token_estimate(*size) == tokens


def test_scout_estimate_bounds() -> None:
    for w in range(1, 3000, 97):
        for h in range(1, 3000, 89):
            assert 146 <= image_token_estimate(w, h) <= 1442
    with pytest.raises(ValueError, match="positive"):
        image_token_estimate(0, 10)
