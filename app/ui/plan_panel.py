"""The "Memory & offload" panel: how a model fits this machine, and the Advanced overrides.

It reads the model's header once (``read_gguf_info``, ~30–60 ms even for Scout), probes the
hardware once per model through an injectable probe, and recomputes the projection with the pure,
fast ``make_plan`` on the GUI thread whenever an Advanced setting changes (debounced). "Apply and
reload" hands the overrides to the controller; nothing here loads a model itself. The bars, rows
and colours are in :mod:`app.ui.plan_widgets`; this file (~620 lines) is the one dialog and its state.
"""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import QEvent, Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QFileDialog,
    QFormLayout,
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app.core.gguf_info import GGUFError, find_projector, read_gguf_info
from app.core.hardware import SystemHardware, with_remote_devices
from app.core.planner import PlanOverrides, make_plan, merge_overrides
from app.core.units import format_context, gb_number
from app.ui import theme
from app.ui.plan_widgets import (
    SEGMENTS,
    DeviceRow,
    colors,
    context_choices,
    describe_verdict,
    panel_style_sheet,
    speed_text,
    verdict_kind,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from PySide6.QtGui import QResizeEvent, QShowEvent

    from app.core.engine.probe import MeasuredBuffers
    from app.core.gguf_info import GGUFInfo
    from app.core.hardware import HardwareInfo, HardwareProbe
    from app.core.planner import Plan
    from app.core.types import ModelInfo
    from app.workers.controller import AppController

log = logging.getLogger(__name__)

RECOMPUTE_DELAY_MS = 50
KV_CHOICES = (("Auto", None), ("f16", "f16"), ("q8_0", "q8_0"), ("q4_0", "q4_0"))
FLASH_CHOICES = (("Auto", None), ("On", True), ("Off", False))
UBATCH_CHOICES = (("Auto", None), ("512", 512), ("1,024", 1024), ("2,048", 2048), ("4,096", 4096))
SPECULATION_CHOICES = (("Auto", None), ("On", "on"), ("Off", "off"))


def choose_model_file(parent: QWidget, start_dir: str) -> str:
    path, _filter = QFileDialog.getOpenFileName(
        parent, "Choose a model file", start_dir, "GGUF models (*.gguf);;All files (*)"
    )
    return path


def _label(object_name: str) -> QLabel:
    """A word-wrapped label styled by ``object_name``."""
    label = QLabel()
    label.setObjectName(object_name)
    label.setWordWrap(True)
    return label


class PlanPanel(QDialog):
    """Non-modal "Memory & offload" dialog for the loaded model or any GGUF the user picks.

    ``controller``: the AppController — its ``models`` (the loaded model, its plan and overrides,
    ``load_model``) and its settings (the context size). ``choose_model_file(parent, start_dir) -> str``
    picks a GGUF (tests replace it).

    Signals:
    plan_projected(object): a new projection (planner.Plan) is on screen.
    """

    plan_projected = Signal(object)

    def __init__(
        self,
        controller: AppController,
        parent: QWidget | None = None,
        *,
        hardware_probe: HardwareProbe | None = None,
        measurements: Mapping[tuple[int, bool, str], MeasuredBuffers] | None = None,
    ) -> None:
        super().__init__(parent)
        self.setObjectName("planPanel")
        self.setWindowTitle("Memory & offload")
        self.setModal(False)
        self.setMinimumWidth(560)
        self.controller = controller
        self.choose_model_file: Callable[[QWidget, str], str] = choose_model_file
        self._probe: HardwareProbe = hardware_probe or SystemHardware()
        self._measurements = measurements
        self._path: Path | None = None
        self._info: GGUFInfo | None = None
        self._hardware: HardwareInfo | None = None
        self._mmproj_bytes = 0
        self._plan: Plan | None = None
        self._n_ctx_target: int | None = None  # kept from the controller's overrides (no widget)
        self._restyling = False
        self._styled_dark: bool | None = None
        self.device_rows: list[DeviceRow] = []

        self._recompute_timer = QTimer(self)
        self._recompute_timer.setSingleShot(True)
        self._recompute_timer.setInterval(RECOMPUTE_DELAY_MS)
        self._recompute_timer.timeout.connect(self._on_recompute_timer_timeout)

        self._build()
        self._apply_local_style()
        self._connect_controller()

        info = controller.models.model_info
        if info is not None:
            self.set_model_path(info.path, controller.models.overrides)
        else:
            self._show_empty()
        current = controller.models.plan
        if current is not None:
            self._show_loaded_plan(current)

    # -- construction -----------------------------------------------------------------------
    def _build(self) -> None:
        layout = QVBoxLayout(self)
        layout.setContentsMargins(20, 18, 20, 16)
        layout.setSpacing(12)
        layout.addLayout(self._build_header())
        line = QFrame()
        line.setObjectName("planRule")
        line.setFixedHeight(1)
        layout.addWidget(line)
        self._build_messages()
        layout.addWidget(self.error_label)
        layout.addWidget(self.empty_label)
        layout.addWidget(self._build_plan_box())
        self.advanced_button = QToolButton()
        self.advanced_button.setObjectName("advancedToggle")
        self.advanced_button.setText("Advanced")
        self.advanced_button.setCheckable(True)
        self.advanced_button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.advanced_button.setArrowType(Qt.ArrowType.RightArrow)
        self.advanced_button.toggled.connect(self._on_advanced_button_toggled)
        self.advanced_box = self._build_advanced()
        self.advanced_box.hide()
        layout.addWidget(self.advanced_button, 0, Qt.AlignmentFlag.AlignLeft)
        layout.addWidget(self.advanced_box)
        layout.addStretch(1)
        layout.addLayout(self._build_buttons())

    def _build_header(self) -> QGridLayout:
        """The model's name and file details, and "Choose model…"."""
        self.model_title = QLabel("No model")
        self.model_title.setObjectName("planModelTitle")
        self.model_title.setWordWrap(True)
        self.model_detail = _label("planMuted")
        self.choose_button = QPushButton("Choose model…")
        self.choose_button.setToolTip("See how another GGUF file would fit this machine")
        self.choose_button.clicked.connect(self._on_choose_button_clicked)
        header = QGridLayout()
        header.setHorizontalSpacing(12)
        header.setVerticalSpacing(2)
        header.addWidget(self.model_title, 0, 0)
        header.addWidget(self.model_detail, 1, 0)
        header.addWidget(self.choose_button, 0, 1, 2, 1, Qt.AlignmentFlag.AlignTop)
        header.setColumnStretch(0, 1)
        return header

    def _build_messages(self) -> None:
        """The error (unreadable file) and empty (no model) messages, hidden at first."""
        self.error_label = _label("planError")
        self.error_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.error_label.hide()
        self.empty_label = _label("planMuted")
        self.empty_label.setText("Choose a GGUF model file to see how it fits this machine's memory.")
        self.empty_label.hide()

    def _build_plan_box(self) -> QWidget:
        """The projection: verdict badge and speed, one bar per memory pool, legend, explanation."""
        self.verdict_label = QLabel()
        self.verdict_label.setObjectName("verdictBadge")
        self.speed_label = QLabel()
        self.speed_label.setObjectName("planMuted")
        self.speed_label.setToolTip(
            "A rough figure from memory bandwidth and the bytes each token reads; real speed varies"
        )
        verdict_row = QHBoxLayout()
        verdict_row.setSpacing(10)
        verdict_row.addWidget(self.verdict_label)
        verdict_row.addStretch(1)
        verdict_row.addWidget(self.speed_label)
        self.bars_box = QWidget()
        self.bars_layout = QVBoxLayout(self.bars_box)
        self.bars_layout.setContentsMargins(0, 0, 0, 0)
        self.bars_layout.setSpacing(12)
        self.legend_label = QLabel()
        self.legend_label.setObjectName("planLegend")
        self.explanation_label = _label("planExplanation")
        self.explanation_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.notes_label = _label("planMuted")
        self.notes_label.hide()
        self.loaded_label = _label("planMuted")
        self.loaded_label.hide()
        self.plan_box = QWidget()
        plan_layout = QVBoxLayout(self.plan_box)
        plan_layout.setContentsMargins(0, 0, 0, 0)
        plan_layout.setSpacing(10)
        plan_layout.addLayout(verdict_row)
        for widget in (self.bars_box, self.legend_label, self.explanation_label):
            plan_layout.addWidget(widget)
        plan_layout.addWidget(self.notes_label)
        plan_layout.addWidget(self.loaded_label)
        return self.plan_box

    def _build_buttons(self) -> QHBoxLayout:
        """Reset to automatic · Close · Apply and reload."""
        self.reset_button = QPushButton("Reset to automatic")
        self.reset_button.setToolTip("Let the planner choose every setting again")
        self.reset_button.clicked.connect(self._on_reset_button_clicked)
        self.close_button = QPushButton("Close")
        self.close_button.setAutoDefault(False)
        self.close_button.clicked.connect(self._on_close_button_clicked)
        self.apply_button = QPushButton("Apply and reload")
        self.apply_button.setObjectName("primaryButton")
        self.apply_button.setToolTip("Load the model with these settings")
        self.apply_button.clicked.connect(self._on_apply_button_clicked)
        buttons = QHBoxLayout()
        buttons.setSpacing(8)
        buttons.addWidget(self.reset_button)
        buttons.addStretch(1)
        buttons.addWidget(self.close_button)
        buttons.addWidget(self.apply_button)
        return buttons

    def _advanced_combo(self, choices: Sequence[tuple[str, object]], tooltip: str) -> QComboBox:
        """A combo box of the Advanced settings: ``choices`` (label, value), ``tooltip``; a change
        updates the preview."""
        combo = QComboBox()
        for label, value in choices:
            combo.addItem(label, value)
        combo.setToolTip(tooltip)
        combo.currentIndexChanged.connect(self._on_advanced_input_changed)
        return combo

    def _build_advanced(self) -> QWidget:
        box = QFrame()
        box.setObjectName("advancedBox")
        self.gpu_layers_spin = QSpinBox()
        self.gpu_layers_spin.setRange(-1, 1)
        self.gpu_layers_spin.setSpecialValueText("Auto")
        self.gpu_layers_spin.setValue(-1)
        self.gpu_layers_spin.valueChanged.connect(self._on_advanced_input_changed)
        self.cpu_moe_spin = QSpinBox()
        self.cpu_moe_spin.setRange(-1, 0)
        self.cpu_moe_spin.setSpecialValueText("Auto")
        self.cpu_moe_spin.setValue(-1)
        self.cpu_moe_spin.setToolTip(
            "Keep the expert tensors of this many GPU layers in system RAM; their dense parts "
            "(attention, shared expert) stay on the GPU"
        )
        self.cpu_moe_spin.valueChanged.connect(self._on_advanced_input_changed)
        self.context_combo = QComboBox()
        self.context_combo.addItem("Auto", None)
        self.context_combo.setToolTip("Context window in tokens; the KV cache grows with it")
        self.context_combo.currentIndexChanged.connect(self._on_advanced_input_changed)
        self.kv_combo = self._advanced_combo(
            KV_CHOICES,
            "Element type of the KV cache: q8_0 halves it with little loss, q4_0 quarters it. "
            "A quantized cache needs flash attention",
        )
        self.flash_combo = self._advanced_combo(
            FLASH_CHOICES,
            "Auto: on with a GPU (faster, smaller buffers); off on a CPU-only machine when its "
            "larger buffers fit, because llama.cpp's CPU flash attention is slower",
        )
        self.ubatch_combo = self._advanced_combo(
            UBATCH_CHOICES,
            "Tokens of a prompt read at a time (n_ubatch). Auto: 512, larger on a GPU machine with "
            "weights in system RAM (they are copied to the GPU once per batch), as far as its larger "
            "buffers fit",
        )
        self.speculation_combo = self._advanced_combo(
            SPECULATION_CHOICES,
            "Draft-free speculation: the next tokens are guessed from the document and the "
            "conversation (answers that quote) and checked in one batch. Auto: with flash attention "
            "only, and only while it saves time. On: always (without flash attention a near-tie "
            "can then go the other way)",
        )
        self.advanced_note = _label("planMuted")
        self.advanced_note.hide()
        form = QFormLayout(box)
        form.setContentsMargins(14, 10, 14, 10)
        form.setHorizontalSpacing(14)
        form.setVerticalSpacing(8)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.FieldsStayAtSizeHint)
        form.setLabelAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter)
        for widget in (
            self.gpu_layers_spin,
            self.cpu_moe_spin,
            self.context_combo,
            self.kv_combo,
            self.flash_combo,
            self.ubatch_combo,
            self.speculation_combo,
        ):
            widget.setMinimumWidth(130)
        form.addRow("GPU layers", self.gpu_layers_spin)
        form.addRow("Experts in RAM (layers)", self.cpu_moe_spin)
        form.addRow("Context size", self.context_combo)
        form.addRow("KV cache type", self.kv_combo)
        form.addRow("Flash attention", self.flash_combo)
        form.addRow("Prompt batch", self.ubatch_combo)
        form.addRow("Speculation", self.speculation_combo)
        form.addRow(self.advanced_note)
        return box

    def _connect_controller(self) -> None:
        self.controller.models.plan_changed.connect(self._on_models_plan_changed)
        self.controller.models.model_loaded.connect(self._on_models_model_loaded)

    def _apply_local_style(self) -> None:
        """Badge, error and muted colours for the current scheme (re-applied when it flips)."""
        dark = theme.is_dark(self.palette())
        if dark == self._styled_dark:
            return
        self._styled_dark = dark
        c = colors(dark)
        self.setStyleSheet(panel_style_sheet(c))
        self._update_legend()

    def _update_legend(self) -> None:
        c = colors(bool(self._styled_dark))
        parts = [f'<span style="color:{c[key]};">■</span>&nbsp;{label}' for key, label in SEGMENTS]
        self.legend_label.setText("&nbsp;&nbsp;&nbsp;".join(parts))

    # -- public API -------------------------------------------------------------------------
    @property
    def plan(self) -> Plan | None:
        """The projection on screen (None without a readable model)."""
        return self._plan

    @property
    def model_path(self) -> Path | None:
        return self._path

    @property
    def info(self) -> GGUFInfo | None:
        return self._info

    def set_model_path(self, path: Path | str, overrides: PlanOverrides | None = None) -> bool:
        """Read ``path``'s header, probe the hardware and show the projection for ``overrides``.

        Returns False (and shows the reason in the panel) when the file cannot be read.
        """
        self._recompute_timer.stop()
        self._path = Path(path)
        self._plan = None
        try:
            info = read_gguf_info(self._path)
        except GGUFError as exc:
            self._info = None
            self._show_error(str(exc))
            return False
        except OSError as exc:
            self._info = None
            self._show_error(f"{self._path.name} could not be read: {exc.strerror or exc}")
            return False
        self._info = info
        self._hardware = self._probe.probe()
        loaded = self.controller.models.plan
        if loaded is not None and loaded.remote_devices and self.controller.settings.compute_servers:
            # the compute servers' devices as the last load found them (asked in the engine process)
            self._hardware = with_remote_devices(self._hardware, loaded.remote_devices)
        projector = find_projector(info.path)
        self._mmproj_bytes = projector.stat().st_size if projector is not None else 0
        self._show_model_header(info)
        self._configure_ranges(info)
        self.set_overrides(overrides)
        return True

    def overrides(self) -> PlanOverrides:
        """The Advanced settings as PlanOverrides (all None: automatic)."""
        gpu = self.gpu_layers_spin.value()
        moe = self.cpu_moe_spin.value()
        n_ctx = self.context_combo.currentData()
        return PlanOverrides(
            n_gpu_layers=None if gpu < 0 else gpu,
            n_cpu_moe=None if moe < 0 else moe,
            n_ctx=n_ctx,
            n_ctx_target=None if n_ctx else self._n_ctx_target,
            kv_type=self.kv_combo.currentData(),
            flash_attn=self.flash_combo.currentData(),
            n_ubatch=self.ubatch_combo.currentData(),
            speculation=self.speculation_combo.currentData(),
        )

    def set_overrides(self, overrides: PlanOverrides | None) -> None:
        """Show ``overrides`` in the Advanced section and project them at once."""
        o = overrides or PlanOverrides()
        self._n_ctx_target = o.n_ctx_target
        widgets = (
            self.gpu_layers_spin,
            self.cpu_moe_spin,
            self.context_combo,
            self.kv_combo,
            self.flash_combo,
            self.ubatch_combo,
            self.speculation_combo,
        )
        for widget in widgets:
            widget.blockSignals(True)
        try:
            self.gpu_layers_spin.setValue(-1 if o.n_gpu_layers is None else o.n_gpu_layers)
            self.cpu_moe_spin.setValue(-1 if o.n_cpu_moe is None else o.n_cpu_moe)
            if o.n_ctx and self.context_combo.findData(o.n_ctx) < 0:
                self.context_combo.addItem(format_context(o.n_ctx), o.n_ctx)
            self.context_combo.setCurrentIndex(max(0, self.context_combo.findData(o.n_ctx)))
            self.kv_combo.setCurrentIndex(max(0, self.kv_combo.findData(o.kv_type)))
            self.flash_combo.setCurrentIndex(max(0, self.flash_combo.findData(o.flash_attn)))
            self.ubatch_combo.setCurrentIndex(max(0, self.ubatch_combo.findData(o.n_ubatch)))
            self.speculation_combo.setCurrentIndex(max(0, self.speculation_combo.findData(o.speculation)))
        finally:
            for widget in widgets:
                widget.blockSignals(False)
        if o != PlanOverrides(n_ctx_target=o.n_ctx_target):
            self.advanced_button.setChecked(True)
        self.recompute()

    def recompute(self) -> None:
        """Project the current settings now (the widgets call this through a 50 ms debounce)."""
        self._recompute_timer.stop()
        if self._info is None or self._hardware is None:
            return
        plan = make_plan(
            self._info,
            self._hardware,
            self._projection_overrides(),
            measurements=self._measurements,
            mmproj_bytes=self._mmproj_bytes,
        )
        self._plan = plan
        self._show_plan(plan)
        self.plan_projected.emit(plan)

    def verdict_text(self) -> str:
        return self.verdict_label.text()

    # -- display ----------------------------------------------------------------------------
    def _projection_overrides(self) -> PlanOverrides:
        """What the controller will hand the planner (:func:`app.core.planner.merge_overrides`)."""
        return merge_overrides(self.overrides(), self.controller.settings.n_ctx)

    def _show_model_header(self, info: GGUFInfo) -> None:
        self.model_title.setText(info.name or info.path.name)
        size = info.file_bytes or info.total_bytes
        parts = [info.path.name]
        if info.quant_name:
            parts.append(info.quant_name)
        parts.append(f"{gb_number(size)} GB")
        parts.append(f"{info.n_layer} layers")
        if info.n_expert:
            parts.append(f"{info.n_expert} experts ({info.n_expert_used} active)")
        self.model_detail.setText(" · ".join(parts))
        self.model_detail.setToolTip(str(info.path))

    def _configure_ranges(self, info: GGUFInfo) -> None:
        has_gpu = bool(self._hardware and self._hardware.devices)
        for spin, top in ((self.gpu_layers_spin, info.n_layer + 1), (self.cpu_moe_spin, info.n_layer)):
            spin.blockSignals(True)
            spin.setRange(-1, top)
            spin.setEnabled(has_gpu)
            spin.blockSignals(False)
        self.gpu_layers_spin.setToolTip(
            f"Layers offloaded to the GPU: {info.n_layer + 1} = all {info.n_layer} layers "
            "and the output layer"
            if has_gpu
            else "No GPU was found: every layer runs on the CPU"
        )
        if not info.n_expert:
            self.cpu_moe_spin.setEnabled(False)
        combo = self.context_combo
        combo.blockSignals(True)
        current = combo.currentData()
        combo.clear()
        combo.addItem("Auto", None)
        for n in context_choices(info.context_length):
            combo.addItem(format_context(n), n)
        combo.setCurrentIndex(max(0, combo.findData(current)))
        combo.blockSignals(False)

    def _show_empty(self) -> None:
        self._plan = None
        self.model_title.setText("No model")
        self.model_detail.clear()
        self.empty_label.show()
        self.error_label.hide()
        self.plan_box.hide()
        self._set_inputs_enabled(False)

    def _show_error(self, message: str) -> None:
        self.model_title.setText(self._path.name if self._path else "No model")
        self.model_detail.setText(str(self._path) if self._path else "")
        self.error_label.setText(message)
        self.error_label.show()
        self.empty_label.hide()
        self.plan_box.hide()
        self._set_inputs_enabled(False)

    def _set_inputs_enabled(self, enabled: bool) -> None:
        self.apply_button.setEnabled(enabled)
        self.reset_button.setEnabled(enabled)
        self.advanced_box.setEnabled(enabled)

    def _show_plan(self, plan: Plan) -> None:
        self.error_label.hide()
        self.empty_label.hide()
        self.plan_box.show()
        self._set_inputs_enabled(True)
        self.verdict_label.setText(describe_verdict(plan))
        self.verdict_label.setProperty("kind", verdict_kind(plan))
        self.verdict_label.style().unpolish(self.verdict_label)
        self.verdict_label.style().polish(self.verdict_label)
        self.speed_label.setText(speed_text(plan.forecast))
        usages = [*plan.devices, plan.ram]
        while len(self.device_rows) < len(usages):
            row = DeviceRow()
            self.bars_layout.addWidget(row)
            self.device_rows.append(row)
        while len(self.device_rows) > len(usages):
            row = self.device_rows.pop()
            self.bars_layout.removeWidget(row)
            row.deleteLater()
        for row, usage in zip(self.device_rows, usages, strict=True):
            row.set_usage(usage)
        self.explanation_label.setText(plan.explanation)
        notes = list(self._hardware.notes if self._hardware else ()) + list(plan.notes)
        self.notes_label.setText("\n".join(notes))
        self.notes_label.setVisible(bool(notes))
        self._show_auto_choices(plan)
        self._fit_height()

    def _show_auto_choices(self, plan: Plan) -> None:
        """Show what the planner chose where the user left it to it: Auto (49), Auto (32k)…"""
        self.gpu_layers_spin.setSpecialValueText(f"Auto ({plan.n_gpu_layers})")
        self.cpu_moe_spin.setSpecialValueText(f"Auto ({plan.n_cpu_moe})")
        self.context_combo.setItemText(0, f"Auto ({format_context(plan.n_ctx)})")
        self.kv_combo.setItemText(0, f"Auto ({plan.type_k})")
        self.flash_combo.setItemText(0, f"Auto ({'on' if plan.flash_attn else 'off'})")
        self.ubatch_combo.setItemText(0, f"Auto ({plan.n_ubatch:,})")
        kv = self.kv_combo.currentData()
        if kv in ("q8_0", "q4_0") and self.flash_combo.currentData() is False:
            self.advanced_note.setText("A quantized KV cache needs flash attention, so it stays on.")
            self.advanced_note.show()
        else:
            self.advanced_note.hide()

    def _show_loaded_plan(self, plan: Plan) -> None:
        self.loaded_label.setText(f"Last load: {plan.fits_text}, {format_context(plan.n_ctx)} context")
        self.loaded_label.setToolTip(textwrap.fill(plan.explanation, 80))
        self.loaded_label.show()

    def _fit_height(self, *, shrink: bool = False) -> None:
        """Grow (or fit) the height to the contents at the current width: word-wrapped labels
        make the layout height-for-width, which a top-level window does not follow by itself."""
        layout = self.layout()
        if layout is None or not self.isVisible():
            return
        layout.activate()
        width = max(self.width(), self.minimumWidth())
        if layout.hasHeightForWidth():
            needed = layout.totalHeightForWidth(width)
        else:
            needed = layout.totalSizeHint().height()
        if needed > self.height() or (shrink and needed != self.height()):
            self.resize(width, needed)

    def _schedule_recompute(self) -> None:
        self._recompute_timer.start()

    # -- events -----------------------------------------------------------------------------
    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        self._fit_height(shrink=True)

    def resizeEvent(self, event: QResizeEvent) -> None:
        super().resizeEvent(event)
        self._fit_height()

    def changeEvent(self, event: QEvent) -> None:
        super().changeEvent(event)
        # setStyleSheet() itself sends StyleChange (and may change the palette): never recurse.
        if event.type() in (QEvent.Type.PaletteChange, QEvent.Type.StyleChange) and not self._restyling:
            self._restyling = True
            try:
                self._apply_local_style()
            finally:
                self._restyling = False

    # -- slots ------------------------------------------------------------------------------
    def _on_recompute_timer_timeout(self) -> None:
        self.recompute()

    def _on_advanced_input_changed(self, _value: int) -> None:
        """Any Advanced spin box or combo changed: project again after the debounce."""
        self._schedule_recompute()

    def _on_advanced_button_toggled(self, checked: bool) -> None:
        self.advanced_button.setArrowType(Qt.ArrowType.DownArrow if checked else Qt.ArrowType.RightArrow)
        self.advanced_box.setVisible(checked)
        self._fit_height(shrink=True)

    def _on_reset_button_clicked(self) -> None:
        self.set_overrides(None)

    def _on_close_button_clicked(self) -> None:
        self.close()

    def _on_apply_button_clicked(self) -> None:
        if self._path is None or self._info is None:
            return
        overrides = self.overrides()
        self.controller.models.load_model(
            str(self._path), None if overrides == PlanOverrides() else overrides
        )

    def _on_choose_button_clicked(self) -> None:
        start = self._path.parent if self._path else Path.home()
        path = self.choose_model_file(self, str(start))
        if path:
            self.set_model_path(path, None)

    def _on_models_plan_changed(self, plan: Plan) -> None:
        self._show_loaded_plan(plan)

    def _on_models_model_loaded(self, info: ModelInfo) -> None:
        if self._info is None and self._path is None:
            self.set_model_path(info.path, self.controller.models.overrides)
