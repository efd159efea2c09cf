"""The local API server's requests and answers in OpenAI's shapes, without any HTTP or Qt.

:func:`parse_chat_request` turns a ``/v1/chat/completions`` body into :class:`ChatRequest`
(messages the engine takes, sampling, stop strings, streaming options) or raises :class:`ApiError`
with OpenAI's error fields. :class:`ApiJob` is one answer on its way from the inference worker to
the HTTP thread that waits for it; :class:`StopMatcher` cuts the text at a ``stop`` string.
"""

from __future__ import annotations

import dataclasses
import itertools
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from app.core.images import ImageError, data_uri, decode_data_uri, normalize_image
from app.core.types import ChatMessage, FinishReason, SamplingParams

if TYPE_CHECKING:
    from app.core.types import GenerationStats

MAX_STOP_STRINGS = 4  # as OpenAI
MAX_IMAGES = 8  # pictures in one request
ROLES = ("system", "user", "assistant")
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

    @property
    def has_images(self) -> bool:
        return any(m.images for m in self.messages)


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


def _message(raw: Any, index: int) -> ChatMessage:
    where = f"messages[{index}]"
    if not isinstance(raw, dict):
        raise ApiError(400, f"{where} must be an object with 'role' and 'content'.", param=where)
    role = raw.get("role")
    if role == "developer":
        role = "system"
    if role not in ROLES:
        raise ApiError(400, f"{where}.role must be one of {', '.join(ROLES)} (got {role!r}).", param=where)
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
        model, messages, sampling, tuple(s for s in stops if s), stream, bool(options.get("include_usage"))
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
