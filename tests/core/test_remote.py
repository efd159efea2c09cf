"""RemoteEngine against real servers on 127.0.0.1: llama-cpp-python's OpenAI-compatible server on
the tiny model (started once for the module), a second one that is killed mid-answer, an HTML
server, a server that never answers, and a closed port."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

import pytest

from app.core.engine.errors import ContextOverflowError
from app.core.engine.remote import (
    DEFAULT_N_CTX,
    LLAMA_CPP_PYTHON,
    InsecureServerError,
    NotOpenAICompatibleError,
    RemoteError,
    ServerAuthError,
    ServerConfig,
    ServerModelError,
    ServerTimeoutError,
    ServerUnreachableError,
    probe_server,
)
from app.core.types import ChatMessage, FinishReason, LoadParams, SamplingParams
from tests.remote_servers import (  # noqa: F401 - close_remote_engines: fixture
    API_KEY,
    check_a_killed_server_keeps_the_partial_answer,
    check_a_tool_result_is_accepted,
    close_remote_engines,
    connect,
    free_port,
    llama_cpp_server,
    small_http_server,
)

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from tests.remote_servers import RunningServer

N_CTX = 1024
QUESTION = [ChatMessage.system("You are a helpful assistant."), ChatMessage.user("Say hello.")]
GREEDY = SamplingParams(temperature=0.0, max_tokens=48, seed=7)


@pytest.fixture(scope="module")
def server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    with llama_cpp_server(tiny_model, log, n_ctx=N_CTX) as running:
        yield running


def test_the_server_is_identified(server: RunningServer) -> None:
    identity = probe_server(ServerConfig(server.url, api_key=API_KEY))
    assert identity.kind == LLAMA_CPP_PYTHON
    assert identity.models == ("tiny",)
    assert identity.n_ctx == 0  # llama-cpp-python's server does not say its context size
    assert identity.tokenize_path == "/extras/tokenize/count"
    assert "llama-cpp-python server" in identity.describe("127.0.0.1:1")


def test_a_context_not_reported_is_assumed_and_said(server: RunningServer) -> None:
    engine = connect(server)
    info = engine.model_info
    assert info is not None
    assert info.n_ctx == DEFAULT_N_CTX
    assert "does not report its context size" in info.chat_template_note
    assert info.server == f"127.0.0.1:{server.port} — {LLAMA_CPP_PYTHON}"
    assert connect(server, n_ctx=N_CTX).model_info.n_ctx == N_CTX  # type: ignore[union-attr]


def test_an_answer_streams_with_its_figures(server: RunningServer) -> None:
    engine = connect(server, n_ctx=N_CTX)
    pieces = list(engine.stream_chat(QUESTION, GREEDY, threading.Event()))
    stats = engine.last_stats
    assert len(pieces) > 1
    assert "".join(pieces).strip()
    assert stats.completion_tokens == len(pieces) == GREEDY.max_tokens
    assert stats.finish_reason == FinishReason.LENGTH
    assert stats.ttft_s > 0
    assert stats.tokens_per_s > 0
    assert stats.prompt_tokens > 0


def test_a_tool_result_is_accepted_and_counted(server: RunningServer) -> None:
    check_a_tool_result_is_accepted(server, QUESTION, GREEDY)


def test_token_counts_come_from_the_server(server: RunningServer, tiny_model: Path) -> None:
    from app.core.engine import LlamaEngine

    engine = connect(server, n_ctx=N_CTX)
    local = LlamaEngine()
    local.load(LoadParams(tiny_model, n_ctx=N_CTX, n_threads=1, n_threads_batch=1))
    try:
        text = "The quick brown fox jumps over the lazy dog, twice."
        assert engine.count_tokens(text) == local.count_tokens(text)
        # no template endpoint: an estimate near the real figure, never below the messages' own tokens
        real = local.count_chat_tokens(QUESTION)
        estimate = engine.count_chat_tokens(QUESTION)
        assert sum(local.count_tokens(m.content) for m in QUESTION) < estimate
        assert abs(estimate - real) <= 12
    finally:
        local.unload()


def test_greedy_answers_equal_the_local_engine(server: RunningServer, tiny_model: Path) -> None:
    """Both render the GGUF's chat template with llama-cpp-python's Jinja2ChatFormatter, so the
    prompt tokens and therefore the greedy answer are the same."""
    from app.core.engine import LlamaEngine

    engine = connect(server, n_ctx=N_CTX)
    remote = list(engine.stream_chat(QUESTION, GREEDY, threading.Event()))
    local_engine = LlamaEngine()
    local_engine.load(LoadParams(tiny_model, n_ctx=N_CTX, n_threads=1, n_threads_batch=1))
    try:
        local = list(local_engine.stream_chat(QUESTION, GREEDY, threading.Event()))
    finally:
        local_engine.unload()
    assert "".join(remote) == "".join(local)
    assert engine.last_stats.completion_tokens == len(remote) == len(local)


def test_stop_closes_the_stream_and_the_server_goes_on(server: RunningServer) -> None:
    engine = connect(server, n_ctx=N_CTX)
    cancel = threading.Event()
    pieces = []
    long = SamplingParams(temperature=0.0, max_tokens=900)
    for piece in engine.stream_chat(QUESTION, long, cancel):
        pieces.append(piece)
        if len(pieces) == 3:
            cancel.set()
    assert 3 <= len(pieces) < long.max_tokens
    assert engine.last_stats.finish_reason == FinishReason.CANCELLED
    again = list(engine.stream_chat(QUESTION, GREEDY, threading.Event()))  # the server is free again
    assert len(again) == GREEDY.max_tokens


def test_a_wrong_key_is_refused_in_plain_words_and_never_shown(
    server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "sk-wrong-key-9876543210"
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ServerAuthError) as refused:
        connect(server, api_key=wrong)
    assert "refused the API key (HTTP 401)" in refused.value.message
    assert "the key is wrong" in refused.value.message
    with pytest.raises(ServerAuthError, match="a key is needed"):
        probe_server(ServerConfig(server.url))
    engine = connect(server, n_ctx=N_CTX)
    list(engine.stream_chat(QUESTION, GREEDY, threading.Event()))
    for key in (wrong, API_KEY):
        assert key not in caplog.text
        assert key not in str(refused.value) + refused.value.detail
        assert key not in repr(ServerConfig(server.url, api_key=key))
        assert key not in repr(engine.model_info) + repr(engine.last_stats)


def test_a_model_the_server_does_not_have(server: RunningServer) -> None:
    with pytest.raises(ServerModelError, match="no model named 'scout'; it offers: tiny"):
        connect(server, model="scout")


def test_a_context_exceeded_says_the_servers_size(server: RunningServer) -> None:
    engine = connect(server)  # assumes DEFAULT_N_CTX, more than the server's
    long = [ChatMessage.user("word " * (N_CTX + 50))]
    with pytest.raises(ContextOverflowError, match="does not fit the server's context") as exceeded:
        list(engine.stream_chat(long, GREEDY, threading.Event()))
    assert f"{N_CTX}" in exceeded.value.message
    assert engine.model_info is not None
    assert engine.model_info.n_ctx == N_CTX  # learnt from the server's answer


def test_pictures_to_a_server_without_vision_are_refused(server: RunningServer) -> None:
    engine = connect(server, n_ctx=N_CTX)
    turn = [ChatMessage.user("What is this?", images=("data:image/png;base64,iVBORw0KGgo=",))]
    with pytest.raises(RemoteError, match="does not accept pictures"):
        list(engine.stream_chat(turn, GREEDY, threading.Event()))


def test_continue_on_a_server_that_cannot_carry_on_an_answer_says_so(server: RunningServer) -> None:
    engine = connect(server, n_ctx=N_CTX)
    turn = [ChatMessage.user("Tell me a story."), ChatMessage.assistant("Once upon")]
    with pytest.raises(RemoteError, match="cannot continue an answer"):
        list(engine.stream_chat(turn, GREEDY, threading.Event(), continue_last=True))


def test_a_server_killed_mid_answer_keeps_the_partial_answer(tiny_model: Path, tmp_path: Path) -> None:
    with llama_cpp_server(tiny_model, tmp_path / "killed.log", n_ctx=2048) as doomed:
        engine = connect(doomed, n_ctx=2048)
        pieces = check_a_killed_server_keeps_the_partial_answer(engine, doomed, QUESTION, GREEDY)
        assert engine.last_stats.completion_tokens == len(pieces)


def test_a_closed_port_is_refused() -> None:
    port = free_port()
    with pytest.raises(ServerUnreachableError, match=f"Nothing answers at 127.0.0.1:{port}"):
        probe_server(ServerConfig(f"http://127.0.0.1:{port}"))


def test_an_html_server_is_not_openai_compatible() -> None:
    with small_http_server("html") as url, pytest.raises(NotOpenAICompatibleError) as wrong:
        probe_server(ServerConfig(url))
    assert "not as an OpenAI-compatible server" in wrong.value.message
    assert "an HTML page" in wrong.value.message


def test_a_silent_server_times_out() -> None:
    with small_http_server("silent") as url, pytest.raises(ServerTimeoutError) as slow:
        probe_server(ServerConfig(url, timeout_s=0.5))
    assert "did not answer within" in slow.value.message


def test_plain_http_outside_private_networks_needs_permission() -> None:
    with pytest.raises(InsecureServerError, match="unencrypted"):
        probe_server(ServerConfig("http://8.8.8.8:8080"))  # refused before any connection


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("127.0.0.1:8081", "127.0.0.1:8081"),
        ("http://box.local:8080/v1", "box.local:8080"),
        ("https://scout.example.org", "scout.example.org:443"),
    ],
)
def test_server_addresses(url: str, address: str) -> None:
    assert ServerConfig(url).address == address
    assert not ServerConfig(url).base.path.endswith("/v1")


def test_a_bad_address_is_refused() -> None:
    with pytest.raises(ValueError, match="not a server address"):
        ServerConfig("ftp://box").address  # noqa: B018


def test_the_command_line_self_test_answers_through_the_server(server: RunningServer, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "SCOUT_TEST_SERVER_KEY": API_KEY}
    command = [sys.executable, "-m", "app", "--data-dir", str(tmp_path / "data"), "--server", server.url]
    command += ["--api-key-env", "SCOUT_TEST_SERVER_KEY", "--n-ctx", str(N_CTX), "--self-test"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert f"model: tiny on 127.0.0.1:{server.port} — llama-cpp-python server" in output
    assert "time to first token:" in output
    assert "tokens per second:" in output
    assert API_KEY not in output
    wrong = subprocess.run(
        [*command[:7], "--self-test"], capture_output=True, text=True, env=env, timeout=300, check=False
    )
    assert wrong.returncode == 1
    assert "refused the API key (HTTP 401): a key is needed" in wrong.stdout
