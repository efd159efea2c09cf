"""The card under an answer that calls a tool: which tool, on which server, with which arguments
(verbatim, before anything runs), the approval buttons, then the result (collapsible)."""

from __future__ import annotations

import json
from typing import Any

from PySide6.QtCore import Signal
from PySide6.QtGui import QFontDatabase
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app.core import tools

MAX_SHOWN_LINES = 12


class ToolCallCard(QFrame):
    """Signals:
    decided(int, str): answer message id, ``once`` | ``always`` | ``deny``.
    """

    decided = Signal(int, str)

    def __init__(self, message_id: int, record: dict[str, Any], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.message_id = message_id
        self.setObjectName("toolCallCard")
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.setStyleSheet(
            "#toolCallCard { border: 1px solid palette(mid); border-radius: 8px; background: palette(base); }"
        )
        mono = QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont)

        self.title = QLabel()
        self.title.setWordWrap(True)
        self.arguments = QPlainTextEdit()
        self.arguments.setReadOnly(True)
        self.arguments.setFont(mono)
        self.allow_once = QPushButton("Allow once")
        self.allow_always = QPushButton("Always allow this tool")
        self.deny = QPushButton("Deny")
        self.allow_once.setDefault(True)
        self.allow_once.clicked.connect(self._on_allow_once_clicked)
        self.allow_always.clicked.connect(self._on_allow_always_clicked)
        self.deny.clicked.connect(self._on_deny_clicked)
        self.buttons = QWidget()
        row = QHBoxLayout(self.buttons)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.allow_once)
        row.addWidget(self.allow_always)
        row.addStretch(1)
        row.addWidget(self.deny)

        self.state = QLabel()
        self.state.setWordWrap(True)
        self.toggle = QToolButton()
        self.toggle.setCheckable(True)
        self.toggle.setAutoRaise(True)
        self.toggle.toggled.connect(self._on_toggle_toggled)
        self.result = QPlainTextEdit()
        self.result.setReadOnly(True)
        self.result.setFont(mono)
        self.result.setVisible(False)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(12, 10, 12, 10)
        layout.addWidget(self.title)
        layout.addWidget(self.arguments)
        layout.addWidget(self.buttons)
        layout.addWidget(self.state)
        layout.addWidget(self.toggle)
        layout.addWidget(self.result)
        self.set_record(record)

    def set_record(self, record: dict[str, Any]) -> None:
        self.record = record
        name, server = str(record.get("name", "")), str(record.get("server", ""))
        self.title.setText(
            f"Scout wants to use the tool <b>{_esc(name)}</b> of the server <b>{_esc(server)}</b>"
        )
        text = json.dumps(record.get("arguments") or {}, indent=2, ensure_ascii=False, sort_keys=True)
        self.arguments.setPlainText(text)
        _fit_lines(self.arguments, text)
        state = record.get("state", tools.PENDING)
        pending = state == tools.PENDING and not record.get("running")
        self.buttons.setVisible(pending)
        self.allow_once.setEnabled(pending)
        if pending:
            self.state.setText("Nothing runs until you allow it.")
        elif record.get("running"):
            self.state.setText("Running…")
        elif state == tools.DENIED:
            self.state.setText("Denied: the model was told, and answers without it.")
        elif state == tools.FAILED:
            self.state.setText("The call failed; the model was told why.")
        else:
            cut = f" (cut to {tools.RESULT_LIMIT:,} characters)" if record.get("cut") else ""
            self.state.setText(f"Done{cut}.")
        result = str(record.get("result", "")) if state in (tools.DONE, tools.FAILED) else ""
        self.result.setPlainText(result)
        _fit_lines(self.result, result)
        self.toggle.setVisible(bool(result))
        self._on_toggle_toggled(self.toggle.isChecked())

    def _on_toggle_toggled(self, shown: bool) -> None:
        self.toggle.setText("Hide the result" if shown else "Show the result")
        self.result.setVisible(shown and bool(self.result.toPlainText()))

    def _on_allow_once_clicked(self) -> None:
        self.decided.emit(self.message_id, "once")

    def _on_allow_always_clicked(self) -> None:
        self.decided.emit(self.message_id, "always")

    def _on_deny_clicked(self) -> None:
        self.decided.emit(self.message_id, "deny")


def _fit_lines(edit: QPlainTextEdit, text: str) -> None:
    lines = min(MAX_SHOWN_LINES, max(1, text.count("\n") + 1))
    height = edit.fontMetrics().lineSpacing() * lines + 2 * edit.frameWidth() + 10
    edit.setFixedHeight(height)


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
