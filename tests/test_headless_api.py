"""``scout-chat --api-server``: the API server without a window, as a real process on the tiny
model, used with the official ``openai`` client and ``curl``, stopped with SIGTERM and SIGINT."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import openai
import pytest

from app.config import AppPaths
from app.headless import ALLOW_FLAG

if TYPE_CHECKING:
    from collections.abc import Iterator

ROOT = Path(__file__).resolve().parent.parent
KEY_ENV = "SCOUT_TEST_API_KEY"
SCOUT = (sys.executable, "-m", "app")
READY = re.compile(r"listening on http://(127\.0\.0\.1):(\d+)/v1")


class Headless:
    """A running ``scout-chat --api-server`` and what it printed."""

    def __init__(
        self, args: list[str], data_dir: Path, env: dict[str, str] | None = None, name: str = "server"
    ) -> None:
        self.out = data_dir.parent / f"{name}.out"
        self.data_dir = data_dir
        with self.out.open("wb") as sink:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "app", "--data-dir", str(data_dir), "--api-server", *args],
                stdout=sink,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env={**os.environ, **(env or {})},
            )

    @property
    def text(self) -> str:
        return self.out.read_text(encoding="utf-8", errors="replace")

    def wait_ready(self) -> tuple[str, int]:
        deadline = time.monotonic() + 180
        while (found := READY.search(self.text)) is None:
            assert self.process.poll() is None, f"it ended ({self.process.returncode}):\n{self.text}"
            assert time.monotonic() < deadline, f"not ready in 180 s:\n{self.text}"
            time.sleep(0.1)
        return found.group(1), int(found.group(2))

    def engine_pids(self) -> list[int]:
        """The server's child processes (the engine process among them), from every thread."""
        tasks = Path(f"/proc/{self.process.pid}/task")
        return [int(p) for t in tasks.iterdir() for p in (t / "children").read_text().split()]

    def stop(self, number: signal.Signals) -> int:
        self.process.send_signal(number)
        return self.process.wait(60)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)


@pytest.fixture
def headless(tmp_path: Path) -> Iterator[list[Headless]]:
    started: list[Headless] = []
    yield started
    for server in started:
        server.kill()


def gone(pid: int) -> bool:
    """True once ``pid`` no longer runs (or is a zombie waiting for a parent that ended)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return "State:\tZ" in status


def refused(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def test_headless_server_answers_the_openai_client_and_curl_and_stops_on_sigterm(
    tiny_model: Path, tmp_path: Path, headless: list[Headless]
) -> None:
    key = "sk-test-headless-0123456789"
    server = Headless(
        ["--model", str(tiny_model), "--port", "0", "--threads", "1", "--api-key-env", KEY_ENV],
        tmp_path / "data",
        {KEY_ENV: key},
    )
    headless.append(server)
    host, port = server.wait_ready()
    with openai.OpenAI(base_url=f"http://{host}:{port}/v1", api_key=key, max_retries=0, timeout=60) as api:
        assert [m.id for m in api.models.list()] == ["tiny-llama4"]
        answer = api.chat.completions.create(
            model="tiny-llama4", messages=[{"role": "user", "content": "Hello"}], max_tokens=6
        )
        assert answer.choices[0].message.content
        assert answer.usage is not None
        assert 0 < answer.usage.completion_tokens <= 6
    with (
        openai.OpenAI(base_url=f"http://{host}:{port}/v1", api_key="sk-wrong", max_retries=0) as api,
        pytest.raises(openai.AuthenticationError),
    ):
        api.models.list()
    curl = shutil.which("curl")
    if curl is not None:
        url = f"http://{host}:{port}/v1/chat/completions"
        body = json.dumps(
            {"model": "tiny-llama4", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        )

        def status(*headers: str) -> str:
            args = [curl, "-sS", "-o", "/dev/null", "-w", "%{http_code}", *headers, "-d", body, url]
            return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False).stdout

        assert status("-H", "Content-Type: application/json") == "401"
        assert status("-H", f"Authorization: Bearer {key}", "-H", "Content-Type: application/json") == "200"

    children = server.engine_pids()
    assert children  # the model runs in the engine process
    assert server.stop(signal.SIGTERM) == 0, server.text
    assert "API server stopped" in server.text
    assert refused(host, port)
    deadline = time.monotonic() + 30
    while not all(gone(pid) for pid in children):
        assert time.monotonic() < deadline, f"engine process(es) still running: {children}"
        time.sleep(0.1)
    assert key not in server.text  # a key given in the environment is never printed
    paths = AppPaths.under(tmp_path / "data")
    log = (paths.log_dir / "scout-chat.log").read_text(encoding="utf-8")
    assert "headless API server ready on" in log
    assert "SIGTERM received" in log
    assert key not in log
    assert not paths.settings_file.exists()  # the run's choices are not the user's settings


def test_without_a_saved_key_one_is_made_printed_once_and_kept(
    tiny_model: Path, tmp_path: Path, headless: list[Headless]
) -> None:
    first = Headless(["--model", str(tiny_model), "--port", "0", "--threads", "1"], tmp_path / "one")
    headless.append(first)
    host, port = first.wait_ready()
    printed = re.findall(r"sk-scout-[A-Za-z0-9_-]+", first.text)
    assert len(printed) == 1
    key = printed[0]
    with openai.OpenAI(base_url=f"http://{host}:{port}/v1", api_key=key, max_retries=0, timeout=60) as api:
        assert [m.id for m in api.models.list()] == ["tiny-llama4"]
    assert first.stop(signal.SIGINT) == 0, first.text  # Ctrl+C
    assert refused(host, port)
    # the next run uses the saved key and does not print it
    second = Headless(
        ["--model", str(tiny_model), "--port", "0", "--threads", "1"], tmp_path / "one", name="second"
    )
    headless.append(second)
    host, port = second.wait_ready()
    assert key not in second.text
    with openai.OpenAI(base_url=f"http://{host}:{port}/v1", api_key=key, max_retries=0, timeout=60) as api:
        assert [m.id for m in api.models.list()] == ["tiny-llama4"]
    assert second.stop(signal.SIGTERM) == 0, second.text


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20"])
def test_an_address_other_computers_reach_is_refused_without_consent(
    host: str, tiny_model: Path, tmp_path: Path
) -> None:
    done = subprocess.run(
        [*SCOUT, "--data-dir", str(tmp_path), "--api-server", "--model", str(tiny_model), "--host", host],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"Refusing to listen on {host}" in done.stdout
    assert "only the key protects the model" in done.stdout
    assert ALLOW_FLAG in done.stdout


def test_a_missing_model_or_key_variable_is_a_sentence(tiny_model: Path, tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "app", "--data-dir", str(tmp_path), "--api-server", *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            cwd=ROOT,
            env={k: v for k, v in os.environ.items() if k != KEY_ENV},
        )

    no_model = run()
    assert (no_model.returncode, no_model.stdout.strip()) == (
        2,
        "--api-server needs a model: --model PATH (a GGUF file, the first part of a split model).",
    )
    no_var = run("--model", str(tiny_model), "--api-key-env", KEY_ENV)
    assert no_var.returncode == 2
    assert f"The environment variable {KEY_ENV} is not set" in no_var.stdout
