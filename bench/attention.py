"""Attention on the CPU: llama.cpp's flash-attention kernel against its matrix-multiply path.

    python -m bench.attention [--context 4000] [--runs 3]

A generated llama4 model with Scout's attention shape (5120 wide, 40 query heads, 8 KV heads of
128) and small experts, 4 layers (3 chunked + 1 global, as Scout interleaves them), Q8_0. For each
configuration the KV cache is filled with ``--context`` tokens, then it times a 51-token follow-up
prompt and single next tokens. Baseline: flash attention off, f16 KV cache, measured in the same
run. The planner uses the result: a CPU-only plan keeps flash attention off when its larger f32
attention buffers fit (app/core/planner.py, ``_search_ladder``).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

SCOUT_ATTENTION_SPEC = {
    "n_layer": 4,
    "n_embd": 5120,
    "n_head": 40,
    "n_head_kv": 8,
    "n_expert": 2,
    "n_ff_exp": 256,
    "dtype": "Q8_0",
    "seed": 5,
    "name": "bench llama4 (Scout's attention shape)",
}
CONFIGS = (("flash off, f16 KV (baseline)", False, "f16"), ("flash on, f16 KV", True, "f16"),
           ("flash on, q8_0 KV", True, "q8_0"))  # fmt: skip


def measure(model: Path, flash: bool, kv: str, context: int, runs: int) -> tuple[float, float]:
    from app.core.engine import LlamaEngine
    from app.core.types import LoadParams

    engine = LlamaEngine()
    engine.load(LoadParams(model, n_ctx=context + 512, flash_attn=flash, type_k=kv, type_v=kv))
    llm = engine._llm
    tokens = [i % 300 + 10 for i in range(context + 64)]
    prompts, nexts = [], []
    for _ in range(runs):
        engine._reset_cache()
        for i in range(0, context, 512):
            llm.eval(tokens[i : min(context, i + 512)])
        started = time.perf_counter()
        llm.eval(tokens[:51])
        prompts.append(time.perf_counter() - started)
        for k in range(3):
            started = time.perf_counter()
            llm.eval([tokens[k]])
            nexts.append(time.perf_counter() - started)
    engine.unload()
    return statistics.median(prompts), statistics.median(nexts)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--context", type=int, default=4000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    from app.core.tiny_model import TinyModelSpec, write_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        model = write_tiny_model(Path(tmp) / "attention.gguf", TinyModelSpec(**SCOUT_ATTENTION_SPEC))[0]
        results: dict[str, tuple[float, float]] = {}

        def run() -> None:  # on a thread of its own, as the app's inference thread
            for label, flash, kv in CONFIGS:
                results[label] = measure(model, flash, kv, args.context, args.runs)

        worker = threading.Thread(target=run)
        worker.start()
        worker.join()
    base_prompt, base_next = results[CONFIGS[0][0]]
    print(
        f"CPU attention over a {args.context}-token cache, Scout's attention shape (median of {args.runs}):"
    )
    for label, (prompt, nxt) in results.items():
        print(
            f"  {label:30s} 51-token prompt {prompt * 1000:7.0f} ms ({prompt / base_prompt:.2f}x)  "
            f"next token {nxt * 1000:6.1f} ms ({nxt / base_next:.2f}x)"
        )


if __name__ == "__main__":
    main()
