"""``RemoteEngine``: the :class:`~app.core.ports.Engine` for a model served by another program.

Any OpenAI-compatible server (llama.cpp's ``llama-server``, llama-cpp-python's server, vLLM,
Ollama, LM Studio) on this computer or another one. Documents, retrieval, images, history, search
and export stay here; only the turn's messages are sent. Standard library HTTP only.

* **Nothing connects** until :meth:`RemoteEngine.load` (or :func:`probe_server`) is called with a
  server the user configured.
* **Identification** (:func:`probe_server`): ``/v1/models`` (what every OpenAI-compatible server
  has), then what the server itself says: llama-server's ``/props`` (context size, vision,
  build), llama-cpp-python's ``/openapi.json`` title, vLLM's ``max_model_len``, Ollama's
  ``/api/version`` and ``/api/show``, LM Studio's ``/api/v0/models``. Where a server does not say
  its context size (llama-cpp-python's), the context is the one the user set, or
  ``DEFAULT_N_CTX``; the server's own "context exceeded" answer corrects it.
* **Streaming** over server-sent events (``/v1/chat/completions``, ``stream: true``). The response
  is read on a short-lived reader thread so that Stop closes the connection at once (servers
  stop generating when the client goes) and a silent server is a time-out, not a hang.
* **Security**: HTTPS is verified (a custom CA file may be given); plain HTTP to an address
  outside loopback and the private ranges needs ``allow_plain_http``. The API key goes only into
  the ``Authorization`` header: never into ``repr``, logs, exceptions or exports.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import json
import logging
import socket
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.core.chunking import estimate_tokens
from app.core.engine.errors import ContextOverflowError, EngineError, NoModelError
from app.core.ports import EngineState
from app.core.tools import TOOL_ROLE
from app.core.types import FinishReason, GenerationStats, ModelInfo

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from app.core.types import ChatMessage, LoadParams, SamplingParams

log = logging.getLogger(__name__)

DEFAULT_N_CTX = 4096  # a server that does not say its context size (llama-cpp-python's)
TIMEOUT_S = 30.0  # connect, and the longest silence while a request is answered
PROBE_TIMEOUT_S = 5.0  # the optional identification requests
POLL_S = 0.05  # how often a stream checks Stop
CHAT_OVERHEAD_TOKENS = 8  # per message, when the server cannot render the template (an estimate)

LLAMA_SERVER = "llama-server"
LLAMA_CPP_PYTHON = "llama-cpp-python server"
VLLM = "vLLM"
OLLAMA = "Ollama"
LM_STUDIO = "LM Studio"
GENERIC = "OpenAI-compatible server"
_LLAMA_FAMILY = (LLAMA_SERVER, LLAMA_CPP_PYTHON, VLLM, OLLAMA, LM_STUDIO)


class RemoteError(EngineError):
    """A server could not be used; ``message`` says why in the user's words."""


class ServerUnreachableError(RemoteError):
    pass


class ServerAuthError(RemoteError):
    pass


class ServerTimeoutError(RemoteError):
    pass


class NotOpenAICompatibleError(RemoteError):
    pass


class ServerModelError(RemoteError):
    pass


class ServerLostError(RemoteError):
    """The connection ended in the middle of an answer: the text so far stays."""


class InsecureServerError(RemoteError):
    pass


class RemoteContextOverflowError(ContextOverflowError):
    pass


@dataclass(frozen=True)
class ServerConfig:
    """A server the user configured. ``api_key`` is never shown (``repr`` leaves it out)."""

    url: str
    api_key: str = field(default="", repr=False)
    model: str = ""  # "": the server's first model
    ca_file: Path | None = None
    allow_plain_http: bool = False  # plain HTTP outside loopback and private networks
    n_ctx: int = 0  # 0: what the server says (else DEFAULT_N_CTX)
    timeout_s: float = TIMEOUT_S

    @property
    def base(self) -> urllib.parse.SplitResult:
        return parse_url(self.url)

    @property
    def address(self) -> str:
        """``host:port`` as shown to the user."""
        parts = self.base
        return f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"


@dataclass(frozen=True)
class ServerIdentity:
    """What a server said about itself (:func:`probe_server`)."""

    kind: str
    models: tuple[str, ...]
    model: str
    n_ctx: int = 0  # 0: the server does not say
    vision: bool = False
    version: str = ""
    tokenize_path: str = ""  # "/tokenize", "/extras/tokenize/count" or "" (estimate)
    template_path: str = ""  # llama-server's "/apply-template"

    def describe(self, address: str) -> str:
        """One paragraph for the Test button."""
        version = f" {self.version}" if self.version else ""
        ctx = f"context {self.n_ctx:,} tokens" if self.n_ctx else "context size not reported by the server"
        vision = "reads pictures" if self.vision else "text only"
        others = (
            f" (also: {', '.join(m for m in self.models if m != self.model)})" if len(self.models) > 1 else ""
        )
        return f"{self.kind}{version} at {address}: model {self.model}{others}; {ctx}; {vision}."


def parse_url(url: str) -> urllib.parse.SplitResult:
    """The server's base URL (``http://host:port``, a trailing ``/v1`` dropped); ValueError if bad."""
    text = url.strip()
    if "://" not in text:
        text = "http://" + text
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not a server address (expected http://host:port or https://…)")
    try:
        _ = parts.port
    except ValueError:
        raise ValueError(f"{url!r} has an invalid port number") from None
    path = parts.path.rstrip("/")
    if path.endswith("/v1"):
        path = path[:-3]
    return parts._replace(path=path, query="", fragment="")


def is_private_host(host: str, *, resolve: bool = True) -> bool:
    """Loopback, private, link-local addresses and ``localhost``; hostnames are resolved (unless
    ``resolve`` is False: then only ``*.local`` names count as private)."""
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        if not resolve:
            return host.lower().endswith(".local")
        try:
            infos = socket.getaddrinfo(host, None)
        except OSError:
            return False
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    return bool(addresses) and all(a.is_loopback or a.is_private or a.is_link_local for a in addresses)


class _Http:
    """Requests to one server; the key only in the header, and scrubbed from anything shown."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.base = config.base
        self._context: ssl.SSLContext | None = None
        self._conn: http.client.HTTPConnection | None = None  # kept alive for short requests
        self._lock = threading.Lock()

    def check_security(self) -> None:
        base = self.base
        if base.scheme == "http" and not self.config.allow_plain_http:
            host = base.hostname or ""
            if not is_private_host(host):
                raise InsecureServerError(
                    f"{self.config.address} is outside this computer and your private network, and "
                    "plain HTTP would send your messages (and the API key) unencrypted. Use https://, "
                    "or allow plain HTTP for this server explicitly."
                )

    def connection(self, timeout: float) -> http.client.HTTPConnection:
        base = self.base
        host = base.hostname or ""
        if base.scheme == "https":
            if self._context is None:
                cafile = str(self.config.ca_file) if self.config.ca_file else None
                try:
                    self._context = ssl.create_default_context(cafile=cafile)
                except (OSError, ssl.SSLError) as exc:
                    raise RemoteError(
                        f"The certificate file {self.config.ca_file} could not be read.", str(exc)
                    ) from exc
            return http.client.HTTPSConnection(host, base.port, timeout=timeout, context=self._context)
        return http.client.HTTPConnection(host, base.port, timeout=timeout)

    def headers(self, body: bool = False) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": "ScoutChat"}
        if body:
            headers["Content-Type"] = "application/json"
        if self.config.api_key:
            headers["Authorization"] = f"Bearer {self.config.api_key}"
        return headers

    def scrub(self, text: str) -> str:
        key = self.config.api_key
        return text.replace(key, "•••") if key and len(key) >= 4 else text

    def send(
        self, conn: http.client.HTTPConnection, method: str, path: str, payload: Any = None
    ) -> http.client.HTTPResponse:
        """Send one request on ``conn``; connection failures become the user's sentences."""
        body = json.dumps(payload).encode("utf-8") if payload is not None else None
        try:
            conn.request(method, self.base.path + path, body=body, headers=self.headers(body is not None))
            return conn.getresponse()
        except (OSError, http.client.HTTPException, ssl.SSLError) as exc:
            conn.close()
            raise self.connection_error(exc) from None

    def connection_error(self, exc: BaseException) -> RemoteError:
        address = self.config.address
        detail = self.scrub(f"{type(exc).__name__}: {exc}")
        if isinstance(exc, ConnectionRefusedError):
            return ServerUnreachableError(
                f"Nothing answers at {address} (connection refused). Is the server running, on that port?",
                detail,
            )
        if isinstance(exc, socket.gaierror):
            return ServerUnreachableError(f"The server name {self.base.hostname} could not be found.", detail)
        if isinstance(exc, ssl.SSLCertVerificationError):
            return RemoteError(
                f"The secure connection to {address} failed: its certificate could not be verified "
                f"({exc.verify_message}). Give the server's CA certificate file if it uses its own.",
                detail,
            )
        if isinstance(exc, ssl.SSLError):
            return RemoteError(
                f"The secure connection to {address} failed (is it really an HTTPS server?).", detail
            )
        if isinstance(exc, (TimeoutError, socket.timeout)):
            return ServerTimeoutError(
                f"{address} did not answer within {self.config.timeout_s:.0f} s (time-out). The server "
                "may be overloaded, or a firewall drops the connection.",
                detail,
            )
        if isinstance(
            exc, (http.client.RemoteDisconnected, ConnectionResetError, http.client.IncompleteRead)
        ):
            return ServerLostError(f"{address} closed the connection without answering.", detail)
        if isinstance(exc, (http.client.BadStatusLine, http.client.HTTPException)):
            return NotOpenAICompatibleError(
                f"{address} does not speak HTTP as an OpenAI-compatible server does.", detail
            )
        if isinstance(exc, OSError):
            return ServerUnreachableError(f"{address} could not be reached: {exc.strerror or exc}.", detail)
        return RemoteError(f"The request to {address} failed.", detail)

    def request_json(
        self, method: str, path: str, payload: Any = None, *, timeout: float | None = None
    ) -> Any:
        """One short request on the kept-alive connection; the JSON answer, or a RemoteError."""
        with self._lock:
            for attempt in (0, 1):
                conn = self._conn or self.connection(timeout or self.config.timeout_s)
                self._conn = None
                if timeout is not None:
                    conn.timeout = timeout
                    if conn.sock is not None:
                        conn.sock.settimeout(timeout)
                try:
                    response = self.send(conn, method, path, payload)
                    raw = response.read()
                except ServerLostError:
                    if attempt == 0:
                        continue  # a kept-alive connection the server had closed: once more
                    raise
                except (OSError, http.client.HTTPException) as exc:
                    conn.close()
                    raise self.connection_error(exc) from None
                if response.will_close:
                    conn.close()
                else:
                    self._conn = conn
                return self.decode(response, raw, path)
        raise AssertionError("unreachable")

    def decode(self, response: http.client.HTTPResponse, raw: bytes, path: str) -> Any:
        status = response.status
        kind = response.getheader("Content-Type", "") or ""
        text = self.scrub(raw[:2000].decode("utf-8", "replace"))
        if status >= 400:
            raise self.http_error(status, text, path)
        try:
            return json.loads(raw)
        except ValueError:
            what = (
                "an HTML page"
                if "html" in kind.lower() or text.lstrip().startswith("<")
                else "something else"
            )
            raise NotOpenAICompatibleError(
                f"{self.config.address} answered, but not as an OpenAI-compatible server: it sent "
                f"{what} instead of JSON for {path}. Check the address and port.",
                f"HTTP {status} {kind}: {text[:300]}",
            ) from None

    def http_error(self, status: int, text: str, path: str) -> EngineError:
        address = self.config.address
        reason = _error_text(text)
        detail = f"HTTP {status} for {path}: {text[:500]}"
        if status in (401, 403):
            return ServerAuthError(
                f"{address} refused the API key (HTTP {status}): "
                + ("a key is needed. " if not self.config.api_key else "the key is wrong. ")
                + "Check it in Servers….",
                detail,
            )
        low = reason.lower()
        if "context" in low and ("exceed" in low or "maximum" in low or "too long" in low or "length" in low):
            return RemoteContextOverflowError(
                f"The conversation does not fit the server's context. The server says: {reason.rstrip('.')}. "
                "Start a new chat or shorten the documents.",
                detail,
            )
        if status == 404 and "model" in low:
            return ServerModelError(f"{address} has no such model: {reason}", detail)
        if status == 404:
            return NotOpenAICompatibleError(
                f"{address} has no {path} (HTTP 404): it is not an OpenAI-compatible server, or the "
                "address needs a path.",
                detail,
            )
        if status == 503:
            return ServerModelError(
                f"{address} is not ready (HTTP 503): {reason or 'the model may still be loading'}.", detail
            )
        return RemoteError(f"{address} answered HTTP {status}: {reason or 'no reason given'}.", detail)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def _error_text(text: str) -> str:
    """The sentence in an OpenAI-style error body (``{"error": {"message": …}}``), else the text."""
    try:
        body = json.loads(text)
    except ValueError:
        return text.strip()[:200]
    if isinstance(body, dict):
        error = body.get("error", body.get("detail", body))
        if isinstance(error, dict):
            return str(error.get("message") or error.get("msg") or error)[:300]
        if isinstance(error, list) and error and isinstance(error[0], dict):
            return str(error[0].get("msg", error[0]))[:300]
        return str(error)[:300]
    return text.strip()[:200]


def _optional(http_: _Http, method: str, path: str, payload: Any = None) -> Any:
    """An identification request whose failure only means "this server is not that kind"."""
    try:
        return http_.request_json(method, path, payload, timeout=PROBE_TIMEOUT_S)
    except (ServerAuthError, ServerUnreachableError, ServerLostError):
        raise
    except RemoteError:
        return None


def probe_server(config: ServerConfig, progress: Callable[[float], bool] | None = None) -> ServerIdentity:
    """Connect, list the models and identify the server (a RemoteError says why it cannot be used)."""
    http_ = _Http(config)
    try:
        return _identify(http_, progress)
    finally:
        http_.close()


def _identify(http_: _Http, progress: Callable[[float], bool] | None = None) -> ServerIdentity:
    config = http_.config
    http_.check_security()
    listing = http_.request_json("GET", "/v1/models")
    data = listing.get("data") if isinstance(listing, dict) else None
    if not isinstance(data, list):
        raise NotOpenAICompatibleError(
            f"{config.address} answered /v1/models without a list of models: it is not an "
            "OpenAI-compatible server.",
            str(listing)[:300],
        )
    models = tuple(str(m.get("id")) for m in data if isinstance(m, dict) and m.get("id"))
    if not models:
        raise ServerModelError(f"{config.address} serves no model at the moment.")
    model = config.model or models[0]
    if model not in models:
        raise ServerModelError(
            f"{config.address} has no model named {model!r}; it offers: {', '.join(models)}."
        )
    entry = next(m for m in data if isinstance(m, dict) and m.get("id") == model)
    if progress is not None and not progress(0.3):
        raise RemoteError("Connecting was cancelled.")
    owner = str(entry.get("owned_by", "")).lower()
    identity = ServerIdentity(kind=GENERIC, models=models, model=model)
    if owner in ("llamacpp", "") or "meta" in entry:
        props = _optional(http_, "GET", "/props")
        if isinstance(props, dict) and "default_generation_settings" in props:
            settings = props.get("default_generation_settings") or {}
            modalities = props.get("modalities") or {}
            return replace(
                identity,
                kind=LLAMA_SERVER,
                n_ctx=int(settings.get("n_ctx") or props.get("n_ctx") or 0),
                vision=bool(modalities.get("vision")),
                version=str(props.get("build_info", "")),
                tokenize_path="/tokenize",
                template_path="/apply-template",
            )
    if owner == "vllm" or "max_model_len" in entry:
        version = _optional(http_, "GET", "/version")
        return replace(
            identity,
            kind=VLLM,
            n_ctx=int(entry.get("max_model_len") or 0),
            version=str(version.get("version", "")) if isinstance(version, dict) else "",
            tokenize_path="/tokenize",
        )
    if owner in ("me", ""):
        api = _optional(http_, "GET", "/openapi.json")
        info = api.get("info", {}) if isinstance(api, dict) else {}
        if "llama.cpp python" in str(info.get("title", "")).lower():
            return replace(
                identity,
                kind=LLAMA_CPP_PYTHON,
                version=str(info.get("version", "")),
                tokenize_path="/extras/tokenize/count",
            )
    if owner == "organization_owner" or owner not in ("me", "library", "ollama"):
        studio = _optional(http_, "GET", f"/api/v0/models/{urllib.parse.quote(model, safe='')}")
        if isinstance(studio, dict) and ("max_context_length" in studio or "loaded_context_length" in studio):
            return replace(
                identity,
                kind=LM_STUDIO,
                n_ctx=int(studio.get("loaded_context_length") or studio.get("max_context_length") or 0),
                vision=studio.get("type") == "vlm",
            )
    version = _optional(http_, "GET", "/api/version")
    if isinstance(version, dict) and "version" in version:
        show = _optional(http_, "POST", "/api/show", {"model": model})
        n_ctx, vision = 0, False
        if isinstance(show, dict):
            vision = "vision" in (show.get("capabilities") or [])
            for line in str(show.get("parameters", "")).splitlines():
                name, _, value = line.strip().partition(" ")
                if name == "num_ctx" and value.strip().isdigit():
                    n_ctx = int(value.strip())
        return replace(identity, kind=OLLAMA, version=str(version["version"]), n_ctx=n_ctx, vision=vision)
    return identity


class RemoteEngine(EngineState):
    """The ``Engine`` for a model on an OpenAI-compatible server. One thread uses it (the
    inference worker's), like the local engines."""

    def __init__(self, config: ServerConfig) -> None:
        super().__init__()
        self.config = config
        self._http = _Http(config)
        self._identity: ServerIdentity | None = None
        self._counts: dict[str, int] = {}  # text → tokens (the same passages are counted often)
        self._count_base: int | None = None  # tokens a server adds to any text it counts

    # -- Engine -----------------------------------------------------------------------------------
    @property
    def identity(self) -> ServerIdentity | None:
        return self._identity

    @property
    def where(self) -> str:
        """Where the model runs, for the status bar: ``127.0.0.1:8081 — llama-server``."""
        kind = self._identity.kind if self._identity else GENERIC
        return f"{self.config.address} — {kind}"

    def load(
        self, params: LoadParams | None = None, progress: Callable[[float], bool] | None = None
    ) -> ModelInfo:
        """Connect and identify the server (``params`` is for local engines: not used)."""
        started = time.perf_counter()
        identity = _identify(self._http, progress)
        n_ctx = self.config.n_ctx or identity.n_ctx or DEFAULT_N_CTX
        self._identity = identity
        self._counts.clear()
        self._count_base = None
        note = ""
        if not identity.n_ctx and not self.config.n_ctx:
            note = (
                f"{identity.kind} does not report its context size: Scout Chat assumes {n_ctx:,} "
                "tokens (set the real one in Servers…)."
            )
        self._info = ModelInfo(
            path=Path(identity.model),
            name=identity.model,
            architecture=identity.kind,
            n_ctx=n_ctx,
            n_ctx_train=identity.n_ctx or n_ctx,
            n_params=0,
            size_bytes=0,
            has_chat_template=True,
            chat_template_note=note,
            load_seconds=time.perf_counter() - started,
            has_vision=identity.vision,
            server=self.where,
            server_models=identity.models,
        )
        if progress is not None:
            progress(1.0)
        log.info("connected to %s: %s", self.config.address, identity.describe(self.config.address))
        return self._info

    def unload(self) -> None:
        self._info = None
        self._http.close()

    def close(self) -> None:
        self.unload()

    def count_tokens(self, text: str) -> int:
        if not text:
            return 0
        cached = self._counts.get(text)
        if cached is not None:
            return cached
        count = self._server_count(text)
        if len(self._counts) > 4096:
            self._counts.clear()
        self._counts[text] = count
        return count

    def _server_count(self, text: str) -> int:
        identity = self._identity
        path = identity.tokenize_path if identity else ""
        try:
            if path == "/tokenize" and identity is not None and identity.kind == LLAMA_SERVER:
                return len(self._http.request_json("POST", path, {"content": text})["tokens"])
            if path == "/tokenize":  # vLLM
                body = {
                    "model": identity.model if identity else "",
                    "prompt": text,
                    "add_special_tokens": False,
                }
                return int(self._http.request_json("POST", path, body)["count"])
            if path == "/extras/tokenize/count" and identity is not None:
                if self._count_base is None:  # it adds the BOS token to every text it counts
                    self._count_base = self._llama_cpp_python_count("", identity.model)
                return self._llama_cpp_python_count(text, identity.model) - self._count_base
        except (RemoteError, KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, (ServerAuthError, ServerUnreachableError, ServerTimeoutError)):
                raise
            log.info("the server's tokenizer failed (%s); estimating instead", exc)
        return estimate_tokens(text)

    def _llama_cpp_python_count(self, text: str, model: str) -> int:
        body = {"input": text, "model": model}
        return int(self._http.request_json("POST", "/extras/tokenize/count", body)["count"])

    def count_chat_tokens(self, messages: Sequence[ChatMessage]) -> int:
        identity = self._identity
        if identity is not None and identity.template_path:
            try:
                rendered = self._http.request_json(
                    "POST",
                    identity.template_path,
                    {"messages": _messages_json(messages, images=False)},
                )
                prompt = str(rendered["prompt"])
                if identity.kind == LLAMA_SERVER:
                    # its rendered prompt leaves out the BOS token, which it adds when it tokenizes
                    # the prompt of a chat request: count it the same way
                    body = {"content": prompt, "add_special": True}
                    return len(self._http.request_json("POST", "/tokenize", body)["tokens"])
                return self.count_tokens(prompt)
            except (RemoteError, KeyError, TypeError) as exc:
                if isinstance(exc, (ServerAuthError, ServerUnreachableError, ServerTimeoutError)):
                    raise
                log.info("the server could not render the chat template (%s); estimating", exc)
        # No template endpoint: each message's tokens plus the template's few tokens around it.
        return (
            sum(self.count_tokens(m.content) + CHAT_OVERHEAD_TOKENS for m in messages) + CHAT_OVERHEAD_TOKENS
        )

    def stream_chat(
        self,
        messages: Sequence[ChatMessage],
        sampling: SamplingParams,
        cancel: threading.Event,
        on_prompt_progress: Callable[[int, int], None] | None = None,
        *,
        continue_last: bool = False,
    ) -> Iterator[str]:
        info, identity = self._info, self._identity
        if info is None or identity is None:
            raise NoModelError()
        if continue_last and identity.kind not in (LLAMA_SERVER, VLLM):
            raise RemoteError(
                f"{identity.kind} on {self.config.address} cannot continue an answer (only llama-server "
                "and vLLM carry on a written answer). Use Regenerate, or ask the model to go on."
            )
        if any(m.images for m in messages) and not identity.vision:
            raise RemoteError(
                f"{identity.model} on {self.config.address} does not accept pictures (the server does "
                "not say it reads images). Remove the pictures, or serve a model with a vision projector."
            )
        body = self.request_body(messages, sampling, continue_last=continue_last)
        started = time.perf_counter()
        first_at: float | None = None
        pieces = 0
        usage: dict[str, Any] = {}
        timings: dict[str, Any] = {}
        finish = FinishReason.STOP
        prompt_estimate = 0
        stream = _SseStream(self._http, body, self.config.timeout_s)
        try:
            for event in stream.events(cancel):
                if isinstance(event.get("usage"), dict):
                    usage = event["usage"]
                if isinstance(event.get("timings"), dict):
                    timings = event["timings"]
                progress = event.get("prompt_progress")
                if isinstance(progress, dict) and on_prompt_progress is not None:
                    _report_progress(progress, on_prompt_progress)
                if "error" in event:
                    raise self._http.http_error(400, json.dumps(event), "/v1/chat/completions")
                for choice in event.get("choices") or ():
                    piece = (choice.get("delta") or {}).get("content") or ""
                    if piece:
                        if first_at is None:
                            first_at = time.perf_counter()
                        pieces += 1
                        yield piece
                    reason = choice.get("finish_reason")
                    if reason == "length":
                        finish = FinishReason.LENGTH
            if cancel.is_set():
                finish = FinishReason.CANCELLED
            if not usage and not timings:
                prompt_estimate = self.count_chat_tokens(messages)
        except ServerLostError as lost:
            self._stats = self._figures(started, first_at, pieces, usage, timings, FinishReason.CANCELLED)
            if pieces == 0:
                self._diagnose(body, lost)
            raise
        except RemoteContextOverflowError as exc:
            self._learn_context(exc.message)
            raise
        finally:
            stream.close()
        self._stats = self._figures(started, first_at, pieces, usage, timings, finish, prompt_estimate)

    def _diagnose(self, body: dict[str, Any], lost: ServerLostError) -> None:
        """A stream that ended before its first piece: llama-cpp-python's server ends it so when
        the prompt is longer than its context. Asked again without streaming, it says so."""
        try:
            self._http.request_json(
                "POST", "/v1/chat/completions", {**body, "stream": False, "max_tokens": 1}
            )
        except RemoteContextOverflowError as exc:
            self._learn_context(exc.message)
            raise exc from lost
        except RemoteError:
            return

    def request_body(
        self, messages: Sequence[ChatMessage], sampling: SamplingParams, *, continue_last: bool = False
    ) -> dict[str, Any]:
        """The ``/v1/chat/completions`` request for these messages (also what ``bench/remote.py`` sends).
        ``continue_last``: the last message is an answer to carry on: llama-server continues a
        final assistant message by itself (its "prefill"); vLLM is told so."""
        identity = self._identity
        assert identity is not None
        body: dict[str, Any] = {
            "model": sampling.model or identity.model,
            "messages": _messages_json(messages, images=identity.vision),
            "stream": True,
            "max_tokens": sampling.max_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
        }
        if identity.kind != LLAMA_CPP_PYTHON:
            body["stream_options"] = {"include_usage": True}
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        if identity.kind in _LLAMA_FAMILY:
            body["min_p"] = sampling.min_p
            if sampling.top_k > 0 or identity.kind != VLLM:
                body["top_k"] = sampling.top_k
        if identity.kind in (LLAMA_SERVER, LLAMA_CPP_PYTHON):
            body["repeat_penalty"] = sampling.repeat_penalty
        elif identity.kind == VLLM:
            body["repetition_penalty"] = sampling.repeat_penalty
        if identity.kind == LLAMA_SERVER:
            body["cache_prompt"] = True  # reuse the KV cache of the conversation's earlier turns
            body["return_progress"] = True  # prompt-processing progress events while it reads
        if continue_last and identity.kind == VLLM:
            body["continue_final_message"] = True
            body["add_generation_prompt"] = False
        return body

    def _figures(
        self,
        started: float,
        first_at: float | None,
        pieces: int,
        usage: dict[str, Any],
        timings: dict[str, Any],
        finish: FinishReason,
        prompt_estimate: int = 0,
    ) -> GenerationStats:
        """Tokens from the server's usage (else its tokenizer, else the streamed pieces), speed
        from llama-server's timings (else measured here, from the first piece to the last)."""
        ended = time.perf_counter()
        completion = int(usage.get("completion_tokens") or timings.get("predicted_n") or 0)
        if not completion:
            completion = pieces  # llama-cpp-python's server: one streamed piece per token
        prompt = int(usage.get("prompt_tokens") or timings.get("prompt_n") or 0) or prompt_estimate
        ttft = (first_at or ended) - started
        if timings.get("predicted_per_second"):
            tps = float(timings["predicted_per_second"])
        else:
            span = ended - first_at if first_at is not None else 0.0
            # tokens after the first over the time they took (the first one's time is the TTFT)
            tps = (completion - 1) / span if completion > 1 and span > 0 else 0.0
        n_ctx = self._info.n_ctx if self._info else 0
        return GenerationStats(
            prompt_tokens=prompt,
            prompt_tokens_evaluated=int(timings.get("prompt_n") or prompt),
            completion_tokens=completion,
            ttft_s=ttft,
            prompt_eval_s=ttft,
            generation_s=max(0.0, ended - (first_at or ended)),
            tokens_per_s=tps,
            n_ctx=n_ctx,
            context_used=prompt + completion,
            finish_reason=finish,
        )

    def _learn_context(self, message: str) -> None:
        """A server that did not say its context size says it when it is exceeded."""
        import re

        found = re.search(r"(?:maximum context length is|context (?:size|window) (?:is|of)) (\d+)", message)
        if found and self._info is not None:
            n_ctx = int(found.group(1))
            if n_ctx != self._info.n_ctx:
                log.info("the server's context is %d tokens (was assumed %d)", n_ctx, self._info.n_ctx)
                self._info = replace(self._info, n_ctx=n_ctx, n_ctx_train=n_ctx, chat_template_note="")


def _report_progress(progress: dict[str, Any], on_prompt_progress: Callable[[int, int], None]) -> None:
    """llama-server's ``prompt_progress`` (``total`` prompt tokens, ``cache`` of them reused,
    ``processed`` so far, the reused ones included) as the local engine reports it: the tokens
    evaluated so far out of those to evaluate."""
    try:
        total, cache, processed = (int(progress[key]) for key in ("total", "cache", "processed"))
    except (KeyError, TypeError, ValueError):
        return
    todo = total - cache
    if todo > 0:
        on_prompt_progress(max(0, min(todo, processed - cache)), todo)


def _messages_json(messages: Sequence[ChatMessage], *, images: bool) -> list[dict[str, Any]]:
    return [_message_json(m, i, images=images) for i, m in enumerate(messages)]


def _message_json(message: ChatMessage, index: int, *, images: bool) -> dict[str, Any]:
    if message.role == TOOL_ROLE:
        # A tool's result goes as OpenAI's "tool" message: servers that check messages against
        # OpenAI's schema (llama-cpp-python's, LM Studio's) refuse Llama 4's own "ipython" role
        # and a tool message without its "tool_call_id". Scout's chat template renders "tool"
        # and "ipython" alike (an <|header_start|>ipython<|header_end|> turn). The call itself
        # stays the assistant's text as the model wrote it, so the template shows it unchanged.
        return {"role": "tool", "tool_call_id": f"call_{index}", "content": message.content}
    if not (images and message.images):
        return {"role": message.role, "content": message.content}
    parts: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": uri}} for uri in message.images]
    parts.append({"type": "text", "text": message.content})
    return {"role": message.role, "content": parts}


class _SseStream:
    """One streamed answer on its own connection. Lines are read on the calling thread (no
    hand-off per token); a watcher thread closes the connection as soon as Stop is asked, which
    ends a read that waits for the server. A silent server is the socket's time-out."""

    def __init__(self, http_: _Http, body: dict[str, Any], timeout_s: float) -> None:
        self._http = http_
        self._timeout_s = timeout_s
        self._conn = http_.connection(timeout_s)
        self._body = body
        self._done = threading.Event()
        self._watcher: threading.Thread | None = None

    def events(self, cancel: threading.Event) -> Iterator[dict[str, Any]]:
        """The JSON events until ``[DONE]``, the end of the stream, or Stop."""
        response = self._http.send(self._conn, "POST", "/v1/chat/completions", self._body)
        if response.status >= 400:
            raw = response.read()
            self._http.decode(response, raw, "/v1/chat/completions")  # raises the HTTP error
        kind = (response.getheader("Content-Type", "") or "").lower()
        if "json" in kind:  # a server that ignored "stream": one whole answer
            yield self._http.decode(response, response.read(), "/v1/chat/completions")
            return
        if "event-stream" not in kind:
            self._http.decode(response, response.read(), "/v1/chat/completions")
            raise NotOpenAICompatibleError(
                f"{self._http.config.address} did not stream the answer (it sent {kind or 'no type'})."
            )
        self._watcher = threading.Thread(
            target=self._watch, args=(cancel,), name="scout-sse-stop", daemon=True
        )
        self._watcher.start()
        address = self._http.config.address
        while not cancel.is_set():
            try:
                raw_line = response.readline()
            except Exception as exc:  # noqa: BLE001 - mapped to the user's sentence below
                if cancel.is_set():
                    return
                error = self._http.connection_error(exc)
                if isinstance(error, ServerTimeoutError):
                    raise ServerTimeoutError(
                        f"{address} sent nothing for {self._timeout_s:.0f} s in the middle of the answer "
                        "(time-out). The text so far is kept.",
                        error.detail,
                    ) from None
                raise ServerLostError(
                    f"The connection to {address} broke in the middle of the answer (the server "
                    "stopped or the network dropped). The text so far is kept.",
                    error.detail,
                ) from None
            if not raw_line:
                if cancel.is_set():
                    return
                raise ServerLostError(
                    f"The connection to {address} ended in the middle of the answer (the server "
                    "stopped or the network dropped). The text so far is kept.",
                    "the event stream ended before [DONE]",
                )
            if not raw_line.startswith(b"data:"):
                continue  # comments (": ping"), event names, blank separators
            data = raw_line[5:].strip()
            if data == b"[DONE]":
                return
            try:
                event = json.loads(data)
            except ValueError:
                log.info("a line of the stream is not JSON: %.80r", data)
                continue
            if isinstance(event, dict):
                yield event

    def _watch(self, cancel: threading.Event) -> None:
        while not self._done.is_set():
            if cancel.wait(POLL_S):
                self._shutdown()
                return

    def _shutdown(self) -> None:
        sock = self._conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """End the request: the server sees the client go and stops generating."""
        self._done.set()
        self._shutdown()
        self._conn.close()
        if self._watcher is not None:
            self._watcher.join(2.0)
