"""Reading a long document whole from the window: the offer (with its estimate), the progress on
the answer, the composer's "Read whole", and the extracts kept for the next time. Screenshots go to
$SCOUT_UI_SHOTS (default /tmp/ui_shots)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from app.config import AppPaths, Settings
from app.core.reading import question_key
from app.core.store import Store
from app.ui.main_window import MainWindow
from app.workers.controller import AppController
from tests.fakes import FakeEngine
from tests.qt.test_attachments import attach, long_document

if TYPE_CHECKING:
    from collections.abc import Iterator

    from app.core.types import GenerationStats

SHOTS = Path(os.environ.get("SCOUT_UI_SHOTS", "/tmp/ui_shots"))


class MeasuredEngine(FakeEngine):
    """A FakeEngine that reports prompt time too (500 prompt tokens/s), as the real one does."""

    @property
    def last_stats(self) -> GenerationStats:
        stats = self._stats
        return dataclasses.replace(stats, prompt_eval_s=stats.prompt_tokens_evaluated / 500)


@pytest.fixture
def window(qtbot, app_paths: AppPaths) -> Iterator[tuple[MainWindow, AppController, MeasuredEngine]]:
    store = Store(app_paths.database)
    engine = MeasuredEngine(["Fee ", "of 3 crowns ", "(p. 2)."], n_ctx=1024)
    controller = AppController(store, app_paths, Settings(n_ctx=1024, max_tokens=128), lambda: engine)
    win = MainWindow(controller)
    qtbot.addWidget(win)
    win.resize(1000, 720)
    win.show()
    qtbot.waitExposed(win)
    with qtbot.waitSignal(controller.models.model_loaded, timeout=5000):
        controller.models.load_model("fake.gguf")
    yield win, controller, engine
    win.close()
    controller.shutdown()
    store.close()


def shot(widget: object, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    widget.grab().save(str(SHOTS / f"{name}.png"))  # type: ignore[attr-defined]


def test_an_aggregate_question_offers_to_read_the_whole_document(qtbot, window, tmp_path: Path) -> None:
    win, controller, engine = window
    conversations = controller.conversations
    (doc,) = attach(controller, qtbot, [long_document(tmp_path, paragraphs=300)])
    assert doc.meta["mode"] == "retrieval"
    assert doc.meta["mode_reason"].startswith("passages: does not fit the 1,024-token context")
    assert win.composer.read_whole_button.isVisibleTo(win)

    # an ordinary question is answered from passages, without asking
    with qtbot.waitSignal(conversations.generation_finished, timeout=5000):
        conversations.send("What is the secret launch code?")
    assert win.reading_box is None

    # "list all…" asks first, with the time it takes here (the last answer measured the speeds)
    with qtbot.waitSignal(conversations.reading_offered, timeout=5000) as offered:
        conversations.send("List all the budget items.")
    offer = offered.args[0]
    assert offer.estimate.parts > 2
    assert offer.estimate.seconds is not None
    box = win.reading_box
    assert box is not None
    assert box.isVisible()
    assert box.text().startswith("Read all ")
    assert "on this computer" in box.text()
    assert win.composer.is_busy
    shot(box, "reading-confirm")

    # declined: the usual answer from passages
    with qtbot.waitSignal(conversations.generation_finished, timeout=5000):
        next(b for b in box.buttons() if b.text() == "Answer from passages").click()
    assert len([m for m in engine.seen if "extract everything" in m[-1].content]) == 0

    # accepted: read in parts, progress on the answer, extracts kept
    progress: list[tuple[int, int]] = []

    def on_progress(message_id: int, done: int, total: int) -> None:
        progress.append((done, total))
        answers.add(message_id)

    answers: set[int] = set()
    conversations.reading_progress.connect(on_progress)
    with qtbot.waitSignal(conversations.reading_offered, timeout=5000):
        conversations.send("List every budget item.")
    engine.delay = 0.02  # slow enough to look at the reading while it runs
    with qtbot.waitSignal(conversations.generation_finished, timeout=20_000) as finished:
        win.reading_read_button.click()  # type: ignore[attr-defined]
        qtbot.waitUntil(lambda: len(progress) >= 3, timeout=10_000)
        (message_id,) = answers
        widget = win.chat_view.message_widget(message_id)
        assert widget is not None
        assert widget.reading_box is not None
        assert widget.reading_box.isVisible()
        assert widget.reading_label.text().startswith("Reading the whole document: part ")
        assert not widget.typing_label.isVisible()
        shot(win, "reading-in-progress")
    engine.delay = 0.0
    assert not widget.reading_box.isVisible()
    total = progress[0][1]
    assert progress == [(n, total) for n in range(total + 1)]
    assert len([m for m in engine.seen if "extract everything" in m[-1].content]) == total
    answer = controller.store.get_message(finished.args[0])
    assert answer.content == "Fee of 3 crowns (p. 2)."
    assert answer.stats["context_mode"] == "whole"
    saved = controller.store.extracts([doc.id], question_key("List every budget item."))
    assert len(saved) == total
    shot(win, "reading-done")

    # the same question again: the offer says the parts are read already, and none is read again
    engine.seen.clear()
    with qtbot.waitSignal(conversations.reading_offered, timeout=5000) as offered:
        conversations.send("list every  budget item.")
    assert offered.args[0].saved_parts == total
    with qtbot.waitSignal(conversations.generation_finished, timeout=20_000):
        win.reading_read_button.click()  # type: ignore[attr-defined]
    assert not [m for m in engine.seen if "extract everything" in m[-1].content]


def test_read_whole_from_the_composer_summarises_without_a_question(qtbot, window, tmp_path: Path) -> None:
    win, controller, _engine = window
    attach(controller, qtbot, [long_document(tmp_path, paragraphs=300)])
    with qtbot.waitSignal(controller.conversations.reading_offered, timeout=5000) as offered:
        win.composer.read_whole_button.click()
    assert offered.args[0].question == "Summarize the whole document."
    with qtbot.waitSignal(controller.conversations.busy_changed, timeout=5000) as idle:
        win.composer.send_button.click()  # Stop while asked: no answer
    assert idle.args == [False]
    assert [m.role for m in controller.conversations.messages()] == ["user"]
    qtbot.waitUntil(lambda: win.reading_box is None)  # the question closes with it
