"""MCP stdio clients (the official ``mcp`` SDK) on one thread with an asyncio loop of its own.

:class:`McpHub` starts a server (``start``: spawn, ``initialize``, ``tools/list``), calls its tools
(``call``) and stops them (``stop``, ``close``). Its methods block the calling thread (never call
them on the GUI thread) or return ``concurrent.futures.Future``s (``start_async``, ``call_async``).
Nothing is spawned, and no thread started, before the first ``start``. A server's stderr goes to
``<log_dir>/mcp-<name>.log``; when it fails to start or dies, the error carries that file's end.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import re
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from app.core.errors import UserError
from app.core.tools import McpServerConfig, ToolSpec

if TYPE_CHECKING:
    from pathlib import Path

log = logging.getLogger(__name__)

START_TIMEOUT_S = 30.0  # spawn + initialize + tools/list
CALL_TIMEOUT_S = 120.0
STDERR_TAIL = 2000


class ToolServerError(UserError):
    """A tool server could not start, died, or failed a call (``detail``: its stderr's end)."""


@dataclass(frozen=True)
class ToolResult:
    text: str
    is_error: bool = False


@dataclass
class _Server:
    config: McpServerConfig
    queue: asyncio.Queue[tuple[str, dict[str, Any], concurrent.futures.Future[ToolResult]] | None]
    stderr_path: Path
    tools: list[ToolSpec] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    alive: bool = False


class McpHub:
    """The running MCP servers, by name (thread-safe)."""

    def __init__(self, log_dir: Path) -> None:
        self._log_dir = log_dir
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._servers: dict[str, _Server] = {}
        self._lock = threading.Lock()

    # -- the loop ---------------------------------------------------------------------------
    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                self._thread = threading.Thread(target=loop.run_forever, name="mcp-tools", daemon=True)
                self._thread.start()
                self._loop = loop
            return self._loop

    @property
    def started(self) -> bool:
        """Whether the loop thread exists (False until a server is first started)."""
        return self._thread is not None

    def running(self) -> list[str]:
        return [name for name, s in list(self._servers.items()) if s.alive]

    def tools(self, name: str) -> list[ToolSpec]:
        server = self._servers.get(name)
        return list(server.tools) if server is not None and server.alive else []

    # -- servers ----------------------------------------------------------------------------
    def start_async(self, config: McpServerConfig) -> concurrent.futures.Future[list[ToolSpec]]:
        """Start ``config`` (stopping a server of that name first); the future gives its tools or
        raises :class:`ToolServerError`."""
        loop = self._ensure_loop()
        return asyncio.run_coroutine_threadsafe(self._start(config), loop)

    def start(self, config: McpServerConfig) -> list[ToolSpec]:
        return self.start_async(config).result(START_TIMEOUT_S + 10)

    def call_async(
        self, server: str, tool: str, arguments: dict[str, Any]
    ) -> concurrent.futures.Future[ToolResult]:
        future: concurrent.futures.Future[ToolResult] = concurrent.futures.Future()
        entry = self._servers.get(server)
        if entry is None or not entry.alive or self._loop is None:
            future.set_exception(ToolServerError(f"The tool server {server!r} is not running."))
            return future
        self._loop.call_soon_threadsafe(entry.queue.put_nowait, (tool, arguments, future))
        return future

    def call(self, server: str, tool: str, arguments: dict[str, Any]) -> ToolResult:
        return self.call_async(server, tool, arguments).result(CALL_TIMEOUT_S + 10)

    def stop(self, name: str) -> None:
        """Stop the server ``name`` and wait for its process to end (bounded by the SDK)."""
        if self._loop is None or name not in self._servers:
            return
        asyncio.run_coroutine_threadsafe(self._stop(name), self._loop).result(15)

    def close(self) -> None:
        """Stop every server and the loop thread (idempotent)."""
        if self._loop is None:
            return
        for name in list(self._servers):
            try:
                self.stop(name)
            except Exception:  # shutting down: log and go on
                log.exception("stopping the tool server %s", name)
        loop, thread = self._loop, self._thread
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(5)
        loop.close()
        self._loop, self._thread = None, None

    # -- on the loop ------------------------------------------------------------------------
    async def _start(self, config: McpServerConfig) -> list[ToolSpec]:
        await self._stop(config.name)
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", config.name)[:60]
        self._log_dir.mkdir(parents=True, exist_ok=True)
        server = _Server(config, asyncio.Queue(), self._log_dir / f"mcp-{safe}.log")
        self._servers[config.name] = server
        ready: asyncio.Future[list[ToolSpec]] = asyncio.get_running_loop().create_future()
        server.task = asyncio.create_task(self._serve(server, ready), name=f"mcp-{safe}")
        try:
            return await asyncio.wait_for(asyncio.shield(ready), START_TIMEOUT_S)
        except asyncio.TimeoutError:
            await self._stop(config.name)
            raise ToolServerError(
                f"The tool server {config.name!r} did not answer within {START_TIMEOUT_S:.0f} s.",
                _tail(server.stderr_path),
            ) from None

    async def _stop(self, name: str) -> None:
        server = self._servers.pop(name, None)
        if server is None or server.task is None:
            return
        server.queue.put_nowait(None)
        try:
            await asyncio.wait_for(asyncio.shield(server.task), 10)
        except asyncio.TimeoutError:
            server.task.cancel()
            await asyncio.gather(server.task, return_exceptions=True)

    async def _serve(self, server: _Server, ready: asyncio.Future[list[ToolSpec]]) -> None:
        from mcp.client.session import ClientSession  # the SDK is imported only when tools are used
        from mcp.client.stdio import StdioServerParameters, stdio_client

        config = server.config
        params = StdioServerParameters(
            command=config.command, args=list(config.args), env=config.env_dict or None
        )
        log.info("starting the tool server %s: %s", config.name, config.describe())
        try:
            with server.stderr_path.open("w", encoding="utf-8", errors="replace") as errlog:
                async with (
                    stdio_client(params, errlog=errlog) as (read, write),
                    ClientSession(read, write) as session,
                ):
                    await session.initialize()
                    listed = await session.list_tools()
                    server.tools = [
                        ToolSpec(config.name, t.name, t.description or "", dict(t.input_schema))
                        for t in listed.tools
                    ]
                    server.alive = True
                    ready.set_result(list(server.tools))
                    await self._serve_calls(server, session)
        except BaseException as exc:  # the SDK raises exception groups; reported, then re-raised if cancelled
            server.alive = False
            message = _describe(exc)
            log.warning("tool server %s ended: %s", config.name, message)
            if not ready.done():
                ready.set_exception(
                    ToolServerError(
                        f"The tool server {config.name!r} could not start: {message}",
                        _tail(server.stderr_path),
                    )
                )
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            server.alive = False
            _fail_waiting(server, f"The tool server {config.name!r} stopped.")

    async def _serve_calls(self, server: _Server, session: Any) -> None:
        from mcp.shared.exceptions import MCPError

        while True:
            item = await server.queue.get()
            if item is None:
                return
            tool, arguments, future = item
            try:
                result = await session.call_tool(tool, arguments, read_timeout_seconds=CALL_TIMEOUT_S)
            except MCPError as exc:
                future.set_exception(self._died_or_failed(server, tool, exc))
                if "closed" in str(exc).lower():
                    server.alive = False
                    return
                continue
            except Exception as exc:  # noqa: BLE001 - reported to the caller
                future.set_exception(self._died_or_failed(server, tool, exc))
                continue
            future.set_result(ToolResult(_result_text(result), bool(result.is_error)))

    def _died_or_failed(self, server: _Server, tool: str, exc: BaseException) -> ToolServerError:
        name = server.config.name
        if "closed" in str(exc).lower():
            return ToolServerError(
                f"The tool server {name!r} stopped while running {tool}.", _tail(server.stderr_path)
            )
        return ToolServerError(f"The tool server {name!r} could not run {tool}: {_describe(exc)}")


def _result_text(result: Any) -> str:
    """A call result's content as text (text parts; other kinds named)."""
    parts = []
    for block in result.content:
        kind = getattr(block, "type", "")
        if kind == "text":
            parts.append(block.text)
        else:
            parts.append(f"[{kind or 'unknown'} content not shown]")
    if not parts and result.structured_content is not None:
        import json

        parts.append(json.dumps(result.structured_content, ensure_ascii=False))
    return "\n".join(parts)


def _describe(exc: BaseException) -> str:
    """The innermost useful message of an exception (group)."""
    while getattr(exc, "exceptions", None):  # an ExceptionGroup (anyio's task groups)
        exc = exc.exceptions[0]  # type: ignore[attr-defined]
    if isinstance(exc, FileNotFoundError):
        return f"the program {exc.filename or ''!s} was not found".replace("  ", " ")
    text = str(exc).strip()
    return text or type(exc).__name__


def _tail(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return text[-STDERR_TAIL:].strip()


def _fail_waiting(server: _Server, message: str) -> None:
    while not server.queue.empty():
        item = server.queue.get_nowait()
        if item is not None and not item[2].done():
            item[2].set_exception(ToolServerError(message, _tail(server.stderr_path)))
