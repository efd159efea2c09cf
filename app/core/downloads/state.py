"""What downloads keep on disk between runs: the queue of unfinished builds and the user's Hub token."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path


log = logging.getLogger(__name__)


class QueueState:
    """The builds with a download in progress, saved as JSON so the app can offer to resume.

    ``{"version": 1, "downloads": [{"build_id", "state", "message", "updated"}]}``; state is
    ``downloading`` (the app quit or crashed mid-download), ``paused`` or ``failed``.
    """

    VERSION = 1

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def entries(self) -> list[dict[str, Any]]:
        with self._lock:
            return self._read()

    def pending_build_ids(self) -> list[str]:
        return [e["build_id"] for e in self.entries()]

    def mark(self, build_id: str, state: str, message: str = "") -> None:
        with self._lock:
            entries = [e for e in self._read() if e["build_id"] != build_id]
            entries.append({"build_id": build_id, "state": state, "message": message, "updated": time.time()})
            self._write(entries)

    def remove(self, build_id: str) -> None:
        with self._lock:
            entries = self._read()
            kept = [e for e in entries if e["build_id"] != build_id]
            if kept != entries:
                self._write(kept)

    def _read(self) -> list[dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []
        except (OSError, ValueError):
            log.info("download queue file %s unreadable; starting empty", self.path)
            return []
        items = data.get("downloads", []) if isinstance(data, dict) else []
        return [e for e in items if isinstance(e, dict) and isinstance(e.get("build_id"), str)]

    def _write(self, entries: list[dict[str, Any]]) -> None:
        atomic_write_json(self.path, {"version": self.VERSION, "downloads": entries})


def atomic_write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    os.replace(tmp, path)


class TokenStore:
    """The user's Hugging Face token: in the system keyring when ``keyring`` works, else a 0600 file."""

    SERVICE = "scout-chat"
    USERNAME = "huggingface-token"

    def __init__(self, data_dir: Path, *, use_keyring: bool = True) -> None:
        self.file = data_dir / "hf_token"
        self._keyring: Any = None
        if use_keyring:
            try:
                import keyring

                self._keyring = keyring
            except ImportError:
                self._keyring = None

    @property
    def backend(self) -> str:
        return "keyring" if self._keyring is not None else "file"

    def get(self) -> str | None:
        if self._keyring is not None:
            try:
                value = self._keyring.get_password(self.SERVICE, self.USERNAME)
                if value:
                    return str(value)
            except Exception:  # noqa: BLE001 - any keyring backend failure: fall back to the file
                log.info("keyring unavailable; using the token file")
        try:
            value = self.file.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        return value or None

    def set(self, token: str) -> None:
        token = token.strip()
        if not token:
            self.clear()
            return
        if self._keyring is not None:
            try:
                self._keyring.set_password(self.SERVICE, self.USERNAME, token)
                with contextlib.suppress(FileNotFoundError):
                    self.file.unlink()
                return
            except Exception:  # noqa: BLE001 - any keyring backend failure: fall back to the file
                log.info("keyring unavailable; storing the token in a private file")
        self.file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(token)
        with contextlib.suppress(OSError):
            os.chmod(self.file, stat.S_IRUSR | stat.S_IWUSR)

    def clear(self) -> None:
        if self._keyring is not None:
            with contextlib.suppress(Exception):
                self._keyring.delete_password(self.SERVICE, self.USERNAME)
        with contextlib.suppress(FileNotFoundError):
            self.file.unlink()
