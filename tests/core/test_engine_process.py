"""The engine in its own process (EngineProxy + the engine child), on real llama.cpp.

A killed, aborted or stopped engine process is an error the caller gets, never the end of this
(pytest's) process; the next load starts a fresh engine process. Every test ends every engine
process it started, whatever happened.
"""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from app.core.engine import ContextOverflowError, LlamaEngine, LoadCancelled, NoModelError
from app.core.engine.errors import EngineCrashedError, EngineHungError
from app.core.engine.probe import measure_buffers
from app.core.engine.process import EngineProxy
from app.core.tiny_model import TinyModelSpec, write_tiny_model
from app.core.types import ChatMessage, LoadParams, SamplingParams

GREEDY = SamplingParams(temperature=0.0, max_tokens=16)
LONG = SamplingParams(max_tokens=8000, seed=3)  # far longer than a test waits for


class Proxies:
    """Makes proxies and ends every engine process they started (killed ones included)."""

    def __init__(self) -> None:
        self.made: list[EngineProxy] = []
        self.pids: set[int] = set()

    def __call__(self, **kwargs: object) -> EngineProxy:
        proxy = EngineProxy(**kwargs)  # type: ignore[arg-type]
        self.made.append(proxy)
        return proxy

    def note(self, proxy: EngineProxy) -> int:
        pid = proxy.pid
        assert pid is not None
        self.pids.add(pid)
        return pid

    def end_all(self) -> None:
        for proxy in self.made:
            proxy.close()  # kills its engine process, stopped or not, and reaps it
        for pid in self.pids:  # a child the test left behind otherwise (never a reused pid)
            if our_child(pid):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)


def our_child(pid: int) -> bool:
    """Whether ``pid`` is still a child of this process (not yet reaped)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()
    except OSError:
        return False
    return int(fields[1]) == os.getpid()


@pytest.fixture
def proxies() -> object:
    made = Proxies()
    try:
        yield made
    finally:
        made.end_all()


@pytest.fixture(scope="module")
def aborting_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A llama4 file that llama.cpp loads, then aborts on (GGML_ASSERT) at the first graph."""
    path = tmp_path_factory.mktemp("abort") / "tiny-llama4-no-temp-scale.gguf"
    return write_tiny_model(path, TinyModelSpec(sliding_window=0))[0]


def params(model: Path, **kwargs: object) -> LoadParams:
    return LoadParams(model, n_ctx=kwargs.pop("n_ctx", 1024), n_threads=1, **kwargs)  # type: ignore[arg-type]


def answer(engine: object, text: str = "Hello!", sampling: SamplingParams = GREEDY) -> str:
    return "".join(engine.stream_chat([ChatMessage.user(text)], sampling, threading.Event()))  # type: ignore[attr-defined]


def test_the_proxy_answers_as_the_engine_in_this_process_does(proxies: Proxies, tiny_model: Path) -> None:
    proxy = proxies()
    progress: list[float] = []
    info = proxy.load(params(tiny_model), lambda f: progress.append(f) or True)
    proxies.note(proxy)
    assert progress
    assert progress[-1] == pytest.approx(1.0)
    local = LlamaEngine()
    try:
        assert local.load(params(tiny_model)).name == info.name
        messages = [ChatMessage.system("Be brief."), ChatMessage.user("What is in the document?")]
        assert proxy.count_tokens("hello world") == local.count_tokens("hello world")
        assert proxy.count_chat_tokens(messages) == local.count_chat_tokens(messages)
        prompt_steps: list[tuple[int, int]] = []
        pieces = list(
            proxy.stream_chat(messages, GREEDY, threading.Event(), lambda d, t: prompt_steps.append((d, t)))
        )
        assert "".join(pieces) == answer_messages(local, messages)
        assert prompt_steps
        assert prompt_steps[-1][0] == prompt_steps[-1][1]
        assert proxy.last_stats.completion_tokens == GREEDY.max_tokens
        assert proxy.last_stats.finish_reason == "length"
        assert proxy.state_key() == local.state_key()
        # Continue crosses the process too: the same continuation as here
        unfinished = [*messages, ChatMessage.assistant("".join(pieces))]
        more = proxy.stream_chat(unfinished, GREEDY, threading.Event(), continue_last=True)
        assert "".join(more) == "".join(
            local.stream_chat(unfinished, GREEDY, threading.Event(), continue_last=True)
        )
        assert proxy.last_stats.prompt_tokens == local.last_stats.prompt_tokens
    finally:
        local.unload()


def answer_messages(engine: LlamaEngine, messages: list[ChatMessage]) -> str:
    return "".join(engine.stream_chat(messages, GREEDY, threading.Event()))


def read_signalling(proxy: EngineProxy, sig: signal.Signals, pieces: list[str]) -> None:
    """Read a long answer into ``pieces``, sending ``sig`` to the engine process at the first piece."""
    pid = proxy.pid
    assert pid is not None
    for piece in proxy.stream_chat([ChatMessage.user("Tell me more.")], LONG, threading.Event()):
        if not pieces:
            os.kill(pid, sig)
        pieces.append(piece)


def test_the_process_using_the_proxy_never_imports_llama_cpp(tiny_model: Path) -> None:
    script = (
        "import sys, threading\n"
        "from app.core.engine.process import EngineProxy\n"
        "from app.core.types import ChatMessage, LoadParams, SamplingParams\n"
        "proxy = EngineProxy()\n"
        "try:\n"
        f"    proxy.load(LoadParams({str(tiny_model)!r}, n_ctx=256, n_threads=1))\n"
        "    text = ''.join(proxy.stream_chat([ChatMessage.user('Hi')], SamplingParams(max_tokens=4), "
        "threading.Event()))\n"
        "finally:\n"
        "    proxy.close()\n"
        "print(bool(text), 'llama_cpp' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    command = [sys.executable, "-c", script]
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "False"]


def test_kv_state_round_trips_through_the_engine_process(
    proxies: Proxies, tiny_model: Path, tmp_path: Path
) -> None:
    proxy = proxies()
    proxy.load(params(tiny_model))
    proxies.note(proxy)
    answer(proxy)
    saved = proxy.save_state(tmp_path / "conversation.llamastate")
    assert saved == proxy.last_stats.context_used
    proxy.load(params(tiny_model))
    assert proxy.load_state(tmp_path / "conversation.llamastate") == saved
    assert proxy.load_state(tmp_path / "missing.llamastate") == 0


def test_engine_errors_keep_their_type_and_sentence(proxies: Proxies, tiny_model: Path) -> None:
    proxy = proxies()
    with pytest.raises(NoModelError):
        answer(proxy)
    proxies.note(proxy)
    proxy.load(params(tiny_model, n_ctx=64))
    with pytest.raises(ContextOverflowError, match="too long for the context window"):
        answer(proxy, "word " * 200)
    assert answer(proxy)  # the engine process is fine after an error


def test_a_load_can_be_cancelled_from_its_progress(proxies: Proxies, tiny_model: Path) -> None:
    proxy = proxies()
    with pytest.raises(LoadCancelled):
        proxy.load(params(tiny_model), lambda f: False)
    proxies.note(proxy)
    assert proxy.model_info is None
    assert proxy.load(params(tiny_model)).n_ctx == 1024


def test_the_planner_dry_run_in_the_engine_process_measures_what_it_measures_here(
    proxies: Proxies, tiny_model: Path
) -> None:
    proxy = proxies()
    there = proxy.measure_buffers(params(tiny_model))
    proxies.note(proxy)
    here = measure_buffers(params(tiny_model))
    assert dataclasses.replace(there, seconds=0.0) == dataclasses.replace(here, seconds=0.0)
    assert there.model_bytes > 0


def test_the_speed_probe_runs_in_the_engine_process(proxies: Proxies) -> None:
    """The forecast's llama.cpp figures are measured in the engine process (the window never
    imports llama_cpp); six positive figures (no timing is asserted: the machine is shared)."""
    proxy = proxies()
    figures = proxy.measure_speeds(1)
    proxies.note(proxy)
    assert len(figures) == 6
    assert all(f > 0 for f in figures)


def test_a_killed_engine_mid_answer_is_an_error_and_the_next_load_works(
    proxies: Proxies, tiny_model: Path
) -> None:
    proxy = proxies()
    proxy.load(params(tiny_model, n_ctx=8192))
    first = proxies.note(proxy)
    pieces: list[str] = []
    with pytest.raises(EngineCrashedError) as caught:
        read_signalling(proxy, signal.SIGKILL, pieces)
    assert caught.value.message.startswith("The model engine stopped unexpectedly while answering")
    assert "SIGKILL" in caught.value.detail
    assert pieces  # what came before the kill reached the caller
    assert proxy.model_info is None
    assert proxy.pid is None
    proxy.load(params(tiny_model))
    assert proxies.note(proxy) != first
    assert answer(proxy)


def test_a_killed_engine_while_loading_says_so(proxies: Proxies, tiny_model: Path) -> None:
    proxy = proxies()

    def kill_on_first_step(_fraction: float) -> bool:
        os.kill(proxies.note(proxy), signal.SIGKILL)
        return True

    damaged = r"while loading tiny-llama4\.gguf — the file may be damaged"
    with pytest.raises(EngineCrashedError, match=damaged):
        proxy.load(params(tiny_model), kill_on_first_step)
    proxy.load(params(tiny_model))
    proxies.note(proxy)
    assert answer(proxy)


def test_a_model_that_aborts_llama_cpp_is_an_error_with_its_log(
    proxies: Proxies, tiny_model: Path, aborting_model: Path
) -> None:
    proxy = proxies()
    proxy.load(params(aborting_model))  # llama.cpp loads it; the abort comes with the first graph
    proxies.note(proxy)
    with pytest.raises(EngineCrashedError) as caught:
        answer(proxy)
    assert "while answering" in caught.value.message
    assert "GGML_ASSERT(f_attn_temp_scale != 0.0f)" in caught.value.detail
    assert "SIGABRT" in caught.value.detail
    proxy.load(params(tiny_model))
    proxies.note(proxy)
    assert answer(proxy)


def test_stop_returns_from_a_stopped_engine_and_the_watchdog_reports_it(
    proxies: Proxies, tiny_model: Path
) -> None:
    proxy = proxies(watchdog_s=1.5)
    proxy.load(params(tiny_model, n_ctx=8192))
    pid = proxies.note(proxy)
    cancel = threading.Event()
    pieces = []
    for piece in proxy.stream_chat([ChatMessage.user("Tell me more.")], LONG, cancel):
        if not pieces:
            os.kill(pid, signal.SIGSTOP)  # hangs: no tokens, no heartbeat
            cancel.set()  # Stop: the stream ends although the engine cannot hear it
        pieces.append(piece)
    assert proxy.last_stats.finish_reason == "cancelled"
    with pytest.raises(EngineHungError, match="stopped responding"):
        proxy.count_tokens("the next request")
    assert proxy.pid is None
    proxy.load(params(tiny_model))
    proxies.note(proxy)
    assert answer(proxy)


def test_a_hung_engine_mid_answer_is_reported_by_the_watchdog(proxies: Proxies, tiny_model: Path) -> None:
    proxy = proxies(watchdog_s=1.5)
    proxy.load(params(tiny_model, n_ctx=8192))
    pid = proxies.note(proxy)
    pieces: list[str] = []
    with pytest.raises(EngineHungError, match="while answering"):
        read_signalling(proxy, signal.SIGSTOP, pieces)
    assert pieces
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # killed and reaped by the proxy


def test_a_cancelled_answer_ends_and_the_next_one_starts_clean(proxies: Proxies, tiny_model: Path) -> None:
    proxy = proxies()
    proxy.load(params(tiny_model, n_ctx=8192))
    proxies.note(proxy)
    cancel = threading.Event()
    for _piece in proxy.stream_chat([ChatMessage.user("Tell me more.")], LONG, cancel):
        cancel.set()
    assert proxy.last_stats.finish_reason == "cancelled"
    assert answer(proxy) == answer(proxy)  # greedy: the cancelled run left nothing behind
    assert proxy.last_stats.finish_reason == "length"


def test_a_call_that_makes_no_progress_is_reported_with_the_engines_stacks(
    proxies: Proxies, tiny_model: Path
) -> None:
    proxy = proxies()
    proxy.load(params(tiny_model))
    proxy.stall_s = 0.3  # the heartbeat goes on; the reply does not come in time
    pid = proxies.note(proxy)
    with pytest.raises(EngineHungError, match="no progress") as caught:
        proxy.count_tokens("many words " * 3_000_000)  # seconds of tokenizing, one reply at the end
    assert "count_tokens" in caught.value.detail  # the engine's Python stack, dumped into its log
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_kills_at_random_moments_of_answers_never_reach_this_process(
    proxies: Proxies, tiny_model: Path
) -> None:
    proxy = proxies()
    chooser = random.Random(17)
    for _ in range(10):
        proxy.load(params(tiny_model, n_ctx=8192))
        pid = proxies.note(proxy)
        kill_at = chooser.randint(1, 12)  # after this many pieces
        pieces: list[str] = []
        with pytest.raises(EngineCrashedError, match="while answering"):
            read_killing_after(proxy, pid, kill_at, pieces)
        assert len(pieces) >= kill_at
    proxy.load(params(tiny_model))
    proxies.note(proxy)
    assert answer(proxy)


def read_killing_after(proxy: EngineProxy, pid: int, kill_at: int, pieces: list[str]) -> None:
    for piece in proxy.stream_chat([ChatMessage.user("Tell me more.")], LONG, threading.Event()):
        pieces.append(piece)
        if len(pieces) == kill_at:
            os.kill(pid, signal.SIGKILL)


ORPHAN_PARENT = """
import os, signal, sys, threading
from pathlib import Path
from app.core.engine.process import EngineProxy
from app.core.types import ChatMessage, LoadParams, SamplingParams
if __name__ == "__main__":
    proxy = EngineProxy()
    proxy.load(LoadParams(Path(sys.argv[1]), n_ctx=8192, n_threads=1))
    print(proxy.pid, flush=True)
    sampling = SamplingParams(max_tokens=8000)
    for _piece in proxy.stream_chat([ChatMessage.user("go")], sampling, threading.Event()):
        os.kill(os.getpid(), signal.SIGKILL)  # the window's process dies mid-answer
"""


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_the_engine_process_ends_when_the_window_process_is_killed(tiny_model: Path, tmp_path: Path) -> None:
    script = tmp_path / "parent.py"
    script.write_text(ORPHAN_PARENT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run(
        [sys.executable, str(script), str(tiny_model)], capture_output=True, text=True, env=env, check=False
    )
    assert done.returncode == -signal.SIGKILL
    child = int(done.stdout.split()[0])
    try:
        for _ in range(300):  # it notices the broken pipe at its next piece
            if not running(child):
                break
            threading.Event().wait(0.1)
        assert not running(child)
    finally:
        if running(child):  # only then: a gone pid may already belong to someone else
            os.kill(child, signal.SIGKILL)
