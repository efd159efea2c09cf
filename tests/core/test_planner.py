"""Memory projection vs llama.cpp's own figures, and offload plans on Scout-shaped replicas."""

from __future__ import annotations

import re
import time
from dataclasses import replace
from typing import TYPE_CHECKING

import pytest

from app.core.engine.probe import MeasuredBuffers, measure_buffers
from app.core.gguf_info import GGUFInfo, read_gguf_info
from app.core.hardware import GIB, Device, SimulatedHardware
from app.core.planner import (
    KV_QUALITY,
    VERDICT_CPU,
    VERDICT_FULL,
    VERDICT_NO,
    VERDICT_SPLIT,
    Plan,
    PlanOverrides,
    make_plan,
    merge_overrides,
    plan_with_dry_run,
    safer_overrides,
)
from app.core.projection import RAM_MARGIN, compute_formula, host_compute_formula, layer_devices
from app.core.scout_shape import write_scout_shape
from app.core.tiny_model import TinyModelSpec, write_tiny_model
from app.core.types import LoadParams
from app.core.units import format_bytes
from bench.generation import BENCH_SPEC  # the replica the H100 ran

if TYPE_CHECKING:
    from pathlib import Path

CPU_BOX = SimulatedHardware.cpu_only(64).probe()


LOG_RESOLUTION = 2 * 10_486  # llama.cpp logs MiB with 2 decimals (±5 KiB per line, two KV lines)


def _close(projected: int, reported: int, tol: float = 0.05) -> bool:
    return abs(projected - reported) <= max(tol * reported, LOG_RESOLUTION)


@pytest.mark.parametrize("n_ctx", [512, 4096, 16384])
@pytest.mark.parametrize(("kv", "fa"), [("f16", False), ("f16", True), ("q8_0", True), ("q4_0", True)])
@pytest.mark.parametrize("model", ["tiny_model", "tiny_model_q8"])
def test_projection_matches_llama_cpp(
    request: pytest.FixtureRequest, model: str, n_ctx: int, kv: str, fa: bool
) -> None:
    path: Path = request.getfixturevalue(model)
    info = read_gguf_info(path)
    params = LoadParams(model_path=path, n_ctx=n_ctx, flash_attn=fa, type_k=kv, type_v=kv)
    dry = measure_buffers(params)  # what the planner uses
    real = measure_buffers(params, dry_run=False)  # a real mmap load: the reference
    plan = make_plan(
        info,
        CPU_BOX,
        PlanOverrides(n_ctx=n_ctx, kv_type=kv, flash_attn=fa),
        measurements={(n_ctx, fa, kv): dry},
    )
    assert (plan.n_ctx, plan.type_k, plan.flash_attn, plan.compute_source) == (n_ctx, kv, fa, "measured")
    assert _close(info.total_bytes, real.model_bytes), (info.total_bytes, real.model)
    assert _close(plan.ram.kv, real.kv_bytes), (plan.ram.kv, real.kv)
    assert _close(plan.ram.compute, real.compute_bytes), (plan.ram.compute, real.compute)


# --------------------------------------------------------------------------------------------
# Scout-shaped replicas


@pytest.fixture(scope="module")
def scout(tmp_path_factory: pytest.TempPathFactory) -> dict[str, GGUFInfo]:
    folder = tmp_path_factory.mktemp("scout")
    return {
        build: read_gguf_info(write_scout_shape(folder / f"scout-{build}.gguf", build)[0])
        for build in ("Q4_K_M", "UD-Q2_K_XL", "UD-IQ1_S")
    }


def test_scout_dry_run_matches_published_figures(scout: dict[str, GGUFInfo]) -> None:
    info = scout["Q4_K_M"]
    no_fa = measure_buffers(LoadParams(model_path=info.path, n_ctx=8192, flash_attn=False))
    fa = measure_buffers(LoadParams(model_path=info.path, n_ctx=8192, flash_attn=True))
    plan = make_plan(info, CPU_BOX, PlanOverrides(n_ctx=8192, kv_type="f16", flash_attn=True))
    assert no_fa.model_bytes == info.total_bytes
    assert _close(plan.ram.kv, fa.kv_bytes)
    # formula fallback within 5 % of the dry run at Scout's size
    assert _close(plan.ram.compute, fa.compute_bytes)
    assert 700 * 1024**2 < no_fa.compute_bytes < 760 * 1024**2
    assert fa.compute_bytes < no_fa.compute_bytes


def _hardware() -> list[tuple[str, SimulatedHardware]]:
    out = [
        (f"{v} GB GPU + {r} GB RAM", SimulatedHardware.nvidia(v, r))
        for v in (8, 12, 16, 24, 48, 80)
        for r in (16, 32, 64, 128)
    ]
    out += [(f"Apple {u} GB", SimulatedHardware.apple(u)) for u in (36, 64, 128)]
    out += [("2 × 24 GB + 64 GB", SimulatedHardware.nvidia(24, 64, n=2))]
    out += [("2 × 12 GB + 32 GB", SimulatedHardware.nvidia(12, 32, n=2))]
    out += [(f"CPU {r} GB", SimulatedHardware.cpu_only(r)) for r in (16, 64, 128)]
    return out


@pytest.mark.parametrize("build", ["Q4_K_M", "UD-Q2_K_XL", "UD-IQ1_S"])
@pytest.mark.parametrize(("label", "hw"), _hardware())
def test_plans_stay_within_budgets(
    scout: dict[str, GGUFInfo], build: str, label: str, hw: SimulatedHardware
) -> None:
    info = scout[build]
    plan = make_plan(info, hw.probe())
    assert plan.plan_seconds < 0.2
    if plan.fits:
        assert all(d.total <= d.budget for d in plan.devices), label
        assert plan.ram.total <= plan.ram.budget, label
    else:
        assert plan.verdict == VERDICT_NO
        assert plan.shortfall_bytes > 0
        total_budget = sum(d.budget for d in plan.devices) + plan.ram.budget
        assert total_budget < info.total_bytes * 1.1, (
            f"{label}: said won't fit with {total_budget / 1e9:.0f} GB"
        )
    assert plan.swa_full is False
    if plan.type_v != "f16":
        assert plan.flash_attn
    _check_explanation(plan)
    _check_dense_before_experts(info, plan)


def _check_explanation(plan: Plan) -> None:
    text = plan.explanation
    figures = re.findall(r"([\d.]+) GB (?:VRAM|RAM|GPU|CPU)", text)
    if plan.devices:
        assert figures[0] == f"{plan.vram_bytes / 1e9:.1f}"
        assert figures[1] == f"{plan.ram.total / 1e9:.1f}"
    else:
        assert figures[0] == f"{plan.ram.total / 1e9:.1f}"
    assert f"{plan.n_ctx // 1024}k context" in text
    assert "estimate" in text
    if plan.n_cpu_moe:
        assert f"experts of {plan.n_cpu_moe} layers in RAM" in text
    if not plan.fits:
        assert plan.fits_text.lower() in text.lower()


def _check_dense_before_experts(info: GGUFInfo, plan: Plan) -> None:
    """Experts leave the GPU before any dense part does: fewer GPU layers only once all experts are in RAM."""
    if 0 < plan.n_gpu_layers <= info.n_layer and plan.fits:
        # n_gpu_layers counts the output layer: n_gpu_layers - 1 repeating layers on the GPU
        assert plan.n_cpu_moe == plan.n_gpu_layers - 1
    if plan.n_cpu_moe:
        (override,) = plan.tensor_overrides
        found = re.match(r"blk\\\.\(([\d|]+)\)", override.pattern)
        assert found is not None
        layers = [int(x) for x in found.group(1).split("|")]
        assert len(layers) == plan.n_cpu_moe
        rx = re.compile(override.pattern)
        moved = [t.name for t in info.tensors if rx.search(t.name)]
        assert moved
        assert all(t.is_expert for t in info.tensors if t.name in moved)
        assert len(moved) == 3 * plan.n_cpu_moe


def _rank(plan: Plan) -> tuple[int, ...]:
    if not plan.fits:
        return (0, -plan.shortfall_bytes)
    return (1, plan.n_ctx, KV_QUALITY[plan.type_k], plan.n_gpu_layers, -plan.n_cpu_moe)


@pytest.mark.parametrize("build", ["Q4_K_M", "UD-IQ1_S"])
@pytest.mark.parametrize("ram", [32, 64, 128])
def test_more_vram_is_never_worse(scout: dict[str, GGUFInfo], build: str, ram: int) -> None:
    previous = None
    for vram in (4, 8, 12, 16, 20, 24, 32, 40, 48, 64, 80, 96):
        plan = make_plan(scout[build], SimulatedHardware.nvidia(vram, ram).probe())
        if previous is not None:
            assert _rank(plan) >= _rank(previous), (vram, plan.fits_text, previous.fits_text)
        previous = plan


def test_verdicts(scout: dict[str, GGUFInfo]) -> None:
    q4 = scout["Q4_K_M"]
    assert make_plan(q4, SimulatedHardware.nvidia(80, 128).probe()).verdict == VERDICT_FULL
    split = make_plan(q4, SimulatedHardware.nvidia(24, 64).probe())
    assert split.verdict == VERDICT_SPLIT
    assert split.n_gpu_layers == 49
    assert 0 < split.n_cpu_moe < 48
    assert make_plan(q4, SimulatedHardware.cpu_only(128).probe()).verdict == VERDICT_CPU
    small = make_plan(q4, SimulatedHardware.nvidia(8, 16).probe())
    assert small.verdict == VERDICT_NO
    assert small.fits_text.startswith("won't fit: needs ")
    assert small.n_ctx == 4096


def test_two_gpus_share_the_load(scout: dict[str, GGUFInfo]) -> None:
    plan = make_plan(scout["Q4_K_M"], SimulatedHardware.nvidia(24, 64, n=2).probe())
    a, b = (d.total for d in plan.devices)
    assert abs(a - b) < 0.15 * max(a, b)
    single = make_plan(scout["Q4_K_M"], SimulatedHardware.nvidia(24, 64).probe())
    assert plan.n_cpu_moe < single.n_cpu_moe


def test_overrides_recompute_the_projection(scout: dict[str, GGUFInfo]) -> None:
    info = scout["Q4_K_M"]
    hw = SimulatedHardware.nvidia(24, 64).probe()
    auto = make_plan(info, hw)
    more = make_plan(info, hw, PlanOverrides(n_cpu_moe=auto.n_cpu_moe + 4))
    assert more.n_cpu_moe == auto.n_cpu_moe + 4
    assert more.vram_bytes < auto.vram_bytes
    assert more.ram.total > auto.ram.total
    too_many = make_plan(info, hw, PlanOverrides(n_gpu_layers=49, n_cpu_moe=0))
    assert not too_many.fits
    assert "won't fit" in too_many.explanation.lower()
    short = make_plan(info, hw, PlanOverrides(n_ctx=8192, kv_type="q8_0"))
    assert (short.n_ctx, short.type_k, short.type_v, short.flash_attn) == (8192, "q8_0", "q8_0", True)
    assert short.n_cpu_moe <= auto.n_cpu_moe
    layers = make_plan(info, hw, PlanOverrides(n_gpu_layers=20))
    assert layers.n_gpu_layers == 20


def test_to_load_params(scout: dict[str, GGUFInfo]) -> None:
    info = scout["Q4_K_M"]
    plan = make_plan(info, SimulatedHardware.nvidia(24, 64).probe())
    params = plan.to_load_params(info.path)
    assert params.n_gpu_layers == plan.n_gpu_layers
    assert params.tensor_overrides == plan.tensor_overrides
    assert params.tensor_overrides[0].device == "CPU"
    assert (params.n_ctx, params.swa_full, params.use_mmap) == (plan.n_ctx, False, True)


def test_plan_with_dry_run_uses_measured_compute(scout: dict[str, GGUFInfo]) -> None:
    info = scout["Q4_K_M"]
    calls = []

    def measure(params: LoadParams) -> object:
        calls.append(params.n_ctx)
        return measure_buffers(params)

    started = time.perf_counter()
    plan = plan_with_dry_run(info, SimulatedHardware.nvidia(24, 64).probe(), measure=measure)  # type: ignore[arg-type]
    assert plan.compute_source == "measured"
    assert 1 <= len(calls) <= 3
    assert time.perf_counter() - started < 10


def test_plan_on_this_machine(tiny_model: Path) -> None:
    from app.core.hardware import SystemHardware

    plan = make_plan(read_gguf_info(tiny_model), SystemHardware().probe())
    assert plan.verdict == VERDICT_CPU
    assert plan.fits


def test_unified_memory_counts_once(scout: dict[str, GGUFInfo]) -> None:
    """On Apple silicon GPU and CPU share one pool: the sum must stay within the machine."""
    for gb in (36, 64, 128):
        hw = SimulatedHardware.apple(gb).probe()
        plan = make_plan(scout["UD-IQ1_S"], hw)
        if plan.fits:
            assert plan.vram_bytes + plan.ram.total <= hw.ram_available_bytes
    assert make_plan(scout["Q4_K_M"], SimulatedHardware.apple(36).probe()).verdict == VERDICT_NO
    assert make_plan(scout["Q4_K_M"], SimulatedHardware.apple(128).probe()).verdict == VERDICT_FULL
    assert Device("Metal", "Metal", GIB, GIB, True).unified


@pytest.mark.slow
def test_scout_real_load_matches_projection(scout: dict[str, GGUFInfo]) -> None:
    """A real mmap load of the sparse Scout replica at 8k (no repacking: nothing is copied).

    ~35 s here: llama.cpp prefaults the 65 GB mapping (holes read as zeros, page cache only)."""
    info = scout["Q4_K_M"]
    params = LoadParams(model_path=info.path, n_ctx=8192, flash_attn=True)
    real = measure_buffers(params, dry_run=False, repack=False)
    dry = measure_buffers(params)
    plan = make_plan(
        info,
        CPU_BOX,
        PlanOverrides(n_ctx=8192, kv_type="f16", flash_attn=True),
        measurements={(8192, True, "f16"): dry},
    )
    assert _close(info.total_bytes, real.model_bytes, 0.001)
    assert _close(plan.ram.kv, real.kv_bytes, 0.001)
    assert _close(plan.ram.compute, real.compute_bytes, 0.001)


# --------------------------------------------------------------------------------------------
# Against llama.cpp on a real GPU: an NVIDIA H100 with the CUDA build of llama.cpp 0.3.36 ran the
# benchmark replica below (bench/generation.py's BENCH_SPEC) and logged these buffers. There is no
# GPU here: the figures are replayed through MeasuredBuffers with CUDA buffer names.

MIB = 1024**2
H100 = SimulatedHardware.nvidia(80, 128, name="NVIDIA H100 80GB HBM3").probe()
H100_32K = (32768, True, "f16")


def _mib(x: float) -> int:
    return round(x * MIB)


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> GGUFInfo:
    path = tmp_path_factory.mktemp("bench") / "bench-llama4-q8_0.gguf"
    return read_gguf_info(write_tiny_model(path, TinyModelSpec(**BENCH_SPEC))[0])  # type: ignore[arg-type]


def _at_32k(info: GGUFInfo, n_gpu_layers: int, n_cpu_moe: int | None = None, **kw: object) -> Plan:
    o = PlanOverrides(
        n_gpu_layers=n_gpu_layers, n_cpu_moe=n_cpu_moe, n_ctx=32768, kv_type="f16", flash_attn=True
    )
    return make_plan(info, H100, o, **kw)  # type: ignore[arg-type]


def test_layer_devices_follow_llama_cpp() -> None:
    """i_gpu_start = max(n_layer + 1 - n_gpu_layers, 0): the output layer is one of n_gpu_layers."""
    gpu = SimulatedHardware.nvidia(24).probe().devices
    cpu = [-1] * 9
    assert layer_devices(8, 0, gpu) == cpu
    assert layer_devices(8, 1, gpu) == [-1] * 8 + [0]  # the output layer only
    # "offloading 3 repeating layers to GPU", "offloading output layer to GPU", "offloaded 4/9 layers"
    assert layer_devices(8, 4, gpu) == [-1] * 5 + [0, 0, 0] + [0]
    assert layer_devices(8, 8, gpu) == [-1] + [0] * 8
    assert layer_devices(8, 9, gpu) == [0] * 9
    assert layer_devices(8, 999, gpu) == [0] * 9
    assert layer_devices(8, 4, ()) == cpu
    two = SimulatedHardware.nvidia(24, n=2).probe().devices
    # act_gpu_layers = 9: fractions 0/9 .. 8/9 against the split points 0.5, 1.0
    assert layer_devices(8, 9, two) == [0] * 5 + [1] * 4
    assert layer_devices(8, 4, two) == [-1] * 5 + [0, 0, 1, 1]


def test_partial_offload_matches_the_h100_layers(bench: GGUFInfo) -> None:
    """n_gpu_layers=4 on 8 layers: layers 5..7 + output on CUDA0 (was 4..7, output on the CPU:
    GPU weights +32.6 %, GPU KV +17.3 %)."""
    plan = _at_32k(bench, 4)
    layer = bench.layers[0].total_bytes
    gpu, ram = plan.devices[0], plan.ram
    assert gpu.weights == 3 * layer + bench.output_bytes + bench.output_norm_bytes
    assert ram.weights == 5 * layer + bench.token_embd_bytes
    swa_layer, global_layer = _mib(8.5), _mib(32)  # 8704 and 32768 cells × 1 KiB (f16 K + V)
    assert gpu.kv == 2 * swa_layer + global_layer  # layers 5, 6 chunked; 7 global
    assert ram.kv == 4 * swa_layer + global_layer  # layers 0, 1, 2, 4 chunked; 3 global
    assert plan.n_cpu_moe == 0
    assert "3 of 8 layers and the output layer on the NVIDIA H100 80GB HBM3" in plan.explanation
    assert "the other 5 on the CPU" in plan.explanation
    only_output = _at_32k(bench, 1)
    assert only_output.devices[0].weights == bench.output_bytes + bench.output_norm_bytes
    assert "the output layer on the NVIDIA H100 80GB HBM3, all 8 layers on the CPU" in only_output.explanation
    # experts can only leave the GPU's repeating layers (3 of them here)
    assert _at_32k(bench, 4, 8).n_cpu_moe == 3


def test_compute_buffers_go_to_their_devices(bench: GGUFInfo) -> None:
    """CUDA0 on the GPU, CUDA_Host (pinned RAM) in RAM: never the max of the two on both."""
    measured = MeasuredBuffers(compute={"CUDA0": _mib(55.52), "CUDA_Host": _mib(43.52)})
    plan = _at_32k(bench, 4, measurements={H100_32K: measured})
    assert plan.compute_source == "measured"
    assert plan.devices[0].compute == _mib(55.52)
    assert plan.ram.compute == _mib(43.52)
    assert measured.host_compute_bytes == _mib(43.52)
    assert measured.device_compute == {"CUDA0": _mib(55.52)}


def test_host_compute_formula_scales_with_n_ctx(bench: GGUFInfo) -> None:
    """f16 masks: n_ctx × n_ubatch × 2 (global) + 8704 × n_ubatch × 2 (chunked) + the inputs.
    The old fixed 512·n_embd·16 bytes (6 MiB) was −86 % at 32k."""
    host = host_compute_formula(bench, 32768, True)
    assert _close(host, _mib(43.52), 0.01)
    assert _at_32k(bench, 4).ram.compute == host  # the estimate when nothing was measured
    assert host_compute_formula(bench, 65536, True) - host == 32768 * 512 * 2
    assert host_compute_formula(bench, 32768, False) > host  # f32 masks without flash attention
    # other sizes: scaled by the measured/formula ratio of a measured configuration
    measured = MeasuredBuffers(compute={"CUDA0": _mib(55.52), "CUDA_Host": _mib(43.52)})
    o = PlanOverrides(n_gpu_layers=4, n_ctx=16384, kv_type="f16", flash_attn=True)
    at_16k = make_plan(bench, H100, o, measurements={H100_32K: measured})
    assert at_16k.compute_source == "estimate"
    assert _close(at_16k.ram.compute, host_compute_formula(bench, 16384, True), 0.01)
    assert at_16k.ram.compute < _mib(43.52)
    assert at_16k.devices[0].compute < _mib(55.52)


def test_zero_gpu_layers_still_uses_the_gpu(bench: GGUFInfo) -> None:
    """A GPU build with n_gpu_layers=0 offloads big matmuls: CUDA0 87.60 MiB + CUDA_Host 43.52."""
    measured = MeasuredBuffers(compute={"CUDA0": _mib(87.60), "CUDA_Host": _mib(43.52)})
    plan = _at_32k(bench, 0, measurements={H100_32K: measured})
    assert plan.verdict == VERDICT_CPU
    gpu = plan.devices[0]
    assert (gpu.weights, gpu.kv, gpu.compute) == (0, 0, _mib(87.60))
    assert plan.ram.compute == _mib(43.52)
    assert plan.ram.weights == bench.total_bytes
    assert plan.vram_bytes == _mib(87.60)
    assert "prompt" in plan.explanation
    # without a measurement: a formula, on the GPU's budget, not 0
    estimate = _at_32k(bench, 0).devices[0].compute
    assert estimate >= compute_formula(bench, 32768, True)
    assert _close(estimate, _mib(87.60), 0.10)
    _check_explanation(_at_32k(bench, 0))
    # CPU-only machines: one CPU compute buffer, all in RAM
    cpu = make_plan(bench, CPU_BOX, PlanOverrides(n_ctx=32768, kv_type="f16", flash_attn=True))
    assert cpu.ram.compute == compute_formula(bench, 32768, True)


def test_per_device_compute_with_two_gpus_and_metal(bench: GGUFInfo) -> None:
    two = SimulatedHardware.nvidia(24, 64, n=2).probe()
    measured = MeasuredBuffers(compute={"CUDA0": _mib(40), "CUDA1": _mib(50), "CUDA_Host": _mib(43.52)})
    o = PlanOverrides(n_gpu_layers=9, n_ctx=32768, kv_type="f16", flash_attn=True)
    plan = make_plan(bench, two, o, measurements={H100_32K: measured})
    assert [d.compute for d in plan.devices] == [_mib(40), _mib(50)]
    assert plan.ram.compute == _mib(43.52)
    apple = SimulatedHardware.apple(64).probe()
    metal = MeasuredBuffers(compute={"MTL0": _mib(60), "CPU": _mib(43.52)})
    plan = make_plan(bench, apple, o, measurements={H100_32K: metal})
    assert (plan.devices[0].compute, plan.ram.compute) == (_mib(60), _mib(43.52))


def test_mapped_range_spans_gpu_tensors(bench: GGUFInfo) -> None:
    """n_cpu_moe=3 on a full offload: CPU_Mapped 55.30 MiB on the H100 — token_embd to blk.2's
    experts, blk.0..2's dense (GPU) tensors included — while the CPU weights are 43.32 MiB."""
    from app.core.gguf_info import _read_ggml

    plan = _at_32k(bench, 9, 3)
    assert _close(plan.ram.weights, _mib(43.32), 0.001)
    assert _close(plan.ram.mapped, _mib(55.30), 0.001)
    ram = plan.ram  # the gap is page cache: not in the RAM budget
    assert ram.total == ram.weights + ram.kv + ram.compute + ram.other
    mapped = format_bytes(plan.ram.mapped)  # "58.0 MB": figures are in MB / GB of 10^6 / 10^9 bytes
    assert any("CPU_Mapped" in note and "page cache" in note and mapped in note for note in plan.notes)
    # the offsets the planner derives from tensor order + alignment are the file's
    raw = _read_ggml(bench.path)
    offset = 0
    for (name, _type, n_bytes, real), t in zip(raw.tensors, bench.tensors, strict=True):
        assert (name, real) == (t.name, offset)
        offset = -(-(offset + n_bytes) // 32) * 32
    # everything on the CPU: the mapping is the whole data section
    assert _at_32k(bench, 0).ram.mapped == offset - (-(-bench.output_bytes // 32) * 32 - bench.output_bytes)
    assert not _at_32k(bench, 0).notes[:-1]


def test_safer_overrides_with_the_output_layer_counted(bench: GGUFInfo) -> None:
    plan = _at_32k(bench, 4)
    assert plan.n_cpu_moe == 0
    nxt = safer_overrides(replace(plan, n_ctx=4096), PlanOverrides(n_gpu_layers=4, kv_type="f16"))
    assert nxt is not None
    assert nxt[0].n_cpu_moe == bench.n_layer  # all experts of the GPU layers to RAM
    all_out = _at_32k(bench, 4, 3)
    assert all_out.n_cpu_moe == 3  # every GPU repeating layer's experts: nothing more to move
    nxt = safer_overrides(
        replace(all_out, n_ctx=4096), PlanOverrides(n_gpu_layers=4, n_cpu_moe=3, kv_type="f16")
    )
    assert nxt is not None
    assert (nxt[0].n_gpu_layers, nxt[1]) == (2, "GPU layers reduced to 2")


def test_flash_attention_is_off_on_the_cpu_when_its_buffers_fit(scout: dict[str, GGUFInfo]) -> None:
    """llama.cpp's CPU flash-attention kernel is slower than its matmul attention (bench/
    attention.py); a CPU-only plan keeps it off unless memory needs it, a GPU plan keeps it on."""
    info = scout["UD-IQ1_S"]
    roomy = make_plan(info, SimulatedHardware.cpu_only(128).probe())
    assert roomy.fits
    assert not roomy.flash_attn
    assert roomy.type_v == "f16"
    assert "flash attention off: slower on a CPU" in roomy.explanation
    gpu = make_plan(info, SimulatedHardware.nvidia(24, 128).probe())
    assert gpu.flash_attn
    # where only flash attention's smaller buffers fit, the context is kept and flash attention used
    no_fa = make_plan(info, CPU_BOX, PlanOverrides(n_ctx=roomy.n_ctx, kv_type="f16", flash_attn=False))
    fa = make_plan(info, CPU_BOX, PlanOverrides(n_ctx=roomy.n_ctx, kv_type="f16", flash_attn=True))
    assert no_fa.ram.compute > fa.ram.compute
    between = (no_fa.ram.total + fa.ram.total) // 2 + RAM_MARGIN  # a budget between the two
    tight = SimulatedHardware([], ram_total_gb=256, ram_available_gb=between / GIB)
    plan = make_plan(info, tight.probe(), PlanOverrides(n_ctx=roomy.n_ctx))
    assert plan.fits
    assert plan.flash_attn
    assert plan.n_ctx == roomy.n_ctx
    # the user's choice wins
    chosen = make_plan(info, SimulatedHardware.nvidia(24, 128).probe(), PlanOverrides(flash_attn=False))
    assert not chosen.flash_attn


def test_merge_overrides_takes_the_settings_context_only_as_a_target_when_none_is_fixed() -> None:
    assert merge_overrides(None, 0) == PlanOverrides()
    assert merge_overrides(None, 16384) == PlanOverrides(n_ctx_target=16384)
    gpu = PlanOverrides(n_gpu_layers=10)
    assert merge_overrides(gpu, 16384) == PlanOverrides(n_gpu_layers=10, n_ctx_target=16384)
    fixed = PlanOverrides(n_ctx=8192)
    assert merge_overrides(fixed, 16384) == fixed
    target = PlanOverrides(n_ctx_target=65536)
    assert merge_overrides(target, 16384) == target
