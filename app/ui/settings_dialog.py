"""Settings: system prompt, sampling (Meta's Scout defaults one click away), context size, threads,
documents (how long a document may be to go in whole), the local API server, theme."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from app.config import Settings
from app.core.api_server import EXPOSED_WARNING
from app.core.hardware import physical_cores
from app.core.listen import is_loopback
from app.core.tools import ToolConfigError
from app.ui.tools_settings import ToolServers, ToolsSection

if TYPE_CHECKING:
    from collections.abc import Sequence

    from app.core.planner import Plan
    from app.core.types import ModelInfo

THEMES: Sequence[tuple[str, str]] = (
    ("system", "Follow the system"),
    ("light", "Light"),
    ("dark", "Dark"),
)
SCOUT_DEFAULTS = Settings()  # temperature 0.6, top_p 0.9, min_p 0.01 (Meta's recommendation)
N_CTX_MIN = 512  # the smallest context size that can be asked for (0 is Auto)
N_CTX_MAX = 10_485_760  # Scout's trained context
N_THREADS_MAX = 512
WHOLE_LIMIT_DEFAULT = Settings().whole_document_limit


class ApiKeys(Protocol):
    """The API server's key (``ApiController``)."""

    def token(self) -> str: ...

    def regenerate_token(self) -> str: ...


def context_cap_reason(
    requested: int, model: ModelInfo | None, plan: Plan | None = None, fixed_n_ctx: int | None = None
) -> str:
    """Why the loaded ``model`` runs with less context than the ``requested`` setting (0: Auto), as
    a sentence; empty when it got what was asked for. ``fixed_n_ctx``: the context size fixed in
    Memory & offload, which the setting does not override."""
    if not requested or model is None or model.n_ctx >= requested:
        return ""
    if fixed_n_ctx:
        why = f"Memory & offload fixes the context at {fixed_n_ctx:,} tokens"
    elif model.n_ctx_train and model.n_ctx >= model.n_ctx_train:
        why = f"the model was trained for at most {model.n_ctx_train:,} tokens"
    elif plan is not None:
        why = (
            f"a larger context does not fit this computer's memory ({plan.fits_text}; "
            "see File → Memory & offload)"
        )
    else:
        why = "llama.cpp could not give it more"
    return f"The model runs with {model.n_ctx:,} tokens of context, not the {requested:,} asked for: {why}."


class SettingsDialog(QDialog):
    """Edits a copy of ``settings``; ``result_settings()`` returns the new frozen Settings."""

    def __init__(
        self,
        settings: Settings,
        parent: QWidget | None = None,
        *,
        model: ModelInfo | None = None,
        plan: Plan | None = None,
        fixed_n_ctx: int | None = None,
        api_keys: ApiKeys | None = None,
        tool_servers: ToolServers | None = None,
    ) -> None:
        """``model``: the loaded model (Auto shows its context size); ``plan``: its offload plan;
        ``fixed_n_ctx``: a context size fixed in Memory & offload (these say why a context size was
        capped); ``api_keys``: the API server's key (shown, copied, regenerated here)."""
        super().__init__(parent)
        self.setWindowTitle("Settings")
        self.setMinimumWidth(520)
        self._settings = settings

        self._build_sampling(settings)
        self._build_context_and_threads(settings, model, plan, fixed_n_ctx)
        self._build_documents()
        self._build_machines(settings)
        self._build_api_server(settings, api_keys)
        self.tools = ToolsSection(settings, tool_servers)
        self._with_tools: Settings | None = None  # the settings with the tool servers, once accepted
        self._build_theme_and_buttons()
        self._build_layout()
        self._load(settings)

    def _build_sampling(self, settings: Settings) -> None:
        self.system_prompt = QPlainTextEdit(settings.system_prompt)
        self.system_prompt.setPlaceholderText("Instructions sent before every conversation (optional)")
        self.system_prompt.setMinimumHeight(90)
        self.system_prompt.setTabChangesFocus(True)

        self.temperature = QDoubleSpinBox()
        self.temperature.setRange(0.0, 2.0)
        self.temperature.setSingleStep(0.05)
        self.temperature.setDecimals(2)
        self.temperature.setToolTip("Higher is more varied, lower more deterministic (Scout: 0.6)")
        self.top_p = QDoubleSpinBox()
        self.top_p.setRange(0.0, 1.0)
        self.top_p.setSingleStep(0.05)
        self.top_p.setDecimals(2)
        self.top_p.setToolTip(
            "Nucleus sampling: keep the most likely tokens up to this probability (Scout: 0.9)"
        )
        self.min_p = QDoubleSpinBox()
        self.min_p.setRange(0.0, 1.0)
        self.min_p.setSingleStep(0.01)
        self.min_p.setDecimals(3)
        self.min_p.setToolTip("Drop tokens less likely than this fraction of the best one (Scout: 0.01)")
        self.max_tokens = QSpinBox()
        self.max_tokens.setRange(16, 131_072)
        self.max_tokens.setSingleStep(256)
        self.max_tokens.setSuffix(" tokens")
        self.max_tokens.setToolTip("The longest answer the model may write")

    def _build_context_and_threads(
        self, settings: Settings, model: ModelInfo | None, plan: Plan | None, fixed_n_ctx: int | None
    ) -> None:
        self.n_ctx = QSpinBox()
        self.n_ctx.setRange(0, N_CTX_MAX)
        self.n_ctx.setSingleStep(1024)
        self.n_ctx.setSuffix(" tokens")
        self.n_ctx.setGroupSeparatorShown(True)
        if model is not None:
            self.n_ctx.setSpecialValueText(f"Auto ({model.n_ctx:,} for this model)")
        else:
            self.n_ctx.setSpecialValueText("Auto (the largest that fits, up to 32k)")
        self.n_ctx.setToolTip(
            "Context window; a larger one needs more memory. Auto (0): the largest that fits this "
            "computer, up to 32k tokens. Changing it reloads the model."
        )
        self.n_ctx_note = QLabel(context_cap_reason(settings.n_ctx, model, plan, fixed_n_ctx))
        self.n_ctx_note.setObjectName("settingsNotice")
        self.n_ctx_note.setWordWrap(True)
        self.n_ctx_note.setVisible(bool(self.n_ctx_note.text()))
        auto_threads = plan.n_threads if plan is not None else physical_cores()
        self.n_threads = QSpinBox()
        self.n_threads.setRange(0, N_THREADS_MAX)
        self.n_threads.setSpecialValueText(f"Auto ({auto_threads} cores)")
        self.n_threads.setSuffix(" threads")
        self.n_threads.setToolTip(
            "CPU threads llama.cpp uses. Auto (0): one per physical core, usually the fastest. "
            "Changing it reloads the model."
        )

    def _build_documents(self) -> None:
        self.whole_document_limit = QSpinBox()
        self.whole_document_limit.setRange(0, N_CTX_MAX)
        self.whole_document_limit.setSingleStep(4000)
        self.whole_document_limit.setGroupSeparatorShown(True)
        self.whole_document_limit.setPrefix("up to ")
        self.whole_document_limit.setSuffix(" tokens")
        self.whole_document_limit.setSpecialValueText("whenever they fit the context")
        self.whole_document_limit.setToolTip(
            "A document this long or shorter goes to the model whole with every question (when it "
            "fits the context); a longer one by the passages that match each question. Scout reads "
            f"very long inputs less well (see docs/benchmarks.md): {WHOLE_LIMIT_DEFAULT:,} is the "
            "default. Questions that ask for everything (“list every…”) can still read it all in parts."
        )

    def _build_machines(self, settings: Settings) -> None:
        self.compute_servers = QPlainTextEdit("\n".join(settings.compute_servers))
        self.compute_servers.setPlaceholderText("none: the model runs on this computer alone")
        self.compute_servers.setMaximumHeight(70)
        self.compute_servers.setTabChangesFocus(True)
        self.compute_servers.setToolTip(
            "Other computers that lend their memory and processors to this one through llama.cpp RPC: "
            "one host:port per line, each running `scout-chat --compute-server`. The model's layers "
            "are split across them by their free memory. Trusted home or office networks only: the "
            "connection is neither authenticated nor encrypted. Changing the list reloads the model."
        )
        self.compute_servers_note = QLabel("")
        self.compute_servers_note.setObjectName("settingsNotice")
        self.compute_servers_note.setWordWrap(True)
        self.compute_servers_note.setVisible(False)

    def machines(self) -> tuple[str, ...] | None:
        """The compute servers as entered (``host:port``, duplicates dropped), or None with the
        note saying which line is not an address."""
        from app.core.engine.rpc import parse_endpoint

        found: list[str] = []
        for line in self.compute_servers.toPlainText().splitlines():
            if not line.strip():
                continue
            try:
                endpoint = parse_endpoint(line)
            except ValueError as exc:
                self.compute_servers_note.setText(str(exc))
                self.compute_servers_note.setVisible(True)
                return None
            if endpoint not in found:
                found.append(endpoint)
        self.compute_servers_note.setVisible(False)
        return tuple(found)

    def _build_api_server(self, settings: Settings, api_keys: ApiKeys | None) -> None:
        self._api_keys = api_keys
        self.api_server = QCheckBox("Let other programs use the model (OpenAI-compatible API)")
        self.api_server.setToolTip(
            "Editors, scripts and note apps can send chat requests to the loaded model at "
            "http://ADDRESS:PORT/v1 with the key below. Requests wait their turn with this window's chat."
        )
        self.api_host = QLineEdit(settings.api_host)
        self.api_host.setPlaceholderText("127.0.0.1")
        self.api_host.textChanged.connect(self._on_api_host_text_changed)
        self.api_port = QSpinBox()
        self.api_port.setRange(0, 65535)
        self.api_port.setSpecialValueText("any free port")
        self.api_host_warning = QLabel(EXPOSED_WARNING)
        self.api_host_warning.setObjectName("settingsNotice")
        self.api_host_warning.setWordWrap(True)
        self.api_key = QLineEdit(api_keys.token() if api_keys is not None else "")
        self.api_key.setReadOnly(True)
        self.api_key.setEchoMode(QLineEdit.EchoMode.Password)
        self.api_key.setToolTip(
            "Clients send it as 'Authorization: Bearer KEY' (the API key of OpenAI's clients)"
        )
        self.show_api_key = QPushButton("Show")
        self.show_api_key.setCheckable(True)
        self.show_api_key.toggled.connect(self._on_show_api_key_toggled)
        self.copy_api_key = QPushButton("Copy")
        self.copy_api_key.clicked.connect(self._on_copy_api_key_clicked)
        self.regenerate_api_key = QPushButton("New key")
        self.regenerate_api_key.setToolTip(
            "Make a new key; programs using the old one are refused from now on"
        )
        self.regenerate_api_key.clicked.connect(self._on_regenerate_api_key_clicked)
        for button in (self.show_api_key, self.copy_api_key, self.regenerate_api_key):
            button.setEnabled(api_keys is not None)
        self.api_cors = QLineEdit(", ".join(settings.api_cors_origins))
        self.api_cors.setPlaceholderText("none (web pages cannot call the server)")
        self.api_cors.setToolTip(
            "Web pages (origins such as http://localhost:3000, separated by commas) whose scripts may "
            "call the server. Leave empty unless a web app of yours needs it."
        )
        self.api_save_history = QCheckBox("Keep API conversations in the chat history")
        self.api_save_history.setToolTip(
            "Off: what other programs ask and what Scout answers them is never stored. On: each "
            "request and its answer is kept as a conversation titled “API: …”."
        )
        self.api_save_history.setChecked(settings.api_save_history)
        self.api_log_requests = QCheckBox("Write API requests and answers to the log")
        self.api_log_requests.setToolTip(
            "For finding out what a program sends. Off: prompts and answers never reach the log file."
        )
        self.api_log_requests.setChecked(settings.api_log_requests)

    def _build_theme_and_buttons(self) -> None:
        self.search_model = QCheckBox("Search long documents by meaning (downloads a 90 MB model)")
        self.search_model.setToolTip(
            "all-MiniLM-L6-v2 (English, Apache-2.0) finds passages that answer questions asked in "
            "other words. Off: documents are searched by keywords only, and the model's files are removed."
        )
        self.theme = QComboBox()
        for key, label in THEMES:
            self.theme.addItem(label, key)

        self.restore_button = QPushButton("Restore Scout defaults")
        self.restore_button.setToolTip(
            "Temperature 0.6, top-p 0.9, min-p 0.01 (Meta's recommendation for Scout)"
        )
        self.restore_button.clicked.connect(self._on_restore_button_clicked)

    def _build_layout(self) -> None:
        form = QFormLayout()
        form.setVerticalSpacing(10)
        form.setHorizontalSpacing(14)
        form.addRow("System prompt", self.system_prompt)
        form.addRow("Temperature", self.temperature)
        form.addRow("Top-p", self.top_p)
        form.addRow("Min-p", self.min_p)
        form.addRow("Max answer length", self.max_tokens)
        form.addRow("Context size", self.n_ctx)
        form.addRow("", self.n_ctx_note)
        form.addRow("Threads", self.n_threads)
        note = QLabel("Changing the context size or the threads reloads the model.")
        note.setObjectName("emptyText")
        form.addRow("", note)
        documents = QLabel("Documents")
        font = documents.font()
        font.setBold(True)
        documents.setFont(font)
        form.addRow(documents)
        form.addRow("Read documents whole", self.whole_document_limit)
        form.addRow("Search by meaning", self.search_model)
        machines = QLabel("Machines")
        machines.setFont(font)
        form.addRow(machines)
        form.addRow("Compute servers", self.compute_servers)
        form.addRow("", self.compute_servers_note)
        api = QLabel("API server")
        api.setFont(font)
        form.addRow(api)
        form.addRow("", self.api_server)
        form.addRow("Address", self.api_host)
        form.addRow("", self.api_host_warning)
        form.addRow("Port", self.api_port)
        key_row = QHBoxLayout()
        key_row.addWidget(self.api_key, 1)
        for button in (self.show_api_key, self.copy_api_key, self.regenerate_api_key):
            key_row.addWidget(button)
        form.addRow("Key", key_row)
        form.addRow("Web pages allowed", self.api_cors)
        form.addRow("", self.api_save_history)
        form.addRow("", self.api_log_requests)
        tools_title = QLabel("Tools (MCP servers)")
        tools_title.setFont(font)
        form.addRow(tools_title)
        form.addRow(self.tools)
        form.addRow("Theme", self.theme)

        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        buttons.addButton(self.restore_button, QDialogButtonBox.ButtonRole.ResetRole)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        self.buttons = buttons

        layout = QVBoxLayout(self)
        layout.setContentsMargins(18, 18, 18, 14)
        layout.addLayout(form)
        layout.addSpacing(6)
        layout.addWidget(buttons)

    def _load(self, settings: Settings) -> None:
        self.temperature.setValue(settings.temperature)
        self.top_p.setValue(settings.top_p)
        self.min_p.setValue(settings.min_p)
        self.max_tokens.setValue(settings.max_tokens)
        self.n_ctx.setValue(settings.n_ctx)
        self.n_threads.setValue(settings.n_threads)
        self.whole_document_limit.setValue(settings.whole_document_limit)
        self.n_ctx.valueChanged.connect(self._on_n_ctx_value_changed)
        self.search_model.setChecked(settings.search_model == "on")
        self.api_server.setChecked(settings.api_server)
        self.api_port.setValue(settings.api_port)
        self._on_api_host_text_changed(settings.api_host)
        index = self.theme.findData(settings.theme)
        self.theme.setCurrentIndex(max(0, index))

    def restore_scout_defaults(self) -> None:
        self.temperature.setValue(SCOUT_DEFAULTS.temperature)
        self.top_p.setValue(SCOUT_DEFAULTS.top_p)
        self.min_p.setValue(SCOUT_DEFAULTS.min_p)
        self.max_tokens.setValue(SCOUT_DEFAULTS.max_tokens)

    def result_settings(self) -> Settings:
        base = self._with_tools or self._settings
        return base.replace(
            system_prompt=self.system_prompt.toPlainText().strip(),
            temperature=round(self.temperature.value(), 2),
            top_p=round(self.top_p.value(), 2),
            min_p=round(self.min_p.value(), 3),
            max_tokens=self.max_tokens.value(),
            n_ctx=self.n_ctx.value() and max(N_CTX_MIN, self.n_ctx.value()),
            n_threads=self.n_threads.value(),
            whole_document_limit=self.whole_document_limit.value(),
            theme=str(self.theme.currentData()),
            search_model=self._search_model_choice(),
            compute_servers=self.machines() or (),
            api_server=self.api_server.isChecked(),
            api_host=self.api_host.text().strip() or "127.0.0.1",
            api_port=self.api_port.value(),
            api_cors_origins=tuple(
                o.strip().rstrip("/") for o in self.api_cors.text().split(",") if o.strip()
            ),
            api_save_history=self.api_save_history.isChecked(),
            api_log_requests=self.api_log_requests.isChecked(),
        )

    def accept(self) -> None:
        """Closes only with usable compute server addresses and tool servers (what is wrong is
        said under the editor)."""
        if self.machines() is None:
            self.compute_servers.setFocus()
            return
        try:
            self._with_tools = self.tools.apply(self._settings)
        except ToolConfigError as exc:
            self.tools.error.setText(exc.message)
            self.tools.error.setVisible(True)
            return
        super().accept()

    def _search_model_choice(self) -> str:
        """``on`` / ``off`` once the box was changed; the saved choice (``ask`` too) otherwise."""
        if self.search_model.isChecked() == (self._settings.search_model == "on"):
            return self._settings.search_model
        return "on" if self.search_model.isChecked() else "off"

    def _on_restore_button_clicked(self) -> None:
        self.restore_scout_defaults()

    def _on_n_ctx_value_changed(self, value: int) -> None:
        # the notice is about the saved setting; it no longer applies to another value
        self.n_ctx_note.setVisible(value == self._settings.n_ctx and bool(self.n_ctx_note.text()))

    def _on_api_host_text_changed(self, text: str) -> None:
        self.api_host_warning.setVisible(bool(text.strip()) and not is_loopback(text))

    def _on_show_api_key_toggled(self, shown: bool) -> None:
        self.api_key.setEchoMode(QLineEdit.EchoMode.Normal if shown else QLineEdit.EchoMode.Password)
        self.show_api_key.setText("Hide" if shown else "Show")

    def _on_copy_api_key_clicked(self) -> None:
        QGuiApplication.clipboard().setText(self.api_key.text())

    def _on_regenerate_api_key_clicked(self) -> None:
        if self._api_keys is not None:
            self.api_key.setText(self._api_keys.regenerate_token())
