"""The local API server's requests and answers in OpenAI's shapes, without any HTTP or Qt.

:func:`parse_chat_request` turns a ``/v1/chat/completions`` body into :class:`ChatRequest`
(messages the engine takes, sampling, stop strings, streaming options) or raises :class:`ApiError`
with OpenAI's error fields. :class:`ApiJob` is one answer on its way from the inference worker to
the HTTP thread that waits for it; :class:`StopMatcher` cuts the text at a ``stop`` string.

Tools (OpenAI's ``tools``, ``tool_choice``): the client's function definitions are written into
the system message in Scout's own tool format (:mod:`app.core.tools`, as for the window's MCP
tools), the answer is parsed with the same parser, and a call goes back as ``tool_calls``
(:class:`ToolCallWatch` withholds a streamed answer while it may be one). The client's ``tool``
messages become Llama 4's ``ipython`` turns, and an assistant message's ``tool_calls`` the call's
text as the model writes it. The server never runs a tool itself.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import queue
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from app.core import tools as tool_calls
from app.core.images import ImageError, data_uri, decode_data_uri, normalize_image
from app.core.types import ChatMessage, FinishReason, SamplingParams

if TYPE_CHECKING:
    from app.core.types import GenerationStats

MAX_STOP_STRINGS = 4  # as OpenAI
MAX_IMAGES = 8  # pictures in one request
ROLES = ("system", "user", "assistant", "tool")
MAX_TOOLS = 128  # as OpenAI
API_TOOLS = "api"  # the "server" of a client's tools (ToolSpec.server)
_TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_ids = itertools.count(1)


class ApiError(Exception):
    """A request the server refuses, as OpenAI's error object: HTTP status, message, type, code."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.code = code
        self.param = param

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class ChatRequest:
    """One ``/v1/chat/completions`` request, checked."""

    model: str
    messages: tuple[ChatMessage, ...]
    sampling: SamplingParams
    stop: tuple[str, ...] = ()
    stream: bool = False
    include_usage: bool = False
    tools: tuple[tool_calls.ToolSpec, ...] = ()  # offered to the model (none with tool_choice "none")

    @property
    def has_images(self) -> bool:
        return any(m.images for m in self.messages)

    @property
    def tool_names(self) -> frozenset[str]:
        return frozenset(t.name for t in self.tools)

    @property
    def prompt_messages(self) -> tuple[ChatMessage, ...]:
        """What the model reads: the client's messages with the tools in the system message
        (``messages`` stay the client's, for the history and the log)."""
        return _offer_tools(self.messages, self.tools)


def _number(body: dict[str, Any], key: str, low: float, high: float, default: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ApiError(400, f"'{key}' must be a number from {low:g} to {high:g}.", param=key)
    return float(value)


def _integer(body: dict[str, Any], key: str, low: int, high: int) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ApiError(400, f"'{key}' must be a whole number from {low} to {high}.", param=key)
    return value


def _image(url: Any) -> str:
    """A client's picture as a ``data:`` URI we built (decoded, bounded, re-encoded): never a link."""
    if not isinstance(url, str) or not url.startswith("data:"):
        raise ApiError(
            400, "Pictures must be sent as data: URIs (base64); links are not fetched.", param="messages"
        )
    try:
        return data_uri(normalize_image(decode_data_uri(url), name="The picture"))
    except ValueError as exc:
        raise ApiError(400, f"A picture could not be read: {exc}", param="messages") from exc
    except ImageError as exc:
        raise ApiError(400, exc.message, param="messages") from exc


def _tool_calls_text(raw: Any, where: str) -> str:
    """An assistant message's ``tool_calls`` as the model writes calls (Scout's JSON form)."""
    if not isinstance(raw, list) or not raw:
        raise ApiError(400, f"{where}.tool_calls must be a non-empty list.", param=where)
    calls = []
    for i, entry in enumerate(raw):
        function = entry.get("function") if isinstance(entry, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        arguments = function.get("arguments", "") if isinstance(function, dict) else None
        if not isinstance(name, str) or not name or not isinstance(arguments, str):
            raise ApiError(
                400,
                f"{where}.tool_calls[{i}] must be {{'type': 'function', 'function': "
                "{'name': ..., 'arguments': a JSON string}}.",
                param=where,
            )
        try:
            parsed = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict):
            raise ApiError(
                400, f"{where}.tool_calls[{i}].function.arguments must be a JSON object.", param=where
            )
        calls.append(tool_calls.ToolCall(name, parsed))
    if len(calls) == 1:
        return calls[0].as_text()
    return json.dumps([json.loads(c.as_text()) for c in calls], ensure_ascii=False)


def _message(raw: Any, index: int) -> ChatMessage:
    where = f"messages[{index}]"
    if not isinstance(raw, dict):
        raise ApiError(400, f"{where} must be an object with 'role' and 'content'.", param=where)
    role = raw.get("role")
    if role == "developer":
        role = "system"
    if role not in ROLES:
        raise ApiError(400, f"{where}.role must be one of {', '.join(ROLES)} (got {role!r}).", param=where)
    message = _content(raw, role, where)
    if role == "tool":  # a tool's result: Llama 4's ipython turn
        return ChatMessage(tool_calls.TOOL_ROLE, message.content)
    if role == "assistant" and raw.get("tool_calls") is not None:
        calls = _tool_calls_text(raw.get("tool_calls"), where)
        text = message.content.strip()
        return ChatMessage("assistant", f"{text}\n\n{calls}" if text else calls)
    return message


def _content(raw: dict[str, Any], role: str, where: str) -> ChatMessage:
    content = raw.get("content")
    if content is None:
        content = ""
    if isinstance(content, str):
        return ChatMessage(role, content)
    if not isinstance(content, list):
        raise ApiError(400, f"{where}.content must be a string or a list of parts.", param=where)
    texts: list[str] = []
    images: list[str] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url" and role == "user":
            image = part.get("image_url")
            images.append(_image(image.get("url") if isinstance(image, dict) else image))
        else:
            raise ApiError(
                400, f"{where}.content has a part this server does not take: {kind!r}.", param=where
            )
    return ChatMessage(role, "\n".join(texts), tuple(images))


def _tools(body: dict[str, Any]) -> tuple[tool_calls.ToolSpec, ...]:
    """The client's ``tools`` (function definitions), checked; () without them or with
    ``tool_choice: "none"``."""
    choice = body.get("tool_choice")
    if choice is not None and choice not in ("auto", "none"):
        what = repr(choice) if isinstance(choice, str) else "a named function"
        raise ApiError(
            400,
            f"'tool_choice' {what} is not supported: the model decides itself whether to call a tool. "
            "Use 'auto' (or leave it out), or 'none'.",
            param="tool_choice",
        )
    raw = body.get("tools")
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ApiError(
            400, "'tools' must be a list of {'type': 'function', 'function': {...}}.", param="tools"
        )
    if len(raw) > MAX_TOOLS:
        raise ApiError(400, f"At most {MAX_TOOLS} tools per request.", param="tools")
    specs: list[tool_calls.ToolSpec] = []
    for i, entry in enumerate(raw):
        where = f"tools[{i}]"
        if not isinstance(entry, dict) or entry.get("type") != "function":
            kind = entry.get("type") if isinstance(entry, dict) else None
            raise ApiError(
                400,
                f"{where}.type must be 'function' (got {kind!r}): only functions are supported.",
                param=where,
            )
        function = entry.get("function")
        if not isinstance(function, dict):
            raise ApiError(400, f"{where}.function must be an object with a 'name'.", param=where)
        name = function.get("name")
        if not isinstance(name, str) or not _TOOL_NAME.fullmatch(name):
            raise ApiError(
                400,
                f"{where}.function.name must be 1 to 64 letters, digits, '_' or '-' (got {name!r}).",
                param=f"{where}.function.name",
            )
        description = function.get("description", "")
        if not isinstance(description, str):
            raise ApiError(400, f"{where}.function.description must be a string.", param=where)
        parameters = function.get("parameters", {})
        if not isinstance(parameters, dict):
            raise ApiError(
                400,
                f"{where}.function.parameters must be a JSON Schema object.",
                param=f"{where}.function.parameters",
            )
        if any(s.name == name for s in specs):
            raise ApiError(400, f"{where}: the tool name {name!r} is given twice.", param=where)
        specs.append(tool_calls.ToolSpec(API_TOOLS, name, description, parameters))
    return () if choice == "none" else tuple(specs)


def _offer_tools(
    messages: tuple[ChatMessage, ...], specs: tuple[tool_calls.ToolSpec, ...]
) -> tuple[ChatMessage, ...]:
    """``messages`` with the tool section in the system message (one is added when none)."""
    if not specs:
        return messages
    if messages[0].role == "system":
        first = messages[0]
        system = dataclasses.replace(first, content=tool_calls.with_tools(first.content, list(specs)))
        return (system, *messages[1:])
    return (ChatMessage.system(tool_calls.with_tools("", list(specs))), *messages)


def parse_chat_request(body: Any, defaults: SamplingParams) -> ChatRequest:
    """Check a decoded JSON body. Sampling the client leaves out takes ``defaults`` (the app's)."""
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "'model' is required (see GET /v1/models).", param="model")
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise ApiError(400, "'messages' must be a non-empty list.", param="messages")
    specs = _tools(body)
    messages = tuple(_message(m, i) for i, m in enumerate(raw))
    if sum(len(m.images) for m in messages) > MAX_IMAGES:
        raise ApiError(400, f"At most {MAX_IMAGES} pictures per request.", param="messages")
    stop = body.get("stop")
    if stop is None:
        stops: tuple[str, ...] = ()
    elif isinstance(stop, str):
        stops = (stop,)
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop) and len(stop) <= MAX_STOP_STRINGS:
        stops = tuple(stop)
    else:
        raise ApiError(
            400, f"'stop' must be a string or a list of at most {MAX_STOP_STRINGS} strings.", param="stop"
        )
    max_tokens = _integer(body, "max_completion_tokens", 1, 1 << 24) or _integer(
        body, "max_tokens", 1, 1 << 24
    )
    seed = _integer(body, "seed", -(1 << 63), (1 << 63) - 1)
    _integer(body, "n", 1, 1)  # one answer per request
    sampling = SamplingParams(
        temperature=_number(body, "temperature", 0.0, 2.0, defaults.temperature),
        top_p=_number(body, "top_p", 0.0, 1.0, defaults.top_p),
        min_p=_number(body, "min_p", 0.0, 1.0, defaults.min_p),
        top_k=int(_integer(body, "top_k", 0, 1 << 20) or 0),
        repeat_penalty=_number(body, "repeat_penalty", 0.0, 10.0, defaults.repeat_penalty),
        max_tokens=max_tokens or defaults.max_tokens,
        seed=seed,
    )
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "'stream' must be true or false.", param="stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise ApiError(400, "'stream_options' must be an object.", param="stream_options")
    return ChatRequest(
        model,
        messages,
        sampling,
        tuple(s for s in stops if s),
        stream,
        bool(options.get("include_usage")),
        specs,
    )


class StopMatcher:
    """Feeds streamed text through; holds back what could be the start of a stop string, and
    reports when one appeared (the text before it is all that is given out)."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = stops
        self._held = ""
        self.stopped = False

    def feed(self, piece: str) -> str:
        """The text that can be given out now."""
        if not self._stops:
            return piece
        if self.stopped:
            return ""
        text = self._held + piece
        cut = min((i for i in (text.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self._held = ""
            return text[:cut]
        keep = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(text)), 0, -1):
                if text.endswith(stop[:n]):
                    keep = max(keep, n)
                    break
        self._held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def flush(self) -> str:
        """What was held back, once the answer ended without a stop string."""
        held, self._held = self._held, ""
        return "" if self.stopped else held


class ToolCallWatch:
    """Feeds a streamed answer through when the request offered tools: withholds it while it may
    still be a call of one of them (:func:`app.core.tools.may_be_call`), gives it out as soon as
    it cannot be; at the end, the call it was (or the text withheld)."""

    def __init__(self, names: frozenset[str]) -> None:
        self._names = names
        self._held = ""
        self._passing = not names

    def feed(self, piece: str) -> str:
        """The text that can be given out now."""
        if self._passing:
            return piece
        self._held += piece
        if tool_calls.may_be_call(self._held, self._names):
            return ""
        self._passing = True
        held, self._held = self._held, ""
        return held

    def finish(self) -> tuple[str, tool_calls.ToolCall | None]:
        """The text still withheld, or the call the whole answer was ("" and the call)."""
        held, self._held = self._held, ""
        if self._passing or not held:
            return held, None
        call = tool_calls.parse_tool_call(held, set(self._names))
        return ("", call) if call is not None else (held, None)


def tool_call_json(call: tool_calls.ToolCall, index: int | None = None) -> dict[str, Any]:
    """A call as one of OpenAI's ``tool_calls`` (``index`` for a streamed delta)."""
    entry: dict[str, Any] = {
        "id": f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {"name": call.name, "arguments": json.dumps(call.arguments, ensure_ascii=False)},
    }
    return {"index": index, **entry} if index is not None else entry


@dataclass(eq=False)  # identity: jobs are kept in sets
class ApiJob:
    """One API answer: the inference worker puts events in ``events``; the HTTP thread reads them.

    Events: ``("piece", str)``, then ``("done", GenerationStats)`` or ``("error", ApiError)``.
    ``cancel`` is set by the HTTP thread (client gone, stop string) or by the window's Stop.
    """

    request: ChatRequest
    id: int = field(default_factory=lambda: next(_ids))
    created: int = field(default_factory=lambda: int(time.time()))
    cancel: threading.Event = field(default_factory=threading.Event)
    events: queue.SimpleQueue[tuple[str, Any]] = field(default_factory=queue.SimpleQueue)
    stopped_by_user: bool = False
    answer: list[str] = field(default_factory=list)  # the pieces written (for the history and the log)
    outcome: str = ""  # "done" or "error" once it ended

    def piece(self, text: str) -> None:
        self.answer.append(text)
        self.events.put(("piece", text))

    def done(self, stats: GenerationStats) -> None:
        self.outcome = "done"
        self.events.put(("done", stats))

    def fail(self, error: ApiError) -> None:
        self.outcome = "error"
        self.events.put(("error", error))

    def with_max_tokens(self, max_tokens: int) -> SamplingParams:
        return dataclasses.replace(self.request.sampling, max_tokens=max_tokens)


def finish_reason(stats: GenerationStats, stop_matched: bool) -> str:
    """OpenAI's ``finish_reason`` for an answer that ended normally."""
    if stop_matched or stats.finish_reason == FinishReason.STOP:
        return "stop"
    return "length"  # max_tokens, or the context window is full
