"""First run: what Scout is, what this machine has, which build to get, and the three ways on.

Shown by the main window in place of the chat while no model is installed or loaded. It reads the
hardware through an injectable probe (tests pass ``SimulatedHardware``) and ranks the manifest's
builds with the planner (:func:`app.diagnostics.recommend_build`); nothing is downloaded until the
user clicks "Download". Every memory figure on the page comes from the planner's plans (the intro's
"needs about X" is the smallest build's plan, the same figure the "too small" message gives), in GB
of 10^9 bytes (:mod:`app.core.units`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from PySide6.QtCore import QEvent, Qt, Signal
from PySide6.QtGui import QAction
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QMenu,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from app.core.hardware import describe_hardware
from app.core.units import format_gb
from app.diagnostics import Recommendation, free_disk, recommend_build
from app.ui import theme

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from app.core.hardware import HardwareInfo, HardwareProbe
    from app.core.manifest import Build, Manifest
    from app.diagnostics import BuildFit

log = logging.getLogger(__name__)

CONTENT_WIDTH = 640

INTRO = (
    "Scout Chat runs Meta's Llama 4 Scout, a 109-billion-parameter mixture-of-experts model, entirely "
    "on this computer: nothing you type ever leaves it. "
    "It needs a one-time download of one quantized model file{downloads} and enough memory to hold "
    "it{memory}. "
    "Below is what this machine has and the build that suits it best."
)


def intro_text(rec: Recommendation | None) -> str:
    """The intro, with the download sizes and the smallest build's memory need from the planner."""
    if rec is None or rec.smallest is None:
        return INTRO.format(downloads="", memory="")
    sizes = [f.download_bytes for f in rec.fits]
    downloads = f" ({format_gb(min(sizes))} to {format_gb(max(sizes))})"
    memory = (
        f": the smallest build needs about {format_gb(rec.smallest.memory_bytes)} of RAM and GPU "
        "memory together on this machine"
    )
    return INTRO.format(downloads=downloads, memory=memory)


LICENCE_NOTE = (
    "Model files come from Hugging Face and are licensed by Meta under the Llama 4 Community License; "
    "downloading one means accepting it. Nothing is downloaded until you click Download."
)


def _label(object_name: str, text: str = "") -> QLabel:
    """A word-wrapped label styled by ``object_name``."""
    label = QLabel(text)
    label.setObjectName(object_name)
    label.setWordWrap(True)
    return label


def _heading(text: str) -> QLabel:
    label = QLabel(text)
    label.setObjectName("welcomeHeading")
    return label


def _card() -> tuple[QFrame, QVBoxLayout]:
    """A rounded card and its layout."""
    frame = QFrame()
    frame.setObjectName("welcomeCard")
    layout = QVBoxLayout(frame)
    layout.setContentsMargins(16, 12, 16, 12)
    layout.setSpacing(4)
    return frame, layout


class WelcomePage(QWidget):
    """The first-run page.

    Signals:
        download_requested(str): the build id whose "Download" button was clicked.
        open_file_requested(): "I already have a GGUF file…" was clicked.
        server_requested(): "Use a server on another computer…" was clicked.
    """

    download_requested = Signal(str)
    open_file_requested = Signal()
    server_requested = Signal()

    def __init__(
        self,
        models_dir: Path,
        *,
        hardware_probe: HardwareProbe | None = None,
        manifest: Manifest | None = None,
        free_space: Callable[[Path], int | None] = free_disk,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.setObjectName("welcomePage")
        self._models_dir = models_dir
        self._probe = hardware_probe
        self._manifest = manifest
        self._free_space = free_space
        self._recommendation: Recommendation | None = None
        self._selected: BuildFit | None = None
        self._hardware: HardwareInfo | None = None
        self.build_menu = QMenu(self)
        self._build()
        self._apply_local_style()
        self.refresh()

    # -- construction -----------------------------------------------------------------------
    def _build(self) -> None:
        column = QWidget()
        column.setObjectName("welcomeColumn")
        column.setMaximumWidth(CONTENT_WIDTH)
        column.setMinimumWidth(440)  # wrapped labels then need less height: no needless scrollbar
        layout = QVBoxLayout(column)
        layout.setContentsMargins(24, 28, 24, 24)
        layout.setSpacing(10)
        self._build_heading(layout)
        layout.addWidget(self._build_machine_card())
        layout.addWidget(self._build_recommend_card())
        layout.addSpacing(6)
        self._build_buttons(layout)
        self.licence_label = _label("welcomeFine", LICENCE_NOTE)
        layout.addSpacing(4)
        layout.addWidget(self.licence_label)
        layout.addStretch(1)
        self._center_in_scroll_area(column)

    def _build_heading(self, layout: QVBoxLayout) -> None:
        """Logo, title and the intro (its figures are filled in by :meth:`refresh`)."""
        self.logo = QLabel()
        self.logo.setPixmap(theme.app_icon().pixmap(64, 64))
        self.logo.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.title = QLabel("Welcome to Scout Chat")
        self.title.setObjectName("emptyTitle")
        self.title.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.intro = _label("welcomeIntro", intro_text(None))
        layout.addWidget(self.logo)
        layout.addWidget(self.title)
        layout.addSpacing(4)
        layout.addWidget(self.intro)
        layout.addSpacing(6)

    def _build_machine_card(self) -> QFrame:
        """ "This machine": GPUs, RAM and cores, and the free disk space in the models folder."""
        self.machine_card, card = _card()
        card.addWidget(_heading("This machine"))
        self.hardware_label = _label("welcomeHardware")
        self.hardware_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        card.addWidget(self.hardware_label)
        self.disk_label = _label("welcomeDisk")
        card.addWidget(self.disk_label)
        return self.machine_card

    def _build_recommend_card(self) -> QFrame:
        """The recommended (or chosen) build: one sentence and the plan's details."""
        self.recommend_card, rec = _card()
        self.recommend_heading = _heading("Recommended build")
        rec.addWidget(self.recommend_heading)
        self.recommendation_label = _label("welcomeRecommendation")
        rec.addWidget(self.recommendation_label)
        self.detail_label = _label("welcomeDetail")
        rec.addWidget(self.detail_label)
        return self.recommend_card

    def _build_buttons(self, layout: QVBoxLayout) -> None:
        """Download (the selected build) on its own row; "Choose another build…" and "I already
        have a GGUF file…" below it."""
        self.download_button = QPushButton("Download")
        self.download_button.setObjectName("primaryButton")
        self.download_button.setCursor(Qt.CursorShape.PointingHandCursor)
        self.download_button.clicked.connect(self._on_download_button_clicked)
        self.choose_button = QPushButton("Choose another build…")
        self.choose_button.clicked.connect(self._on_choose_button_clicked)
        self.open_button = QPushButton("I already have a GGUF file…")
        self.open_button.clicked.connect(self._on_open_button_clicked)
        self.server_button = QPushButton("Use a server on another computer…")
        self.server_button.setObjectName("serverButton")
        self.server_button.setToolTip(
            "Scout on your workstation or home server (llama-server, vLLM, Ollama, LM Studio): "
            "chat from here, your documents stay here"
        )
        self.server_button.clicked.connect(self._on_server_button_clicked)
        self.server_button.hide()  # shown when this machine is too small for Scout
        first = QHBoxLayout()
        first.addWidget(self.download_button)
        first.addStretch(1)
        layout.addLayout(first)
        others = QHBoxLayout()
        others.setSpacing(8)
        others.addWidget(self.choose_button)
        others.addWidget(self.open_button)
        others.addStretch(1)
        layout.addLayout(others)
        server_row = QHBoxLayout()
        server_row.addWidget(self.server_button)
        server_row.addStretch(1)
        layout.addLayout(server_row)

    def _center_in_scroll_area(self, column: QWidget) -> None:
        """The column, centred, in a frameless scroll area that fills the page."""
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addStretch(1)
        row.addWidget(column, 100)
        row.addStretch(1)
        holder = QWidget()
        holder.setObjectName("welcomeHolder")
        holder.setLayout(row)
        scroll = QScrollArea()
        scroll.setObjectName("welcomeScroll")
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setWidget(holder)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(scroll)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)

    def _apply_local_style(self) -> None:
        c = theme.scheme_colors(theme.is_dark(self.palette()))
        self.setStyleSheet(
            f"""
            #welcomeScroll, #welcomeHolder, #welcomeColumn {{ background: {c["window"]}; }}
            #welcomeIntro {{ color: {c["text"]}; font-size: 14px; }}
            #welcomeCard {{ background: {c["alt_base"]}; border: 1px solid {c["border"]};
                            border-radius: 10px; }}
            #welcomeHeading {{ color: {c["muted"]}; font-weight: 600; font-size: 12px;
                               text-transform: uppercase; }}
            #welcomeHardware, #welcomeRecommendation {{ color: {c["text"]}; }}
            #welcomeDisk, #welcomeDetail, #welcomeFine {{ color: {c["muted"]}; }}
            #welcomeRecommendation[tooSmall="true"] {{ color: {c["danger"]}; }}
            """
        )

    def changeEvent(self, event: QEvent) -> None:
        if event.type() == QEvent.Type.PaletteChange:
            self._apply_local_style()
        super().changeEvent(event)

    # -- public -----------------------------------------------------------------------------
    @property
    def recommendation(self) -> Recommendation | None:
        return self._recommendation

    @property
    def selected_build(self) -> Build | None:
        return self._selected.build if self._selected else None

    @property
    def hardware(self) -> HardwareInfo | None:
        return self._hardware

    def refresh(self) -> None:
        """Probe the hardware, rank the builds and fill the page (fast: no dry run, no I/O but disk)."""
        from app.core.hardware import SystemHardware
        from app.core.manifest import ManifestError, load_manifest

        probe = self._probe or SystemHardware()
        self._hardware = hardware = probe.probe()
        self.hardware_label.setText("\n".join(describe_hardware(hardware)))
        free = self._free_space(self._models_dir)
        self._free_disk = free
        self.disk_label.setText(
            f"Disk: {format_gb(free)} free in {self._models_dir}"
            if free is not None
            else f"Disk: free space in {self._models_dir} unknown"
        )
        if self._manifest is None:
            try:
                self._manifest = load_manifest()
            except (ManifestError, OSError) as exc:
                log.warning("welcome page: manifest unreadable: %s", exc)
                self._show_no_manifest(str(exc))
                return
        self._recommendation = recommend_build(self._manifest, hardware)
        self.intro.setText(intro_text(self._recommendation))
        self._fill_menu()
        pick = self._recommendation.best or self._recommendation.smallest
        self.select_build(pick.build.id if pick else "")

    def select_build(self, build_id: str) -> None:
        """Show ``build_id`` as the build the Download button fetches."""
        rec = self._recommendation
        if rec is None:
            return
        fit = next((f for f in rec.fits if f.build.id == build_id), None)
        self._selected = fit
        too_small = rec.too_small
        self.server_button.setVisible(too_small)
        self.server_button.setObjectName("primaryButton" if too_small else "serverButton")
        self.recommendation_label.setProperty("tooSmall", too_small)
        self.recommendation_label.style().unpolish(self.recommendation_label)
        self.recommendation_label.style().polish(self.recommendation_label)
        if fit is None:
            self.download_button.setEnabled(False)
            self.recommendation_label.setText(rec.summary)
            self.detail_label.clear()
            return
        is_best = rec.best is not None and fit.build.id == rec.best.build.id
        if too_small:
            self.recommend_heading.setText("Not enough memory for Scout")
        else:
            self.recommend_heading.setText("Recommended build" if is_best else "Chosen build")
        if is_best or too_small:
            self.recommendation_label.setText(rec.summary)
        else:
            verdict = fit.fit.label
            speed = f", {fit.plan.forecast.summary}" if fit.fits and fit.plan.forecast.summary else ""
            self.recommendation_label.setText(
                f"{fit.build.display_name}, a {format_gb(fit.download_bytes)} download — "
                f"{verdict} on this machine{speed}."
            )
        detail = [fit.build.who_for + "."]
        if fit.fits:
            detail.append(fit.plan.explanation.split(" (Compute buffer estimated")[0])
        elif not too_small:  # when too small, the summary above already gives the figure
            detail.append(fit.fit.sentence)
        if self._free_disk is not None and self._free_disk < fit.download_bytes:
            detail.append(
                f"Not enough free disk space: it needs {format_gb(fit.download_bytes)}, "
                f"{format_gb(self._free_disk)} is free in the models folder."
            )
        self.detail_label.setText(" ".join(detail))
        anyway = " anyway" if not fit.fits else ""
        self.download_button.setText(
            f"Download {fit.build.display_name} ({format_gb(fit.download_bytes)}){anyway}"
        )
        self.download_button.setObjectName("primaryButton" if fit.fits else "")
        self.download_button.style().unpolish(self.download_button)
        self.download_button.style().polish(self.download_button)
        self.download_button.setMinimumWidth(self.download_button.sizeHint().width())
        self.download_button.setEnabled(True)

    def menu_actions(self) -> list[QAction]:
        return [a for a in self.build_menu.actions() if not a.isSeparator()]

    # -- helpers ----------------------------------------------------------------------------
    def _fill_menu(self) -> None:
        self.build_menu.clear()
        rec = self._recommendation
        if rec is None:
            return
        for fit in sorted(rec.fits, key=lambda f: f.download_bytes):
            verdict = fit.fit.label
            action = self.build_menu.addAction(
                f"{fit.build.display_name} — {format_gb(fit.download_bytes)}, {verdict}"
            )
            action.setData(fit.build.id)
            action.setToolTip(fit.build.who_for)
            action.triggered.connect(self._on_build_menu_action_triggered)

    def _show_no_manifest(self, reason: str) -> None:
        self.recommendation_label.setText(f"The list of Scout builds could not be read: {reason}")
        self.detail_label.clear()
        self.download_button.setEnabled(False)
        self.choose_button.setEnabled(False)

    # -- slots ------------------------------------------------------------------------------
    def _on_download_button_clicked(self) -> None:
        if self._selected is not None:
            self.download_requested.emit(self._selected.build.id)

    def _on_choose_button_clicked(self) -> None:
        self.build_menu.popup(self.choose_button.mapToGlobal(self.choose_button.rect().bottomLeft()))

    def _on_build_menu_action_triggered(self) -> None:
        action = self.sender()
        if isinstance(action, QAction):
            self.select_build(str(action.data()))

    def _on_open_button_clicked(self) -> None:
        self.open_file_requested.emit()

    def _on_server_button_clicked(self) -> None:
        self.server_requested.emit()
