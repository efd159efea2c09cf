"""Tools the model may call (MCP servers), as pure data: the servers' configuration in the common
``mcpServers`` JSON shape, the tool list written into the prompt, the model's tool calls parsed
from its answer, and the results capped before they go back to the model.

No Qt and no MCP SDK here: the clients live in :mod:`app.core.mcp_client`, the approval in the UI.

The prompt follows Llama 4 Scout's own chat template: its tool section reads "Given the following
functions, please respond with a JSON for a function call…" followed by each tool as indented JSON,
and a tool's result is a message of the ``ipython`` role. We write that section into the system
message ourselves rather than through the template's ``tools`` variable, so the same text reaches
any engine (the engine process, a server) and the token counts of a turn include it.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass, field
from typing import Any

from app.core.errors import UserError

TOOL_ROLE = "ipython"  # Llama 4's role for a tool's result
RESULT_LIMIT = 8000  # characters of a result that reach the model
MAX_CALLS_PER_QUESTION = 5  # tool calls in a row before the model must answer
SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|PASS|AUTH|CREDENTIAL|COOKIE|PAT\b", re.I)
SECRET_PLACEHOLDER = "<secret>"

TOOLS_INTRO = (
    "You have access to the following functions. To call a function, respond with only a JSON "
    "for a function call with its proper arguments, in the format "
    '{"name": function name, "parameters": dictionary of argument name and its value}. '
    "Do not use variables. Call a function only when it helps answer the user; the user approves "
    "each call. After a call, the result comes back in the next message.\n\n"
)


class ToolConfigError(UserError):
    """The tool servers' JSON cannot be used (the message says where)."""


@dataclass(frozen=True)
class McpServerConfig:
    """One MCP server started over stdio: ``command`` with ``args`` and extra ``env``."""

    name: str
    command: str
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()

    @property
    def env_dict(self) -> dict[str, str]:
        return dict(self.env)

    @property
    def secret_names(self) -> tuple[str, ...]:
        return tuple(k for k, _v in self.env if is_secret_name(k))

    def describe(self) -> str:
        """The command line for the user and the log (never the environment's values)."""
        return " ".join([self.command, *self.args])


@dataclass(frozen=True)
class ToolSpec:
    """A tool a running server offers (from its ``tools/list``)."""

    server: str
    name: str
    description: str = ""
    input_schema: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def key(self) -> str:
        return f"{self.server}/{self.name}"


@dataclass(frozen=True)
class ToolCall:
    """A call the model asked for: the tool's name and its arguments (a JSON object)."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def arguments_json(self) -> str:
        return json.dumps(self.arguments, indent=2, ensure_ascii=False, sort_keys=True)

    def as_text(self) -> str:
        """The call as the model is asked to write it (``{"name": …, "parameters": {…}}``)."""
        return json.dumps({"name": self.name, "parameters": self.arguments}, ensure_ascii=False)


def is_secret_name(name: str) -> bool:
    """Whether an environment variable's value is a secret (by its name: ``GITHUB_TOKEN``)."""
    return bool(SECRET_NAME.search(name))


# -- configuration --------------------------------------------------------------------------
def parse_mcp_servers(text: str) -> list[McpServerConfig]:
    """Servers from the JSON users paste from Claude Desktop or LM Studio:
    ``{"mcpServers": {"name": {"command": …, "args": […], "env": {…}}}}``, or the inner mapping.
    Empty text is no servers. Raises :class:`ToolConfigError` naming what is wrong."""
    if not text.strip():
        return []
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ToolConfigError(
            f"The tool servers are not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})."
        ) from None
    if isinstance(data, dict) and "mcpServers" in data:
        data = data["mcpServers"]
    if not isinstance(data, dict):
        raise ToolConfigError('The tool servers must be a JSON object: {"mcpServers": {"name": {...}}}.')
    servers = []
    for name, entry in data.items():
        where = f"Tool server {name!r}"
        if not isinstance(entry, dict):
            raise ToolConfigError(f"{where}: expected an object with a command.")
        if "url" in entry and "command" not in entry:
            raise ToolConfigError(
                f"{where}: only servers started by a command (stdio) are supported, not URLs."
            )
        command = entry.get("command")
        if not isinstance(command, str) or not command.strip():
            raise ToolConfigError(f'{where}: "command" must be the program to start.')
        args = entry.get("args", [])
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise ToolConfigError(f'{where}: "args" must be a list of strings.')
        env = entry.get("env", {})
        if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
            raise ToolConfigError(f'{where}: "env" must map names to string values.')
        if not name.strip() or "/" in name:
            raise ToolConfigError(f"{where}: a name must not be empty or contain '/'.")
        servers.append(McpServerConfig(name, command.strip(), tuple(args), tuple(env.items())))
    return servers


def servers_json(servers: list[McpServerConfig], *, hide_secrets: bool = False) -> str:
    """The ``mcpServers`` JSON of ``servers``; ``hide_secrets`` replaces secret values with
    :data:`SECRET_PLACEHOLDER` (what the settings file, exports and diagnostics get)."""
    out: dict[str, Any] = {}
    for s in servers:
        entry: dict[str, Any] = {"command": s.command, "args": list(s.args)}
        if s.env:
            entry["env"] = {
                k: SECRET_PLACEHOLDER if hide_secrets and is_secret_name(k) else v for k, v in s.env
            }
        out[s.name] = entry
    return json.dumps({"mcpServers": out}, indent=2, ensure_ascii=False)


def with_secrets(server: McpServerConfig, secret: dict[str, str]) -> McpServerConfig:
    """``server`` with its placeholder values filled from ``secret`` (name → value)."""
    env = tuple((k, secret.get(k, v) if v == SECRET_PLACEHOLDER else v) for k, v in server.env)
    return McpServerConfig(server.name, server.command, server.args, env)


# -- the prompt -----------------------------------------------------------------------------
def tool_schema(tool: ToolSpec) -> dict[str, Any]:
    """One tool as Llama 4's template writes it (``{"type": "function", "function": {…}}``)."""
    parameters = {k: v for k, v in tool.input_schema.items() if k != "title"} or {
        "type": "object",
        "properties": {},
    }
    return {
        "type": "function",
        "function": {"name": tool.name, "description": tool.description.strip(), "parameters": parameters},
    }


def tools_prompt(tools: list[ToolSpec]) -> str:
    """The tool section of the system message ("" without tools)."""
    if not tools:
        return ""
    return TOOLS_INTRO + "".join(json.dumps(tool_schema(t), indent=4) + "\n\n" for t in tools).rstrip()


def with_tools(system_prompt: str, tools: list[ToolSpec]) -> str:
    section = tools_prompt(tools)
    if not section:
        return system_prompt
    return f"{system_prompt.strip()}\n\n{section}" if system_prompt.strip() else section


# -- the model's calls ----------------------------------------------------------------------
_PYTHON_TAGS = re.compile(r"<\|python_start\|>(.*?)(?:<\|python_end\|>|<\|eom\|>|<\|eot\|>|$)", re.S)
_FENCE = re.compile(r"^```(?:json|python)?\s*\n?(.*?)\n?```$", re.S)


def parse_tool_call(text: str, known: set[str] | None = None) -> ToolCall | None:
    """The first tool call in an answer, or None when the answer is not a call.

    Accepted forms (the answer must be the call, give or take whitespace, a code fence or
    Llama 4's ``<|python_start|>…<|python_end|>``): JSON ``{"name": …, "parameters": {…}}`` (or
    ``"arguments"``, or an OpenAI ``{"function": {…}}``), a list of those (the first is taken), and
    the pythonic ``[add(a=2, b=3)]`` / ``add(a=2, b=3)``. With ``known``, a name not in it is no call.
    """
    body = text.strip()
    tagged = _PYTHON_TAGS.search(body)
    if tagged:
        body = tagged.group(1).strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1).strip()
    if not body:
        return None
    call = _json_call(body) if body[0] in "{[" else None
    if call is None:
        call = _pythonic_call(body)
    if call is None or (known is not None and call.name not in known):
        return None
    return call


_IDENTIFIER = re.compile(r"[A-Za-z_]\w*")
_CALL_OPENINGS = ("<|python_start|>", "```")


def may_be_call(text: str, known: set[str] | frozenset[str]) -> bool:
    """Whether an answer that begins with ``text`` may still turn out to be a call of one of the
    ``known`` tools (:func:`parse_tool_call`'s forms): what a stream withholds until it is sure."""
    body = text.lstrip()
    if not body or body[0] in "{[":
        return True
    if any(o.startswith(body) or body.startswith(o) for o in _CALL_OPENINGS):
        return True
    name = _IDENTIFIER.match(body)
    if name is None:
        return False
    if name.end() == len(body):  # still writing a name: the pythonic add(a=1)
        return any(k.startswith(name.group()) for k in known)
    return name.group() in known and body[name.end()] == "("


def _json_call(body: str) -> ToolCall | None:
    try:
        data = json.loads(body)
    except json.JSONDecodeError:
        return None
    if isinstance(data, list):
        data = data[0] if data else None
    if not isinstance(data, dict):
        return None
    if isinstance(data.get("function"), dict):  # OpenAI's tool_calls entry
        data = data["function"]
    name = data.get("name")
    args = data.get("parameters", data.get("arguments", {}))
    if isinstance(args, str):  # OpenAI sends arguments as a JSON string
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            return None
    if not isinstance(name, str) or not name or not isinstance(args, dict):
        return None
    return ToolCall(name, args)


def _pythonic_call(body: str) -> ToolCall | None:
    try:
        tree = ast.parse(body, mode="eval").body
    except (SyntaxError, ValueError):
        return None
    if isinstance(tree, ast.List) and tree.elts:
        tree = tree.elts[0]
    if not isinstance(tree, ast.Call) or not isinstance(tree.func, ast.Name) or tree.args:
        return None
    args: dict[str, Any] = {}
    for kw in tree.keywords:
        if kw.arg is None:
            return None
        try:
            args[kw.arg] = ast.literal_eval(kw.value)
        except (ValueError, SyntaxError, TypeError):
            return None
    return ToolCall(tree.func.id, args)


# -- results --------------------------------------------------------------------------------
def cap_result(text: str, limit: int = RESULT_LIMIT) -> tuple[str, bool]:
    """``text`` cut to ``limit`` characters with a note saying so; whether it was cut."""
    if len(text) <= limit:
        return text, False
    note = f"\n\n[The result was cut: {len(text):,} characters, only the first {limit:,} are shown.]"
    return text[:limit] + note, True


def denied_result(call: ToolCall) -> str:
    return (
        f"The user denied the call to {call.name}. Do not call it again for this question; answer without it."
    )


def failed_result(call: ToolCall, message: str) -> str:
    return f"The call to {call.name} failed: {message}"


# -- a call as stored with its answer (``stats["tool_call"]``) -------------------------------
PENDING, DONE, DENIED, FAILED = "pending", "done", "denied", "failed"


def call_record(server: str, call: ToolCall) -> dict[str, Any]:
    """What an answer that is a tool call keeps in its stats until it is decided."""
    return {"server": server, "name": call.name, "arguments": call.arguments, "state": PENDING}


def decided_record(record: dict[str, Any], state: str, result: str, cut: bool = False) -> dict[str, Any]:
    return {**record, "state": state, "result": result, "cut": cut}


def result_for_model(record: dict[str, Any]) -> str | None:
    """The tool message the model reads after the call (None while it waits for approval)."""
    if record.get("state") in (DONE, DENIED, FAILED):
        return str(record.get("result", ""))
    return None
