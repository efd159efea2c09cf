"""The memory projection behind the planner: bytes per device for one configuration.

:class:`Projector` turns a model header (:class:`~app.core.gguf_info.GGUFInfo`), the machine
(:class:`~app.core.hardware.HardwareInfo`) and one :class:`Config` (GPU layers, experts in RAM,
n_ctx, KV type, flash attention) into a :class:`Projection`: weights, KV cache, compute buffers
and other memory per GPU and in system RAM, against each pool's budget (free memory minus a
safety margin). :mod:`app.core.planner` searches configurations with it; the rules it follows
from llama.cpp are in the planner's module docstring.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from app.core.engine.probe import MeasuredBuffers
    from app.core.gguf_info import GGUFInfo
    from app.core.hardware import Device, HardwareInfo

GIB = 1024**3
KV_ROW = {"f32": (1, 4), "f16": (1, 2), "bf16": (1, 2), "q8_0": (32, 34), "q4_0": (32, 18)}
N_UBATCH = 512
N_BATCH = 512
GGUF_ALIGNMENT = 32  # general.alignment's default: tensor data offsets are multiples of it
GPU_MARGIN_MIN = 512 * 1024**2  # CUDA context, fragmentation, other apps' growth
GPU_MARGIN_FRACTION = 0.05
RAM_MARGIN = 1 * GIB  # the app itself (Python, Qt), the OS's breathing room
APP_RAM = 768 * 1024**2


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
class Config:
    n_gpu_layers: int
    n_cpu_moe: int
    n_ctx: int
    kv_type: str
    flash_attn: bool


@dataclass(frozen=True)
class Projection:
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


def layer_devices(n_layer: int, n_gpu_layers: int, gpus: tuple[Device, ...]) -> list[int]:
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
class Compute:
    """Compute buffers of one (n_ctx, flash attention, KV type) configuration."""

    gpu: tuple[int, ...]  # per GPU, when it holds layers
    gpu_no_layers: int  # the first GPU when no layer is offloaded (op offload of big matmuls)
    host: int  # system RAM: CPU / CUDA_Host …
    source: str  # "measured" | "estimate"


def device_index(buffer: str, gpus: tuple[Device, ...]) -> int:
    """The GPU a device buffer (``CUDA1``, ``MTL0``, ``Vulkan0_Private`` …) belongs to."""
    if buffer.endswith("]") and "[" in buffer:  # a compute server's: RPC0[host:port] (its own index)
        endpoint = buffer[buffer.index("[") + 1 : -1]
        remote = [i for i, g in enumerate(gpus) if g.endpoint == endpoint]
        index = int(re.sub(r"\D", "", buffer[: buffer.index("[")]) or 0)
        if remote:
            return remote[min(index, len(remote) - 1)]
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


class Projector:
    """Precomputed per-layer figures so each projection is a few list passes (plan < 200 ms)."""

    def __init__(
        self,
        info: GGUFInfo,
        hardware: HardwareInfo,
        *,
        mmproj_bytes: int,
        compute_for: Callable[[int, bool, str], Compute],
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

    def mapped_bytes(self, cfg: Config) -> int:
        """Size of the CPU_Mapped buffer(s) llama.cpp creates for ``cfg`` with mmap: per file, the
        range from the first to the last CPU tensor (llama_model_loader::get_mapping_range)."""
        where = layer_devices(self.info.n_layer, cfg.n_gpu_layers, self.gpus)
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

    def project(self, cfg: Config) -> Projection:
        info, n_layer = self.info, self.info.n_layer
        n_gpu = len(self.gpus)
        where = layer_devices(n_layer, cfg.n_gpu_layers, self.gpus)
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
        first_local = next((i for i, g in enumerate(self.gpus) if not g.endpoint), None)
        if first_local is not None and not any_gpu:
            # a GPU build still offloads big matmuls to the first GPU with no layer on it (never
            # to a compute server: llama.cpp's RPC backend offloads no operation)
            gpu_compute[first_local] = c.gpu_no_layers
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
        return Projection(tuple(devices), ram)


def compute_model(
    info: GGUFInfo,
    gpus: tuple[Device, ...],
    measurements: Mapping[tuple[int, bool, str], MeasuredBuffers],
) -> Callable[[int, bool, str], Compute]:
    """Compute buffers per (n_ctx, flash attention, KV type): llama.cpp's dry-run figures where
    measured, else the formulas, scaled by the measured/formula ratio of a measured configuration."""
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
                i = device_index(buf, gpus)
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

    def compute_for(n_ctx: int, fa: bool, kv: str) -> Compute:
        gpu_est = int(compute_formula(info, n_ctx, fa) * gpu_ratio.get(fa, 1.0))
        host_est = int(host_formula(n_ctx, fa) * host_ratio.get(fa, 1.0))
        # with no layer on the GPUs, op offload copies the weights of a big matmul into the first
        # GPU's compute buffer: a layer's worth on top of the graph (a labelled estimate)
        offload_est = gpu_est + largest_layer
        m = measurements.get((n_ctx, fa, kv))
        if m is not None and m.compute_bytes:
            per_gpu, host = split(m)
            return Compute(
                gpu=tuple(per_gpu.get(i, gpu_est) for i in range(len(gpus))),
                gpu_no_layers=per_gpu.get(0, offload_est),
                host=host_est if host is None else host,
                source="measured",
            )
        return Compute(
            gpu=(gpu_est,) * len(gpus), gpu_no_layers=offload_est, host=host_est, source="estimate"
        )

    return compute_for
