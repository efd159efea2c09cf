"""Settings → Tools: the MCP servers (the ``mcpServers`` JSON users paste from Claude Desktop or
LM Studio), each turned on with its box; its state and tools once it started."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from PySide6.QtCore import Qt
from PySide6.QtGui import QFontDatabase
from PySide6.QtWidgets import QLabel, QListWidget, QListWidgetItem, QPlainTextEdit, QVBoxLayout, QWidget

from app.core import tools

if TYPE_CHECKING:
    from app.config import Settings
    from app.core.tools import ToolSpec

PLACEHOLDER = (
    '{"mcpServers": {\n  "time": {"command": "uvx", "args": ["mcp-server-time"]}\n}}\n\n'
    "Servers run on this computer only when you turn them on below; every tool call asks you first."
)


class ToolServers(Protocol):
    """What the section needs of the ToolsController."""

    def servers_json_with_secrets(self) -> str: ...

    def status(self, name: str) -> tuple[str, str]: ...

    def tools(self) -> list[ToolSpec]: ...

    def settings_for(self, text: str, enabled: tuple[str, ...], base: Settings) -> Settings: ...


class ToolsSection(QWidget):
    """The servers' JSON, a checkable list of the servers in it, and the error of bad JSON."""

    def __init__(
        self, settings: Settings, servers: ToolServers | None, parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self._servers = servers
        self._enabled = set(settings.tools_enabled)
        self.editor = QPlainTextEdit(servers.servers_json_with_secrets() if servers is not None else "")
        self.editor.setPlaceholderText(PLACEHOLDER)
        self.editor.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.editor.setFixedHeight(120)
        self.editor.setEnabled(servers is not None)
        self.list = QListWidget()
        self.list.setFixedHeight(80)
        self.list.itemChanged.connect(self._on_list_item_changed)
        self.error = QLabel()
        self.error.setObjectName("settingsNotice")
        self.error.setWordWrap(True)
        self.error.setVisible(False)
        note = QLabel(
            "Values of variables named like …KEY, …TOKEN or …PASSWORD are kept in the system keyring, "
            "never in the settings file, logs or exports."
        )
        note.setObjectName("emptyText")
        note.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.editor)
        layout.addWidget(self.error)
        layout.addWidget(self.list)
        layout.addWidget(note)
        self.editor.textChanged.connect(self._on_editor_text_changed)
        self._on_editor_text_changed()

    def _on_editor_text_changed(self) -> None:
        try:
            found = tools.parse_mcp_servers(self.editor.toPlainText())
        except tools.ToolConfigError as exc:
            self.error.setText(exc.message)
            self.error.setVisible(True)
            return
        self.error.setVisible(False)
        self.list.blockSignals(True)
        self.list.clear()
        offered = self._servers.tools() if self._servers is not None else []
        for server in found:
            state, message = self._servers.status(server.name) if self._servers is not None else ("off", "")
            names = ", ".join(t.name for t in offered if t.server == server.name)
            detail = {"on": f"on — {names or message}", "failed": f"failed: {message}"}.get(state, state)
            item = QListWidgetItem(f"{server.name}  ({server.describe()})  {detail}")
            item.setData(Qt.ItemDataRole.UserRole, server.name)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            on = server.name in self._enabled
            item.setCheckState(Qt.CheckState.Checked if on else Qt.CheckState.Unchecked)
            self.list.addItem(item)
        self.list.blockSignals(False)

    def _on_list_item_changed(self, item: QListWidgetItem) -> None:
        name = str(item.data(Qt.ItemDataRole.UserRole))
        if item.checkState() == Qt.CheckState.Checked:
            self._enabled.add(name)
        else:
            self._enabled.discard(name)

    def enabled(self) -> tuple[str, ...]:
        return tuple(sorted(self._enabled))

    def apply(self, base: Settings) -> Settings:
        """``base`` with these servers; raises :class:`app.core.tools.ToolConfigError`."""
        if self._servers is None:
            return base
        return self._servers.settings_for(self.editor.toPlainText(), self.enabled(), base)
