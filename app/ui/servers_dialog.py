"""Servers…: use a model served by another program (llama-server, vLLM, Ollama, LM Studio,
llama-cpp-python's server) on this computer or another one."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from app.core.engine.remote import ServerConfig, ServerIdentity, is_private_host, parse_url
from app.workers.servers import ServerProber

if TYPE_CHECKING:
    from app.core.server_keys import ServerKeyStore

log = logging.getLogger(__name__)

SETTINGS_KEY = "server"  # Settings.extra: the last server (never its key)
INTRO = (
    "Chat with a model that runs on another program or computer: any OpenAI-compatible server "
    "(llama-server, vLLM, Ollama, LM Studio, llama-cpp-python's server). Your documents, pictures, "
    "history and search stay on this computer; each turn's messages are sent to the server."
)
PLAIN_HTTP_WARNING = (
    "This address is outside this computer and your private network: over plain http:// your "
    "messages and the API key travel unencrypted. Prefer https://."
)


class ServersDialog(QDialog):
    """URL, API key, model, context size, CA file; Test says what the server is; Connect accepts.

    The key is kept in the system keyring (or a private file, like the Hub token) by ``keys``.
    """

    def __init__(
        self, keys: ServerKeyStore, saved: dict[str, Any] | None = None, parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle("Servers")
        self.setObjectName("serversDialog")
        self._keys = keys
        self._prober = ServerProber(self)
        self._prober.probed.connect(self._on_prober_probed)
        self._prober.probe_failed.connect(self._on_prober_probe_failed)
        self._request = 0
        self.identity: ServerIdentity | None = None
        self._build()
        self._fill(saved or {})

    def _build(self) -> None:
        layout = QVBoxLayout(self)
        intro = QLabel(INTRO)
        intro.setWordWrap(True)
        layout.addWidget(intro)
        form = QFormLayout()
        self.url_edit = QLineEdit()
        self.url_edit.setPlaceholderText("http://workstation.local:8080")
        self.url_edit.textChanged.connect(self._on_url_edit_text_changed)
        self.key_edit = QLineEdit()
        self.key_edit.setEchoMode(QLineEdit.EchoMode.Password)
        self.key_edit.setPlaceholderText("optional")
        self.model_combo = QComboBox()
        self.model_combo.setEditable(True)
        self.model_combo.setToolTip("The server's models (Test fills the list); empty: its first")
        self.ctx_spin = QSpinBox()
        self.ctx_spin.setRange(0, 10_485_760)
        self.ctx_spin.setSingleStep(1024)
        self.ctx_spin.setSpecialValueText("as the server says")
        self.ctx_spin.setToolTip(
            "The server's context size in tokens. Servers that do not report it (llama-cpp-python's) "
            "are assumed to have 4,096 unless you set it here."
        )
        ca_row = QHBoxLayout()
        self.ca_edit = QLineEdit()
        self.ca_edit.setPlaceholderText("the system's certificates")
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._on_browse_clicked)
        ca_row.addWidget(self.ca_edit, 1)
        ca_row.addWidget(browse)
        form.addRow("Server address:", self.url_edit)
        form.addRow("API key:", self.key_edit)
        form.addRow("Model:", self.model_combo)
        form.addRow("Context size:", self.ctx_spin)
        form.addRow("CA certificate:", ca_row)
        layout.addLayout(form)
        self.warning_label = QLabel(PLAIN_HTTP_WARNING)
        self.warning_label.setObjectName("serverWarning")
        self.warning_label.setWordWrap(True)
        self.plain_http_check = QCheckBox("Allow plain HTTP to this address anyway")
        layout.addWidget(self.warning_label)
        layout.addWidget(self.plain_http_check)
        test_row = QHBoxLayout()
        self.test_button = QPushButton("Test")
        self.test_button.clicked.connect(self._on_test_button_clicked)
        test_row.addWidget(self.test_button)
        test_row.addStretch(1)
        layout.addLayout(test_row)
        self.result_label = QLabel()
        self.result_label.setObjectName("serverResult")
        self.result_label.setWordWrap(True)
        layout.addWidget(self.result_label)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Cancel)
        self.connect_button = self.buttons.addButton("Connect", QDialogButtonBox.ButtonRole.AcceptRole)
        self.buttons.accepted.connect(self._on_buttons_accepted)
        self.buttons.rejected.connect(self.reject)
        layout.addWidget(self.buttons)
        self.resize(560, self.sizeHint().height())

    def _fill(self, saved: dict[str, Any]) -> None:
        url = str(saved.get("url", ""))
        self.url_edit.setText(url)
        if saved.get("model"):
            self.model_combo.setEditText(str(saved["model"]))
        self.ctx_spin.setValue(int(saved.get("n_ctx", 0) or 0))
        self.ca_edit.setText(str(saved.get("ca_file", "") or ""))
        self.plain_http_check.setChecked(bool(saved.get("allow_plain_http", False)))
        if url:
            self.key_edit.setText(self._keys.get(url) or "")
        self._on_url_edit_text_changed(url)

    # -- public -----------------------------------------------------------------------------
    def config(self) -> ServerConfig:
        """The server as entered (ValueError with a sentence when the address is not one)."""
        url = self.url_edit.text().strip()
        if not url:
            raise ValueError("Enter the server's address, for example http://workstation.local:8080.")
        ca = self.ca_edit.text().strip()
        config = ServerConfig(
            url,
            api_key=self.key_edit.text().strip(),
            model=self.model_combo.currentText().strip(),
            ca_file=Path(ca).expanduser() if ca else None,
            allow_plain_http=self.plain_http_check.isChecked(),
            n_ctx=self.ctx_spin.value(),
        )
        _ = config.address
        return config

    def saved(self) -> dict[str, Any]:
        """What Settings keeps of this server (never the key)."""
        config = self.config()
        return {
            "url": config.url,
            "model": config.model,
            "n_ctx": config.n_ctx,
            "ca_file": str(config.ca_file or ""),
            "allow_plain_http": config.allow_plain_http,
        }

    def test(self) -> None:
        try:
            config = self.config()
        except ValueError as exc:
            self._show_result(str(exc), error=True)
            return
        self.identity = None
        self._request = self._prober.probe(config)
        self.test_button.setEnabled(False)
        self._show_result(f"Testing {config.address}…")

    # -- slots --------------------------------------------------------------------------------
    def _on_url_edit_text_changed(self, text: str) -> None:
        try:
            parts = parse_url(text) if text.strip() else None
        except ValueError:
            parts = None
        insecure = (
            parts is not None
            and parts.scheme == "http"
            and not is_private_host(parts.hostname or "", resolve=False)
        )
        self.warning_label.setVisible(insecure)
        self.plain_http_check.setVisible(insecure)

    def _on_browse_clicked(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "CA certificate", "", "Certificates (*.pem *.crt *.cer);;All files (*)"
        )
        if path:
            self.ca_edit.setText(path)

    def _on_test_button_clicked(self) -> None:
        self.test()

    def _on_prober_probed(self, request_id: int, identity: ServerIdentity) -> None:
        if request_id != self._request:
            return
        self.test_button.setEnabled(True)
        self.identity = identity
        chosen = self.model_combo.currentText().strip()
        self.model_combo.clear()
        self.model_combo.addItems(list(identity.models))
        self.model_combo.setCurrentText(chosen if chosen in identity.models else identity.model)
        self._show_result(identity.describe(self.config().address))

    def _on_prober_probe_failed(self, request_id: int, message: str, detail: str) -> None:
        if request_id != self._request:
            return
        self.test_button.setEnabled(True)
        log.info("server test failed: %s (%s)", message, detail)
        self._show_result(message, error=True)

    def _on_buttons_accepted(self) -> None:
        try:
            config = self.config()
        except ValueError as exc:
            self._show_result(str(exc), error=True)
            return
        self._keys.set(config.url, config.api_key)
        self.accept()

    def _show_result(self, text: str, *, error: bool = False) -> None:
        self.result_label.setText(text)
        self.result_label.setProperty("error", error)

    def done(self, result: int) -> None:
        self._prober.shutdown()
        super().done(result)
