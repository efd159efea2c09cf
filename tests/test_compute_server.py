"""``scout-chat --compute-server`` (llama.cpp's rpc-server, started by the app), its refusal of a
public address, ``--check``'s Machines section, and Settings → Machines."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING

import pytest

from app.compute_server import UNAUTHENTICATED_FLAG, address_kind
from app.config import Settings
from app.core.engine.llama_tools import find_llama_tools, why_missing
from app.core.engine.process import EngineProxy
from app.core.types import ChatMessage, LoadParams, SamplingParams
from app.diagnostics import machine_lines
from tests.remote_servers import MemoryLimit, _accepts, free_port, memory_shim, rpc_server

if TYPE_CHECKING:
    from pathlib import Path

    from pytestqt.qtbot import QtBot

TOOLS = find_llama_tools()
needs_tools = pytest.mark.skipif(TOOLS is None, reason=why_missing())


def scout(*args: str, data_dir: Path) -> list[str]:
    return [sys.executable, "-m", "app", "--data-dir", str(data_dir), *args]


@pytest.mark.parametrize(
    ("host", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("localhost", "loopback"),
        ("192.168.1.20", "private"),
        ("10.0.0.5", "private"),
        ("box.local", "private"),
        ("8.8.8.8", "public"),
        ("0.0.0.0", "public"),  # every interface
        ("::", "public"),
        ("scout.example.org", "public"),
    ],
)
def test_address_kinds(host: str, kind: str) -> None:
    assert address_kind(host) == kind


@pytest.mark.parametrize("host", ["8.8.8.8", "0.0.0.0"])
def test_a_public_address_is_refused_without_the_explicit_flag(host: str, tmp_path: Path) -> None:
    done = subprocess.run(
        scout("--compute-server", "--host", host, data_dir=tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"Refusing to listen on {host}" in done.stdout
    assert "no authentication and no encryption" in done.stdout
    assert UNAUTHENTICATED_FLAG in done.stdout


@needs_tools
def test_the_compute_server_lends_this_machine_to_an_engine(tiny_model: Path, tmp_path: Path) -> None:
    port = free_port()
    out = tmp_path / "compute-server.out"
    with out.open("wb") as sink:
        server = subprocess.Popen(
            scout("--compute-server", "--port", str(port), "--threads", "1", data_dir=tmp_path / "data"),
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while not _accepts(port):
            assert server.poll() is None, out.read_text()
            assert time.monotonic() < deadline, out.read_text()
            time.sleep(0.1)
        log = tmp_path / "engine.log"
        proxy = EngineProxy(log_path=log)
        try:
            proxy.load(
                LoadParams(
                    tiny_model,
                    n_ctx=512,
                    n_threads=1,
                    n_threads_batch=1,
                    compute_servers=(f"127.0.0.1:{port}",),
                )
            )
            question = [ChatMessage.user("Say hello.")]
            answer = "".join(
                proxy.stream_chat(question, SamplingParams(temperature=0.0, max_tokens=8), threading.Event())
            )
        finally:
            proxy.close()
        assert answer
        assert f"using device RPC0 (127.0.0.1:{port})" in log.read_text()
    finally:
        server.send_signal(signal.SIGINT)
        assert server.wait(30) == 0
    text = out.read_text()
    cache = tmp_path / "data" / "cache" / "llama.cpp" / "rpc"
    assert f"tensor cache: {cache}" in text
    assert f"local cache    : {cache}" in text  # rpc-server's own line: it uses that cache
    assert "WARNING" not in text  # loopback: no warning
    assert not _accepts(port)  # rpc-server ended with the app


@needs_tools
def test_an_address_other_than_127_0_0_1_gets_llama_cpps_warning(tmp_path: Path) -> None:
    """127.0.0.2 (loopback, so allowed without the flag) is not 127.0.0.1: rpc-server warns."""
    port = free_port()
    server = subprocess.Popen(
        scout("--compute-server", "--host", "127.0.0.2", "--port", str(port), data_dir=tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        lines: list[str] = []
        assert server.stdout is not None
        while not any("Never expose the RPC server" in line for line in lines):
            assert time.monotonic() < deadline, "".join(lines)
            line = server.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(30)
        assert server.stdout is not None
        server.stdout.close()


def test_check_lists_the_compute_servers_and_says_which_answer() -> None:
    assert machine_lines(())[-1] == ("Compute servers", "none (Settings → Machines)")
    closed = free_port()
    lines = dict(machine_lines([f"127.0.0.1:{closed}", "http://nope"]))  # no engine process needed
    assert lines[f"Compute server 127.0.0.1:{closed}"].startswith(f"Nothing answers at 127.0.0.1:{closed}")
    assert "is not a compute server address" in lines["Compute server http://nope"]


@needs_tools
def test_check_shows_what_each_compute_server_lends_and_a_sentence_for_one_down(tmp_path: Path) -> None:
    """``--check`` with two real rpc-servers that declare 1 GiB and 4 GiB, and one that is not
    running: each answering one's device with its memory and round trip (asked in a throw-away
    engine process), the one down a sentence, and the check ends normally."""
    from app.config import AppPaths, save_settings

    assert TOOLS is not None
    shim = memory_shim(tmp_path)
    if shim is None:
        pytest.skip("no C compiler to build the memory shim the sized compute servers need")
    paths = AppPaths.under(tmp_path / "data").ensure()
    down = free_port()
    with (
        rpc_server(TOOLS.rpc_server, tmp_path / "rpc-small.log", memory=MemoryLimit(shim, 1024)) as small,
        rpc_server(TOOLS.rpc_server, tmp_path / "rpc-big.log", memory=MemoryLimit(shim, 4096)) as big,
    ):
        servers = (f"127.0.0.1:{small.port}", f"127.0.0.1:{down}", f"127.0.0.1:{big.port}")
        save_settings(paths, Settings(compute_servers=servers))
        done = subprocess.run(
            scout("--check", data_dir=paths.data_dir),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    section = done.stdout.split("== Machines (llama.cpp RPC) ==", 1)[1]
    lines = dict(line.split(": ", 1) for line in section.strip().splitlines())
    small_line = lines[f"Compute server {servers[0]}"]
    big_line = lines[f"Compute server {servers[2]}"]
    assert re.fullmatch(
        r"answers — lends RPC\d+: 1\.1 GB free of 1\.1 GB, round trip \d+\.\d\d ms", small_line
    )
    assert re.fullmatch(r"answers — lends RPC\d+: 4\.3 GB free of 4\.3 GB, round trip \d+\.\d\d ms", big_line)
    assert lines[f"Compute server {servers[1]}"].startswith(
        f"Nothing answers at {servers[1]} (connection refused)"
    )


def test_settings_machines_are_parsed_and_a_bad_line_keeps_the_dialog_open(qtbot: QtBot) -> None:
    from app.ui.settings_dialog import SettingsDialog

    dialog = SettingsDialog(Settings(compute_servers=("192.168.1.20:50052",)))
    qtbot.addWidget(dialog)
    assert dialog.compute_servers.toPlainText() == "192.168.1.20:50052"
    dialog.compute_servers.setPlainText("192.168.1.20:50052\n\nbox.local\n192.168.1.20:50052\n")
    assert dialog.result_settings().compute_servers == ("192.168.1.20:50052", "box.local:50052")
    dialog.compute_servers.setPlainText("box.local\nhttp://box:1")
    dialog.accept()
    assert dialog.result() == 0  # not accepted
    assert "'http://box:1' is not a compute server address" in dialog.compute_servers_note.text()
    assert not dialog.compute_servers_note.isHidden()
