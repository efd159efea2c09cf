"""Page citations in answers ("p. 12" becomes a ``cite:12`` link) and the "What the model saw"
dialog, for a whole answer or for one cited page."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QSize, Qt
from PySide6.QtGui import (
    QColor,
    QTextCharFormat,
    QTextCursor,
)
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QHBoxLayout,
    QLabel,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from app.core.retrieval import find_citations
from app.core.types import DocumentMode
from app.core.units import format_token_count
from app.ui import theme
from app.ui.attachment_chips import BADGE_TIPS

if TYPE_CHECKING:
    from PySide6.QtGui import QTextDocument


CITE_SCHEME = "cite"


def link_citations(document: QTextDocument, color: str, max_page: int | None = None) -> int:
    """Turn "p. 12" / "page 12" / "pp. 3–4" into ``cite:<page>`` links; code is left alone."""
    spans: list[tuple[int, int, int]] = []
    block = document.begin()
    while block.isValid():
        for citation in find_citations(block.text(), max_page):
            start, end = citation.span
            spans.append((block.position() + start, block.position() + end, citation.page))
        block = block.next()
    cursor = QTextCursor(document)
    linked = 0
    for start, end, page in spans:
        cursor.setPosition(start + 1)
        if cursor.charFormat().fontFixedPitch() or cursor.charFormat().isAnchor():
            continue  # inside code, or already a link
        cursor.setPosition(start)
        cursor.setPosition(end, QTextCursor.MoveMode.KeepAnchor)
        fmt = QTextCharFormat()
        fmt.setAnchor(True)
        fmt.setAnchorHref(f"{CITE_SCHEME}:{page}")
        fmt.setForeground(QColor(color))
        fmt.setFontUnderline(True)
        fmt.setToolTip(f"Show what the model read on page {page}")
        cursor.mergeCharFormat(fmt)
        linked += 1
    return linked


def max_source_page(stats: dict[str, Any]) -> int | None:
    pages = [int(s["page"]) for s in stats.get("sources") or [] if isinstance(s.get("page"), int)]
    return max(pages) if pages else None


FOUND_BY = {
    "keywords": "found by keywords",
    "meaning": "found by meaning",
    "keywords+meaning": "found by keywords and meaning",
    "": "next to a match",
}
"""How "what the model saw" says which retriever found a passage (``found_by`` of a source)."""


class SourcesDialog(QDialog):
    """What the model saw for one answer: the context mode, the document tokens and every passage
    sent with its anchor — or, for a clicked citation, the passages from that page."""

    def __init__(self, stats: dict[str, Any], page: int | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("sourcesDialog")
        sources = [s for s in stats.get("sources") or [] if isinstance(s, dict)]
        self.page = page
        self.passages = [s for s in sources if page is None or s.get("page") == page]
        mode = str(stats.get("context_mode") or "")
        tokens = stats.get("document_tokens")
        if page is None:
            self.setWindowTitle("What the model saw")
            if mode == DocumentMode.WHOLE:
                summary = "Whole documents: all of their text was sent with the question."
            elif mode == DocumentMode.RETRIEVAL:
                summary = (
                    "Retrieval: the documents were too long for the context, so only the passages "
                    "below (the best matches for the question, with their neighbours) were sent."
                )
            else:
                summary = "Passages sent with the question."
            if isinstance(tokens, int) and tokens > 0:
                summary += f" Document text: {format_token_count(tokens)}."
            summary += f" {len(self.passages)} passage" + ("." if len(self.passages) == 1 else "s.")
        else:
            self.setWindowTitle(f"Page {page}")
            summary = (
                f"What the model read on page {page}:"
                if self.passages
                else f"No passage from page {page} was sent to the model, so it cannot have read it there."
            )
        self.summary_label = QLabel(summary)
        self.summary_label.setObjectName("sourcesSummary")
        self.summary_label.setWordWrap(True)
        self.mode_label = QLabel(mode)
        self.mode_label.setObjectName("chipBadge")
        self.mode_label.setProperty("mode", mode)
        self.mode_label.setToolTip(BADGE_TIPS.get(mode, ""))
        self.mode_label.setVisible(page is None and bool(mode))
        self.browser = QTextBrowser()
        self.browser.setObjectName("sourcesText")
        self.browser.setOpenLinks(False)
        self.browser.setHtml(self._html())
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        top = QHBoxLayout()
        top.addWidget(self.mode_label, 0, Qt.AlignmentFlag.AlignTop)
        top.addWidget(self.summary_label, 1)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.browser, 1)
        layout.addWidget(buttons)
        self.resize(QSize(620, 480) if page is None else QSize(520, 340))

    def _html(self) -> str:
        colors = theme.markdown_colors(theme.is_dark(self.palette()))
        parts = []
        for source in self.passages:
            where = " — ".join(str(x) for x in (source.get("doc"), source.get("anchor")) if x)
            text = html.escape(str(source.get("text", ""))).replace("\n", "<br>")
            found = FOUND_BY.get(str(source.get("found_by"))) if "found_by" in source else None
            how = f' <span style="color:{colors.muted};">({found})</span>' if found else ""
            parts.append(
                f'<p style="margin-bottom:2px;"><b>{html.escape(where)}</b>{how}</p>'
                f'<p style="margin-top:0px; margin-bottom:12px; color:{colors.text};">{text}</p>'
            )
        return "".join(parts)

    def text(self) -> str:
        return self.browser.toPlainText()


def open_sources_dialog(
    parent: QWidget | None, stats: dict[str, Any], page: int | None = None
) -> SourcesDialog:
    dialog = SourcesDialog(stats, page, parent)
    dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
    dialog.show()
    return dialog
