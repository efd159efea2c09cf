"""Each GPU's memory bandwidth and host → device rate, measured through ggml (the forecast's probe).

The same calls llama.cpp makes: a buffer of the device's own buffer type
(``ggml_backend_dev_buffer_type`` → ``ggml_backend_buft_alloc_buffer``), two 1-D tensors placed in
it (``ggml_backend_tensor_alloc``), ``ggml_backend_tensor_set`` from ordinary (pageable) host
memory — how llama.cpp uploads a CPU weight for an offloaded prompt matmul — and
``ggml_backend_tensor_copy`` between the two tensors on the device (it reads and writes each byte:
2 × size per copy). Both are synchronous in ggml's backends (CUDA: the copy is followed by a
stream synchronisation). :func:`measure_device` works on any ggml device, the CPU's included,
which is how it is tested on a machine without a GPU.
"""

from __future__ import annotations

import ctypes
import logging
import time

from app.core import ggml_lib
from app.core.forecast import GB, GpuSpeeds

log = logging.getLogger(__name__)

GGML_TYPE_I8 = 24
STATUS_SUCCESS = 0


class DeviceProbeError(RuntimeError):
    pass


def measure_gpus(size: int = 256 * 1024**2, runs: int = 4) -> list[GpuSpeeds]:
    """Every GPU / integrated GPU ggml registers; a device that fails is left out (logged)."""
    ggml_lib.ensure_backends()
    f = ggml_lib.function
    out = []
    for i in range(f("ggml_backend_dev_count")()):
        dev = f("ggml_backend_dev_get")(i)
        if f("ggml_backend_dev_type")(dev) not in (ggml_lib.DEV_TYPE_GPU, ggml_lib.DEV_TYPE_IGPU):
            continue
        name = (f("ggml_backend_dev_name")(dev) or b"").decode(errors="replace")
        try:
            memory, upload = measure_device(dev, size, runs)
        except (DeviceProbeError, OSError, ggml_lib.GGMLLibraryError) as exc:
            log.warning("could not measure %s: %s", name, exc)
            continue
        out.append(GpuSpeeds(name, memory, upload))
    return out


def cpu_device() -> int:
    ggml_lib.ensure_backends()
    dev = ggml_lib.function("ggml_backend_dev_by_type")(ggml_lib.DEV_TYPE_CPU)
    if not dev:
        raise DeviceProbeError("ggml has no CPU device")
    return int(dev)


def measure_device(dev: int, size: int, runs: int = 4) -> tuple[float, float]:
    """(copy bandwidth on the device, host → device rate), GB/s, best of ``runs``."""
    import numpy as np

    f = ggml_lib.function
    buft = f("ggml_backend_dev_buffer_type")(dev)
    if not buft:
        raise DeviceProbeError("the device has no buffer type")
    buffer = f("ggml_backend_buft_alloc_buffer")(buft, 2 * size + 4096)
    if not buffer:
        raise DeviceProbeError(f"could not allocate {2 * size} bytes on the device")
    params = ggml_lib.GGMLInitParams(4 * f("ggml_tensor_overhead")(), None, True)
    ctx = f("ggml_init")(params)
    try:
        base = f("ggml_backend_buffer_get_base")(buffer)
        src = f("ggml_new_tensor_1d")(ctx, GGML_TYPE_I8, size)
        dst = f("ggml_new_tensor_1d")(ctx, GGML_TYPE_I8, size)
        # 2 * size + 4096 leaves room for the backend's alignment of the second tensor
        second = ctypes.c_void_p(base + size + 256 - (base + size) % 256)
        if f("ggml_backend_tensor_alloc")(buffer, src, ctypes.c_void_p(base)) != STATUS_SUCCESS:
            raise DeviceProbeError("could not place a tensor in the buffer")
        if f("ggml_backend_tensor_alloc")(buffer, dst, second) != STATUS_SUCCESS:
            raise DeviceProbeError("could not place a tensor in the buffer")
        host = np.full(size, 7, dtype=np.int8)
        pointer = host.ctypes.data_as(ctypes.c_void_p)
        upload = copy = 0.0
        for _ in range(runs):
            started = time.perf_counter()
            f("ggml_backend_tensor_set")(src, pointer, 0, size)
            upload = max(upload, size / (time.perf_counter() - started) / GB)
            started = time.perf_counter()
            f("ggml_backend_tensor_copy")(src, dst)
            copy = max(copy, 2 * size / (time.perf_counter() - started) / GB)
        check = np.zeros(16, dtype=np.int8)
        f("ggml_backend_tensor_get")(dst, check.ctypes.data_as(ctypes.c_void_p), size - 16, 16)
        if not (check == 7).all():
            raise DeviceProbeError("the copy on the device did not arrive")
        return copy, upload
    finally:
        f("ggml_free")(ctx)
        f("ggml_backend_buffer_free")(buffer)
