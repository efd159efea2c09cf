"""A tiny real MCP server on stdio, written with the official SDK, for the tools tests.

Tools: ``add(a, b)``, ``read_note(name)`` (notes from the folder in ``NOTES_DIR``), ``big(n)``
(``n`` characters of text) and ``crash()`` (the process dies mid-call). Run it as
``python -m tests.tools.mcp_note_server`` or by its path.
"""

from __future__ import annotations

import os
from pathlib import Path

from mcp.server.mcpserver import MCPServer

server = MCPServer("notes")


def _logged(name: str) -> None:
    log = os.environ.get("NOTES_CALL_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as out:
            out.write(name + "\n")


@server.tool()
def add(a: float, b: float) -> str:
    """Add two numbers."""
    _logged("add")
    total = a + b
    return str(int(total) if total == int(total) else total)


@server.tool()
def read_note(name: str) -> str:
    """Read the note called ``name``."""
    _logged("read_note")
    folder = Path(os.environ.get("NOTES_DIR", "."))
    path = folder / f"{name}.txt"
    if not path.is_file():
        return f"No note called {name!r}."
    return path.read_text(encoding="utf-8")


@server.tool()
def big(n: int) -> str:
    """Return ``n`` characters of text."""
    _logged("big")
    return ("0123456789" * (n // 10 + 1))[:n]


@server.tool()
def crash() -> str:
    """End the server's process in the middle of the call."""
    _logged("crash")
    os._exit(3)


if __name__ == "__main__":
    server.run("stdio")
