"""Continue: a stopped or length-limited answer is carried on in place — the same message grows,
its figures add up — on the real tiny model in the real window, and through the controller."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from PySide6.QtCore import Qt

from app.config import Settings
from app.ui.message_widget import MessageWidget
from tests.fakes import FakeEngine

if TYPE_CHECKING:
    from app.ui.main_window import MainWindow

    pass

pytestmark = pytest.mark.qt_log_ignore(
    "This plugin does not support propagateSizeHints", "This plugin does not support raise"
)


def _answers(window: MainWindow) -> list[MessageWidget]:
    return [
        w
        for w in window.chat_view.message_widgets()
        if isinstance(w, MessageWidget) and w.role == "assistant"
    ]


def test_continue_a_length_limited_answer_on_the_real_tiny_model(
    qtbot, llama_controller, show_window
) -> None:
    controller, engine = llama_controller(Settings(n_threads=1, max_tokens=6))
    window = show_window(controller, (900, 700))
    chats = controller.conversations

    # the tiny model rarely ends on its own: answers are cut at 6 tokens, until one is
    for attempt in range(5):
        with qtbot.waitSignal(chats.generation_finished, timeout=60_000) as done:
            window.composer.set_text(f"tell me a long story, take {attempt}")
            qtbot.keyClick(window.composer.edit, Qt.Key.Key_Return)
        if done.args[1].finish_reason == "length":
            break
    else:
        pytest.skip("the tiny model ended every answer before the limit")
    answer = _answers(window)[-1]
    before = chats.store.get_message(answer.message_id)
    assert before.stats["finish_reason"] == "length"
    assert answer.continue_button.isVisibleTo(window)
    assert answer.badge.text() == "cut off at the max-tokens limit"

    with qtbot.waitSignal(chats.generation_finished, timeout=60_000) as done:
        qtbot.mouseClick(answer.continue_button, Qt.MouseButton.LeftButton)
    assert done.args[0] == answer.message_id  # the same message, not a new one
    # the prompt the engine saw ends with the answer as written: no end of turn after it
    assert engine.last_prompt.endswith(before.content)
    assert not engine.last_prompt.endswith("<|eot|>")
    after = chats.store.get_message(answer.message_id)
    assert after.content.startswith(before.content)
    assert len(after.content) > len(before.content)
    # the figures are the whole answer's: the tokens of both parts (the window shows them too)
    total = after.stats["completion_tokens"]
    assert total > before.stats["completion_tokens"]
    assert done.args[1].completion_tokens == total
    assert f"{total} tokens" in answer.stats_label.text()
    assert after.stats["continued"] == 1
    assert _answers(window)[-1] is answer
    assert answer.text == after.content
    assert [m.id for m in chats.messages()][-1] == answer.message_id  # no new branch, no new message
    assert len(chats.store.tree(chats.current_conversation_id)) == len(chats.messages())


def test_a_stopped_answer_continues_and_only_the_last_answer_offers_it(qtbot, fake_window) -> None:
    engine = FakeEngine(pieces=["Once upon a time"])
    engine.hold = True
    window = fake_window(engine)
    chats = window.conversations
    chats.send("a story")
    qtbot.waitUntil(lambda: bool(_answers(window)) and _answers(window)[-1].text == "Once upon a time")
    with qtbot.waitSignal(chats.generation_finished, timeout=5000):
        chats.stop()
    answer = _answers(window)[-1]
    assert answer.continue_button.isVisibleTo(window)
    engine.pieces, engine.hold = [", a fox."], False
    with qtbot.waitSignal(chats.generation_finished, timeout=5000):
        qtbot.mouseClick(answer.continue_button, Qt.MouseButton.LeftButton)
    assert engine.continued == [False, True]
    assert [m.role for m in engine.seen[-1]][-2:] == ["user", "assistant"]
    assert engine.seen[-1][-1].content == "Once upon a time"
    saved = chats.store.get_message(answer.message_id)
    assert (saved.content, saved.status) == ("Once upon a time, a fox.", "complete")
    assert answer.text == "Once upon a time, a fox."
    assert not answer.continue_button.isVisibleTo(window)  # it ended on its own

    # an older answer never offers Continue (it would not be the end of the conversation)
    engine.hold = True
    chats.send("another")
    qtbot.waitUntil(lambda: len(_answers(window)) == 2)
    with qtbot.waitSignal(chats.generation_finished, timeout=5000):
        chats.stop()
    first, second = _answers(window)
    assert not first.continue_button.isVisibleTo(window)
    assert second.continue_button.isVisibleTo(window)
    assert not chats.can_continue(first.message_id)
