"""About Scout Chat: version, licence and credits."""

from __future__ import annotations

from PySide6 import __version__ as pyside_version
from PySide6.QtCore import Qt, qVersion
from PySide6.QtWidgets import QDialog, QDialogButtonBox, QHBoxLayout, QLabel, QVBoxLayout, QWidget

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
Qt {qt} and PySide6 {pyside} (LGPLv3)<br>
markdown-it-py (MIT), Pygments (BSD)</p>
<p style="color:gray;">Llama 4 is licensed under the Llama 4 Community License,
Copyright © Meta Platforms, Inc. All Rights Reserved. Model files you load are subject to
their own licence; Scout Chat does not include any model weights.</p>
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
