"""Hardware probing: on this GPU-less machine, CPU only, without errors."""

from __future__ import annotations

import os
import sys

import pytest

from app.core.hardware import (
    GIB,
    Device,
    SimulatedHardware,
    SystemHardware,
    nvml_devices,
    ram_bytes,
    release_free_heap,
)


def test_probe_here_is_cpu_only() -> None:
    info = SystemHardware().probe()
    assert info.cpu_only
    assert info.devices == ()
    assert info.ram_total_bytes > 1 * GIB
    assert 0 < info.ram_available_bytes <= info.ram_total_bytes
    assert 1 <= info.physical_cores <= info.logical_cores


def test_ram_figures() -> None:
    total, available = ram_bytes()
    assert total > available > 0


def test_nvml_absent_is_handled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    assert nvml_devices() == []
    assert SystemHardware().probe().cpu_only


def test_simulated_hardware() -> None:
    hw = SimulatedHardware.nvidia(24, 64, n=2).probe()
    assert [d.name for d in hw.devices] == ["CUDA0", "CUDA1"]
    assert all(d.free_bytes == 24 * GIB and not d.unified for d in hw.devices)
    apple = SimulatedHardware.apple(64).probe()
    assert apple.devices[0].unified
    assert apple.devices[0].backend == "Metal"
    custom = SimulatedHardware([Device("Vulkan0", "Vulkan", 4 * GIB, 8 * GIB)], ram_total_gb=16).probe()
    assert custom.devices[0].free_bytes == 4 * GIB


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
