"""OpenAI ``tools`` through the local API server, with the official ``openai`` client.

The real tiny model shows that the client's tools reach the rendered prompt in Scout's own tool
format, and that a client's tool call and tool result become the turns Scout's template expects.
The ``tool_calls`` answers (whole and streamed) and the round trip use a FakeEngine scripted to
write a call — only the emitted text is faked: no tiny model writes a call on demand. The server
never runs a tool itself."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import openai
import pytest

from app.core import tools
from tests.fakes import FakeEngine
from tests.qt.test_api_server import SETTINGS, client, raw

if TYPE_CHECKING:
    from app.core.engine import LlamaEngine
    from app.workers.controller import AppController

ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two numbers.",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
            "required": ["a", "b"],
        },
    },
}
CALL_TEXT = '{"name": "add", "parameters": {"a": 2, "b": 3}}'
QUESTION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 3?"}]


@pytest.fixture
def real(llama_controller) -> tuple[AppController, LlamaEngine]:
    return llama_controller(SETTINGS, planned=False)


@pytest.fixture
def scripted(make_controller, load_fake_model) -> tuple[AppController, FakeEngine, str]:
    """The app's API server on a FakeEngine that answers with ``engine.pieces``; the model's id."""
    engine = FakeEngine(pieces=['{"name": "add", ', '"parameters": {"a": 2, ', '"b": 3}}'])
    controller = make_controller(engine, SETTINGS)
    load_fake_model(controller)
    model = controller.api.chat_model()
    assert model is not None
    return controller, engine, model


def round_trip(call_id: str = "call_1") -> list[dict[str, Any]]:
    """The question, the model's call as the client got it, and the client's result."""
    call = {"id": call_id, "type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}}
    return [
        *QUESTION,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call_id, "content": "5"},
    ]


def test_the_tools_reach_the_real_models_prompt_in_scouts_format(real) -> None:
    controller, engine = real
    with client(controller) as api:
        answer = api.chat.completions.create(
            model="tiny-llama4",
            messages=QUESTION,
            tools=[ADD],
            max_tokens=4,
            temperature=0,  # type: ignore[arg-type]
        )
    assert answer.choices[0].finish_reason in ("stop", "length")  # random weights write no call
    system = engine.last_prompt.split("<|eot|>")[0]
    assert system.startswith("<|begin_of_text|><|header_start|>system<|header_end|>\n\nBe brief.\n\n")
    assert tools.TOOLS_INTRO.strip() in system
    assert (
        json.dumps(
            tools.tool_schema(
                tools.ToolSpec("api", "add", "Add two numbers.", ADD["function"]["parameters"])
            ),
            indent=4,
        )
        in system
    )  # type: ignore[index]


def test_a_call_and_its_result_become_scouts_turns_in_the_real_prompt(real) -> None:
    controller, engine = real
    with client(controller) as api:
        api.chat.completions.create(
            model="tiny-llama4",
            messages=round_trip(),  # type: ignore[arg-type]
            tools=[ADD],  # type: ignore[list-item]
            max_tokens=4,
        )
    assert (
        f"<|header_start|>assistant<|header_end|>\n\n{CALL_TEXT}<|eot|>"
        "<|header_start|>ipython<|header_end|>\n\n5<|eot|>"
        "<|header_start|>assistant<|header_end|>\n\n"
    ) in engine.last_prompt


def test_a_call_comes_back_as_tool_calls_and_its_result_goes_on(scripted) -> None:
    controller, engine, model = scripted
    with client(controller) as api:
        first = api.chat.completions.create(model=model, messages=QUESTION, tools=[ADD])  # type: ignore[arg-type, list-item]
        choice = first.choices[0]
        assert choice.finish_reason == "tool_calls"
        assert choice.message.content is None
        assert choice.message.tool_calls is not None
        [call] = choice.message.tool_calls
        assert call.type == "function"
        assert call.id.startswith("call_")
        assert call.function.name == "add"
        assert json.loads(call.function.arguments) == {"a": 2, "b": 3}
        assert "add" in engine.seen[-1][0].content  # offered in the system message
        # the client runs the tool and sends its result back with the call
        engine.pieces = ["2 + 3 = 5."]
        history = [*QUESTION, choice.message.model_dump(exclude_none=True)]
        history.append({"role": "tool", "tool_call_id": call.id, "content": "5"})
        second = api.chat.completions.create(model=model, messages=history, tools=[ADD])  # type: ignore[arg-type, list-item]
    assert second.choices[0].message.content == "2 + 3 = 5."
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.tool_calls is None
    turns = [(m.role, m.content) for m in engine.seen[-1]]
    assert turns[-2:] == [("assistant", CALL_TEXT), ("ipython", "5")]
    assert tools.TOOLS_INTRO.strip() in turns[0][1]


def test_a_streamed_call_is_withheld_and_sent_once_parsed(scripted) -> None:
    controller, _engine, model = scripted
    with client(controller) as api:
        chunks = list(api.chat.completions.create(model=model, messages=QUESTION, tools=[ADD], stream=True))  # type: ignore[arg-type, list-item]
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert [d.content for d in deltas if d.content] == []  # nothing of the call went out as text
    calls = [tc for d in deltas for tc in d.tool_calls or ()]
    assert len(calls) == 1
    assert calls[0].index == 0
    assert calls[0].id.startswith("call_")
    assert calls[0].function.name == "add"
    assert json.loads(calls[0].function.arguments) == {"a": 2, "b": 3}
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        "tool_calls"
    ]


def test_an_answer_that_is_no_call_streams_as_text(scripted) -> None:
    controller, engine, model = scripted
    engine.pieces = ["ad", "ding", " them", " gives 5"]  # begins like the tool's name, then is not
    with client(controller) as api:
        chunks = list(api.chat.completions.create(model=model, messages=QUESTION, tools=[ADD], stream=True))  # type: ignore[arg-type, list-item]
        whole = api.chat.completions.create(model=model, messages=QUESTION, tools=[ADD])  # type: ignore[arg-type, list-item]
    text = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(text) == "adding them gives 5" == whole.choices[0].message.content
    assert len(text) > 1  # given out as it came once it could not be a call, not all at the end
    assert whole.choices[0].finish_reason == "stop"


def test_tool_choice_none_offers_no_tools_and_parses_no_call(scripted) -> None:
    controller, engine, model = scripted
    with client(controller) as api:
        answer = api.chat.completions.create(model=model, messages=QUESTION, tools=[ADD], tool_choice="none")  # type: ignore[arg-type, list-item]
    assert answer.choices[0].message.content == CALL_TEXT
    assert answer.choices[0].message.tool_calls is None
    assert "functions" not in engine.seen[-1][0].content


@pytest.mark.parametrize(
    ("change", "param", "says"),
    [
        ({"tools": {"add": ADD}}, "tools", "must be a list"),
        ({"tools": [{"type": "retrieval"}]}, "tools[0]", "must be 'function'"),
        ({"tools": [{"type": "function"}]}, "tools[0]", "function must be an object"),
        (
            {"tools": [{"type": "function", "function": {"name": "add two"}}]},
            "tools[0].function.name",
            "1 to 64",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "add", "parameters": "a, b"}}]},
            "tools[0].function.parameters",
            "JSON Schema object",
        ),
        ({"tools": [ADD, ADD]}, "tools[1]", "given twice"),
        ({"tools": [ADD], "tool_choice": "required"}, "tool_choice", "not supported"),
        (
            {"tools": [ADD], "tool_choice": {"type": "function", "function": {"name": "add"}}},
            "tool_choice",
            "a named function is not supported",
        ),
        (
            {
                "messages": [
                    {"role": "assistant", "tool_calls": [{"function": {"name": "add", "arguments": "[1]"}}]}
                ]
            },
            "messages[0]",
            "JSON object",
        ),
    ],
)
def test_malformed_tools_are_refused_in_openais_error_shape(scripted, change, param, says) -> None:
    controller, engine, model = scripted
    body = {"model": model, "messages": QUESTION, **change}
    status, answer = raw(
        controller,
        "POST",
        "/v1/chat/completions",
        body,
        Authorization=f"Bearer {controller.api.token()}",
        **{"Content-Type": "application/json"},
    )
    assert status == 400
    assert set(answer["error"]) == {"message", "type", "param", "code"}
    assert answer["error"]["type"] == "invalid_request_error"
    assert answer["error"]["param"] == param
    assert says in answer["error"]["message"]
    assert engine.seen == []  # refused before it reached the model


def test_the_official_client_raises_bad_request_for_bad_tools(scripted) -> None:
    controller, _engine, model = scripted
    with client(controller) as api, pytest.raises(openai.BadRequestError) as refused:
        api.chat.completions.create(
            model=model, messages=QUESTION, tools=[{"type": "function", "function": {}}]
        )  # type: ignore[arg-type, list-item]
    assert "tools[0].function.name" in str(refused.value)


def test_a_kept_api_conversation_keeps_the_clients_instructions_not_the_tool_section(qtbot, scripted) -> None:
    controller, engine, model = scripted
    controller.update_settings(controller.settings.replace(api_save_history=True))
    engine.pieces = ["It is 5."]
    with (
        qtbot.waitSignal(controller.conversations.conversations_changed, timeout=30_000),
        client(controller) as api,
    ):
        api.chat.completions.create(model=model, messages=QUESTION, tools=[ADD])  # type: ignore[arg-type, list-item]
    assert tools.TOOLS_INTRO.strip() in engine.seen[-1][0].content  # the model was offered the tool
    [kept] = [c for c in controller.store.list_conversations() if c.title.startswith("API:")]
    assert controller.store.conversation_options(kept.id)["system_prompt"] == "Be brief."
