"""AppController with the real SQLite store and a real worker thread (FakeEngine for speed and
determinism; the real engine goes through the same controller in tests/e2e)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from app.config import AppPaths, Settings, load_settings
from tests.fakes import FakeEngine

if TYPE_CHECKING:
    from pathlib import Path

    from app.workers.controller import AppController


def load(controller: AppController, qtbot) -> None:
    with qtbot.waitSignal(controller.models.model_loaded, timeout=5000):
        controller.models.load_model("fake.gguf")


def test_send_streams_and_saves(make_controller, qtbot) -> None:
    controller = make_controller(FakeEngine(["Hel", "lo", "!"]))
    load(controller, qtbot)
    added = []
    controller.conversations.message_added.connect(added.append)
    streamed: list[str] = []
    controller.conversations.tokens_streamed.connect(lambda _m, t: streamed.append(t))
    updated = []
    controller.conversations.conversation_updated.connect(updated.append)
    with qtbot.waitSignal(controller.conversations.generation_finished, timeout=5000) as finished:
        controller.conversations.send("  What is Scout?  ")
    qtbot.waitUntil(lambda: len(updated) == 2)
    assert [m.role for m in added] == ["user", "assistant"]
    assert added[0].content == "What is Scout?"
    assert added[1].status == "streaming"
    assert "".join(streamed) == "Hello!"
    message_id, _stats = finished.args
    saved = controller.store.get_message(message_id)
    assert saved.content == "Hello!"
    assert saved.status == "complete"
    assert saved.stats["completion_tokens"] == 3
    assert saved.sampling["temperature"] == 0.6
    conversations = controller.conversations.conversations()
    assert len(conversations) == 1
    assert conversations[0].title == "What is Scout?"
    # created, then answered: each time the sidebar puts it first without reloading the list
    assert [c.id for c in updated] == [conversations[0].id] * 2
    assert updated[-1] == conversations[0]
    assert not controller.conversations.is_busy


def test_sent_messages_include_system_prompt_and_history(make_controller, qtbot) -> None:
    engine = FakeEngine(["ok"])
    controller = make_controller(engine, Settings(system_prompt="Be terse."))
    load(controller, qtbot)
    for text in ("one", "two"):
        with qtbot.waitSignal(controller.conversations.generation_finished, timeout=5000):
            controller.conversations.send(text)
    roles = [(m.role, m.content) for m in engine.seen[-1]]
    assert roles == [("system", "Be terse."), ("user", "one"), ("assistant", "ok"), ("user", "two")]


def test_stop_keeps_partial_answer(make_controller, qtbot) -> None:
    controller = make_controller(FakeEngine(["word "] * 400, delay=0.005))
    load(controller, qtbot)
    streamed: list[str] = []
    controller.conversations.tokens_streamed.connect(lambda _m, t: streamed.append(t))
    with qtbot.waitSignal(controller.conversations.tokens_streamed, timeout=5000):
        controller.conversations.send("Tell me a long story")
    with qtbot.waitSignal(controller.conversations.generation_finished, timeout=5000) as finished:
        controller.conversations.stop()
    message_id, stats = finished.args
    assert stats.finish_reason == "cancelled"
    saved = controller.store.get_message(message_id)
    assert saved.status == "cancelled"
    assert saved.content == "".join(streamed)
    assert 0 < len(saved.content) < 2000


def test_partial_answer_is_saved_while_streaming(make_controller, qtbot) -> None:
    controller = make_controller(FakeEngine(["x"] * 300, delay=0.01))
    load(controller, qtbot)
    with qtbot.waitSignal(controller.conversations.tokens_streamed, timeout=5000) as first:
        controller.conversations.send("go")
    message_id = first.args[0]
    qtbot.wait(1300)
    partial = controller.store.get_message(message_id)
    assert partial.status == "streaming"
    assert len(partial.content) > 0  # a crash now would lose at most the last second
    with qtbot.waitSignal(controller.conversations.generation_finished, timeout=10_000):
        controller.conversations.stop()


def test_regenerate_replaces_the_last_answer(make_controller, qtbot) -> None:
    controller = make_controller(FakeEngine(["A"]))
    load(controller, qtbot)
    with qtbot.waitSignal(controller.conversations.generation_finished, timeout=5000) as first:
        controller.conversations.send("question")
    removed: list[int] = []
    controller.conversations.message_removed.connect(removed.append)
    with qtbot.waitSignal(controller.conversations.generation_finished, timeout=5000) as second:
        controller.conversations.regenerate()
    assert removed == [first.args[0]]
    assert second.args[0] != first.args[0]
    roles = [m.role for m in controller.conversations.messages()]
    assert roles == ["user", "assistant"]


def test_edit_last_user_message_resends(make_controller, qtbot) -> None:
    engine = FakeEngine(["A"])
    controller = make_controller(engine)
    load(controller, qtbot)
    with qtbot.waitSignal(controller.conversations.generation_finished, timeout=5000):
        controller.conversations.send("wrong question")
    with qtbot.waitSignal(controller.conversations.generation_finished, timeout=5000):
        controller.conversations.edit_last_user_message("right question")
    contents = [m.content for m in controller.conversations.messages()]
    assert contents == ["right question", "A"]
    assert engine.seen[-1][-1].content == "right question"


def test_overflowing_history_gets_a_visible_marker(make_controller, qtbot) -> None:
    engine = FakeEngine(["answer " * 10], n_ctx=300)
    controller = make_controller(engine, Settings(n_ctx=300, max_tokens=64))
    load(controller, qtbot)
    for i in range(8):
        with qtbot.waitSignal(controller.conversations.generation_finished, timeout=5000):
            controller.conversations.send(f"question number {i} " * 8)
    roles = [m.role for m in controller.conversations.messages()]
    assert "notice" in roles
    notice_index = len(roles) - 1 - roles[::-1].index("notice")
    assert roles[notice_index + 1] == "assistant"  # the marker sits right above the answer it concerns
    notice = controller.conversations.messages()[notice_index]
    assert "left out" in notice.content
    # what the model saw: the system prompt, the first question, the newest turns, never a notice
    seen = engine.seen[-1]
    assert seen[0].role == "system"
    assert seen[1].content.startswith("question number 0")
    assert seen[-1].content.startswith("question number 7")
    assert all(m.role != "notice" for m in seen)


def test_message_too_long_is_a_clear_failure(make_controller, qtbot) -> None:
    controller = make_controller(FakeEngine(n_ctx=300), Settings(n_ctx=300, max_tokens=64))
    load(controller, qtbot)
    with qtbot.waitSignal(controller.conversations.generation_failed, timeout=5000) as failed:
        controller.conversations.send("word " * 2000)
    assert "too long for the context window" in failed.args[1]
    assert controller.store.get_message(failed.args[0]).status == "error"
    assert not controller.conversations.is_busy
    with qtbot.waitSignal(controller.conversations.generation_finished, timeout=5000):
        controller.conversations.send("short")  # still usable


def test_send_without_model_says_so(make_controller, qtbot) -> None:
    controller = make_controller()
    with qtbot.waitSignal(controller.notices.error_occurred) as error:
        controller.conversations.send("hello")
    assert "Load a model first" in error.args[0]
    assert controller.conversations.conversations() == []


def test_load_failure_is_reported(make_controller, qtbot) -> None:
    controller = make_controller(FakeEngine(load_error="That is not a model."))
    with qtbot.waitSignal(controller.models.model_load_failed, timeout=5000) as failed:
        controller.models.load_model("bad.gguf")
    assert failed.args[0] == "That is not a model."
    assert controller.models.model_info is None


def test_last_model_and_conversation_are_remembered(
    make_controller, qtbot, app_paths: AppPaths, tmp_path: Path
) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    controller = make_controller(FakeEngine(["hi"]))
    with qtbot.waitSignal(controller.models.model_loaded, timeout=5000):
        controller.models.load_model(str(model))
    with qtbot.waitSignal(controller.conversations.generation_finished, timeout=5000):
        controller.conversations.send("remember me")
    conversation_id = controller.conversations.current_conversation_id
    saved = load_settings(app_paths)
    assert saved.last_model == str(model)
    assert saved.last_conversation == conversation_id

    again = make_controller(FakeEngine(["hi"]), saved)
    with (
        qtbot.waitSignal(again.conversations.conversation_opened, timeout=5000) as opened,
        qtbot.waitSignal(again.models.model_loaded, timeout=5000),
    ):
        again.restore_session()
    assert opened.args[0] == conversation_id
    assert [m.content for m in opened.args[1]] == ["remember me", "hi"]


def test_rename_and_delete(make_controller, qtbot) -> None:
    controller = make_controller(FakeEngine(["x"]))
    load(controller, qtbot)
    with qtbot.waitSignal(controller.conversations.generation_finished, timeout=5000):
        controller.conversations.send("first chat")
    cid = controller.conversations.current_conversation_id
    controller.conversations.rename_conversation(cid, "  Renamed   chat ")
    assert controller.conversations.conversations()[0].title == "Renamed chat"
    with qtbot.waitSignal(controller.conversations.conversation_opened) as opened:
        controller.conversations.delete_conversation(cid)
    assert opened.args == [0, []]
    assert controller.conversations.conversations() == []


def test_editing_the_first_message_retitles_an_automatic_title(make_controller, qtbot) -> None:
    controller = make_controller(FakeEngine(["ok"]))
    load(controller, qtbot)
    chats = controller.conversations
    with qtbot.waitSignal(chats.generation_finished, timeout=5000):
        chats.send("What is the capital of France?")
    conversation_id = chats.current_conversation_id
    with qtbot.waitSignal(chats.generation_finished, timeout=5000):
        chats.edit_last_user_message("How tall is Mont Blanc?")
    assert controller.store.get_conversation(conversation_id).title == "How tall is Mont Blanc?"

    # a title the user chose is theirs: editing the first message keeps it
    chats.rename_conversation(conversation_id, "Mountains")
    with qtbot.waitSignal(chats.generation_finished, timeout=5000):
        chats.edit_last_user_message("How tall is Everest?")
    assert controller.store.get_conversation(conversation_id).title == "Mountains"


def test_a_turn_too_long_to_build_fails_without_a_stray_placeholder(make_controller, qtbot) -> None:
    """The answer is created once the turn is decided; a turn that cannot be built leaves one
    answer saying why, never an empty streaming placeholder."""
    controller = make_controller(FakeEngine(n_ctx=300), Settings(n_ctx=300, max_tokens=64))
    load(controller, qtbot)
    chats = controller.conversations
    with qtbot.waitSignal(chats.generation_failed, timeout=5000):
        chats.send("word " * 2000)
    statuses = [(m.role, m.status) for m in chats.messages()]
    assert statuses == [("user", "complete"), ("assistant", "error")]
    assert not chats.is_busy
