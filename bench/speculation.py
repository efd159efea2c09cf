"""Draft-free speculative decoding: tokens/s with it ("auto", "on") and without ("off").

    python -m bench.speculation [--runs 3] [--tokens 160] [--threads 1]

On the Scout-proportioned bench model (bench/documents.py: Scout's weight/attention proportions,
a mixture of experts, Q8_0) and the smaller bench model (bench/generation.py), at temperature 0:

* **free answers**: a question with no document;
* **document-quoting answers**: the document is the model's own answer, fed back as the document
  twice (a model with random weights follows no instruction to quote; given its own words as the
  document, its answer copies passages of them — more with each round).

Each answer is written with speculation off, auto and on, in turns (A/B/C), each run in a thread
of its own that then ends (llama.cpp's OpenMP team spin-waits after each parallel region); the
medians are compared and every answer must equal the one written without speculation, token for
token. Then the peak memory (ru_maxrss, a fresh process each) of answering with a generated
202,048-token-vocabulary model at 32k context, off and on, next to what llama-cpp-python's own
prompt-lookup path (``logits_all``: n_ctx x n_vocab floats) would hold.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

# (label, Advanced → Speculation, flash attention): without flash attention llama.cpp's batched
# attention rounds differently from single tokens, which "auto" avoids (app/core/engine/llama.py)
MODES = (
    ("off", "off", True),
    ("auto", "auto", True),
    ("on", "on", True),
    ("off, no flash attention", "off", False),
    ("on, no flash attention", "on", False),
)
BIG_VOCAB = 202_048
BIG_CTX = 32_768
QUESTION = "Question: what does the report say about the harbour, the ships and the weather?"
QUOTING_ROUNDS = 2  # the answer fed back as the document: each round its answer copies more of it


def _models() -> tuple[tuple[str, dict[str, Any]], ...]:
    from bench.documents import SCOUT_PROPORTIONED_SPEC
    from bench.generation import BENCH_SPEC

    return (("Scout-proportioned (Q8_0)", SCOUT_PROPORTIONED_SPEC), ("bench model (Q8_0)", BENCH_SPEC))


def _in_thread(fn: Any, *args: Any) -> Any:
    out: list[Any] = []
    worker = threading.Thread(target=lambda: out.append(fn(*args)))
    worker.start()
    worker.join()
    return out[0]


def _answer(
    model: Path, mode: str, messages: list[Any], tokens: int, threads: int, flash: bool = True
) -> dict[str, Any]:
    from app.core.engine import LlamaEngine
    from app.core.types import LoadParams, SamplingParams

    engine = LlamaEngine()
    params = LoadParams(model_path=model, n_ctx=4096, n_threads=threads, flash_attn=flash, speculation=mode)
    engine.load(params)
    try:
        sampling = SamplingParams(temperature=0.0, max_tokens=tokens)
        text = "".join(engine.stream_chat(messages, sampling, threading.Event()))
        stats = engine.last_stats
        n_prompt = stats.context_used - stats.completion_tokens
        answer = [int(t) for t in engine._llm._input_ids[n_prompt : stats.context_used]]
    finally:
        engine.unload()
    return {
        "text": text,
        "tokens": answer,
        "tps": stats.tokens_per_s,
        "drafted": stats.drafted_tokens,
        "accepted": stats.accepted_tokens,
        "completion": stats.completion_tokens,
    }


def _cases(model: Path, tokens: int, threads: int) -> dict[str, list[Any]]:
    from app.core.types import ChatMessage

    free = [ChatMessage.user(QUESTION)]
    document = _in_thread(_answer, model, "off", free, tokens, threads)["text"]
    for _ in range(QUOTING_ROUNDS):
        quoting = [ChatMessage.user(f"The report:\n\n{document}\n\nEnd of the report.\n\n{QUESTION}")]
        document = _in_thread(_answer, model, "off", quoting, tokens, threads)["text"]
    quoting = [ChatMessage.user(f"The report:\n\n{document}\n\nEnd of the report.\n\n{QUESTION}")]
    return {"free answer": free, "document-quoting answer": quoting}


def bench_speed(runs: int, tokens: int, threads: int) -> list[str]:
    from app.core.tiny_model import TinyModelSpec, write_tiny_model

    rows = [
        "| model | answer | speculation | tokens/s (median) | vs off | drafted | accepted | same tokens |",
        "|---|---|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for label_model, spec in _models():
            model = write_tiny_model(Path(tmp) / f"{spec['seed']}.gguf", TinyModelSpec(**spec))[0]
            for case, messages in _cases(model, tokens, threads).items():
                results: dict[str, list[dict[str, Any]]] = {label: [] for label, _, _ in MODES}
                for _ in range(runs):
                    for label, mode, flash in MODES:
                        answer = _in_thread(_answer, model, mode, messages, tokens, threads, flash)
                        results[label].append(answer)
                for label, _, flash in MODES:
                    base_label = "off" if flash else "off, no flash attention"
                    base = statistics.median(r["tps"] for r in results[base_label])
                    reference = results[base_label][0]["tokens"]
                    tps = statistics.median(r["tps"] for r in results[label])
                    last = results[label][-1]
                    same = all(r["tokens"] == reference for r in results[label])
                    rows.append(
                        f"| {label_model} | {case} ({last['completion']} tokens) | {label} | {tps:.1f} | "
                        f"{tps / base:.2f}x | {last['drafted']} | {last['accepted']} | "
                        f"{'yes' if same else 'NO'} |"
                    )
                    print(rows[-1], flush=True)
    return rows


def _peak_child(model: str, mode: str) -> None:
    """In a fresh process: answer once with ``model`` at 32k context; print the figures."""
    import resource

    from app.core.engine import LlamaEngine
    from app.core.types import ChatMessage, LoadParams, SamplingParams

    engine = LlamaEngine()
    engine.load(
        LoadParams(model_path=Path(model), n_ctx=BIG_CTX, n_threads=1, flash_attn=True, speculation=mode)
    )
    document = " ".join(["the quick brown fox jumps over the lazy dog"] * 200)
    messages = [ChatMessage.user(document)]
    text = "".join(
        engine.stream_chat(messages, SamplingParams(temperature=0.0, max_tokens=128), threading.Event())
    )
    stats = engine.last_stats
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(
        json.dumps(
            {"peak": peak, "drafted": stats.drafted_tokens, "accepted": stats.accepted_tokens, "text": text}
        )
    )


def bench_memory() -> list[str]:
    from app.core.tiny_model import TinyModelSpec, write_tiny_model
    from app.core.units import format_bytes

    rows = [
        f"| {BIG_VOCAB:,}-token vocabulary, {BIG_CTX:,} context | peak memory (RSS) | drafted | accepted |",
        "|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        model = write_tiny_model(Path(tmp) / "big.gguf", TinyModelSpec(n_vocab=BIG_VOCAB, dtype="F16"))[0]
        texts = set()
        for mode in ("off", "on"):
            out = subprocess.run(
                [sys.executable, "-m", "bench.speculation", "--peak-child", str(model), mode],
                capture_output=True,
                text=True,
                check=True,
            )
            data = json.loads(out.stdout.strip().splitlines()[-1])
            texts.add(data["text"])
            peak = format_bytes(data["peak"])
            rows.append(f"| speculation {mode} | {peak} | {data['drafted']} | {data['accepted']} |")
            print(rows[-1], flush=True)
    logits_all = BIG_CTX * BIG_VOCAB * 4
    label = "llama-cpp-python `logits_all` (computed: n_ctx x n_vocab x 4 B)"
    rows.append(f"| {label} | + {format_bytes(logits_all)} | | |")
    rows.append(f"| same answer off / on | {'yes' if len(texts) == 1 else 'NO'} | | |")
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=160)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--peak-child", nargs=2, metavar=("MODEL", "MODE"), help=argparse.SUPPRESS)
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args(argv)
    if args.peak_child:
        _peak_child(*args.peak_child)
        return
    started = time.perf_counter()
    rows = bench_speed(args.runs, args.tokens, args.threads)
    if not args.skip_memory:
        rows += ["", *bench_memory()]
    print("\n".join(["", *rows, "", f"({time.perf_counter() - started:.0f} s)"]))


if __name__ == "__main__":
    main()
