"""Load the ggml/llama shared libraries shipped inside the installed ``llama_cpp`` package (ctypes).

The package directory is found with ``importlib.util.find_spec`` so that ``llama_cpp`` itself is
never imported here (importing it is slow and belongs to ``engine.py``). Only the C functions this
app calls are declared; every handle is loaded once and cached.
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import sys
import threading
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from _ctypes import CFuncPtr

log = logging.getLogger(__name__)

_LOCK = threading.Lock()


class GGMLLibraryError(RuntimeError):
    """The llama_cpp package or one of its native libraries could not be found or loaded."""


@lru_cache(maxsize=1)
def lib_dir() -> Path:
    """``…/site-packages/llama_cpp/lib`` of the installed package (without importing it)."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        raise GGMLLibraryError("The llama-cpp-python package is not installed.")
    package = Path(next(iter(spec.submodule_search_locations)))
    for candidate in (package / "lib", package):
        if candidate.is_dir() and any(candidate.glob("*ggml*")):
            return candidate
    raise GGMLLibraryError(f"No ggml libraries found in {package}.")


def _candidates(name: str) -> list[str]:
    if sys.platform == "win32":
        return [f"{name}.dll", f"lib{name}.dll"]
    if sys.platform == "darwin":
        return [f"lib{name}.dylib", f"lib{name}.so"]
    return [f"lib{name}.so", f"lib{name}.so.0"]


_HANDLES: dict[str, ctypes.CDLL] = {}


def load(name: str) -> ctypes.CDLL:
    """Load ``ggml-base``, ``ggml``, ``ggml-cpu`` or ``llama`` from the package (cached)."""
    with _LOCK:
        if name in _HANDLES:
            return _HANDLES[name]
        directory = lib_dir()
        # Dependencies first, so the dynamic loader finds them already resident on every OS.
        order = {
            "ggml-base": [],
            "ggml": ["ggml-base"],
            "ggml-cpu": ["ggml-base"],
            "llama": ["ggml-base", "ggml"],
        }
        for dep in order.get(name, []):
            if dep not in _HANDLES:
                dep_handle = _open(directory, dep)
                _declare(dep_handle)
                _HANDLES[dep] = dep_handle
        handle = _open(directory, name)
        _declare(handle)
        _HANDLES[name] = handle
        return handle


def _open(directory: Path, name: str) -> ctypes.CDLL:
    for candidate in _candidates(name):
        path = directory / candidate
        if path.exists():
            mode = getattr(ctypes, "RTLD_GLOBAL", 0)
            try:
                return ctypes.CDLL(str(path), mode=mode)
            except OSError as exc:
                raise GGMLLibraryError(f"Could not load {path.name}: {exc}") from exc
    raise GGMLLibraryError(f"llama.cpp library {name} not found in {directory}.")


# --------------------------------------------------------------------------------------------
# Declarations (argtypes/restype) of the C functions used by gguf_info and hardware.


class GGUFInitParams(ctypes.Structure):
    _fields_ = [("no_alloc", ctypes.c_bool), ("ctx", ctypes.c_void_p)]


class GGMLInitParams(ctypes.Structure):
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]


# enum gguf_type
GGUF_TYPE_UINT8, GGUF_TYPE_INT8, GGUF_TYPE_UINT16, GGUF_TYPE_INT16 = 0, 1, 2, 3
GGUF_TYPE_UINT32, GGUF_TYPE_INT32, GGUF_TYPE_FLOAT32, GGUF_TYPE_BOOL = 4, 5, 6, 7
GGUF_TYPE_STRING, GGUF_TYPE_ARRAY, GGUF_TYPE_UINT64, GGUF_TYPE_INT64, GGUF_TYPE_FLOAT64 = 8, 9, 10, 11, 12

# enum ggml_backend_dev_type
DEV_TYPE_CPU, DEV_TYPE_GPU, DEV_TYPE_IGPU, DEV_TYPE_ACCEL, DEV_TYPE_META = 0, 1, 2, 3, 4

_P = ctypes.c_void_p
_I64 = ctypes.c_int64
_SZ = ctypes.c_size_t

_GGML_BASE_FUNCS: dict[str, tuple[list[object], object]] = {
    "gguf_init_from_file": ([ctypes.c_char_p, GGUFInitParams], _P),
    "gguf_free": ([_P], None),
    "gguf_get_version": ([_P], ctypes.c_uint32),
    "gguf_get_alignment": ([_P], _SZ),
    "gguf_get_data_offset": ([_P], _SZ),
    "gguf_get_n_kv": ([_P], _I64),
    "gguf_find_key": ([_P, ctypes.c_char_p], _I64),
    "gguf_get_key": ([_P, _I64], ctypes.c_char_p),
    "gguf_get_kv_type": ([_P, _I64], ctypes.c_int),
    "gguf_get_arr_type": ([_P, _I64], ctypes.c_int),
    "gguf_get_val_u8": ([_P, _I64], ctypes.c_uint8),
    "gguf_get_val_i8": ([_P, _I64], ctypes.c_int8),
    "gguf_get_val_u16": ([_P, _I64], ctypes.c_uint16),
    "gguf_get_val_i16": ([_P, _I64], ctypes.c_int16),
    "gguf_get_val_u32": ([_P, _I64], ctypes.c_uint32),
    "gguf_get_val_i32": ([_P, _I64], ctypes.c_int32),
    "gguf_get_val_f32": ([_P, _I64], ctypes.c_float),
    "gguf_get_val_u64": ([_P, _I64], ctypes.c_uint64),
    "gguf_get_val_i64": ([_P, _I64], ctypes.c_int64),
    "gguf_get_val_f64": ([_P, _I64], ctypes.c_double),
    "gguf_get_val_bool": ([_P, _I64], ctypes.c_bool),
    "gguf_get_val_str": ([_P, _I64], ctypes.c_char_p),
    "gguf_get_arr_n": ([_P, _I64], _SZ),
    "gguf_get_arr_data": ([_P, _I64], _P),
    "gguf_get_arr_str": ([_P, _I64, _SZ], ctypes.c_char_p),
    "gguf_get_n_tensors": ([_P], _I64),
    "gguf_get_tensor_name": ([_P, _I64], ctypes.c_char_p),
    "gguf_get_tensor_type": ([_P, _I64], ctypes.c_int),
    "gguf_get_tensor_offset": ([_P, _I64], _SZ),
    "gguf_get_tensor_size": ([_P, _I64], _SZ),
    "ggml_type_name": ([ctypes.c_int], ctypes.c_char_p),
    "ggml_type_size": ([ctypes.c_int], _SZ),
    "ggml_blck_size": ([ctypes.c_int], _I64),
    "ggml_row_size": ([ctypes.c_int, _I64], _SZ),
    # the backend registry lives in libggml-base in current ggml builds, in libggml in older ones
    "ggml_backend_dev_count": ([], _SZ),
    "ggml_backend_dev_get": ([_SZ], _P),
    "ggml_backend_dev_name": ([_P], ctypes.c_char_p),
    "ggml_backend_dev_description": ([_P], ctypes.c_char_p),
    "ggml_backend_dev_type": ([_P], ctypes.c_int),
    "ggml_backend_dev_memory": ([_P, ctypes.POINTER(_SZ), ctypes.POINTER(_SZ)], None),
    "ggml_backend_dev_backend_reg": ([_P], _P),
    "ggml_backend_reg_name": ([_P], ctypes.c_char_p),
    "ggml_backend_reg_count": ([], _SZ),
    "ggml_backend_load_all_from_path": ([ctypes.c_char_p], None),
    # buffers and transfers: the forecast's device probe (app/core/ggml_speed.py)
    "ggml_backend_dev_by_name": ([ctypes.c_char_p], _P),
    "ggml_backend_dev_by_type": ([ctypes.c_int], _P),
    "ggml_backend_dev_buffer_type": ([_P], _P),
    "ggml_backend_buft_alloc_buffer": ([_P, _SZ], _P),
    "ggml_backend_buffer_free": ([_P], None),
    "ggml_backend_buffer_get_base": ([_P], _P),
    "ggml_init": ([GGMLInitParams], _P),
    "ggml_free": ([_P], None),
    "ggml_tensor_overhead": ([], _SZ),
    "ggml_new_tensor_1d": ([_P, ctypes.c_int, _I64], _P),
    "ggml_backend_tensor_alloc": ([_P, _P, _P], ctypes.c_int),
    "ggml_backend_tensor_set": ([_P, _P, _SZ, _SZ], None),
    "ggml_backend_tensor_get": ([_P, _P, _SZ, _SZ], None),
    "ggml_backend_tensor_copy": ([_P, _P], None),
}


def _declare(handle: ctypes.CDLL) -> None:
    for func, (argtypes, restype) in _GGML_BASE_FUNCS.items():
        try:
            fn = getattr(handle, func)
        except AttributeError:
            continue  # not exported by this library (e.g. the registry lives in the other one)
        fn.argtypes = argtypes
        fn.restype = restype


def function(func: str) -> CFuncPtr:
    """A declared C function, from whichever of ggml-base / ggml exports it."""
    for name in ("ggml-base", "ggml"):
        handle = load(name)
        if hasattr(handle, func) and func in _GGML_BASE_FUNCS:
            fn: CFuncPtr = getattr(handle, func)
            return fn
    raise GGMLLibraryError(f"{func} is not exported by the ggml libraries in {lib_dir()}.")


def has_function(func: str) -> bool:
    try:
        function(func)
    except GGMLLibraryError:
        return False
    return True


_BACKENDS_READY = False


def ensure_backends() -> None:
    """Make sure the ggml backends are registered.

    Builds with statically linked backends (the default wheel, CUDA/Metal builds from CMAKE_ARGS)
    register them when libggml loads. Builds with ``GGML_BACKEND_DL`` register nothing until the
    backend libraries are loaded from the package's lib folder: do that only then, because loading
    a backend twice would register its devices twice.
    """
    global _BACKENDS_READY
    with _LOCK:
        if _BACKENDS_READY:
            return
        _BACKENDS_READY = True
    load("ggml")
    count = function("ggml_backend_dev_count")()
    if count == 0 and has_function("ggml_backend_load_all_from_path"):
        log.info("no ggml backend registered: loading them from %s", lib_dir())
        function("ggml_backend_load_all_from_path")(str(lib_dir()).encode())
