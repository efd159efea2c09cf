"""The main window's small parts: its file dialogs, the resume-downloads question, the error banner."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import QSize, QStandardPaths, Qt
from PySide6.QtWidgets import (
    QFileDialog,
    QFrame,
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QPushButton,
    QToolButton,
    QWidget,
)

from app.ui import theme

if TYPE_CHECKING:
    from collections.abc import Callable


def choose_model_file(parent: QWidget, start_dir: str) -> str:
    path, _filter = QFileDialog.getOpenFileName(
        parent, "Open model file", start_dir, "GGUF models (*.gguf);;All files (*)"
    )
    return path


def choose_export_file(parent: QWidget, suggested: str) -> str:
    """A save dialog for Markdown or JSON; the extension follows the chosen filter if none was typed."""
    path, chosen = QFileDialog.getSaveFileName(
        parent, "Export conversation", suggested, "Markdown (*.md);;JSON (*.json)"
    )
    if path and not Path(path).suffix:
        path += ".json" if "json" in chosen.lower() else ".md"
    return path


def export_start_dir(last_export_dir: str) -> Path:
    """Where the export dialog opens: the folder of the last export, else the user's documents
    folder, else the home folder."""
    candidates = [last_export_dir] if last_export_dir else []
    candidates.append(QStandardPaths.writableLocation(QStandardPaths.StandardLocation.DocumentsLocation))
    for candidate in candidates:
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return Path.home()


def confirm_delete(parent: QWidget, title: str, text: str) -> bool:
    """A modal question before something is deleted: Yes, or Cancel (the default); True for Yes."""
    answer = QMessageBox.question(
        parent,
        title,
        text,
        QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.Cancel,
        QMessageBox.StandardButton.Cancel,
    )
    return answer == QMessageBox.StandardButton.Yes


def ask_resume_downloads(parent: QWidget, names: list[str]) -> bool:
    answer = QMessageBox.question(
        parent,
        "Resume downloads",
        "These downloads were not finished when Scout Chat last closed:\n\n"
        + "\n".join(f"• {n}" for n in names)
        + "\n\nResume them now? (They continue from where they stopped.)",
    )
    return answer == QMessageBox.StandardButton.Yes


class InfoBanner(QFrame):
    """A dismissible note shown above the chat until closed (never modal): things the user should
    read once, such as a default an upgrade changed."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("infoBanner")
        self.label = QLabel()
        self.label.setWordWrap(True)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.close_button = QToolButton()
        self.close_button.setObjectName("infoBannerClose")
        self.close_button.setIcon(theme.icon("close"))
        self.close_button.setIconSize(QSize(14, 14))
        self.close_button.setToolTip("Dismiss")
        self.close_button.setAccessibleName("Dismiss note")
        self.close_button.clicked.connect(self._on_close_button_clicked)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(12, 8, 8, 8)
        layout.setSpacing(10)
        layout.addWidget(self.label, 1)
        layout.addWidget(self.close_button, 0, Qt.AlignmentFlag.AlignTop)
        self.hide()

    def show_message(self, message: str) -> None:
        self.label.setText(message)
        self.show()

    def text(self) -> str:
        return self.label.text()

    def _on_close_button_clicked(self) -> None:
        self.hide()


class ErrorBanner(QFrame):
    """A dismissible error message shown above the chat (never modal)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("errorBanner")
        self.icon = QLabel()
        self.icon.setPixmap(theme.icon("warning", theme.LIGHT["danger"]).pixmap(18, 18))
        self.label = QLabel()
        self.label.setWordWrap(True)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.close_button = QToolButton()
        self.close_button.setObjectName("errorBannerClose")
        self.close_button.setIcon(theme.icon("close", theme.LIGHT["danger"]))
        self.close_button.setIconSize(QSize(14, 14))
        self.close_button.setToolTip("Dismiss")
        self.close_button.setAccessibleName("Dismiss error")
        self.close_button.clicked.connect(self._on_close_button_clicked)
        self.action_button = QPushButton()  # an offered way out ("Reload model"); hidden without one
        self.action_button.setObjectName("errorBannerAction")
        self.action_button.hide()
        self.action_button.clicked.connect(self._on_action_button_clicked)
        self.second_button = QPushButton()  # a second way out ("Reload with less on the GPU")
        self.second_button.setObjectName("errorBannerAction")
        self.second_button.hide()
        self.second_button.clicked.connect(self._on_second_button_clicked)
        self._action: Callable[[], None] | None = None
        self._second: Callable[[], None] | None = None
        layout = QHBoxLayout(self)
        layout.setContentsMargins(12, 8, 8, 8)
        layout.setSpacing(10)
        layout.addWidget(self.icon, 0, Qt.AlignmentFlag.AlignTop)
        layout.addWidget(self.label, 1)
        layout.addWidget(self.action_button, 0, Qt.AlignmentFlag.AlignTop)
        layout.addWidget(self.second_button, 0, Qt.AlignmentFlag.AlignTop)
        layout.addWidget(self.close_button, 0, Qt.AlignmentFlag.AlignTop)
        self.hide()

    def show_message(self, message: str, detail: str = "") -> None:
        self.label.setText(message)
        self.label.setToolTip(detail)
        self.show()

    def text(self) -> str:
        return self.label.text()

    def set_action(
        self,
        text: str,
        action: Callable[[], None] | None,
        second: tuple[str, Callable[[], None]] | None = None,
    ) -> None:
        """Offer ``action`` as a button (and ``second``, text and action, beside it) until one is
        clicked, they are replaced or cleared (``action=None``)."""
        self._action = action
        self.action_button.setText(text)
        self.action_button.setVisible(action is not None)
        self._second = second[1] if second is not None and action is not None else None
        self.second_button.setText(second[0] if second is not None else "")
        self.second_button.setVisible(self._second is not None)

    def _on_action_button_clicked(self) -> None:
        self._run(self._action)

    def _on_second_button_clicked(self) -> None:
        self._run(self._second)

    def _run(self, action: Callable[[], None] | None) -> None:
        self.set_action("", None)
        self.hide()
        if action is not None:
            action()

    def _on_close_button_clicked(self) -> None:
        self.hide()
