"""The chat store on a real SQLite file in tmp_path (no mocks)."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from typing import TYPE_CHECKING

import pytest

from app.core.chunking import Chunk
from app.core.store import (
    SCHEMA_VERSION,
    AttachmentState,
    Conversation,
    MessageStatus,
    StorageError,
    Store,
    StoredMessage,
    make_title,
)
from app.core.types import DocumentMode, FinishReason
from app.export import export_conversation, to_json, to_markdown

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "nested" / "dir" / "chat.sqlite3"


@pytest.fixture
def store(db_path: Path) -> Iterator[Store]:
    with Store(db_path) as opened:
        yield opened


def _raw(path: Path) -> closing[sqlite3.Connection]:
    return closing(sqlite3.connect(str(path)))


def _fts_ok(path: Path) -> None:
    with _raw(path) as conn:
        conn.execute("INSERT INTO messages_fts (messages_fts) VALUES ('integrity-check')")


# --- opening, pragmas, migrations --------------------------------------------------------------------


def test_open_creates_parent_dirs_and_sets_pragmas(db_path: Path, store: Store) -> None:
    assert db_path.is_file()
    conn = store._conn
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] > 0


def test_wal_mode_is_persistent_in_the_file(db_path: Path, store: Store) -> None:
    store.create_conversation()
    with _raw(db_path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_migration_sets_user_version_and_reopening_is_idempotent(db_path: Path) -> None:
    with Store(db_path) as store:
        assert store.user_version() == SCHEMA_VERSION >= 1
        conversation = store.create_conversation("kept")
        store.add_message(conversation.id, "user", "hello")
    with _raw(db_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"conversations", "messages", "messages_fts"} <= tables
    for _ in range(2):
        with Store(db_path) as store:
            assert store.user_version() == SCHEMA_VERSION
            assert [c.title for c in store.list_conversations()] == ["kept"]
            assert [m.content for m in store.messages(conversation.id)] == ["hello"]


def test_non_database_file_raises_storage_error_and_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "chat.sqlite3"
    garbage = b"this is not a database, it is somebody's notes\n" * 200
    path.write_bytes(garbage)
    with pytest.raises(StorageError, match="damaged or locked") as info:
        Store(path)
    assert str(path) in str(info.value)
    assert path.read_bytes() == garbage
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chat.sqlite3"]


def test_database_from_a_newer_version_is_refused_untouched(db_path: Path) -> None:
    with Store(db_path):
        pass
    with _raw(db_path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        conn.commit()
    before = db_path.read_bytes()
    with pytest.raises(StorageError, match="newer version"):
        Store(db_path)
    assert db_path.read_bytes() == before


def test_directory_at_the_path_raises_storage_error(tmp_path: Path) -> None:
    (tmp_path / "chat.sqlite3").mkdir()
    with pytest.raises(StorageError):
        Store(tmp_path / "chat.sqlite3")


def test_close_is_idempotent(db_path: Path) -> None:
    store = Store(db_path)
    store.close()
    store.close()


# --- conversations -----------------------------------------------------------------------------------


def test_conversation_crud(store: Store) -> None:
    created = store.create_conversation("First", model="scout-q4")
    assert isinstance(created, Conversation)
    assert created.title == "First"
    assert created.model == "scout-q4"
    assert created.created_at == created.updated_at > 0
    assert store.get_conversation(created.id) == created

    store.rename_conversation(created.id, "  Renamed  ")
    renamed = store.get_conversation(created.id)
    assert renamed is not None
    assert renamed.title == "Renamed"
    assert renamed.updated_at == created.updated_at  # renaming does not reorder the list

    store.delete_conversation(created.id)
    assert store.get_conversation(created.id) is None
    assert store.list_conversations() == []
    assert store.get_conversation(12345) is None


def test_default_title(store: Store) -> None:
    assert store.create_conversation().title == "New chat"
    assert store.create_conversation("   ").title == "New chat"


def test_list_is_most_recently_updated_first(store: Store) -> None:
    a = store.create_conversation("a")
    b = store.create_conversation("b")
    c = store.create_conversation("c")
    assert [x.title for x in store.list_conversations()] == ["c", "b", "a"]
    store.add_message(a.id, "user", "bump a")
    assert [x.id for x in store.list_conversations()] == [a.id, c.id, b.id]
    refreshed = store.get_conversation(a.id)
    assert refreshed is not None
    assert refreshed.updated_at > a.updated_at


def test_filter_is_case_insensitive_on_title(store: Store) -> None:
    store.create_conversation("Python decorators")
    store.create_conversation("Rust lifetimes")
    store.create_conversation("Über PYTHON")
    store.create_conversation("100% sure_thing")
    assert [c.title for c in store.list_conversations("python")] == ["Über PYTHON", "Python decorators"]
    assert [c.title for c in store.list_conversations("über")] == ["Über PYTHON"]
    assert [c.title for c in store.list_conversations("  RUST ")] == ["Rust lifetimes"]
    assert store.list_conversations("nothing like this") == []
    # LIKE wildcards are plain characters here
    assert [c.title for c in store.list_conversations("%")] == ["100% sure_thing"]
    assert [c.title for c in store.list_conversations("e_t")] == ["100% sure_thing"]
    assert len(store.list_conversations("")) == 4


def test_delete_conversation_cascades_to_messages(db_path: Path, store: Store) -> None:
    doomed = store.create_conversation("doomed")
    kept = store.create_conversation("kept")
    ids = [store.add_message(doomed.id, "user", f"doomed words {i}").id for i in range(3)]
    store.add_message(kept.id, "user", "kept words")
    store.delete_conversation(doomed.id)
    assert all(store.get_message(i) is None for i in ids)
    assert store.messages(doomed.id) == []
    assert [m.content for m in store.messages(kept.id)] == ["kept words"]
    assert store.search_messages("doomed") == []
    _fts_ok(db_path)


# --- messages ----------------------------------------------------------------------------------------


def test_message_crud_and_json_columns(store: Store) -> None:
    conversation = store.create_conversation()
    sampling = {"temperature": 0.6, "top_p": 0.9, "seed": None}
    added = store.add_message(
        conversation.id,
        "assistant",
        "Héllo ✓",
        model="scout",
        sampling=sampling,
        stats={"tokens": 3},
        status="streaming",
    )
    assert isinstance(added, StoredMessage)
    assert store.get_message(added.id) == added
    assert added.sampling == sampling
    assert added.conversation_id == conversation.id

    store.update_message(
        added.id, content="Héllo ✓ world", stats={"tokens": 5, "tps": 12.5}, status="complete"
    )
    updated = store.get_message(added.id)
    assert updated is not None
    assert (updated.content, updated.stats, updated.status) == (
        "Héllo ✓ world",
        {"tokens": 5, "tps": 12.5},
        "complete",
    )
    assert updated.sampling == sampling
    assert updated.created_at == added.created_at

    store.update_message(added.id, status="cancelled")  # one field only
    again = store.get_message(added.id)
    assert again is not None
    assert (again.content, again.status) == ("Héllo ✓ world", "cancelled")
    store.update_message(added.id)  # nothing to change
    assert store.get_message(added.id) == again
    assert store.get_message(99999) is None


def test_defaults_for_a_plain_message(store: Store) -> None:
    conversation = store.create_conversation()
    message = store.add_message(conversation.id, "notice", "3 earlier messages were left out of the context")
    assert (message.role, message.status, message.model) == ("notice", "complete", "")
    assert message.sampling == {}
    assert message.stats == {}


def test_messages_come_back_in_order(store: Store) -> None:
    conversation = store.create_conversation()
    other = store.create_conversation()
    roles = ["system", "user", "assistant", "notice", "user", "assistant"]
    for i, role in enumerate(roles):
        store.add_message(conversation.id, role, f"m{i}")
        store.add_message(other.id, "user", f"other{i}")
    listed = store.messages(conversation.id)
    assert [m.content for m in listed] == [f"m{i}" for i in range(len(roles))]
    assert [m.role for m in listed] == roles
    assert [m.created_at for m in listed] == sorted(m.created_at for m in listed)


def test_programmer_errors_are_value_errors(store: Store) -> None:
    conversation = store.create_conversation()
    with pytest.raises(ValueError, match="role"):
        store.add_message(conversation.id, "robot", "hi")
    with pytest.raises(ValueError, match="status"):
        store.add_message(conversation.id, "user", "hi", status="done")
    message = store.add_message(conversation.id, "user", "hi")
    with pytest.raises(ValueError, match="status"):
        store.update_message(message.id, status="finished")
    with pytest.raises(ValueError, match="no conversation"):
        store.add_message(424242, "user", "orphan")
    assert [m.content for m in store.messages(conversation.id)] == ["hi"]


def test_delete_messages_from(db_path: Path, store: Store) -> None:
    conversation = store.create_conversation()
    other = store.create_conversation()
    added = [store.add_message(conversation.id, "user" if i % 2 else "assistant", f"m{i}") for i in range(5)]
    other_message = store.add_message(other.id, "user", "untouched")
    assert store.delete_messages_from(conversation.id, added[2].id) == 3
    assert [m.content for m in store.messages(conversation.id)] == ["m0", "m1"]
    assert store.messages(other.id) == [other_message]
    # a message of another conversation (or an unknown id) deletes nothing
    assert store.delete_messages_from(conversation.id, other_message.id) == 0
    assert store.delete_messages_from(conversation.id, 99999) == 0
    assert len(store.messages(conversation.id)) == 2
    # new messages after a truncation get fresh ids, never reused ones
    fresh = store.add_message(conversation.id, "assistant", "regenerated")
    assert fresh.id > added[-1].id
    _fts_ok(db_path)


def test_partial_answer_survives_reopen(db_path: Path) -> None:
    with Store(db_path) as store:
        conversation = store.create_conversation()
        store.add_message(conversation.id, "user", "Tell me a story")
        answer = store.add_message(conversation.id, "assistant", "", status="streaming")
        store.update_message(answer.id, content="Once upon")
        store.update_message(answer.id, content="Once upon a time")
        with Store(db_path) as reader:  # another connection sees each committed save
            seen = reader.get_message(answer.id)
            assert seen is not None
            assert seen.content == "Once upon a time"
        store.update_message(answer.id, content="Once upon a time, there", status="complete")
    with Store(db_path) as store:
        saved = store.get_message(answer.id)
        assert saved is not None
        assert (saved.content, saved.status) == ("Once upon a time, there", "complete")


def test_streaming_becomes_interrupted_on_reopen(db_path: Path) -> None:
    with Store(db_path) as store:
        conversation = store.create_conversation()
        done = store.add_message(conversation.id, "assistant", "finished", status="complete")
        cancelled = store.add_message(conversation.id, "assistant", "stopped", status="cancelled")
        crashed = store.add_message(conversation.id, "assistant", "", status="streaming")
        store.update_message(crashed.id, content="half an ans")
    with Store(db_path) as store:
        by_id = {m.id: m for m in store.messages(conversation.id)}
    assert by_id[crashed.id].status == "interrupted"
    assert by_id[crashed.id].content == "half an ans"
    assert by_id[done.id].status == "complete"
    assert by_id[cancelled.id].status == "cancelled"


# --- transactions ------------------------------------------------------------------------------------


def test_transaction_commits_and_rolls_back(store: Store) -> None:
    with store.transaction():
        conversation = store.create_conversation("together")
        store.add_message(conversation.id, "user", "one")
        store.add_message(conversation.id, "assistant", "two")
    assert len(store.messages(conversation.id)) == 2

    def fails_halfway() -> None:
        with store.transaction():
            store.add_message(conversation.id, "user", "lost")
            store.create_conversation("lost too")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fails_halfway()
    assert [m.content for m in store.messages(conversation.id)] == ["one", "two"]
    assert [c.title for c in store.list_conversations()] == ["together"]
    # still usable afterwards
    store.add_message(conversation.id, "user", "three")
    assert len(store.messages(conversation.id)) == 3


# --- full-text search --------------------------------------------------------------------------------


def test_search_finds_words_in_old_conversations(db_path: Path) -> None:
    with Store(db_path) as store:
        old = store.create_conversation("Gardening")
        store.add_message(old.id, "user", "How do I prune tomato plants?")
        store.add_message(old.id, "assistant", "Remove the suckers below the first flower cluster.")
        new = store.create_conversation("Cooking")
        store.add_message(new.id, "user", "A tomato soup recipe, please")
        store.add_message(new.id, "notice", "tomato notice is an app marker")
    with Store(db_path) as store:
        hits = store.search_messages("tomato")
        assert {(c.title, m.role) for c, m in hits} == {("Gardening", "user"), ("Cooking", "user")}
        [(conversation, message)] = store.search_messages("SUCKERS flower")
        assert conversation == store.get_conversation(old.id)
        assert message.content.startswith("Remove the suckers")
        assert [m.content for _, m in store.search_messages("prun")] == ["How do I prune tomato plants?"]
        assert store.search_messages("tomato cucumber") == []
        assert len(store.search_messages("tomato", limit=1)) == 1


def test_search_treats_user_text_literally(store: Store) -> None:
    conversation = store.create_conversation()
    store.add_message(conversation.id, "user", 'He said "NEAR" AND left (quickly) - col:umn* ok')
    for query in ['"NEAR"', "AND", "(quickly", "col:umn*", 'said "', "NOT", "-", "*"]:
        store.search_messages(query)  # never an FTS5 syntax error
    assert len(store.search_messages('"near"')) == 1
    assert len(store.search_messages("(quickly)")) == 1
    assert store.search_messages("") == []
    assert store.search_messages("   ?!  ") == []
    assert store.search_messages("said", limit=0) == []


def test_search_stays_in_sync_after_update_and_delete(db_path: Path, store: Store) -> None:
    conversation = store.create_conversation()
    answer = store.add_message(conversation.id, "assistant", "", status="streaming")
    assert store.search_messages("giraffe") == []
    store.update_message(answer.id, content="The giraffe")
    assert [m.id for _, m in store.search_messages("giraffe")] == [answer.id]
    store.update_message(answer.id, content="The zebra, actually", status="complete")
    assert store.search_messages("giraffe") == []
    assert [m.id for _, m in store.search_messages("zebra")] == [answer.id]
    store.update_message(answer.id, status="error")  # status-only update keeps the index
    assert [m.id for _, m in store.search_messages("zebra")] == [answer.id]
    store.delete_messages_from(conversation.id, answer.id)
    assert store.search_messages("zebra") == []
    _fts_ok(db_path)


def test_integrity_check_after_many_writes(db_path: Path) -> None:
    with Store(db_path) as store:
        conversations = [store.create_conversation(f"chat {i}") for i in range(10)]
        for round_ in range(20):
            for conversation in conversations:
                message = store.add_message(conversation.id, "assistant", "", status="streaming")
                for step in range(3):
                    store.update_message(message.id, content=f"word{round_} " * (step + 1))
                store.update_message(message.id, status="complete", stats={"round": round_})
        for conversation in conversations[:3]:
            store.delete_conversation(conversation.id)
        for conversation in conversations[3:6]:
            store.delete_messages_from(conversation.id, store.messages(conversation.id)[10].id)
        assert len(store.search_messages("word19")) == 4
    with _raw(db_path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    _fts_ok(db_path)


# --- make_title --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "New chat"),
        ("   \n\t\n ", "New chat"),
        ("Hello there", "Hello there"),
        ("  What   is\tthe  capital of France?  ", "What is the capital of France?"),
        ("\n\nFirst real line\nsecond line", "First real line"),
        ("```python\nprint('hi')\n```", "print('hi')"),
    ],
)
def test_make_title(text: str, expected: str) -> None:
    assert make_title(text) == expected


def test_make_title_cuts_at_a_word_boundary() -> None:
    text = "Please explain how mixture of experts routing works in Llama 4 Scout models"
    title = make_title(text)
    assert title == "Please explain how mixture of experts routing…"
    assert len(title) <= 48
    assert text.startswith(title.removesuffix("…"))
    assert make_title("one two three four", max_len=12) == "one two…"
    assert make_title("exactly ten", max_len=11) == "exactly ten"


def test_make_title_hard_cuts_a_long_word() -> None:
    title = make_title("x" * 100, max_len=20)
    assert title == "x" * 19 + "…"
    with pytest.raises(ValueError, match="max_len"):
        make_title("hello", max_len=1)


# --- a document's chunks and its attachment's state -------------------------------------------------


def _chunks(*texts: str) -> list[Chunk]:
    return [Chunk(i, f"lines {i + 1}", None, text, len(text.split())) for i, text in enumerate(texts)]


def test_finish_document_writes_the_chunks_and_the_state_together(store: Store, db_path: Path) -> None:
    conversation = store.create_conversation()
    attachment = store.add_attachment(conversation.id, "document", "a.md", meta={"state": "processing"})
    store.finish_document(attachment.id, _chunks("alpha beta", "gamma delta"), {"state": "ready"})
    with _raw(db_path) as conn:  # committed: another connection sees both
        (meta,) = conn.execute("SELECT meta FROM attachments WHERE id = ?", (attachment.id,)).fetchone()
        sql = "SELECT count(*) FROM doc_chunks WHERE doc_id = ?"
        (n_chunks,) = conn.execute(sql, (attachment.id,)).fetchone()
    assert json.loads(meta) == {"state": "ready"}
    assert n_chunks == 2
    assert [c.text for c in store.chunk_index().chunks(attachment.id)] == ["alpha beta", "gamma delta"]


def test_a_failure_while_saving_the_state_rolls_back_the_chunks(store: Store, db_path: Path) -> None:
    conversation = store.create_conversation()
    attachment = store.add_attachment(conversation.id, "document", "a.md", meta={"state": "processing"})
    store.finish_document(attachment.id, _chunks("first version"), {"state": "ready", "tokens": 2})
    with _raw(db_path) as conn:  # a real SQLite failure in the second half (the attachment's update)
        conn.execute(
            "CREATE TRIGGER refuse_meta BEFORE UPDATE OF meta ON attachments "
            "BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
        )
        conn.commit()
    with pytest.raises(sqlite3.IntegrityError, match="injected failure"):
        store.finish_document(attachment.id, _chunks("second", "version"), {"state": "ready", "tokens": 3})
    # Neither half of the failed save is there: the first version's chunks and state are intact.
    assert [c.text for c in store.chunk_index().chunks(attachment.id)] == ["first version"]
    saved = store.get_attachment(attachment.id)
    assert saved is not None
    assert saved.meta == {"state": "ready", "tokens": 2}
    with _raw(db_path) as conn:
        assert conn.execute("SELECT text FROM doc_chunks WHERE doc_id = ?", (attachment.id,)).fetchall() == [
            ("first version",)
        ]
    # The store is still usable: no transaction was left open.
    store.add_message(conversation.id, "user", "still works")


def test_states_are_stored_and_exported_as_the_plain_strings(db_path: Path, store: Store) -> None:
    """The enums are str: SQLite, the JSON columns and the exports hold exactly the old strings."""
    conversation = store.create_conversation("States")
    answer = store.add_message(
        conversation.id,
        "assistant",
        "Half an answer",
        status=MessageStatus.STREAMING,
        stats={"finish_reason": FinishReason.CANCELLED, "context_mode": DocumentMode.RETRIEVAL},
    )
    store.update_message(answer.id, status=MessageStatus.CANCELLED)
    store.add_attachment(
        conversation.id, "document", "notes.txt", message_id=answer.id, meta={"state": AttachmentState.READY}
    )
    with _raw(db_path) as conn:
        status, status_type, stats = conn.execute(
            "SELECT status, typeof(status), stats FROM messages WHERE id = ?", (answer.id,)
        ).fetchone()
        (meta,) = conn.execute("SELECT meta FROM attachments").fetchone()
    assert (status, status_type) == ("cancelled", "text")
    assert stats == '{"finish_reason":"cancelled","context_mode":"retrieval"}'
    assert meta == '{"state":"ready"}'

    (reread,) = store.messages(conversation.id)
    assert reread.status is MessageStatus.CANCELLED
    assert reread.status == "cancelled"
    assert f"{reread.status}" == str(reread.status) == "cancelled"  # never "MessageStatus.CANCELLED"

    exported = export_conversation(store, conversation.id)
    data = json.loads(to_json(exported.conversation, exported.messages, exported.attachments))
    assert data["messages"][0]["status"] == "cancelled"
    assert data["messages"][0]["stats"]["finish_reason"] == "cancelled"
    assert "*(answer cancelled)*" in to_markdown(exported.conversation, exported.messages)


def test_every_status_the_schema_allows_is_a_message_status(db_path: Path, store: Store) -> None:
    conversation = store.create_conversation("All")
    for status in MessageStatus:
        store.add_message(conversation.id, "assistant", "x", status=status)
    with _raw(db_path) as conn:
        stored = [row[0] for row in conn.execute("SELECT status FROM messages ORDER BY id")]
    assert stored == ["complete", "streaming", "cancelled", "error", "interrupted"]
    with pytest.raises(ValueError, match="unknown status"):
        store.add_message(conversation.id, "assistant", "x", status="draft")
