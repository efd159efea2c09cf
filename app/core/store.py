"""SQLite storage for conversations and messages (the chat repository).

WAL journal, foreign keys on, a ``PRAGMA user_version`` migration ladder, parameterised SQL only,
and an FTS5 index over message text kept in sync by triggers. No Qt here.

Over ~600 lines: one ``Store`` owns one connection and its transactions for conversations, messages,
attachments and chunks; splitting the class would split its transactions.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from app.core.errors import UserError
from app.core.types import FinishReason, StrEnum

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence
    from pathlib import Path

    from app.core.chunking import Chunk
    from app.core.retrieval import ChunkIndex

log = logging.getLogger(__name__)

ROLES = frozenset({"system", "user", "assistant", "notice"})
"""``notice`` is an app marker shown in the chat but never sent to the model."""
DEFAULT_TITLE = "New chat"
BUSY_TIMEOUT_MS = 5000


class MessageStatus(StrEnum):
    """A stored message's ``status`` (the database and exports hold the plain strings)."""

    COMPLETE = "complete"
    STREAMING = "streaming"  # being written now
    CANCELLED = "cancelled"  # stopped by the user: the partial answer stays
    ERROR = "error"  # the answer failed; ``stats["error"]`` says why
    INTERRUPTED = "interrupted"  # the app ended while it was being written


STATUSES = frozenset(status.value for status in MessageStatus)


def answer_unfinished(role: str, text: str, status: str, finish_reason: object) -> bool:
    """An answer that stopped before its end: stopped, interrupted, or cut off by a limit (what
    Continue can extend)."""
    if role != "assistant" or not text.strip():
        return False
    if status in (MessageStatus.CANCELLED, MessageStatus.INTERRUPTED):
        return True
    return status == MessageStatus.COMPLETE and finish_reason in (FinishReason.LENGTH, FinishReason.CONTEXT)


class AttachmentState(StrEnum):
    """An attachment's ``meta["state"]``: being read, ready to send, or waiting for a password."""

    PROCESSING = "processing"
    READY = "ready"
    LOCKED = "locked"


class StorageError(UserError):
    """A storage failure worth showing to the user (damaged, locked or unwritable database)."""


@dataclass(frozen=True)
class Conversation:
    id: int
    title: str
    created_at: float
    updated_at: float
    model: str
    pinned: bool = False  # shown in the sidebar's "Pinned" group, at the top (schema 6)


@dataclass(frozen=True)
class StoredMessage:
    """One message of a conversation's tree: ``parent_id`` is the message it answers or follows
    (None for a first message). Messages with the same parent are branches of one another."""

    id: int
    conversation_id: int
    role: str
    content: str
    created_at: float
    model: str
    sampling: dict[str, Any]
    stats: dict[str, Any]
    status: MessageStatus
    parent_id: int | None = None


ATTACHMENT_KINDS = frozenset({"image", "document"})


@dataclass(frozen=True)
class Attachment:
    """An image or a document attached to a conversation. ``message_id`` is None while it waits in
    the composer (it survives restarts there too); ``meta`` holds kind-specific figures (image:
    width, height, note; document: kind, pages, tokens, chars, note)."""

    id: int
    conversation_id: int
    message_id: int | None
    kind: str
    name: str
    path: str
    sha256: str
    meta: dict[str, Any]
    created_at: float


# --- schema ------------------------------------------------------------------------------------------

_V1_STATEMENTS: tuple[str, ...] = (
    """
    CREATE TABLE conversations (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        title TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        model TEXT NOT NULL DEFAULT ''
    )
    """,
    "CREATE INDEX conversations_by_updated ON conversations (updated_at DESC, id DESC)",
    """
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        conversation_id INTEGER NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
        role TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant', 'notice')),
        content TEXT NOT NULL,
        created_at REAL NOT NULL,
        model TEXT NOT NULL DEFAULT '',
        sampling TEXT NOT NULL DEFAULT '{}',
        stats TEXT NOT NULL DEFAULT '{}',
        status TEXT NOT NULL DEFAULT 'complete'
            CHECK (status IN ('complete', 'streaming', 'cancelled', 'error', 'interrupted'))
    )
    """,
    "CREATE INDEX messages_by_conversation ON messages (conversation_id, id)",
    "CREATE INDEX messages_streaming ON messages (status) WHERE status = 'streaming'",
    # External-content FTS5 index: the text lives once, in messages.content.
    """
    CREATE VIRTUAL TABLE messages_fts USING fts5 (
        content, content = 'messages', content_rowid = 'id',
        tokenize = 'unicode61 remove_diacritics 2'
    )
    """,
    """
    CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN
        INSERT INTO messages_fts (rowid, content) VALUES (new.id, new.content);
    END
    """,
    """
    CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
        INSERT INTO messages_fts (messages_fts, rowid, content) VALUES ('delete', old.id, old.content);
    END
    """,
    """
    CREATE TRIGGER messages_fts_update AFTER UPDATE OF content ON messages
    WHEN old.content IS NOT new.content BEGIN
        INSERT INTO messages_fts (messages_fts, rowid, content) VALUES ('delete', old.id, old.content);
        INSERT INTO messages_fts (rowid, content) VALUES (new.id, new.content);
    END
    """,
)


def _migrate_to_v1(conn: sqlite3.Connection) -> None:
    """Create the schema: conversations, messages and the FTS5 index over message text."""
    for statement in _V1_STATEMENTS:
        conn.execute(statement)


def _migrate_to_v2(conn: sqlite3.Connection) -> None:
    """Attachments (images and documents) and the chunk index of documents (FTS5, BM25)."""
    from app.core.retrieval import _SCHEMA as CHUNK_SCHEMA

    conn.execute(
        """
        CREATE TABLE attachments (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            conversation_id INTEGER NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
            message_id INTEGER REFERENCES messages (id) ON DELETE CASCADE,
            kind TEXT NOT NULL CHECK (kind IN ('image', 'document')),
            name TEXT NOT NULL,
            path TEXT NOT NULL DEFAULT '',
            sha256 TEXT NOT NULL DEFAULT '',
            meta TEXT NOT NULL DEFAULT '{}',
            created_at REAL NOT NULL
        )
        """
    )
    conn.execute("CREATE INDEX attachments_by_message ON attachments (message_id, id)")
    conn.execute("CREATE INDEX attachments_by_conversation ON attachments (conversation_id, id)")
    statement = ""
    for line in CHUNK_SCHEMA.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            conn.execute(statement)
            statement = ""
    # A document's chunks go with it (also when its conversation or message is deleted).
    conn.execute(
        """
        CREATE TRIGGER attachments_drop_chunks AFTER DELETE ON attachments BEGIN
            DELETE FROM doc_chunks WHERE doc_id = old.id;
        END
        """
    )


def _migrate_to_v3(conn: sqlite3.Connection) -> None:
    """Extracts of documents read whole in parts (app/core/reading.py), by document, question and
    part: asking the same again does not read the document again."""
    conn.execute(
        """
        CREATE TABLE reading_extracts (
            doc_id INTEGER NOT NULL,
            question TEXT NOT NULL,
            part TEXT NOT NULL,
            extract TEXT NOT NULL,
            model TEXT NOT NULL DEFAULT '',
            created_at REAL NOT NULL,
            PRIMARY KEY (doc_id, question, part)
        )
        """
    )
    conn.execute(
        """
        CREATE TRIGGER attachments_drop_extracts AFTER DELETE ON attachments BEGIN
            DELETE FROM reading_extracts WHERE doc_id = old.id;
        END
        """
    )


def _migrate_to_v4(conn: sqlite3.Connection) -> None:
    """Conversations become trees: every message has a parent (the message before it), and a
    conversation remembers the last message of the branch shown (its *active leaf*). A linear
    conversation becomes one branch holding every message in its order; nothing is deleted."""
    conn.execute(
        "ALTER TABLE messages ADD COLUMN parent_id INTEGER REFERENCES messages (id) ON DELETE CASCADE"
    )
    # the child shown last under each message: going back to a branch shows it as it was left
    conn.execute("ALTER TABLE messages ADD COLUMN active_child INTEGER")
    conn.execute("ALTER TABLE conversations ADD COLUMN active_leaf INTEGER")
    conn.execute(
        """
        UPDATE messages SET parent_id = (
            SELECT max(p.id) FROM messages AS p
            WHERE p.conversation_id = messages.conversation_id AND p.id < messages.id
        )
        """
    )
    conn.execute(
        "UPDATE messages SET active_child = "
        "(SELECT min(c.id) FROM messages AS c WHERE c.parent_id = messages.id)"
    )
    conn.execute(
        """
        UPDATE conversations SET active_leaf = (
            SELECT max(m.id) FROM messages AS m WHERE m.conversation_id = conversations.id
        )
        """
    )
    conn.execute("CREATE INDEX messages_by_parent ON messages (parent_id, id)")


def _migrate_to_v5(conn: sqlite3.Connection) -> None:
    """Each conversation may have its own instructions and sampling (app/core/presets.py
    ``ConversationOptions`` as JSON; "{}": the app's settings, as before)."""
    conn.execute("ALTER TABLE conversations ADD COLUMN options TEXT NOT NULL DEFAULT '{}'")


def _migrate_to_v6(conn: sqlite3.Connection) -> None:
    """Conversations can be pinned: the sidebar shows them in a "Pinned" group at the top
    (0: not pinned, as every conversation before schema 6)."""
    conn.execute("ALTER TABLE conversations ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0")


MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (
    _migrate_to_v1,
    _migrate_to_v2,
    _migrate_to_v3,
    _migrate_to_v4,
    _migrate_to_v5,
    _migrate_to_v6,
)
"""``MIGRATIONS[n]`` takes the database from ``user_version`` n to n + 1. Append only."""
SCHEMA_VERSION = len(MIGRATIONS)

_CONVERSATION_FIELDS = ("id", "title", "created_at", "updated_at", "model", "pinned")
_MESSAGE_FIELDS = (
    "id",
    "conversation_id",
    "role",
    "content",
    "created_at",
    "model",
    "sampling",
    "stats",
    "status",
    "parent_id",
)
_CONVERSATION_COLUMNS = ", ".join(_CONVERSATION_FIELDS)
_ATTACHMENT_COLUMNS = "id, conversation_id, message_id, kind, name, path, sha256, meta, created_at"
_MESSAGE_COLUMNS = ", ".join(_MESSAGE_FIELDS)
_SEARCH_COLUMNS = ", ".join([f"c.{f}" for f in _CONVERSATION_FIELDS] + [f"m.{f}" for f in _MESSAGE_FIELDS])


# --- the repository ----------------------------------------------------------------------------------


class Store:
    """The chat repository over one SQLite file.

    Use it from one thread at a time. It is opened with ``check_same_thread=False`` so that the GUI
    thread may create it and hand it to a worker later; callers must never use it from two threads at
    once. Operational failures (damaged, locked, full disk) raise ``StorageError``; misuse (unknown
    role or status, missing conversation) raises ``ValueError``.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._depth = 0
        self._last_time = 0.0
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"Could not create the folder for the chat database: {exc}") from exc
        try:
            self._conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StorageError(f"Could not open the chat database {path}: {exc}") from exc
        try:
            self._open()
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise StorageError(f"The chat database is damaged or locked: {path} ({exc})") from exc
        except BaseException:
            self._conn.close()
            raise

    def _open(self) -> None:
        conn = self._conn
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS:d}")
        # Read before any write: a file that is not a database fails here, untouched.
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        version = self.user_version()
        if version > SCHEMA_VERSION:
            raise StorageError(
                f"The chat database {self.path} was written by a newer version of Scout Chat "
                f"(schema {version}, this version knows {SCHEMA_VERSION})."
            )
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            log.info("journal_mode is %s, not wal, for %s", mode, self.path)
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.create_function("casefold", 1, _casefold, deterministic=True)
        self._migrate(version)
        recovered = conn.execute(
            "UPDATE messages SET status = 'interrupted' WHERE status = 'streaming'"
        ).rowcount
        if recovered:
            log.info("marked %d message(s) left streaming as interrupted", recovered)

    def _migrate(self, version: int) -> None:
        for target in range(version + 1, SCHEMA_VERSION + 1):
            with self.transaction():
                MIGRATIONS[target - 1](self._conn)
                self._conn.execute(f"PRAGMA user_version = {target:d}")
            log.info("migrated %s to schema version %d", self.path, target)

    # --- plumbing ---

    def user_version(self) -> int:
        """The schema version stored in the file."""
        return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Run the block in one write transaction; nested blocks join the outermost one."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        with _storage_errors():
            self._conn.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield
        except BaseException:
            self._depth = 0
            self._conn.rollback()
            raise
        self._depth = 0
        with _storage_errors():
            self._conn.commit()

    def close(self) -> None:
        """Close the connection (idempotent)."""
        self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _now(self) -> float:
        """time.time(), but strictly increasing within this Store so ordering by time is stable."""
        self._last_time = max(time.time(), self._last_time + 1e-6)
        return self._last_time

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with _storage_errors():
            return self._conn.execute(sql, params).fetchall()

    # --- conversations ---

    def create_conversation(self, title: str = DEFAULT_TITLE, model: str = "") -> Conversation:
        title = title.strip() or DEFAULT_TITLE
        now = self._now()
        with self.transaction(), _storage_errors():
            cursor = self._conn.execute(
                "INSERT INTO conversations (title, created_at, updated_at, model) VALUES (?, ?, ?, ?)",
                (title, now, now, model),
            )
        assert cursor.lastrowid is not None
        return Conversation(cursor.lastrowid, title, now, now, model)

    def get_conversation(self, conversation_id: int) -> Conversation | None:
        rows = self._query(
            f"SELECT {_CONVERSATION_COLUMNS} FROM conversations WHERE id = ?", (conversation_id,)
        )
        return _conversation(rows[0]) if rows else None

    def conversation_options(self, conversation_id: int) -> dict[str, Any]:
        """The conversation's own instructions and sampling, as stored ({}: none)."""
        rows = self._query("SELECT options FROM conversations WHERE id = ?", (conversation_id,))
        if not rows:
            return {}
        try:
            value = json.loads(rows[0][0] or "{}")
        except ValueError:
            log.warning("conversation %d has unreadable options; using the app's", conversation_id)
            return {}
        return value if isinstance(value, dict) else {}

    def set_conversation_options(self, conversation_id: int, options: dict[str, Any]) -> None:
        with self.transaction(), _storage_errors():
            self._conn.execute(
                "UPDATE conversations SET options = ? WHERE id = ?", (json.dumps(options), conversation_id)
            )

    def set_pinned(self, conversation_id: int, pinned: bool) -> None:
        """Pin a conversation (or unpin it) without moving it in time (updated_at is kept)."""
        with self.transaction(), _storage_errors():
            self._conn.execute(
                "UPDATE conversations SET pinned = ? WHERE id = ?", (int(pinned), conversation_id)
            )

    def rename_preset_uses(self, old: str, new: str) -> int:
        """Conversations that use the preset ``old`` use ``new`` (a renamed user preset); returns
        how many. Names match without case, as :func:`app.core.presets.find_preset` does."""
        with self.transaction(), _storage_errors():
            cursor = self._conn.execute(
                "UPDATE conversations SET options = json_set(options, '$.preset', ?) "
                "WHERE json_valid(options) AND casefold(json_extract(options, '$.preset')) = ?",
                (new, old.strip().casefold()),
            )
        return cursor.rowcount

    def list_conversations(self, filter_text: str = "") -> list[Conversation]:
        """Pinned first, then most recently updated first; ``filter_text`` matches titles
        case-insensitively."""
        needle = filter_text.strip().casefold()
        sql = f"SELECT {_CONVERSATION_COLUMNS} FROM conversations"
        params: tuple[Any, ...] = ()
        if needle:
            sql += " WHERE instr(casefold(title), ?) > 0"
            params = (needle,)
        sql += " ORDER BY pinned DESC, updated_at DESC, id DESC"
        return [_conversation(row) for row in self._query(sql, params)]

    def rename_conversation(self, conversation_id: int, title: str) -> None:
        """Rename without moving the conversation in the list (updated_at is kept)."""
        with self.transaction(), _storage_errors():
            self._conn.execute(
                "UPDATE conversations SET title = ? WHERE id = ?",
                (title.strip() or DEFAULT_TITLE, conversation_id),
            )

    def delete_conversation(self, conversation_id: int) -> None:
        """Delete the conversation and (by cascade) its messages."""
        with self.transaction(), _storage_errors():
            self._conn.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))

    # --- messages ---

    def add_message(
        self,
        conversation_id: int,
        role: str,
        content: str,
        *,
        model: str = "",
        sampling: dict[str, Any] | None = None,
        stats: dict[str, Any] | None = None,
        status: MessageStatus = MessageStatus.COMPLETE,
        parent_id: int | Literal["active"] | None = "active",
    ) -> StoredMessage:
        """Add a message and bump the conversation's ``updated_at``; it becomes the active leaf.

        ``parent_id`` "active" appends it to the branch shown (after the active leaf); a message id
        or None (a first message) starts a branch beside that parent's other children.
        """
        _check_role(role)
        status = _check_status(status)
        sampling, stats = dict(sampling or {}), dict(stats or {})
        now = self._now()
        with self.transaction(), _storage_errors():
            if parent_id == "active":
                parent_id = self._active_leaf(conversation_id)
            elif parent_id is not None:
                owner = self._conn.execute(
                    "SELECT conversation_id FROM messages WHERE id = ?", (parent_id,)
                ).fetchone()
                if owner is None or owner[0] != conversation_id:
                    raise ValueError(f"message {parent_id} is not in conversation {conversation_id}")
            bumped = self._conn.execute(
                "UPDATE conversations SET updated_at = ? WHERE id = ?", (now, conversation_id)
            ).rowcount
            if not bumped:
                raise ValueError(f"no conversation with id {conversation_id}")
            cursor = self._conn.execute(
                f"INSERT INTO messages ({_MESSAGE_COLUMNS}) VALUES (NULL, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    conversation_id, role, content, now, model, _dumps(sampling), _dumps(stats),
                    status.value, parent_id,
                ),
            )  # fmt: skip
            assert cursor.lastrowid is not None
            self._conn.execute(
                "UPDATE conversations SET active_leaf = ? WHERE id = ?", (cursor.lastrowid, conversation_id)
            )
            if parent_id is not None:
                self._conn.execute(
                    "UPDATE messages SET active_child = ? WHERE id = ?", (cursor.lastrowid, parent_id)
                )
        return StoredMessage(
            cursor.lastrowid, conversation_id, role, content, now, model, sampling, stats, status, parent_id
        )

    def update_message(
        self,
        message_id: int,
        *,
        content: str | None = None,
        stats: dict[str, Any] | None = None,
        status: MessageStatus | None = None,
    ) -> None:
        """Change the given fields with one UPDATE (cheap enough to call every second while streaming)."""
        assignments: list[str] = []
        params: list[Any] = []
        if content is not None:
            assignments.append("content = ?")
            params.append(content)
        if stats is not None:
            assignments.append("stats = ?")
            params.append(_dumps(stats))
        if status is not None:
            assignments.append("status = ?")
            params.append(_check_status(status).value)
        if not assignments:
            return
        params.append(message_id)
        with _storage_errors():
            # Outside an explicit transaction this one statement commits on its own.
            self._conn.execute(f"UPDATE messages SET {', '.join(assignments)} WHERE id = ?", params)

    def get_message(self, message_id: int) -> StoredMessage | None:
        rows = self._query(f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE id = ?", (message_id,))
        return _message(rows[0]) if rows else None

    def messages(self, conversation_id: int) -> list[StoredMessage]:
        """The conversation's **active path**: from its first message to the active leaf, in order.

        This is what the chat shows and what the model is sent; the other branches are in
        :meth:`tree`.
        """
        leaf = self._active_leaf(conversation_id)
        if leaf is None:
            return []
        rows = self._query(
            f"""
            WITH RECURSIVE path (id) AS (
                SELECT ? UNION ALL
                SELECT m.parent_id FROM messages AS m JOIN path ON m.id = path.id
                WHERE m.parent_id IS NOT NULL
            )
            SELECT {_MESSAGE_COLUMNS} FROM messages WHERE id IN path ORDER BY id
            """,
            (leaf,),
        )
        return [_message(row) for row in rows]

    def tree(self, conversation_id: int) -> list[StoredMessage]:
        """Every message of every branch, in the order they were added (a parent before its children)."""
        rows = self._query(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE conversation_id = ? ORDER BY id",
            (conversation_id,),
        )
        return [_message(row) for row in rows]

    def active_leaf(self, conversation_id: int) -> int | None:
        """The last message of the branch shown (None for an empty conversation)."""
        return self._active_leaf(conversation_id)

    def _active_leaf(self, conversation_id: int) -> int | None:
        row = self._conn.execute(
            "SELECT active_leaf FROM conversations WHERE id = ?", (conversation_id,)
        ).fetchone()
        if row is not None and row[0] is not None:
            return int(row[0])
        # no leaf recorded (an empty conversation, or its branch was deleted): the newest message
        row = self._conn.execute(
            "SELECT max(id) FROM messages WHERE conversation_id = ?", (conversation_id,)
        ).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def set_active_leaf(self, conversation_id: int, message_id: int | None) -> None:
        """Show the branch ending at ``message_id`` (None: an empty path, before a new first message)."""
        if message_id is not None:
            owner = self._query("SELECT conversation_id FROM messages WHERE id = ?", (message_id,))
            if not owner or owner[0][0] != conversation_id:
                raise ValueError(f"message {message_id} is not in conversation {conversation_id}")
        with self.transaction(), _storage_errors():
            self._conn.execute(
                "UPDATE conversations SET active_leaf = ? WHERE id = ?", (message_id, conversation_id)
            )
            if message_id is not None:  # each message on the path remembers the child shown
                path = [m.id for m in self.messages(conversation_id)]
                self._conn.executemany(
                    "UPDATE messages SET active_child = ? WHERE id = ? AND active_child IS NOT ?",
                    [(child, parent, child) for parent, child in itertools.pairwise(path)],
                )

    def activate(self, message_id: int) -> int:
        """Show a branch through ``message_id``: below it, at each step, the child shown last
        (the newest one if none was). Returns the new active leaf."""
        found = self._query("SELECT conversation_id FROM messages WHERE id = ?", (message_id,))
        if not found:
            raise ValueError(f"no message with id {message_id}")
        leaf = message_id
        while True:
            child = self._query(
                """
                SELECT coalesce(
                    (SELECT c.id FROM messages AS c, messages AS p
                     WHERE p.id = ?1 AND c.id = p.active_child AND c.parent_id = p.id),
                    (SELECT max(id) FROM messages WHERE parent_id = ?1)
                )
                """,
                (leaf,),
            )
            if not child or child[0][0] is None:
                break
            leaf = int(child[0][0])
        self.set_active_leaf(int(found[0][0]), leaf)
        return leaf

    def children(self, conversation_id: int) -> dict[int | None, list[int]]:
        """Every message id of the conversation under its parent's id (None: first messages), in order."""
        out: dict[int | None, list[int]] = {}
        rows = self._query(
            "SELECT id, parent_id FROM messages WHERE conversation_id = ? ORDER BY id", (conversation_id,)
        )
        for message_id, parent_id in rows:
            out.setdefault(parent_id, []).append(int(message_id))
        return out

    def delete_messages_from(self, conversation_id: int, message_id: int) -> int:
        """Delete ``message_id`` and everything below it in the tree; return how many went.

        Nothing is deleted when the message is not in that conversation. When the active leaf went
        with them, the branch shown ends at the deleted message's parent.
        """
        with self.transaction(), _storage_errors():
            owner = self._conn.execute(
                "SELECT conversation_id, parent_id FROM messages WHERE id = ?", (message_id,)
            ).fetchone()
            if owner is None or owner[0] != conversation_id:
                log.debug("message %d is not in conversation %d", message_id, conversation_id)
                return 0
            doomed = [
                int(row[0])
                for row in self._conn.execute(
                    """
                    WITH RECURSIVE below (id) AS (
                        SELECT ? UNION ALL
                        SELECT m.id FROM messages AS m JOIN below ON m.parent_id = below.id
                    )
                    SELECT id FROM below
                    """,
                    (message_id,),
                )
            ]
            leaf = self._conn.execute(
                "SELECT active_leaf FROM conversations WHERE id = ?", (conversation_id,)
            ).fetchone()[0]
            # children first, so no row is left pointing at a deleted parent
            self._conn.executemany("DELETE FROM messages WHERE id = ?", [(i,) for i in reversed(doomed)])
            if leaf is None or leaf in doomed:
                self._conn.execute(
                    "UPDATE conversations SET active_leaf = ? WHERE id = ?", (owner[1], conversation_id)
                )
            return len(doomed)

    # --- attachments ---

    def add_attachment(
        self,
        conversation_id: int,
        kind: str,
        name: str,
        *,
        path: str = "",
        sha256: str = "",
        meta: dict[str, Any] | None = None,
        message_id: int | None = None,
    ) -> Attachment:
        if kind not in ATTACHMENT_KINDS:
            raise ValueError(f"unknown attachment kind {kind!r}")
        meta = dict(meta or {})
        now = self._now()
        with self.transaction(), _storage_errors():
            cursor = self._conn.execute(
                f"INSERT INTO attachments ({_ATTACHMENT_COLUMNS}) VALUES (NULL, ?, ?, ?, ?, ?, ?, ?, ?)",
                (conversation_id, message_id, kind, name, path, sha256, _dumps(meta), now),
            )
        assert cursor.lastrowid is not None
        return Attachment(cursor.lastrowid, conversation_id, message_id, kind, name, path, sha256, meta, now)

    def update_attachment(
        self, attachment_id: int, *, meta: dict[str, Any] | None = None, path: str | None = None,
        sha256: str | None = None,
    ) -> None:  # fmt: skip
        sets, params = [], []
        for column, value in (
            ("meta", None if meta is None else _dumps(meta)),
            ("path", path),
            ("sha256", sha256),
        ):
            if value is not None:
                sets.append(f"{column} = ?")
                params.append(value)
        if not sets:
            return
        with self.transaction(), _storage_errors():
            self._conn.execute(
                f"UPDATE attachments SET {', '.join(sets)} WHERE id = ?", (*params, attachment_id)
            )

    def link_attachments(self, attachment_ids: Sequence[int], message_id: int) -> None:
        """Attach composer attachments to the message they were sent with."""
        with self.transaction(), _storage_errors():
            self._conn.executemany(
                "UPDATE attachments SET message_id = ? WHERE id = ?",
                [(message_id, a) for a in attachment_ids],
            )

    def get_attachment(self, attachment_id: int) -> Attachment | None:
        rows = self._query(f"SELECT {_ATTACHMENT_COLUMNS} FROM attachments WHERE id = ?", (attachment_id,))
        return _attachment(rows[0]) if rows else None

    def attachments(self, conversation_id: int) -> list[Attachment]:
        """Every attachment of the conversation, sent or pending, in the order added."""
        rows = self._query(
            f"SELECT {_ATTACHMENT_COLUMNS} FROM attachments WHERE conversation_id = ? ORDER BY id",
            (conversation_id,),
        )
        return [_attachment(row) for row in rows]

    def pending_attachments(self, conversation_id: int) -> list[Attachment]:
        return [a for a in self.attachments(conversation_id) if a.message_id is None]

    def message_attachments(self, message_ids: Sequence[int]) -> dict[int, list[Attachment]]:
        """The attachments each message was sent with, by message id. A message made by editing
        another (``stats["edited_from"]``: the first message of the edits) has that one's."""
        out: dict[int, list[Attachment]] = {}
        if not message_ids:
            return out
        marks = ",".join("?" * len(message_ids))
        owners: dict[int, list[int]] = {}
        for message_id, origin in self._query(
            f"SELECT id, json_extract(stats, '$.edited_from') FROM messages WHERE id IN ({marks})",
            tuple(message_ids),
        ):
            owner = int(origin) if isinstance(origin, int) else int(message_id)
            owners.setdefault(owner, []).append(int(message_id))
        if not owners:
            return out
        marks = ",".join("?" * len(owners))
        rows = self._query(
            f"SELECT {_ATTACHMENT_COLUMNS} FROM attachments WHERE message_id IN ({marks}) ORDER BY id",
            tuple(owners),
        )
        for row in rows:
            attachment = _attachment(row)
            assert attachment.message_id is not None
            for message_id in owners[attachment.message_id]:
                out.setdefault(message_id, []).append(attachment)
        return out

    def delete_attachment(self, attachment_id: int) -> None:
        with self.transaction(), _storage_errors():
            self._conn.execute("DELETE FROM attachments WHERE id = ?", (attachment_id,))

    def chunk_index(self) -> ChunkIndex:
        """The FTS5 index of document chunks, on this database (doc_id = attachment id)."""
        from app.core.retrieval import ChunkIndex

        return ChunkIndex(self._conn)

    def finish_document(self, attachment_id: int, chunks: Iterable[Chunk], meta: dict[str, Any]) -> None:
        """Store a read document's chunks and its new ``meta`` in one transaction: a crash leaves
        both or neither, never chunks under an attachment still marked as being read."""
        index = self.chunk_index()  # outside the transaction: creating it runs a script, which commits
        with self.transaction():
            index.add_document(attachment_id, chunks)
            self.update_attachment(attachment_id, meta=meta)

    # --- extracts of documents read whole (app/core/reading.py) ---

    def save_extract(self, doc_id: int, question_key: str, part: str, extract: str, model: str = "") -> None:
        """Keep what reading ``part`` of document ``doc_id`` found for a question (its
        :func:`app.core.reading.question_key`)."""
        with self.transaction(), _storage_errors():
            self._conn.execute(
                "INSERT OR REPLACE INTO reading_extracts "
                "(doc_id, question, part, extract, model, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (doc_id, question_key, part, extract, model, self._now()),
            )

    def extracts(self, doc_ids: Sequence[int], question_key: str) -> dict[tuple[int, str], str]:
        """The saved extracts of ``doc_ids`` for a question, by (document id, part key)."""
        if not doc_ids:
            return {}
        marks = ",".join("?" * len(doc_ids))
        rows = self._query(
            f"SELECT doc_id, part, extract FROM reading_extracts WHERE question = ? AND doc_id IN ({marks})",
            (question_key, *doc_ids),
        )
        return {(int(doc_id), part): extract for doc_id, part, extract in rows}

    def search_messages(self, text: str, limit: int = 50) -> list[tuple[Conversation, StoredMessage]]:
        """Full-text search over message text (every word, as a prefix), best matches first."""
        query = _fts_query(text)
        if not query or limit <= 0:
            return []
        rows = self._query(
            f"""
            SELECT {_SEARCH_COLUMNS}
            FROM messages_fts
            JOIN messages AS m ON m.id = messages_fts.rowid
            JOIN conversations AS c ON c.id = m.conversation_id
            WHERE messages_fts MATCH ? AND m.role != 'notice'
            ORDER BY messages_fts.rank, m.id DESC
            LIMIT ?
            """,
            (query, limit),
        )
        n = len(_CONVERSATION_FIELDS)
        return [(_conversation(row[:n]), _message(row[n:])) for row in rows]


# --- helpers -----------------------------------------------------------------------------------------


def make_title(first_message: str, max_len: int = 48) -> str:
    """A conversation title from its first message: first line, whitespace collapsed, cut at a word."""
    if max_len < 2:
        raise ValueError(f"max_len must be at least 2, not {max_len}")
    line = ""
    for raw in first_message.splitlines():
        candidate = " ".join(raw.split())
        if candidate and not candidate.startswith(("```", "~~~")):
            line = candidate
            break
    if not line:
        return DEFAULT_TITLE
    if len(line) <= max_len:
        return line
    cut = line[: max_len - 1]  # leave room for the ellipsis
    if line[max_len - 1] != " ":  # the cut falls inside a word: back up to the last space
        space = cut.rfind(" ")
        if space >= max_len // 2:
            cut = cut[:space]
    cut = cut.rstrip(" ,.;:-–—")
    return (cut or line[: max_len - 1]) + "…"


def _casefold(value: object) -> str | None:
    return value.casefold() if isinstance(value, str) else None


_WORD = re.compile(r"\w")


def _fts_query(text: str) -> str:
    """User text as a safe FTS5 query: each word quoted (no operators) and matched as a prefix."""
    terms = ['"' + word.replace('"', '""') + '"*' for word in text.split() if _WORD.search(word)]
    return " ".join(terms)


def _dumps(value: dict[str, Any]) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; expected one of {sorted(ROLES)}")


def _check_status(status: str) -> MessageStatus:
    if status not in STATUSES:
        raise ValueError(f"unknown status {status!r}; expected one of {sorted(STATUSES)}")
    return MessageStatus(status)


def _conversation(row: Sequence[Any]) -> Conversation:
    return Conversation(int(row[0]), row[1], float(row[2]), float(row[3]), row[4], bool(row[5]))


def _message(row: Sequence[Any]) -> StoredMessage:
    return StoredMessage(
        id=int(row[0]),
        conversation_id=int(row[1]),
        role=row[2],
        content=row[3],
        created_at=float(row[4]),
        model=row[5],
        sampling=json.loads(row[6]),
        stats=json.loads(row[7]),
        status=MessageStatus(row[8]),
        parent_id=None if row[9] is None else int(row[9]),
    )


def _attachment(row: Sequence[Any]) -> Attachment:
    return Attachment(
        id=int(row[0]),
        conversation_id=int(row[1]),
        message_id=None if row[2] is None else int(row[2]),
        kind=row[3],
        name=row[4],
        path=row[5],
        sha256=row[6],
        meta=json.loads(row[7]),
        created_at=float(row[8]),
    )


@contextmanager
def _storage_errors() -> Iterator[None]:
    """Turn operational SQLite failures (locked, damaged, disk full) into ``StorageError``.

    Constraint and API misuse errors stay as they are: they are bugs, not conditions to show users.
    """
    try:
        yield
    except (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError):
        raise
    except sqlite3.DatabaseError as exc:
        raise StorageError(f"The chat database is damaged or locked: {exc}") from exc
