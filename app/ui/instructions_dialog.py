"""Instructions & preset of one conversation: the preset it uses, its own system prompt, its
temperature / top-p / min-p, "Save as preset…", and renaming or deleting the user's presets.

Opened from the button above the chat (``MainWindow.instructions_button``), which names what the
conversation uses. Choosing a preset fills in its values; a value edited away from the preset's
becomes the conversation's own (``ConversationOptions``, stored with the conversation). Nothing is
stored until **Use for this chat**.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from app.core.presets import ConversationOptions, Preset, all_presets
from app.ui.window_dialogs import confirm_delete

if TYPE_CHECKING:
    from collections.abc import Callable

    from app.workers.conversations import ConversationController

APP_SETTINGS_TEXT = "App settings"


def ask_preset_name(parent: QWidget, title: str, text: str) -> str | None:
    """The default name prompt (a modal input dialog); None when cancelled."""
    name, ok = QInputDialog.getText(parent, title, "Preset name:", text=text)
    return name if ok else None


def confirm_preset_delete(parent: QWidget, name: str) -> bool:
    return confirm_delete(
        parent,
        "Delete preset",
        f"Delete the preset “{name}”?\nConversations that use it go back to the app settings.",
    )


def _same(a: tuple[float, float, float], b: tuple[float, float, float]) -> bool:
    return all(abs(x - y) < 0.0005 for x, y in zip(a, b, strict=True))


class InstructionsDialog(QDialog):
    """The conversation's preset, instructions and sampling (see the module docstring).

    ``ask_name(parent, title, text) -> str | None`` and ``confirm_delete(parent, name) -> bool``
    ask the user (tests replace them).
    """

    def __init__(self, chats: ConversationController, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("instructionsDialog")
        self.setWindowTitle("Instructions & preset")
        self._chats = chats
        self._filling = False
        self.ask_name: Callable[[QWidget, str, str], str | None] = ask_preset_name
        self.confirm_delete: Callable[[QWidget, str], bool] = confirm_preset_delete

        self.preset_combo = QComboBox()
        self.preset_combo.setObjectName("presetCombo")
        self.preset_combo.setAccessibleName("Preset")
        self.preset_combo.currentIndexChanged.connect(self._on_preset_combo_current_index_changed)
        self.rename_button = QPushButton("Rename…")
        self.rename_button.setToolTip("Rename this preset of yours")
        self.rename_button.clicked.connect(self._on_rename_button_clicked)
        self.delete_button = QPushButton("Delete")
        self.delete_button.setToolTip("Delete this preset of yours")
        self.delete_button.clicked.connect(self._on_delete_button_clicked)
        preset_row = QHBoxLayout()
        preset_row.addWidget(self.preset_combo, 1)
        preset_row.addWidget(self.rename_button)
        preset_row.addWidget(self.delete_button)

        self.prompt_edit = QPlainTextEdit()
        self.prompt_edit.setObjectName("conversationPrompt")
        self.prompt_edit.setAccessibleName("System prompt of this conversation")
        self.prompt_edit.setPlaceholderText("No instructions: the model's own behaviour")
        self.prompt_edit.setTabChangesFocus(True)
        self.prompt_edit.setMinimumHeight(80)
        self.prompt_edit.textChanged.connect(self._on_value_changed)

        self.temperature_spin = self._spin(0.0, 2.0, 0.05, "Temperature: higher is more varied")
        self.top_p_spin = self._spin(
            0.01, 1.0, 0.05, "Top-p: sample from the likeliest tokens up to this mass"
        )
        self.min_p_spin = self._spin(
            0.0, 0.99, 0.01, "Min-p: leave out tokens this much less likely than the best"
        )
        sampling_row = QHBoxLayout()
        for label, spin in (
            ("Temperature", self.temperature_spin),
            ("Top-p", self.top_p_spin),
            ("Min-p", self.min_p_spin),
        ):
            sampling_row.addWidget(QLabel(label))
            sampling_row.addWidget(spin)
            sampling_row.addSpacing(6)
        sampling_row.addStretch(1)

        self.summary_label = QLabel()
        self.summary_label.setObjectName("presetSummary")
        self.summary_label.setWordWrap(True)
        self.error_label = QLabel()
        self.error_label.setObjectName("presetError")
        self.error_label.setWordWrap(True)
        self.error_label.hide()

        self.save_as_button = QPushButton("Save as preset…")
        self.save_as_button.setToolTip("Keep these instructions and values as a preset of your own")
        self.save_as_button.clicked.connect(self._on_save_as_button_clicked)
        self.reset_button = QPushButton("Reset to preset")
        self.reset_button.setToolTip("Use the preset's instructions and values again")
        self.reset_button.clicked.connect(self._on_reset_button_clicked)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Cancel)
        self.apply_button = self.buttons.addButton(
            "Use for this chat", QDialogButtonBox.ButtonRole.AcceptRole
        )
        self.apply_button.setDefault(True)
        self.buttons.accepted.connect(self._on_buttons_accepted)
        self.buttons.rejected.connect(self.reject)
        bottom = QHBoxLayout()
        bottom.addWidget(self.save_as_button)
        bottom.addWidget(self.reset_button)
        bottom.addStretch(1)
        bottom.addWidget(self.buttons)

        form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.ExpandingFieldsGrow)
        form.addRow("Preset", preset_row)
        form.addRow("Instructions", self.prompt_edit)
        form.addRow("Sampling", sampling_row)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.summary_label)
        layout.addWidget(self.error_label)
        layout.addLayout(bottom)
        self.resize(620, 330)

        options = chats.conversation_options()
        self._fill_presets(options.preset)
        prompt, sampling = chats.resolved_options(options)
        self._set_values(prompt, sampling)

    # -- public API -------------------------------------------------------------------------
    def preset_name(self) -> str:
        """The preset chosen ("" for the app settings)."""
        return str(self.preset_combo.currentData() or "")

    def options(self) -> ConversationOptions:
        """The options shown: the preset, and the prompt and sampling where they differ from it."""
        preset = self.preset_name()
        inherited_prompt, inherited_sampling = self._chats.resolved_options(ConversationOptions(preset))
        prompt = self.prompt_edit.toPlainText()
        sampling = (self.temperature_spin.value(), self.top_p_spin.value(), self.min_p_spin.value())
        return ConversationOptions(
            preset,
            None if prompt.strip() == inherited_prompt.strip() else prompt,
            None if _same(sampling, inherited_sampling) else sampling,
        )

    def select_preset(self, name: str) -> None:
        index = self.preset_combo.findData(name)
        if index < 0:
            raise ValueError(f"no preset named {name!r}")
        self.preset_combo.setCurrentIndex(index)

    # -- internals --------------------------------------------------------------------------
    def _spin(self, low: float, high: float, step: float, tip: str) -> QDoubleSpinBox:
        spin = QDoubleSpinBox()
        spin.setRange(low, high)
        spin.setSingleStep(step)
        spin.setDecimals(2)
        spin.setToolTip(tip)
        spin.setAccessibleName(tip.split(":")[0])
        spin.valueChanged.connect(self._on_value_changed)
        return spin

    def _fill_presets(self, selected: str) -> None:
        self._filling = True
        try:
            self.preset_combo.clear()
            self.preset_combo.addItem(APP_SETTINGS_TEXT, "")
            user_made = self._chats.user_presets()
            presets = all_presets(user_made)
            separated = False
            for preset in presets:
                if not preset.builtin and not separated:  # the user's presets after a line
                    self.preset_combo.insertSeparator(self.preset_combo.count())
                    separated = True
                self.preset_combo.addItem(preset.name, preset.name)
                values = f"{preset.temperature:g} / {preset.top_p:g} / {preset.min_p:g}"
                kind = "Built-in preset" if preset.builtin else "Your preset"
                self.preset_combo.setItemData(
                    self.preset_combo.count() - 1,
                    f"{kind}: temperature / top-p / min-p {values}",
                    Qt.ItemDataRole.ToolTipRole,
                )
            index = self.preset_combo.findData(selected) if selected else 0
            if selected and index < 0:  # a preset deleted since: say so, keep the app settings
                self.preset_combo.addItem(f"{selected} (deleted)", selected)
                index = self.preset_combo.count() - 1
            self.preset_combo.setCurrentIndex(max(index, 0))
        finally:
            self._filling = False
        self._update_buttons()

    def _set_values(self, prompt: str, sampling: tuple[float, float, float]) -> None:
        self._filling = True
        try:
            self.prompt_edit.setPlainText(prompt)
            self.temperature_spin.setValue(sampling[0])
            self.top_p_spin.setValue(sampling[1])
            self.min_p_spin.setValue(sampling[2])
        finally:
            self._filling = False
        self._update_buttons()

    def _load_preset_values(self) -> None:
        prompt, sampling = self._chats.resolved_options(ConversationOptions(self.preset_name()))
        self._set_values(prompt, sampling)

    def _update_buttons(self) -> None:
        name = self.preset_name()
        mine = any(p.name == name for p in self._chats.user_presets())
        self.rename_button.setEnabled(mine)
        self.delete_button.setEnabled(mine)
        options = self.options()
        self.reset_button.setEnabled(options.system_prompt is not None or options.sampling is not None)
        self.summary_label.setText(f"This chat uses: {options.describe(self._chats.user_presets())}")

    def _show_error(self, message: str) -> None:
        self.error_label.setText(message)
        self.error_label.setVisible(bool(message))

    # -- slots ------------------------------------------------------------------------------
    def _on_preset_combo_current_index_changed(self, _index: int) -> None:
        if not self._filling:
            self._load_preset_values()

    def _on_value_changed(self, *_args: object) -> None:
        if not self._filling:
            self._update_buttons()

    def _on_reset_button_clicked(self) -> None:
        self._load_preset_values()

    def _on_save_as_button_clicked(self) -> None:
        mine = any(p.name == self.preset_name() for p in self._chats.user_presets())
        suggested = self.preset_name() if mine else ""
        name = self.ask_name(self, "Save as preset", suggested)
        if name is None:
            return
        app_prompt = self._chats.resolved_options(ConversationOptions())[0]
        prompt = self.prompt_edit.toPlainText()
        try:
            saved = self._chats.save_preset(
                Preset(
                    name,
                    self.temperature_spin.value(),
                    self.top_p_spin.value(),
                    self.min_p_spin.value(),
                    "" if prompt.strip() == app_prompt.strip() else prompt,
                    builtin=False,
                )
            )
        except ValueError as exc:
            self._show_error(str(exc))
            return
        self._show_error("")
        self._fill_presets(saved.name)
        self._load_preset_values()

    def _on_rename_button_clicked(self) -> None:
        old = self.preset_name()
        name = self.ask_name(self, "Rename preset", old)
        if name is None:
            return
        try:
            new = self._chats.rename_preset(old, name)
        except ValueError as exc:
            self._show_error(str(exc))
            return
        self._show_error("")
        self._fill_presets(new)

    def _on_delete_button_clicked(self) -> None:
        name = self.preset_name()
        if not self.confirm_delete(self, name):
            return
        self._chats.delete_preset(name)
        self._show_error("")
        self._fill_presets("")
        self._load_preset_values()

    def _on_buttons_accepted(self) -> None:
        self._chats.set_conversation_options(self.options())
        self.accept()
