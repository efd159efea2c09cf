"""Export a conversation to Markdown (to read) or JSON (to keep, and to import back).

Pure functions over the store's records: no Qt, no file dialogs. The JSON form carries every
stored field of every message, so :func:`import_json` rebuilds the conversation in another store
(a new id; timestamps are the importing store's).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from app import __version__

if TYPE_CHECKING:
    from collections.abc import Sequence

    from app.core.store import Conversation, Store, StoredMessage

EXPORT_FORMAT = "scout-chat.conversation"
EXPORT_VERSION = 1
ROLE_TITLES = {"user": "You", "assistant": "Scout", "system": "System", "notice": "Note"}


class ExportFormatError(ValueError):
    """The JSON is not a Scout Chat conversation export (the message says what is wrong)."""


@dataclass(frozen=True)
class Exported:
    """A conversation as plain data, ready to write."""

    conversation: Conversation
    messages: tuple[StoredMessage, ...]


def _iso(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def _fence(text: str) -> str:
    """A backtick fence longer than any run of backticks inside ``text``."""
    longest = run = 0
    for ch in text:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    return "`" * max(3, longest + 1)


def to_markdown(conversation: Conversation, messages: Sequence[StoredMessage]) -> str:
    """A readable Markdown document: title, date and model, then each turn under a heading.

    Answers are Markdown already and go in as they are; system prompts and notices are quoted.
    Cancelled or failed answers say so.
    """
    lines = [f"# {conversation.title}", ""]
    meta = [f"Exported from Scout Chat {__version__} on {_iso(time.time())}"]
    meta.append(f"started {_iso(conversation.created_at)}")
    if conversation.model:
        meta.append(f"model: {conversation.model}")
    lines += ["*" + " · ".join(meta) + "*", ""]
    for message in messages:
        title = ROLE_TITLES.get(message.role, message.role.title())
        lines += [f"## {title}", ""]
        body = message.content.rstrip()
        if message.role in ("system", "notice"):
            lines += [("> " + line).rstrip() for line in body.splitlines()] or [">"]
        elif message.role == "user" and body.lstrip().startswith("#"):
            fence = _fence(body)  # keep a user's "# …" line from turning into a heading
            lines += [fence + "text", body, fence]
        else:
            lines.append(body)
        if message.status in ("cancelled", "interrupted"):
            lines += ["", f"*(answer {message.status})*"]
        elif message.status == "error":
            error = str(message.stats.get("error", "")) if message.stats else ""
            lines += ["", f"*(failed{': ' + error if error else ''})*"]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _message_dict(message: StoredMessage) -> dict[str, Any]:
    return {
        "role": message.role,
        "content": message.content,
        "created_at": message.created_at,
        "model": message.model,
        "sampling": message.sampling,
        "stats": message.stats,
        "status": message.status,
    }


def to_json_dict(conversation: Conversation, messages: Sequence[StoredMessage]) -> dict[str, Any]:
    return {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "app_version": __version__,
        "exported_at": time.time(),
        "conversation": {
            "title": conversation.title,
            "created_at": conversation.created_at,
            "updated_at": conversation.updated_at,
            "model": conversation.model,
        },
        "messages": [_message_dict(m) for m in messages],
    }


def to_json(conversation: Conversation, messages: Sequence[StoredMessage]) -> str:
    return json.dumps(to_json_dict(conversation, messages), ensure_ascii=False, indent=2) + "\n"


def _field(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in obj:
        raise ExportFormatError(f"{where}.{key}: missing")
    value = obj[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ExportFormatError(f"{where}.{key}: unexpected value {value!r}")
    return value


def parse_json(text: str) -> dict[str, Any]:
    """Decode and check an export; raises :class:`ExportFormatError` naming the bad field."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ExportFormatError(f"not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or data.get("format") != EXPORT_FORMAT:
        raise ExportFormatError("not a Scout Chat conversation export")
    version = data.get("version")
    if not isinstance(version, int) or version > EXPORT_VERSION:
        raise ExportFormatError(f"version: unsupported export version {version!r}")
    conv = _field(data, "conversation", dict, "export")
    _field(conv, "title", str, "conversation")
    messages = _field(data, "messages", list, "export")
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise ExportFormatError(f"{where}: expected an object")
        _field(m, "role", str, where)
        _field(m, "content", str, where)
        for key in ("sampling", "stats"):
            if key in m and not isinstance(m[key], dict):
                raise ExportFormatError(f"{where}.{key}: expected an object")
    return data


def import_json(store: Store, text: str) -> Conversation:
    """Add an exported conversation to ``store`` as a new conversation; return it."""
    data = parse_json(text)
    conv = data["conversation"]
    created = store.create_conversation(conv["title"], model=str(conv.get("model", "")))
    with store.transaction():
        for m in data["messages"]:
            store.add_message(
                created.id,
                m["role"],
                m["content"],
                model=str(m.get("model", "")),
                sampling=m.get("sampling") or {},
                stats=m.get("stats") or {},
                status=str(m.get("status", "complete")),
            )
    result = store.get_conversation(created.id)
    assert result is not None
    return result


def export_conversation(store: Store, conversation_id: int) -> Exported:
    """The conversation and its messages from ``store``; KeyError when it does not exist."""
    conversation = store.get_conversation(conversation_id)
    if conversation is None:
        raise KeyError(conversation_id)
    return Exported(conversation, tuple(store.messages(conversation_id)))


def suggested_filename(conversation: Conversation, extension: str) -> str:
    """A file name from the title: letters, digits, spaces, dashes; never empty."""
    keep = "".join(ch if ch.isalnum() or ch in " -_" else " " for ch in conversation.title)
    stem = "-".join(keep.split())[:60].strip("-") or "conversation"
    return f"{stem}.{extension.lstrip('.')}"
