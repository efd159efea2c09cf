"""About Scout Chat (version, licences, credits) and the System information dialog."""

from __future__ import annotations

from PySide6 import __version__ as pyside_version
from PySide6.QtCore import Qt, qVersion
from PySide6.QtGui import QFontDatabase, QGuiApplication
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QVBoxLayout,
    QWidget,
)

from app import __version__
from app.ui import theme

ABOUT_HTML = """
<h2 style="margin-bottom:2px;">Scout Chat</h2>
<p style="margin-top:0;">Version {version}</p>
<p>Private, offline chat with Llama 4 Scout on your own computer.</p>
<p>Released under the MIT licence.</p>
<p><b>Built with</b><br>
<a href="https://github.com/ggml-org/llama.cpp">llama.cpp</a> (MIT) and
<a href="https://github.com/abetlen/llama-cpp-python">llama-cpp-python</a> (MIT)<br>
Qt {qt} and PySide6 {pyside} (LGPLv3; Qt's sources: <a href="https://download.qt.io">download.qt.io</a>)<br>
huggingface_hub, platformdirs (Apache-2.0 / MIT), gguf (MIT), NumPy (BSD)<br>
Pillow (MIT-CMU), pypdfium2 (Apache-2.0 / BSD; PDFium: BSD), python-docx (MIT)<br>
markdown-it-py (MIT), Pygments (BSD), charset-normalizer (MIT)</p>
<p><b>Llama 4 models.</b> Llama 4 is licensed under the
<a href="https://github.com/meta-llama/llama-models/blob/main/models/llama4/LICENSE">
Llama 4 Community License</a>,
Copyright © Meta Platforms, Inc. All Rights Reserved. Downloading a Scout
build from the model manager or the welcome page means accepting that licence and Meta's
<a href="https://www.llama.com/llama4/use-policy/">acceptable use policy</a>; products built with
it must show “Built with Llama”. Scout Chat itself includes no model weights.</p>
"""


class AboutDialog(QDialog):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("About Scout Chat")
        self.setMinimumWidth(460)
        logo = QLabel()
        logo.setPixmap(theme.app_icon().pixmap(72, 72))
        logo.setAlignment(Qt.AlignmentFlag.AlignTop)
        self.text = QLabel(ABOUT_HTML.format(version=__version__, qt=qVersion(), pyside=pyside_version))
        self.text.setTextFormat(Qt.TextFormat.RichText)
        self.text.setWordWrap(True)
        self.text.setOpenExternalLinks(True)
        row = QHBoxLayout()
        row.setSpacing(18)
        row.addWidget(logo)
        row.addWidget(self.text, 1)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        buttons.accepted.connect(self.accept)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(20, 20, 20, 14)
        layout.addLayout(row)
        layout.addWidget(buttons)


class SystemInfoDialog(QDialog):
    """Help → System information…: the ``scout-chat --check`` report, read-only, with a Copy button."""

    def __init__(self, text: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("System information")
        self.resize(760, 560)
        intro = QLabel("Paste this into a bug report: it says exactly what this machine and install are.")
        intro.setWordWrap(True)
        self.text_edit = QPlainTextEdit(text)
        self.text_edit.setReadOnly(True)
        self.text_edit.setLineWrapMode(QPlainTextEdit.LineWrapMode.WidgetWidth)
        self.text_edit.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        self.copy_button = buttons.addButton("Copy", QDialogButtonBox.ButtonRole.ActionRole)
        self.copy_button.clicked.connect(self._on_copy_button_clicked)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(intro)
        layout.addWidget(self.text_edit, 1)
        layout.addWidget(buttons)

    def text(self) -> str:
        return self.text_edit.toPlainText()

    def _on_copy_button_clicked(self) -> None:
        QGuiApplication.clipboard().setText(self.text())
        self.copy_button.setText("Copied")
