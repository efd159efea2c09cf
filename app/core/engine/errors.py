"""The engine's errors, each with a message for the user, and the sentence for a failed load."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from app.core.errors import UserError

if TYPE_CHECKING:
    from pathlib import Path


class EngineError(UserError):
    """A failure of the engine with a message for the user and technical detail for the log."""


class ModelLoadError(EngineError):
    pass


class OutOfMemoryError(ModelLoadError):
    """llama.cpp could not allocate a buffer: a safer plan may load."""


class ProjectorError(ModelLoadError):
    """The vision projector could not be attached to the model (the model itself loaded): a load
    without the projector may succeed."""


class LoadCancelled(EngineError):
    def __init__(self) -> None:
        super().__init__("Loading was cancelled.")


class ContextOverflowError(EngineError):
    pass


class NoModelError(EngineError):
    def __init__(self) -> None:
        super().__init__("No model is loaded. Open a GGUF model file first.")


class EngineCrashedError(EngineError):
    """The engine process ended without being asked to (a native abort, a crash, a kill).
    The model is gone with it; the next load starts a fresh engine process."""


class EngineHungError(EngineError):
    """The engine process showed no sign of life for the watchdog's time while it had work; it
    was stopped, and the next load starts a fresh one."""


class TrialCrashedError(EngineError):
    """A model file never loaded before stopped the throw-away engine process that tried it
    (:meth:`~app.core.engine.process.EngineProxy.try_file`). The engine serving the chat was not
    touched: the model loaded there stays."""


# What llama.cpp, CUDA and the C++ runtime write when memory runs out, and how the kernel's OOM
# killer ends a process (SIGKILL: the proxy's own kills are reported as hangs, never as crashes).
_MEMORY_SIGNS = re.compile(
    r"out of memory|failed to allocate|unable to allocate|cannot allocate|cudaMalloc|"
    r"std::bad_alloc|ErrorOutOfDeviceMemory|hipMalloc|was stopped by SIGKILL",
    re.IGNORECASE,
)


def looks_like_memory(detail: str) -> bool:
    """Whether an engine crash's detail (how it ended + its log tail) points at memory running out."""
    return bool(_MEMORY_SIGNS.search(detail))


def explain_load_failure(path: Path, detail: str) -> str:
    low = detail.lower()
    if "unknown model architecture" in low:
        arch = re.search(r"unknown model architecture: '([^']+)'", detail)
        return (
            f"{path.name} is a GGUF file, but this llama.cpp does not support its architecture"
            f"{' (' + arch.group(1) + ')' if arch else ''}."
        )
    if "failed to allocate" in low or "out of memory" in low or "unable to allocate" in low:
        return (
            f"Not enough memory to load {path.name} with these settings. Try a smaller context size, "
            "fewer GPU layers, or a smaller build of the model."
        )
    if "does not divide" in low and "cache type" in low:
        return (
            "The chosen KV-cache type does not fit this model's attention head size. "
            "Use the f16 KV cache for this model."
        )
    if "tensor" in low and (
        "data is not within the file bounds" in low or "truncated" in low or "out of bounds" in low
    ):
        return (
            f"{path.name} is incomplete or damaged (it is shorter than its header says). Download it again."
        )
    if "split" in low:
        return f"{path.name} is part of a split model and its other parts could not be opened."
    return f"llama.cpp could not load {path.name}. The file may be damaged or not a supported model."


class ComputeServerError(EngineError):
    """A llama.cpp RPC compute server cannot be used; ``message`` says why (app/core/engine/rpc.py)."""
