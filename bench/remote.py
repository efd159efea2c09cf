"""The remote engine's cost: RemoteEngine vs the same server called with a plain HTTP client, and
llama.cpp's RPC overhead: the local engine vs the same model split across two loopback compute
servers.

Servers on 127.0.0.1 (one thread each) serve the generated tiny llama4 model: llama-cpp-python's
(``python -m llama_cpp.server``) and, when the set-up has built it, llama.cpp's own
``llama-server``. Both sides send the very same ``/v1/chat/completions`` request body
(``RemoteEngine.request_body``: greedy, same prompt) and are measured the same way, as the caller
sees them: TTFT from sending the request to the first text piece, tokens/s from the first piece to
the last. Runs alternate A/B; the medians are compared (target: tokens/s ratio ≥ 0.97, TTFT
overhead ≤ 20 ms). The RPC rows (with the set-up's ``rpc-server``) compare the in-process engine
alone and with two ``rpc-server`` processes holding the layers (no target: it is llama.cpp's cost).
The split rows start two ``rpc-server`` processes that declare different memory (1 GiB and 4 GiB,
through the tests' sysconf shim) and compare the planner's split (``plan_load``: ``tensor_split`` by
the servers' free memory, with llama.cpp's dry run) with llama.cpp's default split (the same
load parameters but no ``tensor_split``): tokens/s of each and whether the greedy answers are the same.

    python -m bench.remote [--runs 15] [--tokens 200]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
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
from typing import TYPE_CHECKING

from app.core.engine.remote import RemoteEngine, ServerConfig
from app.core.tiny_model import write_tiny_model
from app.core.types import ChatMessage, SamplingParams

if TYPE_CHECKING:
    from collections.abc import Iterator

    from app.core.engine import LlamaEngine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def llama_cpp_python_command(model: Path, port: int) -> list[str]:
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--model_alias", "tiny"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--n_threads", "1", "--n_threads_batch", "1"]
    return [*command, "--n_ctx", "1024"]


def llama_server_command(binary: Path, model: Path, port: int) -> list[str]:
    command = [str(binary), "--model", str(model), "--alias", "tiny", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--threads", "1", "--threads-batch", "1", "--ctx-size", "1024"]
    return [*command, "--parallel", "1", "--flash-attn", "off"]


def start_server(command: list[str], port: int, log: Path) -> subprocess.Popen[bytes]:
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


def compare(label: str, command: list[str], port: int, log: Path, runs: int, tokens: int) -> None:
    server = start_server(command, port, log)
    try:
        engine = RemoteEngine(ServerConfig(f"http://127.0.0.1:{port}", n_ctx=1024))
        engine.load()
        sampling = SamplingParams(temperature=0.0, max_tokens=tokens, seed=1)
        results: dict[str, list[tuple[float, float, int]]] = {"engine": [], "direct": []}
        for run in range(runs + 1):
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
        f"{label} {os.environ.get('BENCH_NOTE', '')}on 127.0.0.1, tiny llama4, 1 thread, "
        f"{runs} runs each, {pieces['engine']} tokens (direct: {pieces['direct']})"
    )
    for side in ("direct", "engine"):
        ttft, tps = med[side]
        print(f"  {side:7s} TTFT {ttft * 1000:7.1f} ms   {tps:7.1f} tokens/s")
    ratio = med["engine"][1] / med["direct"][1]
    overhead = (med["engine"][0] - med["direct"][0]) * 1000
    print(f"  tokens/s ratio {ratio:.3f} (target ≥ 0.97)   TTFT overhead {overhead:+.1f} ms (target ≤ 20 ms)")


def rpc_rows(rpc_binary: Path, model: Path, tmp: Path, runs: int, tokens: int) -> None:
    """The in-process engine alone, then with the model's layers on two loopback rpc-servers."""
    from app.core.engine import LlamaEngine
    from app.core.types import LoadParams

    with _rpc_servers(rpc_binary, tmp, (0, 0)) as endpoints:
        sampling = SamplingParams(temperature=0.0, max_tokens=tokens, seed=1)
        med: dict[str, tuple[float, float]] = {}
        engine = LlamaEngine()
        for side, pool in (("local", ()), ("2 × RPC", endpoints)):
            engine.load(LoadParams(model, n_ctx=1024, n_threads=1, n_threads_batch=1, compute_servers=pool))
            rows, _answers = _timed_answers(engine, sampling, runs)
            engine.unload()
            med[side] = (statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows))
    print(
        f"llama.cpp RPC {os.environ.get('BENCH_NOTE', '')}: tiny llama4, 1 thread, {runs} runs each, "
        f"{tokens} tokens"
    )
    for side, (ttft, tps) in med.items():
        print(f"  {side:7s} TTFT {ttft * 1000:7.1f} ms   {tps:7.1f} tokens/s")
    print(
        f"  tokens/s ratio RPC/local {med['2 × RPC'][1] / med['local'][1]:.3f} "
        "(llama.cpp's RPC overhead, no target)"
    )


@contextlib.contextmanager
def _rpc_servers(rpc_binary: Path, tmp: Path, memory_mib: tuple[int, ...]) -> Iterator[tuple[str, ...]]:
    """``rpc-server`` processes on 127.0.0.1 (tests/remote_servers.py ``rpc_server``: one thread,
    waited for until they accept connections, killed afterwards), each declaring ``memory_mib``
    (0: the machine's own); yields their endpoints."""
    from tests.remote_servers import MemoryLimit, memory_shim, rpc_server

    shim = memory_shim(tmp) if any(memory_mib) else None
    if any(memory_mib) and shim is None:
        raise SystemExit("no C compiler for the memory shim the sized compute servers need")
    with contextlib.ExitStack() as stack:
        servers = [
            stack.enter_context(
                rpc_server(
                    rpc_binary,
                    tmp / f"rpc-{index}.log",
                    memory=MemoryLimit(shim, mib) if mib and shim is not None else None,
                )
            )
            for index, mib in enumerate(memory_mib)
        ]
        yield tuple(f"127.0.0.1:{server.port}" for server in servers)


def _timed_answers(
    engine: LlamaEngine, sampling: SamplingParams, runs: int
) -> tuple[list[tuple[float, float]], list[str]]:
    """``runs`` + 1 answers (the first warms up) to "Question N: say hello.": (TTFT s, tokens/s from
    the first piece to the last) of each but the first, and the text of every answer."""
    rows: list[tuple[float, float]] = []
    answers: list[str] = []
    for run in range(runs + 1):
        messages = [ChatMessage.user(f"Question {run}: say hello.")]
        started = time.perf_counter()
        first = last = 0.0
        pieces: list[str] = []
        for piece in engine.stream_chat(messages, sampling, threading.Event()):
            last = time.perf_counter()
            first = first or last
            pieces.append(piece)
        answers.append("".join(pieces))
        if run:
            rows.append((first - started, (len(pieces) - 1) / (last - first)))
    return rows, answers


def split_rows(rpc_binary: Path, model: Path, tmp: Path, runs: int, tokens: int) -> None:
    """The planner's split vs llama.cpp's default split over two rpc-servers declaring 1 and 4 GiB."""
    from app.core.engine import LlamaEngine
    from app.core.engine.native import NATIVE_LOG
    from app.core.engine.probe import measure_buffers
    from app.core.engine.rpc import compute_devices
    from app.core.hardware import SystemHardware, with_remote_devices
    from app.core.planner import LoadRequest, PlanOverrides, plan_load

    with _rpc_servers(rpc_binary, tmp, (1024, 4096)) as endpoints:
        devices = compute_devices(endpoints)
        hardware = with_remote_devices(SystemHardware().probe(), [d.as_device() for d in devices])
        request = LoadRequest(model, PlanOverrides(n_ctx=1024), n_threads=1, compute_servers=endpoints)
        planned = plan_load(request, hardware, measure_buffers)
        # the very same load but for tensor_split: llama.cpp then splits by the devices' free memory
        default = dataclasses.replace(planned.params, tensor_split=())
        sampling = SamplingParams(temperature=0.0, max_tokens=tokens, seed=1)
        engine = LlamaEngine()
        results: dict[str, tuple[float, float, str, str]] = {}
        for side, params in (("planner", planned.params), ("default", default)):
            mark = NATIVE_LOG.mark()
            engine.load(params)
            placed = [line for line in NATIVE_LOG.since(mark) if "assigned to device" in line]
            where: dict[str, int] = {}
            for line in placed:
                device = line.rsplit("device ", 1)[-1].split(",")[0].strip()
                where[device] = where.get(device, 0) + 1
            rows, answers = _timed_answers(engine, sampling, runs)
            engine.unload()
            layout = ", ".join(f"{n} on {device}" for device, n in where.items())
            results[side] = (
                statistics.median(r[0] for r in rows),
                statistics.median(r[1] for r in rows),
                layout,
                "\n".join(answers),
            )
    print(
        f"planner split vs llama.cpp's default split {os.environ.get('BENCH_NOTE', '')}: tiny llama4, "
        f"1 thread, 2 loopback rpc-servers declaring 1 GiB ({endpoints[0]}) and 4 GiB ({endpoints[1]}), "
        f"{runs} runs each, {tokens} tokens"
    )
    explanation = planned.plan.explanation if planned.plan else ""
    split = next((part for part in explanation.split(". ") if part.startswith("Layers spread")), "no split")
    print(f"  plan: {split.split(';')[0]}")
    for side, (ttft, tps, layout, _text) in results.items():
        print(
            f"  {side:8s} TTFT {ttft * 1000:7.1f} ms   {tps:7.1f} tokens/s   layers (incl. output): {layout}"
        )
    same = results["planner"][3] == results["default"][3]
    print(
        f"  tokens/s ratio planner/default {results['planner'][1] / results['default'][1]:.3f}; "
        f"greedy answers {'the same' if same else 'DIFFERENT'}"
    )


def main() -> None:
    from app.core.engine.llama_tools import find_llama_tools, why_missing

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--tokens", type=int, default=200)
    args = parser.parse_args()
    tools = find_llama_tools()
    with tempfile.TemporaryDirectory(prefix="bench-remote-") as tmp:
        model = write_tiny_model(Path(tmp) / "tiny-llama4.gguf")[0]
        port = free_port()
        log = Path(tmp) / "server.log"
        compare(
            "llama-cpp-python server",
            llama_cpp_python_command(model, port),
            port,
            log,
            args.runs,
            args.tokens,
        )
        if tools is None:
            print(f"llama-server and RPC rows skipped: {why_missing()}")
            return
        port = free_port()
        command = llama_server_command(tools.llama_server, model, port)
        compare("llama-server", command, port, Path(tmp) / "llama-server.log", args.runs, args.tokens)
        rpc_rows(tools.rpc_server, model, Path(tmp), args.runs, args.tokens)
        split_rows(tools.rpc_server, model, Path(tmp), args.runs, args.tokens)


if __name__ == "__main__":
    main()
