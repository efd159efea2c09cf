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
import re
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from app.core.types import LoadParams, TensorOverride

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from pathlib import Path

    from app.core.engine.probe import MeasuredBuffers
    from app.core.gguf_info import GGUFInfo
    from app.core.hardware import Device, HardwareInfo

log = logging.getLogger(__name__)

GIB = 1024**3
GB = 1e9
KV_ROW = {"f32": (1, 4), "f16": (1, 2), "bf16": (1, 2), "q8_0": (32, 34), "q4_0": (32, 18)}
KV_QUALITY = {"f32": 3, "f16": 3, "bf16": 3, "q8_0": 2, "q4_0": 1}
DEFAULT_N_CTX = 32768
N_CTX_FLOOR = 4096
N_UBATCH = 512
N_BATCH = 512
GGUF_ALIGNMENT = 32  # general.alignment's default: tensor data offsets are multiples of it
GPU_MARGIN_MIN = 512 * 1024**2  # CUDA context, fragmentation, other apps' growth
GPU_MARGIN_FRACTION = 0.05
RAM_MARGIN = 1 * GIB  # the app itself (Python, Qt), the OS's breathing room
APP_RAM = 768 * 1024**2
DEFAULT_RAM_BANDWIDTH_GBS = 50.0
DEFAULT_GPU_BANDWIDTH_GBS = 300.0
SPEED_EFFICIENCY = 0.55  # fraction of peak bandwidth token generation reaches in practice

VERDICT_FULL = "full GPU"
VERDICT_SPLIT = "split GPU+RAM"
VERDICT_CPU = "CPU only"
VERDICT_NO = "won't fit"


@dataclass(frozen=True)
class PlanOverrides:
    """What the user fixed in the Advanced section; None = let the planner choose."""

    n_gpu_layers: int | None = None  # 0..n_layer+1 (n_layer+1: the output layer too)
    n_cpu_moe: int | None = None  # experts of the first N GPU layers kept in RAM
    n_ctx: int | None = None  # fixed context size
    n_ctx_target: int | None = None  # preferred context size, shrunk to fit (None: 32k)
    kv_type: str | None = None  # f16 | q8_0 | q4_0 (K and V)
    flash_attn: bool | None = None


def with_settings_context(overrides: PlanOverrides | None, n_ctx_setting: int) -> PlanOverrides:
    """The overrides a load uses: the user's Advanced ones, with the Settings context size
    (``n_ctx_setting``, 0 = automatic) as the preferred size unless they fix one themselves."""
    o = overrides or PlanOverrides()
    if o.n_ctx is None and o.n_ctx_target is None and n_ctx_setting:
        return replace(o, n_ctx_target=n_ctx_setting)
    return o


@dataclass(frozen=True)
class DeviceUsage:
    """Projected bytes on one memory pool (a GPU, or ``RAM``)."""

    name: str  # CUDA0 / Metal / RAM
    label: str  # "NVIDIA GeForce RTX 4090" / "system RAM"
    weights: int
    kv: int
    compute: int
    other: int  # projector, output/logits buffers, app overhead
    budget: int  # free memory minus the safety margin (shared pool already deducted)
    # RAM only: address space of the mmapped CPU_Mapped buffer(s), >= the CPU weights. Not part of
    # ``total``: the GPU tensors inside the range are reclaimable page cache (see module docstring).
    mapped: int = 0

    @property
    def total(self) -> int:
        return self.weights + self.kv + self.compute + self.other

    @property
    def over(self) -> int:
        return max(0, self.total - self.budget)


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
    tokens_per_s_estimate: float  # rough, from memory bandwidth: label it as an estimate
    compute_source: str  # "measured" (llama.cpp dry run) or "estimate" (formula)
    explanation: str
    n_layer: int
    plan_seconds: float = 0.0
    notes: tuple[str, ...] = field(default=())

    @property
    def fits_text(self) -> str:
        if self.fits:
            return self.verdict
        return f"won't fit: needs {self.shortfall_bytes / GB:.1f} GB more"

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
            n_batch=N_BATCH,
            n_ubatch=N_UBATCH,
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
# Building blocks


def pad(n: int, to: int = 256) -> int:
    return -(-n // to) * to


def kv_row_bytes(type_name: str, n: int) -> int:
    block, size = KV_ROW[type_name]
    return n // block * size


def kv_cells(
    info: GGUFInfo, n_ctx: int, *, swa_full: bool = False, n_ubatch: int = N_UBATCH
) -> tuple[int, int]:
    """(cells of a global layer, cells of a chunked/sliding layer): llama-kv-cache-iswa.cpp."""
    base = pad(n_ctx)
    if info.attention == "full" or swa_full:
        return base, base
    return base, pad(min(base, info.swa_window + n_ubatch))


def kv_layer_bytes(
    info: GGUFInfo, n_ctx: int, type_k: str, type_v: str, *, swa_full: bool = False
) -> list[int]:
    base, swa = kv_cells(info, n_ctx, swa_full=swa_full)
    per_cell = kv_row_bytes(type_k, info.n_embd_k_gqa) + kv_row_bytes(type_v, info.n_embd_v_gqa)
    return [(swa if is_swa else base) * per_cell for is_swa in info.swa_layers]


def compute_formula(info: GGUFInfo, n_ctx: int, flash_attn: bool, n_ubatch: int = N_UBATCH) -> int:
    """A labelled estimate of llama.cpp's compute buffer (fallback when no dry run was made).

    Calibrated on llama.cpp's reported figures: without flash attention the f32 attention scores
    (n_head × n_kv × n_ubatch) dominate and share memory with the logits; with it, the logits
    (n_ubatch × n_vocab) or two f16 masks, whichever is larger. Within ~5 % on Scout (tiny
    models: up to ~20 %, where fixed overheads dominate).
    """
    n_kv = pad(n_ctx)
    base = 6 * n_ubatch * info.n_embd * 4
    logits = n_ubatch * info.vocab_size * 4
    if flash_attn:  # the f16 masks and the logits are not live at the same time
        return base + max(logits, 2 * n_kv * n_ubatch * 2)
    scores = info.n_head * n_kv * n_ubatch * 4 + 2 * n_kv * n_ubatch * 4
    return base + max(scores, logits)


def host_compute_formula(info: GGUFInfo, n_ctx: int, flash_attn: bool, n_ubatch: int = N_UBATCH) -> int:
    """A labelled estimate of the *host* compute buffer of a GPU build (``CUDA_Host`` …).

    It holds the graph inputs that stay on the CPU: one attention mask per KV cache,
    ``n_kv × n_ubatch`` f16 with flash attention (f32 without) — for Llama 4 the global cache
    (n_ctx padded to 256) and the chunked one (``chunk + n_ubatch`` padded) — plus the input
    embeddings (two ``n_ubatch × n_embd`` f32). Scales with n_ctx; the H100 check measured
    43.52 MiB at 32k on an n_embd=768 replica, where this gives 43.50 MiB.
    """
    base, swa = kv_cells(info, n_ctx, n_ubatch=n_ubatch)
    chunked = info.attention != "full" and any(info.swa_layers)
    n_kv = (base if not chunked or not all(info.swa_layers) else 0) + (swa if chunked else 0)
    mask = 2 if flash_attn else 4
    return n_kv * n_ubatch * mask + 2 * n_ubatch * info.n_embd * 4


def gpu_layers_repeating(n_layer: int, n_gpu_layers: int) -> int:
    """How many *repeating* layers ``n_gpu_layers`` puts on the GPU (the output layer counts as one)."""
    return max(0, min(n_gpu_layers, n_layer + 1) - 1)


def expert_override_pattern(layers: range | list[int]) -> str:
    """llama.cpp's expert pattern for the layers: ``blk\\.(0|1)\\.ffn_(up|down|gate|gate_up)_(ch|)exps``."""
    ids = "|".join(str(i) for i in layers)
    return rf"blk\.({ids})\.ffn_(up|down|gate|gate_up)_(ch|)exps"


@dataclass(frozen=True)
class _Config:
    n_gpu_layers: int
    n_cpu_moe: int
    n_ctx: int
    kv_type: str
    flash_attn: bool


@dataclass(frozen=True)
class _Projection:
    devices: tuple[DeviceUsage, ...]
    ram: DeviceUsage

    @property
    def over(self) -> int:
        return sum(d.over for d in self.devices) + self.ram.over

    @property
    def gpu_fits(self) -> bool:
        return all(d.over == 0 for d in self.devices)

    @property
    def fits(self) -> bool:
        return self.over == 0


def _layer_devices(n_layer: int, n_gpu_layers: int, gpus: tuple[Device, ...]) -> list[int]:
    """Device index per layer (-1 = CPU) + one entry for the output layer: llama.cpp's assignment.

    llama-model.cpp (load_tensors): of the ``n_layer + 1`` layers (repeating layers, then the
    output layer) those from ``i_gpu_start = max(n_layer + 1 - n_gpu_layers, 0)`` on go to the
    GPUs, split in proportion to their free memory (the default tensor_split): the device is
    upper_bound(cumulative fractions, (il - i_gpu_start) / act_gpu_layers). So the output layer is
    the first to be offloaded and n_gpu_layers = 4 on 8 layers means layers 5..7 + output.
    """
    out = [-1] * (n_layer + 1)
    if not gpus or n_gpu_layers <= 0:
        return out
    total_free = sum(max(1, g.free_bytes) for g in gpus)
    splits, acc = [], 0.0
    for g in gpus:
        acc += max(1, g.free_bytes) / total_free
        splits.append(acc)
    i_gpu_start = max(n_layer + 1 - n_gpu_layers, 0)
    act = min(n_gpu_layers, n_layer + 1)
    for il in range(i_gpu_start, n_layer + 1):
        frac = (il - i_gpu_start) / act
        out[il] = next((k for k, s in enumerate(splits) if s > frac), len(gpus) - 1)
    return out


@dataclass(frozen=True)
class _Compute:
    """Compute buffers of one (n_ctx, flash attention, KV type) configuration."""

    gpu: tuple[int, ...]  # per GPU, when it holds layers
    gpu_no_layers: int  # the first GPU when no layer is offloaded (op offload of big matmuls)
    host: int  # system RAM: CPU / CUDA_Host …
    source: str  # "measured" | "estimate"


def _device_index(buffer: str, gpus: tuple[Device, ...]) -> int:
    """The GPU a device buffer (``CUDA1``, ``MTL0``, ``Vulkan0_Private`` …) belongs to."""
    for i, g in enumerate(gpus):
        if g.name == buffer or buffer.split("_")[0] == g.name:
            return i
    found = re.match(r"([A-Za-z]+)(\d*)", buffer)
    if found:
        prefix, num = found.group(1).lower(), int(found.group(2) or 0)
        backend = {"mtl": "metal", "hip": "rocm"}.get(prefix, prefix)
        same = [
            i for i, g in enumerate(gpus) if g.backend.lower() == backend or g.name.lower().startswith(prefix)
        ]
        if num < len(same):
            return same[num]
    return 0


class _Projector:
    """Precomputed per-layer figures so each projection is a few list passes (plan < 200 ms)."""

    def __init__(
        self,
        info: GGUFInfo,
        hardware: HardwareInfo,
        *,
        mmproj_bytes: int,
        compute_for: Callable[[int, bool, str], _Compute],
    ) -> None:
        self.info = info
        self.hw = hardware
        self.gpus = hardware.devices
        self.mmproj_bytes = mmproj_bytes
        self.compute_for = compute_for
        self.dense = [layer.dense_bytes for layer in info.layers]
        self.expert = [layer.expert_bytes for layer in info.layers]
        self.shared_pool = any(g.unified for g in self.gpus)
        self.gpu_budget = [
            max(0, g.free_bytes - max(GPU_MARGIN_MIN, int(GPU_MARGIN_FRACTION * g.total_bytes)))
            for g in self.gpus
        ]
        self.ram_budget = max(0, hardware.ram_available_bytes - RAM_MARGIN)
        self._kv_cache: dict[tuple[int, str], list[int]] = {}
        self._order_cache: dict[tuple[int, ...], list[int]] = {}
        self._spans: list[tuple[int, int, int, str, int]] | None = None

    def spans(self) -> list[tuple[int, int, int, str, int]]:
        """(shard, start, end, kind, layer) per tensor: the offsets in the file's data section.

        GGUF writers (gguf-py, llama.cpp) lay the data out in the order of the tensor infos, each
        tensor aligned to ``general.alignment`` (32 by default), so the offsets follow from the
        order and the sizes (gguf_info keeps both). kind: embd | out | other | dense | expert.
        """
        if self._spans is None:
            spans = []
            offset: dict[int, int] = {}
            for t in self.info.tensors:
                start = offset.get(t.shard, 0)
                offset[t.shard] = pad(start + t.n_bytes, GGUF_ALIGNMENT)
                if t.layer is not None:
                    kind = "expert" if t.is_expert else "dense"
                elif t.name.startswith("token_embd."):
                    kind = "embd"
                elif t.name.startswith(("output.", "output_norm.")):
                    kind = "out"
                else:
                    kind = "other"
                spans.append((t.shard, start, start + t.n_bytes, kind, -1 if t.layer is None else t.layer))
            self._spans = spans
        return self._spans

    def mapped_bytes(self, cfg: _Config) -> int:
        """Size of the CPU_Mapped buffer(s) llama.cpp creates for ``cfg`` with mmap: per file, the
        range from the first to the last CPU tensor (llama_model_loader::get_mapping_range)."""
        where = _layer_devices(self.info.n_layer, cfg.n_gpu_layers, self.gpus)
        moe_cpu = set(self.expert_order(where)[: cfg.n_cpu_moe])
        ranges: dict[int, tuple[int, int]] = {}
        for shard, start, end, kind, il in self.spans():
            if kind == "out":
                on_cpu = where[self.info.n_layer] < 0
            elif kind in ("dense", "expert") and 0 <= il < self.info.n_layer:
                on_cpu = where[il] < 0 or (kind == "expert" and il in moe_cpu)
            else:  # input embedding and anything else outside the layers: CPU
                on_cpu = True
            if on_cpu:
                lo, hi = ranges.get(shard, (start, end))
                ranges[shard] = (min(lo, start), max(hi, end))
        return sum(hi - lo for lo, hi in ranges.values())

    def kv(self, n_ctx: int, kv_type: str) -> list[int]:
        key = (n_ctx, kv_type)
        if key not in self._kv_cache:
            self._kv_cache[key] = kv_layer_bytes(self.info, n_ctx, kv_type, kv_type, swa_full=False)
        return self._kv_cache[key]

    def expert_order(self, where: list[int]) -> list[int]:
        """GPU layers in the order their experts move to RAM: lowest first, interleaved across
        GPUs so that each device sheds experts in proportion to its share of the layers."""
        key = tuple(where)
        cached = self._order_cache.get(key)
        if cached is None:
            per_dev: dict[int, list[int]] = {}
            for il in range(self.info.n_layer):
                if where[il] >= 0:
                    per_dev.setdefault(where[il], []).append(il)
            ranked = [((k + 0.5) / len(ils), il) for ils in per_dev.values() for k, il in enumerate(ils)]
            cached = [il for _, il in sorted(ranked)]
            self._order_cache[key] = cached
        return cached

    def project(self, cfg: _Config) -> _Projection:
        info, n_layer = self.info, self.info.n_layer
        n_gpu = len(self.gpus)
        where = _layer_devices(n_layer, cfg.n_gpu_layers, self.gpus)
        kv = self.kv(cfg.n_ctx, cfg.kv_type)
        w = [0] * n_gpu
        k = [0] * n_gpu
        ram_w = info.token_embd_bytes + info.other_bytes  # the input embedding stays on the CPU
        ram_kv = 0
        moe_cpu = set(self.expert_order(where)[: cfg.n_cpu_moe])
        for il in range(n_layer):
            d = where[il]
            if d < 0:
                ram_w += self.dense[il] + self.expert[il]
                ram_kv += kv[il]
                continue
            w[d] += self.dense[il]
            k[d] += kv[il]
            if il in moe_cpu:
                ram_w += self.expert[il]
            else:
                w[d] += self.expert[il]
        out_dev = where[n_layer]
        if out_dev >= 0:
            w[out_dev] += info.output_bytes + info.output_norm_bytes
        else:
            ram_w += info.output_bytes + info.output_norm_bytes
        c = self.compute_for(cfg.n_ctx, cfg.flash_attn, cfg.kv_type)
        used = [w[i] > 0 for i in range(n_gpu)]
        gpu_compute = [c.gpu[i] if used[i] else 0 for i in range(n_gpu)]
        any_gpu = any(used)
        if n_gpu and not any_gpu:
            # a GPU build still offloads big matmuls to the first GPU with no layer on it
            gpu_compute[0] = c.gpu_no_layers
        host_compute = c.host
        gpu_other = [0] * n_gpu
        ram_other = APP_RAM + N_BATCH * info.vocab_size * 4  # llama-cpp-python's logits array
        if self.mmproj_bytes:
            projector = int(self.mmproj_bytes * 1.1) + 128 * 1024**2  # weights + its compute buffer
            if any_gpu:
                gpu_other[used.index(True)] += projector
            else:
                ram_other += projector
        devices = []
        shared_used = 0
        for i, g in enumerate(self.gpus):
            usage = DeviceUsage(g.name, g.label, w[i], k[i], gpu_compute[i], gpu_other[i], self.gpu_budget[i])
            if g.unified:
                shared_used += usage.total
            devices.append(usage)
        ram_budget = self.ram_budget - shared_used if self.shared_pool else self.ram_budget
        ram = DeviceUsage("RAM", "system RAM", ram_w, ram_kv, host_compute, ram_other, max(0, ram_budget))
        return _Projection(tuple(devices), ram)


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


def _first_fit(proj: _Projector, group: list[tuple[int, int]], ctx: int, kv: str, fa: bool) -> _Config | None:
    """Binary search for the first candidate whose GPU part fits (GPU use falls along the group)."""
    lo, hi = 0, len(group)
    while lo < hi:
        mid = (lo + hi) // 2
        g, e = group[mid]
        if proj.project(_Config(g, e, ctx, kv, fa)).gpu_fits:
            hi = mid
        else:
            lo = mid + 1
    if lo == len(group):
        return None
    g, e = group[lo]
    return _Config(g, e, ctx, kv, fa)


def make_plan(
    info: GGUFInfo,
    hardware: HardwareInfo,
    overrides: PlanOverrides | None = None,
    *,
    measurements: Mapping[tuple[int, bool, str], MeasuredBuffers] | None = None,
    mmproj_bytes: int = 0,
) -> Plan:
    """The best plan for ``info`` on ``hardware`` honouring ``overrides``.

    ``measurements`` maps (n_ctx, flash_attn, kv_type) to llama.cpp dry-run figures (see
    :func:`plan_with_dry_run`); configurations without one use the compute formula, scaled by the
    measured/formula ratio of a measured configuration when there is one.
    """
    started = time.perf_counter()
    o = overrides or PlanOverrides()
    measurements = measurements or {}
    gpus = hardware.devices
    largest_layer = max((lay.total_bytes for lay in info.layers), default=0)

    def host_formula(n_ctx: int, fa: bool) -> int:
        # CPU only: the one CPU compute buffer is the whole graph
        return host_compute_formula(info, n_ctx, fa) if gpus else compute_formula(info, n_ctx, fa)

    def split(m: MeasuredBuffers) -> tuple[dict[int, int], int | None]:
        """Measured compute per GPU index, and in RAM (None: not measured for this machine)."""
        if not gpus:
            return {}, m.compute_bytes
        from app.core.engine.probe import is_host_buffer

        per_gpu: dict[int, int] = {}
        for buf, size in m.compute.items():
            if not is_host_buffer(buf):
                i = _device_index(buf, gpus)
                per_gpu[i] = per_gpu.get(i, 0) + size
        if not per_gpu:  # measured by a build without these GPUs: its one figure is the whole graph
            return dict.fromkeys(range(len(gpus)), m.compute_bytes), None
        return per_gpu, sum(v for k, v in m.compute.items() if is_host_buffer(k))

    gpu_ratio: dict[bool, float] = {}
    host_ratio: dict[bool, float] = {}
    for (ctx, fa, _kv), m in measurements.items():
        if not m.compute_bytes:
            continue
        per_gpu, host = split(m)
        if per_gpu:
            gpu_ratio[fa] = max(per_gpu.values()) / max(1, compute_formula(info, ctx, fa))
        if host is not None:
            host_ratio[fa] = host / max(1, host_formula(ctx, fa))

    def compute_for(n_ctx: int, fa: bool, kv: str) -> _Compute:
        gpu_est = int(compute_formula(info, n_ctx, fa) * gpu_ratio.get(fa, 1.0))
        host_est = int(host_formula(n_ctx, fa) * host_ratio.get(fa, 1.0))
        # with no layer on the GPUs, op offload copies the weights of a big matmul into the first
        # GPU's compute buffer: a layer's worth on top of the graph (a labelled estimate)
        offload_est = gpu_est + largest_layer
        m = measurements.get((n_ctx, fa, kv))
        if m is not None and m.compute_bytes:
            per_gpu, host = split(m)
            return _Compute(
                gpu=tuple(per_gpu.get(i, gpu_est) for i in range(len(gpus))),
                gpu_no_layers=per_gpu.get(0, offload_est),
                host=host_est if host is None else host,
                source="measured",
            )
        return _Compute(
            gpu=(gpu_est,) * len(gpus), gpu_no_layers=offload_est, host=host_est, source="estimate"
        )

    proj = _Projector(info, hardware, mmproj_bytes=mmproj_bytes, compute_for=compute_for)
    groups = _candidates(info.n_layer, bool(hardware.devices), o)
    chosen: _Config | None = None
    best_fail: tuple[int, _Config] | None = None
    for ctx, kv, fa in _search_ladder(info, o, bool(hardware.devices)):
        for group in groups:
            cfg = _first_fit(proj, group, ctx, kv, fa)
            candidates = [cfg] if cfg is not None else [_Config(*group[-1], ctx, kv, fa)]
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
    projection = proj.project(chosen)
    source = compute_for(chosen.n_ctx, chosen.flash_attn, chosen.kv_type).source
    plan = _finish(info, hardware, proj, chosen, projection, fits, source)
    plan = replace(plan, plan_seconds=time.perf_counter() - started)
    log.debug("plan for %s: %s in %.1f ms", info.path.name, plan.fits_text, plan.plan_seconds * 1000)
    return plan


def _finish(
    info: GGUFInfo, hw: HardwareInfo, proj: _Projector, cfg: _Config, p: _Projection, fits: bool, source: str
) -> Plan:
    n_layer = info.n_layer
    g = cfg.n_gpu_layers if hw.devices else 0
    e = min(cfg.n_cpu_moe, gpu_layers_repeating(n_layer, g))
    overrides: tuple[TensorOverride, ...] = ()
    if e > 0 and info.expert_bytes:
        layers = sorted(proj.expert_order(_layer_devices(n_layer, g, hw.devices))[:e])
        overrides = (TensorOverride(expert_override_pattern(layers), "CPU"),)
    if not fits:
        verdict = VERDICT_NO
    elif g == 0:
        verdict = VERDICT_CPU
    elif g > n_layer and e == 0:
        verdict = VERDICT_FULL
    else:
        verdict = VERDICT_SPLIT
    tps = _speed(info, hw, p, cfg)
    mapped = proj.mapped_bytes(cfg)
    p = replace(p, ram=replace(p.ram, mapped=mapped))
    notes: list[str] = []
    if mapped - p.ram.weights > max(1024**2, p.ram.weights // 20):
        notes.append(
            f"llama.cpp maps {_size(mapped)} of the model file for the CPU weights (CPU_Mapped: the "
            "file range from the first to the last CPU tensor). The GPU tensors inside it are read "
            "once at load and stay only as page cache the system can reclaim, so the RAM figure "
            f"counts just the {_size(p.ram.weights)} of weights the CPU uses."
        )
    if hw.devices and g == 0 and p.devices and p.devices[0].compute:
        notes.append(
            f"With no layer offloaded llama.cpp still uses the {p.devices[0].label} for prompt "
            f"processing (large matrix multiplications): {_size(p.devices[0].compute)} of GPU memory."
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
        n_threads=max(1, hw.physical_cores),
        devices=p.devices,
        ram=p.ram,
        tokens_per_s_estimate=tps,
        compute_source=source,
        explanation="",
        n_layer=n_layer,
        notes=tuple(notes),
    )
    return replace(plan, explanation=explain(plan, info, hw))


def _speed(info: GGUFInfo, hw: HardwareInfo, p: _Projection, cfg: _Config) -> float:
    """tok/s ≲ bandwidth ÷ bytes read per token (active experts only), per memory pool."""
    active_fraction = 1.0 if not info.n_expert else max(1, info.n_expert_used) / info.n_expert
    seconds = 0.0
    for usage, dev in zip(p.devices, hw.devices, strict=True):
        if not usage.weights:
            continue
        # experts are most of the weights: scale the expert part by the active fraction
        bw = dev.bandwidth_gbs or DEFAULT_GPU_BANDWIDTH_GBS
        seconds += _active_bytes(usage.weights, info, active_fraction) / (bw * GB)
    ram_bw = hw.ram_bandwidth_gbs or DEFAULT_RAM_BANDWIDTH_GBS
    ram_active = _active_bytes(p.ram.weights - info.token_embd_bytes, info, active_fraction)
    seconds += ram_active / (ram_bw * GB)
    return SPEED_EFFICIENCY / seconds if seconds > 0 else 0.0


def _active_bytes(weights: int, info: GGUFInfo, active_fraction: float) -> float:
    total = max(1, info.total_bytes - info.token_embd_bytes)
    expert_share = info.expert_bytes / total
    return weights * ((1 - expert_share) + expert_share * active_fraction)


def _ctx_label(n_ctx: int) -> str:
    return f"{n_ctx // 1024}k" if n_ctx % 1024 == 0 else f"{n_ctx:,}"


def gb(n: int) -> str:
    return f"{n / GB:.1f} GB"


def _size(n: int) -> str:
    return gb(n) if n >= GB else f"{n / 1024**2:.1f} MiB"


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
    ctx = f"{_ctx_label(plan.n_ctx)} context ({kv} KV cache{attention})"
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
        f"≈ {gb(plan.vram_bytes)} VRAM + {gb(plan.ram.total)} RAM"
        if plan.devices
        else f"≈ {gb(plan.ram.total)} RAM"
    )
    if any(d.unified for d in hw.devices):
        mem = f"≈ {gb(plan.vram_bytes)} GPU + {gb(plan.ram.total)} CPU of unified memory"
    speed = f"expect ~{plan.tokens_per_s_estimate:.0f} tok/s (rough estimate from memory bandwidth)"
    label = plan.fits_text if not plan.fits else plan.verdict
    head = f"{label[:1].upper()}{label[1:]}: "
    text = f"{head}{where}, {ctx}, {mem}, {speed}."
    if not plan.fits:
        text += f" Even at this setting it needs {gb(plan.shortfall_bytes)} more memory than is free."
    if plan.compute_source == "estimate":
        text += " (Compute buffer estimated; llama.cpp's dry run will refine it.)"
    return text


def plan_with_dry_run(
    info: GGUFInfo,
    hardware: HardwareInfo,
    overrides: PlanOverrides | None = None,
    *,
    measure: Callable[[LoadParams], MeasuredBuffers],
    mmproj_bytes: int = 0,
    max_rounds: int = 3,
) -> Plan:
    """Plan with the formula, measure that configuration with llama.cpp's dry run, re-plan with the
    measured compute buffer; repeat until the configuration is stable (usually 1–2 dry runs)."""
    measurements: dict[tuple[int, bool, str], MeasuredBuffers] = {}
    plan = make_plan(info, hardware, overrides, mmproj_bytes=mmproj_bytes)
    for _ in range(max_rounds):
        key = (plan.n_ctx, plan.flash_attn, plan.type_k)
        if key in measurements:
            break
        measurements[key] = measure(plan.to_load_params(info.path))
        plan = make_plan(info, hardware, overrides, measurements=measurements, mmproj_bytes=mmproj_bytes)
    return plan


# --------------------------------------------------------------------------------------------
# From a model file to load parameters (used by the inference worker, on its thread)


@dataclass(frozen=True)
class LoadRequest:
    """What the user asked to load, and how (settings + Advanced overrides)."""

    model_path: Path
    overrides: PlanOverrides = field(default_factory=PlanOverrides)
    n_threads: int | None = None  # None: the planner's choice (physical cores)
    use_projector: bool = True


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
    if measure is not None:
        plan = plan_with_dry_run(
            info, hardware, request.overrides, measure=measure, mmproj_bytes=mmproj_bytes
        )
    else:
        plan = make_plan(info, hardware, request.overrides, mmproj_bytes=mmproj_bytes)
    params = plan.to_load_params(info.path, mmproj_path=projector)
    if request.n_threads:
        params = replace(params, n_threads=request.n_threads, n_threads_batch=request.n_threads)
    return PlannedLoad(params=params, plan=plan, info=info)


def safer_overrides(plan: Plan, overrides: PlanOverrides) -> tuple[PlanOverrides, str] | None:
    """The next, more conservative setting after a load failed for lack of memory, with a sentence
    saying what changed; None when there is nothing left to give up."""
    if plan.n_ctx > N_CTX_FLOOR:
        smaller = max(N_CTX_FLOOR, plan.n_ctx // 2)
        return (
            replace(overrides, n_ctx=smaller, n_ctx_target=None),
            f"context reduced from {_ctx_label(plan.n_ctx)} to {_ctx_label(smaller)}",
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
