"""The main window's status bar: the model, loading, passing notes, speed and context figures.

:class:`WindowStatus` owns the bar's widgets and their small state (the last exact context figures,
the live estimate while an answer streams); the window tells it what happened.
"""

from __future__ import annotations

import textwrap
import time
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import QEvent, QObject, QSize, Qt, QTimer, Signal
from PySide6.QtGui import QMouseEvent
from PySide6.QtWidgets import QLabel, QProgressBar, QPushButton, QSizePolicy, QStatusBar

from app.core.chunking import estimate_tokens
from app.core.forecast import format_time_left
from app.core.units import format_tokens

if TYPE_CHECKING:
    from collections.abc import Callable

    from app.core.planner import Plan
    from app.core.types import GenerationStats, ModelInfo

ACTIVITY_MESSAGE_MS = 2500
NOTICE_MESSAGE_MS = 12_000  # a status message that explains something stays longer
LIVE_SPEED_TIP = (
    "Estimated while the answer is written, from the text streamed so far (about 4 characters a "
    "token); llama.cpp's exact figure replaces it when the answer ends."
)


class WindowStatus(QObject):
    """The status bar's widgets and figures.

    Signals:
        model_clicked(): the model name was clicked (Memory & offload).
        cancel_load_clicked(): the user asked to stop loading.
        stop_api_clicked(): the user asked to stop the API answer being written.
    """

    model_clicked = Signal()
    cancel_load_clicked = Signal()
    stop_api_clicked = Signal()

    def __init__(self, bar: QStatusBar) -> None:
        super().__init__(bar)
        self.clock: Callable[[], float] = time.monotonic  # the live tok/s estimate's (tests set one)
        self._model_tip = ""
        self._plan_tip = ""
        self._context = (0, 0)  # the last exact context figures: tokens used, n_ctx
        self._has_model = False
        self._remote = False  # the model runs on a server
        self._api_address = ""  # where the API server listens ("": off)
        self._live_id: int | None = None  # the answer being streamed, for the live figures
        self._live_text = ""
        self._live_first = ""  # the first piece: the speed is measured from its arrival
        self._live_started = 0.0
        self._build(bar)
        self._activity_timer = QTimer(self)
        self._activity_timer.setSingleShot(True)
        self._activity_timer.setInterval(ACTIVITY_MESSAGE_MS)
        self._activity_timer.timeout.connect(self._on_activity_timer_timeout)

    def _build(self, bar: QStatusBar) -> None:
        bar.setSizeGripEnabled(False)
        bar.setContentsMargins(6, 0, 10, 0)
        self.model_label = QLabel("No model")
        self.model_label.setObjectName("modelLabel")
        self.model_label.setCursor(Qt.CursorShape.PointingHandCursor)
        self.model_label.installEventFilter(self)  # a click opens Memory & offload
        self.speed_label = QLabel()
        self.speed_label.setObjectName("speedLabel")
        self.activity_label = QLabel()
        self.activity_label.setObjectName("activityLabel")
        # a long note wraps onto a second line instead of being cut at the permanent widgets
        self.activity_label.setWordWrap(True)
        self.activity_label.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.load_label = QLabel()
        self.load_progress = _thin_bar("loadProgress", 140)
        self.cancel_load_button = QPushButton("Cancel")
        self.cancel_load_button.setObjectName("cancelLoadButton")
        self.cancel_load_button.clicked.connect(self._on_cancel_load_button_clicked)
        self.context_label = QLabel()
        self.context_label.setObjectName("contextLabel")
        self.context_label.setToolTip("Context used by this conversation / context size (tokens)")
        self.context_meter = _thin_bar("contextMeter", 90)
        self.context_meter.setToolTip(self.context_label.toolTip())
        self.api_label = QLabel()
        self.api_label.setObjectName("apiLabel")
        self.stop_api_button = QPushButton("Stop")
        self.stop_api_button.setObjectName("stopApiButton")
        self.stop_api_button.setToolTip("Stop the answer to the API request")
        self.stop_api_button.clicked.connect(self._on_stop_api_button_clicked)
        bar.addWidget(self.model_label)
        bar.addWidget(self.speed_label)
        bar.addWidget(self.activity_label, 1)
        for widget in (
            *self._loading_widgets(),
            self.api_label,
            self.stop_api_button,
            self.context_label,
            self.context_meter,
        ):
            bar.addPermanentWidget(widget)
            widget.hide()

    # -- the API server ---------------------------------------------------------------------
    def set_api_server(self, address: str) -> None:
        """The indicator while the API server listens (``address``: "host:port"; "": off)."""
        self._api_address = address
        self.api_label.setText(f"API on {address}" if address else "")
        self.api_label.setToolTip(
            f"Other programs can use the model at http://{address}/v1 with the key from Settings → API server"
            if address
            else ""
        )
        self.api_label.setVisible(bool(address))
        self.stop_api_button.hide()

    def set_api_answering(self, answering: bool) -> None:
        """ "Answering an API request…" with Stop, while the worker answers one."""
        address = self._api_address
        self.api_label.setText("Answering an API request…" if answering else f"API on {address}")
        self.api_label.setVisible(answering or bool(address))
        self.stop_api_button.setVisible(answering)

    def _on_stop_api_button_clicked(self) -> None:
        self.stop_api_clicked.emit()

    def _loading_widgets(self) -> tuple[QLabel, QProgressBar, QPushButton]:
        return self.load_label, self.load_progress, self.cancel_load_button

    # -- the model --------------------------------------------------------------------------
    def set_model(self, info: ModelInfo | None) -> None:
        self._has_model = info is not None
        self._remote = info is not None and bool(info.server)
        if info is not None and info.server:  # a server's model: where it runs, no plan
            self.model_label.setText(f"{info.name} on {info.server}")
            self._plan_tip = ""
            self._model_tip = f"{info.name} runs on {info.server}\ncontext {info.n_ctx:,} tokens"
            if info.chat_template_note:
                self._model_tip += f"\n{info.chat_template_note}"
        elif info is not None:
            self.model_label.setText(info.name)
            self._model_tip = (
                f"{info.path}\n{info.architecture}, {info.n_params / 1e9:.2f} B parameters, "
                f"context {info.n_ctx:,} of {info.n_ctx_train:,} tokens"
            )
        else:
            self.model_label.setText("No model")
            self._model_tip = "File → Open model file… (Ctrl+O)"
            self.show_context(0, 0)
        self.clear_speed()
        self._update_model_tooltip()

    def add_model_note(self, note: str) -> None:
        """A sentence about the loaded model (why its context is smaller, say), in its tooltip."""
        self._model_tip += f"\n{note}"
        self._update_model_tooltip()

    def set_plan(self, plan: Plan) -> None:
        self._plan_tip = f"Memory: {plan.fits_text}\n" + textwrap.fill(plan.explanation, 80)
        self._update_model_tooltip()

    def _update_model_tooltip(self) -> None:
        tip = "\n\n".join(t for t in (self._model_tip, self._plan_tip) if t)
        where = "Servers…" if self._remote else "Memory & offload"
        self.model_label.setToolTip(f"{tip}\n\nClick for {where}")

    # -- loading ----------------------------------------------------------------------------
    def show_loading(self, path: str) -> None:
        name = Path(path).name if path else "model"
        self.load_label.setText(f"Loading {name}…")
        self.load_progress.setValue(0)
        for widget in self._loading_widgets():
            widget.show()
        self.cancel_load_button.setEnabled(True)

    def set_load_progress(self, fraction: float) -> None:
        self.load_progress.setValue(round(max(0.0, min(1.0, fraction)) * 1000))

    def hide_loading(self) -> None:
        for widget in self._loading_widgets():
            widget.hide()

    # -- passing notes ----------------------------------------------------------------------
    def show_activity(self, text: str, duration_ms: int = ACTIVITY_MESSAGE_MS) -> None:
        self.activity_label.setText(text)
        self.activity_label.setToolTip(text)
        self._activity_timer.start(duration_ms)

    def clear_activity(self) -> None:
        self.activity_label.clear()

    def show_prompt_progress(self, fraction: float, seconds_left: float | None = None) -> None:
        """``Reading the prompt… 40% — about 2 min left`` (the time from the rate measured while
        it is read; without one yet, the percentage alone)."""
        self._activity_timer.stop()  # shown until the answer starts
        text = f"Reading the prompt… {round(fraction * 100)}%"
        if seconds_left is not None and fraction < 1:
            text += f" — {format_time_left(seconds_left)}"
        self.activity_label.setText(text)

    # -- answers: speed and context ---------------------------------------------------------
    def set_context(self, used: int, n_ctx: int) -> None:
        """Exact figures from the controller (a turn decided, an answer ended)."""
        self._context = (used, n_ctx)
        self.show_context(used, n_ctx)

    def show_context(self, used: int, n_ctx: int, *, estimated: bool = False) -> None:
        if n_ctx <= 0 or not self._has_model:
            self.context_label.hide()
            self.context_meter.hide()
            return
        fraction = max(0.0, min(1.0, used / n_ctx))
        shown = f"≈ {format_tokens(used)}" if estimated else format_tokens(used)
        self.context_label.setText(f"Context {shown} / {format_tokens(n_ctx)}")
        self.context_meter.setValue(round(fraction * 1000))
        self.context_meter.setProperty("level", "high" if fraction >= 0.9 else "normal")
        self.context_meter.style().unpolish(self.context_meter)
        self.context_meter.style().polish(self.context_meter)
        self.context_label.show()
        self.context_meter.show()

    def start_answer(self, message_id: int) -> None:
        """An answer's placeholder appeared: its streamed text feeds the live figures."""
        self._live_id, self._live_text, self._live_first = message_id, "", ""

    def answer_text(self, message_id: int, text: str) -> None:
        if self.activity_label.text() and not self._activity_timer.isActive():
            self.activity_label.clear()  # "Reading the prompt…": the answer has started
        if message_id == self._live_id:
            self._update_live_figures(text)

    def answer_finished(self, stats: GenerationStats) -> None:
        self._live_id = None
        self.clear_speed()
        if stats.tokens_per_s > 0:
            self.speed_label.setText(f"{stats.tokens_per_s:.1f} tok/s")
            tip = (
                f"Last answer: {stats.completion_tokens} tokens at {stats.tokens_per_s:.1f} tokens/s, "
                f"first token after {stats.ttft_s * 1000:.0f} ms"
            )
            if stats.drafted_tokens:
                tip += (
                    f"; speculation: {stats.accepted_tokens} of {stats.drafted_tokens} tokens "
                    "drafted from the context were accepted"
                )
            self.speed_label.setToolTip(tip)

    def answer_failed(self) -> None:
        self._live_id = None
        self.clear_speed()
        self.show_context(*self._context)

    def _update_live_figures(self, text: str) -> None:
        """While an answer streams: an estimated tok/s (text over time since its first piece) and
        the context it fills; the engine's exact figures replace both when it ends."""
        now = self.clock()
        if not self._live_first:
            self._live_first, self._live_started = text, now
        self._live_text += text
        written = estimate_tokens(self._live_text)
        elapsed = now - self._live_started
        since_first = written - estimate_tokens(self._live_first)
        if elapsed > 0 and since_first > 0:
            self.speed_label.setText(f"≈ {since_first / elapsed:.1f} tok/s")
            self.speed_label.setToolTip(LIVE_SPEED_TIP)
        used, n_ctx = self._context
        self.show_context(used + written, n_ctx, estimated=True)

    def clear_speed(self) -> None:
        self.speed_label.clear()
        self.speed_label.setToolTip("")

    # -- events -----------------------------------------------------------------------------
    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        # By name, not ``self.model_label``: Qt also calls filters while a window is being torn
        # down, when the Python side of this object may have no attributes left.
        if (
            watched.objectName() == "modelLabel"
            and event.type() == QEvent.Type.MouseButtonRelease
            and isinstance(event, QMouseEvent)
            and event.button() == Qt.MouseButton.LeftButton
        ):
            self.model_clicked.emit()
            return True
        return super().eventFilter(watched, event)

    def _on_cancel_load_button_clicked(self) -> None:
        self.load_label.setText("Cancelling…")
        self.cancel_load_button.setEnabled(False)
        self.cancel_load_clicked.emit()

    def _on_activity_timer_timeout(self) -> None:
        self.activity_label.clear()


def _thin_bar(name: str, width: int) -> QProgressBar:
    bar = QProgressBar()
    bar.setObjectName(name)
    bar.setRange(0, 1000)
    bar.setTextVisible(False)
    bar.setFixedSize(QSize(width, 6))
    return bar
