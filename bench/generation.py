"""Generation speed: the app's engine + worker path vs raw llama_cpp.Llama.create_chat_completion.

Both run in this process, on the same generated llama4 model (Q8_0, large enough that one token
takes several milliseconds on a laptop CPU), with the same sampling parameters, the same thread
count and prompts of the same length (different text each run, so neither side gets a free
prefix-cache hit). Runs alternate A/B and the medians are compared.

    python -m bench.generation [--runs 5] [--tokens 128]

Prints tokens/s and TTFT for both and the ratios (target: app/raw tokens/s >= 0.98).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

BENCH_SPEC = {
    "n_layer": 8,
    "n_embd": 768,
    "n_head": 12,
    "n_head_kv": 4,
    "n_expert": 4,
    "n_ff_exp": 1536,
    "dtype": "Q8_0",
    "seed": 99,
    "name": "bench llama4",
}


def make_model(folder: Path) -> Path:
    from app.core.tiny_model import TinyModelSpec, write_tiny_model

    return write_tiny_model(folder / "bench-llama4-q8_0.gguf", TinyModelSpec(**BENCH_SPEC))[0]


def prompt_text(run: int) -> str:
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
    return f"Question {run}: " + " ".join(words[(run + i) % len(words)] for i in range(60))


def bench_raw(model: Path, runs: list[int], tokens: int, threads: int) -> list[tuple[float, float]]:
    """The baseline runs on a thread of its own too, which then ends: llama.cpp's OpenMP team
    spin-waits after each parallel region, so a team left behind by whichever side ran last on
    another thread competes for the cores (on 2 cores that alone costs ~13 %). In the app only
    the inference thread ever runs llama.cpp, so neither side must inherit the other's team."""
    out: list[tuple[float, float]] = []
    thread = threading.Thread(target=lambda: out.extend(_bench_raw(model, runs, tokens, threads)))
    thread.start()
    thread.join()
    return out


def _bench_raw(model: Path, runs: list[int], tokens: int, threads: int) -> list[tuple[float, float]]:
    import llama_cpp

    llm = llama_cpp.Llama(
        str(model), n_ctx=1024, n_threads=threads, n_threads_batch=threads, swa_full=False, verbose=False
    )
    out = []
    try:
        for run in runs:
            started = time.perf_counter()
            first = None
            count = 0
            for chunk in llm.create_chat_completion(
                [{"role": "user", "content": prompt_text(run)}],
                max_tokens=tokens,
                temperature=0.6,
                top_p=0.9,
                min_p=0.01,
                top_k=0,
                stream=True,
            ):
                delta = chunk["choices"][0]["delta"].get("content")
                if delta:
                    count += 1
                    if first is None:
                        first = time.perf_counter()
            ended = time.perf_counter()
            assert first is not None
            out.append(((count - 1) / (ended - first), first - started))
    finally:
        llm.close()
    return out


def bench_app(model: Path, runs: list[int], tokens: int, threads: int) -> list[tuple[float, float]]:
    """Through LlamaWorker on its QThread, timed from the GUI thread as the window sees it."""
    from PySide6.QtCore import QCoreApplication, QObject, QThread, Signal, Slot

    from app.core.engine import LlamaEngine
    from app.core.turns import TurnRequest
    from app.core.types import LoadParams, SamplingParams
    from app.workers.inference import LlamaWorker

    app = QCoreApplication.instance() or QCoreApplication(sys.argv[:1])

    class Receiver(QObject):
        load = Signal(object)
        generate = Signal(int, object, object)

        def __init__(self) -> None:
            super().__init__()
            self.first: float | None = None
            self.done = threading.Event()
            self.stats: object = None

        @Slot(object)
        def on_loaded(self, _info: object) -> None:
            app.quit()

        @Slot(str, str)
        def on_failed(self, message: str, _detail: str) -> None:
            raise SystemExit(message)

        @Slot(int, str)
        def on_tokens(self, _gen: int, _text: str) -> None:
            if self.first is None:
                self.first = time.perf_counter()

        @Slot(int, object)
        def on_finished(self, _gen: int, stats: object) -> None:
            self.stats = stats
            app.quit()

    thread = QThread()
    worker = LlamaWorker(LlamaEngine)
    worker.moveToThread(thread)
    receiver = Receiver()
    receiver.load.connect(worker.load_model)
    receiver.generate.connect(worker.answer)
    worker.model_loaded.connect(receiver.on_loaded)
    worker.load_failed.connect(receiver.on_failed)
    worker.tokens_generated.connect(receiver.on_tokens)
    worker.generation_finished.connect(receiver.on_finished)
    thread.start()
    receiver.load.emit(LoadParams(model, n_ctx=1024, n_threads=threads, n_threads_batch=threads))
    app.exec()
    out = []
    sampling = SamplingParams(max_tokens=tokens, temperature=0.6, top_p=0.9, min_p=0.01)
    for run in runs:
        receiver.first = None
        started = time.perf_counter()
        receiver.generate.emit(run, TurnRequest.for_question(prompt_text(run), max_tokens=tokens), sampling)
        app.exec()
        stats = receiver.stats
        # tokens/s as llama.cpp decodes them (generation phase), and TTFT as the GUI thread sees it
        out.append((stats.tokens_per_s, receiver.first - started))  # type: ignore[attr-defined,operator]
    thread.quit()
    thread.wait()
    worker.engine.unload()
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        model = make_model(Path(tmp))
        print(f"model: {model.stat().st_size / 1e6:.0f} MB, written in {time.perf_counter() - t0:.1f} s")
        raw: list[tuple[float, float]] = []
        ours: list[tuple[float, float]] = []
        # warm-up (page cache, CPU clocks), then alternate A/B
        bench_raw(model, [1000], 16, args.threads)
        for run in range(args.runs):
            raw += bench_raw(model, [run], args.tokens, args.threads)
            ours += bench_app(model, [100 + run], args.tokens, args.threads)
    raw_tps = statistics.median(r[0] for r in raw)
    app_tps = statistics.median(r[0] for r in ours)
    raw_ttft = statistics.median(r[1] for r in raw)
    app_ttft = statistics.median(r[1] for r in ours)
    per_token = f"({1000 / raw_tps:.1f} ms/token)"
    print(f"raw create_chat_completion: {raw_tps:7.1f} tok/s   TTFT {raw_ttft * 1000:6.1f} ms   {per_token}")
    print(f"app engine + worker       : {app_tps:7.1f} tok/s   TTFT {app_ttft * 1000:6.1f} ms")
    print(f"ratio tokens/s app/raw    : {app_tps / raw_tps:.3f}   (target >= 0.98)")
    print(f"ratio TTFT app/raw        : {app_ttft / raw_ttft:.3f}   (lower is better)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
