"""The real controllers on an engine process (EngineProxy, real llama.cpp, the tiny model): a
killed engine mid-answer is a message, the partial answer is kept as "interrupted", the model is
reported lost, and the next load and answer work — all in this process, which survives."""

from __future__ import annotations

import os
import random
import signal
from typing import TYPE_CHECKING

from app.config import Settings
from app.core.engine.process import EngineProxy
from app.core.tiny_model import TinyModelSpec, write_tiny_model

if TYPE_CHECKING:
    from pathlib import Path


def test_the_app_survives_a_killed_engine_mid_answer(qtbot, make_controller, tiny_model: Path) -> None:
    proxy = EngineProxy()
    pids: list[int] = []
    try:
        settings = Settings(n_ctx=8192, n_threads=1, max_tokens=100_000)
        controller = make_controller(proxy, settings)  # type: ignore[arg-type]
        with qtbot.waitSignal(controller.models.model_loaded, timeout=60_000):
            controller.models.load_model(str(tiny_model))
        assert proxy.pid is not None
        pids.append(proxy.pid)
        with qtbot.waitSignal(controller.conversations.tokens_streamed, timeout=60_000):
            controller.conversations.send("Tell me a very long story.")
        with (
            qtbot.waitSignal(controller.models.model_lost, timeout=60_000),
            qtbot.waitSignal(controller.conversations.generation_failed, timeout=60_000) as failed,
        ):
            os.kill(pids[0], signal.SIGKILL)
        message_id, message, detail = failed.args
        assert message.startswith("The model engine stopped unexpectedly while answering")
        assert "SIGKILL" in detail
        stored = controller.store.get_message(message_id)
        assert stored.status == "interrupted"
        assert stored.content  # the partial answer is kept
        assert controller.models.model_info is None

        with qtbot.waitSignal(controller.models.model_loaded, timeout=60_000):
            controller.models.load_model(str(tiny_model))
        assert proxy.pid is not None
        pids.append(proxy.pid)
        assert pids[1] != pids[0]
        controller.update_settings(controller.settings.replace(max_tokens=8))
        with qtbot.waitSignal(controller.conversations.generation_finished, timeout=60_000) as finished:
            controller.conversations.send("And now?")
        assert controller.store.get_message(finished.args[0]).status == "complete"
    finally:
        proxy.close()  # the killed engine was reaped by the proxy; this ends the current one


def test_a_model_that_aborts_llama_cpp_is_a_message_and_the_app_goes_on(
    qtbot, make_controller, tiny_model: Path, tmp_path: Path
) -> None:
    aborting = write_tiny_model(tmp_path / "no-temp-scale.gguf", TinyModelSpec(sliding_window=0))[0]
    proxy = EngineProxy()
    try:
        controller = make_controller(proxy, Settings(n_ctx=1024, n_threads=1, max_tokens=8))  # type: ignore[arg-type]
        with qtbot.waitSignal(controller.models.model_loaded, timeout=60_000):
            controller.models.load_model(str(tiny_model))
        with qtbot.waitSignal(controller.conversations.generation_finished, timeout=60_000) as first:
            controller.conversations.send("A first question.")
        conversation = controller.conversations.current_conversation_id

        with qtbot.waitSignal(controller.models.model_loaded, timeout=60_000):
            controller.models.load_model(str(aborting))  # llama.cpp loads it, then aborts at the first graph
        with (
            qtbot.waitSignal(controller.models.model_lost, timeout=60_000),
            qtbot.waitSignal(controller.conversations.generation_failed, timeout=60_000) as failed,
        ):
            controller.conversations.send("And this one?")
        _message_id, message, detail = failed.args
        assert message.startswith("The model engine stopped unexpectedly while answering")
        assert "GGML_ASSERT(f_attn_temp_scale != 0.0f)" in detail
        assert "SIGABRT" in detail
        assert controller.store.get_message(first.args[0]).status == "complete"  # the chat is intact
        assert controller.conversations.current_conversation_id == conversation

        with qtbot.waitSignal(controller.models.model_loaded, timeout=60_000):
            controller.models.load_model(str(tiny_model))
        with qtbot.waitSignal(controller.conversations.generation_finished, timeout=60_000) as again:
            controller.conversations.send("Once more.")
        assert controller.store.get_message(again.args[0]).status == "complete"
    finally:
        proxy.close()


def test_the_window_offers_to_reload_the_model_a_killed_engine_took(
    qtbot, make_controller, tiny_model: Path
) -> None:
    """SIGKILL of the engine mid-answer at 10 random moments: each time the window survives, the
    partial answer is kept as interrupted, and Reload model brings a fresh engine back."""
    from PySide6.QtCore import Qt

    from app.ui.main_window import MainWindow

    proxy = EngineProxy()
    chooser = random.Random(10)
    try:
        settings = Settings(n_ctx=8192, n_threads=1, max_tokens=100_000)
        controller = make_controller(proxy, settings)  # type: ignore[arg-type]
        window = MainWindow(controller)
        qtbot.addWidget(window)
        window.show()
        with qtbot.waitSignal(controller.models.model_loaded, timeout=60_000):
            controller.models.load_model(str(tiny_model))
        banner = window.error_banner
        pids: list[int] = []
        for run in range(10):
            pid = proxy.pid
            assert pid is not None
            pids.append(pid)
            chunks = chooser.randint(1, 8)  # streamed deltas (30/s at most) before the kill
            seen: list[str] = []
            controller.conversations.tokens_streamed.connect(lambda _m, t, seen=seen: seen.append(t))
            controller.conversations.send(f"Tell me a very long story, number {run}.")
            qtbot.waitUntil(lambda seen=seen, chunks=chunks: len(seen) >= chunks, timeout=60_000)
            with qtbot.waitSignal(controller.conversations.generation_failed, timeout=60_000) as failed:
                os.kill(pid, signal.SIGKILL)
            assert controller.store.get_message(failed.args[0]).status == "interrupted"
            assert controller.store.get_message(failed.args[0]).content  # the partial answer is kept
            assert banner.isVisible()
            assert banner.text().startswith("The model engine stopped unexpectedly while answering")
            assert "SIGKILL" in banner.label.toolTip()  # the details
            assert window.model_label.text() == "No model"
            assert banner.action_button.text() == "Reload model"
            with qtbot.waitSignal(controller.models.model_loaded, timeout=60_000):
                qtbot.mouseClick(banner.action_button, Qt.MouseButton.LeftButton)
            assert window.model_label.text() == controller.models.model_info.name
            assert not banner.action_button.isVisible()
        assert len(set(pids)) == 10
        assert proxy.pid not in pids
        messages = controller.conversations.messages()
        assert [m.status for m in messages if m.role == "assistant"] == ["interrupted"] * 10
    finally:
        proxy.close()
