"""Light and dark palettes, the stylesheet, and the icons drawn in the palette's colours.

``apply_theme(app, "system")`` follows the desktop's colour scheme (``QStyleHints.colorScheme()``,
re-applied when it changes); "light" and "dark" force one. Widgets that render their own HTML
(the chat view) re-render on ``QEvent.PaletteChange``.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Literal

from PySide6.QtCore import QByteArray, QObject, QRect, QRectF, QSize, Qt
from PySide6.QtGui import QColor, QGuiApplication, QIcon, QIconEngine, QPainter, QPalette, QPixmap
from PySide6.QtSvg import QSvgRenderer
from PySide6.QtWidgets import QApplication, QStyleFactory

from app.ui.markdown_render import MarkdownColors

log = logging.getLogger(__name__)

ThemeName = Literal["system", "light", "dark"]
_THEME_NAMES: dict[str, ThemeName] = {"system": "system", "light": "light", "dark": "dark"}
ASSETS_DIR = Path(__file__).resolve().parents[2] / "assets"
ICONS_DIR = ASSETS_DIR / "icons"
STYLESHEET = ASSETS_DIR / "style.qss"

# Named colours per scheme; the stylesheet refers to them as @name@.
LIGHT = {
    "window": "#ffffff",
    "base": "#ffffff",
    "alt_base": "#f6f7f9",
    "sidebar": "#f4f5f7",
    "text": "#1f2328",
    "muted": "#6b7280",
    "border": "#e3e5e8",
    "border_strong": "#cfd3d8",
    "accent": "#5b5bd6",
    "accent_text": "#ffffff",
    "accent_hover": "#4c4cc4",
    "accent_soft": "#ecebfd",
    "user_bubble": "#eef0ff",
    "hover": "#e9ebef",
    "selected": "#e0e2ff",
    "danger": "#c62828",
    "danger_bg": "#fdecec",
    "danger_border": "#f3b8b8",
    "input_bg": "#ffffff",
    "button_bg": "#ffffff",
    "vision": "#00695c",
    "vision_bg": "#e0f2f1",
}
DARK = {
    "window": "#1b1c1f",
    "base": "#1b1c1f",
    "alt_base": "#232428",
    "sidebar": "#141517",
    "text": "#e6e7ea",
    "muted": "#9aa0a8",
    "border": "#2e3035",
    "border_strong": "#3c3f45",
    "accent": "#7c7cf0",
    "accent_text": "#ffffff",
    "accent_hover": "#8d8df5",
    "accent_soft": "#2b2b4a",
    "user_bubble": "#2a2c3a",
    "hover": "#26282d",
    "selected": "#30325a",
    "danger": "#ff8a80",
    "danger_bg": "#3a1f1f",
    "danger_border": "#6b3030",
    "input_bg": "#232428",
    "button_bg": "#26282d",
    "vision": "#6fd6c6",
    "vision_bg": "#173531",
}


def scheme_colors(dark: bool) -> dict[str, str]:
    return DARK if dark else LIGHT


def is_dark(palette: QPalette | None = None) -> bool:
    """True when ``palette`` (default: the application's) has a dark window colour."""
    palette = palette or QGuiApplication.palette()
    return palette.color(QPalette.ColorRole.Window).lightness() < 128


def system_prefers_dark() -> bool:
    hints = QGuiApplication.styleHints()
    return hints.colorScheme() == Qt.ColorScheme.Dark


def make_palette(dark: bool) -> QPalette:
    c = scheme_colors(dark)
    p = QPalette()
    roles = QPalette.ColorRole
    p.setColor(roles.Window, QColor(c["window"]))
    p.setColor(roles.WindowText, QColor(c["text"]))
    p.setColor(roles.Base, QColor(c["base"]))
    p.setColor(roles.AlternateBase, QColor(c["alt_base"]))
    p.setColor(roles.Text, QColor(c["text"]))
    p.setColor(roles.Button, QColor(c["button_bg"]))
    p.setColor(roles.ButtonText, QColor(c["text"]))
    p.setColor(roles.BrightText, QColor("#ffffff"))
    p.setColor(roles.Highlight, QColor(c["accent"]))
    p.setColor(roles.HighlightedText, QColor(c["accent_text"]))
    p.setColor(roles.Link, QColor(c["accent"]))
    p.setColor(roles.LinkVisited, QColor(c["accent"]))
    p.setColor(roles.ToolTipBase, QColor(c["alt_base"]))
    p.setColor(roles.ToolTipText, QColor(c["text"]))
    p.setColor(roles.PlaceholderText, QColor(c["muted"]))
    p.setColor(roles.Mid, QColor(c["border_strong"]))
    p.setColor(roles.Midlight, QColor(c["border"]))
    p.setColor(roles.Dark, QColor(c["border_strong"]))
    p.setColor(roles.Light, QColor(c["alt_base"]))
    p.setColor(roles.Shadow, QColor("#000000"))
    disabled = QPalette.ColorGroup.Disabled
    for role in (roles.WindowText, roles.Text, roles.ButtonText):
        p.setColor(disabled, role, QColor(c["muted"]))
    p.setColor(disabled, roles.Highlight, QColor(c["border_strong"]))
    return p


@functools.lru_cache(maxsize=2)
def stylesheet(dark: bool) -> str:
    try:
        text = STYLESHEET.read_text(encoding="utf-8")
    except OSError:
        log.warning("stylesheet %s is missing; using Qt's defaults", STYLESHEET)
        return ""
    for name, value in scheme_colors(dark).items():
        text = text.replace(f"@{name}@", value)
    # the spin boxes' arrow images: assets/icons/spin-*-light.svg or -dark.svg
    text = text.replace("@icons@", ICONS_DIR.as_posix()).replace("@scheme@", "dark" if dark else "light")
    return text


def markdown_colors(dark: bool) -> MarkdownColors:
    if dark:
        return MarkdownColors(
            dark=True,
            text=DARK["text"],
            muted=DARK["muted"],
            link="#9d9dff",
            code_bg="#0f1013",
            code_header_bg="#17181c",
            code_border="#2e3035",
            inline_code_bg="#2c2e34",
            table_border="#3c3f45",
            table_header_bg="#232428",
            quote_bar="#3c3f45",
        )
    return MarkdownColors(
        dark=False,
        text=LIGHT["text"],
        muted=LIGHT["muted"],
        link=LIGHT["accent"],
        code_bg="#f5f6f8",
        code_header_bg="#e9ebef",
        code_border="#e1e4e8",
        inline_code_bg="#eef0f3",
        table_border="#d5d9de",
        table_header_bg="#f4f5f7",
        quote_bar="#d5d9de",
    )


class _SchemeFollower(QObject):
    """Re-applies the theme when the desktop switches between light and dark."""

    def __init__(self, app: QApplication) -> None:
        super().__init__(app)
        self.setObjectName("scout_theme_follower")
        self.mode: ThemeName = "system"
        app.styleHints().colorSchemeChanged.connect(self._on_style_hints_color_scheme_changed)

    def _on_style_hints_color_scheme_changed(self, _scheme: Qt.ColorScheme) -> None:
        app = QApplication.instance()
        if self.mode == "system" and isinstance(app, QApplication):
            _apply(app, system_prefers_dark())


def _apply(app: QApplication, dark: bool) -> None:
    app.setPalette(make_palette(dark))
    app.setStyleSheet(stylesheet(dark))
    app.setProperty("scout_dark", dark)


def apply_theme(app: QApplication, mode: str = "system") -> bool:
    """Apply "system", "light" or "dark" to ``app``; returns True when the result is dark."""
    theme = _THEME_NAMES.get(mode)
    if theme is None:
        log.warning("unknown theme %r; following the system", mode)
        theme = "system"
    fusion = QStyleFactory.create("Fusion")
    if fusion is not None and app.style().name().lower() != "fusion":
        app.setStyle(fusion)
    follower = app.findChild(_SchemeFollower, "scout_theme_follower")
    if follower is None:
        follower = _SchemeFollower(app)
    follower.mode = theme
    dark = system_prefers_dark() if theme == "system" else theme == "dark"
    _apply(app, dark)
    return dark


@functools.lru_cache(maxsize=512)
def _icon_pixmap(name: str, color: str, size: int) -> QPixmap:
    path = ICONS_DIR / f"{name}.svg"
    try:
        svg = path.read_text(encoding="utf-8").replace("currentColor", color)
    except OSError:
        log.warning("icon %s is missing", path)
        return QPixmap()
    renderer = QSvgRenderer(QByteArray(svg.encode()))
    pixmap = QPixmap(size, size)
    pixmap.fill(Qt.GlobalColor.transparent)
    painter = QPainter(pixmap)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    renderer.render(painter, QRectF(0, 0, size, size))
    painter.end()
    return pixmap


class _PaletteIconEngine(QIconEngine):
    """Draws an SVG icon in a colour of the application's palette, read at paint time.

    The icon therefore follows the theme the moment the palette changes (start-up in dark, a live
    switch, the desktop's scheme): nothing has to re-create it. Disabled icons take the palette's
    disabled colour.
    """

    def __init__(self, name: str, role: QPalette.ColorRole) -> None:
        super().__init__()
        self._name, self._role = name, role

    def _color(self, mode: QIcon.Mode) -> str:
        group = QPalette.ColorGroup.Disabled if mode == QIcon.Mode.Disabled else QPalette.ColorGroup.Active
        return QGuiApplication.palette().color(group, self._role).name()

    def pixmap(self, size: QSize, mode: QIcon.Mode, state: QIcon.State) -> QPixmap:
        side = max(1, min(size.width(), size.height()))
        return _icon_pixmap(self._name, self._color(mode), side)

    def scaledPixmap(self, size: QSize, mode: QIcon.Mode, state: QIcon.State, scale: float) -> QPixmap:
        side = max(1, round(min(size.width(), size.height()) * scale))
        pixmap = QPixmap(_icon_pixmap(self._name, self._color(mode), side))
        pixmap.setDevicePixelRatio(scale)
        return pixmap

    def paint(self, painter: QPainter, rect: QRect, mode: QIcon.Mode, state: QIcon.State) -> None:
        painter.drawPixmap(rect, self.pixmap(rect.size(), mode, state))

    def clone(self) -> QIconEngine:
        return _PaletteIconEngine(self._name, self._role)

    def key(self) -> str:
        return "scout-palette-svg"


def icon(
    name: str, color: QColor | str | None = None, role: QPalette.ColorRole = QPalette.ColorRole.Text
) -> QIcon:
    """An SVG from assets/icons drawn in ``color``, or, without one, in the palette's ``role``
    colour as it is whenever the icon is painted (so it follows theme changes by itself)."""
    if color is None:
        return QIcon(_PaletteIconEngine(name, role))
    name_color = color.name() if isinstance(color, QColor) else color
    result = QIcon()
    for size in (16, 24, 32, 48):
        result.addPixmap(_icon_pixmap(name, name_color, size))
    return result


def app_icon() -> QIcon:
    result = QIcon(str(ICONS_DIR / "scout-chat.svg"))
    for size in (16, 32, 48, 64, 128, 256):
        png = ICONS_DIR / f"scout-chat-{size}.png"
        if png.exists():
            result.addFile(str(png))
    return result
