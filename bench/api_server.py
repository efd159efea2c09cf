"""The local API server's cost: the same answers through ``/v1/chat/completions`` (the official
``openai`` client, streaming) and through the window's path (``ConversationController.send``).

One AppController on the real engine process (``EngineProxy``, n_threads 1) with the generated
tiny llama4 model and its API server on 127.0.0.1; both paths go through the same inference
worker. Greedy, the same prompt and answer length; runs alternate A/B. Measured as each caller
sees it: TTFT from the request to the first text, tokens/s from the first text to the last (the
engine's completion-token count). Target: API tokens/s ≥ 0.97 of the window's.

Then a burst: 50 official clients at once (threads in a process of their own, so that their work
is not counted as the app's), while a 5 ms heartbeat QTimer on the GUI thread records how late each
tick fires; the stall is the lateness beyond the period, with an idle baseline measured just before.
Every request must be answered or refused with 429 (the queue limit), none lost. Target: no stall
over 100 ms.

    python -m bench.api_server [--runs 5] [--tokens 256] [--burst 50] [--model PATH]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.heartbeat import gui_stalls

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def burst_clients(url: str, key: str, model: str, count: int, results: Any) -> None:
    """``count`` official clients sending one short request each, all at once; puts a list of
    (status, seconds) in ``results`` (status 200, 429, or 0 for anything else)."""
    import openai

    gate = threading.Barrier(count)
    out: list[tuple[int, float]] = []

    def ask(number: int) -> None:
        with openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=600) as client:
            gate.wait()
            start = time.perf_counter()
            try:
                client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": f"Request {number}"}], max_tokens=16
                )
                status = 200
            except openai.RateLimitError:
                status = 429
            except openai.APIError:
                status = 0
            out.append((status, time.perf_counter() - start))

    threads = [threading.Thread(target=ask, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    results.put(out)


MIN_TOKENS = 128


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--burst", type=int, default=50, help="concurrent requests in the burst (0: none)")
    parser.add_argument("--model", type=Path, default=None, help="a GGUF (default: the generated tiny model)")
    args = parser.parse_args()
    if args.tokens < MIN_TOKENS:
        parser.error(
            f"--tokens must be at least {MIN_TOKENS}: a shorter answer reaches the window in one or two "
            "batches of pieces, so it has no meaningful rate"
        )

    import openai
    from PySide6.QtCore import QCoreApplication, QEventLoop

    from app.config import AppPaths, Settings
    from app.core.engine.process import EngineProxy
    from app.core.store import Store
    from app.core.tiny_model import write_tiny_model
    from app.workers.controller import AppController

    qt = QCoreApplication.instance() or QCoreApplication([])
    tmp = Path(tempfile.mkdtemp(prefix="bench-api-"))
    model = args.model or write_tiny_model(tmp / "tiny-llama4.gguf")[0]
    paths = AppPaths.under(tmp / "data").ensure()
    settings = Settings(
        n_ctx=2048, n_threads=1, temperature=0.0, max_tokens=args.tokens, api_server=True, api_port=0
    )
    store = Store(paths.database)
    proxy = EngineProxy()
    controller = AppController(store, paths, settings, lambda: proxy)

    def wait(done: threading.Event | list[object], timeout: float = 600) -> None:
        loop = QEventLoop()
        deadline = time.monotonic() + timeout
        while not (done.is_set() if isinstance(done, threading.Event) else done):
            loop.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 50)
            if time.monotonic() > deadline:
                raise SystemExit("timed out")

    loaded: list[object] = []
    controller.models.model_loaded.connect(loaded.append)
    controller.models.load_model(str(model))
    wait(loaded)
    name = controller.api.chat_model()
    prompt = "Tell me a long story about a lighthouse keeper."

    def window_run() -> tuple[float, float, int]:
        marks: dict[str, float] = {}
        finished: list[object] = []

        def first(*_a: object) -> None:
            marks.setdefault("first", time.perf_counter())
            marks["last"] = time.perf_counter()

        def end(_id: int, stats: object) -> None:
            marks["end"] = time.perf_counter()
            finished.append(stats)

        controller.conversations.tokens_streamed.connect(first)
        controller.conversations.generation_finished.connect(end)
        controller.conversations.new_conversation()
        start = time.perf_counter()
        controller.conversations.send(prompt)
        wait(finished)
        controller.conversations.tokens_streamed.disconnect(first)
        controller.conversations.generation_finished.disconnect(end)
        tokens = finished[0].completion_tokens  # type: ignore[attr-defined]
        # the window gets tokens in batches: a short answer can come in one (first == last), or
        # only with the end; then the rate is over the whole answer, prompt included
        first = marks.get("first", marks["end"])
        span = marks["last"] - first if marks.get("last", first) > first else marks["end"] - start
        return first - start, tokens / max(1e-9, span), tokens

    def api_run() -> tuple[float, float, int]:
        out: dict[str, float] = {}
        done = threading.Event()

        def ask() -> None:
            with openai.OpenAI(
                base_url=f"http://{controller.api.address}/v1", api_key=controller.api.token()
            ) as c:
                start = time.perf_counter()
                for chunk in c.chat.completions.create(
                    model=name or "",
                    messages=[{"role": "user", "content": prompt}],
                    max_tokens=args.tokens,
                    temperature=0,
                    stream=True,
                    stream_options={"include_usage": True},
                ):
                    if chunk.choices and chunk.choices[0].delta.content:
                        out.setdefault("first", time.perf_counter() - start)
                        out["last"] = time.perf_counter() - start
                    if chunk.usage is not None:
                        out["tokens"] = chunk.usage.completion_tokens
                out["end"] = time.perf_counter() - start
            done.set()

        thread = threading.Thread(target=ask)
        thread.start()
        wait(done)
        thread.join()
        tokens = int(out["tokens"])
        first = out.get("first", out["end"])
        span = out["last"] - first if out.get("last", first) > first else out["end"]
        return first, tokens / max(1e-9, span), tokens

    def burst(count: int) -> None:
        idle_end = time.monotonic() + 1.5
        idle = gui_stalls(lambda: time.monotonic() > idle_end)
        spawn = multiprocessing.get_context("spawn")
        results = spawn.Queue()
        clients = spawn.Process(
            target=burst_clients,
            args=(f"http://{controller.api.address}/v1", controller.api.token(), name or "", count, results),
        )
        answered: list[int] = []
        controller.api.answering_changed.connect(lambda on: answered.append(1) if on else None)
        clients.start()
        got: list[list[tuple[int, float]]] = []

        def done() -> bool:
            if not got and not results.empty():
                got.append(results.get())
            return bool(got)

        started = time.perf_counter()
        late = gui_stalls(done)
        took = time.perf_counter() - started
        clients.join()
        statuses = [status for status, _s in got[0]]
        ok, refused, other = (
            statuses.count(200),
            statuses.count(429),
            len(statuses) - statuses.count(200) - statuses.count(429),
        )
        slowest = max(seconds for _status, seconds in got[0])
        late.sort()
        print(
            f"burst of {count}: {ok} answered, {refused} refused (429), {other} other, "
            f"{count - len(statuses)} lost; {took:.1f} s, slowest client {slowest:.1f} s; "
            f"worker answered {len(answered)}"
        )
        print(
            f"GUI heartbeat during the burst: max stall {late[-1]:.1f} ms, "
            f"p99 {late[int(0.99 * (len(late) - 1))]:.1f} ms "
            f"over {len(late)} ticks (idle baseline: max {max(idle):.1f} ms); target: no stall over 100 ms"
        )

    try:
        window_run()  # warm-up (first prompt, caches)
        api_run()
        rows = []
        for run in range(1, args.runs + 1):
            w = window_run()
            a = api_run()
            rows.append((w, a))
            print(
                f"run {run}: window {w[1]:.1f} tok/s (TTFT {w[0] * 1000:.1f} ms, {w[2]} tokens) | "
                f"API {a[1]:.1f} tok/s (TTFT {a[0] * 1000:.1f} ms, {a[2]} tokens)"
            )
        wt = statistics.median(r[0][1] for r in rows)
        at = statistics.median(r[1][1] for r in rows)
        wf = statistics.median(r[0][0] for r in rows)
        af = statistics.median(r[1][0] for r in rows)
        paired = statistics.median(r[1][1] / r[0][1] for r in rows)  # each run's A/B pair
        print(
            f"median: window {wt:.1f} tok/s, API {at:.1f} tok/s, ratio {at / wt:.3f} "
            f"(median of the runs' own ratios {paired:.3f}; target ≥ 0.97); "
            f"TTFT window {wf * 1000:.1f} ms, API {af * 1000:.1f} ms ({(af - wf) * 1000:+.1f} ms)"
        )
        if args.burst:
            burst(args.burst)
    finally:
        controller.shutdown()
        store.close()
        proxy.close()
        del qt


if __name__ == "__main__":
    main()
