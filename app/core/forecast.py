"""How fast a model will run here, before it is downloaded: a measured probe and a forecast.

**The probe** (:class:`MachineSpeeds`, seconds, cached in the app's data folder under a hardware
fingerprint, measured again when the hardware changes): system RAM's read rate (numpy, the same
number of threads llama.cpp will use, on an array larger than the CPU's last-level cache), each
GPU's memory bandwidth and host-to-device rate through ggml (:mod:`app.core.ggml_speed`), and
llama.cpp's own figures on two generated models (:mod:`app.core.engine.speed_probe`, in the
engine process): the fixed cost of one decoded token and of one prompt batch, the rate at which it
streams weights per token — from the CPU's cache and from RAM (a model larger than the cache) —
and its prompt (matrix-multiply) rate.

**The forecast** (:func:`forecast`) for a model and a plan: where each byte of weights sits (the
plan's placement: per GPU and in RAM, dense and routed-expert parts) →

* one generated token = llama.cpp's per-token cost + the active weights on each device ÷ that
  device's rate (routed experts count ``n_expert_used / n_expert``) + the KV cache read at the
  conversation's depth + the output layer's vocabulary work;
* a prompt of P tokens = per micro-batch (``n_ubatch``): the batch cost, plus — on a GPU machine
  with weights in RAM — uploading those weights to the GPU (llama.cpp offloads a large batch's
  matrix multiplications and copies the weights for each micro-batch), plus the FLOPs (2 × the
  active parameters per token, and the attention's 2 × heads × (K + V width) × cached tokens per
  layer) at the CPU's measured rate or the GPU's.

Every assumption not measured here is a named constant below; ``bench/forecast.py`` compares the
forecast with measured speeds (docs/benchmarks.md).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from app.core.gguf_info import GGUFInfo
    from app.core.hardware import HardwareInfo

log = logging.getLogger(__name__)

GB = 1e9
CACHE_VERSION = 2  # 2: llama.cpp's streaming rate from RAM (LlamaSpeeds.ram_read_gbs)
TOKENS_PER_PAGE = 600  # a printed page of prose: ~450 words, ~1.3 tokens a word
DEFAULT_DEPTH = 1024  # tokens already in the context when the shown tokens/s is forecast
# Not measured by the probe (labelled assumptions; GPU machines are checked by bench/forecast.py):
GPU_EFFICIENCY = 0.75  # fraction of a GPU's copy bandwidth token generation reaches
GPU_FLOP_PER_BYTE = 40.0  # a GPU's quantized matmul rate in FLOP/s per byte/s of its bandwidth
GPU_LAYER_S = 25e-6  # kernel launches per layer and token on a GPU
OFFLOAD_MIN_BATCH = 32  # llama.cpp offloads a CPU weight's matmul to the GPU from this batch size
SAMPLE_S_PER_VOCAB = 4e-9  # logits copy + sampling per vocabulary entry and token
# A compute server (llama.cpp RPC): its round trip is measured when it is registered; the rest
# are labelled assumptions.
RPC_ROUND_TRIPS = 2  # per graph split on a server and evaluation: the inputs sent, the result read
RPC_MIN_RTT_S = 20e-6  # below this the measured connect time is noise
NETWORK_GBS = 0.117  # 1 Gbit/s Ethernet, the common home/office link
LOOPBACK_GBS = 2.0  # a server on this machine (tests, benchmarks)
REMOTE_DEVICE_GBS = 50.0  # a compute server's memory rate: not reported by llama.cpp's RPC
# Without a probe (first start before the engine measured anything):
ASSUMED_RAM_GBS = 20.0
ASSUMED_TOKEN_S = 0.002
ASSUMED_PROMPT_TOKEN_S = 5e-5
ASSUMED_GFLOPS_PER_THREAD = 25.0
ASSUMED_GPU_GBS = 300.0
ASSUMED_UPLOAD_GBS = 12.0

_BITS = {"f32": 32.0, "f16": 16.0, "bf16": 16.0, "q8_0": 8.5, "q6_k": 6.5625, "q5_k": 5.5,
         "q5_0": 5.5, "q5_1": 6.0, "q4_k": 4.5, "q4_0": 4.5, "q4_1": 5.0, "q3_k": 3.4375,
         "q2_k": 2.625, "iq4_xs": 4.25, "iq4_nl": 4.5, "iq3_s": 3.4375, "iq3_xxs": 3.0625,
         "iq2_xxs": 2.0625, "iq2_xs": 2.3125, "iq2_s": 2.5, "iq1_s": 1.5625, "iq1_m": 1.75,
         "tq1_0": 1.6875, "tq2_0": 2.0625, "mxfp4": 4.25}  # fmt: skip


# --------------------------------------------------------------------------------------------
# What the probe measured


@dataclass(frozen=True)
class GpuSpeeds:
    """One GPU, measured through ggml: copy bandwidth on the device and host → device rate."""

    name: str  # ggml device name (CUDA0 …)
    memory_gbs: float
    upload_gbs: float


@dataclass(frozen=True)
class LlamaSpeeds:
    """llama.cpp at one thread count, measured on generated models (engine/speed_probe.py)."""

    n_threads: int
    token_s: float  # fixed cost of one decoded token, and of any batch (a model of ~nothing)
    prompt_token_s: float  # fixed cost of each prompt token
    attention_gflops: float  # a prompt's attention (QK and AV over the cache)
    read_gbs: float  # weights streamed per decoded token (a model held in the CPU's cache)
    gflops: float  # prompt matrix multiplications
    ram_gbs: float  # numpy's read rate of an array larger than the cache, same thread count
    ram_read_gbs: float = 0.0  # weights streamed per decoded token from RAM (0: not measured)


# What the engine process's probe returns (:func:`app.core.engine.speed_probe.measure_llama`):
# token_s, prompt_token_s, attention_gflops, read_gbs, gflops, ram_read_gbs
LlamaFigures = tuple[float, float, float, float, float, float]


@dataclass(frozen=True)
class MachineSpeeds:
    fingerprint: str
    cache_bytes: int  # CPU last-level cache (0: unknown)
    gpus: tuple[GpuSpeeds, ...] = ()
    llama: tuple[LlamaSpeeds, ...] = ()
    measured_at: float = 0.0

    def at_threads(self, n_threads: int) -> LlamaSpeeds | None:
        exact = [s for s in self.llama if s.n_threads == n_threads]
        return exact[0] if exact else None

    def gpu(self, name: str) -> GpuSpeeds | None:
        return next((g for g in self.gpus if g.name == name), None)

    def with_llama(self, speeds: LlamaSpeeds) -> MachineSpeeds:
        others = tuple(s for s in self.llama if s.n_threads != speeds.n_threads)
        return MachineSpeeds(self.fingerprint, self.cache_bytes, self.gpus, (*others, speeds), time.time())


def fingerprint(hw: HardwareInfo, llama_version: str = "") -> str:
    """What the measured figures depend on: CPU, cores, RAM size, GPUs, the llama.cpp build."""
    parts = [
        hw.cpu_name,
        str(hw.logical_cores),
        str(hw.physical_cores),
        str(round(hw.ram_total_bytes / 2**30)),
        *(f"{d.name}:{d.description}:{d.total_bytes}" for d in hw.devices),
        llama_version or _llama_version(),
    ]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _llama_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("llama_cpp_python")
    except metadata.PackageNotFoundError:
        return ""


def last_level_cache_bytes() -> int:
    """The CPU's largest cache (Linux sysfs; 0 where unknown)."""
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    best = 0
    for index in base.glob("index*"):
        try:
            text = (index / "size").read_text().strip().upper()
        except OSError:
            continue
        scale = {"K": 1024, "M": 1024**2, "G": 1024**3}.get(text[-1:], 1)
        try:
            best = max(best, int(text.rstrip("KMG")) * scale)
        except ValueError:
            continue
    return best


def measure_ram_gbs(n_threads: int = 1, cache_bytes: int = 0, seconds: float = 0.4) -> float:
    """System RAM's read rate in GB/s: numpy sums of an array 4× the last-level cache (at least
    256 MiB, at most 1 GiB), split across ``n_threads`` threads (numpy releases the GIL)."""
    import numpy as np

    size = int(min(2**30, max(2**28, 4 * cache_bytes)))
    data = np.ones(size // 8, dtype=np.float64)
    parts = np.array_split(data, max(1, n_threads))
    best = 0.0
    deadline = time.perf_counter() + seconds
    runs = 0
    while runs < 2 or (time.perf_counter() < deadline and runs < 8):
        started = time.perf_counter()
        if n_threads <= 1:
            float(data.sum())
        else:
            threads = [threading.Thread(target=part.sum) for part in parts]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        elapsed = time.perf_counter() - started
        best = max(best, data.nbytes / elapsed / GB)
        runs += 1
    return best


# --------------------------------------------------------------------------------------------
# The cache


class SpeedCache:
    """The probe's figures in one JSON file (the app's data folder), keyed by fingerprint."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self, fp: str) -> MachineSpeeds | None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
            return None
        entry = data.get("machines", {}).get(fp)
        if not isinstance(entry, dict):
            return None
        try:
            return MachineSpeeds(
                fingerprint=fp,
                cache_bytes=int(entry["cache_bytes"]),
                gpus=tuple(GpuSpeeds(**g) for g in entry["gpus"]),
                llama=tuple(LlamaSpeeds(**s) for s in entry["llama"]),
                measured_at=float(entry["measured_at"]),
            )
        except (KeyError, TypeError, ValueError):
            log.warning("ignoring a malformed speed cache entry in %s", self.path)
            return None

    def save(self, speeds: MachineSpeeds) -> None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
                data = {}
        except (OSError, ValueError):
            data = {}
        machines = data.get("machines", {}) if isinstance(data.get("machines"), dict) else {}
        entry = asdict(speeds)
        entry.pop("fingerprint")
        machines[speeds.fingerprint] = entry
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"version": CACHE_VERSION, "machines": machines}, indent=1), "utf-8")
        os.replace(tmp, self.path)


_default_cache: SpeedCache | None = None


def set_default_cache(path: Path | None) -> None:
    """Set once by the composition root: where :class:`~app.core.hardware.SystemHardware` finds
    the probe's figures (None: nowhere; plans then use the assumed figures)."""
    global _default_cache
    _default_cache = SpeedCache(path) if path is not None else None


def default_cache() -> SpeedCache | None:
    return _default_cache


def machine_speeds(
    hw: HardwareInfo,
    n_threads: int,
    cache: SpeedCache | None,
    *,
    measure_llama: Callable[[int], LlamaFigures],
    measure_gpus: Callable[[], Sequence[GpuSpeeds]] | None = None,
) -> MachineSpeeds:
    """The cached figures for this hardware at ``n_threads``, measuring what is missing (the GPUs
    once per fingerprint, llama.cpp and RAM once per thread count) and saving them.

    ``measure_llama(n_threads)`` returns :data:`LlamaFigures`: the engine process's
    :func:`app.core.engine.speed_probe.measure_llama`."""
    fp = fingerprint(hw)
    speeds = cache.load(fp) if cache is not None else None
    if speeds is not None and speeds.at_threads(n_threads) is not None:
        return speeds
    started = time.perf_counter()
    if speeds is None:
        if measure_gpus is None:
            from app.core import ggml_speed

            measure_gpus = ggml_speed.measure_gpus
        gpus = tuple(measure_gpus()) if hw.devices else ()
        speeds = MachineSpeeds(fp, last_level_cache_bytes(), gpus, (), time.time())
    token_s, prompt_token_s, attention_gflops, read_gbs, gflops, ram_read_gbs = measure_llama(n_threads)
    ram = measure_ram_gbs(n_threads, speeds.cache_bytes)
    llama = LlamaSpeeds(
        n_threads, token_s, prompt_token_s, attention_gflops, read_gbs, gflops, ram, ram_read_gbs
    )
    speeds = speeds.with_llama(llama)
    log.info("speed probe at %d thread(s) in %.1f s: %s", n_threads, time.perf_counter() - started, speeds)
    if cache is not None:
        try:
            cache.save(speeds)
        except OSError:
            log.warning("could not save the speed probe to %s", cache.path, exc_info=True)
    return speeds


# --------------------------------------------------------------------------------------------
# The model's side: parameters and bytes


def bits_per_weight(type_name: str) -> float:
    return _BITS.get(type_name.lower(), 4.5)


@dataclass(frozen=True)
class Pool:
    """Weights and KV cache on one memory pool (a GPU, or RAM: ``gpu`` None) under a plan."""

    gpu: str | None  # ggml device name; None = system RAM / CPU
    dense_bytes: int  # read for every token: attention, shared expert, norms, output layer
    expert_bytes: int  # routed experts: a fraction read per token
    dense_params: float
    expert_params: float
    layers: int  # repeating layers computed here
    kv_bytes_per_cell: int  # K + V bytes of one cached token, summed over this pool's layers
    attn_layers: tuple[bool, ...] = ()  # per layer here: chunked (True) or global
    bandwidth_gbs: float | None = None  # a GPU's catalogue bandwidth (used when not measured)
    endpoint: str = ""  # a compute server's "host:port" (llama.cpp RPC); "" = this machine
    rtt_s: float = 0.0  # that server's measured network round trip
    has_output: bool = False  # the output layer is here (a server then sends the logits back)

    @property
    def loopback(self) -> bool:
        return is_loopback(self.endpoint)


def is_loopback(endpoint: str) -> bool:
    """Whether a compute server's ``host:port`` is on this machine."""
    host = endpoint.rpartition(":")[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


def network_seconds(info: GGUFInfo, pool: Pool, tokens: int, evaluations: int = 1) -> float:
    """What reaching a compute server costs for ``tokens`` tokens in ``evaluations`` graph
    evaluations: round trips, the activations there and back, the logits when it holds the
    output layer. 0 for this machine's own devices."""
    if not pool.endpoint:
        return 0.0
    rate = (LOOPBACK_GBS if pool.loopback else NETWORK_GBS) * GB
    sent = 2 * tokens * info.n_embd * 4 + (evaluations * info.vocab_size * 4 if pool.has_output else 0)
    return evaluations * RPC_ROUND_TRIPS * max(pool.rtt_s, RPC_MIN_RTT_S) + sent / rate


@dataclass(frozen=True)
class Placement:
    """Where a plan puts the model: one :class:`Pool` per GPU holding layers, then RAM."""

    pools: tuple[Pool, ...]
    n_threads: int
    n_ubatch: int
    n_batch: int
    n_ctx: int
    has_gpu: bool  # a GPU build with a device (prompt batches may be offloaded to it)
    first_gpu: str = ""
    first_gpu_bandwidth: float | None = None


@dataclass(frozen=True)
class Forecast:
    tokens_per_s: float  # generation at :attr:`depth` tokens of context
    prompt_tokens_per_s: float  # a prompt of :attr:`prompt_tokens` from an empty context
    depth: int
    prompt_tokens: int
    measured: bool  # from this machine's probe (False: assumed figures)
    notes: tuple[str, ...] = field(default=())

    def seconds_for_prompt(self, tokens: int) -> float:
        return tokens / self.prompt_tokens_per_s if self.prompt_tokens_per_s > 0 else math.inf

    def minutes_to_read(self, pages: int = 100) -> float:
        return self.seconds_for_prompt(pages * TOKENS_PER_PAGE) / 60

    @property
    def summary(self) -> str:
        """``≈ 9.1 tok/s, prompt ≈ 240 tok/s; a 100-page document: about 4 minutes to read``."""
        if self.tokens_per_s <= 0:
            return ""
        return (
            f"≈ {speed_figure(self.tokens_per_s)} tok/s, prompt ≈ {speed_figure(self.prompt_tokens_per_s)}"
            f" tok/s; a 100-page document: {reading_time(self.minutes_to_read(100))} to read"
        )


def speed_figure(tps: float) -> str:
    if tps >= 100:
        return f"{tps:,.0f}"
    return f"{tps:.0f}" if tps >= 10 else f"{tps:.1f}"


def reading_time(minutes: float) -> str:
    if minutes < 1:
        return "under a minute"
    if minutes < 90:
        return f"about {minutes:.0f} minute{'s' if round(minutes) != 1 else ''}"
    return f"about {minutes / 60:.1f} hours"


def params_of(info: GGUFInfo) -> tuple[dict[int, tuple[float, float]], float]:
    """Parameters per layer (dense, expert) and of the output layer, from tensor sizes and types."""
    per_layer: dict[int, list[float]] = {}
    output = 0.0
    for t in info.tensors:
        n = t.n_bytes * 8 / bits_per_weight(t.type_name)
        if t.layer is not None:
            slot = per_layer.setdefault(t.layer, [0.0, 0.0])
            slot[1 if t.is_expert else 0] += n
        elif t.name.startswith("output."):
            output += n
    if not info.output_bytes and info.token_embd_bytes:  # tied output: the embedding matrix
        output = info.n_embd * info.vocab_size
    return {k: (v[0], v[1]) for k, v in per_layer.items()}, output


# --------------------------------------------------------------------------------------------
# The forecast


def forecast(
    info: GGUFInfo,
    placement: Placement,
    speeds: MachineSpeeds | None,
    *,
    depth: int = DEFAULT_DEPTH,
    prompt_tokens: int | None = None,
) -> Forecast:
    """Generation tokens/s at ``depth`` cached tokens, and prompt tokens/s for a prompt of
    ``prompt_tokens`` (default: the context, up to 8k) starting from an empty cache."""
    llama = speeds.at_threads(placement.n_threads) if speeds is not None else None
    measured = llama is not None
    if llama is None:
        llama = LlamaSpeeds(
            placement.n_threads,
            ASSUMED_TOKEN_S,
            ASSUMED_PROMPT_TOKEN_S,
            ASSUMED_GFLOPS_PER_THREAD * placement.n_threads / 4,
            ASSUMED_RAM_GBS,
            ASSUMED_GFLOPS_PER_THREAD * placement.n_threads,
            ASSUMED_RAM_GBS,
        )
    cache_bytes = speeds.cache_bytes if speeds is not None else 0
    depth = max(0, min(depth, placement.n_ctx))
    prompt = prompt_tokens or min(placement.n_ctx, 8192)
    token_s = _token_seconds(info, placement, speeds, llama, cache_bytes, depth)
    prompt_s = _prompt_seconds(info, placement, speeds, llama, cache_bytes, prompt)
    return Forecast(
        tokens_per_s=1 / token_s if token_s > 0 else 0.0,
        prompt_tokens_per_s=prompt / prompt_s if prompt_s > 0 else 0.0,
        depth=depth,
        prompt_tokens=prompt,
        measured=measured,
    )


def _cpu_read_gbs(placement: Placement, llama: LlamaSpeeds, cache_bytes: int) -> float:
    """llama.cpp's streaming rate for the CPU's weights: as measured while they fit in the cache,
    else as measured from RAM (a probe without that figure: no faster than RAM delivers)."""
    ram = next((p for p in placement.pools if p.gpu is None), None)
    resident = (ram.dense_bytes + ram.expert_bytes) if ram else 0
    if cache_bytes and resident <= cache_bytes // 2:
        return llama.read_gbs
    if llama.ram_read_gbs > 0:
        return llama.ram_read_gbs
    return min(llama.read_gbs, llama.ram_gbs)


def _gpu_rates(pool_gpu: str, fallback_bw: float | None, speeds: MachineSpeeds | None) -> tuple[float, float]:
    """(memory GB/s, upload GB/s) of a GPU: measured, else its catalogue figure."""
    measured = speeds.gpu(pool_gpu) if speeds is not None else None
    if measured is not None:
        return measured.memory_gbs, measured.upload_gbs
    return fallback_bw or ASSUMED_GPU_GBS, ASSUMED_UPLOAD_GBS


def _kv_cells(info: GGUFInfo, chunked: bool, tokens: float) -> float:
    if chunked and info.swa_window:
        return min(tokens, float(info.swa_window))
    return tokens


def _token_seconds(
    info: GGUFInfo,
    placement: Placement,
    speeds: MachineSpeeds | None,
    llama: LlamaSpeeds,
    cache_bytes: int,
    depth: int,
) -> float:
    used = max(1, info.n_expert_used) / info.n_expert if info.n_expert else 1.0
    seconds = llama.token_s + SAMPLE_S_PER_VOCAB * info.vocab_size
    cpu_gbs = _cpu_read_gbs(placement, llama, cache_bytes)
    for pool in placement.pools:
        active = pool.dense_bytes + pool.expert_bytes * used
        cells = sum(_kv_cells(info, c, depth) for c in pool.attn_layers)
        per_layer_cell = pool.kv_bytes_per_cell / max(1, len(pool.attn_layers))
        kv = cells * per_layer_cell
        if pool.gpu is None:
            seconds += (active + kv) / (cpu_gbs * GB)
        else:
            memory, _upload = _gpu_rates(pool.gpu, pool.bandwidth_gbs, speeds)
            seconds += (active + kv) / (memory * GPU_EFFICIENCY * GB) + GPU_LAYER_S * pool.layers
            seconds += network_seconds(info, pool, 1)
    return seconds


def _prompt_seconds(
    info: GGUFInfo,
    placement: Placement,
    speeds: MachineSpeeds | None,
    llama: LlamaSpeeds,
    cache_bytes: int,
    tokens: int,
) -> float:
    used = max(1, info.n_expert_used) / info.n_expert if info.n_expert else 1.0
    ubatch = max(1, min(placement.n_ubatch, placement.n_batch))
    n_micro = math.ceil(tokens / ubatch)
    cpu_gbs = _cpu_read_gbs(placement, llama, cache_bytes)
    width = info.n_head * (info.head_dim_k + info.head_dim_v)
    seconds = n_micro * llama.token_s + tokens * (
        llama.prompt_token_s + SAMPLE_S_PER_VOCAB * info.vocab_size / ubatch
    )
    for pool in placement.pools:
        flops = 2 * (pool.dense_params + pool.expert_params * used) * tokens
        # attention over the growing cache: each token attends to the ones before it (chunked
        # layers to at most their chunk); on the CPU at its own measured rate
        attention = 2 * width * sum(_avg_cells(info, c, tokens) for c in pool.attn_layers) * tokens
        weights = pool.dense_bytes + pool.expert_bytes * _touched(info, ubatch)
        if pool.gpu is None:
            seconds += attention / (llama.attention_gflops * 1e9)
            if placement.has_gpu and ubatch >= OFFLOAD_MIN_BATCH:
                # the matmuls go to the GPU, the weights uploaded for each micro-batch
                memory, upload = _gpu_rates(placement.first_gpu, placement.first_gpu_bandwidth, speeds)
                seconds += n_micro * weights / (upload * GB) + flops / (memory * GB * GPU_FLOP_PER_BYTE)
            else:
                seconds += flops / (llama.gflops * 1e9) + n_micro * weights / (cpu_gbs * GB)
        else:
            memory, _upload = _gpu_rates(pool.gpu, pool.bandwidth_gbs, speeds)
            seconds += (flops + attention) / (memory * GB * GPU_FLOP_PER_BYTE)
            seconds += n_micro * (weights / (memory * GPU_EFFICIENCY * GB) + GPU_LAYER_S * pool.layers)
            seconds += network_seconds(info, pool, tokens, n_micro)
    return seconds


def attention_flops(info: GGUFInfo, tokens: int) -> float:
    """FLOPs of the attention of a ``tokens``-token prompt from an empty cache, all layers."""
    width = info.n_head * (info.head_dim_k + info.head_dim_v)
    chunked = info.swa_layers or (False,) * info.n_layer
    return 2 * width * sum(_avg_cells(info, c, tokens) for c in chunked[: info.n_layer]) * tokens


def _avg_cells(info: GGUFInfo, chunked: bool, tokens: int) -> float:
    """Average cached tokens attended to over a prompt of ``tokens`` from an empty cache."""
    if chunked and info.swa_window and tokens > info.swa_window:
        w = info.swa_window
        return w / 2  # chunks restart: each token sees the start of its own chunk
    return tokens / 2


def _touched(info: GGUFInfo, ubatch: int) -> float:
    """Fraction of the routed experts a micro-batch uses (each token picks ``n_expert_used``)."""
    if not info.n_expert:
        return 1.0
    miss = 1 - max(1, info.n_expert_used) / info.n_expert
    return 1 - miss**ubatch


# --------------------------------------------------------------------------------------------
# Time left while a long prompt is read


@dataclass
class PromptTimer:
    """Seconds left of a prompt being read, from the rate measured while it is read.

    The first progress report (after llama.cpp's first batch) has no rate of its own yet: it
    uses ``known_rate`` (tokens/s the last answers measured, else the plan's forecast; 0: none).
    Later ones use the tokens read since the first report over the time since then (the first
    batch carries the start-up costs)."""

    known_rate: float = 0.0
    _first: tuple[float, int] | None = None

    def remaining(self, done: int, total: int, now: float) -> float | None:
        left = max(0, total - done)
        if self._first is None:
            self._first = (now, done)
            return left / self.known_rate if self.known_rate > 0 else None
        t0, d0 = self._first
        if now <= t0 or done <= d0:
            return left / self.known_rate if self.known_rate > 0 else None
        return left / ((done - d0) / (now - t0))


def format_time_left(seconds: float) -> str:
    """``about 40 s left`` / ``about 3 min left`` / ``about 1.5 h left``."""
    if seconds < 60:
        return f"about {max(1, round(seconds / 5) * 5 if seconds > 10 else round(seconds))} s left"
    if seconds < 5400:
        return f"about {round(seconds / 60)} min left"
    return f"about {seconds / 3600:.1f} h left"
