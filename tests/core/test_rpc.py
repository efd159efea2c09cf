"""Pooling with llama.cpp RPC: two real ``rpc-server`` compute servers on 127.0.0.1 (built by the
set-up from the same llama.cpp as the engine), the tiny model split across them in the engine
process, a greedy answer equal to the local one, a compute server killed in the middle of an
answer, and reconnecting. Skipped, with the reason, when the set-up has not built the tools."""

from __future__ import annotations

import re
import threading
from typing import TYPE_CHECKING

import pytest

from app.core.engine.errors import EngineCrashedError
from app.core.engine.llama_tools import find_llama_tools, why_missing
from app.core.engine.process import EngineProxy
from app.core.engine.rpc import ComputeServerError, lost_compute_server, parse_endpoint
from app.core.hardware import SystemHardware, with_remote_devices
from app.core.planner import LoadRequest, PlanOverrides, plan_load
from app.core.types import ChatMessage, LoadParams, SamplingParams
from tests.remote_servers import free_port, rpc_server, sized_rpc_servers

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from app.core.engine.llama_tools import LlamaTools
    from tests.remote_servers import RunningServer

TOOLS = find_llama_tools()
needs_tools = pytest.mark.skipif(TOOLS is None, reason=why_missing())

N_CTX = 512
QUESTION = [ChatMessage.system("You are a helpful assistant."), ChatMessage.user("Say hello.")]
GREEDY = SamplingParams(temperature=0.0, max_tokens=32, seed=7)


def params(model: Path, servers: tuple[str, ...] = ()) -> LoadParams:
    return LoadParams(model, n_ctx=N_CTX, n_threads=1, n_threads_batch=1, compute_servers=servers)


@pytest.fixture
def tools() -> LlamaTools:
    assert TOOLS is not None
    return TOOLS


@pytest.fixture
def two_servers(tools: LlamaTools, tmp_path: Path) -> Iterator[list[RunningServer]]:
    with (
        rpc_server(tools.rpc_server, tmp_path / "rpc-a.log") as first,
        rpc_server(tools.rpc_server, tmp_path / "rpc-b.log") as second,
    ):
        yield [first, second]


def endpoints(servers: list[RunningServer]) -> tuple[str, ...]:
    return tuple(f"127.0.0.1:{s.port}" for s in servers)


@pytest.fixture
def sized_servers(tools: LlamaTools, tmp_path: Path) -> Iterator[list[RunningServer]]:
    """Two compute servers that report 1 GiB and 4 GiB of memory."""
    with sized_rpc_servers(tools.rpc_server, tmp_path) as servers:
        yield servers


def local_answer(model: Path, tmp_path: Path) -> str:
    proxy = EngineProxy(log_path=tmp_path / "local-engine.log")
    try:
        proxy.load(params(model))
        return "".join(proxy.stream_chat(QUESTION, GREEDY, threading.Event()))
    finally:
        proxy.close()


@needs_tools
def test_the_model_is_split_across_two_compute_servers_and_answers_as_locally(
    two_servers: list[RunningServer], tiny_model: Path, tmp_path: Path
) -> None:
    log = tmp_path / "engine.log"
    proxy = EngineProxy(log_path=log)
    try:
        proxy.load(params(tiny_model, endpoints(two_servers)))
        pooled = "".join(proxy.stream_chat(QUESTION, GREEDY, threading.Event()))
        text = log.read_text(errors="replace")
    finally:
        proxy.close()
    first, second = endpoints(two_servers)
    # llama.cpp's load log: both servers used, layers on each, model weights in each one's buffer
    assert f"using device RPC0 ({first})" in text
    assert f"using device RPC1 ({second})" in text
    assert "assigned to device RPC0" in text
    assert "assigned to device RPC1" in text
    assert f"[{first}] model buffer size" in text
    assert f"[{second}] model buffer size" in text
    assert "assigned to device CPU" not in text
    assert pooled
    assert pooled == local_answer(tiny_model, tmp_path)


@needs_tools
def test_a_compute_server_killed_mid_answer_is_named_and_reconnecting_works(
    tools: LlamaTools, two_servers: list[RunningServer], tiny_model: Path, tmp_path: Path
) -> None:
    servers = endpoints(two_servers)
    proxy = EngineProxy(log_path=tmp_path / "engine.log")
    try:
        proxy.load(params(tiny_model, servers))
        pieces: list[str] = []
        long = SamplingParams(temperature=0.0, max_tokens=400)

        def read_and_kill() -> None:
            for piece in proxy.stream_chat(QUESTION, long, threading.Event()):
                pieces.append(piece)
                if len(pieces) == 2:
                    two_servers[1].kill()

        with pytest.raises(EngineCrashedError) as lost:
            read_and_kill()
        assert len(pieces) >= 2
        assert f"A compute server stopped answering ({', '.join(servers)})" in lost.value.message
        assert "Remote RPC server crashed" in lost.value.detail  # llama.cpp's own line, under Details
        # the app goes on: the same compute server started again, the model loads and answers
        with rpc_server(tools.rpc_server, tmp_path / "rpc-b2.log", port=two_servers[1].port):
            proxy.load(params(tiny_model, servers))
            again = "".join(proxy.stream_chat(QUESTION, GREEDY, threading.Event()))
        assert again
    finally:
        proxy.close()


@needs_tools
def test_a_compute_server_that_is_not_running_is_said_before_llama_cpp_tries(
    tiny_model: Path, tmp_path: Path
) -> None:
    port = free_port()
    proxy = EngineProxy(log_path=tmp_path / "engine.log")
    try:
        with pytest.raises(ComputeServerError, match=f"Nothing answers at 127.0.0.1:{port}"):
            proxy.load(params(tiny_model, (f"127.0.0.1:{port}",)))
        proxy.load(params(tiny_model))  # the same engine process loads locally afterwards
        assert "".join(proxy.stream_chat(QUESTION, GREEDY, threading.Event()))
    finally:
        proxy.close()


@pytest.mark.parametrize(
    ("text", "endpoint"),
    [
        ("192.168.1.20:50052", "192.168.1.20:50052"),
        ("box.local", "box.local:50052"),
        (" 10.0.0.2:1 ", "10.0.0.2:1"),
    ],
)
def test_compute_server_addresses(text: str, endpoint: str) -> None:
    assert parse_endpoint(text) == endpoint


@pytest.mark.parametrize("text", ["", "http://box:50052", "box:port", "box:70000"])
def test_bad_compute_server_addresses_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"compute server address|port|host"):
        parse_endpoint(text)


def test_only_llama_cpps_lost_server_lines_name_the_compute_servers() -> None:
    assert lost_compute_server("ggml.c: Remote RPC server crashed or returned malformed response", ["a:1"])
    assert lost_compute_server("Segmentation fault", ["a:1"]) == ""


MIB = 1024**2


def _buffer_bytes(text: str, endpoint: str) -> int:
    found = re.findall(rf"RPC\d+\[{re.escape(endpoint)}\] model buffer size =\s+([\d.]+) MiB", text)
    assert found, text[-3000:]
    return int(float(found[-1]) * MIB)  # the load's (the dry run's come first, allocating nothing)


@needs_tools
def test_the_plan_spreads_layers_by_the_servers_free_memory_and_llama_cpp_follows_it(
    sized_servers: list[RunningServer], tiny_model: Path, tmp_path: Path
) -> None:
    servers = endpoints(sized_servers)
    log = tmp_path / "engine.log"
    proxy = EngineProxy(log_path=log)
    try:
        devices = proxy.compute_devices(servers)
        # what each server reports, asked in the engine process where ggml registered them
        assert [(d.endpoint, d.free_bytes, d.total_bytes) for d in devices] == [
            (servers[0], 1024 * MIB, 1024 * MIB),
            (servers[1], 4096 * MIB, 4096 * MIB),
        ]
        assert all(d.rtt_s > 0 for d in devices)
        hardware = with_remote_devices(SystemHardware().probe(), [d.as_device() for d in devices])
        request = LoadRequest(tiny_model, PlanOverrides(n_ctx=N_CTX), n_threads=1, compute_servers=servers)
        planned = plan_load(request, hardware, proxy.measure_buffers)  # llama.cpp's dry run, too
        plan = planned.plan
        assert plan is not None
        assert plan.compute_source == "measured"
        # 1 : 4 of free memory: of the 4 layers + the output layer, 1 on the small server
        assert "1 layer on " + servers[0] + " (1.1 GB free)" in plan.explanation
        assert "3 layers and the output layer on " + servers[1] + " (4.3 GB free)" in plan.explanation
        assert "none here" in plan.explanation
        assert planned.params.tensor_split == (1024.0 * MIB, 4096.0 * MIB)
        proxy.load(planned.params)
        answer = "".join(proxy.stream_chat(QUESTION, GREEDY, threading.Event()))
        text = log.read_text(errors="replace")
    finally:
        proxy.close()
    assert answer
    # llama.cpp's load log: the layers where the plan put them, the weights the plan projected
    assert "layer   0 assigned to device RPC0" in text
    for layer in (1, 2, 3, 4):  # 4: the output layer
        assert f"layer   {layer} assigned to device RPC1" in text
    for endpoint, usage in zip(servers, plan.devices, strict=True):
        assert abs(_buffer_bytes(text, endpoint) - usage.weights) <= 10_486  # MiB, 2 decimals
    assert "assigned to device CPU" not in text
