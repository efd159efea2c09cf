"""A conversation's own system prompt and preset reach the prompt and the sampling of its answers
(the real tiny model's rendered prompt; FakeEngine for the sampling), and only that conversation's."""

from __future__ import annotations

from app.config import Settings
from app.core.presets import ConversationOptions
from tests.fakes import FakeEngine


def _answer(qtbot, chats, text: str) -> None:
    with qtbot.waitSignal(chats.generation_finished, timeout=60_000):
        chats.send(text)


def test_a_per_chat_system_prompt_reaches_the_rendered_prompt(qtbot, llama_controller) -> None:
    controller, engine = llama_controller(
        Settings(n_threads=1, max_tokens=4, system_prompt="The app's instructions.")
    )
    chats = controller.conversations
    chats.set_conversation_options(ConversationOptions(system_prompt="Only talk about lighthouses."))
    _answer(qtbot, chats, "hello")
    system = "<|header_start|>system<|header_end|>\n\nOnly talk about lighthouses.<|eot|>"
    assert system in engine.last_prompt
    assert "The app's instructions." not in engine.last_prompt

    chats.new_conversation()  # another conversation keeps the app's instructions
    _answer(qtbot, chats, "hello again")
    assert "The app's instructions." in engine.last_prompt
    assert "lighthouses" not in engine.last_prompt


def test_a_preset_sets_the_sampling_and_its_instructions(qtbot, make_controller, load_fake_model) -> None:
    engine = FakeEngine()
    controller = make_controller(engine, Settings(system_prompt="App prompt."))
    load_fake_model(controller)
    chats = controller.conversations
    _answer(qtbot, chats, "with the app's settings")
    used = engine.sampling[-1]
    assert (used.temperature, used.top_p, used.min_p) == (0.6, 0.9, 0.01)  # the defaults stay

    chats.set_conversation_options(ConversationOptions(preset="Document analyst"))
    assert chats.conversation_options().preset == "Document analyst"
    _answer(qtbot, chats, "with the preset")
    used = engine.sampling[-1]
    assert (used.temperature, used.top_p, used.min_p) == (0.3, 0.9, 0.05)
    assert engine.seen[-1][0].role == "system"
    assert "quote the passage" in engine.seen[-1][0].content
    stored = chats.messages()[-1]
    assert stored.sampling["temperature"] == 0.3  # the answer remembers what wrote it

    # reopened later, the conversation still has its preset
    conversation_id = chats.current_conversation_id
    chats.new_conversation()
    assert chats.conversation_options().is_default
    chats.open_conversation(conversation_id)
    assert chats.conversation_options() == ConversationOptions(preset="Document analyst")
