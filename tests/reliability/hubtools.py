"""Helpers for the download reliability tests: a one-file manifest build and a FakeHub subclass that
adds what tests/hub_server.py lacks — throttling, mid-body stalls, short bodies and a count of the
body bytes actually sent per file (tests/hub_server.py itself is not changed)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from typing import Any

from app.core.manifest import Build, parse_manifest
from tests.hub_server import FakeHub, _HubHandler, sha256_of

REPO = "unsloth/Reliability-Scout-GGUF"
FILE = "Reliability-Scout-Q2.gguf"


def build_doc(data: bytes, *, build_id: str = "rel-q2", size: int | None = None) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "builds": [
            {
                "id": build_id,
                "display_name": "Reliability Scout",
                "repo_id": REPO,
                "revision": "main",
                "revision_note": "resolved at download time",
                "quantization": "Q2_K",
                "bits_per_weight": 2.7,
                "approx_size_bytes": len(data),
                "files": [{"path": FILE, "size": size or len(data), "sha256": sha256_of(data)}],
                "gated": False,
                "licence": {
                    "name": "Llama 4 Community License",
                    "url": "https://example.invalid",
                    "note": "n",
                },
                "recommended": {"context": 8192, "temperature": 0.6, "top_p": 0.9, "min_p": 0.01},
                "who_for": "tests",
            }
        ],
    }


def make_build(data: bytes, **kwargs: Any) -> Build:
    return parse_manifest(build_doc(data, **kwargs)).builds[0]


@dataclass
class Stall:
    after: int  # body bytes into the response
    seconds: float
    times: int = 1


@dataclass
class FaultyHub(FakeHub):
    """FakeHub plus throttling (``rate_bps``), stalls, a short body, and body-byte accounting."""

    rate_bps: float = 0.0  # 0: unthrottled
    block: int = 64 * 1024
    stalls: list[Stall] = field(default_factory=list)
    short_by: int = 0  # the body ends this many bytes early (Content-Length still says all)
    body_bytes: int = 0
    _count_lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> FaultyHub:
        hub = self

        class Handler(_FaultyHandler):
            pass

        Handler.hub = hub
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = False
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="faulty-hub"
        )
        self._thread.start()
        return self

    def take_stall(self) -> Stall | None:
        with self._lock:
            for stall in self.stalls:
                if stall.times:
                    stall.times -= 1
                    return stall
        return None


class _BodyWriter:
    """Wraps the handler's wfile once the headers are out: counts, throttles, stalls, truncates."""

    def __init__(self, inner: Any, hub: FaultyHub, limit: int | None) -> None:
        self.inner, self.hub, self.limit = inner, hub, limit
        self.sent = 0
        self.stall = hub.take_stall()

    def write(self, data: bytes) -> int:
        if not len(data):  # hub_server's loop past the end of a file that is shorter than it claims
            raise BrokenPipeError("no more data")
        view = memoryview(data)
        pos = 0
        while pos < len(view):
            piece = view[pos : pos + self.hub.block]
            if self.limit is not None:
                piece = piece[: max(0, self.limit - self.sent)]
                if not len(piece):
                    raise BrokenPipeError("short body: the server stops here")
            if self.stall is not None and self.sent <= self.stall.after < self.sent + len(piece):
                head = piece[: self.stall.after - self.sent]
                self._put(head)
                self.inner.flush()
                time.sleep(self.stall.seconds)
                self.stall = None
                piece = piece[len(head) :]
            self._put(piece)
            pos += len(piece) if len(piece) else self.hub.block
            if self.hub.rate_bps:
                time.sleep(len(piece) / self.hub.rate_bps)
        return len(data)

    def _put(self, piece: memoryview) -> None:
        if len(piece):
            self.inner.write(piece)
            self.sent += len(piece)
            with self.hub._count_lock:
                self.hub.body_bytes += len(piece)

    def flush(self) -> None:
        self.inner.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class _FaultyHandler(_HubHandler):
    hub: FaultyHub

    def end_headers(self) -> None:
        super().end_headers()
        if self.command == "GET" and ("/resolve/" in self.path or "/_cdn/" in self.path):
            length = None
            if self.hub.short_by:
                length = max(0, self._content_length() - self.hub.short_by)
            self.wfile = _BodyWriter(self.wfile, self.hub, length)  # type: ignore[assignment]

    def _content_length(self) -> int:
        return int(getattr(self, "_last_length", 0))

    def send_header(self, keyword: str, value: str) -> None:
        if keyword.lower() == "content-length":
            self._last_length = int(value)
        super().send_header(keyword, value)
