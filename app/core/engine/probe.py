"""Exact buffer sizes from llama.cpp itself: a dry-run load that allocates nothing.

``llama_model_params.no_alloc = true`` makes llama.cpp build the model and the context and reserve
the compute graph without allocating a byte, then log what it *would* allocate. In llama-cpp-python
0.3.36 the loading mode is ``load_mode`` (enum llama_load_mode; the ``use_mmap`` bool is gone):
the dry run MUST use ``LLAMA_LOAD_MODE_NONE`` and ``LLAMA_LAZY_MODE_OFF``, because with mmap
llama.cpp hits ``GGML_ASSERT(!ml.no_alloc)`` and aborts the whole process (it does not raise).

What the dry run reports:
* compute buffer per backend: exact (the same figure a real load logs);
* KV cache: the ``llama_kv_cache: size = …`` lines (the per-buffer lines read 0 in a dry run);
* model: llama_model_size() (the buffer lines read 0 in a dry run; the model buffers equal the
  GGUF's tensor bytes, which gguf_info has per tensor anyway).

This module imports llama_cpp (lazily): it is meant to be folded into engine.py, the designated
llama_cpp importer. It must run on the thread that owns llama.cpp (the inference worker's): the log
callback is process-wide; it is borrowed for the duration of a measurement and handed back.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.core.splits import split_parts

if TYPE_CHECKING:
    from app.core.types import LoadParams

log = logging.getLogger(__name__)

MIB = 1024 * 1024
KV_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8, "bf16": 30}
LLAMA_LOAD_MODE_NONE, LLAMA_LOAD_MODE_MMAP = 0, 1
LLAMA_LAZY_MODE_OFF = 0
LLAMA_FLASH_ATTN_TYPE_DISABLED, LLAMA_FLASH_ATTN_TYPE_ENABLED = 0, 1

_BUFFER_RE = re.compile(
    r"^\s*(?P<fn>\w+):\s+(?P<buf>\S+)\s+(?P<kind>model|KV|compute|output) buffer size"
    r"\s*=\s*(?P<mib>[\d.]+) MiB"
)
_KV_SIZE_RE = re.compile(
    r"^\s*llama_kv_cache: size\s*=\s*(?P<mib>[\d.]+) MiB \(\s*(?P<cells>\d+) cells,\s*(?P<layers>\d+) layers"
)


class ProbeError(RuntimeError):
    """The dry run failed (llama.cpp could not build the model or the context)."""


@dataclass(frozen=True)
class MeasuredBuffers:
    """Bytes per buffer type (``CPU``, ``CPU_Mapped``, ``CUDA0``, ``CUDA_Host`` …) as llama.cpp logs them.

    ``compute`` keeps one figure per backend buffer (``sched_reserve`` logs each once): with a GPU
    there are two, e.g. ``CUDA0`` (graph intermediates on the GPU, also with ``n_gpu_layers=0``
    because big matmuls are offloaded) and ``CUDA_Host`` (pinned RAM: inputs and the f16/f32
    attention masks, which grow with n_ctx). Never collapse them into one number.
    """

    model: dict[str, int] = field(default_factory=dict)
    kv: dict[str, int] = field(default_factory=dict)
    compute: dict[str, int] = field(default_factory=dict)
    output: dict[str, int] = field(default_factory=dict)
    kv_caches: tuple[tuple[int, int, int], ...] = ()  # (bytes, cells, layers) per KV cache (base, SWA)
    dry_run: bool = True
    seconds: float = 0.0

    @property
    def model_bytes(self) -> int:
        return sum(self.model.values())

    @property
    def kv_bytes(self) -> int:
        return sum(self.kv.values())

    @property
    def compute_bytes(self) -> int:
        return sum(self.compute.values())

    def compute_on(self, device_prefix: str) -> int:
        return sum(v for k, v in self.compute.items() if k.startswith(device_prefix))

    @property
    def host_compute_bytes(self) -> int:
        """Compute buffers in system RAM: ``CPU`` and the GPU backends' pinned ``*_Host`` buffers."""
        return sum(v for k, v in self.compute.items() if is_host_buffer(k))

    @property
    def device_compute(self) -> dict[str, int]:
        """Compute buffers in accelerator memory, by buffer name (``CUDA0``, ``MTL0``, ``Vulkan1`` …)."""
        return {k: v for k, v in self.compute.items() if not is_host_buffer(k)}


def is_host_buffer(name: str) -> bool:
    """Whether a llama.cpp buffer type lives in system RAM.

    ``CPU``, ``CPU_Mapped``, ``CPU_REPACK`` … and the pinned host buffers of the GPU backends
    (``CUDA_Host``, ``ROCm_Host``, ``Vulkan_Host``, ``SYCL_Host`` …) are RAM; ``CUDA0``, ``ROCm0``,
    ``Vulkan0``, ``MTL0`` … are the accelerator's own memory (on Apple silicon that is the same
    physical pool, which the planner accounts for separately).
    """
    return name.upper().startswith("CPU") or name.endswith("_Host")


def parse_buffer_lines(lines: list[str], *, dry_run: bool) -> MeasuredBuffers:
    """Turn llama.cpp's load log into :class:`MeasuredBuffers` (MiB with 2 decimals: ±5 KiB)."""
    model: dict[str, int] = {}
    kv: dict[str, int] = {}
    compute: dict[str, int] = {}
    output: dict[str, int] = {}
    caches: list[tuple[int, int, int]] = []
    last_kv_buffer = "CPU"
    for line in lines:
        m = _BUFFER_RE.match(line)
        if m:
            value = round(float(m["mib"]) * MIB)
            kind, buf = m["kind"], m["buf"]
            if kind == "model":
                model[buf] = model.get(buf, 0) + value
            elif kind == "KV":
                last_kv_buffer = buf
                if not dry_run:
                    kv[buf] = kv.get(buf, 0) + value
            elif kind == "compute":
                compute[buf] = value  # logged once per backend (sched_reserve)
            else:
                output[buf] = output.get(buf, 0) + value
            continue
        m = _KV_SIZE_RE.match(line)
        if m:
            size = round(float(m["mib"]) * MIB)
            caches.append((size, int(m["cells"]), int(m["layers"])))
            if dry_run:
                kv[last_kv_buffer] = kv.get(last_kv_buffer, 0) + size
    return MeasuredBuffers(model, kv, compute, output, tuple(caches), dry_run)


# --------------------------------------------------------------------------------------------

_LOCK = threading.Lock()
_CACHE: dict[tuple[Any, ...], MeasuredBuffers] = {}


def file_identity(path: Path) -> tuple[tuple[str, int, int], ...]:
    out = []
    for part in split_parts(Path(path)):
        st = part.stat()
        out.append((str(part.resolve()), st.st_size, st.st_mtime_ns))
    return tuple(out)


def _cache_key(params: LoadParams, dry_run: bool, repack: bool) -> tuple[Any, ...]:
    return (
        file_identity(params.model_path),
        params.n_ctx,
        params.flash_attn,
        params.type_k,
        params.type_v,
        params.swa_full,
        params.n_batch,
        params.n_ubatch,
        params.n_gpu_layers,
        params.offload_kqv,
        tuple((o.pattern, o.device) for o in params.tensor_overrides),
        params.compute_servers,
        params.tensor_split,
        dry_run,
        repack,
    )


def clear_cache() -> None:
    with _LOCK:
        _CACHE.clear()


def measure_buffers(params: LoadParams, *, dry_run: bool = True, repack: bool = True) -> MeasuredBuffers:
    """llama.cpp's own buffer sizes for ``params`` (cached per file identity and settings).

    ``dry_run=True`` (the default) allocates nothing: ~15 ms on the tiny model, ~1 s on Scout.
    ``dry_run=False`` really loads the model with mmap (the reference the tests compare against).
    ``repack=False`` disables the CPU weight repacking (extra buffer types), so a real load of a
    sparse file reads nothing.
    """
    key = _cache_key(params, dry_run, repack)
    with _LOCK:
        cached = _CACHE.get(key)
        if cached is not None:
            return cached
        result = _measure(params, dry_run=dry_run, repack=repack)
        _CACHE[key] = result
        return result


class _BuftOverride(ctypes.Structure):
    _fields_ = [("pattern", ctypes.c_char_p), ("buft", ctypes.c_void_p)]


def _buffer_type(device: str) -> int:
    from app.core import ggml_lib

    if device.upper() == "CPU":
        lib = ggml_lib.load("ggml-cpu")
        fn = lib.ggml_backend_cpu_buffer_type
        fn.argtypes, fn.restype = [], ctypes.c_void_p
        buft = fn()
    else:
        lib = ggml_lib.load("ggml")
        by_name = lib.ggml_backend_dev_by_name
        by_name.argtypes, by_name.restype = [ctypes.c_char_p], ctypes.c_void_p
        dev_buft = lib.ggml_backend_dev_buffer_type
        dev_buft.argtypes, dev_buft.restype = [ctypes.c_void_p], ctypes.c_void_p
        dev = by_name(device.encode())
        if not dev:
            raise ProbeError(f"no llama.cpp device named {device!r}")
        buft = dev_buft(dev)
    if not buft:
        raise ProbeError(f"no buffer type for device {device!r}")
    return int(buft)


@contextlib.contextmanager
def _captured_log(llama_cpp: Any) -> Any:
    """Collect llama.cpp's log lines while the block runs, through the engine's one log hub."""
    from app.core.engine.native import NATIVE_LOG, import_llama_cpp

    import_llama_cpp()  # installs the hub's callback once
    lines: list[str] = []

    def listener(_level: int, line: str) -> None:
        lines.append(line)

    with NATIVE_LOG._lock:
        NATIVE_LOG.listeners.append(listener)
    try:
        yield lines
    finally:
        with NATIVE_LOG._lock:
            NATIVE_LOG.listeners.remove(listener)


def _measure(params: LoadParams, *, dry_run: bool, repack: bool) -> MeasuredBuffers:
    import llama_cpp

    started = time.perf_counter()
    llama_cpp.llama_backend_init()
    mp = llama_cpp.llama_model_default_params()
    mp.n_gpu_layers = params.n_gpu_layers
    mp.use_extra_bufts = repack
    mp.lazy_mode = LLAMA_LAZY_MODE_OFF
    if dry_run:
        mp.no_alloc = True
        mp.load_mode = LLAMA_LOAD_MODE_NONE  # mmap + no_alloc = GGML_ASSERT abort
        if mp.load_mode != LLAMA_LOAD_MODE_NONE or not mp.no_alloc:  # pragma: no cover - defensive
            raise ProbeError("refusing a dry run with mmap on: llama.cpp would abort the process")
    else:
        mp.load_mode = LLAMA_LOAD_MODE_MMAP if params.use_mmap else LLAMA_LOAD_MODE_NONE
    keep_alive: list[Any] = []
    from app.core.engine import rpc

    if params.compute_servers or rpc.REGISTRY.used:
        # the devices the load will name: the compute servers' (registered in this process), and
        # never those of an earlier load's servers
        rpc.register_compute_servers(params.compute_servers)
        devices = rpc.REGISTRY.device_array(params.compute_servers)
        keep_alive.append(devices)
        mp.devices = ctypes.cast(devices, ctypes.c_void_p)
        if params.compute_servers and not params.n_gpu_layers:
            mp.n_gpu_layers = -1  # as the load does (LoadParams.compute_servers)
    if params.tensor_split:
        # llama.cpp reads one entry per device: room for its most (llama_max_devices), zero-padded
        split = (ctypes.c_float * max(16, len(params.tensor_split)))(*params.tensor_split)
        keep_alive.append(split)
        mp.tensor_split = ctypes.cast(split, ctypes.POINTER(ctypes.c_float))
    if params.tensor_overrides:
        patterns = [o.pattern.encode() for o in params.tensor_overrides]
        array = (_BuftOverride * (len(patterns) + 1))()
        for i, (override, pattern) in enumerate(zip(params.tensor_overrides, patterns, strict=True)):
            array[i].pattern = pattern
            array[i].buft = _buffer_type(override.device)
        keep_alive += [array, patterns]
        mp.tensor_buft_overrides = ctypes.cast(array, ctypes.c_void_p)

    cp = llama_cpp.llama_context_default_params()
    cp.n_ctx = params.n_ctx
    cp.n_batch = params.n_batch
    cp.n_ubatch = params.n_ubatch
    cp.n_seq_max = 1
    cp.flash_attn_type = (
        LLAMA_FLASH_ATTN_TYPE_ENABLED if params.flash_attn else LLAMA_FLASH_ATTN_TYPE_DISABLED
    )
    cp.type_k = KV_TYPES[params.type_k]
    cp.type_v = KV_TYPES[params.type_v]
    cp.swa_full = params.swa_full
    cp.offload_kqv = params.offload_kqv
    cp.n_threads = cp.n_threads_batch = 1

    with _captured_log(llama_cpp) as lines:
        model = llama_cpp.llama_model_load_from_file(str(params.model_path).encode(), mp)
        if not model:
            raise ProbeError(
                f"llama.cpp could not load {Path(params.model_path).name}: " + _last_error(lines)
            )
        try:
            model_size = int(llama_cpp.llama_model_size(model))
            ctx = llama_cpp.llama_init_from_model(model, cp)
            if not ctx:
                raise ProbeError("llama.cpp could not create a context: " + _last_error(lines))
            llama_cpp.llama_free(ctx)
        finally:
            llama_cpp.llama_model_free(model)
    del keep_alive
    measured = parse_buffer_lines(lines, dry_run=dry_run)
    model_bytes = measured.model if measured.model_bytes else {"total": model_size}
    result = MeasuredBuffers(
        model=model_bytes,
        kv=measured.kv,
        compute=measured.compute,
        output=measured.output,
        kv_caches=measured.kv_caches,
        dry_run=dry_run,
        seconds=time.perf_counter() - started,
    )
    log.debug(
        "%s %s: model %.1f MiB, KV %.1f MiB, compute %s (%.0f ms)",
        "dry run" if dry_run else "load",
        Path(params.model_path).name,
        result.model_bytes / MIB,
        result.kv_bytes / MIB,
        {k: round(v / MIB, 2) for k, v in result.compute.items()},
        result.seconds * 1000,
    )
    return result


TRIAL_N_CTX = 512  # the trial's dry run: enough to build the graph, cheap on any model


def try_model_file(path: Path) -> None:
    """Open ``path`` as llama.cpp would, allocating nothing: the header, a vocab-only load (the
    tokenizer and every key it reads) and a CPU dry run at a small context (the model's tensors
    against the file, its hyperparameters, the graph reservation). Meant for a throw-away process:
    a file that makes llama.cpp abort ends that process. Raises ModelLoadError / ProbeError when
    llama.cpp refuses the file with an error."""
    import llama_cpp

    from app.core.engine.errors import ModelLoadError
    from app.core.engine.files import check_model_file
    from app.core.gguf_info import GGUFError, read_gguf_info
    from app.core.types import LoadParams

    check_model_file(path)
    try:
        read_gguf_info(path)
    except GGUFError as exc:
        raise ModelLoadError(exc.message, exc.detail) from exc
    llama_cpp.llama_backend_init()
    mp = llama_cpp.llama_model_default_params()
    mp.vocab_only = True
    with _captured_log(llama_cpp) as lines:
        model = llama_cpp.llama_model_load_from_file(str(path).encode(), mp)
        if not model:
            raise ProbeError(f"llama.cpp could not read the vocabulary of {path.name}: " + _last_error(lines))
        llama_cpp.llama_model_free(model)
    measure_buffers(LoadParams(path, n_ctx=TRIAL_N_CTX, n_gpu_layers=0, n_threads=1))


def _last_error(lines: list[str]) -> str:
    for line in reversed(lines):
        low = line.lower()
        if "error" in low or "failed" in low:
            return line.strip()
    return "see the log for details"
