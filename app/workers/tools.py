"""ToolsController: the MCP tool servers the user turned on, on the GUI thread.

Servers start (and stop) as Settings → Tools say, on :class:`app.core.mcp_client.McpHub`'s own
thread; nothing is started while no server is turned on. Secret environment values (by name:
``…TOKEN``, ``…KEY``…) are kept in the key store, never in the settings file, logs or exports.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QObject, Signal, Slot

from app.core import tools
from app.core.mcp_client import McpHub, ToolResult, ToolServerError
from app.core.server_keys import ToolSecretStore

if TYPE_CHECKING:
    import concurrent.futures

    from app.config import AppPaths, Settings
    from app.core.tools import McpServerConfig, ToolSpec
    from app.workers.preferences import Notices, Preferences

log = logging.getLogger(__name__)

STARTING, ON, FAILED = "starting", "on", "failed"


class ToolsController(QObject):
    """Signals:
    servers_changed(): a server started, stopped or failed (``status``).
    call_finished(int, object): call id, a ToolResult or a ToolServerError.
    """

    servers_changed = Signal()
    call_finished = Signal(int, object)
    _start_done = Signal(str, object)  # from the hub's thread: server name, its future
    _call_done = Signal(int, object)  # from the hub's thread: call id, its future

    def __init__(
        self, paths: AppPaths, preferences: Preferences, notices: Notices, *, use_keyring: bool = True
    ) -> None:
        super().__init__()
        self._preferences = preferences
        self._notices = notices
        self._keys = ToolSecretStore(paths.data_dir, use_keyring=use_keyring)
        self._hub = McpHub(paths.log_dir)
        self._status: dict[str, tuple[str, str]] = {}  # name -> (state, message)
        self._tools: dict[str, list[ToolSpec]] = {}
        self._closed = False
        self._start_done.connect(self._on_self_start_done)
        self._call_done.connect(self._on_self_call_done)
        preferences.settings_changed.connect(self._on_preferences_settings_changed)
        self._apply(preferences.settings)

    # -- configuration ----------------------------------------------------------------------
    def servers(self) -> list[McpServerConfig]:
        try:
            return tools.parse_mcp_servers(self._preferences.settings.tools_servers)
        except tools.ToolConfigError as exc:
            log.warning("tool servers in the settings: %s", exc.message)
            return []

    def servers_json_with_secrets(self) -> str:
        """The servers' JSON for the Settings editor, secrets filled in."""
        return tools.servers_json([self._with_secrets(s) for s in self.servers()]) if self.servers() else ""

    def settings_for(self, text: str, enabled: tuple[str, ...], base: Settings) -> Settings:
        """``base`` with the servers of ``text`` (secrets moved to the key store) and ``enabled``.
        Raises :class:`app.core.tools.ToolConfigError` for text that cannot be used."""
        servers = tools.parse_mcp_servers(text)
        for server in servers:
            for name, value in server.env:
                if tools.is_secret_name(name) and value != tools.SECRET_PLACEHOLDER:
                    self._keys.set(server.name, name, value)
        names = {s.name for s in servers}
        return base.replace(
            tools_servers=tools.servers_json(servers, hide_secrets=True) if servers else "",
            tools_enabled=tuple(n for n in enabled if n in names),
        )

    def _with_secrets(self, server: McpServerConfig) -> McpServerConfig:
        secrets = {n: self._keys.get(server.name, n) or "" for n in server.secret_names}
        return tools.with_secrets(server, secrets)

    # -- state ------------------------------------------------------------------------------
    def status(self, name: str) -> tuple[str, str]:
        """(``starting`` | ``on`` | ``failed`` | ``off``, message)."""
        return self._status.get(name, ("off", ""))

    def tools(self) -> list[ToolSpec]:
        """The tools of the servers that are on."""
        return [t for name, found in self._tools.items() if self.status(name)[0] == ON for t in found]

    def find(self, name: str) -> ToolSpec | None:
        return next((t for t in self.tools() if t.name == name), None)

    def always_allowed(self, tool: ToolSpec) -> bool:
        return tool.key in self._preferences.settings.tools_always_allowed

    def allow_always(self, tool: ToolSpec) -> None:
        s = self._preferences.settings
        if tool.key not in s.tools_always_allowed:
            self._preferences.update(s.replace(tools_always_allowed=(*s.tools_always_allowed, tool.key)))

    @property
    def hub(self) -> McpHub:
        return self._hub

    # -- running ----------------------------------------------------------------------------
    def _apply(self, settings: Settings) -> None:
        if self._closed:
            return
        wanted = {s.name: s for s in self.servers() if s.name in settings.tools_enabled}
        for name in list(self._status):
            if name not in wanted:
                self._status.pop(name, None)
                self._tools.pop(name, None)
                self._hub.stop(name)
                log.info("tool server %s turned off", name)
        for name, server in wanted.items():
            if name in self._status and self._status[name][0] != FAILED:
                continue
            self.start(server)
        self.servers_changed.emit()

    def start(self, server: McpServerConfig) -> None:
        """(Re)start ``server``; ``servers_changed`` tells when it is on or failed."""
        self._status[server.name] = (STARTING, "")
        future = self._hub.start_async(self._with_secrets(server))
        name = server.name
        future.add_done_callback(lambda f: self._start_done.emit(name, f))

    def call(self, call_id: int, server: str, tool: str, arguments: dict[str, Any]) -> None:
        """Run a tool the user approved; ``call_finished(call_id, …)`` gives the outcome."""
        log.info("calling tool %s/%s", server, tool)  # never its arguments: they may be private
        future = self._hub.call_async(server, tool, arguments)
        future.add_done_callback(lambda f: self._call_done.emit(call_id, f))

    def shutdown(self) -> None:
        self._closed = True
        self._hub.close()

    @Slot(str, object)
    def _on_self_start_done(self, name: str, future: concurrent.futures.Future[list[ToolSpec]]) -> None:
        if self._closed or name not in self._status:
            return
        try:
            found = future.result()
        except ToolServerError as exc:
            self._status[name] = (FAILED, exc.message)
            self._notices.error_occurred.emit(exc.message + (f"\n\n{exc.detail}" if exc.detail else ""))
        except Exception as exc:  # noqa: BLE001 - any failure is the server's, said to the user
            self._status[name] = (FAILED, str(exc))
            self._notices.error_occurred.emit(f"The tool server {name!r} could not start: {exc}")
        else:
            self._status[name] = (ON, f"{len(found)} tools")
            self._tools[name] = found
        self.servers_changed.emit()

    @Slot(int, object)
    def _on_self_call_done(self, call_id: int, future: concurrent.futures.Future[ToolResult]) -> None:
        try:
            outcome: ToolResult | ToolServerError = future.result()
        except ToolServerError as exc:
            outcome = exc
        except Exception as exc:  # noqa: BLE001 - reported as the call's failure
            outcome = ToolServerError(str(exc) or type(exc).__name__)
        if isinstance(outcome, ToolServerError):
            for name in list(self._status):
                if name not in self._hub.running() and self._status[name][0] == ON:
                    self._status[name] = (FAILED, outcome.message)  # it died: turn it on again to restart
                    self.servers_changed.emit()
        self.call_finished.emit(call_id, outcome)

    @Slot(object, object)
    def _on_preferences_settings_changed(self, old: Settings, new: Settings) -> None:
        if (old.tools_servers, old.tools_enabled) != (new.tools_servers, new.tools_enabled):
            self._apply(new)
