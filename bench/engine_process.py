"""The engine process's cost: EngineProxy (llama.cpp in a child process) vs LlamaEngine here.

Both sides stream the same answers (same generated model, sampling, thread count, prompts of the
same length with different text each run, so neither gets a free prefix-cache hit), measured as
the caller sees them: TTFT from the call to the first piece, tokens/s over the whole answer.
Runs alternate A/B and the medians are compared; the in-process side runs on a thread of its own
that then ends (see bench/generation.py: a leftover OpenMP team would compete for the cores).

Memory: the resident size of this (the "GUI") process before llama.cpp is imported here and
after the proxy's answers, the engine process's resident size, and a bare process that only
imports llama_cpp and loads the same model with ``llama_cpp.Llama`` (the child's overhead).

    python -m bench.engine_process [--runs 5] [--tokens 128] [--threads N] [--models tiny,bench]

Prints the figures and the ratios (targets: proxy/in-process tokens/s >= 0.98, TTFT overhead
<= 10 ms, engine-process overhead over a bare llama-cpp-python process <= 50 MB).

``--window``: the whole path as the user sees it instead — the engine process streaming into the
real window (offscreen: inference worker → AppController → MainWindow rendering the Markdown)
against the same engine process read with no window, alternating A/B in one run; tokens/s is
completion tokens after the first over the time from the first piece to the last (the prompts
differ: the app adds its system prompt), target >= 0.97 on the benchmark model.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.generation import BENCH_SPEC, prompt_text

N_CTX = 2048


def rss_mb(pid: int | str = "self") -> float:
    """Resident set size in MB (10^6 bytes), from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024 / 1e6
    return float("nan")


def make_models(folder: Path, names: list[str]) -> dict[str, Path]:
    from app.core.tiny_model import TinyModelSpec, write_tiny_model

    specs = {"tiny": TinyModelSpec(), "bench": TinyModelSpec(**BENCH_SPEC)}  # type: ignore[arg-type]
    return {name: write_tiny_model(folder / f"{name}.gguf", specs[name])[0] for name in names}


def one_answer(engine: object, run: int, tokens: int, decode_only: bool = False) -> tuple[float, float]:
    """(TTFT in ms, tokens/s over the answer) as the caller sees them (``decode_only``: tokens
    after the first over the time from the first piece to the last)."""
    from app.core.types import ChatMessage, SamplingParams

    sampling = SamplingParams(max_tokens=tokens, seed=run)
    started = time.perf_counter()
    first = None
    for _piece in engine.stream_chat([ChatMessage.user(prompt_text(run))], sampling, threading.Event()):  # type: ignore[attr-defined]
        if first is None:
            first = time.perf_counter()
    ended = time.perf_counter()
    stats = engine.last_stats  # type: ignore[attr-defined]
    ttft = ((first or ended) - started) * 1000
    if decode_only:
        return ttft, (stats.completion_tokens - 1) / (ended - (first or started))
    return ttft, stats.completion_tokens / (ended - started)


def in_process(model: Path, runs: list[int], tokens: int, threads: int) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []

    def work() -> None:
        from app.core.engine import LlamaEngine
        from app.core.types import LoadParams

        engine = LlamaEngine()
        engine.load(LoadParams(model, n_ctx=N_CTX, n_threads=threads, n_threads_batch=threads))
        try:
            out.extend(one_answer(engine, run, tokens) for run in runs)
        finally:
            engine.unload()

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    return out


def bare_process_rss(model: Path, threads: int) -> float:
    """RSS of a process that imports llama_cpp and loads ``model`` with Llama() and nothing else."""
    script = (
        "import sys, llama_cpp\n"
        f"llm = llama_cpp.Llama({str(model)!r}, n_ctx={N_CTX}, n_threads={threads}, verbose=False)\n"
        "list(llm.create_completion('Hello', max_tokens=4))\n"
        "print([l for l in open('/proc/self/status') if l.startswith('VmRSS:')][0].split()[1])\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return int(done.stdout.split()[-1]) * 1024 / 1e6


def window_vs_headless(model: Path, runs: int, tokens: int, threads: int) -> tuple[float, float]:
    """Median tokens/s (headless proxy, real window) on the same engine process, alternating."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import QEventLoop, QTimer
    from PySide6.QtWidgets import QApplication

    from app.config import AppPaths, Settings
    from app.core.engine.process import EngineProxy
    from app.core.store import Store
    from app.ui.main_window import MainWindow
    from app.workers.controller import AppController

    app = QApplication.instance() or QApplication([])
    headless: list[float] = []
    windowed: list[float] = []
    with tempfile.TemporaryDirectory() as data:
        paths = AppPaths.under(Path(data)).ensure()
        proxy = EngineProxy(log_path=paths.log_dir / "engine.log")
        store = Store(paths.database)
        settings = Settings(n_ctx=N_CTX, n_threads=threads, max_tokens=tokens)
        controller = AppController(store, paths, settings, lambda: proxy)
        window = MainWindow(controller)
        window.resize(1100, 760)
        window.show()
        loop = QEventLoop()
        done: list[float] = []
        first: list[float] = []
        controller.conversations.tokens_streamed.connect(
            lambda _m, _t: first.append(time.perf_counter()) if not first else None
        )
        controller.models.model_loaded.connect(lambda _info: loop.quit())
        controller.conversations.generation_finished.connect(
            lambda _m, stats: (done.append(stats.completion_tokens), loop.quit())
        )
        controller.conversations.generation_failed.connect(lambda *_a: loop.quit())
        try:
            controller.models.load_model(str(model))
            loop.exec()
            for run in range(-1, runs):  # run -1: warm-up, not counted
                controller.conversations.new_conversation()
                done.clear()
                first.clear()
                controller.conversations.send(prompt_text(2000 + run))
                loop.exec()
                elapsed = time.perf_counter() - first[0]
                QTimer.singleShot(200, loop.quit)  # the window settles; the engine's threads stop
                loop.exec()
                _ttft, tps = one_answer(proxy, 3000 + run, tokens, decode_only=True)
                if run >= 0 and done:
                    windowed.append((done[0] - 1) / elapsed)
                    headless.append(tps)
                time.sleep(0.2)
        finally:
            controller.shutdown()
            window.close()
            store.close()
            proxy.close()
        app.processEvents()
    return statistics.median(headless), statistics.median(windowed)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--models", default="tiny,bench")
    parser.add_argument("--window", action="store_true", help="the real window vs no window")
    args = parser.parse_args()
    if args.window:
        with tempfile.TemporaryDirectory() as folder:
            models = make_models(Path(folder), args.models.split(","))
            print(f"threads {args.threads}, {args.runs} runs x {args.tokens} tokens, n_ctx {N_CTX}")
            for name, model in models.items():
                bare, shown = window_vs_headless(model, args.runs, args.tokens, args.threads)
                print(
                    f"[{name}] no window {bare:8.1f} tokens/s, real window {shown:8.1f} tokens/s: "
                    f"ratio {shown / bare:.3f}"
                )
        return 0

    from app.core.engine.process import EngineProxy
    from app.core.types import LoadParams

    names = args.models.split(",")
    with tempfile.TemporaryDirectory() as folder:
        models = make_models(Path(folder), names)
        gui_before = rss_mb()
        print(f"threads {args.threads}, {args.runs} runs x {args.tokens} tokens, n_ctx {N_CTX}")
        print(f"GUI-side process before any engine: {gui_before:.0f} MB")
        gui_rss = 0.0
        for name, model in models.items():
            proxy = EngineProxy()
            try:
                proxy.load(
                    LoadParams(model, n_ctx=N_CTX, n_threads=args.threads, n_threads_batch=args.threads)
                )
                one_answer(proxy, 1000, 16)  # warm-up
                assert proxy.pid is not None
                child_rss = rss_mb(proxy.pid)
                gui_rss = gui_rss or rss_mb()  # before llama_cpp is first imported here
                bare = bare_process_rss(model, args.threads)
                in_process(model, [1001], 16, args.threads)  # warm-up
                ours: list[tuple[float, float]] = []
                local: list[tuple[float, float]] = []
                for run in range(args.runs):
                    ours.append(one_answer(proxy, run, args.tokens))
                    time.sleep(0.2)  # the child's OpenMP team stops spinning
                    local += in_process(model, [100 + run], args.tokens, args.threads)
            finally:
                proxy.close()
            ttft_p, tps_p = (statistics.median(x) for x in zip(*ours, strict=True))
            ttft_l, tps_l = (statistics.median(x) for x in zip(*local, strict=True))
            print(f"\n[{name}] {model.stat().st_size / 1e6:.1f} MB file")
            print(f"  in process:     {tps_l:8.1f} tokens/s  TTFT {ttft_l:7.1f} ms")
            print(f"  engine process: {tps_p:8.1f} tokens/s  TTFT {ttft_p:7.1f} ms")
            print(f"  ratio tokens/s {tps_p / tps_l:.3f}; TTFT overhead {ttft_p - ttft_l:+.1f} ms")
            print(
                f"  memory: GUI side {gui_rss:.0f} MB (no llama_cpp imported yet), engine process "
                f"{child_rss:.0f} MB, bare llama-cpp-python process {bare:.0f} MB "
                f"(overhead {child_rss - bare:+.0f} MB)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
