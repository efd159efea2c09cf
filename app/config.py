"""Paths, user settings and logging: the only module that calls platformdirs.

Every directory comes from one :class:`AppPaths`. ``--data-dir`` or ``SCOUT_CHAT_DATA_DIR``
puts everything (models included) under one folder: tests, e2e and portable installs use it.
Settings are a frozen dataclass saved as JSON with a ``schema_version``; migrations are pure
functions from one version's dict to the next.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import logging.handlers
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

APP_NAME = "scout-chat"
APP_AUTHOR = "ScoutChat"
DATA_DIR_ENV = "SCOUT_CHAT_DATA_DIR"

log = logging.getLogger(__name__)


def kv_state_files(directory: Path, conversation_id: int) -> list[Path]:
    """Files ``conversation-<id>-<key>.llamastate`` in ``directory``. A prefix test, not a glob: a
    glob pattern per conversation id is compiled and cached anew for every conversation."""
    prefix = f"conversation-{conversation_id}-"
    try:
        entries = list(directory.iterdir())
    except OSError:
        return []
    return [e for e in entries if e.name.startswith(prefix) and e.name.endswith(".llamastate")]


@dataclass(frozen=True)
class AppPaths:
    data_dir: Path
    models_dir: Path
    cache_dir: Path
    log_dir: Path
    config_dir: Path

    @property
    def database(self) -> Path:
        return self.data_dir / "scout-chat.sqlite3"

    @property
    def settings_file(self) -> Path:
        return self.config_dir / "settings.json"

    @property
    def images_dir(self) -> Path:
        return self.data_dir / "images"

    @property
    def kv_state_dir(self) -> Path:
        return self.cache_dir / "kv-state"

    def kv_state_files(self, conversation_id: int) -> list[Path]:
        """The saved KV states of one conversation (one per model and plan it was saved for)."""
        return kv_state_files(self.kv_state_dir, conversation_id)

    @property
    def speeds_file(self) -> Path:
        """The forecast's measured probe of this machine (app/core/forecast.py), per hardware
        (``SCOUT_SPEEDS_FILE`` names another file: the test suite shares one across its apps)."""
        return Path(os.environ.get("SCOUT_SPEEDS_FILE") or self.data_dir / "machine-speeds.json")

    @property
    def downloads_state(self) -> Path:
        return self.data_dir / "downloads.json"

    def ensure(self) -> AppPaths:
        for path in (self.data_dir, self.models_dir, self.cache_dir, self.log_dir, self.config_dir):
            path.mkdir(parents=True, exist_ok=True)
        return self

    @classmethod
    def under(cls, root: Path) -> AppPaths:
        """Everything below one folder (portable mode, tests)."""
        root = root.expanduser().resolve()
        return cls(
            data_dir=root,
            models_dir=root / "models",
            cache_dir=root / "cache",
            log_dir=root / "logs",
            config_dir=root,
        )

    @classmethod
    def default(cls, override: str | os.PathLike[str] | None = None) -> AppPaths:
        chosen = override or os.environ.get(DATA_DIR_ENV)
        if chosen:
            return cls.under(Path(chosen))
        import platformdirs

        dirs = platformdirs.PlatformDirs(APP_NAME, APP_AUTHOR)
        data = Path(dirs.user_data_dir)
        return cls(
            data_dir=data,
            models_dir=data / "models",
            cache_dir=Path(dirs.user_cache_dir),
            log_dir=Path(dirs.user_log_dir),
            config_dir=Path(dirs.user_config_dir),
        )


SETTINGS_SCHEMA_VERSION = 2  # 2: the file records the defaults it was written with ("defaults")
RECENT_MODELS_MAX = 8
DEFAULT_SYSTEM_PROMPT = (
    "You are Scout, a helpful, accurate and concise assistant running privately on this computer."
)


@dataclass(frozen=True)
class Settings:
    """User settings. A changed default bumps nothing; a rename or removal needs a migration."""

    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    temperature: float = 0.6
    top_p: float = 0.9
    min_p: float = 0.01
    max_tokens: int = 2048
    n_ctx: int = 0  # 0: automatic (the planner's choice, 32k when it fits, shrunk to fit)
    n_threads: int = 0  # 0: automatic (physical cores)
    last_model: str = ""
    recent_models: tuple[str, ...] = ()  # most recent first, at most RECENT_MODELS_MAX
    last_conversation: int = 0
    models_dir: str = ""  # empty: AppPaths.models_dir
    hf_endpoint: str = ""  # empty: huggingface_hub's default
    theme: str = "system"  # system | light | dark
    window_geometry: str = ""  # hex of QWidget.saveGeometry()
    last_export_dir: str = ""  # empty: the user's documents folder
    whole_document_limit: int = 32_000  # documents up to this many tokens go in whole (docs/benchmarks.md)
    search_model: str = "ask"  # ask (offer it once) | on | off: the search model for long documents
    compute_servers: tuple[str, ...] = ()  # llama.cpp RPC compute servers, "host:port" (Settings → Machines)
    # the server last connected (File → Servers…), reconnected at start; "" = the last model was a
    # file (its key stays in the key store, never here)
    last_server: str = ""
    last_server_model: str = ""
    last_server_ca: str = ""
    last_server_plain_http: bool = False
    api_server: bool = False  # the local OpenAI-compatible API server (Settings → API server)
    api_host: str = "127.0.0.1"  # another address only when the user chooses it (with a warning)
    api_port: int = 1236  # 0: any free port (tests)
    api_cors_origins: tuple[str, ...] = ()  # browser origins allowed to call it; none: no CORS
    api_allowed_hosts: tuple[str, ...] = ()  # Host names accepted besides localhost and the address
    api_log_requests: bool = False  # write API requests' messages and answers to the log (off: never)
    api_save_history: bool = False  # keep API conversations in the chat history (off: never stored)
    # MCP tool servers (Settings → Tools): the mcpServers JSON, secret env values replaced by
    # "<secret>" (the values are in the key store); the servers turned on; tools always allowed
    tools_servers: str = ""
    tools_enabled: tuple[str, ...] = ()  # server names; none: nothing is started
    tools_always_allowed: tuple[str, ...] = ()  # "server/tool": run without asking
    user_presets: str = ""  # the user's presets (app/core/presets.py): a JSON list, "" for none
    extra: dict[str, Any] = field(default_factory=dict)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data["schema_version"] = SETTINGS_SCHEMA_VERSION
        data[DEFAULTS_KEY] = current_defaults()
        return json.dumps(data, indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Settings:
        return cls.read(data)[0]

    @classmethod
    def read(cls, data: dict[str, Any]) -> tuple[Settings, tuple[DefaultChange, ...]]:
        """Settings from a file's dict, and the defaults that changed since that file was written
        for settings the user had left at their default (those now take the new default)."""
        newer = int(data.get("schema_version", 0) or 0) > SETTINGS_SCHEMA_VERSION
        data = migrate_settings(dict(data))
        data, changes = (data, ()) if newer else apply_default_changes(data)
        known = {f.name for f in dataclasses.fields(cls)}
        clean = {k: v for k, v in data.items() if k in known}
        defaults = cls()
        for key, value in list(clean.items()):
            expected = type(getattr(defaults, key))
            if expected is float and isinstance(value, int):
                clean[key] = float(value)
            elif expected is tuple and isinstance(value, list) and all(isinstance(v, str) for v in value):
                clean[key] = tuple(value)  # JSON has lists
            elif not isinstance(value, expected):
                log.warning("settings: ignoring %s=%r (expected %s)", key, value, expected.__name__)
                del clean[key]
        return cls(**clean), changes


def push_recent_model(recent: tuple[str, ...], path: str, limit: int = RECENT_MODELS_MAX) -> tuple[str, ...]:
    """``recent`` with ``path`` first (once), cut to ``limit`` entries."""
    return (path, *(p for p in recent if p != path))[:limit]


# -- defaults that change between versions --------------------------------------------------------
# A settings file records the defaults it was written with (DEFAULTS_KEY). When this version's
# default of a setting differs and the file's value is still the recorded default, the user never
# chose it: it takes the new default and the change is announced once (the window's banner). A
# value the user set is never changed. Every setting named here is covered, so a default changed
# in Settings above is announced without anything else to write.
DEFAULTS_KEY = "defaults"
ANNOUNCED_SETTINGS: dict[str, str] = {
    "system_prompt": "System prompt",
    "temperature": "Temperature",
    "top_p": "Top-p",
    "min_p": "Min-p",
    "max_tokens": "Maximum answer length",
    "n_ctx": "Context size",
    "n_threads": "Threads",
    "theme": "Theme",
    "whole_document_limit": "Whole-document limit",
    "search_model": "Search model",
}
# A file without a version predates versioned settings: the first release's defaults, where they
# differ from today's (the context size became automatic when the load planner came).
FIRST_RELEASE_DEFAULTS: dict[str, Any] = {"n_ctx": 8192}


@dataclass(frozen=True)
class DefaultChange:
    """A default that changed since the settings file was written, for a setting the user had
    left at its default (it now has the new one)."""

    name: str
    label: str
    old: Any
    new: Any

    def sentence(self) -> str:
        old, new = describe_setting(self.name, self.old), describe_setting(self.name, self.new)
        return f"{self.label} is now {new} (the new default; it was {old}, the old default)."


def describe_setting(name: str, value: Any) -> str:
    """A setting's value as the user reads it ("automatic", "8,192", "“You are…”")."""
    if name in ("n_ctx", "n_threads") and value == 0:
        return "automatic"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, str):
        short = value if len(value) <= 40 else value[:39].rstrip() + "…"
        return f"“{short}”"
    return str(value)


def current_defaults() -> dict[str, Any]:
    """This version's defaults of the announced settings, as they are written to the file."""
    defaults = Settings()
    return {name: getattr(defaults, name) for name in ANNOUNCED_SETTINGS}


def apply_default_changes(data: dict[str, Any]) -> tuple[dict[str, Any], tuple[DefaultChange, ...]]:
    """``data`` with every setting still at the default its file recorded moved to this version's
    default, and those changes. A pure function."""
    recorded = data.get(DEFAULTS_KEY)
    if not isinstance(recorded, dict):
        return data, ()
    now = current_defaults()
    out = dict(data)
    changes: list[DefaultChange] = []
    for name, label in ANNOUNCED_SETTINGS.items():
        if name not in recorded or name not in data or recorded[name] == now[name]:
            continue
        if data[name] == recorded[name]:  # never changed by the user
            out[name] = now[name]
            changes.append(DefaultChange(name, label, recorded[name], now[name]))
    out[DEFAULTS_KEY] = now
    return out, tuple(changes)


# version -> function turning that version's dict into the next version's dict
_MIGRATIONS: dict[int, Any] = {
    0: lambda d: {**d, "schema_version": 1, DEFAULTS_KEY: {**current_defaults(), **FIRST_RELEASE_DEFAULTS}},
    # a version-1 file recorded no defaults: today's are assumed, so none of its values changes
    # (a context of 8,192 may be the user's choice or an old default: it is kept)
    1: lambda d: {DEFAULTS_KEY: current_defaults(), **d, "schema_version": 2},
}


def migrate_settings(data: dict[str, Any]) -> dict[str, Any]:
    version = int(data.get("schema_version", 0))
    if version > SETTINGS_SCHEMA_VERSION:
        log.warning("settings were written by a newer Scout Chat (schema %d); reading what we know", version)
        return data
    while version < SETTINGS_SCHEMA_VERSION:
        data = _MIGRATIONS[version](data)
        version = int(data["schema_version"])
    return data


def load_settings(paths: AppPaths) -> Settings:
    return read_settings(paths)[0]


def read_settings(paths: AppPaths) -> tuple[Settings, tuple[DefaultChange, ...]]:
    """The saved settings and the defaults that changed for them since they were saved (to be
    announced, then saved, so that they are announced once)."""
    try:
        text = paths.settings_file.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Settings(), ()
    except OSError:
        log.exception("could not read %s; using defaults", paths.settings_file)
        return Settings(), ()
    try:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("settings file is not a JSON object")
        return Settings.read(data)
    except (ValueError, TypeError):
        backup = paths.settings_file.with_suffix(".json.bad")
        log.warning("settings file is damaged; kept a copy as %s and using defaults", backup.name)
        with contextlib.suppress(OSError):
            paths.settings_file.replace(backup)
        return Settings(), ()


def save_settings(paths: AppPaths, settings: Settings) -> None:
    """Atomic write: a crash never leaves a half-written settings file."""
    paths.config_dir.mkdir(parents=True, exist_ok=True)
    tmp = paths.settings_file.with_suffix(".json.tmp")
    tmp.write_text(settings.to_json(), encoding="utf-8")
    os.replace(tmp, paths.settings_file)


_SECRET = re.compile(r"\bhf_[A-Za-z0-9_-]{8,}")


class RedactingFormatter(logging.Formatter):
    """Hugging Face tokens never reach a log file."""

    def format(self, record: logging.LogRecord) -> str:
        return _SECRET.sub("hf_***", super().format(record))


class _AppLogFile(logging.handlers.RotatingFileHandler):
    """The app's log file: a second ``setup_logging`` (tests, a new data dir) replaces it."""


def setup_logging(paths: AppPaths, level: int = logging.INFO) -> Path:
    paths.log_dir.mkdir(parents=True, exist_ok=True)
    logfile = paths.log_dir / "scout-chat.log"
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _AppLogFile):
            root.removeHandler(handler)
            handler.close()
    handler = _AppLogFile(logfile, maxBytes=2_000_000, backupCount=3, encoding="utf-8")
    handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(min(root.level or level, level))
    return logfile
