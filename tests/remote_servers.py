"""Real servers on 127.0.0.1 for the remote-engine tests: llama-cpp-python's own OpenAI-compatible
server and llama.cpp's ``llama-server`` (built by the set-up from the same llama.cpp) on a
generated tiny model, llama.cpp's ``rpc-server`` compute servers, and two small ``http.server``
servers that misbehave (one sends HTML, one never answers)."""

from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

from app.core.engine.remote import RemoteEngine, ServerConfig
from app.core.tools import TOOL_ROLE
from app.core.types import ChatMessage

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from app.core.types import SamplingParams

API_KEY = "sk-test-0123456789abcdef"  # what the tests' server requires
START_TIMEOUT_S = 120.0


_OPEN: list[RemoteEngine] = []


@pytest.fixture(autouse=True)
def close_remote_engines() -> Iterator[None]:
    """Close every engine :func:`connect` opened in a test (import it into the test module)."""
    yield
    while _OPEN:
        _OPEN.pop().close()


def connect(server: RunningServer, **config: object) -> RemoteEngine:
    """A RemoteEngine on ``server`` with the tests' key (``config`` overrides), loaded."""
    engine = RemoteEngine(ServerConfig(server.url, **{"api_key": API_KEY, **config}))  # type: ignore[arg-type]
    _OPEN.append(engine)
    engine.load()
    return engine


def check_a_tool_result_is_accepted(
    server: RunningServer, question: list[ChatMessage], sampling: SamplingParams
) -> None:
    """A tool's result after the model's call, as the app sends it (Llama 4's "ipython" message
    goes as OpenAI's "tool" message, which servers checking OpenAI's schema accept), is answered
    and counted in the prompt's tokens."""
    engine = connect(server)
    messages = [
        *question,
        ChatMessage("assistant", '{"name": "add", "parameters": {"a": 2, "b": 3}}'),
        ChatMessage(TOOL_ROLE, "5"),
    ]
    pieces = list(engine.stream_chat(messages, sampling, threading.Event()))
    assert "".join(pieces).strip()
    assert engine.count_chat_tokens(messages) > engine.count_chat_tokens(messages[:-1])


def check_a_killed_server_keeps_the_partial_answer(
    engine: RemoteEngine, doomed: RunningServer, question: list[ChatMessage], greedy: SamplingParams
) -> list[str]:
    """The server is SIGKILLed after the answer's second piece: the engine says so in a sentence
    that keeps the text (the pieces read, returned), and the next answer finds nothing there."""
    from app.core.engine.remote import ServerLostError, ServerUnreachableError
    from app.core.types import SamplingParams

    pieces: list[str] = []
    long = SamplingParams(temperature=0.0, max_tokens=1900)

    def read_and_kill() -> None:
        for piece in engine.stream_chat(question, long, threading.Event()):
            pieces.append(piece)
            if len(pieces) == 2:
                doomed.kill()

    with pytest.raises(ServerLostError) as lost:
        read_and_kill()
    assert len(pieces) >= 2
    assert "in the middle of the answer" in lost.value.message
    assert "The text so far is kept" in lost.value.message
    with pytest.raises(ServerUnreachableError, match="connection refused"):
        list(engine.stream_chat(question, greedy, threading.Event()))
    return pieces


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RunningServer:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)


def _ready(port: int, key: str) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/v1/models", headers={"Authorization": f"Bearer {key}"})
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def _wait_until_ready(server: RunningServer, name: str, key: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not _ready(server.port, key):
        if server.process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not start:\n{server.log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.2)


@contextlib.contextmanager
def _serve(command: list[str], port: int, log: Path, name: str, key: str) -> Iterator[RunningServer]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    server = RunningServer(process, port, log)
    try:
        _wait_until_ready(server, name, key)
        yield server
    finally:
        server.kill()


@contextlib.contextmanager
def llama_server(
    binary: Path, model: Path, log: Path, *, n_ctx: int = 1024, key: str = API_KEY
) -> Iterator[RunningServer]:
    """llama.cpp's ``llama-server`` on ``model``: one thread, one slot, flash attention off and
    the default batch sizes of the local engine, so that its greedy answers are the local
    engine's."""
    port = free_port()
    command = [str(binary), "--model", str(model), "--alias", "tiny", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--threads", "1", "--threads-batch", "1", "--ctx-size", str(n_ctx)]
    command += ["--parallel", "1", "--flash-attn", "off", "--batch-size", "512", "--ubatch-size", "512"]
    command += ["--api-key", key]
    with _serve(command, port, log, "llama-server", key) as server:
        yield server


@contextlib.contextmanager
def llama_cpp_server(
    model: Path, log: Path, *, n_ctx: int = 1024, key: str = API_KEY, port: int = 0
) -> Iterator[RunningServer]:
    """``python -m llama_cpp.server`` on ``model`` (one thread; ``port``: 0 = a free one), waited
    for with a health poll and always killed afterwards."""
    port = port or free_port()
    command = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(model),
        "--model_alias",
        "tiny",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_threads",
        "1",
        "--n_threads_batch",
        "1",
        "--n_ctx",
        str(n_ctx),
        "--api_key",
        key,
    ]
    with _serve(command, port, log, "llama_cpp.server", key) as server:
        yield server


class _HtmlHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<!doctype html><html><body><h1>My router</h1></body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, format: str, *args: object) -> None:
        pass


class _SilentHandler(http.server.BaseHTTPRequestHandler):
    release: threading.Event

    def do_GET(self) -> None:
        self.release.wait(30)  # a server that accepts the request and never answers

    do_POST = do_GET

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def small_http_server(kind: str) -> Iterator[str]:
    """``kind`` "html": answers every request with an HTML page; "silent": never answers."""
    release = threading.Event()
    silent = type("Silent", (_SilentHandler,), {"release": release})
    handler: type[http.server.BaseHTTPRequestHandler] = _HtmlHandler if kind == "html" else silent
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="test-http-server")
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        release.set()
        server.shutdown()
        server.server_close()
        thread.join(10)


class ScriptedServer:
    """An OpenAI-compatible server whose answers are scripted: each ``/v1/chat/completions``
    request takes the next answer of ``answers`` (a list of streamed pieces) and is kept, as the
    JSON body the client sent, in ``requests``. Stands for a model that emits a given text (a tool
    call) on demand, which no model here does; the client, HTTP and SSE are real."""

    def __init__(self, answers: list[list[str]], model: str = "scripted") -> None:
        self.answers = list(answers)
        self.model = model
        self.requests: list[dict[str, object]] = []
        self._lock = threading.Lock()

    def next_answer(self, body: dict[str, object]) -> list[str] | None:
        with self._lock:
            self.requests.append(body)
            return self.answers.pop(0) if self.answers else None


class _ScriptedHandler(http.server.BaseHTTPRequestHandler):
    script: ScriptedServer

    def _send_json(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/v1/models":
            self._send_json(200, {"object": "list", "data": [{"id": self.script.model, "object": "model"}]})
        else:
            self._send_json(404, {"error": {"message": "not found"}})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        if self.path != "/v1/chat/completions":
            self._send_json(404, {"error": {"message": "not found"}})
            return
        pieces = self.script.next_answer(body)
        if pieces is None:
            self._send_json(500, {"error": {"message": "the script has no more answers"}})
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()

        def event(delta: dict[str, str], reason: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "finish_reason": reason}
            return (
                f"data: {json.dumps({'object': 'chat.completion.chunk', 'choices': [choice]})}\n\n".encode()
            )

        self.wfile.write(event({"role": "assistant", "content": ""}))
        for piece in pieces:
            self.wfile.write(event({"content": piece}))
            self.wfile.flush()
        self.wfile.write(event({}, "stop") + b"data: [DONE]\n\n")
        self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def scripted_server(answers: list[list[str]]) -> Iterator[tuple[str, ScriptedServer]]:
    """A :class:`ScriptedServer` on 127.0.0.1 (any free port): its URL and the script."""
    script = ScriptedServer(answers)
    handler = type("Scripted", (_ScriptedHandler,), {"script": script})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="test-scripted-server")
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", script
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def rpc_server(
    binary: Path, log: Path, *, port: int = 0, cache: bool = False, memory: MemoryLimit | None = None
) -> Iterator[RunningServer]:
    """llama.cpp's ``rpc-server`` (one thread) on 127.0.0.1, waited for until it accepts
    connections, always killed afterwards. ``cache``: its local tensor cache (``-c``); ``memory``:
    the memory it reports (:class:`MemoryLimit`)."""
    port = port or free_port()
    command = [str(binary), "--host", "127.0.0.1", "--port", str(port), "--threads", "1"]
    if cache:
        command.append("--cache")
    env = None if memory is None else {**os.environ, **memory.env()}
    with log.open("ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    server = RunningServer(process, port, log)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _accepts(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"rpc-server did not start:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.1)
        yield server
    finally:
        server.kill()


# rpc-server lends its CPU device, whose memory ggml reads from sysconf(_SC_PHYS_PAGES): the whole
# RAM of this machine for every server on it, and this build's rpc-server has no option to
# declare less. The tests give two servers different sizes by answering that sysconf call.
_MEMORY_SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <unistd.h>
long sysconf(int name) {
    static long (*real)(int) = 0;
    if (!real) real = (long (*)(int))dlsym(RTLD_NEXT, "sysconf");
    if (name == _SC_PHYS_PAGES || name == _SC_AVPHYS_PAGES) {
        const char *mib = getenv("SCOUT_TEST_MEMORY_MIB");
        if (mib) return (long)(atoll(mib) * 1024 * 1024 / real(_SC_PAGESIZE));
    }
    return real(name);
}
"""


@dataclass(frozen=True)
class MemoryLimit:
    """The memory an rpc-server reports, through a preloaded sysconf (:func:`memory_shim`)."""

    shim: Path
    mib: int

    def env(self) -> dict[str, str]:
        return {"LD_PRELOAD": str(self.shim), "SCOUT_TEST_MEMORY_MIB": str(self.mib)}


def _preload_library(directory: Path, name: str, source_text: str) -> Path | None:
    """``source_text`` built with the C compiler into ``directory``/lib``name``.so, to LD_PRELOAD
    (None, when there is no compiler or not on Linux)."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if not sys.platform.startswith("linux") or compiler is None:
        return None
    source, library = directory / f"{name}.c", directory / f"lib{name}.so"
    source.write_text(source_text)
    subprocess.run(
        [compiler, "-shared", "-fPIC", "-O2", "-o", str(library), str(source), "-ldl"],
        check=True,
        capture_output=True,
    )
    return library


def memory_shim(directory: Path) -> Path | None:
    """The sysconf shim built with the C compiler (None, when there is none or not on Linux)."""
    return _preload_library(directory, "memory_shim", _MEMORY_SHIM)


# The socket audit's recorder for the processes the app starts (the engine process, whose compute
# server connections are made by llama.cpp's C code as well as by Python): a preloaded connect()
# that appends "pid host port" for every IPv4/IPv6 connection to the file SCOUT_TEST_CONNECT_LOG.
_CONNECT_SHIM = r"""
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>
int connect(int fd, const struct sockaddr *addr, socklen_t len) {
    static int (*real)(int, const struct sockaddr *, socklen_t) = 0;
    if (!real) real = (int (*)(int, const struct sockaddr *, socklen_t))dlsym(RTLD_NEXT, "connect");
    const char *path = getenv("SCOUT_TEST_CONNECT_LOG");
    if (path && addr && (addr->sa_family == AF_INET || addr->sa_family == AF_INET6)) {
        char host[INET6_ADDRSTRLEN] = "?";
        int port = 0;
        if (addr->sa_family == AF_INET) {
            const struct sockaddr_in *a = (const struct sockaddr_in *)addr;
            inet_ntop(AF_INET, &a->sin_addr, host, sizeof host);
            port = ntohs(a->sin_port);
        } else {
            const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)addr;
            inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host);
            port = ntohs(a->sin6_port);
        }
        FILE *f = fopen(path, "a");
        if (f) {
            fprintf(f, "%d %s %d\n", (int)getpid(), host, port);
            fclose(f);
        }
    }
    return real(fd, addr, len);
}
"""


@contextlib.contextmanager
def sized_rpc_servers(binary: Path, directory: Path) -> Iterator[list[RunningServer]]:
    """Two compute servers (:func:`rpc_server`) that report 1 GiB and 4 GiB of memory; skips the test
    when there is no C compiler for the memory shim."""
    shim = memory_shim(directory)
    if shim is None:
        pytest.skip("no C compiler to build the memory shim the sized compute servers need")
    with (
        rpc_server(binary, directory / "rpc-small.log", memory=MemoryLimit(shim, 1024)) as small,
        rpc_server(binary, directory / "rpc-big.log", memory=MemoryLimit(shim, 4096)) as big,
    ):
        yield [small, big]


def connect_recorder(directory: Path) -> Path | None:
    """The connect() recorder (LD_PRELOAD it with SCOUT_TEST_CONNECT_LOG set); None when there is
    no C compiler or not on Linux."""
    return _preload_library(directory, "connect_recorder", _CONNECT_SHIM)
