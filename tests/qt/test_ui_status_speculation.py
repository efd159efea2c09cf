"""The status bar's tooltip reports what speculation did in the last answer."""

from __future__ import annotations

from PySide6.QtWidgets import QStatusBar

from app.core.types import GenerationStats
from app.ui.status_bar import WindowStatus


def test_the_speed_tooltip_says_how_many_drafted_tokens_were_accepted(qtbot) -> None:
    bar = QStatusBar()
    qtbot.addWidget(bar)
    status = WindowStatus(bar)
    status.answer_finished(GenerationStats(completion_tokens=40, tokens_per_s=20.0, ttft_s=0.1))
    assert "speculation" not in status.speed_label.toolTip()
    stats = GenerationStats(
        completion_tokens=40, tokens_per_s=30.0, ttft_s=0.1, drafted_tokens=24, accepted_tokens=18
    )
    status.answer_finished(stats)
    assert status.speed_label.text() == "30.0 tok/s"
    tip = status.speed_label.toolTip()
    assert "speculation: 18 of 24 tokens drafted from the context were accepted" in tip
