"""Hardware probing: on this GPU-less machine, CPU only, without errors."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from app.core.hardware import GIB, Device, SimulatedHardware, SystemHardware, nvml_devices, ram_bytes

if TYPE_CHECKING:
    import pytest


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
