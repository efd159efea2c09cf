"""Image turns through libmtmd (llama-cpp-python's ``MTMDChatHandler``): the engine side of vision.

Part of :mod:`app.core.engine` (the one llama_cpp importer); llama_cpp is imported lazily, so
importing this module costs nothing.

How an image turn runs (llama-cpp-python 0.3.36, ``MTMDChatHandler.__call__``):

1. The GGUF's own chat template is rendered in a sandboxed Jinja environment, with each
   ``image_url`` part replaced by libmtmd's media marker ``<__media__>``.
2. ``mtmd_tokenize`` splits the prompt into text chunks and image chunks. For Llama 4, libmtmd
   frames each image as ``<|image_start|>`` [tile 1] … [tile n] [global view] ``<|image_end|>``:
   the tiles and the global 336×336 view are bare embeddings, 144 each; this llama.cpp emits no
   ``<|tile_x_separator|>``/``<|tile_y_separator|>``/``<|image|>`` tokens (one reason llama.cpp
   logs "llama 4 vision is known to have degraded quality").
3. **The KV cache is cleared and the whole conversation is evaluated again on every image
   turn** (``llama.reset()`` + ``kv_cache_clear()``): no prefix reuse. Keep the engine's
   text-only path for turns without images, and tell the user that an image turn re-reads the
   history.
4. The prompt is evaluated eagerly, before the first streamed chunk: cancellation can only act
   before the call and between generated tokens (libmtmd's image encoding cannot be interrupted).

Pitfall handled here: image positions of ``Llama.input_ids`` are never written by the handler,
so they keep token ids of an *earlier* prompt. The engine's prefix matching could then "reuse"
image embeddings as if they were text. :func:`stream_image_chat` fills ``input_ids`` with -1
first, so a later text turn reuses at most the text before the first image.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from app.core.engine.errors import ContextOverflowError, EngineError
from app.core.engine.native import NATIVE_LOG, import_llama_cpp
from app.core.types import ChatMessage, FinishReason, GenerationStats, Role, SamplingParams, timed_stats

if TYPE_CHECKING:
    import threading
    from collections.abc import Generator, Sequence
    from pathlib import Path

log = logging.getLogger(__name__)

SCOUT_TILE_SIZE = 336
SCOUT_TOKENS_PER_TILE = 144  # (336 / 14)² patches / pixel-shuffle 2²
SCOUT_MAX_TILES_PER_SIDE = 3  # clip.cpp: set_llava_uhd_res_candidates(model, 3)
IMAGE_FRAME_TOKENS = 2  # <|image_start|> … <|image_end|>
MAX_IMAGES_TESTED = 5  # Meta tested up to 5 images per prompt


@dataclass(frozen=True)
class VisionGeometry:
    """How a projector cuts images: read from its GGUF or use Scout's (the defaults)."""

    tile_size: int = SCOUT_TILE_SIZE
    tokens_per_tile: int = SCOUT_TOKENS_PER_TILE
    max_tiles_per_side: int = SCOUT_MAX_TILES_PER_SIDE


SCOUT_GEOMETRY = VisionGeometry()


def _f32(x: float) -> float:
    return float(ctypes.c_float(x).value)


def tile_grid(width: int, height: int, geometry: VisionGeometry = SCOUT_GEOMETRY) -> tuple[int, int]:
    """The (columns, rows) of tiles libmtmd cuts a ``width`` × ``height`` image into; (0, 0) when
    it fits in one tile and only the global view is used.

    A port of ``mtmd_image_preprocessor_llava_uhd::get_slice_instructions`` with Llama 4's
    "pinpoints" (tools/mtmd/mtmd-image.cpp, clip.cpp): the candidates are every (x·T, y·T) for
    x, y in 1..3 except 1×1; the image is scaled (aspect kept) into each; the one that keeps the
    most of the image's pixels wins, ties going to the one that wastes the least area.
    """
    t = geometry.tile_size
    if width <= t and height <= t:
        return 0, 0
    best = (0, 0)
    best_effective, best_wasted = 0, math.inf
    for gx in range(1, geometry.max_tiles_per_side + 1):
        for gy in range(1, geometry.max_tiles_per_side + 1):
            if gx == 1 and gy == 1:
                continue
            cw, ch = gx * t, gy * t
            scale = min(_f32(cw / width), _f32(ch / height))  # float arithmetic as in C++
            tw, th = int(_f32(width * scale)), int(_f32(height * scale))
            effective = min(tw * th, width * height)
            wasted = cw * ch - effective
            if effective > best_effective or (effective == best_effective and wasted < best_wasted):
                best, best_effective, best_wasted = (gx, gy), effective, wasted
    return best


def image_token_estimate(width: int, height: int, geometry: VisionGeometry = SCOUT_GEOMETRY) -> int:
    """Context tokens one image takes, framing included.

    Scout: an image within 336×336 is one global view (144 tokens); a larger one is cut into a
    grid of up to 3×3 tiles of 336 px (chosen by :func:`tile_grid`) **plus** the global view,
    144 tokens each: ``144 · (cols · rows + 1) + 2`` — from 146 up to 1,442 tokens. The +2 are
    ``<|image_start|>`` and ``<|image_end|>``.
    """
    if width <= 0 or height <= 0:
        raise ValueError("an image has a positive width and height")
    cols, rows = tile_grid(width, height, geometry)
    return geometry.tokens_per_tile * (cols * rows + 1) + IMAGE_FRAME_TOKENS


# --------------------------------------------------------------------------------------------
# libmtmd's own log (clip/mtmd use a separate callback from libllama's): into NATIVE_LOG too.

_MTMD_LOG_CALLBACK: Any = None


def install_mtmd_log() -> None:
    """Route libmtmd's log into :data:`app.core.engine.NATIVE_LOG` (else it goes to stderr)."""
    global _MTMD_LOG_CALLBACK
    if _MTMD_LOG_CALLBACK is not None:
        return
    llama_cpp = import_llama_cpp()
    from llama_cpp import mtmd_cpp

    def on_log(level: int, text: bytes, _user_data: Any) -> None:
        with contextlib.suppress(Exception):  # never raise into C
            NATIVE_LOG._on_text(level, text.decode("utf-8", errors="replace"))

    _MTMD_LOG_CALLBACK = llama_cpp.llama_log_callback(on_log)  # kept alive for the process's life
    mtmd_cpp.mtmd_log_set(_MTMD_LOG_CALLBACK, ctypes.c_void_p(0))
    mtmd_cpp.mtmd_helper_log_set(_MTMD_LOG_CALLBACK, ctypes.c_void_p(0))


def make_chat_handler(mmproj_path: Path, n_threads: int | None = None, use_gpu: bool = False) -> Any:
    """An ``MTMDChatHandler`` for the projector at ``mmproj_path``.

    The projector itself is loaded on the first image turn (it needs the ``Llama``): call
    :func:`prepare_handler` right after loading the model to load it eagerly and fail early.
    ``n_threads`` (``None``: the model's ``n_threads``) sets the image encoder's threads;
    ``use_gpu`` follows the plan (the projector's weights go to the GPU when True).
    """
    if not mmproj_path.is_file():
        raise EngineError(f"The vision projector file was not found: {mmproj_path}")
    install_mtmd_log()
    from llama_cpp.llama_chat_format import MTMDChatHandler

    class ScoutMTMDChatHandler(MTMDChatHandler):
        """MTMDChatHandler with explicit threads, quiet timings, and no stdout/stderr capture."""

        def __init__(self) -> None:
            super().__init__(clip_model_path=str(mmproj_path), verbose=False, use_gpu=use_gpu)
            self.n_threads = n_threads

        def _init_mtmd_context(self, llama_model: Any) -> None:
            self.verbose = False  # True would print the whole prompt to stderr
            if self.mtmd_ctx is not None:
                return
            llama_cpp = import_llama_cpp()
            params = self._mtmd_cpp.mtmd_context_params_default()
            params.use_gpu = self.use_gpu
            params.print_timings = False
            params.n_threads = int(self.n_threads or llama_model.n_threads)
            enabled = llama_model.context_params.flash_attn_type == llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
            params.flash_attn_type = (
                llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
                if enabled
                else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
            )
            mark = NATIVE_LOG.mark()
            ctx = self._mtmd_cpp.mtmd_init_from_file(self.clip_model_path.encode(), llama_model.model, params)
            if ctx is None:
                detail = "\n".join(NATIVE_LOG.since(mark)[-15:])
                raise EngineError(_explain_projector_failure(detail), detail)
            self.mtmd_ctx = ctx
            if not self._mtmd_cpp.mtmd_support_vision(ctx):
                raise EngineError("This projector file has no vision encoder: pictures cannot be read.")

            def mtmd_free() -> None:
                if self.mtmd_ctx is not None:
                    self._mtmd_cpp.mtmd_free(self.mtmd_ctx)
                    self.mtmd_ctx = None

            llama_model._stack.callback(mtmd_free)

    return ScoutMTMDChatHandler()


def _explain_projector_failure(detail: str) -> str:
    low = detail.lower()
    if "n_embd" in low or "mismatch" in low or "embedding dimension" in low:
        return (
            "The vision projector does not belong to this model (their widths differ). "
            "Download the projector that matches the model."
        )
    if "unknown projector" in low:
        return "This version of llama.cpp does not know the projector's type."
    return "The vision projector could not be loaded. The file may be damaged or belong to another model."


def media_marker(handler: Any) -> str:
    """The text that stands for an image in the prompt the handler hands to libmtmd."""
    return bytes(handler._mtmd_cpp.mtmd_default_marker()).decode("utf-8")


def prepare_handler(llm: Any, handler: Any) -> None:
    """Load the projector now (seconds for Scout's 1.7 GB file) instead of on the first image."""
    handler._init_mtmd_context(llm)


def _message_dicts(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for m in messages:
        if not m.images:
            out.append({"role": m.role, "content": m.content})
            continue
        if m.role != Role.USER.value:
            # The handler only collects images from user messages; elsewhere the marker count
            # and the bitmap count would disagree.
            raise ValueError(f"images are only allowed in user messages, not in {m.role!r} messages")
        parts: list[dict[str, Any]] = []
        for uri in m.images:
            if not uri.startswith("data:image/"):
                # MTMDChatHandler would fetch anything else with urllib (file:// included).
                raise ValueError("images must be data: URIs built by app.core.images.data_uri")
            parts.append({"type": "image_url", "image_url": {"url": uri}})
        parts.append({"type": "text", "text": m.content})
        out.append({"role": m.role, "content": parts})
    return out


def stream_image_chat(
    llm: Any,
    handler: Any,
    messages: Sequence[ChatMessage],
    sampling: SamplingParams,
    cancel: threading.Event,
) -> Generator[str, None, GenerationStats]:
    """Stream the answer to a conversation containing images (``ChatMessage.images``: ``data:``
    URIs). Yields text pieces; returns the figures (``stats = yield from stream_image_chat(…)``).

    Re-reads the whole conversation (the handler clears the KV cache). Cancellation is checked
    before the prompt is evaluated and between tokens; on cancel the stream is closed at once.
    Raises :class:`ContextOverflowError` when the images and text do not fit in the context.
    """
    started = time.perf_counter()
    payload = _message_dicts(messages)
    n_ctx = int(llm.n_ctx())
    if cancel.is_set():
        return GenerationStats(n_ctx=n_ctx, finish_reason=FinishReason.CANCELLED)
    if not llm.metadata.get("tokenizer.chat_template"):
        raise EngineError(
            "This model file has no chat template, which image turns need. "
            "Use a GGUF that includes its chat template."
        )
    llm.input_ids.fill(-1)  # image positions are never written: make them match no token
    stream = _start_stream(llm, handler, payload, sampling, n_ctx)
    prompt_tokens = int(llm.n_tokens)
    prompt_done = time.perf_counter()

    first_at: float | None = None
    pieces = 0
    finish = FinishReason.LENGTH
    try:
        for chunk in stream:
            if cancel.is_set():
                finish = FinishReason.CANCELLED
                break
            choice = chunk["choices"][0]
            piece = choice["delta"].get("content") or ""
            if choice.get("finish_reason"):  # llama-cpp-python says "stop" or "length"
                finish = FinishReason.LENGTH if choice["finish_reason"] == "length" else FinishReason.STOP
            if piece:
                pieces += 1
                if first_at is None:
                    first_at = time.perf_counter()
                yield piece
                if cancel.is_set():
                    finish = FinishReason.CANCELLED
                    break
    finally:
        stream.close()
    return timed_stats(
        started=started,
        prompt_done=prompt_done,
        first_token_at=first_at,
        ended=time.perf_counter(),
        prompt_tokens=prompt_tokens,
        prompt_tokens_evaluated=prompt_tokens,  # the vision path re-reads the whole conversation
        completion_tokens=max(0, int(llm.n_tokens) - prompt_tokens) or pieces,
        n_ctx=n_ctx,
        context_used=int(llm.n_tokens),
        finish_reason=finish,
    )


def _start_stream(
    llm: Any, handler: Any, payload: list[dict[str, Any]], sampling: SamplingParams, n_ctx: int
) -> Any:
    """The handler's chunk stream (it evaluates the prompt, images included, before returning);
    its errors become sentences: the context is too small, or a picture cannot be read."""
    try:
        return handler(
            llama=llm,
            messages=payload,
            stream=True,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k,
            min_p=sampling.min_p,
            repeat_penalty=sampling.repeat_penalty,
            max_tokens=sampling.max_tokens,
            seed=sampling.seed,
        )
    except ValueError as exc:
        text = str(exc)
        if "exceeds n_ctx" in text:
            raise ContextOverflowError(
                "The pictures and the conversation do not fit in the context window "
                f"({n_ctx:,} tokens). Remove a picture, start a new conversation, or raise the "
                "context size in Settings.",
                text,
            ) from exc
        if "bitmap" in text:
            raise EngineError("A picture could not be decoded by the vision projector.", text) from exc
        raise EngineError("The picture could not be read by the vision projector.", text) from exc
