"""RemoteEngine against llama.cpp's own ``llama-server``, built by the set-up from the same llama.cpp
as the local engine, serving the tiny model on 127.0.0.1: identification through ``/props``,
streaming with the server's timings, prompt progress, Stop, a wrong key, a greedy answer equal to
the local engine's token for token, and the server killed in the middle of an answer. Skipped, with
the reason, when the set-up has not built the tools."""

from __future__ import annotations

import re
import subprocess
import threading
from typing import TYPE_CHECKING

import pytest

from app.core.engine.llama_tools import find_llama_tools, why_missing
from app.core.engine.remote import (
    LLAMA_SERVER,
    ServerAuthError,
    ServerConfig,
    probe_server,
)
from app.core.types import ChatMessage, FinishReason, LoadParams, SamplingParams
from tests.remote_servers import (  # noqa: F401 - fixture
    API_KEY,
    check_a_killed_server_keeps_the_partial_answer,
    check_a_tool_result_is_accepted,
    close_remote_engines,
    connect,
    llama_server,
)

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from app.core.engine.llama_tools import LlamaTools
    from tests.remote_servers import RunningServer

TOOLS = find_llama_tools()
pytestmark = pytest.mark.skipif(TOOLS is None, reason=why_missing())

N_CTX = 1024
QUESTION = [ChatMessage.system("You are a helpful assistant."), ChatMessage.user("Say hello.")]
GREEDY = SamplingParams(temperature=0.0, max_tokens=48, seed=7)


@pytest.fixture(scope="module")
def tools() -> LlamaTools:
    assert TOOLS is not None
    return TOOLS


@pytest.fixture(scope="module")
def server(
    tools: LlamaTools, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    with llama_server(tools.llama_server, tiny_model, log, n_ctx=N_CTX) as running:
        yield running


def test_the_server_is_identified_by_its_props(server: RunningServer, tools: LlamaTools) -> None:
    identity = probe_server(ServerConfig(server.url, api_key=API_KEY))
    assert identity.kind == LLAMA_SERVER
    assert identity.models == ("tiny",)
    assert identity.n_ctx == N_CTX  # /props: the context the server was started with
    assert not identity.vision
    assert identity.tokenize_path == "/tokenize"
    assert identity.template_path == "/apply-template"
    version = subprocess.run(
        [str(tools.llama_server), "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    # the build the tool reports itself ("build 0, commit unknown": a source archive has no git)
    said = re.search(r"\(build (\d+), commit (\w+)\)", version.stdout + version.stderr)
    assert said is not None
    assert identity.version == f"b{said.group(1)}-{said.group(2)}"
    assert f"llama-server {identity.version} at 127.0.0.1:{server.port}" in identity.describe(
        f"127.0.0.1:{server.port}"
    )
    engine = connect(server)
    assert engine.model_info is not None
    assert engine.model_info.n_ctx == N_CTX
    assert engine.model_info.chat_template_note == ""


def test_an_answer_streams_with_the_servers_timings_and_prompt_progress(server: RunningServer) -> None:
    engine = connect(server)
    progress: list[tuple[int, int]] = []
    pieces = list(
        engine.stream_chat(
            QUESTION, GREEDY, threading.Event(), lambda done, todo: progress.append((done, todo))
        )
    )
    stats = engine.last_stats
    assert "".join(pieces).strip()
    assert stats.completion_tokens == GREEDY.max_tokens
    assert stats.finish_reason == FinishReason.LENGTH
    assert stats.prompt_tokens == engine.count_chat_tokens(QUESTION)  # /apply-template + /tokenize
    assert stats.tokens_per_s > 0
    assert stats.ttft_s > 0
    # return_progress: llama-server says how far it has read the prompt, up to all of it
    assert progress
    assert progress[-1][0] == progress[-1][1] > 0
    assert all(done <= todo for done, todo in progress)


def test_a_tool_result_is_accepted_and_counted(server: RunningServer) -> None:
    check_a_tool_result_is_accepted(server, QUESTION, GREEDY)


def test_token_counts_come_from_the_server(server: RunningServer, tiny_model: Path) -> None:
    from app.core.engine import LlamaEngine

    engine = connect(server)
    local = LlamaEngine()
    local.load(LoadParams(tiny_model, n_ctx=N_CTX, n_threads=1, n_threads_batch=1))
    try:
        text = "The quick brown fox jumps over the lazy dog, twice."
        assert engine.count_tokens(text) == local.count_tokens(text)
        assert engine.count_chat_tokens(QUESTION) == local.count_chat_tokens(QUESTION)
    finally:
        local.unload()


def test_greedy_answers_equal_the_local_engine_token_for_token(
    server: RunningServer, tiny_model: Path
) -> None:
    """llama-server renders the GGUF's chat template with its own Jinja engine, the local engine
    with llama-cpp-python's: the prompts are the same tokens (asserted), so the greedy answers are."""
    from app.core.engine import LlamaEngine

    engine = connect(server)
    remote = list(engine.stream_chat(QUESTION, GREEDY, threading.Event()))
    local_engine = LlamaEngine()
    local_engine.load(LoadParams(tiny_model, n_ctx=N_CTX, n_threads=1, n_threads_batch=1))
    try:
        assert engine.count_chat_tokens(QUESTION) == local_engine.count_chat_tokens(QUESTION)
        local = list(local_engine.stream_chat(QUESTION, GREEDY, threading.Event()))
    finally:
        local_engine.unload()
    assert "".join(remote) == "".join(local)
    assert engine.last_stats.completion_tokens == len(local) == GREEDY.max_tokens


def test_stop_closes_the_stream_and_the_server_goes_on(server: RunningServer) -> None:
    engine = connect(server)
    cancel = threading.Event()
    pieces = []
    long = SamplingParams(temperature=0.0, max_tokens=900)
    for piece in engine.stream_chat(QUESTION, long, cancel):
        pieces.append(piece)
        if len(pieces) == 3:
            cancel.set()
    assert 3 <= len(pieces) < long.max_tokens
    assert engine.last_stats.finish_reason == FinishReason.CANCELLED
    again = list(engine.stream_chat(QUESTION, GREEDY, threading.Event()))  # its one slot is free again
    assert engine.last_stats.completion_tokens == GREEDY.max_tokens
    assert again


def test_a_wrong_key_is_refused(server: RunningServer) -> None:
    with pytest.raises(ServerAuthError, match="refused the API key \\(HTTP 401\\): the key is wrong"):
        connect(server, api_key="sk-wrong-key-9876543210")
    with pytest.raises(ServerAuthError, match="a key is needed"):
        probe_server(ServerConfig(server.url))


def test_the_server_killed_mid_answer_keeps_the_partial_answer(
    tools: LlamaTools, tiny_model: Path, tmp_path: Path
) -> None:
    with llama_server(tools.llama_server, tiny_model, tmp_path / "killed.log", n_ctx=2048) as doomed:
        check_a_killed_server_keeps_the_partial_answer(connect(doomed), doomed, QUESTION, GREEDY)
