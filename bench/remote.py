"""The remote engine's cost: RemoteEngine vs the same server called with a plain HTTP client.

One llama-cpp-python server (``python -m llama_cpp.server``, one thread) on 127.0.0.1 serves the
generated tiny llama4 model. Both sides send the very same ``/v1/chat/completions`` request body
(``RemoteEngine.request_body``: greedy, same prompt) and are measured the same way, as the caller
sees them: TTFT from sending the request to the first text piece, tokens/s from the first piece to
the last. Runs alternate A/B; the medians are compared (target: tokens/s ratio ≥ 0.97, TTFT
overhead ≤ 20 ms).

    python -m bench.remote [--runs 15] [--tokens 200]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from app.core.engine.remote import RemoteEngine, ServerConfig
from app.core.tiny_model import write_tiny_model
from app.core.types import ChatMessage, SamplingParams


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(model: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--model_alias", "tiny"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--n_threads", "1", "--n_threads_batch", "1"]
    command += ["--n_ctx", "1024"]
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/v1/models")
            if conn.getresponse().status == 200:
                conn.close()
                return process
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit(f"the server did not start:\n{log.read_text(errors='replace')[-2000:]}")


def direct(port: int, body: dict[str, object]) -> tuple[float, float, int]:
    """TTFT, tokens/s and pieces with a plain client: http.client, lines parsed inline."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    started = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    response = conn.getresponse()
    first = last = 0.0
    pieces = 0
    while True:
        line = response.readline()
        if not line:
            break
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            break
        for choice in json.loads(data).get("choices") or ():
            if (choice.get("delta") or {}).get("content"):
                last = time.perf_counter()
                first = first or last
                pieces += 1
    conn.close()
    return first - started, (pieces - 1) / (last - first), pieces


def through_engine(
    engine: RemoteEngine, messages: list[ChatMessage], sampling: SamplingParams
) -> tuple[float, float, int]:
    started = time.perf_counter()
    first = last = 0.0
    pieces = 0
    for _piece in engine.stream_chat(messages, sampling, threading.Event()):
        last = time.perf_counter()
        first = first or last
        pieces += 1
    return first - started, (pieces - 1) / (last - first), pieces


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--tokens", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-remote-") as tmp:
        model = write_tiny_model(Path(tmp) / "tiny-llama4.gguf")[0]
        port = free_port()
        server = start_server(model, port, Path(tmp) / "server.log")
        try:
            engine = RemoteEngine(ServerConfig(f"http://127.0.0.1:{port}", n_ctx=1024))
            engine.load()
            sampling = SamplingParams(temperature=0.0, max_tokens=args.tokens, seed=1)
            results: dict[str, list[tuple[float, float, int]]] = {"engine": [], "direct": []}
            for run in range(args.runs + 1):
                # a different question each run: neither side gets the other's prompt cache
                messages = [
                    ChatMessage.system("You are helpful."),
                    ChatMessage.user(f"Question {run}: say hello."),
                ]
                body = engine.request_body(messages, sampling)
                order = ("engine", "direct") if run % 2 else ("direct", "engine")
                for side in order:
                    figures = (
                        through_engine(engine, messages, sampling) if side == "engine" else direct(port, body)
                    )
                    if run:  # the first round warms both up
                        results[side].append(figures)
            engine.close()
        finally:
            server.send_signal(signal.SIGKILL)
            server.wait()
    med = {
        side: (statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows))
        for side, rows in results.items()
    }
    pieces = {side: rows[0][2] for side, rows in results.items()}
    print(
        f"llama-cpp-python server {os.environ.get('BENCH_NOTE', '')}on 127.0.0.1, tiny llama4, 1 thread, "
        f"{args.runs} runs each, {pieces['engine']} tokens (direct: {pieces['direct']})"
    )
    for side in ("direct", "engine"):
        ttft, tps = med[side]
        print(f"  {side:7s} TTFT {ttft * 1000:7.1f} ms   {tps:7.1f} tokens/s")
    ratio = med["engine"][1] / med["direct"][1]
    overhead = (med["engine"][0] - med["direct"][0]) * 1000
    print(f"  tokens/s ratio {ratio:.3f} (target ≥ 0.97)   TTFT overhead {overhead:+.1f} ms (target ≤ 20 ms)")


if __name__ == "__main__":
    main()
