"""A real HTTP server on 127.0.0.1 that stands in for the Hugging Face Hub in tests and benchmarks.

It implements what :mod:`app.core.downloads` and huggingface_hub 2.4.0 call:

- ``GET /api/models/{repo}`` and ``GET /api/models/{repo}/revision/{rev}`` (``HfApi.model_info``):
  ``{"id", "sha", "gated", "private", "siblings"}``;
- ``POST /api/models/{repo}/paths-info/{rev}`` (``HfApi.get_paths_info``), form-encoded ``paths``
  (repeated) and ``expand``: a list of ``{"type": "file", "path", "size", "oid", "lfs": {"oid",
  "size", "pointerSize"}}``;
- ``GET``/``HEAD /{repo}/resolve/{rev}/{path}`` with ``Range: bytes=N-`` / ``N-M`` → 206 and
  ``Content-Range``, ETag, ``X-Repo-Commit``; optional 302 redirect to a ``/_cdn/...`` URL (as the
  Hub redirects LFS files to its CDN); 401/403 with ``X-Error-Code: GatedRepo`` for a gated repo
  unless ``Authorization: Bearer <token>`` matches.

Fault injection: drop the connection at a file offset, serve a flipped byte, answer 5xx/429 a
number of times, ignore Range (answer 200). Every request is recorded (method, path, Range header,
whether an Authorization header came; never the token itself).

Files are ``bytes`` in memory or a path on disk (served with ``socket.sendfile``).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

if TYPE_CHECKING:
    from pathlib import Path

_SEND_BLOCK = 256 * 1024


def random_bytes(n: int, seed: int) -> bytes:
    """Deterministic pseudo-random content (fast: ``random.randbytes``)."""
    return random.Random(seed).randbytes(n)


def commit_for(name: str) -> str:
    return hashlib.sha1(name.encode()).hexdigest()


@dataclass
class HubFile:
    data: bytes | None = None
    disk_path: Path | None = None
    sha256_hex: str | None = None

    @property
    def size(self) -> int:
        if self.data is not None:
            return len(self.data)
        assert self.disk_path is not None
        return self.disk_path.stat().st_size

    @property
    def sha256(self) -> str:
        if self.sha256_hex is None:
            h = hashlib.sha256()
            if self.data is not None:
                h.update(self.data)
            else:
                assert self.disk_path is not None
                with open(self.disk_path, "rb") as fh:
                    while block := fh.read(8 << 20):
                        h.update(block)
            self.sha256_hex = h.hexdigest()
        return self.sha256_hex


@dataclass
class HubRepo:
    repo_id: str
    commit: str
    files: dict[str, HubFile]
    gated: bool = False
    token: str | None = None


@dataclass
class Fault:
    kind: str  # "drop" | "flip" | "status" | "ignore_range"
    path: str
    times: int  # how many more requests it applies to; -1 = always
    offset: int = 0  # drop: file offset where the connection is cut; flip: the byte flipped
    status: int = 503
    retry_after: float | None = None
    skip: int = 0  # let this many matching requests through first


@dataclass(frozen=True)
class RequestRecord:
    method: str
    path: str
    range: str | None
    authorized: bool


@dataclass
class FakeHub:
    """Start with :meth:`start` (or ``with FakeHub() as hub``); ``hub.url`` is the endpoint."""

    redirect: bool = False
    repos: dict[str, HubRepo] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    requests: list[RequestRecord] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    # ------------------------------------------------------------------ setup

    def add_repo(
        self,
        repo_id: str,
        files: dict[str, bytes | Path | HubFile],
        *,
        gated: bool = False,
        token: str | None = None,
    ) -> HubRepo:
        hub_files = {
            path: f
            if isinstance(f, HubFile)
            else HubFile(data=f)
            if isinstance(f, bytes)
            else HubFile(disk_path=f)
            for path, f in files.items()
        }
        repo = HubRepo(repo_id, commit_for(repo_id), hub_files, gated=gated, token=token)
        self.repos[repo_id] = repo
        return repo

    def drop_connection(self, path: str, at: int, times: int = 1) -> None:
        self.faults.append(Fault("drop", path, times, offset=at))

    def flip_byte(self, path: str, offset: int, times: int = -1) -> None:
        self.faults.append(Fault("flip", path, times, offset=offset))

    def fail_with(
        self, path: str, status: int = 503, times: int = 1, retry_after: float | None = None, skip: int = 0
    ) -> None:
        self.faults.append(Fault("status", path, times, status=status, retry_after=retry_after, skip=skip))

    def ignore_range(self, path: str, times: int = 1) -> None:
        self.faults.append(Fault("ignore_range", path, times))

    def ranges_seen(self, path: str) -> list[str | None]:
        """Range headers of the GETs that reached the file's bytes (resolve or CDN URL)."""
        with self._lock:
            return [
                r.range
                for r in self.requests
                if r.method == "GET" and r.path.endswith("/" + path) and "/api/" not in r.path
            ]

    def _take_fault(self, kind: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.kind == kind and fault.path == path and fault.times != 0:
                    if fault.skip > 0:
                        fault.skip -= 1
                        return None
                    if fault.times > 0:
                        fault.times -= 1
                    return fault
        return None

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        assert self._server is not None, "FakeHub not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeHub:
        hub = self

        class Handler(_HubHandler):
            pass

        Handler.hub = hub
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = False  # server_close() joins the handler threads
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-hub"
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            assert self._thread is not None
            self._thread.join()
            self._server = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _HubHandler(BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = "HTTP/1.1"
    timeout = 10  # an idle client cannot keep a handler thread (and server_close) waiting

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # ------------------------------------------------------------------ plumbing

    def _record(self) -> None:
        with self.hub._lock:
            self.hub.requests.append(
                RequestRecord(
                    self.command,
                    unquote(urlsplit(self.path).path),
                    self.headers.get("Range"),
                    self.headers.get("Authorization") is not None,
                )
            )

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: object, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})})

    def _error(self, status: int, code: str, message: str) -> None:
        self._json(status, {"error": message}, {"X-Error-Code": code, "X-Error-Message": message})

    def _repo(self, repo_id: str) -> HubRepo | None:
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found")
        return repo

    def _revision_ok(self, repo: HubRepo, revision: str) -> bool:
        if unquote(revision) in (repo.commit, "main"):
            return True
        self._error(404, "RevisionNotFound", "Invalid rev id")
        return False

    # ------------------------------------------------------------------ routes

    def do_GET(self) -> None:
        self._route()

    def do_HEAD(self) -> None:
        self._route()

    def do_POST(self) -> None:
        self._route()

    def _route(self) -> None:
        self._record()
        path = urlsplit(self.path).path
        try:
            if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/paths-info/([^/]+)", path):
                if self.command == "POST":
                    return self._paths_info(m.group(1), m.group(2))
            elif m := re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", path):
                return self._model_info(m.group(1), m.group(2) or "main")
            elif m := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
                return self._resolve(m.group(1), m.group(2), unquote(m.group(3)))
            elif m := re.fullmatch(r"/_cdn/([^/]+/[^/]+)/([0-9a-f]{40})/(.+)", path):
                repo = self.hub.repos.get(m.group(1))
                if repo is not None and m.group(3) in repo.files:
                    return self._serve(repo, unquote(m.group(3)))
            self._error(404, "EntryNotFound", "not found")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client went away (pause, cancel): nothing to do

    def _model_info(self, repo_id: str, revision: str) -> None:
        repo = self._repo(repo_id)
        if repo is None or not self._revision_ok(repo, revision):
            return
        self._json(
            200,
            {
                "id": repo.repo_id,
                "sha": repo.commit,
                "private": False,
                "gated": "manual" if repo.gated else False,
                "siblings": [{"rfilename": p} for p in repo.files],
            },
        )

    def _paths_info(self, repo_id: str, revision: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        form = parse_qs(self.rfile.read(length).decode())
        repo = self._repo(repo_id)
        if repo is None or not self._revision_ok(repo, revision):
            return
        out = []
        for p in form.get("paths", []):
            f = repo.files.get(p)
            if f is None:
                continue  # like the Hub: unknown paths are left out
            out.append(
                {
                    "type": "file",
                    "path": p,
                    "size": f.size,
                    "oid": hashlib.sha1(f.sha256.encode()).hexdigest(),
                    "lfs": {"oid": f.sha256, "size": f.size, "pointerSize": 134},
                }
            )
        self._json(200, out)

    def _resolve(self, repo_id: str, revision: str, file_path: str) -> None:
        repo = self._repo(repo_id)
        if repo is None or not self._revision_ok(repo, revision):
            return
        if repo.gated:
            auth = self.headers.get("Authorization")
            if auth is None:
                return self._error(401, "GatedRepo", "Access to this model is restricted: log in")
            if auth != f"Bearer {repo.token}":
                return self._error(403, "GatedRepo", "Access to this model is restricted")
        if file_path not in repo.files:
            return self._error(404, "EntryNotFound", "Entry not found")
        if self.hub.redirect:
            f = repo.files[file_path]
            return self._send(
                302,
                headers={
                    "Location": f"/_cdn/{repo.repo_id}/{repo.commit}/{file_path}",
                    "X-Repo-Commit": repo.commit,
                    "X-Linked-Etag": f'"{f.sha256}"',
                    "X-Linked-Size": str(f.size),
                },
            )
        self._serve(repo, file_path)

    def _serve(self, repo: HubRepo, file_path: str) -> None:
        f = repo.files[file_path]
        size = f.size
        if self.command == "GET" and (fault := self.hub._take_fault("status", file_path)):
            extra = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
            return (
                self._error(fault.status, "ServerError", "injected failure")
                if not extra
                else self._send(fault.status, b"busy", extra)
            )
        start, end = 0, size - 1
        status = 200
        range_header = self.headers.get("Range")
        if range_header and not (self.command == "GET" and self.hub._take_fault("ignore_range", file_path)):
            m = re.fullmatch(r"bytes=(\d+)-(\d*)", range_header.strip())
            if m is None:
                return self._send(400, b"bad range")
            start = int(m.group(1))
            end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
            if start >= size or start > end:
                return self._send(416, b"", {"Content-Range": f"bytes */{size}"})
            status = 206
        count = end - start + 1
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(count))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{f.sha256}"')
        self.send_header("X-Repo-Commit", repo.commit)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        if self.command == "HEAD":
            return
        stop = end + 1
        drop = self.hub._take_fault("drop", file_path)
        if drop is not None and start < drop.offset < stop:
            stop = drop.offset  # send up to the cut, then close without the rest
        flip = self.hub._take_fault("flip", file_path)
        if f.data is not None:
            view = memoryview(f.data)
            pos = start
            while pos < stop:
                block = bytes(view[pos : min(pos + _SEND_BLOCK, stop)])
                if flip is not None and pos <= flip.offset < pos + len(block):
                    i = flip.offset - pos
                    block = block[:i] + bytes([block[i] ^ 0xFF]) + block[i + 1 :]
                self.wfile.write(block)
                pos += len(block)
        else:
            assert f.disk_path is not None
            with open(f.disk_path, "rb") as fh:
                self.connection.sendfile(fh, start, stop - start)
        if stop <= end:
            self.connection.shutdown(2)  # cut the connection mid-body (a network loss)


def make_split_repo(
    hub: FakeHub, repo_id: str, stem: str, sizes: list[int], seed: int = 0
) -> dict[str, bytes]:
    """Add a repo with a split model ``{stem}-0000N-of-0000M.gguf``; return path → content."""
    files = {
        f"{stem}-{i + 1:05d}-of-{len(sizes):05d}.gguf": random_bytes(n, seed + i) for i, n in enumerate(sizes)
    }
    hub.add_repo(repo_id, dict(files))
    return files


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
