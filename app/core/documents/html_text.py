"""Readable text of an HTML page: scripts, styles and navigation skipped, sections by heading."""

from __future__ import annotations

from html.parser import HTMLParser

from app.core.documents.model import Document, SectionBuilder, make_doc

_HTML_SKIP = frozenset(
    {"script", "style", "nav", "template", "noscript", "svg", "canvas", "iframe", "object", "head"}
)
_HTML_VOID = frozenset(
    {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
)
_HTML_BLOCK = frozenset(
    {
        "p", "div", "section", "article", "main", "header", "footer", "aside", "blockquote", "pre",
        "ul", "ol", "li", "dl", "dt", "dd", "table", "figure",
        "figcaption", "form", "fieldset", "address", "details", "summary", "hr", "br", "body", "html",
    }
)  # fmt: skip
_HTML_HEADINGS = frozenset({"h1", "h2", "h3", "h4", "h5", "h6"})


class _ReadableText(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.builder = SectionBuilder()
        self.title = ""
        self._skip: list[str] = []  # open skipped elements
        self._in_title = False
        self._pre = 0
        self._line: list[str] = []
        self._block: list[str] = []
        self._heading: list[str] | None = None
        self._cells: list[str] | None = None
        self._in_cell = False

    # text is gathered in _line (inline run), lines in _block, blocks go to the builder
    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._skip:
            if tag in _HTML_SKIP and tag not in _HTML_VOID:
                self._skip.append(tag)
            return
        if tag == "title":
            self._in_title = True
            return
        if tag in _HTML_SKIP:
            self._skip.append(tag)
            return
        if tag in _HTML_HEADINGS:
            self._end_block()
            self._heading = []
        elif tag == "br":
            self._end_line()
        elif tag == "pre":
            self._end_block()
            self._pre += 1
        elif tag == "tr":
            self._end_line()
            self._cells = []
        elif tag in ("td", "th"):
            self._end_cell()
            self._in_cell = self._cells is not None
        elif tag == "li":
            self._end_line()
            self._line.append("- ")
        elif tag in _HTML_BLOCK:
            self._end_block()
        elif tag == "img":
            alt = dict(attrs).get("alt")
            if alt:
                self._text(f"[{alt}]")

    def handle_endtag(self, tag: str) -> None:
        if self._skip:
            if tag == self._skip[-1]:
                self._skip.pop()
            return
        if tag == "title":
            self._in_title = False
        elif tag in _HTML_HEADINGS and self._heading is not None:
            heading = " ".join("".join(self._heading).split())
            self._heading = None
            if heading:
                self.builder.heading(heading)
        elif tag == "pre":
            self._end_block()
            self._pre = max(0, self._pre - 1)
        elif tag in ("td", "th"):
            self._end_cell()
        elif tag == "tr":
            self._end_cell()
            if self._cells is not None and any(self._cells):
                self._block.append("| " + " | ".join(self._cells) + " |")
            self._cells = None
        elif tag == "li":
            self._end_line()
        elif tag in _HTML_BLOCK:
            self._end_block()

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        if self._in_title:
            self.title += data
        elif self._heading is not None:
            self._heading.append(data)
        else:
            self._text(data)

    def _text(self, data: str) -> None:
        if self._pre:
            lines = data.split("\n")
            self._line.append(lines[0])
            for line in lines[1:]:
                self._end_line(keep_space=True)
                self._line.append(line)
        else:
            self._line.append(data)

    def _end_cell(self) -> None:
        if self._cells is not None:
            cell = " ".join("".join(self._line).split())
            self._line = []
            if self._in_cell:
                self._cells.append(cell.replace("|", "\\|"))
        self._in_cell = False

    def _end_line(self, *, keep_space: bool = False) -> None:
        raw = "".join(self._line)
        self._line = []
        line = raw.rstrip() if keep_space or self._pre else " ".join(raw.split())
        if line.strip() and line.strip() != "-":
            self._block.append(line)

    def _end_block(self) -> None:
        self._end_line()
        if self._block:
            self.builder.add("\n".join(self._block))
        self._block = []

    def close(self) -> None:
        super().close()
        self._end_block()


def extract_html(name: str, text: str) -> Document:
    parser = _ReadableText()
    parser.feed(text)
    parser.close()
    return make_doc(name, "html", parser.builder.sections())
