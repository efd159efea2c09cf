"""The model manager: the catalog of Scout builds, their downloads, and what fits this machine.

Over ~600 lines: the dialog and its download wiring (the rows themselves are in
:mod:`app.ui.build_row`); the catalog and the "On this computer" section share its state.

A non-modal :class:`ModelManagerDialog` over a :class:`~app.workers.downloads.DownloadController`:
one card per build, grouped by repository, with size, bits per weight, a vision badge, the state on
disk (installed / partial N % / not installed / corrupt), a fit badge for this machine, the
"who is this for" line and the licence note, per-row actions and a progress bar while downloading.
Questions (keep the partial data? delete? re-download?) and file pickers are attributes so tests
can replace them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import QEvent, QSize, Qt, QUrl, Signal
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from app.core.downloads import BuildState
from app.core.fit import assess_build, assess_file
from app.core.gguf_info import find_projector
from app.core.hardware import describe_hardware
from app.core.manifest import Manifest, ManifestError
from app.core.planner import VERDICT_CPU, VERDICT_FULL, VERDICT_NO, VERDICT_SPLIT
from app.core.units import format_bytes, format_rate
from app.ui import theme
from app.ui.build_row import BuildRowWidget, LocalModelRowWidget, format_eta, linkify
from app.ui.plan_widgets import colors as plan_colors
from app.workers import downloads as dl

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from app.core.downloads import DownloadProgress, InstalledBuild
    from app.core.fit import Fit
    from app.core.hardware import HardwareInfo, HardwareProbe
    from app.core.manifest import Build
    from app.workers.downloads import DownloadController

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- questions (injectable)


def ask_keep_partial(parent: QWidget, build_name: str) -> bool | None:
    """True: keep the downloaded part for later; False: delete it; None: don't cancel."""
    box = QMessageBox(parent)
    box.setIcon(QMessageBox.Icon.Question)
    box.setWindowTitle("Cancel download")
    box.setText(f"Cancel the download of {build_name}?")
    box.setInformativeText("Keep the downloaded part for later? A later download continues from it.")
    keep = box.addButton("Keep for later", QMessageBox.ButtonRole.YesRole)
    delete = box.addButton("Delete it", QMessageBox.ButtonRole.DestructiveRole)
    box.addButton("Don't cancel", QMessageBox.ButtonRole.RejectRole)
    box.setDefaultButton(keep)
    box.exec()
    clicked = box.clickedButton()
    return True if clicked is keep else False if clicked is delete else None


def confirm(parent: QWidget, title: str, text: str) -> bool:
    answer = QMessageBox.question(
        parent, title, text, QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No
    )
    return answer == QMessageBox.StandardButton.Yes


def choose_gguf_file(parent: QWidget, start_dir: str) -> str:
    path, _filter = QFileDialog.getOpenFileName(
        parent, "Add a GGUF file", start_dir, "GGUF models (*.gguf);;All files (*)"
    )
    return path


class HuggingFaceSourceDialog(QDialog):
    """Asks for a repo id, a file (the first part of a split model brings the others) and a projector."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Add from Hugging Face")
        self.repo_edit = QLineEdit()
        self.repo_edit.setPlaceholderText("owner/name, e.g. unsloth/Llama-4-Scout-17B-16E-Instruct-GGUF")
        self.file_edit = QLineEdit()
        self.file_edit.setPlaceholderText("path/in/repo/model-Q4_K_M-00001-of-00002.gguf")
        self.projector_edit = QLineEdit()
        self.projector_edit.setPlaceholderText("optional: mmproj-…-f16.gguf")
        form = QFormLayout()
        form.addRow("Repository", self.repo_edit)
        form.addRow("GGUF file", self.file_edit)
        form.addRow("Vision projector", self.projector_edit)
        hint = QLabel("For a split model, give the first part: the other parts are added automatically.")
        hint.setWordWrap(True)
        hint.setObjectName("mutedLabel")
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(hint)
        layout.addWidget(buttons)
        self.resize(560, self.sizeHint().height())


def ask_hf_source(parent: QWidget) -> tuple[str, str, str] | None:
    dialog = HuggingFaceSourceDialog(parent)
    if dialog.exec() != QDialog.DialogCode.Accepted:
        return None
    return dialog.repo_edit.text(), dialog.file_edit.text(), dialog.projector_edit.text()


# --------------------------------------------------------------------------- the dialog


class ModelManagerDialog(QDialog):
    """Browse, download and manage Scout builds (non-modal).

    ``hardware_probe`` gives the machine's memory for the fit badges (tests inject a simulated one);
    ``ask_keep_partial``, ``confirm``, ``choose_gguf_file``, ``ask_hf_source`` and ``open_url`` are
    replaceable attributes (tests answer the questions without message boxes).

    Signals:
        load_requested(str path): load this model (the first shard of a split model).
    """

    load_requested = Signal(str)

    def __init__(
        self,
        downloads: DownloadController,
        parent: QWidget | None = None,
        *,
        hardware_probe: HardwareProbe | None = None,
    ) -> None:
        super().__init__(parent)
        self.downloads = downloads
        self.ask_keep_partial: Callable[[QWidget, str], bool | None] = ask_keep_partial
        self.confirm: Callable[[QWidget, str, str], bool] = confirm
        self.choose_gguf_file: Callable[[QWidget, str], str] = choose_gguf_file
        self.ask_hf_source: Callable[[QWidget], tuple[str, str, str] | None] = ask_hf_source
        self.open_url: Callable[[QUrl], bool] = QDesktopServices.openUrl
        self._probe = hardware_probe
        self._hardware: HardwareInfo | None = None
        self._fits: dict[str, tuple[Fit, bool] | None] = {}
        self.rows: dict[str, BuildRowWidget] = {}
        self.local_rows: dict[str, LocalModelRowWidget] = {}
        self._local_fits: dict[tuple[str, int], tuple[Fit | None, str]] = {}
        self._recent: tuple[str, ...] = ()
        self._current_model = ""
        self._restyling = False
        self._styled_dark: bool | None = None
        self.setWindowTitle("Models")
        self.setObjectName("modelManager")
        self.setModal(False)
        self.setMinimumSize(QSize(760, 520))
        self.resize(980, 720)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(16, 14, 16, 12)
        layout.setSpacing(10)
        intro = QLabel(
            "Download a Llama 4 Scout build, or use a GGUF file you already have. Fit badges are the "
            "planner's verdict for this machine's free memory."
        )
        intro.setWordWrap(True)
        layout.addWidget(intro)
        layout.addLayout(self._build_token_row())
        self.hardware_label = QLabel()
        self.hardware_label.setObjectName("mutedLabel")
        self.hardware_label.setWordWrap(True)
        layout.addWidget(self.hardware_label)
        self.banner = QLabel()
        self.banner.setObjectName("managerBanner")
        self.banner.setWordWrap(True)
        self.banner.setOpenExternalLinks(True)
        self.banner.setTextFormat(Qt.TextFormat.RichText)
        self.banner.setTextInteractionFlags(Qt.TextInteractionFlag.TextBrowserInteraction)
        self.banner.hide()
        layout.addWidget(self.banner)
        layout.addWidget(self._build_rows_area(), 1)
        layout.addLayout(self._build_footer())
        self._apply_style()

        for build in downloads.builds():
            self._add_row(build)
        downloads.progress_changed.connect(self._on_downloads_progress_changed)
        downloads.state_changed.connect(self._on_downloads_state_changed)
        downloads.download_failed.connect(self._on_downloads_download_failed)
        downloads.download_finished.connect(self._on_downloads_download_finished)
        downloads.queue_changed.connect(self._on_downloads_queue_changed)
        self.refresh()

    def _build_token_row(self) -> QHBoxLayout:
        """The Hugging Face token field and the two ways to add a model outside the catalog."""
        self.token_edit = QLineEdit()
        self.token_edit.setObjectName("tokenEdit")
        self.token_edit.setEchoMode(QLineEdit.EchoMode.Password)
        self.token_edit.setPlaceholderText(
            "Hugging Face token (only needed for gated models)"
            if not self.downloads.has_token()
            else "A token is saved; paste a new one to replace it"
        )
        self.token_edit.setClearButtonEnabled(True)
        self.token_edit.returnPressed.connect(self._on_save_token_button_clicked)
        self.save_token_button = QPushButton("Save token")
        self.save_token_button.clicked.connect(self._on_save_token_button_clicked)
        self.add_file_button = QPushButton("Add a GGUF file…")
        self.add_file_button.clicked.connect(self._on_add_file_button_clicked)
        self.add_hf_button = QPushButton("Add from Hugging Face…")
        self.add_hf_button.clicked.connect(self._on_add_hf_button_clicked)
        token_row = QHBoxLayout()
        token_row.addWidget(QLabel("Token"))
        token_row.addWidget(self.token_edit, 1)
        token_row.addWidget(self.save_token_button)
        token_row.addSpacing(12)
        token_row.addWidget(self.add_file_button)
        token_row.addWidget(self.add_hf_button)
        return token_row

    def _build_rows_area(self) -> QScrollArea:
        """The scrolling column of build rows (section headers are added with the rows)."""
        self.rows_widget = QWidget()
        self.rows_widget.setObjectName("modelRows")
        self.rows_layout = QVBoxLayout(self.rows_widget)
        self.rows_layout.setContentsMargins(0, 0, 8, 0)
        self.rows_layout.setSpacing(8)
        self.local_box = QWidget()
        self.local_box.setObjectName("localModels")
        self.local_layout = QVBoxLayout(self.local_box)
        self.local_layout.setContentsMargins(0, 0, 0, 0)
        self.local_layout.setSpacing(8)
        self.local_box.hide()
        self.rows_layout.addWidget(self.local_box)
        self.rows_layout.addStretch(1)
        self.rows_scroll = QScrollArea()
        self.rows_scroll.setWidgetResizable(True)
        self.rows_scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.rows_scroll.setFrameShape(QFrame.Shape.NoFrame)
        self.rows_scroll.setWidget(self.rows_widget)
        self._section_labels: dict[str, QLabel] = {}
        return self.rows_scroll

    def _build_footer(self) -> QHBoxLayout:
        """The overall download line and bar, and Close."""
        self.total_label = QLabel()
        self.total_label.setObjectName("totalLabel")
        self.total_progress = QProgressBar()
        self.total_progress.setObjectName("downloadProgress")
        self.total_progress.setRange(0, 1000)
        self.total_progress.setTextVisible(False)
        self.total_progress.setFixedSize(QSize(160, 8))
        self.total_progress.hide()
        close = QPushButton("Close")
        close.clicked.connect(self.close)
        footer = QHBoxLayout()
        footer.addWidget(self.total_label, 1)
        footer.addWidget(self.total_progress)
        footer.addSpacing(12)
        footer.addWidget(close)
        return footer

    # -- public -----------------------------------------------------------------------------
    def hardware(self) -> HardwareInfo:
        if self._hardware is None:
            if self._probe is None:
                from app.core.hardware import SystemHardware

                self._probe = SystemHardware()
            self._hardware = self._probe.probe()
        return self._hardware

    def refresh(self) -> None:
        """Re-read every row's state from the controller and the disk."""
        self.hardware_label.setText(
            f"This machine: {'; '.join(describe_hardware(self.hardware()))}. Builds not downloaded yet "
            "are planned from the manifest's figures."
        )
        for build_id in self.rows:
            self._refresh_row(build_id)
        self._refresh_local()
        self._update_total()

    def set_recent_models(self, recent: Sequence[str], current: str = "") -> None:
        """The recently opened model files (most recent first) and the one loaded now: the
        "On this computer" section lists them with the models folder's own GGUFs."""
        self._recent = tuple(recent)
        self._current_model = current
        self._refresh_local()
        self._update_total()

    def show_banner(self, message: str) -> None:
        self.banner.setText(linkify(message))
        self.banner.setVisible(bool(message))

    def row_state_text(self, build_id: str) -> str:
        return self.rows[build_id].state_label.text()

    # -- rows -------------------------------------------------------------------------------
    def _add_row(self, build: Build) -> BuildRowWidget:
        section = "Your additions" if self.downloads.is_custom(build.id) else build.repo_id
        if section not in self._section_labels:
            label = QLabel(section)
            label.setObjectName("sectionHeader")
            font = label.font()
            font.setBold(True)
            label.setFont(font)
            self._section_labels[section] = label
            self.rows_layout.insertWidget(self.rows_layout.count() - 1, label)
            insert_at = self.rows_layout.count() - 1
        else:
            # after the last row of this section
            insert_at = self.rows_layout.indexOf(self._section_labels[section]) + 1
            while insert_at < self.rows_layout.count() - 1:
                item = self.rows_layout.itemAt(insert_at)
                widget = item.widget() if item is not None else None
                if not isinstance(widget, BuildRowWidget):
                    break
                insert_at += 1
        row = BuildRowWidget(build, self.downloads.is_custom(build.id))
        row.action_requested.connect(self._on_row_action_requested)
        self.rows_layout.insertWidget(insert_at, row)
        self.rows[build.id] = row
        return row

    def _fit_for(self, build: Build, installed: InstalledBuild | None) -> tuple[Fit, bool] | None:
        """The planner's fit (and whether it was planned from the file) for a row; cached per
        build. A file the planner cannot read falls back to the manifest's figures (None for a
        build of the user's own, which has none)."""
        cached = self._fits.get(build.id)
        if cached is not None and cached[1] == (installed is not None):
            return cached
        hw = self.hardware()
        found: tuple[Fit, bool] | None = None
        if installed is not None:
            try:
                found = assess_file(installed.model_path, hw, installed.projector), True
            except Exception as exc:  # noqa: BLE001 - any unreadable file: plan from the manifest
                log.info("no plan for %s: %s", installed.model_path.name, exc)
        if found is None and not self.downloads.is_custom(build.id):
            found = assess_build(build, hw), False
        self._fits[build.id] = found
        return found

    def _refresh_row(self, build_id: str) -> None:
        row = self.rows[build_id]
        build = row.build
        c = self.downloads
        live = c.live_state(build_id)
        installed = c.installed(build_id)
        disk = BuildState.INSTALLED if installed is not None else c.disk_state(build_id)
        custom = c.is_custom(build_id)
        fit = self._fit_for(build, installed)
        row.fit_badge.setVisible(fit is not None)
        if fit is not None:
            row.set_fit(*fit)
        actions: set[str] = set()
        if live in (dl.QUEUED, dl.RESOLVING, dl.DOWNLOADING, dl.VERIFYING) and c.is_active(build_id):
            progress = c.progress(build_id)
            text = {
                dl.QUEUED: "Queued",
                dl.RESOLVING: "Checking…",
                dl.DOWNLOADING: "Downloading",
                dl.VERIFYING: "Verifying…",
            }[live]
            if live == dl.DOWNLOADING and progress is not None and progress.build_total:
                text = f"Downloading {100 * progress.build_done // progress.build_total}%"
            actions = {"pause", "cancel"}
            row.set_progress(progress if live != dl.QUEUED else None)
        else:
            row.set_progress(None)
            if disk is BuildState.INSTALLED:
                text = "Installed"
                actions = {"use", "reveal", "delete"}
            elif disk is BuildState.CORRUPT:
                text = "Corrupt: failed verification"
                actions = {"redownload", "reveal", "delete"}
            elif disk is BuildState.PARTIAL:
                done = c.partial_bytes(build_id)
                total = Manifest.total_size(build) or Manifest.estimated_size(build)
                pct = min(99, 100 * done // total) if total > 1 else 0
                text = f"Paused: partial {pct}%" if live == dl.PAUSED else f"Partial {pct}%"
                if custom:
                    text = f"{'Paused: partial' if live == dl.PAUSED else 'Partial'} {format_bytes(done)}"
                actions = {"resume", "cancel", "reveal", "delete"}
            else:
                text = "Not installed"
                actions = {"download"}
            if live == dl.FAILED and disk is not BuildState.INSTALLED:
                text = "Failed" if disk is not BuildState.CORRUPT else text
        row.buttons["resume"].setText("Retry" if live == dl.FAILED else "Resume")
        row.set_state(text, actions)
        message = c.last_message(build_id) if live == dl.FAILED or disk is BuildState.CORRUPT else ""
        row.set_message(message)

    def _update_total(self) -> None:
        c = self.downloads
        queued = c.queued()
        running = c.running()
        progress = c.progress(running) if running else None
        if not queued:
            self.total_label.setText(self._installed_summary())
            self.total_progress.hide()
            return
        waiting = len(queued) - (1 if running else 0)
        parts = []
        if running is not None:
            parts.append(f"Downloading {c.build(running).display_name}")
            if progress is not None and progress.build_total:
                parts.append(f"{format_bytes(progress.build_done)} of {format_bytes(progress.build_total)}")
                parts += [s for s in (format_rate(progress.speed_bps), format_eta(progress.eta_s)) if s]
                self.total_progress.setValue(int(1000 * progress.build_done / progress.build_total))
                self.total_progress.show()
        if waiting:
            parts.append(f"{waiting} more queued")
        self.total_label.setText(" · ".join(parts))

    def _installed_summary(self) -> str:
        installed = [b for b in self.rows if self.downloads.installed(b) is not None]
        local = len(self.local_rows)
        on_disk = f"{local} other model{'s' if local != 1 else ''} on this computer." if local else ""
        if not installed:
            return f"No build downloaded yet; {on_disk}" if local else "No build downloaded yet."
        return f"{len(installed)} installed. {on_disk}".strip()

    # -- models on this computer --------------------------------------------------------------
    def local_models(self) -> list[tuple[Path, str]]:
        """GGUF models on this computer outside the catalog's downloads: recently opened files
        that still exist (most recent first), then the models folder's own, with where each is."""
        from app.diagnostics import installed_models

        c = self.downloads
        claimed = [c.build_dir(b.id).resolve() for b in c.builds()]
        recent = [Path(p) for p in self._recent]
        found = installed_models(c.models_dir, None, extra=recent, with_plans=False)
        recent_keys = [str(p.resolve()) for p in recent]
        out: list[tuple[int, str, Path, str]] = []
        for entry in found:
            path = entry.path.resolve()
            if any(path.is_relative_to(folder) for folder in claimed):
                continue  # a catalog build: it has its own card
            key = str(path)
            if key in recent_keys:
                out.append((recent_keys.index(key), "", entry.path, "Recently used"))
            else:
                out.append((len(recent_keys), entry.path.name.lower(), entry.path, "In the models folder"))
        out.sort(key=lambda item: (item[0], item[1]))
        return [(path, where) for _rank, _name, path, where in out]

    def _refresh_local(self) -> None:
        """Rebuild the "On this computer" section (a header and one card per model)."""
        while self.local_layout.count():
            item = self.local_layout.takeAt(0)
            widget = item.widget() if item is not None else None
            if widget is not None:
                widget.deleteLater()
        self.local_rows = {}
        models = self.local_models()
        self.local_box.setVisible(bool(models))
        if not models:
            return
        header = QLabel("On this computer")
        header.setObjectName("sectionHeader")
        font = header.font()
        font.setBold(True)
        header.setFont(font)
        self.local_layout.addWidget(header)
        current = str(Path(self._current_model).resolve()) if self._current_model else ""
        for path, where in models:
            projector = find_projector(path)
            row = LocalModelRowWidget(path, projector, where)
            row.set_fit(*self._local_fit(path, projector))
            row.set_current(str(path.resolve()) == current, where)
            row.action_requested.connect(self._on_local_row_action_requested)
            self.local_layout.addWidget(row)
            self.local_rows[str(path)] = row

    def _local_fit(self, path: Path, projector: Path | None) -> tuple[Fit | None, str]:
        """The planner's verdict from the file's header (cached per file and modification time),
        or, for a file it cannot read, why not."""
        try:
            key = (str(path), path.stat().st_mtime_ns)
        except OSError as exc:
            return None, f"Cannot read this file: {exc.strerror or exc}"
        cached = self._local_fits.get(key)
        if cached is None:
            try:
                cached = assess_file(path, self.hardware(), projector), ""
            except Exception as exc:  # noqa: BLE001 - any unreadable header: say so on the card
                log.info("no plan for %s: %s", path.name, exc)
                cached = None, f"No memory plan for this file: {exc}"
            self._local_fits[key] = cached
        return cached

    def _on_local_row_action_requested(self, path: str, action: str) -> None:
        if action == "use":
            self.show_banner("")
            self.load_requested.emit(path)
        elif action == "reveal":
            self.open_url(QUrl.fromLocalFile(str(Path(path).parent)))

    # -- actions ----------------------------------------------------------------------------
    def _on_row_action_requested(self, build_id: str, action: str) -> None:
        c = self.downloads
        build = c.build(build_id)
        if action in ("download", "resume"):
            self.show_banner("")
            c.enqueue(build_id)
        elif action == "pause":
            c.pause(build_id)
        elif action == "cancel":
            keep = self.ask_keep_partial(self, build.display_name)
            if keep is not None:
                c.cancel(build_id, keep)
        elif action == "delete":
            if self.confirm(
                self,
                "Delete model",
                f"Delete {build.display_name} and all its files from {c.build_dir(build_id)}?",
            ):
                self._fits.pop(build_id, None)
                c.delete(build_id)
        elif action == "redownload":
            if self.confirm(
                self,
                "Download again",
                f"Delete the damaged data of {build.display_name} and download it again?",
            ):
                self.show_banner("")
                c.redownload(build_id)
        elif action == "reveal":
            folder = c.build_dir(build_id)
            self.open_url(QUrl.fromLocalFile(str(folder if folder.is_dir() else c.models_dir)))
        elif action == "use":
            installed = c.installed(build_id)
            if installed is not None:
                self.load_requested.emit(str(installed.model_path))
        self._refresh_row(build_id)
        self._update_total()

    def _on_save_token_button_clicked(self) -> None:
        token = self.token_edit.text().strip()
        if not token:
            return
        self.downloads.set_token(token)
        self.token_edit.clear()
        self.token_edit.setPlaceholderText("A token is saved; paste a new one to replace it")
        self.show_banner("")

    def _on_add_file_button_clicked(self) -> None:
        path = self.choose_gguf_file(self, str(Path.home()))
        if not path:
            return
        model = Path(path)
        if model.suffix.lower() != ".gguf" or not model.is_file():
            self.show_banner(f"{model.name} is not a GGUF file.")
            return
        projector = find_projector(model)
        log.info("using local model %s (projector: %s)", model, projector)
        self.show_banner("")
        self.total_label.setText(
            f"Loading {model.name}" + (f" with its vision projector {projector.name}" if projector else "")
        )
        self.load_requested.emit(str(model))

    def _on_add_hf_button_clicked(self) -> None:
        answer = self.ask_hf_source(self)
        if answer is None:
            return
        repo_id, file_path, projector_path = answer
        try:
            build = self.downloads.add_custom_build(repo_id, file_path, projector_path)
        except ManifestError as exc:
            self.show_banner(str(exc))
            return
        if build.id not in self.rows:
            self._add_row(build)
        self.show_banner("")
        self.downloads.enqueue(build.id)
        self._refresh_row(build.id)
        self.rows_scroll.ensureWidgetVisible(self.rows[build.id])

    # -- controller slots -------------------------------------------------------------------
    def _on_downloads_progress_changed(self, build_id: str, progress: DownloadProgress) -> None:
        row = self.rows.get(build_id)
        if row is None:
            return
        self._refresh_row(build_id)
        self._update_total()

    def _on_downloads_state_changed(self, build_id: str, state: str) -> None:
        if build_id not in self.rows:
            if build_id not in {b.id for b in self.downloads.builds()}:
                return
            self._add_row(self.downloads.build(build_id))
        if state == dl.DELETED:
            self._fits.pop(build_id, None)
        self._refresh_row(build_id)
        self._update_total()

    def _on_downloads_download_failed(self, build_id: str, message: str, _detail: str) -> None:
        if build_id in self.rows:
            self._refresh_row(build_id)  # the build's card says what went wrong, once
            return
        self.show_banner(f"{build_id}: {message}")

    def _on_downloads_download_finished(self, build_id: str, _installed: object) -> None:
        self._fits.pop(build_id, None)
        if build_id in self.rows:
            self._refresh_row(build_id)
        self._update_total()

    def _on_downloads_queue_changed(self) -> None:
        for build_id in self.rows:
            self._refresh_row(build_id)
        self._update_total()

    # -- style ------------------------------------------------------------------------------
    def changeEvent(self, event: QEvent) -> None:
        super().changeEvent(event)
        # a theme switch: the badges and cards take the new scheme (setStyleSheet sends StyleChange)
        palette_events = (QEvent.Type.PaletteChange, QEvent.Type.ApplicationPaletteChange)
        if event.type() in palette_events and not self._restyling:
            self._restyling = True
            try:
                self._apply_style()
            finally:
                self._restyling = False

    def _apply_style(self) -> None:
        dark = theme.is_dark()
        if dark == self._styled_dark:
            return
        self._styled_dark = dark
        c = plan_colors(dark)
        self.setStyleSheet(
            f"""
            QFrame#modelRow {{ background: {c["alt_base"]}; border: 1px solid {c["border"]};
                               border-radius: 8px; }}
            QFrame#modelRow QLabel {{ background: transparent; }}
            QLabel#modelBadge {{ border-radius: 4px; padding: 1px 6px; background: {c["hover"]};
                                 color: {c["text"]}; }}
            QLabel#modelBadge[kind="quant"] {{ background: {c["accent_soft"]}; color: {c["accent"]};
                                               font-weight: bold; }}
            QLabel#modelBadge[kind="vision"] {{ background: {c["vision_bg"]}; color: {c["vision"]}; }}
            QLabel#modelBadge[verdict="{VERDICT_FULL}"] {{ background: {c["ok_bg"]}; color: {c["ok"]}; }}
            QLabel#modelBadge[verdict="{VERDICT_SPLIT}"] {{ background: {c["split_bg"]};
                                                           color: {c["split"]}; }}
            QLabel#modelBadge[verdict="{VERDICT_CPU}"] {{ background: {c["cpu_bg"]}; color: {c["cpu"]}; }}
            QLabel#modelBadge[verdict="{VERDICT_NO}"] {{ background: {c["danger_bg"]};
                                                        color: {c["danger"]}; }}
            QLabel#mutedLabel {{ color: {c["muted"]}; }}
            QLabel#modelState {{ font-weight: bold; }}
            QLabel#progressLabel {{ color: {c["muted"]}; }}
            QLabel#rowMessage, QLabel#managerBanner {{ color: {c["danger"]}; background: {c["danger_bg"]};
                border: 1px solid {c["danger_border"]}; border-radius: 6px; padding: 6px 8px; }}
            QLabel#sectionHeader {{ color: {c["muted"]}; padding-top: 6px; }}
            QProgressBar#downloadProgress {{ border: none; border-radius: 4px; background: {c["border"]}; }}
            QProgressBar#downloadProgress::chunk {{ border-radius: 4px; background: {c["accent"]}; }}
            """
        )
        self.rows_widget.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Minimum)
