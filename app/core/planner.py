"""Memory projection and offload plan: fit a (Scout-sized) MoE model to the machine's free memory.

Order of operations (llama.cpp's own ``--fit``, tools/fit-params/README.md, adapted):

1. everything on the GPU(s) if it fits with a safety margin;
2. else every layer's dense part (attention, norms, router, shared expert) on the GPU and the
   routed experts of the *fewest* layers in system RAM (tensor overrides ``blk\\.N\\.ffn_*_exps``);
3. else fewer GPU layers (llama.cpp offloads the output layer first, then the last repeating
   layers: n_gpu_layers = k puts k - 1 repeating layers + the output layer on the GPU);
4. else CPU only;
5. and if nothing fits, shrink the context down to a floor, then quantize the KV cache to q8_0
   (flash attention on), before giving up with "won't fit: needs X GB more".

The projection per device: weights (exact GGUF tensor bytes), KV cache (llama.cpp's cell counts:
n_ctx padded to 256 for global layers, ``min(n_ctx, chunk + n_ubatch)`` padded for Llama 4's
chunked layers with ``swa_full=False``), compute buffers (llama.cpp's own dry-run figures per
backend buffer when measured — see engine/probe.py — else labelled formulas), vision projector,
safety margins. RAM counts the CPU-resident weights too: mmapped weights must be resident to run at
speed.

How this follows llama.cpp 0.3.36 (vendor/llama.cpp/src):

* Layers (llama-model.cpp, load_tensors): ``n_gpu_layers`` counts the *output* layer as one of
  its layers: ``i_gpu_start = max(n_layer + 1 - n_gpu_layers, 0)``, and of the layers
  ``0 .. n_layer`` (index ``n_layer`` = output) those ``>= i_gpu_start`` go to the GPUs. So
  ``n_gpu_layers = k`` (1 ≤ k ≤ n_layer) puts the last ``k - 1`` repeating layers *and* the output
  layer on the GPU; ``k ≥ n_layer + 1`` puts everything there; the input embedding always stays on
  the CPU. With ``offload_kqv`` (always on here) a layer's KV cache lives on its layer's device.
* Compute buffers (``sched_reserve``): one per backend. With a GPU, ``CUDA0`` (the graph on the
  GPU) and ``CUDA_Host`` (pinned RAM: inputs and the attention masks, ``n_kv × n_ubatch`` f16 with
  flash attention, f32 without, one mask per KV cache — they grow with n_ctx). Even with
  ``n_gpu_layers = 0`` a GPU build keeps a GPU compute buffer: big matmuls are offloaded to the
  first GPU (``op_offload``), which copies the weights they use into it.
* Mapped weights (llama-model-loader.cpp, ``get_mapping_range``): with mmap, the CPU weights of a
  file become one ``CPU_Mapped`` buffer spanning the file range from the first to the last CPU
  tensor, GPU tensors in between included (they are read once at load, then never touched). The
  planner projects that range (:attr:`DeviceUsage.mapped`) but counts only the CPU tensors in the
  RAM budget: the rest is clean, file-backed page cache the kernel may drop under pressure without
  slowing generation. The plan's notes say so when the two differ.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from app.core.forecast import (
    REMOTE_DEVICE_GBS,
    Forecast,
    Placement,
    Pool,
    forecast,
    is_loopback,
    network_seconds,
    params_of,
    speed_figure,
)
from app.core.projection import (
    N_BATCH,
    N_UBATCH,
    Config,
    DeviceUsage,
    Projection,
    Projector,
    compute_model,
    expert_override_pattern,
    gpu_layers_repeating,
    kv_row_bytes,
    layer_devices,
)
from app.core.types import LoadParams, TensorOverride
from app.core.units import format_bytes, format_context, format_gb

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from pathlib import Path

    from app.core.engine.probe import MeasuredBuffers
    from app.core.gguf_info import GGUFInfo
    from app.core.hardware import Device, HardwareInfo

log = logging.getLogger(__name__)

KV_QUALITY = {"f32": 3, "f16": 3, "bf16": 3, "q8_0": 2, "q4_0": 1}
DEFAULT_N_CTX = 32768
N_CTX_FLOOR = 4096

UBATCH_CHOICES = (512, 1024, 2048, 4096)
UBATCH_GAIN = 1.03  # a larger micro-batch must forecast at least 3 % faster prompts to be chosen
GEN_LOSS_MAX = 0.05  # generation speed a larger micro-batch may cost (experts moved to RAM for it)
PLACEMENT_GAIN = 1.02  # a less-preferred layout (less on the GPU) must forecast 2 % faster answers
SAMPLES_PER_GROUP = 7  # layouts of each candidate group the speed forecast compares

VERDICT_FULL = "full GPU"
VERDICT_SPLIT = "split GPU+RAM"
VERDICT_CPU = "CPU only"
VERDICT_NO = "won't fit"
_VERDICT_LABELS = {
    VERDICT_FULL: "Fits fully on GPU",
    VERDICT_SPLIT: "Split GPU + RAM",
    VERDICT_CPU: "CPU only",
}
_POOLED_LABELS = {  # with compute servers (llama.cpp RPC): their devices count as the "GPUs"
    VERDICT_FULL: "Fits on the compute servers",
    VERDICT_SPLIT: "Split compute servers + this computer",
    VERDICT_CPU: "This computer only",
}


@dataclass(frozen=True)
class PlanOverrides:
    """What the user fixed in the Advanced section; None = let the planner choose."""

    n_gpu_layers: int | None = None  # 0..n_layer+1 (n_layer+1: the output layer too)
    n_cpu_moe: int | None = None  # experts of the first N GPU layers kept in RAM
    n_ctx: int | None = None  # fixed context size
    n_ctx_target: int | None = None  # preferred context size, shrunk to fit (None: 32k)
    kv_type: str | None = None  # f16 | q8_0 | q4_0 (K and V)
    flash_attn: bool | None = None
    n_ubatch: int | None = None  # prompt micro-batch (n_batch follows it)
    speculation: str | None = None  # "on" / "off" (None: "auto"; app/core/engine/speculation.py)


@dataclass(frozen=True)
class Plan:
    verdict: str  # VERDICT_*
    fits: bool
    shortfall_bytes: int  # > 0 only when it won't fit
    n_gpu_layers: int
    n_cpu_moe: int  # layers whose experts stay in RAM
    tensor_overrides: tuple[TensorOverride, ...]
    n_ctx: int
    type_k: str
    type_v: str
    flash_attn: bool
    swa_full: bool
    n_threads: int
    devices: tuple[DeviceUsage, ...]  # GPUs (may be empty)
    ram: DeviceUsage
    forecast: Forecast  # tokens/s and prompt tokens/s on this machine (app/core/forecast.py)
    compute_source: str  # "measured" (llama.cpp dry run) or "estimate" (formula)
    explanation: str
    n_layer: int
    plan_seconds: float = 0.0
    notes: tuple[str, ...] = field(default=())
    n_batch: int = N_BATCH
    n_ubatch: int = N_UBATCH
    # llama.cpp RPC: the compute servers' devices the plan spreads layers over (first in
    # ``devices``), and what reaching them adds to each generated token (in the forecast)
    remote_devices: tuple[Device, ...] = ()
    network_s_per_token: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.forecast.tokens_per_s

    @property
    def fits_text(self) -> str:
        """:attr:`label` to go inside a sentence: ``split GPU + RAM``, ``won't fit: needs 3.2 GB more``."""
        return self.label[:1].lower() + self.label[1:]

    @property
    def label(self) -> str:
        """The verdict for people, the same on every screen: ``Fits fully on GPU`` /
        ``Split GPU + RAM`` / ``CPU only`` / ``Won't fit: needs 3.2 GB more``."""
        if not self.fits:
            return f"Won't fit: needs {format_gb(self.shortfall_bytes)} more"
        if self.remote_devices and self.verdict in _POOLED_LABELS:
            return _POOLED_LABELS[self.verdict]
        return _VERDICT_LABELS.get(self.verdict, self.verdict)

    @property
    def vram_bytes(self) -> int:
        return sum(d.total for d in self.devices)

    def to_load_params(self, model_path: Path, mmproj_path: Path | None = None) -> LoadParams:
        return LoadParams(
            model_path=model_path,
            n_ctx=self.n_ctx,
            n_gpu_layers=self.n_gpu_layers,
            n_threads=self.n_threads,
            n_threads_batch=self.n_threads,
            n_batch=self.n_batch,
            n_ubatch=self.n_ubatch,
            flash_attn=self.flash_attn,
            type_k=self.type_k,
            type_v=self.type_v,
            swa_full=self.swa_full,
            use_mmap=True,
            offload_kqv=True,
            tensor_overrides=self.tensor_overrides,
            mmproj_path=mmproj_path,
        )


# --------------------------------------------------------------------------------------------


def _ctx_ladder(info: GGUFInfo, target: int) -> list[int]:
    limit = info.context_length or target
    target = max(256, min(target, limit))
    ladder = [target]
    n = target
    while n // 2 >= N_CTX_FLOOR:
        n //= 2
        ladder.append(n)
    if ladder[-1] > N_CTX_FLOOR and limit >= N_CTX_FLOOR:
        ladder.append(N_CTX_FLOOR)
    return ladder


def _search_ladder(info: GGUFInfo, o: PlanOverrides, has_gpu: bool) -> list[tuple[int, str, bool]]:
    """(n_ctx, kv type, flash attention) in order of preference.

    On a GPU flash attention is faster and saves memory. On the CPU, llama.cpp's flash-attention
    kernel is slower than its matrix-multiply attention (bench/attention.py, Scout's attention
    shape over a 4k-token cache: a follow-up prompt 3.0x, the next token 1.6x slower; q8_0 KV slower
    still), so a CPU-only plan leaves it off when the larger f32 attention buffers fit, at each
    context size, and turns it on before giving up context.
    """
    ctxs = [o.n_ctx] if o.n_ctx else _ctx_ladder(info, o.n_ctx_target or DEFAULT_N_CTX)
    preferred = [True] if has_gpu else [False, True]
    fa_order = [o.flash_attn] if o.flash_attn is not None else preferred
    steps: list[tuple[int, str, bool]] = []
    if o.kv_type and o.kv_type != "f16":
        steps += [(c, o.kv_type, True) for c in ctxs]  # a quantized V needs flash attention
    else:
        steps += [(c, "f16", fa) for c in ctxs for fa in fa_order]
        if not o.kv_type and o.flash_attn is not False:
            steps.append((ctxs[-1], "q8_0", True))
    return steps


def _candidates(n_layer: int, has_gpu: bool, o: PlanOverrides) -> list[list[tuple[int, int]]]:
    """Groups of (n_gpu_layers, n_cpu_moe), each group ordered best-first and monotone in memory."""
    full = n_layer + 1
    if o.n_gpu_layers is not None:
        g = max(0, min(o.n_gpu_layers, full)) if has_gpu else 0
        es = (
            [o.n_cpu_moe] if o.n_cpu_moe is not None else list(range(0, gpu_layers_repeating(n_layer, g) + 1))
        )
        return [[(g, max(0, min(e, n_layer))) for e in es]]
    if not has_gpu:
        return [[(0, 0)]]
    if o.n_cpu_moe is not None:
        e = max(0, min(o.n_cpu_moe, n_layer))
        return [[(g, e) for g in range(full, -1, -1)]]
    return [
        [(full, e) for e in range(0, n_layer + 1)],  # dense on GPU, experts of the fewest layers in RAM
        [(g, n_layer) for g in range(n_layer, -1, -1)],  # fewer GPU layers (their experts in RAM)
    ]


def _first_fit(proj: Projector, group: list[tuple[int, int]], ctx: int, kv: str, fa: bool) -> Config | None:
    """Binary search for the first candidate whose GPU part fits (GPU use falls along the group)."""
    lo, hi = 0, len(group)
    while lo < hi:
        mid = (lo + hi) // 2
        g, e = group[mid]
        if proj.project(Config(g, e, ctx, kv, fa)).gpu_fits:
            hi = mid
        else:
            lo = mid + 1
    if lo == len(group):
        return None
    g, e = group[lo]
    return Config(g, e, ctx, kv, fa)


def make_plan(
    info: GGUFInfo,
    hardware: HardwareInfo,
    overrides: PlanOverrides | None = None,
    *,
    measurements: Mapping[tuple[int, bool, str], MeasuredBuffers] | None = None,
    mmproj_bytes: int = 0,
    n_threads: int | None = None,
    max_ubatch: int = UBATCH_CHOICES[-1],
) -> Plan:
    """The best plan for ``info`` on ``hardware`` honouring ``overrides`` (``n_threads``: the
    user's thread count, for the forecast; None: the physical cores; ``max_ubatch``: the largest
    prompt micro-batch to consider).

    ``measurements`` maps (n_ctx, flash_attn, kv_type) to llama.cpp dry-run figures (see
    :func:`plan_with_dry_run`); configurations without one use the compute formula, scaled by the
    measured/formula ratio of a measured configuration when there is one.
    """
    started = time.perf_counter()
    o = overrides or PlanOverrides()
    compute_for = compute_model(info, hardware.devices, measurements or {})
    proj = Projector(info, hardware, mmproj_bytes=mmproj_bytes, compute_for=compute_for)
    groups = _candidates(info.n_layer, bool(hardware.devices), o)
    chosen: Config | None = None
    best_fail: tuple[int, Config] | None = None
    for ctx, kv, fa in _search_ladder(info, o, bool(hardware.devices)):
        for group in groups:
            cfg = _first_fit(proj, group, ctx, kv, fa)
            candidates = [cfg] if cfg is not None else [Config(*group[-1], ctx, kv, fa)]
            for c in candidates:
                p = proj.project(c)
                if p.fits:
                    chosen = c
                    break
                if best_fail is None or p.over < best_fail[0]:
                    best_fail = (p.over, c)
            if chosen:
                break
        if chosen:
            break
    fits = chosen is not None
    if chosen is None:
        assert best_fail is not None
        chosen = best_fail[1]
    threads = n_threads or max(1, hardware.physical_cores)
    ubatch = o.n_ubatch or N_UBATCH
    choice: _Choice | None = None
    if fits:
        choice = _fastest(info, hardware, proj, chosen, groups, threads, o.n_ubatch, max_ubatch)
        if choice is not None:
            chosen, ubatch = choice.picked.cfg, choice.picked.ubatch
    projection = with_ubatch(proj.project(chosen), info, ubatch)
    if o.n_ubatch is not None:
        fits = projection.fits
    source = compute_for(chosen.n_ctx, chosen.flash_attn, chosen.kv_type).source
    plan = _finish(info, hardware, proj, chosen, projection, fits, source, threads, ubatch)
    if choice is not None:
        reasons = choice.reasons(plan, info.n_layer)
        if reasons:
            why = " ".join(reasons)
            plan = replace(plan, notes=(*plan.notes, *reasons), explanation=f"{plan.explanation} {why}")
    plan = replace(plan, plan_seconds=time.perf_counter() - started)
    log.debug("plan for %s: %s in %.1f ms", info.path.name, plan.fits_text, plan.plan_seconds * 1000)
    return plan


def _finish(
    info: GGUFInfo,
    hw: HardwareInfo,
    proj: Projector,
    cfg: Config,
    p: Projection,
    fits: bool,
    source: str,
    threads: int | None = None,
    ubatch: int = N_UBATCH,
) -> Plan:
    n_layer = info.n_layer
    g = cfg.n_gpu_layers if hw.devices else 0
    e = min(cfg.n_cpu_moe, gpu_layers_repeating(n_layer, g))
    overrides: tuple[TensorOverride, ...] = ()
    if e > 0 and info.expert_bytes:
        layers = sorted(proj.expert_order(layer_devices(n_layer, g, hw.devices))[:e])
        overrides = (TensorOverride(expert_override_pattern(layers), "CPU"),)
    if not fits:
        verdict = VERDICT_NO
    elif g == 0:
        verdict = VERDICT_CPU
    elif g > n_layer and e == 0:
        verdict = VERDICT_FULL
    else:
        verdict = VERDICT_SPLIT
    n_threads = threads or max(1, hw.physical_cores)
    n_batch = max(N_BATCH, ubatch)
    placement = placement_of(info, hw, proj, cfg, n_threads, ubatch, n_batch)
    speed = forecast(info, placement, hw.speeds)
    network = sum(network_seconds(info, pool, 1) for pool in placement.pools)
    mapped = proj.mapped_bytes(cfg)
    p = replace(p, ram=replace(p.ram, mapped=mapped))
    notes: list[str] = []
    if mapped - p.ram.weights > max(1024**2, p.ram.weights // 20):
        notes.append(
            f"llama.cpp maps {format_bytes(mapped)} of the model file for the CPU weights (CPU_Mapped: the "
            "file range from the first to the last CPU tensor). The GPU tensors inside it are read "
            "once at load and stay only as page cache the system can reclaim, so the RAM figure "
            f"counts just the {format_bytes(p.ram.weights)} of weights the CPU uses."
        )
    if hw.devices and g == 0 and p.devices and p.devices[0].compute:
        notes.append(
            f"With no layer offloaded llama.cpp still uses the {p.devices[0].label} for prompt "
            f"processing (large matrix multiplications): {format_bytes(p.devices[0].compute)} of GPU memory."
        )
    plan = Plan(
        verdict=verdict,
        fits=fits,
        shortfall_bytes=0 if fits else p.over,
        n_gpu_layers=g,
        n_cpu_moe=e,
        tensor_overrides=overrides,
        n_ctx=cfg.n_ctx,
        type_k=cfg.kv_type,
        type_v=cfg.kv_type,
        flash_attn=cfg.flash_attn or cfg.kv_type != "f16",
        swa_full=False,
        n_threads=n_threads,
        devices=p.devices,
        ram=p.ram,
        forecast=speed,
        compute_source=source,
        explanation="",
        n_layer=n_layer,
        notes=tuple(notes),
        n_batch=n_batch,
        n_ubatch=ubatch,
        remote_devices=hw.remote_devices,
        network_s_per_token=network,
    )
    return replace(plan, explanation=explain(plan, info, hw))


def with_ubatch(p: Projection, info: GGUFInfo, ubatch: int) -> Projection:
    """The projection at micro-batch ``ubatch`` (the buffers above are for N_UBATCH): llama.cpp's
    compute buffers grow in proportion (activations, logits and masks are n_ubatch rows), and
    llama-cpp-python's logits array holds n_batch rows of the vocabulary."""
    if ubatch == N_UBATCH:
        return p
    factor = ubatch / N_UBATCH
    devices = tuple(replace(d, compute=int(d.compute * factor)) for d in p.devices)
    extra_logits = (max(N_BATCH, ubatch) - N_BATCH) * info.vocab_size * 4
    ram = replace(p.ram, compute=int(p.ram.compute * factor), other=p.ram.other + extra_logits)
    return Projection(devices, ram)


@dataclass(frozen=True)
class _Option:
    """One plan that fits: a layout, a prompt micro-batch and the forecast for them."""

    cfg: Config
    ubatch: int
    forecast: Forecast
    rank: int  # its place in the planner's order of preference (most on the GPU first)


@dataclass(frozen=True)
class _Choice:
    """The plans that fit at the context and KV cache the search reached, and the one picked."""

    options: tuple[_Option, ...]
    picked: _Option

    def first(self, ubatch: int | None = None) -> _Option | None:
        """The most-preferred fitting layout (at ``ubatch``; None: any), as the planner picked before
        it compared forecasts."""
        return min(
            (o for o in self.options if ubatch is None or o.ubatch == ubatch),
            key=lambda o: o.rank,
            default=None,
        )

    def reasons(self, plan: Plan, n_layer: int) -> list[str]:
        """Sentences for the plan's notes: why this micro-batch, why this layout."""
        out: list[str] = []
        picked = self.picked
        base = self.first(N_UBATCH)
        if picked.ubatch != N_UBATCH and base is not None:
            out.append(
                f"Prompts are read {picked.ubatch:,} tokens at a time (n_ubatch; llama.cpp's default is "
                f"{N_UBATCH}): with weights in system RAM, llama.cpp copies them to the GPU once per batch, "
                f"so a long document reads at ≈ {speed_figure(plan.forecast.prompt_tokens_per_s)} instead of "
                f"≈ {speed_figure(base.forecast.prompt_tokens_per_s)} tokens/s. Its larger compute buffers "
                "are counted above (Advanced → Prompt batch to choose another)."
            )
        usual = self.first(picked.ubatch)
        if (
            usual is not None
            and usual.cfg != picked.cfg
            and usual.rank < picked.rank
            and (picked.forecast.tokens_per_s > usual.forecast.tokens_per_s * PLACEMENT_GAIN)
        ):
            out.append(
                f"Of the layouts that fit, the speed forecast gives this one the fastest answers: "
                f"≈ {speed_figure(picked.forecast.tokens_per_s)} tok/s against "
                f"≈ {speed_figure(usual.forecast.tokens_per_s)} with {_layout(usual.cfg, n_layer)} "
                f"(this machine's {'measured' if plan.forecast.measured else 'assumed'} speeds)."
            )
        return out


def _layout(cfg: Config, n_layer: int) -> str:
    """``all layers on the GPU`` / ``24 GPU layers, experts of 10 layers in RAM`` (for a sentence)."""
    on_gpu = gpu_layers_repeating(n_layer, cfg.n_gpu_layers)
    if cfg.n_gpu_layers == 0:
        return "nothing on the GPU"
    where = (
        f"all {n_layer} layers on the GPU" if cfg.n_gpu_layers > n_layer else f"{on_gpu} layers on the GPU"
    )
    experts = min(cfg.n_cpu_moe, on_gpu)
    return where + (f", experts of {experts} layers in RAM" if experts else "")


def _in_ram(cfg: Config, n_layer: int) -> bool:
    """Whether a GPU layout keeps weights in system RAM (experts, or whole layers)."""
    return cfg.n_cpu_moe > 0 or cfg.n_gpu_layers <= n_layer


def _fitting_range(
    proj: Projector, info: GGUFInfo, group: list[tuple[int, int]], step: Config, ubatch: int
) -> tuple[int, int] | None:
    """First and last index of ``group`` that fit at micro-batch ``ubatch`` (GPU use falls and RAM
    use grows along a group, so the fitting ones are one stretch); None: none fits."""

    def project(i: int) -> Projection:
        g, e = group[i]
        return with_ubatch(proj.project(replace(step, n_gpu_layers=g, n_cpu_moe=e)), info, ubatch)

    lo, hi = 0, len(group)
    while lo < hi:
        mid = (lo + hi) // 2
        if project(mid).gpu_fits:
            hi = mid
        else:
            lo = mid + 1
    if lo == len(group) or not project(lo).fits:
        return None
    first, lo, hi = lo, lo, len(group) - 1
    while lo < hi:  # the last that still fits in RAM
        mid = (lo + hi + 1) // 2
        if project(mid).fits:
            lo = mid
        else:
            hi = mid - 1
    return first, lo


def _fastest(
    info: GGUFInfo,
    hw: HardwareInfo,
    proj: Projector,
    step: Config,
    groups: list[list[tuple[int, int]]],
    threads: int,
    fixed_ubatch: int | None,
    max_ubatch: int,
) -> _Choice | None:
    """Among the plans that fit at ``step``'s context and KV cache — each group's layouts (GPU layers,
    experts in RAM) × the prompt micro-batches — the one the speed forecast says is fastest: the
    best generation, then among those within GEN_LOSS_MAX of it the best prompts (within
    UBATCH_GAIN: the smaller micro-batch, the more on the GPU). Where everything fits on the GPU, a
    layout with weights in RAM competes only with faster answers (PLACEMENT_GAIN), never for
    prompts alone. A larger micro-batch than llama.cpp's
    default is tried only where weights stay in RAM on a GPU machine (llama.cpp uploads them once
    per micro-batch); it needs larger compute buffers, so fewer layouts fit with it.

    With compute servers (llama.cpp RPC) the layout stays the first that fits, the layers spread
    by free memory as the user pooled them; only the micro-batch is compared.

    Each group is sampled at up to SAMPLES_PER_GROUP evenly spaced layouts of its fitting stretch,
    both ends included: each step along a group moves one layer's like-sized weights, so the
    forecast changes by like-sized steps and its fastest is at (or next to) a sample."""
    n_layer = info.n_layer
    if fixed_ubatch is not None:
        ubatches: tuple[int, ...] = (fixed_ubatch,)
    elif hw.local_devices:
        ubatches = tuple(u for u in UBATCH_CHOICES if u <= max(N_UBATCH, max_ubatch))
    else:
        ubatches = (N_UBATCH,)
    options: list[_Option] = []
    placements: dict[tuple[int, int], Placement] = {}
    params = params_of(info)
    offsets = [sum(len(g) for g in groups[:k]) for k in range(len(groups))]
    pooled = bool(hw.remote_devices)
    for u in ubatches:
        for group, rank_base in zip(groups, offsets, strict=True):
            found = _fitting_range(proj, info, group, step, u)
            if found is None:
                continue
            first, last = found
            count = min(SAMPLES_PER_GROUP, last - first + 1)
            picks = sorted({first + round(k * (last - first) / max(1, count - 1)) for k in range(count)})
            if pooled:  # compute servers: the layers go where the free memory is (the first fit)
                picks = [first]
            for i in picks:
                g, e = group[i]
                cfg = replace(step, n_gpu_layers=g, n_cpu_moe=e)
                if (
                    u != N_UBATCH
                    and fixed_ubatch is None
                    and not (hw.local_devices and _in_ram(cfg, n_layer))
                ):
                    continue
                if (g, e) not in placements:
                    placements[g, e] = placement_of(info, hw, proj, cfg, threads, params=params)
                placement = replace(placements[g, e], n_ubatch=u, n_batch=max(N_BATCH, u))
                options.append(_Option(cfg, u, forecast(info, placement, hw.speeds), rank_base + i))
            if pooled:
                break
    if not options:
        return None
    # prompt speed never moves weights off a GPU that holds them all: only faster answers do
    on_gpu = [o.forecast.tokens_per_s for o in options if not _in_ram(o.cfg, n_layer)]
    if on_gpu:
        floor = max(on_gpu) * PLACEMENT_GAIN
        options = [o for o in options if not _in_ram(o.cfg, n_layer) or o.forecast.tokens_per_s > floor]
    best_gen = max(o.forecast.tokens_per_s for o in options)
    near = [o for o in options if o.forecast.tokens_per_s >= (1 - GEN_LOSS_MAX) * best_gen]
    best_prompt = max(o.forecast.prompt_tokens_per_s for o in near)
    good = [o for o in near if o.forecast.prompt_tokens_per_s * UBATCH_GAIN >= best_prompt]
    # the fastest answers among them; equal ones: the smaller micro-batch, the more on the GPU
    top = max(o.forecast.tokens_per_s for o in good)
    tied = [o for o in good if o.forecast.tokens_per_s * PLACEMENT_GAIN >= top]
    picked = min(tied, key=lambda o: (o.ubatch, o.rank))
    return _Choice(tuple(options), picked)


def placement_of(
    info: GGUFInfo,
    hw: HardwareInfo,
    proj: Projector,
    cfg: Config,
    n_threads: int,
    n_ubatch: int = N_UBATCH,
    n_batch: int = N_BATCH,
    *,
    params: tuple[dict[int, tuple[float, float]], float] | None = None,
) -> Placement:
    """Where ``cfg`` puts each layer's dense and routed-expert weights, for the forecast
    (``params``: :func:`~app.core.forecast.params_of` ``info``, when the caller has it)."""
    n_layer = info.n_layer
    g = cfg.n_gpu_layers if hw.devices else 0
    where = layer_devices(n_layer, g, hw.devices)
    moe_cpu = set(proj.expert_order(where)[: cfg.n_cpu_moe])
    layer_params, output_params = params if params is not None else params_of(info)
    kv_cell = kv_row_bytes(cfg.kv_type, info.n_embd_k_gqa) + kv_row_bytes(cfg.kv_type, info.n_embd_v_gqa)
    pools: dict[int, dict[str, float]] = {}
    chunked: dict[int, list[bool]] = {}

    def pool(d: int) -> dict[str, float]:
        return pools.setdefault(d, {"dense": 0, "expert": 0, "dp": 0, "ep": 0, "layers": 0})

    for il, layer in enumerate(info.layers[:n_layer]):
        d = where[il]
        dense_p, expert_p = layer_params.get(il, (0.0, 0.0))
        p = pool(d)
        p["dense"] += layer.dense_bytes
        p["dp"] += dense_p
        p["layers"] += 1
        chunked.setdefault(d, []).append(info.swa_layers[il] if il < len(info.swa_layers) else False)
        e = pool(-1) if (d >= 0 and il in moe_cpu) else p
        e["expert"] += layer.expert_bytes
        e["ep"] += expert_p
    out = pool(where[n_layer])
    out["dense"] += info.output_bytes + info.output_norm_bytes
    out["dp"] += output_params
    result = []
    for d in sorted(pools, key=lambda k: (k < 0, k)):
        p = pools[d]
        layers = chunked.get(d, [])
        dev = hw.devices[d] if d >= 0 else None
        bandwidth = dev.bandwidth_gbs if dev else None
        if dev is not None and dev.is_remote:
            bandwidth = bandwidth or REMOTE_DEVICE_GBS
        result.append(
            Pool(
                gpu=dev.name if dev else None,
                dense_bytes=int(p["dense"]),
                expert_bytes=int(p["expert"]),
                dense_params=p["dp"],
                expert_params=p["ep"],
                layers=int(p["layers"]),
                kv_bytes_per_cell=kv_cell * len(layers),
                attn_layers=tuple(layers),
                bandwidth_gbs=bandwidth,
                endpoint=dev.endpoint if dev else "",
                rtt_s=dev.rtt_s if dev else 0.0,
                has_output=d == where[n_layer],
            )
        )
    local = hw.local_devices
    first = local[0] if local else None  # prompt matmuls are offloaded to this machine's GPU only
    return Placement(
        pools=tuple(result),
        n_threads=n_threads,
        n_ubatch=n_ubatch,
        n_batch=n_batch,
        n_ctx=cfg.n_ctx,
        has_gpu=first is not None,
        first_gpu=first.name if first else "",
        first_gpu_bandwidth=first.bandwidth_gbs if first else None,
    )


def explain(plan: Plan, info: GGUFInfo, hw: HardwareInfo) -> str:
    """One paragraph for the user; every figure in it is a field of the plan."""
    n = info.n_layer
    kv = "f16" if plan.type_k == "f16" else plan.type_k
    if plan.flash_attn:
        attention = ", flash attention"
    elif not hw.devices:
        attention = "; flash attention off: slower on a CPU"
    else:
        attention = ""
    ctx = f"{format_context(plan.n_ctx)} context ({kv} KV cache{attention})"
    gpus = " + ".join(d.label for d, u in zip(hw.devices, plan.devices, strict=True) if u.weights) or "GPU"
    on_gpu = gpu_layers_repeating(n, plan.n_gpu_layers)
    if plan.n_gpu_layers == 0:
        where = f"all {n} layers on the CPU"
        if any(d.compute for d in plan.devices):
            where += f" (the {hw.devices[0].label} only for prompt-processing matmuls)"
    elif plan.n_gpu_layers > n:
        where = f"all {n} layers on the {gpus}"
    elif on_gpu == 0:
        where = f"the output layer on the {gpus}, all {n} layers on the CPU"
    else:
        # llama.cpp counts the output layer as one of n_gpu_layers
        where = (
            f"{on_gpu} of {n} layers and the output layer on the {gpus}, the other {n - on_gpu} on the CPU"
        )
    if plan.n_cpu_moe:
        where += f", experts of {plan.n_cpu_moe} layers in RAM"
    mem = (
        f"≈ {format_gb(plan.vram_bytes)} VRAM + {format_gb(plan.ram.total)} RAM"
        if plan.devices
        else f"≈ {format_gb(plan.ram.total)} RAM"
    )
    if any(d.unified for d in hw.devices):
        mem = f"≈ {format_gb(plan.vram_bytes)} GPU + {format_gb(plan.ram.total)} CPU of unified memory"
    if hw.remote_devices:  # the split sentence below says where each layer goes
        where = f"all {n} layers spread" if plan.n_gpu_layers > n else f"{n} layers spread"
        if plan.n_cpu_moe:
            where += f", experts of {plan.n_cpu_moe} layers in RAM"
        mem = (
            f"≈ {format_gb(plan.vram_bytes)} on the compute servers and GPUs"
            f" + {format_gb(plan.ram.total)} RAM"
        )
    speed = f"expect {plan.forecast.summary}" + ("" if plan.forecast.measured else " (not yet measured here)")
    head = f"{plan.label}: "
    text = f"{head}{where}, {ctx}, {mem}, {speed}."
    if not plan.fits:
        text += f" Even at this setting it needs {format_gb(plan.shortfall_bytes)} more memory than is free."
    if hw.remote_devices:
        text += f" {split_over_machines(plan, info, hw)}"
    if plan.compute_source == "estimate":
        text += " (Compute buffer estimated; llama.cpp's dry run will refine it.)"
    return text


def _layers(n: int) -> str:
    return f"{n} layer{'' if n == 1 else 's'}"


def split_over_machines(plan: Plan, info: GGUFInfo, hw: HardwareInfo) -> str:
    """With compute servers: how many layers go to each machine and why (their free memory),
    and what the network adds to each token — ``Layers by free memory: 24 on
    workstation:50052 (40 GB free), 24 here; the network adds ≈ 1.2 ms a token (…)``."""
    n = info.n_layer
    where = layer_devices(n, plan.n_gpu_layers, hw.devices)
    parts = []
    for i, d in enumerate(hw.devices):
        count = sum(1 for il in range(n) if where[il] == i)
        output = where[n] == i
        if not count and not output:
            continue
        what = _layers(count) + (" and the output layer" if output else "")
        place = d.endpoint if d.is_remote else f"this computer's {d.label}"
        parts.append(f"{what} on {place} ({format_gb(d.free_bytes)} free)")
    here = sum(1 for il in range(n) if where[il] < 0)
    parts.append(f"{here} here" if here else "none here")
    text = "Layers spread by free memory: " + ", ".join(parts)
    if plan.n_cpu_moe:
        text += f" (the experts of {_layers(plan.n_cpu_moe)} in this computer's RAM)"
    idle = [d.endpoint for i, d in enumerate(hw.devices) if d.is_remote and i not in where]
    if idle:
        text += f"; nothing on {', '.join(idle)}"
    if plan.network_s_per_token > 0:
        rtt = max(d.rtt_s for d in hw.remote_devices)
        text += (
            f"; the network adds ≈ {plan.network_s_per_token * 1000:.2g} ms a token "
            f"(round trip {rtt * 1000:.2g} ms measured, {_link(hw)} assumed)"
        )
    return text + "."


def _link(hw: HardwareInfo) -> str:
    return "loopback" if all(is_loopback(d.endpoint) for d in hw.remote_devices) else "1 Gbit/s Ethernet"


def plan_with_dry_run(
    info: GGUFInfo,
    hardware: HardwareInfo,
    overrides: PlanOverrides | None = None,
    *,
    measure: Callable[[LoadParams], MeasuredBuffers],
    mmproj_bytes: int = 0,
    max_rounds: int = 3,
    n_threads: int | None = None,
) -> Plan:
    """Plan with the formula, measure that configuration with llama.cpp's dry run, re-plan with the
    measured compute buffer; repeat until the configuration is stable (usually 1–2 dry runs)."""
    measurements: dict[tuple[int, bool, str], MeasuredBuffers] = {}
    o = overrides or PlanOverrides()
    plan = make_plan(info, hardware, o, mmproj_bytes=mmproj_bytes, n_threads=n_threads)
    for _ in range(max_rounds):
        key = (plan.n_ctx, plan.flash_attn, plan.type_k)
        if key in measurements:
            break
        # measured at the base micro-batch: the planner scales compute buffers from it
        base = replace(plan.to_load_params(info.path), n_batch=N_BATCH, n_ubatch=N_UBATCH)
        measurements[key] = measure(base)
        plan = make_plan(
            info, hardware, o, measurements=measurements, mmproj_bytes=mmproj_bytes, n_threads=n_threads
        )
    while plan.fits and o.n_ubatch is None and plan.n_ubatch > N_UBATCH:
        # the micro-batch the planner chose, checked with llama.cpp's own figures
        m = measure(plan.to_load_params(info.path))
        if _compute_fits(plan, m, hardware):
            break
        log.info("n_ubatch %d: llama.cpp's compute buffers do not fit; trying less", plan.n_ubatch)
        plan = make_plan(
            info,
            hardware,
            o,
            measurements=measurements,
            mmproj_bytes=mmproj_bytes,
            n_threads=n_threads,
            max_ubatch=plan.n_ubatch // 2,
        )
    return plan


def _compute_fits(plan: Plan, m: MeasuredBuffers, hw: HardwareInfo) -> bool:
    """Whether llama.cpp's measured compute buffers at the plan's micro-batch fit each GPU's room."""
    from app.core.engine.probe import is_host_buffer
    from app.core.projection import device_index

    per_gpu: dict[int, int] = {}
    for buf, size in m.compute.items():
        if not is_host_buffer(buf) and hw.devices:
            i = device_index(buf, hw.devices)
            per_gpu[i] = per_gpu.get(i, 0) + size
    for i, usage in enumerate(plan.devices):
        measured = per_gpu.get(i)
        if measured is not None and usage.total - usage.compute + measured > usage.budget:
            return False
    return True


# --------------------------------------------------------------------------------------------
# From a model file to load parameters (used by the inference worker, on its thread)


@dataclass(frozen=True)
class LoadRequest:
    """What the user asked to load, and how (settings + Advanced overrides)."""

    model_path: Path
    overrides: PlanOverrides = field(default_factory=PlanOverrides)
    n_threads: int | None = None  # None: the planner's choice (physical cores)
    use_projector: bool = True
    compute_servers: tuple[str, ...] = ()  # llama.cpp RPC compute servers (Settings → Machines)


@dataclass(frozen=True)
class PlannedLoad:
    params: LoadParams
    plan: Plan | None
    info: GGUFInfo | None


def plan_load(
    request: LoadRequest,
    hardware: HardwareInfo,
    measure: Callable[[LoadParams], MeasuredBuffers] | None = None,
) -> PlannedLoad:
    """Read the header, plan (with llama.cpp's dry run when ``measure`` is given), and build the
    load parameters. Raises GGUFError for unreadable files."""
    from app.core.gguf_info import find_projector, read_gguf_info

    info = read_gguf_info(request.model_path)
    projector = find_projector(info.path) if request.use_projector else None
    mmproj_bytes = projector.stat().st_size if projector else 0
    # with the compute servers' devices in ``hardware`` (app/main.py asks the engine process for
    # them), the plan spreads the layers over them and this machine, and the load and its dry run
    # name those devices with the plan's split
    servers = request.compute_servers if hardware.remote_devices else ()
    split = tensor_split(hardware) if servers else ()
    if measure is not None and servers:
        measure = _with_servers(measure, servers, split)
    if measure is not None:
        plan = plan_with_dry_run(
            info,
            hardware,
            request.overrides,
            measure=measure,
            mmproj_bytes=mmproj_bytes,
            n_threads=request.n_threads,
        )
    else:
        plan = make_plan(
            info, hardware, request.overrides, mmproj_bytes=mmproj_bytes, n_threads=request.n_threads
        )
    params = plan.to_load_params(info.path, mmproj_path=projector)
    if request.overrides.speculation is not None:
        params = replace(params, speculation=request.overrides.speculation)
    if request.n_threads:
        params = replace(params, n_threads=request.n_threads, n_threads_batch=request.n_threads)
    if servers:
        if plan.n_gpu_layers > 0:  # (0: nothing goes to the servers)
            params = replace(params, compute_servers=servers, tensor_split=split)
    elif request.compute_servers:
        # The servers' devices are not known (a plan made without asking them): every layer goes
        # to them and to this machine's GPUs, split by llama.cpp by their free memory.
        params = replace(params, compute_servers=request.compute_servers, n_gpu_layers=0, tensor_overrides=())
    return PlannedLoad(params=params, plan=plan, info=info)


def tensor_split(hardware: HardwareInfo) -> tuple[float, ...]:
    """llama.cpp's tensor_split for the devices the planner spread layers over: their free memory
    as the plan saw it (the same proportions as :func:`app.core.projection.layer_devices`)."""
    return tuple(float(max(1, d.free_bytes)) for d in hardware.devices)


def _with_servers(
    measure: Callable[[LoadParams], MeasuredBuffers], servers: tuple[str, ...], split: tuple[float, ...]
) -> Callable[[LoadParams], MeasuredBuffers]:
    def measured(params: LoadParams) -> MeasuredBuffers:
        if params.n_gpu_layers <= 0:
            return measure(params)
        return measure(replace(params, compute_servers=servers, tensor_split=split))

    return measured


def safer_overrides(plan: Plan, overrides: PlanOverrides) -> tuple[PlanOverrides, str] | None:
    """The next, more conservative setting after a load failed for lack of memory, with a sentence
    saying what changed; None when there is nothing left to give up."""
    if plan.n_ctx > N_CTX_FLOOR:
        smaller = max(N_CTX_FLOOR, plan.n_ctx // 2)
        return (
            replace(overrides, n_ctx=smaller, n_ctx_target=None),
            f"context reduced from {format_context(plan.n_ctx)} to {format_context(smaller)}",
        )
    if plan.type_k == "f16" and overrides.kv_type is None:
        return replace(overrides, kv_type="q8_0", flash_attn=True), "KV cache quantized to q8_0"
    if plan.n_gpu_layers > 0 and plan.n_cpu_moe < gpu_layers_repeating(plan.n_layer, plan.n_gpu_layers):
        return (
            replace(overrides, n_cpu_moe=plan.n_layer),
            "all expert tensors kept in system RAM",
        )
    if plan.n_gpu_layers > 0:
        fewer = plan.n_gpu_layers // 2
        return replace(overrides, n_gpu_layers=fewer), f"GPU layers reduced to {fewer}"
    return None


def less_on_gpu(plan: Plan, overrides: PlanOverrides) -> tuple[PlanOverrides, str] | None:
    """After the engine process died of memory (an allocation failed mid-answer, or the OOM
    killer ended it): the same model with less on the GPU — the experts in system RAM, then half
    the GPU layers — with a sentence saying what changed; on a plan with nothing on a GPU, the
    next step of :func:`safer_overrides`. None when there is nothing left to give up."""
    if plan.n_gpu_layers > 0:
        if plan.n_cpu_moe < gpu_layers_repeating(plan.n_layer, plan.n_gpu_layers):
            return replace(overrides, n_cpu_moe=plan.n_layer), "all expert tensors kept in system RAM"
        fewer = plan.n_gpu_layers // 2
        return replace(overrides, n_gpu_layers=fewer), f"GPU layers reduced to {fewer}"
    return safer_overrides(plan, overrides)


def merge_overrides(overrides: PlanOverrides | None, n_ctx_setting: int) -> PlanOverrides:
    """What the planner is given for a load: the Advanced ``overrides`` (None: automatic), with the
    Settings' context size (``n_ctx_setting``, 0 = Auto) as the *target* (shrunk to fit) when the
    overrides fix neither a context size nor a target."""
    o = overrides or PlanOverrides()
    if o.n_ctx is None and o.n_ctx_target is None and n_ctx_setting:
        return replace(o, n_ctx_target=n_ctx_setting)
    return o


def forecast_for(
    info: GGUFInfo, hardware: HardwareInfo, plan: Plan, *, depth: int, prompt_tokens: int
) -> Forecast:
    """The forecast of ``plan`` at another depth / prompt length (the self-test and the bench
    compare it with what they measure)."""
    proj = Projector(info, hardware, mmproj_bytes=0, compute_for=compute_model(info, hardware.devices, {}))
    cfg = Config(plan.n_gpu_layers, plan.n_cpu_moe, plan.n_ctx, plan.type_k, plan.flash_attn)
    placement = placement_of(info, hardware, proj, cfg, plan.n_threads, plan.n_ubatch, plan.n_batch)
    return forecast(info, placement, hardware.speeds, depth=depth, prompt_tokens=prompt_tokens)
