"""Plain data shared by core, workers and UI: frozen dataclasses, no Qt, no llama_cpp."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path


class StrEnum(str, enum.Enum):
    """A state with a fixed set of string values (Python 3.11's ``enum.StrEnum``, for 3.10 too).

    Members are ``str``: they compare equal to their value and are stored in SQLite and JSON as
    the plain string, and ``str()`` / f-strings give the value, not ``Class.MEMBER``.
    """

    def __str__(self) -> str:
        return str(self.value)


class Role(StrEnum):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"


class FinishReason(StrEnum):
    """Why an answer ended (``GenerationStats.finish_reason``)."""

    STOP = "stop"  # the model ended its turn
    LENGTH = "length"  # max_tokens reached
    CANCELLED = "cancelled"  # the user stopped it
    CONTEXT = "context"  # the context window is full


class DocumentMode(StrEnum):
    """How a document goes into a turn: all of its text, or the passages retrieval finds."""

    WHOLE = "whole"
    RETRIEVAL = "retrieval"


@dataclass(frozen=True)
class ChatMessage:
    """One message as sent to the model. ``images`` are ``data:`` URIs built by us (never paths)."""

    role: str
    content: str
    images: tuple[str, ...] = ()

    @classmethod
    def system(cls, text: str) -> ChatMessage:
        return cls(Role.SYSTEM.value, text)

    @classmethod
    def user(cls, text: str, images: tuple[str, ...] = ()) -> ChatMessage:
        return cls(Role.USER.value, text, images)

    @classmethod
    def assistant(cls, text: str) -> ChatMessage:
        return cls(Role.ASSISTANT.value, text)


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings. Defaults are Meta's recommendation for Llama 4 Scout."""

    temperature: float = 0.6
    top_p: float = 0.9
    min_p: float = 0.01
    top_k: int = 0  # 0 = disabled (Meta's recipe uses top_p/min_p only)
    repeat_penalty: float = 1.0
    max_tokens: int = 2048
    seed: int | None = None
    model: str = ""  # another model of the server in use (a comparison); "": the model loaded


@dataclass(frozen=True)
class TensorOverride:
    """Keep tensors whose name matches ``pattern`` (a regex, llama.cpp's ``-ot`` syntax) on ``device``."""

    pattern: str
    device: str = "CPU"


@dataclass(frozen=True)
class LoadParams:
    """Everything the engine passes to llama.cpp when loading a model. Explicit: no hidden defaults."""

    model_path: Path
    n_ctx: int = 8192
    n_gpu_layers: int = 0
    n_threads: int | None = None  # None: physical cores
    n_threads_batch: int | None = None
    n_batch: int = 512
    n_ubatch: int = 512
    flash_attn: bool = False
    type_k: str = "f16"  # f16, q8_0, q4_0
    type_v: str = "f16"  # quantized V requires flash_attn
    swa_full: bool = False  # False: Scout's small chunked-attention cache (docs/architecture.md)
    use_mmap: bool = True
    offload_kqv: bool = True
    tensor_overrides: tuple[TensorOverride, ...] = ()
    mmproj_path: Path | None = None
    seed: int = 0xFFFFFFFF  # LLAMA_DEFAULT_SEED: random
    # llama.cpp RPC compute servers ("host:port"): the layers go to their devices, split by their
    # free memory (all layers when n_gpu_layers is 0). app/core/engine/rpc.py
    compute_servers: tuple[str, ...] = ()
    # llama.cpp's tensor_split: each device's share of the offloaded layers, in the order of the
    # devices the load names (the compute servers', then this machine's GPUs); () = llama.cpp's
    # own split by free memory. The planner sets it to the free memory it planned with.
    tensor_split: tuple[float, ...] = ()
    # draft-free speculative decoding (app/core/engine/speculation.py): "auto", "on" or "off"
    speculation: str = "auto"

    def __post_init__(self) -> None:
        if self.n_ctx <= 0:
            # Scout's trained context is 10M tokens: n_ctx=0 ("use the trained size") would try to
            # allocate a KV cache of terabytes.
            raise ValueError("n_ctx must be a positive number of tokens")
        if self.type_v != "f16" and not self.flash_attn:
            raise ValueError("a quantized V cache requires flash attention")


@dataclass(frozen=True)
class ModelInfo:
    """What the engine knows about the loaded model."""

    path: Path
    name: str
    architecture: str
    n_ctx: int
    n_ctx_train: int
    n_params: int
    size_bytes: int
    has_chat_template: bool
    chat_template_note: str = ""
    load_seconds: float = 0.0
    has_vision: bool = False
    server: str = ""  # where a served model runs ("127.0.0.1:8081 — llama-server"); "": this computer
    server_models: tuple[str, ...] = ()  # every model that server offers (a comparison may name one)


@dataclass(frozen=True)
class GenerationStats:
    """Figures for one answer. ``prompt_tokens_evaluated`` counts what llama.cpp actually
    processed: with KV prefix reuse it is only the new part of the prompt."""

    prompt_tokens: int = 0
    prompt_tokens_evaluated: int = 0
    completion_tokens: int = 0
    ttft_s: float = 0.0
    prompt_eval_s: float = 0.0
    generation_s: float = 0.0
    tokens_per_s: float = 0.0
    n_ctx: int = 0
    context_used: int = 0
    finish_reason: FinishReason = FinishReason.STOP
    dropped_messages: int = 0
    drafted_tokens: int = 0  # speculation: tokens drafted from the context and verified
    accepted_tokens: int = 0  # of them, the ones written (each saved one decode)


def timed_stats(
    *,
    started: float,
    prompt_done: float,
    first_token_at: float | None,
    ended: float,
    prompt_tokens: int,
    prompt_tokens_evaluated: int,
    completion_tokens: int,
    n_ctx: int,
    context_used: int,
    finish_reason: FinishReason,
    drafted_tokens: int = 0,
    accepted_tokens: int = 0,
) -> GenerationStats:
    """Stats of one answer from its timestamps (perf_counter seconds)."""
    generation_s = max(1e-9, ended - prompt_done)
    return GenerationStats(
        prompt_tokens=prompt_tokens,
        prompt_tokens_evaluated=prompt_tokens_evaluated,
        completion_tokens=completion_tokens,
        ttft_s=(first_token_at or ended) - started,
        prompt_eval_s=prompt_done - started,
        generation_s=generation_s,
        tokens_per_s=completion_tokens / generation_s if completion_tokens else 0.0,
        n_ctx=n_ctx,
        context_used=context_used,
        finish_reason=finish_reason,
        drafted_tokens=drafted_tokens,
        accepted_tokens=accepted_tokens,
    )
