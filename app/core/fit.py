"""Does this build fit this machine: the one answer every screen shows.

The model manager's badges, the welcome page's recommendation and the plan panel all ask
:func:`assess_build` (a manifest entry, not on disk: Scout's real tensor layout with the build's
quantization), :func:`assess_file` (a GGUF on disk: its header) or :func:`fit_of_plan` (a plan in
hand). Each answer is the planner's plan (:func:`app.core.planner.make_plan`) against the hardware
probe's *free* memory, summed up as a :class:`Fit`: the verdict, a short label, one sentence and the
memory figure. Figures are written with :mod:`app.core.units` (GB = 10^9 bytes).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.core.planner import VERDICT_NO, make_plan
from app.core.units import format_context, format_gb

if TYPE_CHECKING:
    from app.core.gguf_info import GGUFInfo
    from app.core.hardware import HardwareInfo
    from app.core.manifest import Build
    from app.core.planner import Plan


@dataclass(frozen=True)
class Fit:
    """The planner's answer for one model on one machine."""

    plan: Plan

    @property
    def verdict(self) -> str:
        """One of ``planner.VERDICT_*`` (``VERDICT_NO`` whenever it does not fit)."""
        return self.plan.verdict if self.plan.fits else VERDICT_NO

    @property
    def fits(self) -> bool:
        return self.plan.fits

    @property
    def memory_bytes(self) -> int:
        """RAM + GPU memory the plan needs: weights, KV cache, compute buffers, projector, app."""
        return self.plan.ram.total + self.plan.vram_bytes

    @property
    def label(self) -> str:
        """Badge text (:attr:`app.core.planner.Plan.label`)."""
        return self.plan.label

    @property
    def sentence(self) -> str:
        """One sentence for people: the verdict, the context and the memory it needs here."""
        plan = self.plan
        need = f"needs about {format_gb(self.memory_bytes)} of RAM and GPU memory together"
        if not plan.fits:
            return f"{self.label}; at the smallest setting it {need}."
        return f"{self.label}: {format_context(plan.n_ctx)} context, {need}."


def fit_of_plan(plan: Plan) -> Fit:
    return Fit(plan)


def assess_model(info: GGUFInfo, hardware: HardwareInfo, *, mmproj_bytes: int = 0) -> Fit:
    """The fit of a model whose header (or header-equivalent) is ``info``."""
    return Fit(make_plan(info, hardware, mmproj_bytes=mmproj_bytes))


def assess_file(model: Path, hardware: HardwareInfo, projector: Path | None = None) -> Fit:
    """The fit of a GGUF on disk (reads its header only). Raises GGUFError / OSError / ValueError
    for a file the planner cannot use."""
    from app.core.gguf_info import read_gguf_info

    info = read_gguf_info(model)
    return assess_model(info, hardware, mmproj_bytes=projector.stat().st_size if projector else 0)


def assess_build(build: Build, hardware: HardwareInfo) -> Fit:
    """The fit of a manifest build that need not be on disk (planned from its shape)."""
    projector = build.projector.size if build.projector and build.projector.size else 0
    return assess_model(build_shape_info(build), hardware, mmproj_bytes=projector)


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
