"""Keeping a long session's memory and pauses flat: the C heap and Python's garbage collector.

Measured with ``bench/soak.py`` on the tiny model (2-core machine): after 8–15 minutes of chat,
21–24 MiB of the app's ~170 MiB RSS was memory glibc held free, and each of Python's full
(generation-2) collections paused the GUI thread for ~50 ms idle, ~100 ms with inference running,
walking ~70k objects that almost all live as long as the app (Qt wrappers, modules, the model's
Python side) — the soak's worst stalls.
"""

from __future__ import annotations

import ctypes
import functools
import gc
import sys
from typing import Any


@functools.cache
def _malloc_trim() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL(None).malloc_trim  # glibc; musl has none
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def release_free_heap() -> bool:
    """Give the memory the C allocator holds free back to the OS (glibc's ``malloc_trim(0)``).

    glibc keeps freed memory in its heaps for reuse, and after big transient buffers (a prompt
    evaluation, a saved KV state, a rendered conversation) a long session's RSS creeps up with
    memory nobody uses: after 15 minutes of chat on the tiny model, 24 MiB of the app's 171 MiB
    were free heap (bench/soak.py). Takes a few milliseconds; False where there is no glibc.
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def freeze_long_lived() -> int:
    """Move every object alive now out of the garbage collector's reach (``gc.freeze``), so later
    full collections walk only what was made since; call it once start-up or a model load is
    done. Frozen objects are still freed by reference counting; only a reference cycle made of
    them and dropped later would stay. Returns the number of objects frozen in all."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
