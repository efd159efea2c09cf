"""Export a conversation to Markdown (to read) or JSON (to keep, and to import back).

Pure functions over the store's records: no Qt, no file dialogs. Markdown holds the branch shown
(the active path); the JSON form holds the whole tree — every stored field of every message of
every branch, with each message's ``id`` and ``parent`` and the ``active_leaf`` — so
:func:`import_json` rebuilds the conversation with its branches in another store (new ids;
timestamps are the importing store's). Version 1 files (one linear list) still import.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from app import __version__
from app.core.errors import UserError
from app.core.presets import ConversationOptions, Preset
from app.core.store import MessageStatus

if TYPE_CHECKING:
    from collections.abc import Sequence

    from app.core.store import Attachment, Conversation, Store, StoredMessage

EXPORT_FORMAT = "scout-chat.conversation"
EXPORT_VERSION = 2
ROLE_TITLES = {"user": "You", "assistant": "Scout", "system": "System", "notice": "Note"}


class ExportFormatError(UserError, ValueError):
    """The JSON is not a Scout Chat conversation export (the message says what is wrong)."""


@dataclass(frozen=True)
class Exported:
    """A conversation as plain data, ready to write."""

    conversation: Conversation
    messages: tuple[StoredMessage, ...]  # the active path
    attachments: dict[int, list[Attachment]] = field(default_factory=dict)  # by message id
    tree: tuple[StoredMessage, ...] = ()  # every branch (empty: the path is all there is)
    options: dict[str, Any] = field(default_factory=dict)  # its own preset / instructions / sampling


def _iso(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def _fence(text: str) -> str:
    """A backtick fence longer than any run of backticks inside ``text``."""
    longest = run = 0
    for ch in text:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    return "`" * max(3, longest + 1)


def answer_models(messages: Sequence[StoredMessage]) -> list[str]:
    """The models that wrote the answers, in the order they first answered."""
    return list(dict.fromkeys(m.model for m in messages if m.role == "assistant" and m.model))


def to_markdown(
    conversation: Conversation,
    messages: Sequence[StoredMessage],
    attachments: dict[int, list[Attachment]] | None = None,
    files_dir: str = "",
) -> str:
    """A readable Markdown document: title, date and the models that answered, then each turn under
    a heading (an answer's heading is the name of the model that wrote it).

    Answers are Markdown already and go in as they are; system prompts and notices are quoted.
    Cancelled or failed answers say so.
    """
    lines = [f"# {conversation.title}", ""]
    meta = [f"Exported from Scout Chat {__version__} on {_iso(time.time())}"]
    meta.append(f"started {_iso(conversation.created_at)}")
    models = answer_models(messages) or ([conversation.model] if conversation.model else [])
    if models:
        meta.append(("model: " if len(models) == 1 else "models: ") + ", ".join(models))
    lines += ["*" + " · ".join(meta) + "*", ""]
    for message in messages:
        title = ROLE_TITLES.get(message.role, message.role.title())
        if message.role == "assistant" and message.model:
            title = message.model  # each answer names the model that wrote it
        lines += [f"## {title}", ""]
        body = message.content.rstrip()
        if message.role in ("system", "notice"):
            lines += [("> " + line).rstrip() for line in body.splitlines()] or [">"]
        elif message.role == "user" and body.lstrip().startswith("#"):
            fence = _fence(body)  # keep a user's "# …" line from turning into a heading
            lines += [fence + "text", body, fence]
        else:
            lines.append(body)
        for attachment in (attachments or {}).get(message.id, []):
            if attachment.kind == "image" and files_dir:
                lines += ["", f"![{attachment.name}]({files_dir}/{_attachment_file(attachment)})"]
            else:
                pages = attachment.meta.get("pages")
                extra = f", {pages} pages" if pages else ""
                lines += ["", f"*Attached {attachment.kind}: {attachment.name}{extra}*"]
        record = message.stats.get("tool_call") if message.stats else None
        if isinstance(record, dict):
            lines += ["", *_tool_call_lines(record)]
        if message.status in (MessageStatus.CANCELLED, MessageStatus.INTERRUPTED):
            lines += ["", f"*(answer {message.status.value})*"]
        elif message.status == MessageStatus.ERROR:
            error = str(message.stats.get("error", "")) if message.stats else ""
            lines += ["", f"*(failed{': ' + error if error else ''})*"]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _tool_call_lines(record: dict[str, Any]) -> list[str]:
    """A tool call and its outcome (the arguments and result as given, fenced)."""
    arguments = json.dumps(record.get("arguments") or {}, ensure_ascii=False, indent=2, sort_keys=True)
    lines = [f"*Tool call: {record.get('name', '')} ({record.get('server', '')}), {record.get('state', '')}*"]
    lines += ["", "```json", arguments, "```"]
    result = str(record.get("result", ""))
    if result:
        fence = _fence(result)
        lines += ["", fence + "text", result, fence]
    return lines


def _message_dict(
    message: StoredMessage, attachments: Sequence[Attachment] = (), files_dir: str = ""
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": message.id,
        "parent": message.parent_id,
        "role": message.role,
        "content": message.content,
        "created_at": message.created_at,
        "model": message.model,
        "sampling": message.sampling,
        "stats": message.stats,
        "status": message.status,
    }
    if attachments:
        out["attachments"] = [
            {
                "kind": a.kind,
                "name": a.name,
                "sha256": a.sha256,
                "meta": a.meta,
                "file": f"{files_dir}/{_attachment_file(a)}" if a.kind == "image" and files_dir else None,
            }
            for a in attachments
        ]
    return out


def to_json_dict(
    conversation: Conversation,
    messages: Sequence[StoredMessage],
    attachments: dict[int, list[Attachment]] | None = None,
    files_dir: str = "",
    active_leaf: int | None = None,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``messages``: the whole tree (or a path), parents before children; ``options``: the
    conversation's own preset, instructions and sampling (``Store.conversation_options``)."""
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
            "pinned": conversation.pinned,
            "options": dict(options or {}),
        },
        "messages": [_message_dict(m, (attachments or {}).get(m.id, []), files_dir) for m in messages],
        "active_leaf": active_leaf if active_leaf is not None else (messages[-1].id if messages else None),
    }


def to_json(
    conversation: Conversation,
    messages: Sequence[StoredMessage],
    attachments: dict[int, list[Attachment]] | None = None,
    files_dir: str = "",
    active_leaf: int | None = None,
    options: dict[str, Any] | None = None,
) -> str:
    data = to_json_dict(conversation, messages, attachments, files_dir, active_leaf, options)
    return json.dumps(data, ensure_ascii=False, indent=2) + "\n"


def _attachment_file(attachment: Attachment) -> str:
    suffix = Path(attachment.path).suffix or ".png"
    stem = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in Path(attachment.name).stem)[:40]
    return f"{attachment.id}-{stem or 'image'}{suffix}"


def write_export(exported: Exported, target: Path) -> Path:
    """Write ``target`` (.md, or .json) and copy the conversation's images into a folder beside it
    (``<stem>_files/``), referenced from the document. Returns the file written."""
    images = [a for items in exported.attachments.values() for a in items if a.kind == "image" and a.path]
    files_dir = f"{target.stem}_files" if images else ""
    if images:
        folder = target.parent / files_dir
        folder.mkdir(parents=True, exist_ok=True)
        for image in images:
            source = Path(image.path)
            if source.is_file():
                shutil.copyfile(source, folder / _attachment_file(image))
    if target.suffix.lower() == ".json":  # the whole tree
        leaf = exported.messages[-1].id if exported.messages else None
        text = to_json(
            exported.conversation,
            exported.tree or exported.messages,
            exported.attachments,
            files_dir,
            leaf,
            exported.options,
        )
    else:  # the branch shown
        text = to_markdown(exported.conversation, exported.messages, exported.attachments, files_dir)
    target.write_text(text, encoding="utf-8")
    return target


SAMPLING_KEYS = ("temperature", "top_p", "min_p")


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
    if "options" in conv and not isinstance(conv["options"], dict):
        raise ExportFormatError("conversation.options: expected an object")
    sampling = ConversationOptions.from_dict(conv.get("options") or {}).sampling
    if sampling is not None:
        try:
            Preset.from_dict({"name": "conversation", **dict(zip(SAMPLING_KEYS, sampling, strict=True))})
        except ValueError as exc:
            raise ExportFormatError(f"conversation.options.sampling: {exc}") from exc
    if "pinned" in conv and not isinstance(conv["pinned"], bool):
        raise ExportFormatError(f"conversation.pinned: unexpected value {conv['pinned']!r}")
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
    ids: set[int] = set()
    for i, m in enumerate(messages):
        if "id" not in m:
            continue  # version 1: one linear list
        message_id, parent = m["id"], m.get("parent")
        if not isinstance(message_id, int) or message_id in ids:
            raise ExportFormatError(f"messages[{i}].id: unexpected value {message_id!r}")
        if parent is not None and parent not in ids:
            raise ExportFormatError(f"messages[{i}].parent: {parent!r} is not an earlier message")
        ids.add(message_id)
    return data


def import_json(store: Store, text: str) -> Conversation:
    """Add an exported conversation to ``store`` as a new conversation; return it."""
    data = parse_json(text)
    conv = data["conversation"]
    created = store.create_conversation(conv["title"], model=str(conv.get("model", "")))
    new_ids: dict[int, int] = {}
    with store.transaction():
        for m in data["messages"]:
            parent: int | Literal["active"] | None = "active"  # version 1: each after the last
            if "id" in m:
                parent = None if m.get("parent") is None else new_ids[m["parent"]]
            added = store.add_message(
                created.id,
                m["role"],
                m["content"],
                model=str(m.get("model", "")),
                sampling=m.get("sampling") or {},
                stats=m.get("stats") or {},
                status=MessageStatus(str(m.get("status", MessageStatus.COMPLETE))),
                parent_id=parent,
            )
            if "id" in m:
                new_ids[m["id"]] = added.id
        leaf = data.get("active_leaf")
        if isinstance(leaf, int) and leaf in new_ids:
            store.activate(new_ids[leaf])
    options = ConversationOptions.from_dict(conv.get("options") or {})  # unknown keys are dropped
    if not options.is_default:
        store.set_conversation_options(created.id, options.to_dict())
    if conv.get("pinned"):
        store.set_pinned(created.id, True)
    result = store.get_conversation(created.id)
    assert result is not None
    return result


def export_conversation(store: Store, conversation_id: int) -> Exported:
    """The conversation and its messages from ``store``; KeyError when it does not exist."""
    conversation = store.get_conversation(conversation_id)
    if conversation is None:
        raise KeyError(conversation_id)
    messages = tuple(store.messages(conversation_id))
    tree = tuple(store.tree(conversation_id))
    attachments = store.message_attachments([m.id for m in tree])
    return Exported(conversation, messages, attachments, tree, store.conversation_options(conversation_id))


def suggested_filename(conversation: Conversation, extension: str) -> str:
    """A file name from the title: letters, digits, spaces, dashes; never empty."""
    keep = "".join(ch if ch.isalnum() or ch in " -_" else " " for ch in conversation.title)
    stem = "-".join(keep.split())[:60].strip("-") or "conversation"
    return f"{stem}.{extension.lstrip('.')}"
