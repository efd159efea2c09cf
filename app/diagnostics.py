"""What this machine and this install are: the ``scout-chat --check`` report, and build advice.

Everything here is plain data plus text formatting, shared by the command line (``--check``), the
Help → System information… dialog and the first-run welcome page. Nothing here imports
``llama_cpp`` (the llama.cpp libraries are read through :mod:`app.core.ggml_lib`, ctypes) and
nothing touches the network. Building the report never raises: a part that cannot be read says so
in its line.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import platform
import shutil
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from app import __version__

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from app.config import AppPaths
    from app.core.gguf_info import GGUFInfo
    from app.core.hardware import HardwareInfo, HardwareProbe
    from app.core.manifest import Build, Manifest
    from app.core.planner import Plan

log = logging.getLogger(__name__)

GB = 1e9

SECTION_VERSIONS = "Versions"
SECTION_LLAMA = "llama.cpp"
SECTION_DEVICES = "Devices"
SECTION_MEMORY = "Memory"
SECTION_DIRECTORIES = "Directories"
SECTION_MODELS = "Installed models"
SECTION_RECOMMENDATION = "Recommendation"
SECTIONS = (
    SECTION_VERSIONS,
    SECTION_LLAMA,
    SECTION_DEVICES,
    SECTION_MEMORY,
    SECTION_DIRECTORIES,
    SECTION_MODELS,
    SECTION_RECOMMENDATION,
)


def gb(n_bytes: float) -> str:
    return f"{n_bytes / GB:.1f} GB"


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


def build_shape_info(build: Build) -> GGUFInfo:
    """A header-equivalent :class:`GGUFInfo` for a manifest build that is not on disk.

    Scout's real tensor layout (:mod:`app.core.scout_shape`) with the build's quantization recipe;
    builds without a recipe there take the Q4_K_M layout scaled to the manifest's size.
    """
    from app.core import gguf_info
    from app.core.gguf_info import EXPERT_RE, LAYER_RE, TensorInfo
    from app.core.manifest import Manifest
    from app.core.scout_shape import _FTYPE, BUILDS, SCOUT, scout_tensors, tensor_bytes

    quant = build.quantization.upper()
    recipe = next((b for b in BUILDS if b.upper() == quant), "Q4_K_M")
    raw = [(name, tensor_bytes(ne, type_name), type_name) for name, ne, type_name in scout_tensors(recipe)]
    size = (Manifest.total_size(build) or 0) - (build.projector.size or 0 if build.projector else 0)
    target = size if size > 0 else build.approx_size_bytes
    scale = target / sum(n for _, n, _ in raw) if recipe.upper() != quant and target else 1.0
    tensors = []
    for name, n_bytes, type_name in raw:
        layer, expert = LAYER_RE.match(name), EXPERT_RE.match(name)
        tensors.append(
            TensorInfo(
                name,
                type_name.lower(),
                int(n_bytes * scale),
                int(layer.group(1)) if layer else None,
                expert is not None,
            )
        )
    a = "llama4."
    kv: dict[str, Any] = {
        "general.architecture": "llama4",
        "general.name": build.display_name,
        "general.file_type": _FTYPE.get(recipe),
        a + "block_count": SCOUT.n_layer,
        a + "embedding_length": SCOUT.n_embd,
        a + "attention.head_count": SCOUT.n_head,
        a + "attention.head_count_kv": SCOUT.n_head_kv,
        a + "attention.key_length": SCOUT.head_dim,
        a + "attention.value_length": SCOUT.head_dim,
        a + "expert_count": SCOUT.n_expert,
        a + "expert_used_count": SCOUT.n_expert_used,
        a + "expert_feed_forward_length": SCOUT.n_ff_exp,
        a + "context_length": SCOUT.context_length,
        a + "vocab_size": SCOUT.n_vocab,
    }
    path = Path(build.files[0].name)
    # _build_info turns header key/values + tensor sizes into GGUFInfo exactly as for a real file.
    info = gguf_info._build_info(path, (path,), kv, tensors, target, "manifest")
    if recipe.upper() != quant:
        info = replace(info, quant_name=build.quantization)
    return info


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
    def memory_bytes(self) -> int:
        """RAM + VRAM the plan needs (the weights plus KV cache, compute buffers, margins' overhead)."""
        return self.plan.ram.total + self.plan.vram_bytes


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
            plan = self.best.plan
            ctx = f"{plan.n_ctx // 1024}k" if plan.n_ctx % 1024 == 0 else f"{plan.n_ctx:,}"
            return (
                f"Recommended for this machine: {self.best.build.display_name}, a "
                f"{gb(self.best.download_bytes)} download — {plan.verdict}, {ctx} context, "
                f"about {plan.tokens_per_s_estimate:.0f} tokens/s (rough estimate)."
            )
        if self.smallest is None:
            return "No Scout build is listed in the manifest."
        need = self.smallest.memory_bytes
        return (
            f"This machine is too small for Llama 4 Scout: the smallest workable build "
            f"({self.smallest.build.display_name}, {gb(self.smallest.download_bytes)} download) needs "
            f"about {need / GB:.0f} GB of RAM + VRAM, and this machine has "
            f"{self.machine_bytes / GB:.0f} GB available."
        )


def plan_build(build: Build, hardware: HardwareInfo) -> BuildFit:
    from app.core.manifest import Manifest
    from app.core.planner import make_plan

    info = build_shape_info(build)
    projector = build.projector.size if build.projector and build.projector.size else 0
    plan = make_plan(info, hardware, mmproj_bytes=projector)
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
    from app.core.gguf_info import SPLIT_RE

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
        if name.lower().startswith("mmproj"):
            continue
        split = SPLIT_RE.match(name)
        if split and int(split.group("no")) != 1:
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
            (d.name, f"{d.label} ({d.backend}) — {gb(d.free_bytes)} free of {gb(d.total_bytes)}{shared}")
        )
    return lines


def collect_report(
    paths: AppPaths,
    *,
    hardware_probe: HardwareProbe | None = None,
    manifest: Manifest | None = None,
    extra_models: Sequence[Path] = (),
    free_space: Callable[[Path], int | None] = free_disk,
) -> Report:
    """Gather everything ``--check`` prints. Never raises for a missing part."""
    from app.core.hardware import SystemHardware
    from app.core.manifest import ManifestError, load_manifest

    sections: dict[str, list[tuple[str, str]]] = {}
    sections[SECTION_VERSIONS] = _version_lines()
    sections[SECTION_LLAMA] = _llama_lines()
    hardware = _add_hardware_sections(sections, hardware_probe or SystemHardware())
    sections[SECTION_DIRECTORIES] = _directory_lines(paths, free_space(paths.models_dir))

    notes: list[str] = []
    if manifest is None:
        try:
            manifest = load_manifest()
        except (ManifestError, OSError) as exc:
            notes.append(f"model manifest unreadable: {exc}")
            manifest = None
    models = installed_models(paths.models_dir, manifest, hardware, extra=extra_models)
    sections[SECTION_MODELS] = _model_lines(models) or [("Models", f"none found in {paths.models_dir}")]
    sections[SECTION_RECOMMENDATION] = _recommendation_lines(manifest, hardware)
    return Report(sections=sections, notes=tuple(notes))


def _version_lines() -> list[tuple[str, str]]:
    qt, pyside = qt_versions()
    return [
        ("Scout Chat", __version__ + (" (packaged)" if getattr(sys, "frozen", False) else "")),
        ("Python", f"{platform.python_version()} ({platform.python_implementation()}, {sys.executable})"),
        ("OS", f"{platform.system()} {platform.release()} ({platform.machine()})"),
        ("Qt", qt),
        ("PySide6", pyside),
        ("llama-cpp-python", package_version("llama_cpp_python", "llama-cpp-python")),
    ]


def _llama_lines() -> list[tuple[str, str]]:
    info = llama_system_info()
    backends = registered_backends()
    features = cpu_features(info)
    return [
        ("Backends", ", ".join(backends) if backends else "none registered"),
        ("CPU features", " ".join(features) if features else "none reported"),
        ("System info", info),
    ]


def _add_hardware_sections(
    sections: dict[str, list[tuple[str, str]]], probe: HardwareProbe
) -> HardwareInfo | None:
    """The devices and memory sections; the hardware probed (None when the probe failed)."""
    try:
        hardware = probe.probe()
    except Exception as exc:
        log.exception("hardware probe failed")
        sections[SECTION_DEVICES] = [("Accelerators", f"unavailable ({exc})")]
        sections[SECTION_MEMORY] = [("RAM", "unavailable")]
        return None
    sections[SECTION_DEVICES] = device_lines(hardware)
    sections[SECTION_MEMORY] = [
        ("RAM", f"{gb(hardware.ram_available_bytes)} available of {gb(hardware.ram_total_bytes)}"),
        (
            "CPU",
            f"{hardware.cpu_name or 'unknown'} — {hardware.physical_cores} physical cores, "
            f"{hardware.logical_cores} logical",
        ),
    ]
    sections[SECTION_DEVICES] += [("Note", note) for note in hardware.notes]
    return hardware


def _directory_lines(paths: AppPaths, free: int | None) -> list[tuple[str, str]]:
    return [
        ("Data", str(paths.data_dir)),
        (
            "Models",
            f"{paths.models_dir} ({gb(free) + ' free' if free is not None else 'free space unknown'})",
        ),
        ("Database", str(paths.database)),
        ("Settings", str(paths.settings_file)),
        ("Logs", str(paths.log_dir)),
        ("Cache", str(paths.cache_dir)),
    ]


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


def _recommendation_lines(manifest: Manifest | None, hardware: HardwareInfo | None) -> list[tuple[str, str]]:
    if manifest is None or hardware is None:
        return [("Build", "unavailable (no manifest or hardware)")]
    try:
        rec = recommend_build(manifest, hardware)
        return [("Build", rec.summary)]
    except Exception as exc:
        log.exception("build recommendation failed")
        return [("Build", f"unavailable ({exc})")]


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
    """``scout-chat --check``: write the report to ``stream`` (stdout) and return 0."""
    text = format_report(collect_report(paths, **kwargs))
    out = stream or sys.stdout
    out.write(text)
    out.flush()
    return 0
