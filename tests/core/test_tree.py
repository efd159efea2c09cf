"""Conversations as trees in the store: branches, the active path, and the migration from the
linear schema (real SQLite files in tmp_path)."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from typing import TYPE_CHECKING

import pytest

from app.config import kv_state_files
from app.core.store import MIGRATIONS, SCHEMA_VERSION, Store

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

TREE_VERSION = 4  # the first schema with message parents (the migration this file tests)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "chat.sqlite3") as opened:
        yield opened


def _contents(store: Store, conversation_id: int) -> list[str]:
    return [m.content for m in store.messages(conversation_id)]


def test_messages_append_to_the_active_path(store: Store) -> None:
    c = store.create_conversation()
    q = store.add_message(c.id, "user", "q")
    a = store.add_message(c.id, "assistant", "a")
    assert (q.parent_id, a.parent_id) == (None, q.id)
    assert store.active_leaf(c.id) == a.id
    assert store.messages(c.id) == [q, a]


def test_a_branch_keeps_the_other_and_the_path_follows_the_active_leaf(store: Store) -> None:
    c = store.create_conversation()
    q1 = store.add_message(c.id, "user", "q1")
    store.add_message(c.id, "assistant", "a1")
    q2 = store.add_message(c.id, "user", "q2")
    store.add_message(c.id, "assistant", "a2")
    # edit q2: a sibling under a1
    q2b = store.add_message(c.id, "user", "q2 edited", parent_id=q2.parent_id)
    store.add_message(c.id, "assistant", "a2b")
    assert _contents(store, c.id) == ["q1", "a1", "q2 edited", "a2b"]
    assert len(store.tree(c.id)) == 6
    assert store.children(c.id)[q2.parent_id] == [q2.id, q2b.id]
    # back to the first branch: down to its newest leaf
    leaf = store.activate(q2.id)
    assert _contents(store, c.id) == ["q1", "a1", "q2", "a2"]
    assert store.get_message(leaf).content == "a2"
    # a new first message: a second root
    store.add_message(c.id, "user", "other start", parent_id=None)
    assert _contents(store, c.id) == ["other start"]
    assert store.children(c.id)[None] == [q1.id, store.active_leaf(c.id)]


def test_a_parent_from_another_conversation_is_refused(store: Store) -> None:
    c, other = store.create_conversation(), store.create_conversation()
    foreign = store.add_message(other.id, "user", "x")
    with pytest.raises(ValueError, match="not in conversation"):
        store.add_message(c.id, "user", "y", parent_id=foreign.id)
    with pytest.raises(ValueError, match="not in conversation"):
        store.set_active_leaf(c.id, foreign.id)


def test_deleting_a_branch_keeps_its_siblings(store: Store) -> None:
    c = store.create_conversation()
    q = store.add_message(c.id, "user", "q")
    a1 = store.add_message(c.id, "assistant", "first answer")
    store.add_message(c.id, "user", "follow-up")
    a2 = store.add_message(c.id, "assistant", "second answer", parent_id=q.id)
    assert store.delete_messages_from(c.id, a1.id) == 2
    assert _contents(store, c.id) == ["q", "second answer"]
    store.activate(a2.id)
    assert store.delete_messages_from(c.id, a2.id) == 1
    assert _contents(store, c.id) == ["q"]  # the active leaf fell back to the parent
    assert [m.content for _, m in store.search_messages("answer")] == []


def test_search_finds_text_on_every_branch(store: Store) -> None:
    c = store.create_conversation()
    q = store.add_message(c.id, "user", "q")
    hidden = store.add_message(c.id, "assistant", "the giraffe branch")
    store.add_message(c.id, "assistant", "the zebra branch", parent_id=q.id)
    assert hidden not in store.messages(c.id)
    assert [m.id for _, m in store.search_messages("giraffe")] == [hidden.id]


# --- migration from linear conversations -------------------------------------------------------------


def _old_database(path: Path) -> None:
    """A database as the previous version (schema 3, linear conversations) wrote it."""
    with closing(sqlite3.connect(str(path), isolation_level=None)) as conn:
        conn.execute("PRAGMA foreign_keys = ON")
        for target in range(1, TREE_VERSION):
            MIGRATIONS[target - 1](conn)
            conn.execute(f"PRAGMA user_version = {target:d}")
        for cid, title in ((1, "Trip"), (2, "Report")):
            conn.execute(
                "INSERT INTO conversations (id, title, created_at, updated_at, model) VALUES (?, ?, ?, ?, ?)",
                (cid, title, 100.0 + cid, 200.0 + cid, "tiny"),
            )
        rows = [
            (1, 1, "user", "Where to go?", "complete"),
            (2, 1, "assistant", "Lisbon.", "complete"),
            (3, 2, "user", "Summarise the report", "complete"),
            (4, 1, "user", "Why?", "complete"),
            (5, 2, "notice", "1 earlier message was left out", "complete"),
            (6, 2, "assistant", "It says the budget grew.", "complete"),
            (7, 1, "assistant", "The light, and the food", "streaming"),
        ]
        for mid, cid, role, content, status in rows:
            conn.execute(
                "INSERT INTO messages (id, conversation_id, role, content, created_at, model, sampling, "
                "stats, status) VALUES (?, ?, ?, ?, ?, 'tiny', ?, ?, ?)",
                (
                    mid,
                    cid,
                    role,
                    content,
                    300.0 + mid,
                    '{"temperature":0.6}',
                    json.dumps({"tokens_per_s": 5.0}),
                    status,
                ),
            )
        conn.execute(
            "INSERT INTO attachments (id, conversation_id, message_id, kind, name, path, sha256, meta, "
            "created_at) VALUES (1, 2, 3, 'document', 'report.txt', '', 'abc', ?, 400.0)",
            (json.dumps({"state": "ready", "mode": "retrieval", "pages": 2}),),
        )
        conn.execute(
            "INSERT INTO doc_chunks (id, doc_id, idx, anchor, page, text, tokens) "
            "VALUES (1, 1, 0, 'p. 1', 1, 'The budget grew by a third.', 8)"
        )


def test_a_linear_database_migrates_to_trees_losing_nothing(tmp_path: Path) -> None:
    db = tmp_path / "chat.sqlite3"
    _old_database(db)
    kv_dir = tmp_path / "kv-state"
    kv_dir.mkdir()
    kv_file = kv_dir / "conversation-2-abcdef.llamastate"
    kv_file.write_bytes(b"saved KV cells")
    with closing(sqlite3.connect(str(db))) as conn:
        before = conn.execute(
            "SELECT id, conversation_id, role, content, sampling, stats FROM messages"
        ).fetchall()

    with Store(db) as store:
        assert store.user_version() == SCHEMA_VERSION >= TREE_VERSION
        trip = store.messages(1)
        # one branch per conversation, every message in its order, each after the one before
        assert [m.content for m in trip] == ["Where to go?", "Lisbon.", "Why?", "The light, and the food"]
        assert [m.parent_id for m in trip] == [None, 1, 2, 4]
        assert trip[-1].status == "interrupted"  # left streaming: recovered as before
        report = store.messages(2)
        assert [(m.id, m.parent_id) for m in report] == [(3, None), (5, 3), (6, 5)]
        assert store.active_leaf(1) == 7
        assert store.active_leaf(2) == 6
        assert [c.title for c in store.list_conversations()] == ["Report", "Trip"]  # updated_at kept
        # attachments, chunks and the search index still answer
        assert [a.name for a in store.message_attachments([3])[3]] == ["report.txt"]
        assert [c.text for c in store.chunk_index().chunks(1)] == ["The budget grew by a third."]
        assert [m.id for _, m in store.search_messages("Lisbon")] == [2]
        # the tree works on migrated conversations: branch on the first question
        store.add_message(1, "user", "Where in winter?", parent_id=None)
        assert store.children(1)[None] == [1, 8]
        store.activate(1)
        assert len(store.messages(1)) == 4
    with closing(sqlite3.connect(str(db))) as conn:
        after = conn.execute(
            "SELECT id, conversation_id, role, content, sampling, stats FROM messages WHERE id <= 7"
        ).fetchall()
        assert after == before
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    assert kv_state_files(kv_dir, 2) == [kv_file]  # KV files are keyed by conversation id: still found
    assert kv_file.read_bytes() == b"saved KV cells"


def test_migration_rolls_back_whole_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "chat.sqlite3"
    _old_database(db)
    import app.core.store as store_module

    def broken(conn: sqlite3.Connection) -> None:
        MIGRATIONS[TREE_VERSION - 1](conn)
        raise sqlite3.OperationalError("disk I/O error")

    ladder = list(MIGRATIONS)
    ladder[TREE_VERSION - 1] = broken
    monkeypatch.setattr(store_module, "MIGRATIONS", tuple(ladder))
    with pytest.raises(Exception, match="disk I/O"):
        Store(db)
    with closing(sqlite3.connect(str(db))) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == TREE_VERSION - 1
        columns = [row[1] for row in conn.execute("PRAGMA table_info(messages)")]
        assert "parent_id" not in columns
        assert conn.execute("SELECT count(*) FROM messages").fetchone()[0] == 7
