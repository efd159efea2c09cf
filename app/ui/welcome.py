"""First run: what Scout is, what this machine has, which build to get, and the three ways on.

Shown by the main window in place of the chat while no model is installed or loaded. It reads the
hardware through an injectable probe (tests pass ``SimulatedHardware``) and ranks the manifest's
builds with the planner (:func:`app.diagnostics.recommend_build`); nothing is downloaded until the
user clicks "Download".
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

from app.diagnostics import GB, Recommendation, free_disk, recommend_build
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
    "It needs a one-time download of one quantized model file (34 to 68 GB) and enough memory to hold "
    "it, about 40 GB or more of RAM and GPU memory together. "
    "Below is what this machine has and the build that suits it best."
)
LICENCE_NOTE = (
    "Model files come from Hugging Face and are licensed by Meta under the Llama 4 Community License; "
    "downloading one means accepting it. Nothing is downloaded until you click Download."
)


def _gb(n_bytes: float) -> str:
    return f"{n_bytes / GB:.1f} GB"


def hardware_lines(hardware: HardwareInfo) -> list[str]:
    """One line per GPU (free memory), then RAM: what the welcome page shows."""
    lines = []
    for d in hardware.devices:
        shared = " (shared with the CPU)" if d.unified else ""
        lines.append(f"{d.label}: {_gb(d.free_bytes)} free of {_gb(d.total_bytes)}{shared}")
    if not hardware.devices:
        lines.append("No GPU that llama.cpp can use: Scout would run on the CPU only")
    lines.append(
        f"RAM: {_gb(hardware.ram_available_bytes)} available of {_gb(hardware.ram_total_bytes)}"
        f" · {hardware.physical_cores} CPU cores"
    )
    return lines


class WelcomePage(QWidget):
    """The first-run page.

    Signals:
        download_requested(str): the build id whose "Download" button was clicked.
        open_file_requested(): "I already have a GGUF file…" was clicked.
    """

    download_requested = Signal(str)
    open_file_requested = Signal()

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

        self.logo = QLabel()
        self.logo.setPixmap(theme.app_icon().pixmap(64, 64))
        self.logo.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.title = QLabel("Welcome to Scout Chat")
        self.title.setObjectName("emptyTitle")
        self.title.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.intro = QLabel(INTRO)
        self.intro.setObjectName("welcomeIntro")
        self.intro.setWordWrap(True)
        layout.addWidget(self.logo)
        layout.addWidget(self.title)
        layout.addSpacing(4)
        layout.addWidget(self.intro)
        layout.addSpacing(6)

        self.machine_card = QFrame()
        self.machine_card.setObjectName("welcomeCard")
        card = QVBoxLayout(self.machine_card)
        card.setContentsMargins(16, 12, 16, 12)
        card.setSpacing(4)
        heading = QLabel("This machine")
        heading.setObjectName("welcomeHeading")
        card.addWidget(heading)
        self.hardware_label = QLabel()
        self.hardware_label.setObjectName("welcomeHardware")
        self.hardware_label.setWordWrap(True)
        self.hardware_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        card.addWidget(self.hardware_label)
        self.disk_label = QLabel()
        self.disk_label.setObjectName("welcomeDisk")
        self.disk_label.setWordWrap(True)
        card.addWidget(self.disk_label)
        layout.addWidget(self.machine_card)

        self.recommend_card = QFrame()
        self.recommend_card.setObjectName("welcomeCard")
        rec = QVBoxLayout(self.recommend_card)
        rec.setContentsMargins(16, 12, 16, 12)
        rec.setSpacing(4)
        self.recommend_heading = QLabel("Recommended build")
        self.recommend_heading.setObjectName("welcomeHeading")
        rec.addWidget(self.recommend_heading)
        self.recommendation_label = QLabel()
        self.recommendation_label.setObjectName("welcomeRecommendation")
        self.recommendation_label.setWordWrap(True)
        rec.addWidget(self.recommendation_label)
        self.detail_label = QLabel()
        self.detail_label.setObjectName("welcomeDetail")
        self.detail_label.setWordWrap(True)
        rec.addWidget(self.detail_label)
        layout.addWidget(self.recommend_card)
        layout.addSpacing(6)

        self.download_button = QPushButton("Download")
        self.download_button.setObjectName("primaryButton")
        self.download_button.setCursor(Qt.CursorShape.PointingHandCursor)
        self.download_button.clicked.connect(self._on_download_button_clicked)
        self.choose_button = QPushButton("Choose another build…")
        self.choose_button.clicked.connect(self._on_choose_button_clicked)
        self.open_button = QPushButton("I already have a GGUF file…")
        self.open_button.clicked.connect(self._on_open_button_clicked)
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

        self.licence_label = QLabel(LICENCE_NOTE)
        self.licence_label.setObjectName("welcomeFine")
        self.licence_label.setWordWrap(True)
        layout.addSpacing(4)
        layout.addWidget(self.licence_label)
        layout.addStretch(1)

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
        self.hardware_label.setText("\n".join(hardware_lines(hardware)))
        free = self._free_space(self._models_dir)
        self._free_disk = free
        self.disk_label.setText(
            f"Disk: {_gb(free)} free in {self._models_dir}"
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
        self._fill_menu()
        rec = self._recommendation
        self.select_build((rec.best or rec.smallest).build.id if (rec.best or rec.smallest) else "")

    def select_build(self, build_id: str) -> None:
        """Show ``build_id`` as the build the Download button fetches."""
        rec = self._recommendation
        if rec is None:
            return
        fit = next((f for f in rec.fits if f.build.id == build_id), None)
        self._selected = fit
        too_small = rec.too_small
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
            verdict = fit.plan.verdict if fit.fits else fit.plan.fits_text
            self.recommendation_label.setText(
                f"{fit.build.display_name}, a {_gb(fit.download_bytes)} download — {verdict} on this machine."
            )
        detail = [fit.build.who_for + "."]
        if fit.fits:
            detail.append(fit.plan.explanation.split(" (Compute buffer estimated")[0])
        if self._free_disk is not None and self._free_disk < fit.download_bytes:
            detail.append(
                f"Not enough free disk space: it needs {_gb(fit.download_bytes)}, "
                f"{_gb(self._free_disk)} is free in the models folder."
            )
        self.detail_label.setText(" ".join(detail))
        anyway = " anyway" if not fit.fits else ""
        self.download_button.setText(f"Download {fit.build.display_name} ({_gb(fit.download_bytes)}){anyway}")
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
            verdict = fit.plan.verdict if fit.fits else "won't fit"
            action = self.build_menu.addAction(
                f"{fit.build.display_name} — {_gb(fit.download_bytes)}, {verdict}"
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
