"""Planner benchmark: projection error vs llama.cpp's reported buffers, and time to plan Scout.

    python -m bench.planner

Reference = a real mmap load's log lines (model, KV, compute). "proj" = the planner's projection
with the dry-run compute figure; "formula" = the compute fallback without a dry run.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from app.core.engine.probe import measure_buffers
from app.core.gguf_info import read_gguf_info
from app.core.hardware import SimulatedHardware
from app.core.planner import PlanOverrides, make_plan
from app.core.projection import compute_formula
from app.core.scout_shape import write_scout_shape
from app.core.tiny_model import TinyModelSpec, quantized, write_tiny_model
from app.core.types import LoadParams


def _err(projected: int, reported: int) -> str:
    return f"{(projected - reported) / max(reported, 1) * 100:+6.2f}%"


def main() -> None:
    cpu = SimulatedHardware.cpu_only(64).probe()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        models = {
            "tiny F32": write_tiny_model(folder / "tiny.gguf")[0],
            "tiny Q8_0": write_tiny_model(folder / "tiny-q8.gguf", quantized(TinyModelSpec(), "Q8_0"))[0],
        }
        print(
            f"{'model':10} {'n_ctx':>6} {'KV':5} {'FA':3} "
            f"{'model':>8} {'KV':>8} {'compute':>8} {'formula':>8}"
        )
        for label, path in models.items():
            info = read_gguf_info(path)
            for n_ctx in (512, 4096, 16384, 65536):
                for kv, fa in (("f16", False), ("f16", True), ("q8_0", True), ("q4_0", True)):
                    params = LoadParams(model_path=path, n_ctx=n_ctx, flash_attn=fa, type_k=kv, type_v=kv)
                    dry, real = measure_buffers(params), measure_buffers(params, dry_run=False)
                    o = PlanOverrides(n_ctx=n_ctx, kv_type=kv, flash_attn=fa)
                    plan = make_plan(info, cpu, o, measurements={(n_ctx, fa, kv): dry})
                    formula = compute_formula(info, n_ctx, fa)
                    print(
                        f"{label:10} {n_ctx:>6} {kv:5} {'on' if fa else 'off':3} "
                        f"{_err(info.total_bytes, real.model_bytes):>8} "
                        f"{_err(plan.ram.kv, real.kv_bytes):>8} "
                        f"{_err(plan.ram.compute, real.compute_bytes):>8} "
                        f"{_err(formula, real.compute_bytes):>8}"
                    )
        print("\nScout-shaped Q4_K_M replica (sparse), dry run vs projection:")
        scout = write_scout_shape(folder / "scout.gguf", "Q4_K_M")[0]
        started = time.perf_counter()
        info = read_gguf_info(scout)
        print(f"  header read: {(time.perf_counter() - started) * 1000:.0f} ms ({info.reader})")
        for n_ctx in (8192, 32768, 131072):
            for fa in (False, True):
                params = LoadParams(model_path=scout, n_ctx=n_ctx, flash_attn=fa)
                dry = measure_buffers(params)
                plan = make_plan(info, cpu, PlanOverrides(n_ctx=n_ctx, kv_type="f16", flash_attn=fa))
                print(
                    f"  n_ctx {n_ctx:>6} FA {'on ' if fa else 'off'}: dry run {dry.seconds:.2f} s, "
                    f"KV {dry.kv_bytes / 2**20:8.1f} MiB ({_err(plan.ram.kv, dry.kv_bytes)}), "
                    f"compute {dry.compute_bytes / 2**20:7.1f} MiB "
                    f"(formula {_err(plan.ram.compute, dry.compute_bytes)})"
                )
        print("\nTime to plan the Scout layout (formula compute, 200 runs each):")
        for label, hw in (
            ("RTX 4090 24 GB + 64 GB", SimulatedHardware.nvidia(24, 64)),
            ("2 x 24 GB + 64 GB", SimulatedHardware.nvidia(24, 64, n=2)),
            ("8 GB + 16 GB (won't fit)", SimulatedHardware.nvidia(8, 16)),
            ("CPU 128 GB", SimulatedHardware.cpu_only(128)),
        ):
            probe = hw.probe()
            times = []
            for _ in range(200):
                t = time.perf_counter()
                plan = make_plan(info, probe)
                times.append(time.perf_counter() - t)
            print(
                f"  {label:26} median {statistics.median(times) * 1000:6.2f} ms, "
                f"max {max(times) * 1000:6.2f} ms: {plan.fits_text}"
            )
        print(f"\n  e.g. {make_plan(info, SimulatedHardware.nvidia(24, 64).probe()).explanation}")


if __name__ == "__main__":
    main()
