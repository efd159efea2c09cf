"""The C heap and the garbage collector over a long session (app.core.heap)."""

from __future__ import annotations

import gc
import os
import sys

import pytest

from app.core.heap import freeze_long_lived, release_free_heap


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_release_free_heap_returns_freed_memory_to_the_os() -> None:
    def rss() -> int:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    blocks = [bytes(1000) + bytes([i % 256]) for i in range(60_000)]  # ~60 MB of malloc'd chunks
    keep = bytes(1000) + b"!"  # allocated after them: free() alone cannot shrink the heap past it
    del blocks
    held = rss()
    assert release_free_heap()
    assert held - rss() > 30 * 2**20
    assert keep


def test_freeze_long_lived_takes_what_is_alive_out_of_full_collections() -> None:
    long_lived = [[i] for i in range(1000)]
    try:
        frozen = freeze_long_lived()
        assert frozen >= len(long_lived)
        tracked = {id(o) for o in gc.get_objects()}
        assert id(long_lived) not in tracked
        assert not any(id(inner) in tracked for inner in long_lived)
        made_later = [[0]]
        assert id(made_later) in {id(o) for o in gc.get_objects()}  # still collected as usual
    finally:
        gc.unfreeze()
