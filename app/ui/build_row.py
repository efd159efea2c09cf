"""One row of the model manager: a build's badges, state, download progress and actions.

:class:`BuildRowWidget` shows what the dialog tells it (state text, visible actions, progress,
message, the planner's fit verdict) and emits ``action_requested`` for its buttons;
:class:`LocalModelRowWidget` does the same for a GGUF already on this computer. The text
helpers format download progress. Sizes are in GB / MB of 10^9 / 10^6 bytes (:mod:`app.core.units`).
"""

from __future__ import annotations

import contextlib
import html
import re
from typing import TYPE_CHECKING

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

from app.core.downloads import Phase
from app.core.forecast import speed_figure
from app.core.manifest import Manifest
from app.core.splits import split_parts
from app.core.units import format_bytes, format_rate

if TYPE_CHECKING:
    from pathlib import Path

    from app.core.downloads import DownloadProgress
    from app.core.fit import Fit
    from app.core.manifest import Build

_URL = re.compile(r"https?://[^\s)]+[^\s).,;]")


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = max(0, int(seconds))
    if seconds < 1:
        return "almost done"
    if seconds < 60:
        return f"{seconds} s left"
    if seconds < 3600:
        return f"{seconds // 60} min left"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min left"


def progress_text(p: DownloadProgress) -> str:
    if p.phase is Phase.RESOLVING:
        return "Checking the files on the Hub…"
    if p.phase is Phase.VERIFYING:
        return f"Verifying {p.file_name}…"
    if p.phase is Phase.REHASHING:
        return f"Checking the data already downloaded ({format_bytes(p.build_done)})…"
    parts = [f"{format_bytes(p.build_done)} of {format_bytes(p.build_total)}"]
    if p.file_count > 1:
        parts.append(f"file {p.file_index + 1} of {p.file_count}")
    parts += [s for s in (format_rate(p.speed_bps), format_eta(p.eta_s)) if s]
    return " · ".join(parts)


def linkify(text: str) -> str:
    """Plain text to rich text with clickable URLs."""
    out, last = [], 0
    for m in _URL.finditer(text):
        out.append(html.escape(text[last : m.start()]))
        url = m.group(0)
        out.append(f'<a href="{html.escape(url)}">{html.escape(url)}</a>')
        last = m.end()
    out.append(html.escape(text[last:]))
    return "".join(out)


def _badge(text: str, kind: str) -> QLabel:
    label = QLabel(text)
    label.setObjectName("modelBadge")
    label.setProperty("kind", kind)
    return label


class BuildRowWidget(QFrame):
    """One build: description, badges, state, progress and actions.

    Signals:
        action_requested(str build_id, str action): download, pause, resume, cancel, delete,
            reveal, use, redownload.
    """

    action_requested = Signal(str, str)

    ACTIONS = (
        ("download", "Download"),
        ("pause", "Pause"),
        ("resume", "Resume"),
        ("cancel", "Cancel"),
        ("redownload", "Re-download"),
        ("use", "Use this model"),
        ("reveal", "Show folder"),
        ("delete", "Delete"),
    )

    def __init__(self, build: Build, custom: bool, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.build = build
        self.setObjectName("modelRow")
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.name_label = _title_label(build.display_name)
        self.state_label = QLabel()
        self.state_label.setObjectName("modelState")
        self.state_label.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        top = QHBoxLayout()
        top.setSpacing(6)
        top.addWidget(self.name_label, 1)
        top.addWidget(self.state_label)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(12, 10, 12, 10)
        layout.setSpacing(4)
        layout.addLayout(top)
        layout.addLayout(self._build_badges(build, custom))
        self._build_texts(build)
        layout.addWidget(self.who_label)
        layout.addWidget(self.licence_label)
        self._build_progress()
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.progress_label)
        layout.addWidget(self.message_label)
        layout.addLayout(self._build_actions())

    def _build_badges(self, build: Build, custom: bool) -> QHBoxLayout:
        """Quantization, bits per weight, size, vision and the fit badge (filled by :meth:`set_fit`)."""
        size = Manifest.total_size(build)
        if custom:
            size_text = "size known at download"
        elif size is not None:
            size_text = format_bytes(size)
        else:
            size_text = f"≈ {format_bytes(Manifest.estimated_size(build))}"
        self.quant_badge = _badge(build.quantization, "quant")
        self.bits_badge = _badge("" if custom else f"{build.bits_per_weight:.2f} bits/weight", "info")
        self.bits_badge.setVisible(not custom)
        self.size_badge = _badge(size_text, "info")
        self.size_badge.setToolTip(
            "Model files plus the vision projector" + ("" if size is not None else " (estimated)")
        )
        self.vision_badge = _badge("vision", "vision")
        self.vision_badge.setToolTip("Comes with a vision projector: you can attach images")
        self.vision_badge.setVisible(build.projector is not None)
        self.fit_badge = _badge("", "fit")
        self.speed_badge = _badge("", "info")  # the forecast here (filled by set_fit)
        self.speed_badge.hide()
        badges = QHBoxLayout()
        badges.setSpacing(6)
        for badge in (self.quant_badge, self.bits_badge, self.size_badge, self.vision_badge, self.fit_badge,
                      self.speed_badge):  # fmt: skip
            badges.addWidget(badge)
        badges.addStretch(1)
        return badges

    def _build_texts(self, build: Build) -> None:
        """Who the build is for, and its licence (linked; "Gated." first when it is)."""
        self.who_label = QLabel(build.who_for)
        self.who_label.setWordWrap(True)
        lic = build.licence
        link = f'<a href="{html.escape(lic.url)}">{html.escape(lic.name)}</a>'
        note = html.escape(lic.note)
        note = note.replace(html.escape(lic.name), link, 1) if lic.name in lic.note else f"{link}. {note}"
        self.licence_label = QLabel(("<b>Gated.</b> " if build.gated else "") + note)
        self.licence_label.setObjectName("mutedLabel")
        self.licence_label.setWordWrap(True)
        self.licence_label.setOpenExternalLinks(True)
        self.licence_label.setTextFormat(Qt.TextFormat.RichText)

    def _build_progress(self) -> None:
        """The progress bar and its line, and the error message (all hidden until needed)."""
        self.progress_bar = QProgressBar()
        self.progress_bar.setObjectName("downloadProgress")
        self.progress_bar.setRange(0, 1000)
        self.progress_bar.setTextVisible(False)
        self.progress_bar.setFixedHeight(8)
        self.progress_label = QLabel()
        self.progress_label.setObjectName("progressLabel")
        self.message_label = QLabel()
        self.message_label.setObjectName("rowMessage")
        self.message_label.setWordWrap(True)
        self.message_label.setOpenExternalLinks(True)
        self.message_label.setTextFormat(Qt.TextFormat.RichText)
        self.message_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextBrowserInteraction)
        for widget in (self.progress_bar, self.progress_label, self.message_label):
            widget.hide()

    def _build_actions(self) -> QHBoxLayout:
        """One button per action, right-aligned; :meth:`set_state` shows the ones that apply."""
        self.buttons: dict[str, QPushButton] = {}
        actions = QHBoxLayout()
        actions.setSpacing(6)
        actions.addStretch(1)
        for action, text in self.ACTIONS:
            button = QPushButton(text)
            button.setObjectName(f"{action}Button")
            button.setProperty("action", action)
            button.clicked.connect(self._on_button_clicked)
            if action in ("download", "resume", "use"):
                button.setProperty("primary", True)
            self.buttons[action] = button
            actions.addWidget(button)
        return actions

    def _on_button_clicked(self) -> None:
        button = self.sender()
        if isinstance(button, QPushButton):
            self.action_requested.emit(self.build.id, str(button.property("action")))

    def set_fit(self, fit: Fit, from_file: bool) -> None:
        """The planner's verdict for this machine; ``from_file``: planned from the GGUF on disk
        (else from the manifest's figures for Scout's shape)."""
        self.fit_badge.setText(fit.label)
        self.fit_badge.setProperty("verdict", fit.verdict)
        basis = "Planned from the file's header: " if from_file else "Planned from the manifest's figures: "
        self.fit_badge.setToolTip(basis + fit.plan.explanation)
        _restyle(self.fit_badge)
        forecast = fit.plan.forecast
        self.speed_badge.setVisible(fit.fits and forecast.tokens_per_s > 0)
        self.speed_badge.setText(f"≈ {speed_figure(forecast.tokens_per_s)} tok/s here")
        measured = "" if forecast.measured else " (assumed figures until a model is first loaded)"
        self.speed_badge.setToolTip(f"Forecast for this computer: {forecast.summary}{measured}")

    def set_progress(self, progress: DownloadProgress | None) -> None:
        if progress is None:
            self.progress_bar.hide()
            self.progress_label.hide()
            return
        total = max(progress.build_total, 1)
        self.progress_bar.setValue(int(1000 * progress.build_done / total) if progress.build_total else 0)
        self.progress_label.setText(progress_text(progress))
        self.progress_bar.show()
        self.progress_label.show()

    def set_message(self, message: str) -> None:
        self.message_label.setText(linkify(message))
        self.message_label.setVisible(bool(message))

    def set_state(self, text: str, visible_actions: set[str]) -> None:
        self.state_label.setText(text)
        for action, button in self.buttons.items():
            button.setVisible(action in visible_actions)


def _restyle(widget: QWidget) -> None:
    style = widget.style()
    style.unpolish(widget)
    style.polish(widget)


class LocalModelRowWidget(QFrame):
    """A GGUF on this computer that is not a catalog download: one in the models folder or a
    recently opened file. Name, where it is, size, vision and the planner's fit, and "Use this model".

    Signals:
        action_requested(str path, str action): use, reveal.
    """

    action_requested = Signal(str, str)

    def __init__(self, path: Path, projector: Path | None, where: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.path = path
        self.setObjectName("modelRow")
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.name_label = _title_label(path.name)
        self.state_label = QLabel(where)
        self.state_label.setObjectName("modelState")
        self.state_label.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        top = QHBoxLayout()
        top.setSpacing(6)
        top.addWidget(self.name_label, 1)
        top.addWidget(self.state_label)
        self.path_label = QLabel(str(path.parent))
        self.path_label.setObjectName("mutedLabel")
        self.path_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.path_label.setToolTip(str(path))
        self.size_badge = _badge(format_bytes(_size_on_disk(path, projector)), "info")
        self.size_badge.setToolTip("Model file" + (" plus its vision projector" if projector else ""))
        self.vision_badge = _badge("vision", "vision")
        self.vision_badge.setToolTip(f"Vision projector beside it: {projector.name}" if projector else "")
        self.vision_badge.setVisible(projector is not None)
        self.fit_badge = _badge("", "fit")
        self.fit_badge.hide()
        badges = QHBoxLayout()
        badges.setSpacing(6)
        for badge in (self.size_badge, self.vision_badge, self.fit_badge):
            badges.addWidget(badge)
        badges.addStretch(1)
        self.message_label = QLabel()
        self.message_label.setObjectName("mutedLabel")
        self.message_label.setWordWrap(True)
        self.message_label.hide()
        self.use_button = QPushButton("Use this model")
        self.use_button.setObjectName("useButton")
        self.use_button.setProperty("primary", True)
        self.use_button.clicked.connect(self._on_use_button_clicked)
        self.reveal_button = QPushButton("Show folder")
        self.reveal_button.setObjectName("revealButton")
        self.reveal_button.clicked.connect(self._on_reveal_button_clicked)
        actions = QHBoxLayout()
        actions.setSpacing(6)
        actions.addStretch(1)
        actions.addWidget(self.use_button)
        actions.addWidget(self.reveal_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(12, 10, 12, 10)
        layout.setSpacing(4)
        layout.addLayout(top)
        layout.addWidget(self.path_label)
        layout.addLayout(badges)
        layout.addWidget(self.message_label)
        layout.addLayout(actions)

    def set_fit(self, fit: Fit | None, problem: str = "") -> None:
        """The planner's verdict from the file's header, or why there is none."""
        self.fit_badge.setVisible(fit is not None)
        if fit is not None:
            self.fit_badge.setText(fit.label)
            self.fit_badge.setProperty("verdict", fit.verdict)
            self.fit_badge.setToolTip("Planned from the file's header: " + fit.plan.explanation)
            _restyle(self.fit_badge)
        self.message_label.setText(problem)
        self.message_label.setVisible(bool(problem))

    def set_current(self, current: bool, where: str) -> None:
        """Whether this is the model loaded now (its "Use" button then has nothing to do)."""
        self.state_label.setText("Loaded" if current else where)
        self.use_button.setEnabled(not current)

    def _on_use_button_clicked(self) -> None:
        self.action_requested.emit(str(self.path), "use")

    def _on_reveal_button_clicked(self) -> None:
        self.action_requested.emit(str(self.path), "reveal")


def _size_on_disk(model: Path, projector: Path | None) -> int:
    total = 0
    for part in (*split_parts(model), *([projector] if projector else [])):
        with contextlib.suppress(OSError):
            total += part.stat().st_size
    return total


def _title_label(text: str) -> QLabel:
    """A model card's name: bold, a point larger than the text around it."""
    label = QLabel(text)
    label.setObjectName("modelName")
    font = label.font()
    font.setBold(True)
    font.setPointSizeF(font.pointSizeF() + 1)
    label.setFont(font)
    return label
