"""The speed forecast: its arithmetic on fed figures, the probe (real llama.cpp, real ggml) and its
cache, and the planner's prompt micro-batch on a GPU machine with experts in RAM (fed GPU figures:
there is no GPU here). No timing is asserted: the machine is shared."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import pytest

from app.core import forecast as fc
from app.core.engine.probe import MeasuredBuffers
from app.core.forecast import (
    GB,
    GpuSpeeds,
    LlamaFigures,
    LlamaSpeeds,
    MachineSpeeds,
    Placement,
    Pool,
    SpeedCache,
)
from app.core.gguf_info import GGUFInfo, read_gguf_info
from app.core.hardware import SimulatedHardware
from app.core.planner import (
    GEN_LOSS_MAX,
    UBATCH_CHOICES,
    UBATCH_GAIN,
    PlanOverrides,
    forecast_for,
    make_plan,
    placement_of,
    plan_with_dry_run,
    with_ubatch,
)
from app.core.projection import N_UBATCH, Config, Projector, compute_model
from app.core.scout_shape import write_scout_shape

if TYPE_CHECKING:
    from pathlib import Path

    from app.core.forecast import Forecast
    from app.core.hardware import HardwareInfo
    from app.core.planner import Plan

LLAMA_1 = LlamaSpeeds(
    n_threads=1,
    token_s=0.001,
    prompt_token_s=2e-5,
    attention_gflops=10.0,
    read_gbs=8.0,
    gflops=40.0,
    ram_gbs=8.0,
)


def fed(fp: str = "x", *, gpus: tuple[GpuSpeeds, ...] = (), threads: int = 8) -> MachineSpeeds:
    return MachineSpeeds(fp, 0, gpus, (dataclasses.replace(LLAMA_1, n_threads=threads),))


@pytest.fixture(scope="module")
def scout(tmp_path_factory: pytest.TempPathFactory) -> GGUFInfo:
    return read_gguf_info(write_scout_shape(tmp_path_factory.mktemp("scout") / "scout.gguf", "Q4_K_M")[0])


# --------------------------------------------------------------------------------------------
# arithmetic


def test_generation_is_the_per_token_cost_plus_active_bytes_over_the_rate(tiny_model: Path) -> None:
    info = read_gguf_info(tiny_model)
    pool = Pool(None, dense_bytes=10**8, expert_bytes=4 * 10**8, dense_params=1e8, expert_params=4e8,
                layers=info.n_layer, kv_bytes_per_cell=0, attn_layers=())  # fmt: skip
    placement = Placement((pool,), n_threads=1, n_ubatch=512, n_batch=512, n_ctx=4096, has_gpu=False)
    f = fc.forecast(info, placement, fed(threads=1), depth=0, prompt_tokens=512)
    used = info.n_expert_used / info.n_expert
    active = 10**8 + 4 * 10**8 * used
    expected_s = LLAMA_1.token_s + fc.SAMPLE_S_PER_VOCAB * info.vocab_size + active / (LLAMA_1.read_gbs * GB)
    assert f.tokens_per_s == pytest.approx(1 / expected_s)
    assert f.measured
    # the prompt: per-batch + per-token costs, the weights' FLOPs at the matmul rate, one read of
    # the weights a micro-batch touches
    touched = 1 - (1 - used) ** 512
    flops = 2 * (1e8 + 4e8 * used) * 512
    prompt_s = (
        LLAMA_1.token_s
        + 512 * (LLAMA_1.prompt_token_s + fc.SAMPLE_S_PER_VOCAB * info.vocab_size / 512)
        + flops / (LLAMA_1.gflops * 1e9)
        + (10**8 + 4 * 10**8 * touched) / (LLAMA_1.read_gbs * GB)
    )
    assert f.prompt_tokens_per_s == pytest.approx(512 / prompt_s)
    assert f.minutes_to_read(100) == pytest.approx(100 * fc.TOKENS_PER_PAGE / f.prompt_tokens_per_s / 60)


def test_weights_larger_than_the_cache_stream_at_the_rate_measured_from_ram(tiny_model: Path) -> None:
    """A model held in the CPU's cache decodes at the probe's in-cache rate; a larger one at its
    rate from RAM (a probe from before that figure: no faster than numpy reads RAM)."""
    info = read_gguf_info(tiny_model)
    speeds = dataclasses.replace(LLAMA_1, read_gbs=16.0, ram_read_gbs=6.0, ram_gbs=12.0)

    def token_s(resident: int, llama: LlamaSpeeds) -> float:
        pool = Pool(None, dense_bytes=resident, expert_bytes=0, dense_params=resident, expert_params=0,
                    layers=info.n_layer, kv_bytes_per_cell=0, attn_layers=())  # fmt: skip
        placement = Placement((pool,), n_threads=1, n_ubatch=512, n_batch=512, n_ctx=4096, has_gpu=False)
        machine = MachineSpeeds("x", 300 * 10**6, (), (llama,))
        f = fc.forecast(info, placement, machine, depth=0, prompt_tokens=512)
        return 1 / f.tokens_per_s - llama.token_s - fc.SAMPLE_S_PER_VOCAB * info.vocab_size

    assert token_s(10**8, speeds) == pytest.approx(10**8 / (16.0 * GB))  # in the cache
    assert token_s(10**9, speeds) == pytest.approx(10**9 / (6.0 * GB))  # from RAM
    older = dataclasses.replace(speeds, ram_read_gbs=0.0)
    assert token_s(10**9, older) == pytest.approx(10**9 / (12.0 * GB))


def test_a_deeper_context_is_slower_and_unmeasured_machines_say_so(tiny_model: Path) -> None:
    info = read_gguf_info(tiny_model)
    hw = dataclasses.replace(SimulatedHardware.cpu_only(16).probe(), speeds=fed())
    plan = make_plan(info, hw, PlanOverrides(n_ctx=8192))
    shallow = forecast_for(info, hw, plan, depth=100, prompt_tokens=512)
    deep = forecast_for(info, hw, plan, depth=8000, prompt_tokens=8000)
    assert deep.tokens_per_s < shallow.tokens_per_s
    assert deep.prompt_tokens_per_s < shallow.prompt_tokens_per_s
    assert plan.forecast.measured
    assert "tok/s" in plan.explanation
    unmeasured = make_plan(info, SimulatedHardware.cpu_only(16).probe(), PlanOverrides(n_ctx=8192))
    assert not unmeasured.forecast.measured
    assert "not yet measured" in unmeasured.explanation


def test_measured_gpu_figures_replace_the_catalogue(scout: GGUFInfo) -> None:
    hw = SimulatedHardware.nvidia(80, 128, name="NVIDIA H100").probe()
    slow = dataclasses.replace(hw, speeds=fed(gpus=(GpuSpeeds("CUDA0", 1000.0, 25.0),)))
    fast = dataclasses.replace(hw, speeds=fed(gpus=(GpuSpeeds("CUDA0", 2000.0, 25.0),)))
    a, b = make_plan(scout, slow), make_plan(scout, fast)
    assert a.verdict == b.verdict == "full GPU"
    assert b.forecast.tokens_per_s > 1.5 * a.forecast.tokens_per_s


# --------------------------------------------------------------------------------------------
# the micro-batch with experts in RAM (fed GPU figures)


def test_experts_in_ram_get_a_larger_micro_batch_that_reads_prompts_faster(scout: GGUFInfo) -> None:
    hw = SimulatedHardware.nvidia(24, 128).probe()
    hw = dataclasses.replace(hw, speeds=fed(gpus=(GpuSpeeds("CUDA0", 900.0, 25.0),)))
    plan = make_plan(scout, hw)
    assert plan.fits
    assert plan.n_cpu_moe > 0
    assert plan.n_ubatch > N_UBATCH
    assert plan.n_batch >= plan.n_ubatch
    params = plan.to_load_params(scout.path)
    assert (params.n_batch, params.n_ubatch) == (plan.n_batch, plan.n_ubatch)
    forced = make_plan(scout, hw, PlanOverrides(n_ubatch=N_UBATCH))
    assert forced.n_ubatch == N_UBATCH
    assert plan.forecast.prompt_tokens_per_s > 1.5 * forced.forecast.prompt_tokens_per_s
    # the larger compute buffers and logits array are counted
    assert plan.devices[0].compute > forced.devices[0].compute
    assert plan.ram.other > forced.ram.other
    assert f"{plan.n_ubatch:,}" in plan.explanation
    # a faster bus makes prompts faster
    quick = dataclasses.replace(hw, speeds=fed(gpus=(GpuSpeeds("CUDA0", 900.0, 50.0),)))
    assert make_plan(scout, quick).forecast.prompt_tokens_per_s > plan.forecast.prompt_tokens_per_s


def test_cpu_only_and_full_gpu_plans_keep_the_default_micro_batch(scout: GGUFInfo) -> None:
    assert make_plan(scout, SimulatedHardware.cpu_only(128).probe()).n_ubatch == N_UBATCH
    assert make_plan(scout, SimulatedHardware.nvidia(140, 256).probe()).n_ubatch == N_UBATCH


def test_the_micro_batch_shrinks_when_llama_cpp_measures_it_too_big(scout: GGUFInfo) -> None:
    hw = SimulatedHardware.nvidia(24, 128).probe()
    hw = dataclasses.replace(hw, speeds=fed(gpus=(GpuSpeeds("CUDA0", 900.0, 25.0),)))
    sizes: list[int] = []

    def measure(params: object) -> MeasuredBuffers:
        ub = params.n_ubatch  # type: ignore[attr-defined]
        sizes.append(ub)
        # llama.cpp's figure: modest at the base micro-batch, far too big above 1024
        gpu = 300 * 1024**2 if ub <= 1024 else 30 * 1024**3
        return MeasuredBuffers(compute={"CUDA0": gpu, "CUDA_Host": 50 * 1024**2})

    plan = plan_with_dry_run(scout, hw, measure=measure)
    assert sizes[0] == N_UBATCH  # measured at the base first
    assert plan.fits
    assert plan.n_ubatch <= 1024
    assert any(s > 1024 for s in sizes)  # the larger choice was checked and given up


def _every_plan(info: GGUFInfo, hw: HardwareInfo, plan: Plan) -> list[tuple[bool, Forecast]]:
    """Every layout (GPU layers × experts in RAM) × micro-batch at the plan's context and KV
    cache: (fits, forecast)."""
    proj = Projector(info, hw, mmproj_bytes=0, compute_for=compute_model(info, hw.devices, {}))
    params = fc.params_of(info)
    n_ctx, kv, fa = plan.n_ctx, plan.type_k, plan.flash_attn
    out = []
    for g in range(info.n_layer + 2):
        for e in range(info.n_layer + 1):
            cfg = Config(g, e, n_ctx, kv, fa)
            placement = placement_of(info, hw, proj, cfg, plan.n_threads, params=params)
            for u in UBATCH_CHOICES:
                fits = with_ubatch(proj.project(cfg), info, u).fits
                at_u = dataclasses.replace(placement, n_ubatch=u, n_batch=max(512, u))
                out.append((fits, fc.forecast(info, at_u, hw.speeds)))
    return out


def test_a_slow_gpu_loses_to_the_cpu_and_the_plan_says_why(scout: GGUFInfo) -> None:
    """Fed figures: a GPU whose memory is slower than this machine's RAM. Every layout fits (80 GB
    of GPU memory); the forecast's fastest is the one with nothing on the GPU, and it is chosen."""
    hw = SimulatedHardware.nvidia(80, 128).probe()
    hw = dataclasses.replace(hw, speeds=fed(gpus=(GpuSpeeds("CUDA0", 3.0, 25.0),)))
    plan = make_plan(scout, hw, PlanOverrides(n_ctx=8192))
    assert plan.fits
    assert plan.forecast.measured
    assert plan.n_gpu_layers == 0
    assert plan.label == "CPU only"
    every = _every_plan(scout, hw, plan)
    assert plan.forecast.tokens_per_s == pytest.approx(max(f.tokens_per_s for fits, f in every if fits))
    assert "fastest answers" in plan.explanation
    assert "all 48 layers on the GPU" in plan.explanation  # what it is compared with
    # the usual fast GPU: everything on it, no such note
    fast = dataclasses.replace(hw, speeds=fed(gpus=(GpuSpeeds("CUDA0", 2000.0, 25.0),)))
    usual = make_plan(scout, fast, PlanOverrides(n_ctx=8192))
    assert usual.verdict == "full GPU"
    assert "fastest answers" not in usual.explanation


def test_the_fastest_plan_that_fits_is_chosen_never_one_that_does_not(scout: GGUFInfo) -> None:
    """Fed figures, a 24 GB GPU: putting everything on it would be fastest but does not fit; the
    plan is the forecast's fastest of those that fit (its generation within GEN_LOSS_MAX of their
    best, traded for faster prompts), and no faster plan that fits is left out."""
    hw = SimulatedHardware.nvidia(24, 128).probe()
    hw = dataclasses.replace(hw, speeds=fed(gpus=(GpuSpeeds("CUDA0", 900.0, 25.0),)))
    plan = make_plan(scout, hw, PlanOverrides(n_ctx=8192))
    assert plan.fits
    every = _every_plan(scout, hw, plan)
    fitting = [f for fits, f in every if fits]
    best_gen = max(f.tokens_per_s for f in fitting)
    assert max(f.tokens_per_s for fits, f in every if not fits) > 1.5 * best_gen  # the GPU would be faster
    assert plan.forecast.tokens_per_s >= (1 - GEN_LOSS_MAX) * best_gen
    near = [f for f in fitting if f.tokens_per_s >= (1 - GEN_LOSS_MAX) * best_gen]
    assert plan.forecast.prompt_tokens_per_s * UBATCH_GAIN >= max(f.prompt_tokens_per_s for f in near)
    # the plan's own projection fits, at its micro-batch
    assert all(d.total <= d.budget for d in plan.devices)
    assert plan.ram.total <= plan.ram.budget


# --------------------------------------------------------------------------------------------
# the probe and its cache (real llama.cpp, real ggml)


def test_the_probe_runs_and_is_cached_per_hardware(tmp_path: Path) -> None:
    from app.core.engine.speed_probe import measure_llama

    cache = SpeedCache(tmp_path / "speeds.json")
    hw = SimulatedHardware.cpu_only(16).probe()
    calls: list[int] = []

    def counted(n: int) -> LlamaFigures:
        calls.append(n)
        return measure_llama(n)

    speeds = fc.machine_speeds(hw, 1, cache, measure_llama=counted)
    llama = speeds.at_threads(1)
    assert llama is not None
    assert calls == [1]
    assert all(v > 0 for v in dataclasses.astuple(llama))
    assert cache.load(fc.fingerprint(hw)) == speeds

    def refuse(_n: int) -> LlamaFigures:
        raise AssertionError("measured again")

    assert fc.machine_speeds(hw, 1, cache, measure_llama=refuse) == speeds  # cached
    other = dataclasses.replace(hw, cpu_name="another CPU")
    assert fc.fingerprint(other) != fc.fingerprint(hw)
    remeasured = fc.machine_speeds(
        other, 1, cache, measure_llama=lambda n: (0.001, 1e-5, 5.0, 4.0, 30.0, 3.0)
    )
    assert remeasured.fingerprint == fc.fingerprint(other)
    assert cache.load(fc.fingerprint(hw)) == speeds  # both kept


def test_gpus_are_measured_once_per_hardware_and_new_thread_counts_added(tmp_path: Path) -> None:
    cache = SpeedCache(tmp_path / "speeds.json")
    hw = SimulatedHardware.nvidia(24).probe()
    gpu_calls = []

    def gpus() -> list[GpuSpeeds]:
        gpu_calls.append(1)
        return [GpuSpeeds("CUDA0", 900.0, 25.0)]

    figures = (0.001, 1e-5, 5.0, 4.0, 30.0, 3.0)
    fc.machine_speeds(hw, 1, cache, measure_llama=lambda n: figures, measure_gpus=gpus)
    both = fc.machine_speeds(hw, 8, cache, measure_llama=lambda n: figures, measure_gpus=gpus)
    assert gpu_calls == [1]
    assert both.gpu("CUDA0") == GpuSpeeds("CUDA0", 900.0, 25.0)
    assert {s.n_threads for s in both.llama} == {1, 8}


def test_a_damaged_cache_is_measured_again(tmp_path: Path) -> None:
    path = tmp_path / "speeds.json"
    path.write_text("{not json")
    assert SpeedCache(path).load("x") is None
    path.write_text(f'{{"version": {fc.CACHE_VERSION}, "machines": {{"x": {{"cache_bytes": "?"}}}}}}')
    assert SpeedCache(path).load("x") is None


def test_the_device_probe_measures_through_ggml() -> None:
    """The GPU probe's ggml calls, on the one device every machine has (the CPU's)."""
    from app.core.ggml_speed import cpu_device, measure_device

    copy, upload = measure_device(cpu_device(), 16 * 1024**2, runs=2)
    assert copy > 0
    assert upload > 0


# --------------------------------------------------------------------------------------------
# time left while a prompt is read


def test_prompt_time_left_comes_from_the_rate_measured_while_reading() -> None:
    timer = fc.PromptTimer(known_rate=100.0)
    # the first batch: no rate of its own yet, the known one (1,536 tokens at 100 tok/s)
    assert timer.remaining(512, 2048, now=10.0) == pytest.approx(15.36)
    # then: 512 tokens in 2 s since the first report -> 256 tok/s, 1,024 left
    assert timer.remaining(1024, 2048, now=12.0) == pytest.approx(4.0)
    assert timer.remaining(2048, 2048, now=14.0) == 0
    assert fc.PromptTimer().remaining(512, 2048, now=1.0) is None  # nothing known yet
    assert fc.format_time_left(7) == "about 7 s left"
    assert fc.format_time_left(42) == "about 40 s left"
    assert fc.format_time_left(130) == "about 2 min left"
    assert fc.format_time_left(3 * 3600) == "about 3.0 h left"
