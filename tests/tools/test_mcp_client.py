"""The real MCP client (the official SDK) against a real stdio server written with the SDK."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from app.core.mcp_client import McpHub, ToolServerError
from app.core.tools import McpServerConfig

SERVER = Path(__file__).with_name("mcp_note_server.py")


def note_server(notes: Path, name: str = "notes") -> McpServerConfig:
    return McpServerConfig(name, sys.executable, (str(SERVER),), (("NOTES_DIR", str(notes)),))


@pytest.fixture
def hub(tmp_path: Path):
    hub = McpHub(tmp_path / "logs")
    yield hub
    hub.close()


def test_lists_and_calls_tools(hub: McpHub, tmp_path: Path) -> None:
    (tmp_path / "todo.txt").write_text("buy milk", encoding="utf-8")
    tools = hub.start(note_server(tmp_path))
    assert [t.name for t in tools] == ["add", "read_note", "big", "crash"]
    assert tools[0].input_schema["required"] == ["a", "b"]
    assert hub.call("notes", "add", {"a": 2, "b": 3}).text == "5"
    assert hub.call("notes", "read_note", {"name": "todo"}).text == "buy milk"
    assert hub.running() == ["notes"]
    hub.stop("notes")
    assert hub.running() == []


def test_a_program_that_does_not_exist_is_a_clear_message(hub: McpHub) -> None:
    with pytest.raises(ToolServerError) as info:
        hub.start(McpServerConfig("ghost", "/nonexistent/mcp-server"))
    assert "could not start" in info.value.message
    assert "ghost" in info.value.message


def test_a_server_that_exits_at_once_shows_its_stderr(hub: McpHub) -> None:
    config = McpServerConfig("broken", sys.executable, ("-c", "import sys; sys.exit('no config file found')"))
    with pytest.raises(ToolServerError) as info:
        hub.start(config)
    assert "could not start" in info.value.message
    assert "no config file found" in info.value.detail


def test_a_server_that_crashes_mid_call(hub: McpHub, tmp_path: Path) -> None:
    hub.start(note_server(tmp_path))
    with pytest.raises(ToolServerError) as info:
        hub.call("notes", "crash", {})
    assert "stopped while running crash" in info.value.message
    assert hub.running() == []
    with pytest.raises(ToolServerError, match="not running"):
        hub.call("notes", "add", {"a": 1, "b": 1})


def test_nothing_starts_before_a_server_is_turned_on(tmp_path: Path) -> None:
    hub = McpHub(tmp_path)
    assert not hub.started
    hub.close()
