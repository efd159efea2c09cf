"""Markdown to Qt rich text: markdown-it-py (CommonMark + tables), Pygments for fenced code.

The HTML targets QTextDocument's subset of HTML 4 / CSS 2.1: tables for code blocks (so the header with
the language and the "Copy" link sits above the code), inline styles (``noclasses``) so one document
renders the same everywhere, and ``white-space: pre-wrap`` so long code lines wrap instead of forcing
a horizontal scroll bar. Raw HTML in the model's answer is escaped, never interpreted.

Pure functions of (text, palette colours): cheap to cache. A streaming answer is split by
:func:`split_stable` into blocks that can no longer change and a live tail, so only the tail is
re-rendered while tokens arrive.
"""

from __future__ import annotations

import functools
import html
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from markdown_it import MarkdownIt
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import TextLexer, get_lexer_by_name
from pygments.util import ClassNotFound

if TYPE_CHECKING:
    from collections.abc import Sequence

    from markdown_it.renderer import RendererHTML
    from markdown_it.token import Token
    from markdown_it.utils import EnvType, OptionsDict

COPY_SCHEME = "copy"


@dataclass(frozen=True)
class MarkdownColors:
    """Colours the HTML needs; taken from the active palette (see ``theme.markdown_colors``)."""

    dark: bool = False
    text: str = "#1f2328"
    muted: str = "#656d76"
    link: str = "#0969da"
    code_bg: str = "#f6f8fa"
    code_header_bg: str = "#eaeef2"
    code_border: str = "#d0d7de"
    inline_code_bg: str = "#eff1f3"
    table_border: str = "#d0d7de"
    table_header_bg: str = "#f6f8fa"
    quote_bar: str = "#d0d7de"

    @property
    def pygments_style(self) -> str:
        return "github-dark" if self.dark else "default"


@dataclass
class RenderedMarkdown:
    """HTML for one message plus the source of each fenced code block (``copy:<n>`` indexes it)."""

    html: str
    code_blocks: list[str] = field(default_factory=list)


_FENCE_RE = re.compile(r"^ {0,3}(`{3,}|~{3,})")


def _make_parser() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False, "breaks": False, "linkify": False})
    md.enable("table")
    md.add_render_rule("fence", _render_fence)
    md.add_render_rule("code_block", _render_fence)
    md.add_render_rule("code_inline", _render_code_inline)
    md.add_render_rule("table_open", _render_table_open)
    md.add_render_rule("th_open", _render_cell_open)
    md.add_render_rule("td_open", _render_cell_open)
    md.add_render_rule("blockquote_open", _render_blockquote_open)
    md.add_render_rule("image", _render_image)
    return md


def _colors(env: EnvType) -> MarkdownColors:
    colors = env.get("colors")
    return colors if isinstance(colors, MarkdownColors) else MarkdownColors()


@functools.lru_cache(maxsize=64)
def _lexer(language: str) -> Any:
    if not language:
        return TextLexer(stripnl=False)
    try:
        return get_lexer_by_name(language, stripnl=False, ensurenl=False)
    except ClassNotFound:
        return TextLexer(stripnl=False)


@functools.lru_cache(maxsize=4)
def _formatter(style: str) -> HtmlFormatter[str]:
    return HtmlFormatter(nowrap=True, noclasses=True, style=style)


@functools.lru_cache(maxsize=256)
def highlight_code(code: str, language: str, style: str) -> str:
    """Highlighted HTML spans (no wrapper) for ``code``; cached, so finished blocks cost nothing."""
    lexer = _lexer(language.lower())
    if isinstance(lexer, TextLexer):
        return html.escape(code, quote=False)
    out: str = highlight(code, lexer, _formatter(style))
    return out[:-1] if out.endswith("\n") and not code.endswith("\n") else out


def code_block_html(code: str, language: str, index: int, colors: MarkdownColors) -> str:
    code = code[:-1] if code.endswith("\n") else code
    body = highlight_code(code, language, colors.pygments_style)
    label = html.escape(language or "text")
    # The trailing &nbsp; keeps Qt from collapsing an empty last line.
    return (
        f'<table width="100%" cellspacing="0" cellpadding="0" border="0"'
        f' style="margin-top:6px; margin-bottom:10px; border-collapse:collapse;'
        f' background-color:{colors.code_bg};">'
        f'<tr><td width="100%" style="background-color:{colors.code_header_bg}; padding: 4px 10px 4px 10px;">'
        f'<span style="color:{colors.muted}; font-size:small;">{label}</span></td>'
        f'<td align="right" style="background-color:{colors.code_header_bg}; padding: 4px 10px 4px 10px;">'
        f'<a href="{COPY_SCHEME}:{index}" style="color:{colors.link}; text-decoration:none;'
        f' font-size:small;">Copy</a></td></tr>'
        f'<tr><td colspan="2" style="background-color:{colors.code_bg}; padding: 8px 10px 8px 10px;">'
        f'<pre style="white-space:pre-wrap; margin:0;">{body}</pre></td></tr></table>'
    )


def _render_fence(
    self: RendererHTML, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType
) -> str:
    token = tokens[idx]
    language = token.info.strip().split(maxsplit=1)[0] if token.info.strip() else ""
    blocks: list[str] = env.setdefault("code_blocks", [])
    index = int(env.get("code_offset", 0)) + len(blocks)
    blocks.append(token.content[:-1] if token.content.endswith("\n") else token.content)
    return code_block_html(token.content, language, index, _colors(env))


def _render_code_inline(
    self: RendererHTML, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType
) -> str:
    colors = _colors(env)
    content = html.escape(tokens[idx].content, quote=False)
    return f'<code style="background-color:{colors.inline_code_bg};">&#8202;{content}&#8202;</code>'


def _render_table_open(
    self: RendererHTML, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType
) -> str:
    colors = _colors(env)
    return (
        f'<table cellspacing="0" cellpadding="6" border="1"'
        f' style="border-collapse:collapse; border-color:{colors.table_border};'
        f' margin-top:6px; margin-bottom:10px;">'
    )


def _render_cell_open(
    self: RendererHTML, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType
) -> str:
    token = tokens[idx]
    colors = _colors(env)
    tag = token.tag
    style = f"border: 1px solid {colors.table_border};"
    if tag == "th":
        style += f" background-color:{colors.table_header_bg};"
    align = ""
    token_style = token.attrGet("style")
    if isinstance(token_style, str) and "text-align:" in token_style:
        align = f' align="{token_style.split(":", 1)[1].strip()}"'
    return f'<{tag}{align} style="{style}">'


def _render_blockquote_open(
    self: RendererHTML, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType
) -> str:
    colors = _colors(env)
    return f'<blockquote style="color:{colors.muted}; margin-left:12px;">'


def _render_image(
    self: RendererHTML, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType
) -> str:
    # Never load images named by the model (local files or the network): show a link instead.
    token = tokens[idx]
    src = html.escape(str(token.attrGet("src") or ""))
    alt = html.escape(token.content or "image")
    return f'<a href="{src}">[{alt}]</a>'


_PARSER = _make_parser()


def render_markdown(
    text: str, colors: MarkdownColors | None = None, code_offset: int = 0
) -> RenderedMarkdown:
    """Render ``text`` to Qt rich text. Copy links are numbered from ``code_offset``."""
    env: dict[str, Any] = {"colors": colors or MarkdownColors(), "code_offset": code_offset}
    out = _PARSER.render(text, env)
    return RenderedMarkdown(html=out, code_blocks=list(env.get("code_blocks", [])))


def render_plain(text: str) -> str:
    """A user's message: shown exactly as typed (no Markdown), line breaks kept."""
    return f'<p style="white-space:pre-wrap; margin:0;">{html.escape(text, quote=False)}</p>'


def stable_boundaries(text: str) -> list[int]:
    """Offsets in ``text`` where a new top-level block starts that later text cannot merge with.

    A boundary is the start of a fenced code block preceded by a blank line, the line after a
    closing fence, or a blank line followed by a line that starts a new top-level paragraph (not
    indented, not a list item, table row or quote continuing a block above). Rendering the parts
    between boundaries separately gives the same result as rendering the whole; the unfinished last
    line is never part of a boundary.
    """
    boundaries: list[int] = []
    fence: str | None = None
    pos = 0
    prev_blank = False
    for line in text.splitlines(keepends=True):
        if not line.endswith("\n"):
            break  # the last, unfinished line belongs to the tail
        stripped = line.strip()
        match = _FENCE_RE.match(line)
        if fence is not None:
            closes = match is not None and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence)
            if closes and not stripped.strip(fence[0]):
                fence = None
                boundaries.append(pos + len(line))
            pos += len(line)
            prev_blank = False
            continue
        if match:
            starts_block = prev_blank
            fence = match.group(1)
        else:
            starts_block = bool(stripped) and prev_blank and _starts_top_level_paragraph(line)
        if starts_block and pos > 0 and (not boundaries or boundaries[-1] != pos):
            boundaries.append(pos)
        prev_blank = not stripped
        pos += len(line)
    return [b for b in boundaries if b > 0]


def split_stable(text: str) -> int:
    """Length of the longest prefix of ``text`` that further text cannot change (0: none)."""
    boundaries = stable_boundaries(text)
    return boundaries[-1] if boundaries else 0


def chunk_text(text: str, min_chars: int) -> list[str]:
    """Cut ``text`` at stable boundaries into pieces of at least ``min_chars`` (the last may be shorter)."""
    pieces: list[str] = []
    start = 0
    for boundary in stable_boundaries(text):
        if boundary - start >= min_chars:
            pieces.append(text[start:boundary])
            start = boundary
    pieces.append(text[start:])
    return pieces


_CONTINUATION_RE = re.compile(r"^(\s|[-*+]\s|\d+[.)]\s|\||>)")


def _starts_top_level_paragraph(line: str) -> bool:
    return not _CONTINUATION_RE.match(line)
