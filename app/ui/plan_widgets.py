"""The pieces of the "Memory & offload" panel: its colours, the memory bars and their rows.

:class:`MemoryBar` draws one memory pool's projection (weights / KV cache / compute / other)
against its budget; :class:`DeviceRow` labels it. Figures are in GB (10^9 bytes, :mod:`app.core.units`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QPointF, QRectF, QSize, Qt
from PySide6.QtGui import QBrush, QColor, QPainter, QPainterPath, QPen
from PySide6.QtWidgets import QHBoxLayout, QLabel, QSizePolicy, QVBoxLayout, QWidget

from app.core.fit import fit_of_plan
from app.core.planner import N_CTX_FLOOR, VERDICT_CPU, VERDICT_FULL, VERDICT_NO, VERDICT_SPLIT
from app.core.units import gb_number
from app.ui import theme

if TYPE_CHECKING:
    from app.core.forecast import Forecast
    from app.core.planner import Plan
    from app.core.projection import DeviceUsage

MAX_CONTEXT_CHOICE = 1 << 23  # 8M tokens: the combo offers powers of two up to the model's limit
SEGMENTS = (("weights", "weights"), ("kv", "KV cache"), ("compute", "compute"), ("other", "other"))

# Segment and badge colours per scheme (the rest comes from theme.LIGHT / theme.DARK).
_LIGHT_EXTRA = {
    "weights": "#5b5bd6",
    "kv": "#0f9488",
    "compute": "#d97706",
    "other": "#9ca3af",
    "track": "#eceef2",
    "ok": "#1e7b34",
    "ok_bg": "#e4f4e8",
    "ok_border": "#b5dfc0",
    "split": "#4343b8",
    "split_bg": "#ecebfd",
    "split_border": "#cfcdf7",
    "cpu": "#8a5300",
    "cpu_bg": "#fff3dc",
    "cpu_border": "#f2d49b",
}
_DARK_EXTRA = {
    "weights": "#8585f2",
    "kv": "#2cc9b4",
    "compute": "#f0b43c",
    "other": "#6b7280",
    "track": "#2c2e34",
    "ok": "#86d99c",
    "ok_bg": "#1c3323",
    "ok_border": "#2f5a3b",
    "split": "#b4b4ff",
    "split_bg": "#2b2b4a",
    "split_border": "#40406e",
    "cpu": "#f5c46e",
    "cpu_bg": "#3a2f18",
    "cpu_border": "#65502a",
}


def colors(dark: bool) -> dict[str, str]:
    """The panel's named colours for a scheme: theme colours plus segment and badge colours."""
    return {**theme.scheme_colors(dark), **(_DARK_EXTRA if dark else _LIGHT_EXTRA)}


def context_choices(context_length: int) -> list[int]:
    """Powers of two from 4k up to the model's trained context (capped at 8M)."""
    limit = min(context_length or MAX_CONTEXT_CHOICE, MAX_CONTEXT_CHOICE)
    out, n = [], N_CTX_FLOOR
    while n <= limit:
        out.append(n)
        n *= 2
    return out or [N_CTX_FLOOR]


def describe_verdict(plan: Plan) -> str:
    """The badge text: the planner's one label (:attr:`app.core.fit.Fit.label`)."""
    return fit_of_plan(plan).label


def verdict_kind(plan: Plan) -> str:
    """The badge colour: ok / split / cpu / danger."""
    if not plan.fits or plan.verdict == VERDICT_NO:
        return "danger"
    return {VERDICT_FULL: "ok", VERDICT_SPLIT: "split", VERDICT_CPU: "cpu"}.get(plan.verdict, "split")


def speed_text(forecast: Forecast) -> str:
    """``≈ 9.1 tok/s, prompt ≈ 240 tok/s; a 100-page document: about 4 minutes to read`` (the
    forecast from this machine's measured speeds; "(assumed figures)" before they are measured)."""
    text = forecast.summary
    if text and not forecast.measured:
        text += " (assumed figures: measured when a model is first loaded)"
    return text


class MemoryBar(QWidget):
    """A stacked bar: weights / KV cache / compute / other against the device's budget.

    When the projection is over budget the bar's scale stretches to the total, the budget is
    marked with a line and the part beyond it is hatched in the danger colour.
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("memoryBar")
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setMinimumWidth(240)
        self._parts: tuple[int, int, int, int] = (0, 0, 0, 0)
        self._budget = 0

    def set_usage(self, usage: DeviceUsage) -> None:
        self._parts = (usage.weights, usage.kv, usage.compute, usage.other)
        self._budget = usage.budget
        self.update()

    def parts(self) -> tuple[int, int, int, int]:
        return self._parts

    def budget(self) -> int:
        return self._budget

    def sizeHint(self) -> QSize:
        return QSize(420, 14)

    def minimumSizeHint(self) -> QSize:
        return QSize(240, 14)

    def paintEvent(self, _event: Any) -> None:
        c = colors(theme.is_dark(self.palette()))
        total = sum(self._parts)
        scale = max(self._budget, total, 1)
        rect = QRectF(self.rect()).adjusted(0.5, 1.5, -0.5, -1.5)
        radius = min(5.0, rect.height() / 2)
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        clip = QPainterPath()
        clip.addRoundedRect(rect, radius, radius)
        painter.setClipPath(clip)
        painter.fillRect(rect, QColor(c["track"]))
        x = rect.left()
        for (key, _label), value in zip(SEGMENTS, self._parts, strict=True):
            if value <= 0:
                continue
            width = rect.width() * value / scale
            painter.fillRect(QRectF(x, rect.top(), width, rect.height()), QColor(c[key]))
            x += width
        if total > self._budget:
            budget_x = rect.left() + rect.width() * self._budget / scale
            over = QRectF(budget_x, rect.top(), rect.right() - budget_x, rect.height())
            danger = QColor(c["danger"])
            veil = QColor(c["danger_bg"])
            veil.setAlpha(215)  # the segments show through faintly; the hatch says "over"
            painter.fillRect(over, veil)
            painter.fillRect(over, QBrush(danger, Qt.BrushStyle.BDiagPattern))
            painter.setClipping(False)
            painter.setPen(QPen(danger, 2))
            painter.drawLine(QPointF(budget_x, 0), QPointF(budget_x, self.height()))
        painter.end()


class DeviceRow(QWidget):
    """One memory pool: its name, "21.4 of 22.8 GB" (red when over budget) and a MemoryBar."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("deviceRow")
        self.name_label = QLabel()
        self.name_label.setObjectName("deviceName")
        self.amount_label = QLabel()
        self.amount_label.setObjectName("deviceAmount")
        self.amount_label.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        self.bar = MemoryBar()
        self.usage: DeviceUsage | None = None
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(4)
        top = QHBoxLayout()
        top.setSpacing(8)
        top.addWidget(self.name_label, 1)
        top.addWidget(self.amount_label)
        layout.addLayout(top)
        layout.addWidget(self.bar)

    @property
    def over(self) -> bool:
        return self.usage is not None and self.usage.over > 0

    def set_usage(self, usage: DeviceUsage) -> None:
        self.usage = usage
        name = usage.label if usage.name == "RAM" else f"{usage.label} ({usage.name})"
        self.name_label.setText(name[:1].upper() + name[1:])
        amount = f"{gb_number(usage.total)} of {gb_number(usage.budget)} GB"
        if usage.over:
            amount += f" — {gb_number(usage.over)} GB over"
        self.amount_label.setText(amount)
        self.amount_label.setProperty("over", usage.over > 0)
        self.amount_label.style().unpolish(self.amount_label)
        self.amount_label.style().polish(self.amount_label)
        self.bar.set_usage(usage)
        tip = (
            f"weights {gb_number(usage.weights)} GB · KV cache {gb_number(usage.kv)} GB · "
            f"compute {gb_number(usage.compute)} GB · other {gb_number(usage.other)} GB\n"
            f"budget {gb_number(usage.budget)} GB: free memory minus a safety margin"
        )
        self.setToolTip(tip)


def panel_style_sheet(c: dict[str, str]) -> str:
    """The panel's style sheet for the named colours ``c`` (:func:`colors`)."""
    return f"""
            #planModelTitle {{ font-size: 15px; font-weight: 600; color: {c["text"]}; }}
            #planMuted, #planLegend {{ color: {c["muted"]}; }}
            #planExplanation {{ color: {c["text"]}; }}
            #planRule {{ background: {c["border"]}; border: none; }}
            #deviceName {{ color: {c["text"]}; font-weight: 600; }}
            #deviceAmount {{ color: {c["muted"]}; }}
            #deviceAmount[over="true"] {{ color: {c["danger"]}; font-weight: 600; }}
            #planError {{
                color: {c["danger"]}; background: {c["danger_bg"]};
                border: 1px solid {c["danger_border"]}; border-radius: 8px; padding: 8px 10px;
            }}
            #verdictBadge {{ border-radius: 10px; padding: 3px 10px; font-weight: 600; }}
            #verdictBadge[kind="ok"] {{
                color: {c["ok"]}; background: {c["ok_bg"]}; border: 1px solid {c["ok_border"]};
            }}
            #verdictBadge[kind="split"] {{
                color: {c["split"]}; background: {c["split_bg"]}; border: 1px solid {c["split_border"]};
            }}
            #verdictBadge[kind="cpu"] {{
                color: {c["cpu"]}; background: {c["cpu_bg"]}; border: 1px solid {c["cpu_border"]};
            }}
            #verdictBadge[kind="danger"] {{
                color: {c["danger"]}; background: {c["danger_bg"]}; border: 1px solid {c["danger_border"]};
            }}
            #advancedToggle {{ border: none; background: transparent; color: {c["text"]};
                               font-weight: 600; padding: 2px 0px; }}
            #advancedBox {{ background: {c["alt_base"]}; border: 1px solid {c["border"]};
                            border-radius: 8px; }}
            #advancedBox QLabel {{ color: {c["text"]}; background: transparent; }}
            #advancedBox QLabel#planMuted {{ color: {c["muted"]}; }}
"""
