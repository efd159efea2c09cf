"""The whole app on a generated tiny llama4 model: real entry point wiring, real planner (with
llama.cpp's dry run), real llama.cpp in the inference thread, real SQLite, real widgets offscreen."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from PySide6.QtCore import Qt

from app.config import Settings, load_settings
from app.core.engine.process import EngineProxy
from app.core.tiny_model import TinyModelSpec, write_tiny_model

if TYPE_CHECKING:
    from app.main import Application

pytestmark = pytest.mark.qt_log_ignore("This plugin does not support propagateSizeHints")

ARTIFACTS = Path(os.environ.get("SCOUT_TEST_ARTIFACTS", "artifacts"))


@pytest.fixture
def start_app(start_app, request):
    """Start the app like `scout-chat --data-dir DIR [--model PATH]`, at 1100x760; a screenshot of
    each window still open goes to the artifacts when the test failed."""
    start_app.size = (1100, 760)
    # One llama.cpp thread: the suite shares 2 cores with Qt's threads (and, on a loaded
    # machine, with others), and llama.cpp's spinning threads collapse when oversubscribed
    # (tiny model here: 927 tokens/s with 1 thread, 43 with 2 under a load of 9).
    start_app.first_settings = Settings(n_threads=1)
    yield start_app
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        ARTIFACTS.mkdir(exist_ok=True)
        for application in start_app.running:
            application.window.grab().save(str(ARTIFACTS / f"{request.node.name}.png"))


def wait_loaded(qtbot, application: Application) -> None:
    if application.controller.models.model_info is None:
        with qtbot.waitSignal(application.controller.models.model_loaded, timeout=60_000):
            pass


def wait_answer(qtbot, application: Application, action, timeout: int = 60_000) -> tuple[int, object]:
    """Run ``action`` and wait for the answer; a generation failure fails the test with its text."""
    result: dict[str, tuple] = {}
    controller = application.controller
    controller.conversations.generation_finished.connect(lambda m, s: result.setdefault("done", (m, s)))
    controller.conversations.generation_failed.connect(
        lambda m, text, detail: result.setdefault("failed", (m, text, detail))
    )
    action()
    qtbot.waitUntil(lambda: bool(result), timeout=timeout)
    assert "failed" not in result, f"generation failed: {result.get('failed')}"
    return result["done"]


def type_and_send(qtbot, application: Application, text: str) -> None:
    edit = application.window.composer.edit
    edit.setFocus()
    qtbot.keyClicks(edit, text)
    qtbot.keyClick(edit, Qt.Key.Key_Return)


def test_chat_stop_regenerate_close_and_reopen(qtbot, start_app, tiny_model: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    app = start_app(data, "--model", str(tiny_model))
    wait_loaded(qtbot, app)
    controller, window = app.controller, app.window
    assert controller.models.model_info.architecture == "llama4"
    assert controller.models.plan is not None
    assert controller.models.plan.fits
    assert "Tiny Llama 4" in window.model_label.text()
    engine = controller._inference.worker.engine  # the app's engine: llama.cpp in its own process
    assert isinstance(engine, EngineProxy)
    assert engine.pid not in (None, os.getpid())

    # 1. a streamed answer
    streamed: list[str] = []
    controller.conversations.tokens_streamed.connect(lambda _m, t: streamed.append(t))
    first_id, stats = wait_answer(
        qtbot, app, lambda: type_and_send(qtbot, app, "Hello Scout, the capital of France?")
    )
    assert len(streamed) >= 1
    assert stats.completion_tokens > 0
    answer = window.chat_view.message_widget(first_id)
    assert answer is not None
    assert answer.text == "".join(streamed)
    assert answer.text.strip()

    # 2. stop a long answer mid-way: the partial text stays
    controller.update_settings(controller.settings.replace(max_tokens=100_000))
    streamed.clear()
    with qtbot.waitSignal(controller.conversations.tokens_streamed, timeout=60_000):
        type_and_send(qtbot, app, "Now tell me a very long story.")
    with qtbot.waitSignal(controller.conversations.generation_finished, timeout=60_000) as stopped:
        qtbot.keyClick(window.composer.edit, Qt.Key.Key_Escape)
    long_id, long_stats = stopped.args
    assert long_stats.finish_reason == "cancelled"
    partial = controller.store.get_message(long_id)
    assert partial.status == "cancelled"
    assert partial.content == "".join(streamed)
    assert 0 < long_stats.completion_tokens < 100_000

    # 3. regenerate the last answer
    controller.update_settings(controller.settings.replace(max_tokens=40))
    regenerated_id, _stats = wait_answer(qtbot, app, window.regenerate_action.trigger)
    assert regenerated_id != long_id
    assert window.chat_view.message_widget(long_id) is None
    conversation_id = controller.conversations.current_conversation_id
    contents = [m.content for m in controller.conversations.messages()]
    assert len(contents) == 4

    # 4. close and reopen with the same data dir: the conversation and the model come back
    start_app.close(app)
    assert load_settings(app.paths).last_model == str(tiny_model)
    again = start_app(data)
    wait_loaded(qtbot, again)
    assert again.controller.conversations.current_conversation_id == conversation_id
    assert [m.content for m in again.controller.conversations.messages()] == contents
    assert again.controller.conversations.conversations()[0].title.startswith("Hello Scout")
    shown = [w.text for w in again.window.chat_view.message_widgets() if hasattr(w, "text")]
    assert shown[:1] == [contents[0]]


def test_conversation_outgrowing_a_small_context_keeps_working(
    qtbot, start_app, tiny_model, tmp_path
) -> None:
    app = start_app(tmp_path / "data", "--model", str(tiny_model), "--n-ctx", "512")
    wait_loaded(qtbot, app)
    controller = app.controller
    assert controller.models.model_info.n_ctx == 512
    controller.update_settings(controller.settings.replace(max_tokens=48))
    for i in range(8):
        _mid, stats = wait_answer(
            qtbot,
            app,
            lambda i=i: type_and_send(qtbot, app, f"Question {i}: the quick brown fox?"),
        )
        assert stats.finish_reason in ("length", "stop")
    notices = [
        w for w in app.window.chat_view.message_widgets() if not hasattr(w, "role") or w.role == "notice"
    ]
    assert notices, "a marker says that earlier messages were left out"
    assert any(m.role == "notice" and "left out" in m.content for m in controller.conversations.messages())


def test_model_without_chat_template_still_answers(
    qtbot, start_app, tiny_model_no_template, tmp_path
) -> None:
    app = start_app(tmp_path / "data", "--model", str(tiny_model_no_template))
    wait_loaded(qtbot, app)
    assert "no chat template" in app.window.error_banner.text()
    with qtbot.waitSignal(app.controller.conversations.generation_finished, timeout=60_000) as done:
        type_and_send(qtbot, app, "Hello?")
    assert done.args[1].completion_tokens > 0
    assert app.controller.store.get_message(done.args[0]).content.strip()


@pytest.mark.parametrize("kind", ["text-renamed", "truncated", "missing"])
def test_bad_model_files_show_a_clear_message_and_the_app_stays_usable(
    qtbot, start_app, tiny_model: Path, tmp_path: Path, kind: str
) -> None:
    bad = tmp_path / "model.gguf"
    if kind == "text-renamed":
        bad.write_text("this is a shopping list, not a model\n")
        expected = "not a GGUF model file"
    elif kind == "truncated":
        bad.write_bytes(tiny_model.read_bytes()[:4096])
        expected = "model.gguf"
    else:
        expected = "not found"
    app = start_app(tmp_path / "data")
    with qtbot.waitSignal(app.controller.models.model_load_failed, timeout=60_000) as failed:
        app.controller.models.load_model(str(bad))
    assert expected in failed.args[0]
    assert expected in app.window.error_banner.text()
    assert app.window.error_banner.isVisible()
    # still usable: a good model loads and answers
    with qtbot.waitSignal(app.controller.models.model_loaded, timeout=60_000):
        app.controller.models.load_model(str(tiny_model))
    with qtbot.waitSignal(app.controller.conversations.generation_finished, timeout=60_000):
        type_and_send(qtbot, app, "Are you there?")


def test_self_test_command(capsys, tmp_path: Path) -> None:
    from app.main import main

    assert main(["--self-test"]) == 0
    out = capsys.readouterr().out
    assert "self-test OK" in out
    assert "tokens per second" in out
    assert re.search(r"^forecast [\d,.]+ tok/s, measured [\d,.]+ tok/s; prompt", out, re.MULTILINE), out
    model = write_tiny_model(tmp_path / "other.gguf", TinyModelSpec(seed=5, dtype="Q8_0"))[0]
    assert main(["--self-test", "--model", str(model)]) == 0
    bad = tmp_path / "bad.gguf"
    bad.write_text("nope")
    assert main(["--self-test", "--model", str(bad)]) == 1
    assert "not a GGUF model file" in capsys.readouterr().out


def test_image_and_document_turn_with_the_vision_projector(
    qtbot, start_app, tiny_model: Path, tiny_projector: Path, tmp_path: Path
) -> None:
    from tests.vision_fixtures import png_bytes

    assert tiny_projector.parent == tiny_model.parent  # found beside the model, like a real download
    app = start_app(tmp_path / "data")
    controller = app.controller
    # one thread: image encoding with 2 threads on a 2-core machine is ~800x slower (Settings → threads)
    controller.update_settings(controller.settings.replace(n_threads=1))
    with qtbot.waitSignal(controller.models.model_loaded, timeout=60_000):
        controller.models.load_model(str(tiny_model))
    assert controller.models.model_info.has_vision
    picture = tmp_path / "chart.png"
    picture.write_bytes(png_bytes(96, 64, gradient=True))
    notes = tmp_path / "notes.md"
    notes.write_text("# Notes\n\nThe chart shows sales by month.\n", encoding="utf-8")
    ready: list[object] = []
    controller.attachments.attachment_updated.connect(
        lambda a: a.meta.get("state") == "ready" and ready.append(a)
    )
    controller.attachments.attach_files([str(picture), str(notes)])
    qtbot.waitUntil(lambda: len(ready) == 2, timeout=30_000)
    infos: list[str] = []
    controller.notices.info_message.connect(infos.append)
    message_id, stats = wait_answer(
        qtbot, app, lambda: type_and_send(qtbot, app, "What does the chart show?")
    )
    assert stats.completion_tokens > 0
    assert stats.prompt_tokens > 20  # the image's tokens and the document are in the prompt
    assert any("re-reads the whole conversation" in text for text in infos)
    user = controller.conversations.messages()[0]
    kinds = sorted(a.kind for a in controller.attachments.message_attachments([user.id])[user.id])
    assert kinds == ["document", "image"]
    assert controller.store.get_message(message_id).stats["context_mode"] == "whole"
