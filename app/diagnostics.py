"""What this machine and this install are: the ``scout-chat --check`` report, and build advice.

Everything here is plain data plus text formatting, shared by the command line (``--check``), the
Help → System information… dialog and the first-run welcome page. Nothing here imports
``llama_cpp`` (the llama.cpp libraries are read through :mod:`app.core.ggml_lib`, ctypes;
``--check`` starts an engine process, which does) and nothing touches the network but the compute
servers of Settings → Machines, when some are set. Building the report never raises: a part that
cannot be read says so in its line.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TextIO

from app import __version__
from app.core.units import format_context, format_gb

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from pathlib import Path

    from app.config import AppPaths
    from app.core.engine.rpc import ComputeDevice
    from app.core.fit import Fit
    from app.core.hardware import HardwareInfo, HardwareProbe
    from app.core.manifest import Build, Manifest
    from app.core.planner import Plan

log = logging.getLogger(__name__)

SECTION_VERSIONS = "Versions"
SECTION_LLAMA = "llama.cpp"
SECTION_DEVICES = "Devices"
SECTION_MEMORY = "Memory"
SECTION_DIRECTORIES = "Directories"
SECTION_MODELS = "Installed models"
SECTION_RECOMMENDATION = "Recommendation"
SECTION_MACHINES = "Machines (llama.cpp RPC)"
SECTIONS = (
    SECTION_VERSIONS,
    SECTION_LLAMA,
    SECTION_DEVICES,
    SECTION_MEMORY,
    SECTION_DIRECTORIES,
    SECTION_MODELS,
    SECTION_RECOMMENDATION,
    SECTION_MACHINES,
)


# --------------------------------------------------------------------------------------------
# Versions and llama.cpp


def package_version(*names: str) -> str:
    """The installed version of the first distribution found among ``names`` (or "not installed")."""
    for name in names:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            return importlib.metadata.version(name)
    return "not installed"


def qt_versions() -> tuple[str, str]:
    """(Qt runtime version, PySide6 version); importing QtCore is cheap and starts nothing."""
    try:
        import PySide6
        from PySide6.QtCore import qVersion
    except ImportError:
        return "not installed", "not installed"
    return str(qVersion()), str(PySide6.__version__)


def llama_system_info() -> str:
    """llama.cpp's ``llama_print_system_info()``: compiled-in backends and CPU features."""
    import ctypes

    from app.core import ggml_lib

    try:
        ggml_lib.ensure_backends()
        fn = ggml_lib.load("llama").llama_print_system_info
        fn.argtypes = []
        fn.restype = ctypes.c_char_p
        raw = fn() or b""
    except (ggml_lib.GGMLLibraryError, OSError, AttributeError) as exc:
        log.warning("llama.cpp system info unavailable: %s", exc)
        return f"unavailable ({exc})"
    return " ".join(raw.decode(errors="replace").split())


def registered_backends() -> list[str]:
    """Names of the ggml backends llama.cpp registered (CPU, CUDA, Metal, Vulkan …), in order."""
    from app.core import ggml_lib

    try:
        ggml_lib.ensure_backends()
        f = ggml_lib.function
        names: list[str] = []
        for i in range(f("ggml_backend_dev_count")()):
            dev = f("ggml_backend_dev_get")(i)
            reg = f("ggml_backend_dev_backend_reg")(dev)
            name = (f("ggml_backend_reg_name")(reg) or b"").decode(errors="replace") if reg else ""
            if name and name not in names:
                names.append(name)
        return names
    except (ggml_lib.GGMLLibraryError, OSError) as exc:
        log.warning("ggml backends unavailable: %s", exc)
        return []


def cpu_features(system_info: str) -> list[str]:
    """The CPU features llama.cpp reports as enabled (``AVX2 = 1``) in its system info."""
    features: list[str] = []
    for part in system_info.replace("|", " | ").split("|"):
        key, sep, value = part.partition("=")
        key = key.split(":")[-1].strip()
        if sep and value.strip() == "1" and key and key not in features:
            features.append(key)
    return features


# --------------------------------------------------------------------------------------------
# Build advice: every manifest build planned on the machine (no download needed)


@dataclass(frozen=True)
class BuildFit:
    """How one manifest build would run on the machine."""

    build: Build
    plan: Plan
    download_bytes: int

    @property
    def fits(self) -> bool:
        return self.plan.fits

    @property
    def fit(self) -> Fit:
        """The planner's verdict, label, sentence and memory figure (what every screen shows)."""
        from app.core.fit import fit_of_plan

        return fit_of_plan(self.plan)

    @property
    def memory_bytes(self) -> int:
        """RAM + VRAM the plan needs (the weights plus KV cache, compute buffers, margins' overhead)."""
        return self.fit.memory_bytes


@dataclass(frozen=True)
class Recommendation:
    """The build to suggest on this machine, or why there is none."""

    best: BuildFit | None
    fits: tuple[BuildFit, ...]  # every build, best first among those that fit, then the rest
    smallest: BuildFit | None  # the smallest build (what "too small" is measured against)
    machine_bytes: int  # RAM + free VRAM this machine offers

    @property
    def too_small(self) -> bool:
        return self.best is None

    @property
    def summary(self) -> str:
        """One or two sentences for people: the build and why, or what the machine lacks."""
        if self.best is not None:
            plan, fit = self.best.plan, self.best.fit
            return (
                f"Recommended for this machine: {self.best.build.display_name}, a "
                f"{format_gb(self.best.download_bytes)} download — {fit.label}, {format_context(plan.n_ctx)} "
                f"context, {plan.forecast.summary}."
            )
        if self.smallest is None:
            return "No Scout build is listed in the manifest."
        return (
            f"This machine is too small for Llama 4 Scout: the smallest workable build "
            f"({self.smallest.build.display_name}, {format_gb(self.smallest.download_bytes)} download) needs "
            f"about {format_gb(self.smallest.memory_bytes)} of RAM + VRAM, and this machine has "
            f"{format_gb(self.machine_bytes)} available."
        )


def plan_build(build: Build, hardware: HardwareInfo) -> BuildFit:
    from app.core.fit import assess_build
    from app.core.manifest import Manifest

    plan = assess_build(build, hardware).plan
    return BuildFit(build=build, plan=plan, download_bytes=Manifest.estimated_size(build))


def recommend_build(manifest: Manifest, hardware: HardwareInfo) -> Recommendation:
    """The highest-quality build that fits with at least its recommended context (the manifest's
    ``recommended.context``), else the highest-quality one that fits at all.

    Builds with the same quantization (several repos) are planned once and rank together, by the
    bits per weight of the first listed; among them the ``suggested`` one, then manifest order wins.
    """
    ordered = sorted(manifest.builds, key=lambda b: (not b.suggested, manifest.builds.index(b)))
    seen: dict[str, BuildFit] = {}
    group_bits: dict[str, float] = {}
    fits: list[BuildFit] = []
    for build in ordered:
        key = build.quantization.upper()
        if key in seen:
            first = seen[key]
            fit = BuildFit(build, first.plan, first.download_bytes)
        else:
            fit = plan_build(build, hardware)
            seen[key] = fit
            group_bits[key] = build.bits_per_weight
        fits.append(fit)

    def quality(fit: BuildFit) -> tuple[bool, bool, float]:
        comfortable = fit.fits and fit.plan.n_ctx >= fit.build.recommended.context
        return (comfortable, fit.fits, group_bits[fit.build.quantization.upper()])

    ranked = sorted(fits, key=quality, reverse=True)  # stable: suggested, then manifest order
    best = ranked[0] if ranked and ranked[0].fits else None
    smallest = min(fits, key=lambda f: (f.download_bytes, not f.build.suggested), default=None)
    vram = sum(d.free_bytes for d in hardware.devices if not d.unified)
    return Recommendation(
        best=best,
        fits=tuple(ranked),
        smallest=smallest,
        machine_bytes=hardware.ram_available_bytes + vram,
    )


# --------------------------------------------------------------------------------------------
# Installed models


@dataclass(frozen=True)
class InstalledModel:
    """A model found in the models directory (a manifest build's folder, or any other GGUF)."""

    name: str
    path: Path
    state: str  # installed | partial | corrupt | file (a GGUF that is not a manifest build)
    build_id: str = ""
    projector: Path | None = None
    plan_text: str = ""  # the planner's verdict + explanation, or why there is none

    @property
    def usable(self) -> bool:
        return self.state in ("installed", "file")


def _plan_text(model: Path, hardware: HardwareInfo | None) -> tuple[str, Path | None]:
    from app.core.gguf_info import GGUFError, find_projector, read_gguf_info
    from app.core.planner import make_plan

    projector = find_projector(model)
    if hardware is None:
        return "no plan (hardware not probed)", projector
    try:
        info = read_gguf_info(model)
    except (GGUFError, OSError) as exc:
        return f"unreadable: {exc}", projector
    mmproj = projector.stat().st_size if projector else 0
    try:
        plan = make_plan(info, hardware, mmproj_bytes=mmproj)
    except (ValueError, ZeroDivisionError) as exc:  # a header the planner cannot use
        return f"no plan: {exc}", projector
    return plan.explanation, projector


def installed_models(
    models_dir: Path,
    manifest: Manifest | None,
    hardware: HardwareInfo | None = None,
    *,
    extra: Sequence[Path] = (),
    with_plans: bool = True,
) -> list[InstalledModel]:
    """Manifest builds present in ``models_dir`` (with their verification state) and any other
    ``*.gguf`` model there (projectors and non-first split parts skipped), plus ``extra`` files
    (e.g. the last model opened from elsewhere). With ``with_plans``, each usable model gets the
    plan :func:`app.core.planner.make_plan` picks on ``hardware`` (fast: no dry run)."""
    from app.core.downloads import BuildState, Downloader
    from app.core.search_model import SEARCH_MODEL_SUFFIX
    from app.core.splits import is_first_part

    found: list[InstalledModel] = []
    claimed: set[Path] = set()
    if manifest is not None and models_dir.is_dir():
        downloader = Downloader(models_dir)
        for build in manifest.builds:
            state = downloader.state(build)
            if state is BuildState.ABSENT:
                continue
            folder = downloader.build_dir(build)
            claimed.add(folder.resolve())
            model = downloader.dest_path(build, build.files[0])
            entry = InstalledModel(build.display_name, model, state.value, build.id)
            if state is BuildState.INSTALLED and with_plans:
                text, projector = _plan_text(model, hardware)
                entry = replace(entry, projector=projector, plan_text=text)
            elif state is BuildState.PARTIAL:
                entry = replace(entry, plan_text="download unfinished (resume it in the model manager)")
            elif state is BuildState.CORRUPT:
                entry = replace(entry, plan_text="a file failed verification: download it again")
            found.append(entry)

    loose: list[Path] = []
    if models_dir.is_dir():
        for path in sorted(models_dir.rglob("*.gguf")):
            if any(parent.resolve() in claimed for parent in path.parents):
                continue
            loose.append(path)
    for path in extra:
        if path.is_file() and path.resolve() not in {p.resolve() for p in loose}:
            loose.append(path)
    for path in loose:
        name = path.name
        if name.lower().startswith("mmproj") or name.endswith(SEARCH_MODEL_SUFFIX):
            continue  # a vision projector, or the search model (not a chat model)
        if not is_first_part(name):
            continue
        entry = InstalledModel(name, path, "file")
        if with_plans:
            text, projector = _plan_text(path, hardware)
            entry = replace(entry, projector=projector, plan_text=text)
        found.append(entry)
    return found


# --------------------------------------------------------------------------------------------
# The report


@dataclass(frozen=True)
class Report:
    """Sections of (label, value) lines, in order."""

    sections: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def text(self) -> str:
        return format_report(self)


def free_disk(path: Path) -> int | None:
    """Free bytes on the disk that holds ``path`` (or its nearest existing parent); None if unknown."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return shutil.disk_usage(probe).free
    except OSError:
        return None


def device_lines(hardware: HardwareInfo) -> list[tuple[str, str]]:
    if not hardware.devices:
        return [("Accelerators", "CPU only (no GPU that llama.cpp can use)")]
    lines = []
    for d in hardware.devices:
        shared = ", shares system RAM" if d.unified else ""
        lines.append(
            (
                d.name,
                f"{d.label} ({d.backend}) — {format_gb(d.free_bytes)} free of "
                f"{format_gb(d.total_bytes)}{shared}",
            )
        )
    return lines


def _hardware_sections(
    probe: HardwareProbe, sections: dict[str, list[tuple[str, str]]]
) -> HardwareInfo | None:
    """Fill the Devices and Memory sections; the probed hardware, or None when the probe failed."""
    try:
        hardware = probe.probe()
    except Exception as exc:
        log.exception("hardware probe failed")
        sections[SECTION_DEVICES] = [("Accelerators", f"unavailable ({exc})")]
        sections[SECTION_MEMORY] = [("RAM", "unavailable")]
        return None
    sections[SECTION_DEVICES] = device_lines(hardware)
    sections[SECTION_MEMORY] = [
        (
            "RAM",
            f"{format_gb(hardware.ram_available_bytes)} available of {format_gb(hardware.ram_total_bytes)}",
        ),
        (
            "CPU",
            f"{hardware.cpu_name or 'unknown'} — {hardware.physical_cores} physical cores, "
            f"{hardware.logical_cores} logical",
        ),
    ]
    sections[SECTION_DEVICES] += [("Note", note) for note in hardware.notes]
    return hardware


def _model_lines(models: Sequence[InstalledModel]) -> list[tuple[str, str]]:
    lines: list[tuple[str, str]] = []
    for m in models:
        kind = f"{m.state}, build {m.build_id}" if m.build_id else "GGUF file"
        lines.append((m.name, f"{kind} — {m.path}"))
        if m.projector is not None:
            lines.append(("  vision projector", str(m.projector)))
        if m.plan_text:
            lines.append(("  plan", m.plan_text))
    return lines


def check_engine_process() -> str:
    """Start an engine process the way the app does (``spawn``; the packaged app: its own
    executable), ask it for its versions and end it: the line ``--check`` prints."""
    from app.core.engine.process import EngineProxy

    started = time.perf_counter()
    proxy = EngineProxy(watchdog_s=60.0)
    try:
        info = proxy.version()
        ready = time.perf_counter() - started
        speeds = _speed_probe(proxy)
    except Exception as exc:
        log.exception("the engine process did not start")
        return f"did not start: {getattr(exc, 'message', exc)}"
    finally:
        proxy.close()
    return (
        f"starts (spawn): pid {info['pid']}, llama-cpp-python {info['llama_cpp']}, "
        f"Python {info['python']}, ready in {ready:.1f} s{speeds}"
    )


def _speed_probe(proxy: Any) -> str:
    """The forecast's probe at the app's thread count, measured in ``proxy``'s engine process when
    this hardware has none cached (saved in the app's data folder): ``; speed probe: …``."""
    from app.core import forecast
    from app.core.hardware import SystemHardware

    hw = SystemHardware().probe()
    threads = max(1, hw.physical_cores)
    try:
        speeds = forecast.machine_speeds(
            hw, threads, forecast.default_cache(), measure_llama=proxy.measure_speeds
        )
    except Exception as exc:
        log.warning("the speed probe failed", exc_info=True)
        return f"; speed probe failed: {getattr(exc, 'message', exc)}"
    s = speeds.at_threads(threads)
    if s is None:
        return ""
    gpus = "".join(
        f", {g.name} {g.memory_gbs:,.0f} GB/s (upload {g.upload_gbs:.1f} GB/s)" for g in speeds.gpus
    )
    return (
        f"; speed probe ({threads} threads): {s.token_s * 1000:.2f} ms a token, weights streamed at "
        f"{s.read_gbs:.1f} GB/s from the cache and {s.ram_read_gbs:.1f} GB/s from RAM, prompts at "
        f"{s.gflops:.0f} GFLOP/s, RAM {s.ram_gbs:.1f} GB/s{gpus}"
    )


CHECK_STALL_S = 30.0  # the throw-away engine process's limit per question (``--check`` stays quick)


def machine_lines(
    compute_servers: Sequence[str],
    compute_devices: Callable[[Sequence[str]], Sequence[ComputeDevice]] | None = None,
) -> list[tuple[str, str]]:
    """llama.cpp's tools (llama-server, rpc-server, the RPC client) and the compute servers of
    Settings → Machines, each tried with one TCP connection (none is tried when none is set);
    those that answer are asked for the device they lend, its free and total memory and the round
    trip, through ``compute_devices`` (an engine process's
    :meth:`~app.core.engine.process.EngineProxy.compute_devices`), else through a throw-away engine
    process started here (only when a server answered). A server that cannot be used is a
    sentence, never an exception."""
    from app.core.engine.errors import ComputeServerError
    from app.core.engine.llama_tools import find_llama_tools, why_missing
    from app.core.engine.rpc import check_reachable, parse_endpoint

    tools = find_llama_tools()
    lines = [("llama.cpp tools", str(tools.bin_dir) if tools is not None else why_missing())]
    if not compute_servers:
        return [*lines, ("Compute servers", "none (Settings → Machines)")]
    states: dict[str, str] = {}
    answering: list[str] = []
    for text in compute_servers:
        endpoint = text
        try:
            endpoint = parse_endpoint(text)
            rtt = check_reachable(endpoint, timeout_s=2.0)
            states[endpoint] = f"answers (connects in {rtt * 1000:.2f} ms)"
            answering.append(endpoint)
        except ValueError as exc:
            states[endpoint] = str(exc)
        except ComputeServerError as exc:
            states[endpoint] = exc.message
    if answering:
        for endpoint, lent in _lent_devices(answering, compute_devices).items():
            states[endpoint] = f"answers — {lent}"
    return [*lines, *((f"Compute server {endpoint}", state) for endpoint, state in states.items())]


def _lent_devices(
    endpoints: Sequence[str],
    compute_devices: Callable[[Sequence[str]], Sequence[ComputeDevice]] | None,
) -> dict[str, str]:
    """For each endpoint that answered: what it lends (``RPC0: 4.3 GB free of 4.3 GB, round trip
    0.2 ms``), or why it could not be asked. One server at a time: one that stops the engine
    process (llama.cpp ends a process whose server goes away) costs only its own line."""
    proxy = None
    if compute_devices is None:
        from app.core.engine.process import EngineProxy

        proxy = EngineProxy(watchdog_s=CHECK_STALL_S, stall_s=CHECK_STALL_S)
        compute_devices = proxy.compute_devices
    found: dict[str, str] = {}
    try:
        for endpoint in endpoints:
            try:
                devices = compute_devices([endpoint])
            except Exception as exc:
                log.warning("compute server %s: its devices could not be read", endpoint, exc_info=True)
                found[endpoint] = f"its devices could not be read: {getattr(exc, 'message', exc)}"
                continue
            found[endpoint] = (
                "; ".join(
                    f"lends {d.name}: {format_gb(d.free_bytes)} free of {format_gb(d.total_bytes)}, "
                    f"round trip {d.rtt_s * 1000:.2f} ms"
                    for d in devices
                )
                or "it lends no device"
            )
    finally:
        if proxy is not None:
            proxy.close()
    return found


def collect_report(
    paths: AppPaths,
    *,
    hardware_probe: HardwareProbe | None = None,
    manifest: Manifest | None = None,
    extra_models: Sequence[Path] = (),
    free_space: Callable[[Path], int | None] = free_disk,
    engine_check: Callable[[], str] | None = None,
    compute_servers: Sequence[str] = (),
    compute_devices: Callable[[Sequence[str]], Sequence[ComputeDevice]] | None = None,
) -> Report:
    """Gather everything ``--check`` prints. Never raises for a missing part. ``engine_check``
    (``--check``: :func:`check_engine_process`) adds the engine process's line; ``compute_devices``
    asks the compute servers for their devices (:func:`machine_lines`)."""
    from app.core.hardware import SystemHardware
    from app.core.manifest import ManifestError, load_manifest

    sections: dict[str, list[tuple[str, str]]] = {}
    qt, pyside = qt_versions()
    sections[SECTION_VERSIONS] = [
        ("Scout Chat", __version__ + (" (packaged)" if getattr(sys, "frozen", False) else "")),
        ("Python", f"{platform.python_version()} ({platform.python_implementation()}, {sys.executable})"),
        ("OS", f"{platform.system()} {platform.release()} ({platform.machine()})"),
        ("Qt", qt),
        ("PySide6", pyside),
        ("llama-cpp-python", package_version("llama_cpp_python", "llama-cpp-python")),
    ]

    info = llama_system_info()
    backends = registered_backends()
    features = cpu_features(info)
    sections[SECTION_LLAMA] = [
        ("Backends", ", ".join(backends) if backends else "none registered"),
        ("CPU features", " ".join(features) if features else "none reported"),
        ("System info", info),
    ]
    if engine_check is not None:
        sections[SECTION_LLAMA].insert(0, ("Engine process", engine_check()))

    hardware = _hardware_sections(hardware_probe or SystemHardware(), sections)
    free = free_space(paths.models_dir)
    sections[SECTION_DIRECTORIES] = [
        ("Data", str(paths.data_dir)),
        (
            "Models",
            f"{paths.models_dir} ({format_gb(free) + ' free' if free is not None else 'free space unknown'})",
        ),
        ("Database", str(paths.database)),
        ("Settings", str(paths.settings_file)),
        ("Logs", str(paths.log_dir)),
        ("Cache", str(paths.cache_dir)),
    ]

    notes: list[str] = []
    if manifest is None:
        try:
            manifest = load_manifest()
        except (ManifestError, OSError) as exc:
            notes.append(f"model manifest unreadable: {exc}")
            manifest = None
    models = installed_models(paths.models_dir, manifest, hardware, extra=extra_models)
    sections[SECTION_MODELS] = _model_lines(models) or [("Models", f"none found in {paths.models_dir}")]

    if manifest is not None and hardware is not None:
        try:
            rec = recommend_build(manifest, hardware)
            sections[SECTION_RECOMMENDATION] = [("Build", rec.summary)]
        except Exception as exc:
            log.exception("build recommendation failed")
            sections[SECTION_RECOMMENDATION] = [("Build", f"unavailable ({exc})")]
    else:
        sections[SECTION_RECOMMENDATION] = [("Build", "unavailable (no manifest or hardware)")]
    sections[SECTION_MACHINES] = machine_lines(compute_servers, compute_devices)
    return Report(sections=sections, notes=tuple(notes))


def format_report(report: Report) -> str:
    """Plain text, one ``label: value`` per line under ``== Section ==`` headers (easy to paste)."""
    out = [f"Scout Chat {__version__} — system check"]
    for title, lines in report.sections.items():
        out.append("")
        out.append(f"== {title} ==")
        width = max((len(label) for label, _ in lines if not label.startswith(" ")), default=0)
        for label, value in lines:
            if label.startswith(" "):
                out.append(f"{label}: {value}")
            else:
                out.append(f"{label + ':':<{width + 1}} {value}")
    for note in report.notes:
        out.append(f"Note: {note}")
    return "\n".join(out) + "\n"


def run_check(paths: AppPaths, stream: TextIO | None = None, **kwargs: Any) -> int:
    """``scout-chat --check``: write the report to ``stream`` (stdout) and return 0. The engine
    check measures the forecast's probe when none is cached (``paths.speeds_file``): the plans
    below use it."""
    from app.core import forecast

    if forecast.default_cache() is None:
        forecast.set_default_cache(paths.speeds_file)
    kwargs.setdefault("engine_check", check_engine_process)
    text = format_report(collect_report(paths, **kwargs))
    out = stream or sys.stdout
    out.write(text)
    out.flush()
    return 0
