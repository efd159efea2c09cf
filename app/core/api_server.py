"""The local OpenAI-compatible API server (Settings → API server), on the standard library.

``GET /v1/models``, ``POST /v1/chat/completions`` (JSON or server-sent events) and
``POST /v1/embeddings``. Every request needs the bearer token; the ``Host`` header must name this
server (a defence against DNS rebinding: a web page whose name resolves to 127.0.0.1 still sends
its own name); browsers get CORS headers only for the origins the user listed. Answers come from
an :class:`ApiBackend` — in the app, the one inference worker that also answers the window — so
this module knows nothing of Qt or llama.cpp. Prompts, answers and the token are never logged.
"""

from __future__ import annotations

import base64
import hmac
import ipaddress
import json
import logging
import queue
import select
import socket
import struct
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Protocol

from app.core.api_requests import (
    ApiError,
    ApiJob,
    StopMatcher,
    ToolCallWatch,
    finish_reason,
    parse_chat_request,
    tool_call_json,
)
from app.core.tools import parse_tool_call

if TYPE_CHECKING:
    from app.core.api_requests import ChatRequest
    from app.core.types import GenerationStats, SamplingParams

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 1236
MAX_BODY_BYTES = 32 * 1024 * 1024  # a request with a few pictures as data: URIs
MAX_PENDING = 16  # chat requests queued or answering; more are refused with 429
MAX_EMBED_INPUTS = 256
POLL_S = 0.1  # how often a waiting request checks that its client is still there
LOCAL_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
EXPOSED_WARNING = (
    "Other computers can reach the server at this address: only the key protects the model. "
    "127.0.0.1 keeps it to this computer."
)


class ApiBackend(Protocol):
    """What the server needs from the app. Called from the server's threads: thread-safe."""

    def chat_model(self) -> str | None:
        """The id of the loaded chat model; None while none is loaded."""
        ...

    def search_model(self) -> str | None:
        """The id of the installed search (embedding) model; None when there is none."""
        ...

    def sampling_defaults(self) -> SamplingParams:
        """The app's sampling settings, for what a request leaves out."""
        ...

    def submit(self, job: ApiJob) -> None:
        """Queue ``job`` on the inference worker (after the answers already queued)."""
        ...

    def embed(self, texts: list[str]) -> list[list[float]]:
        """Vectors of ``texts`` from the search model; raises :class:`ApiError` when it cannot."""
        ...


@dataclass(frozen=True)
class ApiServerConfig:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT  # 0: any free port (tests)
    cors_origins: tuple[str, ...] = ()  # browser origins allowed to call the server; none: no CORS
    allowed_hosts: tuple[str, ...] = ()  # names besides localhost and the bound address
    max_body_bytes: int = MAX_BODY_BYTES
    max_pending: int = MAX_PENDING


def _host_name(header: str) -> str:
    """``Host`` without its port, brackets removed (``[::1]:80`` → ``::1``), lower case."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].partition("]")[0]
    if header.count(":") == 1:
        return header.partition(":")[0]
    return header


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class ApiServer:
    """Listens while started; :meth:`stop` closes the socket and ends every request in flight."""

    def __init__(self, config: ApiServerConfig, backend: ApiBackend, token: str) -> None:
        if not token:
            raise ValueError("the API server needs a token")
        self.config = config
        self.backend = backend
        self._token = token.encode("utf-8")
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._pending = threading.BoundedSemaphore(config.max_pending)
        self._jobs: set[ApiJob] = set()
        self._lock = threading.Lock()
        self._arrivals = threading.Lock()  # held while a chat request gets its id and is queued
        self.closing = threading.Event()

    @property
    def address(self) -> tuple[str, int]:
        """The bound host and port (the real port when 0 was asked)."""
        if self._httpd is None:
            return self.config.host, self.config.port
        host, port = self._httpd.server_address[:2]
        return str(host), int(port)

    @property
    def listening(self) -> bool:
        return self._httpd is not None

    def set_token(self, token: str) -> None:
        """A regenerated token takes effect with the next request."""
        self._token = token.encode("utf-8")

    def token_matches(self, offered: str) -> bool:
        return hmac.compare_digest(offered.encode("utf-8"), self._token)

    def start(self) -> None:
        """Bind and serve on a thread of its own. Raises OSError (port in use, address not here)."""
        if self._httpd is not None:
            return
        self.closing.clear()
        family = socket.AF_INET6 if ":" in self.config.host else socket.AF_INET
        httpd = _HTTPServer((self.config.host, self.config.port), _Handler, family, self)
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, args=(0.2,), name="api-server", daemon=True
        )
        self._thread.start()
        host, port = self.address
        log.info("API server listening on %s:%d", host, port)

    def stop(self) -> None:
        """Stop listening, cancel the answers in flight and wait for the request threads."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self.closing.set()
        with self._lock:
            for job in self._jobs:
                job.cancel.set()
        httpd.shutdown()
        httpd.server_close()  # joins the request threads (each notices ``closing``)
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        log.info("API server stopped")

    def allowed_host(self, header: str | None) -> bool:
        if not header:
            return False
        name = _host_name(header)
        bound = self.config.host.lower()
        if name in LOCAL_NAMES or name == bound or name in (h.lower() for h in self.config.allowed_hosts):
            return True
        # Bound to every address (chosen, with a warning): an address typed as numbers is not a
        # DNS name, so no rebinding; names still have to be listed.
        return bound in ("0.0.0.0", "::") and _is_ip(name)

    # -- jobs ------------------------------------------------------------------------------------
    def try_admit(self) -> bool:
        return self._pending.acquire(blocking=False)

    def queue(self, request: ChatRequest) -> ApiJob:
        """An admitted request as a job on the backend's queue. Ids follow the order the backend
        receives the jobs (so answers go in order of arrival)."""
        with self._arrivals:
            job = ApiJob(request)
            self.track(job)
            try:
                self.backend.submit(job)
            except BaseException:
                self.release(job)
                raise
        return job

    def track(self, job: ApiJob) -> None:
        with self._lock:
            self._jobs.add(job)

    def release(self, job: ApiJob) -> None:
        with self._lock:
            self._jobs.discard(job)
        self._pending.release()


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins them
    block_on_close = True
    request_queue_size = 128  # listen backlog: socketserver's 5 reset connections of a burst

    def __init__(
        self, address: tuple[str, int], handler: type[_Handler], family: int, api: ApiServer
    ) -> None:
        self.address_family = family
        self.api = api
        super().__init__(address, handler)


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.1"
    server_version = "ScoutChat"
    sys_version = ""
    timeout = 60  # seconds a client may take to send its request

    # -- plumbing ----------------------------------------------------------------------------------
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)  # the request line: no body, no token

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        self._error(
            ApiError(code, message or self.responses.get(code, ("Error",))[0], "invalid_request_error")
        )

    def _cors_headers(self) -> None:
        origin = self.headers.get("Origin")
        if origin and origin in self.server.api.config.cors_origins:
            self.send_header("Access-Control-Allow-Origin", origin)
            self.send_header("Vary", "Origin")

    def _json(self, status: int, body: dict[str, Any], *, close: bool = False) -> None:
        data = json.dumps(body).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status == 401:
            self.send_header("WWW-Authenticate", "Bearer")
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self._cors_headers()
        self.end_headers()
        self.wfile.write(data)

    def _error(self, error: ApiError) -> None:
        log.info("API request refused: %d %s", error.status, error.message)
        self._json(error.status, error.body(), close=True)  # a body may be left unread

    def _client_gone(self) -> bool:
        """True when the client closed its connection (nothing more to read, and EOF)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    # -- checks ------------------------------------------------------------------------------------
    def _check(self) -> None:
        api = self.server.api
        if not api.allowed_host(self.headers.get("Host")):
            raise ApiError(
                403, "This server answers only requests addressed to it (Host header).", "forbidden"
            )
        origin = self.headers.get("Origin")
        if origin and origin not in api.config.cors_origins:
            raise ApiError(403, f"Requests from the web page {origin} are not allowed.", "forbidden")
        auth = self.headers.get("Authorization", "")
        scheme, _, offered = auth.partition(" ")
        if not auth:
            raise ApiError(
                401,
                "No API key: send 'Authorization: Bearer <key>' (Settings → API server).",
                "authentication_error",
                "missing_api_key",
            )
        if scheme.lower() != "bearer" or not api.token_matches(offered.strip()):
            raise ApiError(
                401,
                "Incorrect API key (Settings → API server shows the key).",
                "authentication_error",
                "invalid_api_key",
            )

    def _body(self) -> Any:
        if self.headers.get("Transfer-Encoding"):
            raise ApiError(411, "Send the body with a Content-Length.")
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise ApiError(411, "Send the body with a Content-Length.") from None
        limit = self.server.api.config.max_body_bytes
        if length > limit:
            raise ApiError(
                413, f"The request is larger than {limit // (1024 * 1024)} MiB.", code="request_too_large"
            )
        data = self.rfile.read(length)
        try:
            return json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"The body is not valid JSON: {exc}") from None

    # -- routes ------------------------------------------------------------------------------------
    def do_OPTIONS(self) -> None:
        origin = self.headers.get("Origin")
        api = self.server.api
        if (
            not api.allowed_host(self.headers.get("Host"))
            or not origin
            or origin not in api.config.cors_origins
        ):
            self._error(ApiError(403, "Cross-origin requests are not allowed here.", "forbidden"))
            return
        self.send_response(204)
        self._cors_headers()
        self.send_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS")
        self.send_header("Access-Control-Allow-Headers", "Authorization, Content-Type")
        self.send_header("Access-Control-Max-Age", "600")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        self._route({"/v1/models": self._models})

    def do_POST(self) -> None:
        self._route({"/v1/chat/completions": self._chat, "/v1/embeddings": self._embeddings})

    def _route(self, routes: dict[str, Any]) -> None:
        try:
            self._check()
            route = routes.get(self.path.split("?", 1)[0].rstrip("/"))
            if route is None:
                raise ApiError(404, f"No such endpoint: {self.command} {self.path}", code="unknown_url")
            route()
        except ApiError as error:
            self._error(error)
        except (BrokenPipeError, ConnectionResetError):
            log.info("API client went away")
        except Exception as exc:
            log.exception("API request failed")
            self._error(ApiError(500, f"Something went wrong: {exc}", "server_error"))

    def _models(self) -> None:
        backend = self.server.api.backend
        data = [
            {"id": model, "object": "model", "created": 0, "owned_by": "scout-chat"}
            for model in (backend.chat_model(), backend.search_model())
            if model
        ]
        self._json(200, {"object": "list", "data": data})

    def _embeddings(self) -> None:
        body = self._body()
        backend = self.server.api.backend
        model = backend.search_model()
        if model is None:
            raise ApiError(
                503,
                "No search model is installed (Settings → Search by meaning).",
                "server_error",
                "model_not_loaded",
            )
        if not isinstance(body, dict) or body.get("model") != model:
            raise ApiError(
                404,
                f"The model {body.get('model') if isinstance(body, dict) else None!r} "
                f"is not here; embeddings come from {model!r}.",
                code="model_not_found",
                param="model",
            )
        raw = body.get("input")
        texts = [raw] if isinstance(raw, str) else raw
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise ApiError(400, "'input' must be a string or a list of strings.", param="input")
        if len(texts) > MAX_EMBED_INPUTS:
            raise ApiError(400, f"At most {MAX_EMBED_INPUTS} inputs per request.", param="input")
        encoding = body.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            raise ApiError(400, "'encoding_format' must be float or base64.", param="encoding_format")
        vectors: list[Any] = backend.embed(texts)
        if encoding == "base64":  # little-endian float32, as OpenAI sends them
            vectors = [base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode("ascii") for v in vectors]
        data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
        self._json(
            200,
            {
                "object": "list",
                "data": data,
                "model": model,
                "usage": {"prompt_tokens": 0, "total_tokens": 0},
            },
        )

    def _chat(self) -> None:
        api = self.server.api
        body = self._body()
        loaded = api.backend.chat_model()
        if loaded is None:
            raise ApiError(503, "No model is loaded in Scout Chat.", "server_error", "model_not_loaded")
        request = parse_chat_request(body, api.backend.sampling_defaults())
        if request.model != loaded:
            raise ApiError(
                404,
                f"The model {request.model!r} is not loaded; the loaded model is {loaded!r}.",
                code="model_not_found",
                param="model",
            )
        if not api.try_admit():
            raise ApiError(
                429, "Too many requests are waiting; try again when one has finished.", "rate_limit_exceeded"
            )
        job = api.queue(request)
        try:
            if request.stream:
                self._stream(job)
            else:
                self._whole(job)
        finally:
            job.cancel.set()  # whatever happened here, the worker need not go on
            api.release(job)

    def _events(self, job: ApiJob) -> Any:
        """The job's events as they come; cancels it when the client leaves or the server stops."""
        while True:
            try:
                yield job.events.get(timeout=POLL_S)
            except queue.Empty:
                if self.server.api.closing.is_set():
                    raise ApiError(503, "The API server was turned off.", "server_error") from None
                if self._client_gone():
                    job.cancel.set()
                    log.info("API client went away: answer %d cancelled", job.id)
                    raise BrokenPipeError from None

    def _whole(self, job: ApiJob) -> None:
        stops = StopMatcher(job.request.stop)
        text: list[str] = []
        for kind, value in self._events(job):
            if kind == "piece":
                text.append(stops.feed(value))
                if stops.stopped:
                    job.cancel.set()
            elif kind == "error":
                raise value
            else:
                stats: GenerationStats = value
                if job.stopped_by_user:
                    raise ApiError(409, "The answer was stopped in Scout Chat.", "cancelled", "cancelled")
                text.append(stops.flush())
                answer = "".join(text)
                call = parse_tool_call(answer, set(job.request.tool_names)) if job.request.tools else None
                message: dict[str, Any] = {"role": "assistant", "content": answer}
                reason = finish_reason(stats, stops.stopped)
                if call is not None:
                    message = {"role": "assistant", "content": None, "tool_calls": [tool_call_json(call)]}
                    reason = "tool_calls"
                self._json(
                    200,
                    {
                        "id": f"chatcmpl-{job.id}",
                        "object": "chat.completion",
                        "created": job.created,
                        "model": job.request.model,
                        "choices": [
                            {"index": 0, "message": message, "finish_reason": reason, "logprobs": None}
                        ],
                        "usage": _usage(stats),
                    },
                )
                return

    def _stream(self, job: ApiJob) -> None:
        stops = StopMatcher(job.request.stop)
        calls = ToolCallWatch(job.request.tool_names)  # withholds what may be a tool call
        started = False

        def chunk(delta: dict[str, Any], reason: str | None = None) -> dict[str, Any]:
            return {
                "id": f"chatcmpl-{job.id}",
                "object": "chat.completion.chunk",
                "created": job.created,
                "model": job.request.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": reason, "logprobs": None}],
            }

        def send(*events: dict[str, Any] | str) -> None:
            nonlocal started
            if not started:
                started = True
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Connection", "close")
                self._cors_headers()
                self.end_headers()
                self.close_connection = True
                events = (chunk({"role": "assistant", "content": ""}), *events)
            out = "".join(f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n" for e in events)
            self.wfile.write(out.encode("utf-8"))
            self.wfile.flush()

        try:
            for kind, value in self._events(job):
                if kind == "piece":
                    pieces = [value]
                    while True:  # what else has arrived goes out in the same write
                        try:
                            more = job.events.get_nowait()
                        except queue.Empty:
                            break
                        if more[0] != "piece":
                            job.events.put(more)  # SimpleQueue: put back at the end (nothing follows)
                            break
                        pieces.append(more[1])
                    text = calls.feed(stops.feed("".join(pieces)))
                    if stops.stopped:
                        job.cancel.set()
                    if text:
                        send(chunk({"content": text}))
                elif kind == "error":
                    raise value
                else:
                    if job.stopped_by_user:
                        raise ApiError(409, "The answer was stopped in Scout Chat.", "cancelled", "cancelled")
                    released = calls.feed(stops.flush())
                    held, call = calls.finish()
                    tail = released + held
                    final = [chunk({"content": tail})] if tail else []
                    if call is not None:  # the answer was a call: sent once parsed, as a whole
                        final.append(chunk({"tool_calls": [tool_call_json(call, 0)]}))
                        final.append(chunk({}, "tool_calls"))
                    else:
                        final.append(chunk({}, finish_reason(value, stops.stopped)))
                    if job.request.include_usage:
                        final.append({**chunk({}), "choices": [], "usage": _usage(value)})
                    send(*final, "[DONE]")
                    return
        except ApiError as error:
            if not started:
                raise
            log.info("API answer %d ended with an error: %s", job.id, error.message)
            send(error.body(), "[DONE]")  # the SSE form of an error (clients raise it)


def _usage(stats: GenerationStats) -> dict[str, int]:
    return {
        "prompt_tokens": stats.prompt_tokens,
        "completion_tokens": stats.completion_tokens,
        "total_tokens": stats.prompt_tokens + stats.completion_tokens,
    }
