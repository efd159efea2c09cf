"""The tool list in the prompt, the model's tool calls parsed, results capped, servers' JSON."""

from __future__ import annotations

import json

import pytest

from app.core import tools
from app.core.api_requests import ToolCallWatch, parse_chat_request
from app.core.tools import ToolCall, ToolConfigError, ToolSpec
from app.core.types import SamplingParams

ADD = ToolSpec(
    "calc",
    "add",
    "Add two numbers.",
    {
        "title": "addArguments",
        "type": "object",
        "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
    },
)

# Recorded from Llama 4 Scout (Q4_K_M) answering "what is 2+3? use the tool" with the tool section
# above, and the pythonic form its model card documents.
# fmt: off
# ruff: noqa: E501
RECORDED = [
    ('{"name": "add", "parameters": {"a": 2, "b": 3}}', ToolCall("add", {"a": 2, "b": 3})),
    ('<|python_start|>{"name": "add", "parameters": {"a": 2, "b": 3}}<|python_end|>', ToolCall("add", {"a": 2, "b": 3})),
    ('  {"name": "add", "arguments": {"a": 2, "b": 3}}\n', ToolCall("add", {"a": 2, "b": 3})),
    ('[{"name": "add", "parameters": {"a": 1.5, "b": 3}}]', ToolCall("add", {"a": 1.5, "b": 3})),
    ('{"type": "function", "function": {"name": "add", "arguments": "{\\"a\\": 2, \\"b\\": 3}"}}', ToolCall("add", {"a": 2, "b": 3})),
    ("[add(a=2, b=3)]", ToolCall("add", {"a": 2, "b": 3})),
    ("add(a=2, b=3)", ToolCall("add", {"a": 2, "b": 3})),
    ('```json\n{"name": "read_note", "parameters": {"name": "../../etc/passwd"}}\n```',
     ToolCall("read_note", {"name": "../../etc/passwd"})),
]
# fmt: on


@pytest.mark.parametrize(("text", "expected"), RECORDED)
def test_tool_calls_are_parsed(text: str, expected: ToolCall) -> None:
    call = tools.parse_tool_call(text)
    assert call == expected
    assert call is not None
    assert call.arguments == expected.arguments


@pytest.mark.parametrize(
    "text",
    [
        "The answer is 5.",
        '{"name": "add", "parameters": {"a": 2,',  # cut off
        '{"parameters": {"a": 2}}',  # no name
        '{"name": "add", "parameters": [1, 2]}',  # arguments not an object
        "[add(2, 3)]",  # positional: not the documented form
        "add(a=open('x'))",  # not a literal
        "",
        "<|python_start|><|python_end|>",
    ],
)
def test_malformed_or_plain_answers_are_not_calls(text: str) -> None:
    assert tools.parse_tool_call(text, known={"add"}) is None


def test_unknown_tool_names_are_not_calls() -> None:
    assert tools.parse_tool_call("print('hello')", known={"add"}) is None
    assert tools.parse_tool_call('{"name": "rm", "parameters": {}}', known={"add"}) is None


def test_tool_prompt_uses_llama4_wording_and_schema() -> None:
    prompt = tools.with_tools("You are Scout.", [ADD])
    assert prompt.startswith("You are Scout.\n\n")
    assert '{"name": function name, "parameters": dictionary of argument name and its value}' in prompt
    schema = json.loads(prompt[prompt.index("{\n") :])
    assert schema == {
        "type": "function",
        "function": {
            "name": "add",
            "description": "Add two numbers.",
            "parameters": {
                "type": "object",
                "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
            },
        },
    }
    assert tools.with_tools("You are Scout.", []) == "You are Scout."


def test_results_are_capped_with_a_note() -> None:
    text, cut = tools.cap_result("x" * 5_000_000)
    assert cut
    assert text.startswith("x" * tools.RESULT_LIMIT)
    assert "5,000,000 characters, only the first 8,000" in text
    assert tools.cap_result("short") == ("short", False)


def test_mcp_servers_json_in_claude_desktop_shape() -> None:
    pasted = json.dumps(
        {
            "mcpServers": {
                "notes": {
                    "command": "python",
                    "args": ["server.py"],
                    "env": {"NOTES_DIR": "/n", "API_TOKEN": "s3cr3t"},
                },
                "time": {"command": "uvx", "args": ["mcp-server-time"]},
            }
        }
    )
    servers = tools.parse_mcp_servers(pasted)
    assert [s.name for s in servers] == ["notes", "time"]
    assert servers[0].args == ("server.py",)
    assert servers[0].secret_names == ("API_TOKEN",)
    hidden = tools.servers_json(servers, hide_secrets=True)
    assert "s3cr3t" not in hidden
    assert "/n" in hidden
    again = tools.parse_mcp_servers(hidden)
    assert tools.with_secrets(again[0], {"API_TOKEN": "s3cr3t"}) == servers[0]
    assert tools.parse_mcp_servers(tools.servers_json(servers)) == servers
    assert tools.parse_mcp_servers("  ") == []


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("{", "not valid JSON (line 1"),
        ("[1]", "must be a JSON object"),
        ('{"a": {"args": []}}', '"command" must be'),
        ('{"a": {"command": "x", "args": "y"}}', '"args" must be a list'),
        ('{"a": {"command": "x", "env": {"K": 1}}}', '"env" must map'),
        ('{"a": {"url": "http://x"}}', "not URLs"),
    ],
)
def test_bad_servers_json_says_what_is_wrong(text: str, words: str) -> None:
    with pytest.raises(ToolConfigError, match=r"\w") as info:
        tools.parse_mcp_servers(text)
    assert words in info.value.message


def test_call_record_reaches_the_model_once_decided() -> None:
    call = ToolCall("add", {"a": 2, "b": 3})
    record = tools.call_record("calc", call)
    assert tools.result_for_model(record) is None
    assert tools.result_for_model(tools.decided_record(record, tools.DENIED, tools.denied_result(call))) == (
        tools.denied_result(call)
    )


@pytest.mark.parametrize(
    ("start", "may"),
    [
        ("", True),
        ("  ", True),
        ('{"na', True),
        ("[ad", True),
        ("<|python", True),
        ("<|python_start|>{", True),
        ("``", True),
        ("ad", True),  # could become add(…)
        ("add(a=", True),
        ("add ", False),
        ("adding", False),
        ("Sure", False),
        ("The sum", False),
        ("print(1)", False),  # a call, but of no tool offered
    ],
)
def test_what_may_still_become_a_call(start: str, may: bool) -> None:
    assert tools.may_be_call(start, {"add", "read_note"}) is may


def test_the_watch_withholds_a_call_and_gives_out_other_text() -> None:
    watch = ToolCallWatch(frozenset({"add"}))
    assert [watch.feed(p) for p in ['{"name": "add", ', '"parameters": {"a": 1}}']] == ["", ""]
    held, call = watch.finish()
    assert held == ""
    assert call is not None
    assert (call.name, call.arguments) == ("add", {"a": 1})

    watch = ToolCallWatch(frozenset({"add"}))
    assert [watch.feed(p) for p in ["ad", "ding", " more"]] == ["", "adding", " more"]
    assert watch.finish() == ("", None)

    watch = ToolCallWatch(frozenset({"add"}))
    assert watch.feed('{"not": "a call"}') == ""  # JSON that is no call: given out at the end
    assert watch.finish() == ('{"not": "a call"}', None)

    assert ToolCallWatch(frozenset()).feed("{") == "{"  # no tools: nothing is withheld


def test_a_request_s_tools_are_offered_and_its_tool_turns_mapped() -> None:
    body = {
        "model": "m",
        "messages": [
            {"role": "user", "content": "2+3?"},
            {
                "role": "assistant",
                "tool_calls": [{"type": "function", "function": {"name": "add", "arguments": '{"a": 2}'}}],
            },
            {"role": "tool", "tool_call_id": "x", "content": [{"type": "text", "text": "5"}]},
        ],
        "tools": [{"type": "function", "function": {"name": "add", "parameters": {"title": "t"}}}],
    }
    request = parse_chat_request(body, SamplingParams())
    prompt = request.prompt_messages
    assert [m.role for m in prompt] == ["system", "user", "assistant", tools.TOOL_ROLE]
    assert prompt[0].content == tools.tools_prompt([tools.ToolSpec("api", "add")])
    assert prompt[2].content == '{"name": "add", "parameters": {"a": 2}}'
    assert prompt[3].content == "5"
    assert request.messages == prompt[1:]  # the client's own, for the history and the log
    assert request.tool_names == {"add"}
    none = parse_chat_request({**body, "tool_choice": "none"}, SamplingParams())
    assert none.prompt_messages[0].role == "user"
