"""Memory projection vs llama.cpp's own figures, and offload plans on Scout-shaped replicas."""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING

import pytest

from app.core.engine.probe import measure_buffers
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
    plan_with_dry_run,
)
from app.core.scout_shape import write_scout_shape
from app.core.types import LoadParams

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
        assert plan.n_cpu_moe == plan.n_gpu_layers
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
