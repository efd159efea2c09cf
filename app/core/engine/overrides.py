"""Tensor buffer overrides (llama.cpp's ``-ot`` / ``--override-tensor``), which the high-level API
lacks: filled into ``llama_model_params.tensor_buft_overrides`` through ctypes."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.core.engine.errors import ModelLoadError

if TYPE_CHECKING:
    from app.core.types import LoadParams


class _BuftOverride(ctypes.Structure):
    _fields_ = [("pattern", ctypes.c_char_p), ("buft", ctypes.c_void_p)]


@dataclass
class Overrides:
    array: Any  # ctypes array, NULL-terminated; must outlive the model
    patterns: list[bytes]


def _ggml_lib(name: str) -> ctypes.CDLL:
    import llama_cpp

    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    candidates = [f"lib{name}.so", f"lib{name}.dylib", f"{name}.dll", f"lib{name}.dll"]
    for candidate in candidates:
        path = lib_dir / candidate
        if path.exists():
            return ctypes.CDLL(str(path))
    raise ModelLoadError(f"llama.cpp library {name} not found in {lib_dir}")


def _buffer_type(device: str) -> int:
    """The ggml buffer type for a device name (CPU, CUDA0, Metal, Vulkan0 …)."""
    if device.upper() == "CPU":
        lib = _ggml_lib("ggml-cpu")
        lib.ggml_backend_cpu_buffer_type.restype = ctypes.c_void_p
        lib.ggml_backend_cpu_buffer_type.argtypes = []
        buft = lib.ggml_backend_cpu_buffer_type()
    else:
        lib = _ggml_lib("ggml")
        lib.ggml_backend_dev_by_name.restype = ctypes.c_void_p
        lib.ggml_backend_dev_by_name.argtypes = [ctypes.c_char_p]
        lib.ggml_backend_dev_buffer_type.restype = ctypes.c_void_p
        lib.ggml_backend_dev_buffer_type.argtypes = [ctypes.c_void_p]
        dev = lib.ggml_backend_dev_by_name(device.encode())
        if not dev:
            raise ModelLoadError(f"No llama.cpp device named {device!r} for a tensor override.")
        buft = lib.ggml_backend_dev_buffer_type(dev)
    if not buft:
        raise ModelLoadError(f"llama.cpp has no buffer type for device {device!r}.")
    return int(buft)


def build_tensor_overrides(params: LoadParams) -> Overrides | None:
    if not params.tensor_overrides:
        return None
    patterns = [o.pattern.encode() for o in params.tensor_overrides]
    array = (_BuftOverride * (len(patterns) + 1))()
    for i, (override, pattern) in enumerate(zip(params.tensor_overrides, patterns, strict=True)):
        array[i].pattern = pattern
        array[i].buft = _buffer_type(override.device)
    array[len(patterns)].pattern = None
    array[len(patterns)].buft = None
    return Overrides(array=array, patterns=patterns)
