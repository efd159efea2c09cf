"""What the machine has: accelerators with their FREE memory, system RAM, CPU cores.

Accelerators come from ggml's backend device API in the libraries shipped with the installed
llama_cpp package (so we see exactly the devices llama.cpp will use), with NVML (nvidia-ml-py,
imported lazily) as a fallback for NVIDIA GPUs when the llama_cpp build has no CUDA backend.
On Apple silicon the Metal device shares system memory (``unified=True``).
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import subprocess
import sys
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol

from app.core import ggml_lib
from app.core.units import format_gb

if TYPE_CHECKING:
    from collections.abc import Sequence

    from app.core.forecast import MachineSpeeds

log = logging.getLogger(__name__)

GIB = 1024**3


@dataclass(frozen=True)
class Device:
    """One accelerator (never the CPU: system RAM is in :class:`HardwareInfo`)."""

    name: str  # llama.cpp device name: CUDA0, Metal, Vulkan0, ROCm0 …
    backend: str  # CUDA | ROCm | Metal | Vulkan | SYCL | CANN | OpenCL | … | CPU
    free_bytes: int
    total_bytes: int
    unified: bool = False  # shares system RAM (Apple silicon, integrated GPUs)
    description: str = ""  # e.g. "NVIDIA GeForce RTX 4090"
    bandwidth_gbs: float | None = None  # memory bandwidth if known (speed estimates only)
    endpoint: str = ""  # a compute server's "host:port" (llama.cpp RPC); "" = this machine
    rtt_s: float = 0.0  # a compute server's network round trip, measured when it was registered

    @property
    def label(self) -> str:
        return self.description or self.name

    @property
    def is_remote(self) -> bool:
        return bool(self.endpoint)


@dataclass(frozen=True)
class HardwareInfo:
    devices: tuple[Device, ...]  # accelerators llama.cpp can offload to (empty: CPU only)
    ram_total_bytes: int
    ram_available_bytes: int
    physical_cores: int
    logical_cores: int
    cpu_name: str = ""
    ram_bandwidth_gbs: float | None = None
    notes: tuple[str, ...] = field(default=())
    speeds: MachineSpeeds | None = None  # the measured probe (app/core/forecast.py), when cached

    @property
    def cpu_only(self) -> bool:
        return not self.devices

    @property
    def local_devices(self) -> tuple[Device, ...]:
        """This machine's own accelerators (not the compute servers')."""
        return tuple(d for d in self.devices if not d.endpoint)

    @property
    def remote_devices(self) -> tuple[Device, ...]:
        return tuple(d for d in self.devices if d.endpoint)


def with_remote_devices(info: HardwareInfo, remote: Sequence[Device]) -> HardwareInfo:
    """``info`` with the compute servers' devices, first: llama.cpp lists them before this
    machine's GPUs (app/core/engine/rpc.py ``device_array``), and layers go in that order."""
    return replace(info, devices=(*remote, *info.local_devices))


class HardwareProbe(Protocol):
    def probe(self) -> HardwareInfo: ...


# --------------------------------------------------------------------------------------------
# RAM and cores


def ram_bytes() -> tuple[int, int]:
    """(total, available) system memory in bytes."""
    if sys.platform.startswith("linux"):
        try:
            values: dict[str, int] = {}
            with open("/proc/meminfo", encoding="ascii") as fh:
                for line in fh:
                    key, _, rest = line.partition(":")
                    values[key] = int(rest.split()[0]) * 1024
            total = values["MemTotal"]
            available = values.get("MemAvailable", values.get("MemFree", 0) + values.get("Cached", 0))
            return total, available
        except (OSError, KeyError, ValueError, IndexError):
            log.debug("could not read /proc/meminfo", exc_info=True)
    if sys.platform == "win32":
        return _ram_windows()
    if sys.platform == "darwin":
        return _ram_macos()
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        return os.sysconf("SC_PHYS_PAGES") * page, os.sysconf("SC_AVPHYS_PAGES") * page
    except (ValueError, OSError, AttributeError):
        return 0, 0


def _ram_windows() -> tuple[int, int]:
    class MemoryStatusEx(ctypes.Structure):
        _fields_ = [
            ("dwLength", ctypes.c_ulong),
            ("dwMemoryLoad", ctypes.c_ulong),
            ("ullTotalPhys", ctypes.c_ulonglong),
            ("ullAvailPhys", ctypes.c_ulonglong),
            ("ullTotalPageFile", ctypes.c_ulonglong),
            ("ullAvailPageFile", ctypes.c_ulonglong),
            ("ullTotalVirtual", ctypes.c_ulonglong),
            ("ullAvailVirtual", ctypes.c_ulonglong),
            ("sullAvailExtendedVirtual", ctypes.c_ulonglong),
        ]

    status = MemoryStatusEx()
    status.dwLength = ctypes.sizeof(MemoryStatusEx)
    # (the platform test lets type checkers on other systems skip windll, which only Windows has)
    if sys.platform == "win32" and ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(status)):
        return int(status.ullTotalPhys), int(status.ullAvailPhys)
    return 0, 0


def _sysctl(name: str) -> str:
    try:
        return subprocess.run(
            ["/usr/sbin/sysctl", "-n", name], capture_output=True, text=True, timeout=2, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _ram_macos() -> tuple[int, int]:
    total = int(_sysctl("hw.memsize") or 0)
    available = total
    try:
        out = subprocess.run(
            ["/usr/bin/vm_stat"], capture_output=True, text=True, timeout=2, check=True
        ).stdout
        page = int(_sysctl("hw.pagesize") or 16384)
        pages = {}
        for line in out.splitlines()[1:]:
            key, _, value = line.partition(":")
            pages[key.strip()] = int(value.strip().rstrip(".") or 0)
        free = pages.get("Pages free", 0) + pages.get("Pages inactive", 0) + pages.get("Pages purgeable", 0)
        available = free * page or total
    except (OSError, subprocess.SubprocessError, ValueError):
        pass
    return total, available


def describe_hardware(hardware: HardwareInfo) -> list[str]:
    """For people: one line per GPU (free of total memory), then RAM (available of total) and cores.
    The welcome page and the model manager show these same lines."""
    lines = []
    for d in hardware.devices:
        shared = " (shared with the CPU)" if d.unified else ""
        lines.append(f"{d.label}: {format_gb(d.free_bytes)} free of {format_gb(d.total_bytes)}{shared}")
    if not hardware.local_devices and hardware.devices:
        lines.append("No GPU on this computer that llama.cpp can use")
    if not hardware.devices:
        lines.append("No GPU that llama.cpp can use: Scout would run on the CPU only")
    lines.append(
        f"RAM: {format_gb(hardware.ram_available_bytes)} available of {format_gb(hardware.ram_total_bytes)}"
        f" · {hardware.physical_cores} CPU cores"
    )
    return lines


def physical_cores() -> int:
    """Physical cores (llama.cpp generates fastest with one thread per physical core)."""
    if sys.platform.startswith("linux"):
        try:
            cores: set[tuple[str, str]] = set()
            physical = ""
            with open("/proc/cpuinfo", encoding="utf-8") as fh:
                for line in fh:
                    if line.startswith("physical id"):
                        physical = line.split(":", 1)[1].strip()
                    elif line.startswith("core id"):
                        cores.add((physical, line.split(":", 1)[1].strip()))
            if cores:
                return min(len(cores), os.cpu_count() or len(cores))
        except OSError:
            pass
    elif sys.platform == "darwin":
        value = _sysctl("hw.perflevel0.physicalcpu") or _sysctl("hw.physicalcpu")
        if value.isdigit():
            return int(value)
    logical = os.cpu_count() or 1
    return max(1, logical // 2) if logical >= 4 else logical


def _cpu_name() -> str:
    if sys.platform.startswith("linux"):
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as fh:
                for line in fh:
                    if line.startswith("model name"):
                        return line.split(":", 1)[1].strip()
        except OSError:
            pass
    if sys.platform == "darwin":
        return _sysctl("machdep.cpu.brand_string")
    return platform.processor()


# --------------------------------------------------------------------------------------------
# Accelerators


def _backend_name(reg_name: str, dev_name: str) -> str:
    text = (reg_name or dev_name).upper()
    for key, label in (
        ("CUDA", "CUDA"),
        ("ROCM", "ROCm"),
        ("HIP", "ROCm"),
        ("MTL", "Metal"),
        ("METAL", "Metal"),
        ("VULKAN", "Vulkan"),
        ("SYCL", "SYCL"),
        ("CANN", "CANN"),
        ("OPENCL", "OpenCL"),
        ("MUSA", "MUSA"),
        ("RPC", "RPC"),
    ):
        if key in text:
            return label
    return reg_name or dev_name


def ggml_devices() -> list[Device]:
    """GPUs/iGPUs registered in the llama_cpp package's ggml (CPU and accel devices skipped)."""
    ggml_lib.ensure_backends()
    f = ggml_lib.function
    devices = []
    for i in range(f("ggml_backend_dev_count")()):
        dev = f("ggml_backend_dev_get")(i)
        kind = f("ggml_backend_dev_type")(dev)
        if kind not in (ggml_lib.DEV_TYPE_GPU, ggml_lib.DEV_TYPE_IGPU):
            continue
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        f("ggml_backend_dev_memory")(dev, ctypes.byref(free), ctypes.byref(total))
        name = (f("ggml_backend_dev_name")(dev) or b"").decode(errors="replace")
        description = (f("ggml_backend_dev_description")(dev) or b"").decode(errors="replace")
        reg = f("ggml_backend_dev_backend_reg")(dev)
        reg_name = (f("ggml_backend_reg_name")(reg) or b"").decode(errors="replace") if reg else ""
        backend = _backend_name(reg_name, name)
        unified = kind == ggml_lib.DEV_TYPE_IGPU or backend == "Metal"
        devices.append(
            Device(
                name=name,
                backend=backend,
                free_bytes=int(free.value),
                total_bytes=int(total.value),
                unified=unified,
                description=description,
                bandwidth_gbs=guess_bandwidth_gbs(description or name),
            )
        )
    return devices


def nvml_devices() -> list[Device]:
    """NVIDIA GPUs through NVML (nvidia-ml-py), if it is installed and a driver answers."""
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except Exception:
        log.debug("NVML unavailable", exc_info=True)
        return []
    devices = []
    try:
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            raw = pynvml.nvmlDeviceGetName(handle)
            name = raw.decode() if isinstance(raw, bytes) else str(raw)
            devices.append(
                Device(
                    name=f"CUDA{i}",
                    backend="CUDA",
                    free_bytes=int(memory.free),
                    total_bytes=int(memory.total),
                    description=name,
                    bandwidth_gbs=guess_bandwidth_gbs(name),
                )
            )
    except Exception:
        log.debug("NVML query failed", exc_info=True)
        return []
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            log.debug("nvmlShutdown failed", exc_info=True)
    return devices


# Memory bandwidth, GB/s, by a name fragment: only for the labelled speed estimate.
_BANDWIDTH = (
    ("H200", 4800.0), ("H100", 3350.0), ("A100", 2039.0), ("L40", 864.0), ("A6000", 768.0),
    ("5090", 1792.0), ("4090", 1008.0), ("4080", 717.0), ("4070 TI", 504.0), ("4070", 504.0),
    ("4060 TI", 288.0), ("4060", 272.0), ("3090", 936.0), ("3080", 760.0), ("3070", 448.0),
    ("3060", 360.0), ("2080", 448.0), ("7900 XTX", 960.0), ("7900", 800.0), ("MI300", 5300.0),
    ("M1 ULTRA", 800.0), ("M2 ULTRA", 800.0), ("M3 ULTRA", 819.0), ("M4 MAX", 546.0),
    ("M3 MAX", 400.0), ("M2 MAX", 400.0), ("M1 MAX", 400.0), ("M4 PRO", 273.0), ("PRO", 200.0),
    ("8060S", 256.0), ("STRIX HALO", 256.0),
)  # fmt: skip


def guess_bandwidth_gbs(name: str) -> float | None:
    upper = name.upper()
    for key, value in _BANDWIDTH:
        if key in upper:
            return value
    return None


class SystemHardware:
    """The real probe: ggml devices, NVML fallback, RAM, cores. Never raises."""

    def probe(self) -> HardwareInfo:
        notes: list[str] = []
        devices: list[Device] = []
        try:
            devices = ggml_devices()
        except (ggml_lib.GGMLLibraryError, OSError) as exc:
            notes.append(f"llama.cpp devices unavailable: {exc}")
            log.warning("ggml device query failed: %s", exc)
        if not any(d.backend == "CUDA" for d in devices):
            nvidia = nvml_devices()
            if nvidia:
                notes.append(
                    "NVIDIA GPU found by NVML, but this llama-cpp-python build has no CUDA backend: "
                    'reinstall it with CMAKE_ARGS="-DGGML_CUDA=on" to use the GPU.'
                )
                log.info("NVML sees %d GPU(s) that llama.cpp does not", len(nvidia))
        total, available = ram_bytes()
        if sys.platform == "darwin" and platform.machine() == "arm64":
            devices = [
                Device(d.name, d.backend, d.free_bytes, d.total_bytes, True, d.description, d.bandwidth_gbs)
                for d in devices
            ]
        info = HardwareInfo(
            devices=tuple(devices),
            ram_total_bytes=total,
            ram_available_bytes=available,
            physical_cores=physical_cores(),
            logical_cores=os.cpu_count() or 1,
            cpu_name=_cpu_name(),
            notes=tuple(notes),
        )
        from app.core import forecast

        cache = forecast.default_cache()
        if cache is not None:
            info = replace(info, speeds=cache.load(forecast.fingerprint(info)))
        return info


class SimulatedHardware:
    """Given figures, for tests and previews (GPUs cannot be conjured on a CI box)."""

    def __init__(
        self,
        devices: Sequence[Device] = (),
        *,
        ram_total_gb: float = 64,
        ram_available_gb: float | None = None,
        physical_cores: int = 8,
        ram_bandwidth_gbs: float | None = 60.0,
    ) -> None:
        self._info = HardwareInfo(
            devices=tuple(devices),
            ram_total_bytes=int(ram_total_gb * GIB),
            ram_available_bytes=int(
                (ram_available_gb if ram_available_gb is not None else ram_total_gb) * GIB
            ),
            physical_cores=physical_cores,
            logical_cores=physical_cores * 2,
            cpu_name="simulated CPU",
            ram_bandwidth_gbs=ram_bandwidth_gbs,
        )

    def probe(self) -> HardwareInfo:
        return self._info

    @classmethod
    def nvidia(cls, vram_gb: float, ram_gb: float = 64, *, name: str = "NVIDIA GeForce RTX 4090", n: int = 1,
               free_fraction: float = 1.0, bandwidth_gbs: float = 1008.0) -> SimulatedHardware:  # fmt: skip
        gpus = [
            Device(
                f"CUDA{i}",
                "CUDA",
                int(vram_gb * GIB * free_fraction),
                int(vram_gb * GIB),
                False,
                name,
                bandwidth_gbs,
            )
            for i in range(n)
        ]
        return cls(gpus, ram_total_gb=ram_gb)

    @classmethod
    def apple(cls, unified_gb: float, *, name: str = "Apple M3 Max") -> SimulatedHardware:
        # Metal's recommendedMaxWorkingSetSize is about 3/4 of RAM on these machines.
        gpu = Device(
            "Metal", "Metal", int(unified_gb * GIB * 0.75), int(unified_gb * GIB * 0.75), True, name, 400.0
        )
        return cls(
            [gpu], ram_total_gb=unified_gb, ram_available_gb=unified_gb * 0.85, ram_bandwidth_gbs=400.0
        )

    @classmethod
    def cpu_only(cls, ram_gb: float) -> SimulatedHardware:
        return cls([], ram_total_gb=ram_gb)
