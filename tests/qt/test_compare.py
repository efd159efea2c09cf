"""Compare (one message, two presets, the answers side by side, "Keep this one") and "Delete this
branch…" in the real window: the real tiny model for compare (each answer with its own sampling,
keep left/right, Stop keeps the partial answers), a FakeEngine for the branch deletions."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from PySide6.QtCore import Qt

from app.config import Settings
from app.ui.compare_view import CompareDialog
from app.ui.message_widget import MessageWidget
from app.workers.conversations import CompareSide
from tests.fakes import FakeEngine

if TYPE_CHECKING:
    from collections.abc import Callable

    from app.core.engine import LlamaEngine
    from app.core.types import SamplingParams
    from app.ui.main_window import MainWindow

pytestmark = pytest.mark.qt_log_ignore(
    "This plugin does not support propagateSizeHints", "This plugin does not support raise"
)


@pytest.fixture
def real_window(llama_controller, show_window) -> Callable[[int], tuple[MainWindow, LlamaEngine]]:
    def make(max_tokens: int) -> tuple[MainWindow, LlamaEngine]:
        controller, engine = llama_controller(Settings(n_threads=1, max_tokens=max_tokens))
        return show_window(controller, (1000, 700)), engine

    return make


def _send(qtbot, window: MainWindow, text: str) -> None:
    with qtbot.waitSignal(window.conversations.generation_finished, timeout=60_000):
        window.composer.set_text(text)
        qtbot.keyClick(window.composer.edit, Qt.Key.Key_Return)


def _answers(window: MainWindow) -> list[MessageWidget]:
    shown = window.chat_view.message_widgets()
    return [w for w in shown if isinstance(w, MessageWidget) and w.role == "assistant"]


def _compare_from_menu(qtbot, window: MainWindow, text: str, right: str = "Precise") -> object:
    """Chat → Compare two answers… with the composer's ``text``: Default on the left, ``right``."""

    def choose(dialog: CompareDialog) -> bool:
        assert dialog.text() == text  # the composer's text
        assert [b.currentText() for b in dialog.preset_boxes] == ["Default", "Precise"]
        assert not dialog.model_boxes[0].isVisibleTo(dialog)  # a local model: presets only
        dialog.preset_boxes[1].setCurrentText(right)
        assert dialog.compare_button.isEnabled()
        return True

    window.branches.run_compare_dialog = choose
    window.composer.set_text(text)
    with qtbot.waitSignal(window.conversations.compare_finished, timeout=60_000) as done:
        window.branches.compare_action.trigger()
    return done.args[0]


def test_compare_two_presets_side_by_side_then_keep_either(qtbot, real_window) -> None:
    window, engine = real_window(6)
    chats = window.conversations
    _send(qtbot, window, "a first question")
    used: list[SamplingParams | None] = []

    def record(_message_id: int, _stats: object) -> None:
        used.append(engine.last_sampling)  # the answer that just ended (the next starts after)

    chats.generation_finished.connect(record)
    run = _compare_from_menu(qtbot, window, "which is better?")
    assert window.composer.text() == ""
    assert len(run.answers) == 2
    left, right = (chats.store.get_message(i) for i in run.answers)
    assert left is not None
    assert right is not None
    # each answer was written with its own preset's sampling, and says so
    assert [(s.temperature, s.top_p, s.min_p) for s in used if s is not None] == [
        (0.6, 0.9, 0.01),
        (0.2, 0.9, 0.05),
    ]
    assert (left.sampling["temperature"], right.sampling["temperature"]) == (0.6, 0.2)
    assert left.status == right.status == "complete"
    assert left.parent_id == right.parent_id == run.question_id  # siblings under one question
    # side by side, each under its preset's name, each keepable
    panel = window.chat_view.compare_panel
    assert panel is not None
    assert [c.title.text() for c in panel.columns] == ["Default", "Precise"]
    assert [panel.answer(0).text, panel.answer(1).text] == [left.content, right.content]
    assert all(c.keep_button.isEnabled() for c in panel.columns)
    assert [w.text for w in window.chat_view.message_widgets()][-1] == "which is better?"

    # keep the right one: its branch is shown, the left one stays one ‹ away
    qtbot.mouseClick(panel.columns[1].keep_button, Qt.MouseButton.LeftButton)
    assert window.chat_view.compare_panel is None
    assert chats.messages()[-1].id == right.id
    kept = _answers(window)[-1]
    assert (kept.message_id, kept.branch_label.text()) == (right.id, "2/2")
    qtbot.mouseClick(kept.branch_prev, Qt.MouseButton.LeftButton)
    assert _answers(window)[-1].message_id == left.id
    qtbot.mouseClick(_answers(window)[-1].branch_next, Qt.MouseButton.LeftButton)

    # a second comparison goes on from the kept answer; keeping the left one shows it
    run2 = _compare_from_menu(qtbot, window, "and now?", right="Creative")
    question = chats.store.get_message(run2.question_id)
    assert question is not None
    assert question.parent_id == right.id
    panel = window.chat_view.compare_panel
    assert panel is not None
    assert [c.title.text() for c in panel.columns] == ["Default", "Creative"]
    qtbot.mouseClick(panel.columns[0].keep_button, Qt.MouseButton.LeftButton)
    assert [m.id for m in chats.messages()][-3:] == [right.id, run2.question_id, run2.answers[0]]
    assert _answers(window)[-1].branch_label.text() == "1/2"
    # nothing was lost: both comparisons' answers are in the tree
    tree = {m.id for m in chats.store.tree(chats.current_conversation_id)}
    assert {*run.answers, *run2.answers} <= tree


def test_stop_during_compare_keeps_both_partial_and_whole_answers(qtbot, real_window) -> None:
    window, _engine = real_window(900)  # long answers: the second is stopped at its first piece
    chats = window.conversations
    runs: list[object] = []
    chats.compare_started.connect(runs.append)
    stopped: list[int] = []

    def stop_second(message_id: int, _text: str) -> None:
        run = chats.compare_run
        if run is not None and len(run.answers) == 2 and message_id == run.answers[1] and not stopped:
            stopped.append(message_id)
            chats.stop()

    chats.tokens_streamed.connect(stop_second)
    with qtbot.waitSignal(chats.compare_finished, timeout=120_000) as done:
        chats.compare("tell a long story", CompareSide("Default"), CompareSide("Creative"))
    run = done.args[0]
    assert stopped == [run.answers[1]]
    left, right = (chats.store.get_message(i) for i in run.answers)
    assert left is not None
    assert right is not None
    assert left.status == "complete"
    assert right.status == "cancelled"
    assert right.content  # the partial answer is kept
    assert not chats.is_busy
    panel = window.chat_view.compare_panel
    assert panel is not None
    window.chat_view.flush()
    assert panel.answer(1).text == right.content
    assert panel.answer(1).badge.text() == "stopped"
    assert all(c.keep_button.isEnabled() for c in panel.columns)
    qtbot.mouseClick(panel.columns[1].keep_button, Qt.MouseButton.LeftButton)
    assert chats.messages()[-1].id == right.id  # a stopped answer can be kept (and continued)


def test_stop_during_the_first_answer_writes_no_second(qtbot, fake_window) -> None:
    engine = FakeEngine(pieces=["The left answer"])
    engine.hold = True
    window = fake_window(engine)
    chats = window.conversations
    chats.compare("q", CompareSide("Default"), CompareSide("Precise"))
    qtbot.waitUntil(lambda: chats.compare_run is not None and len(chats.compare_run.answers) == 1)
    qtbot.waitUntil(lambda: window.chat_view.compare_panel.answer(0).text == "The left answer")
    with qtbot.waitSignal(chats.compare_finished, timeout=5000) as done:
        chats.stop()
    assert len(done.args[0].answers) == 1
    panel = window.chat_view.compare_panel
    assert panel.columns[0].keep_button.isEnabled()
    assert not panel.columns[1].keep_button.isEnabled()
    assert panel.columns[1].waiting.text() == "Not written: the comparison was stopped."
    assert chats.store.get_message(done.args[0].answers[0]).status == "cancelled"
    assert chats.queue() is None
    # sending goes on after the answer shown; the panel gives way to the plain branch
    engine.hold = False
    with qtbot.waitSignal(chats.generation_finished, timeout=5000):
        chats.send("next")
    assert window.chat_view.compare_panel is None
    assert [w.role for w in window.chat_view.message_widgets()] == ["user", "assistant"] * 2


def test_compare_refuses_what_it_cannot_do(qtbot, make_controller, load_fake_model) -> None:
    controller = make_controller(FakeEngine())
    load_fake_model(controller)
    chats = controller.conversations
    errors: list[str] = []
    controller.notices.error_occurred.connect(errors.append)
    chats.compare("q", CompareSide("Default"), CompareSide("Default"))
    chats.compare("q", CompareSide("Default"), CompareSide("Nonexistent"))
    chats.compare("q", CompareSide("Default"), CompareSide("Default", model="other-model"))
    assert errors == [
        "Choose two different presets (or models) to compare.",
        "There is no preset named “Nonexistent”.",
        "The model “other-model” is not offered by the server in use: models can be compared only on "
        "a server that serves several (File → Servers…).",
    ]
    assert chats.current_conversation_id is None  # nothing was stored
    dialog = CompareDialog("")
    assert not dialog.compare_button.isEnabled()
    assert dialog.problem.text() == "Type the message to send to both."
    dialog.message_edit.setPlainText("hi")
    dialog.preset_boxes[1].setCurrentText("Default")
    assert not dialog.compare_button.isEnabled()
    dialog.preset_boxes[1].setCurrentText("Creative")
    assert dialog.compare_button.isEnabled()
    assert dialog.sides() == (CompareSide("Default"), CompareSide("Creative"))
    dialog.deleteLater()


# -- Delete this branch ------------------------------------------------------------------------------
def test_delete_a_branch_from_the_context_menu(qtbot, fake_window) -> None:
    window = fake_window(FakeEngine(pieces=["answer"]))
    chats = window.conversations
    _send(qtbot, window, "question")
    for _ in range(2):
        with qtbot.waitSignal(chats.generation_finished, timeout=5000):
            chats.regenerate()
    conversation = chats.current_conversation_id
    first, second, third = chats.store.children(conversation)[chats.messages()[0].id]
    answer = _answers(window)[-1]
    assert (answer.message_id, answer.branch_label.text()) == (third, "3/3")
    assert answer.delete_branch_action in answer.actions()
    assert answer.contextMenuPolicy() == Qt.ContextMenuPolicy.ActionsContextMenu
    assert answer.delete_branch_action.isEnabled()

    asked: list[bool] = []
    window.branches.confirm_delete = lambda _parent: asked.append(True) or False  # declined
    answer.delete_branch_action.trigger()
    assert asked == [True]
    assert len(chats.store.tree(conversation)) == 4  # nothing deleted

    window.branches.confirm_delete = lambda _parent: True
    answer.delete_branch_action.trigger()
    assert chats.store.get_message(third) is None
    shown = _answers(window)[-1]
    assert (shown.message_id, shown.branch_label.text()) == (second, "2/2")  # the sibling before it
    _answers(window)[-1].delete_branch_action.trigger()
    shown = _answers(window)[-1]
    assert shown.message_id == first
    assert not shown.branch_box.isVisibleTo(window)
    assert not shown.delete_branch_action.isEnabled()  # the last branch left
    shown.delete_branch_action.trigger()  # (a menu would not offer it) nothing happens
    assert chats.store.get_message(first) is not None
    assert not chats.can_delete_branch(first)
    assert [m.id for m in chats.messages()] == [chats.messages()[0].id, first]

    # a user message's branch goes with everything after it
    _send(qtbot, window, "second question")
    old_question = chats.messages()[-2].id
    with qtbot.waitSignal(chats.generation_finished, timeout=5000):
        chats.edit_message(old_question, "second question, edited")
    assert len(chats.store.tree(conversation)) == 6
    edited = [w for w in window.chat_view.message_widgets() if w.role == "user"][-1]
    assert edited.branch_label.text() == "2/2"
    edited.delete_branch_action.trigger()
    assert [m.content for m in chats.messages() if m.role == "user"] == ["question", "second question"]
    assert len(chats.store.tree(conversation)) == 4
    assert not [w for w in window.chat_view.message_widgets() if w.role == "user"][-1].branch_box.isVisibleTo(
        window
    )

    # not while an answer is written
    window.chat_view.set_busy(True)
    assert not _answers(window)[-1].delete_branch_action.isEnabled()
    window.chat_view.set_busy(False)
