"""API keys of the servers the user added, and the token of the app's own API server: in the
system keyring when ``keyring`` works, else a private (0600) file, exactly as the Hugging Face
token is kept (``TokenStore``)."""

from __future__ import annotations

import hashlib
import secrets
from typing import TYPE_CHECKING

from app.core.downloads.state import TokenStore
from app.core.engine.remote import parse_url

if TYPE_CHECKING:
    from pathlib import Path


class ServerKeyStore:
    """One key per server address (scheme, host and port)."""

    def __init__(self, data_dir: Path, *, use_keyring: bool = True) -> None:
        self._data_dir = data_dir
        self._use_keyring = use_keyring

    def _store(self, url: str) -> TokenStore:
        parts = parse_url(url)
        address = f"{parts.scheme}://{parts.hostname}:{parts.port or ''}{parts.path}"
        store = TokenStore(self._data_dir, use_keyring=self._use_keyring)
        store.USERNAME = f"server-key {address}"
        digest = hashlib.sha256(address.encode("utf-8")).hexdigest()[:16]
        store.file = self._data_dir / "server_keys" / digest
        return store

    def get(self, url: str) -> str | None:
        try:
            return self._store(url).get()
        except ValueError:
            return None

    def set(self, url: str, key: str) -> None:
        self._store(url).set(key)

    @property
    def backend(self) -> str:
        return TokenStore(self._data_dir, use_keyring=self._use_keyring).backend


API_TOKEN_PREFIX = "sk-scout-"


class ApiTokenStore:
    """The local API server's bearer token, kept like the Hugging Face token (keyring, else a
    0600 file); generated on first use, replaced by :meth:`regenerate`."""

    def __init__(self, data_dir: Path, *, use_keyring: bool = True) -> None:
        self._store = TokenStore(data_dir, use_keyring=use_keyring)
        self._store.USERNAME = "api-server-token"
        self._store.file = data_dir / "api_server_token"

    def get(self) -> str:
        token = self._store.get()
        return token if token else self.regenerate()

    def saved(self) -> str | None:
        """The token kept so far; None when none was made yet."""
        return self._store.get() or None

    def regenerate(self) -> str:
        token = API_TOKEN_PREFIX + secrets.token_urlsafe(32)
        self._store.set(token)
        return token

    @property
    def backend(self) -> str:
        return self._store.backend


class ToolSecretStore:
    """Secret environment values of the MCP tool servers (``GITHUB_TOKEN``…), one per server and
    variable, kept as the keys above; the settings file keeps only a placeholder."""

    def __init__(self, data_dir: Path, *, use_keyring: bool = True) -> None:
        self._data_dir = data_dir
        self._use_keyring = use_keyring

    def _store(self, server: str, name: str) -> TokenStore:
        store = TokenStore(self._data_dir, use_keyring=self._use_keyring)
        store.USERNAME = f"tool-secret {server}/{name}"
        digest = hashlib.sha256(f"{server}\0{name}".encode()).hexdigest()[:16]
        store.file = self._data_dir / "tool_secrets" / digest
        return store

    def get(self, server: str, name: str) -> str | None:
        return self._store(server, name).get()

    def set(self, server: str, name: str, value: str) -> None:
        self._store(server, name).set(value)
