"""The speed forecast against measured speeds, on every model this machine can run.

    python -m bench.forecast [--threads 1 2] [--decodes 16]

For each thread count, generated model and context depth: the forecast's probe of this machine
(app/core/forecast.py: RAM, llama.cpp's per-token and per-batch costs, streaming and matmul rates),
measured just before and just after each row (a shared machine's speed changes several times over
within minutes; the forecast shown is the geometric mean of the two, with both in brackets); the
plan the app makes here, its forecast (generation tokens/s at that depth, prompt tokens/s for a
prompt of that length), and the same measured with the real llama.cpp loaded with the plan's
parameters (a prompt of that length from an empty cache, then decoded tokens; the mean of two
runs each, as an answer takes them).
Targets: generation within ±25 %, prompt within ±35 %.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any


def _models() -> tuple[tuple[str, dict[str, Any], tuple[int, ...]], ...]:
    from bench.documents import SCOUT_PROPORTIONED_SPEC
    from bench.generation import BENCH_SPEC

    return (
        ("tiny llama4 F32", {}, (512,)),
        ("tiny llama4 Q8_0", {"dtype": "Q8_0", "seed": 3}, (512,)),
        ("bench model (BENCH_SPEC, Q8_0)", BENCH_SPEC, (512, 4096)),
        ("Scout-proportioned (Q8_0)", SCOUT_PROPORTIONED_SPEC, (512, 2048)),
    )


def measure(params: Any, depth: int, decodes: int) -> tuple[float, float]:
    """(generation tokens/s at ``depth``, prompt tokens/s of a ``depth``-token prompt)."""
    from app.core.engine import LlamaEngine

    engine = LlamaEngine()
    engine.load(params)
    llm = engine._llm
    tokens = [(i * 7) % 300 + 10 for i in range(depth + decodes + 8)]
    prompts = []
    gens = []
    for _ in range(2):
        engine._reset_cache()
        started = time.perf_counter()
        for i in range(0, depth, params.n_batch):
            llm.eval(tokens[i : min(depth, i + params.n_batch)])
        prompts.append(time.perf_counter() - started)
        started = time.perf_counter()
        for k in range(decodes):
            llm.eval([tokens[depth + k]])
        gens.append((time.perf_counter() - started) / decodes)
    engine.unload()
    # means, as an answer takes them (and as the probe measures)
    return 1 / statistics.mean(gens), depth / statistics.mean(prompts)


def _measure_into(out: dict[str, tuple[float, float]], params: Any, depth: int, decodes: int) -> None:
    out["m"] = measure(params, depth, decodes)


def _forecast(info: Any, n: int, n_ctx: int, depth: int, cache: Any) -> tuple[Any, Any]:
    """:func:`_probe_forecast` on a thread of its own, which then ends (as the engine process's
    probe and the measurements): llama.cpp's OpenMP team spin-waits after each parallel region, so
    a team left on this thread would compete with the measurement for the cores."""
    out: list[tuple[Any, Any]] = []
    worker = threading.Thread(target=lambda: out.append(_probe_forecast(info, n, n_ctx, depth, cache)))
    worker.start()
    worker.join()
    return out[0]


def _probe_forecast(info: Any, n: int, n_ctx: int, depth: int, cache: Any) -> tuple[Any, Any]:
    """A fresh probe (on a shared machine the speed changes several times over within minutes,
    and the probe is a snapshot), the plan the app makes here and its forecast at ``depth``."""
    from app.core import forecast as fc
    from app.core.engine.speed_probe import measure_llama
    from app.core.hardware import SystemHardware
    from app.core.planner import PlanOverrides, forecast_for, make_plan

    hw = SystemHardware().probe()
    cache.path.unlink(missing_ok=True)
    speeds = fc.machine_speeds(hw, n, cache, measure_llama=measure_llama)
    s = speeds.at_threads(n)
    assert s is not None
    print(
        f"probe, {n} thread(s): token {s.token_s * 1000:.2f} ms, prompt token "
        f"{s.prompt_token_s * 1e6:.0f} µs, attention {s.attention_gflops:.0f} GFLOP/s, "
        f"streams {s.read_gbs:.1f} GB/s (from RAM {s.ram_read_gbs:.1f}), matmul {s.gflops:.0f} GFLOP/s, "
        f"RAM {s.ram_gbs:.1f} GB/s",
        flush=True,
    )
    hw = replace(hw, speeds=speeds)
    plan = make_plan(info, hw, PlanOverrides(n_ctx=n_ctx), n_threads=n)
    return plan, forecast_for(info, hw, plan, depth=depth, prompt_tokens=depth)


def run(threads: list[int], decodes: int) -> list[tuple[str, ...]]:
    from app.core import forecast as fc
    from app.core.gguf_info import read_gguf_info
    from app.core.tiny_model import TinyModelSpec, write_tiny_model

    rows: list[tuple[str, ...]] = []
    with tempfile.TemporaryDirectory(prefix="bench-forecast-") as tmp:
        cache = fc.SpeedCache(Path(tmp) / "speeds.json")
        files: dict[str, Path] = {}
        for label, spec, _depths in _models():
            files[label] = write_tiny_model(Path(tmp) / f"{len(files)}.gguf", TinyModelSpec(**spec))[0]
        for n in threads:
            for label, _spec, depths in _models():
                info = read_gguf_info(files[label])
                for depth in depths:
                    n_ctx = max(1024, depth * 2)
                    before = _forecast(info, n, n_ctx, depth, cache)
                    plan, _f = before
                    params = replace(plan.to_load_params(info.path), n_threads=n, n_threads_batch=n)
                    out: dict[str, tuple[float, float]] = {}
                    worker = threading.Thread(target=_measure_into, args=(out, params, depth, decodes))
                    worker.start()
                    worker.join()
                    gen, prompt = out["m"]
                    _plan, after = _forecast(info, n, n_ctx, depth, cache)
                    # the probe before and after the measurement bracket the machine's load
                    f_gen = statistics.geometric_mean([before[1].tokens_per_s, after.tokens_per_s])
                    f_prompt = statistics.geometric_mean(
                        [before[1].prompt_tokens_per_s, after.prompt_tokens_per_s]
                    )
                    row = (
                        label,
                        str(n),
                        f"{depth:,}",
                        f"{f_gen:,.0f} ({before[1].tokens_per_s:,.0f}–{after.tokens_per_s:,.0f})",
                        f"{gen:,.0f}",
                        f"{(f_gen / gen - 1) * 100:+.0f} %",
                        f"{f_prompt:,.0f}",
                        f"{prompt:,.0f}",
                        f"{(f_prompt / prompt - 1) * 100:+.0f} %",
                    )
                    print(" | ".join(row), flush=True)
                    rows.append(row)
    return rows


def main() -> None:
    from app.core.hardware import physical_cores

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, nargs="*", default=[1, max(1, physical_cores())])
    parser.add_argument("--decodes", type=int, default=16)
    args = parser.parse_args()
    rows = run(sorted(set(args.threads)), args.decodes)
    head = ("model", "threads", "depth", "gen forecast (before–after)", "gen measured", "error",
            "prompt forecast", "prompt measured", "error")  # fmt: skip
    print()
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
