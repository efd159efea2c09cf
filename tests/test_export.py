"""Export to Markdown and JSON; the JSON imports back into a fresh store unchanged."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from app.core.store import Store
from app.export import (
    ExportFormatError,
    export_conversation,
    import_json,
    parse_json,
    suggested_filename,
    to_json,
    to_markdown,
    write_export,
)

if TYPE_CHECKING:
    from pathlib import Path

ANSWER = "Here is code:\n\n```python\nprint('hi')\n```\n\nAnd a table:\n\n| a | b |\n|---|---|\n| 1 | 2 |"


@pytest.fixture
def store(tmp_path: Path) -> Store:
    with Store(tmp_path / "a.sqlite3") as s:
        yield s


def _fill(store: Store) -> int:
    conv = store.create_conversation("Pandas & «unicode» ✓", model="Scout Q4_K_M")
    store.add_message(conv.id, "system", "You are Scout.\nBe brief.")
    store.add_message(conv.id, "user", "# not a heading\nShow me code 🐍", model="Scout Q4_K_M")
    store.add_message(
        conv.id,
        "assistant",
        ANSWER,
        model="Scout Q4_K_M",
        sampling={"temperature": 0.6, "top_p": 0.9},
        stats={"completion_tokens": 42, "tokens_per_s": 12.5},
    )
    store.add_message(conv.id, "notice", "Older messages were left out.")
    store.add_message(conv.id, "user", "And more?")
    store.add_message(conv.id, "assistant", "Partial ans", status="cancelled")
    return conv.id


def test_json_round_trips_into_a_fresh_store(store: Store, tmp_path: Path) -> None:
    conv_id = _fill(store)
    exported = export_conversation(store, conv_id)
    text = to_json(exported.conversation, exported.messages)
    assert json.loads(text)["format"] == "scout-chat.conversation"
    with Store(tmp_path / "fresh.sqlite3") as fresh:
        imported = import_json(fresh, text)
        assert imported.title == exported.conversation.title
        assert imported.model == exported.conversation.model
        again = fresh.messages(imported.id)

        def fields(messages: list) -> list[tuple]:
            return [(m.role, m.content, m.model, m.sampling, m.stats, m.status) for m in messages]

        assert fields(again) == fields(list(exported.messages))
        # and the export of the import is the same document (but for times)
        second = json.loads(to_json(imported, again))
        first = json.loads(text)
        for doc in (first, second):
            doc.pop("exported_at")
            doc["conversation"].pop("created_at")
            doc["conversation"].pop("updated_at")
            for m in doc["messages"]:
                m.pop("created_at")
        assert first == second
        # imported text is searchable like any other
        assert sorted(m.role for _c, m in fresh.search_messages("code")) == ["assistant", "user"]


def test_markdown_has_title_turns_and_code(store: Store) -> None:
    exported = export_conversation(store, _fill(store))
    md = to_markdown(exported.conversation, exported.messages)
    assert md.startswith("# Pandas & «unicode» ✓\n")
    assert "model: Scout Q4_K_M" in md
    assert md.count("## You") == 2
    assert md.count("## Scout") == 2
    assert "> You are Scout.\n> Be brief." in md
    assert "```python\nprint('hi')\n```" in md
    assert "| a | b |" in md
    assert "```text\n# not a heading\nShow me code 🐍\n```" in md  # not turned into a heading
    assert "> Older messages were left out." in md
    assert "*(answer cancelled)*" in md


def test_bad_json_is_refused_with_a_reason(store: Store) -> None:
    with pytest.raises(ExportFormatError, match="not valid JSON"):
        parse_json("{")
    with pytest.raises(ExportFormatError, match="not a Scout Chat"):
        parse_json('{"messages": []}')
    doc = {
        "format": "scout-chat.conversation",
        "version": 1,
        "conversation": {"title": "x"},
        "messages": [{}],
    }
    with pytest.raises(ExportFormatError, match=r"messages\[0\]\.role: missing"):
        import_json(store, json.dumps(doc))
    assert store.list_conversations() == []
    with pytest.raises(KeyError):
        export_conversation(store, 999)


def test_suggested_filename(store: Store) -> None:
    conv = store.create_conversation("What is 2/3 of π? <draft>")
    assert suggested_filename(conv, "md") == "What-is-2-3-of-π-draft.md"
    assert suggested_filename(store.create_conversation("???"), ".json") == "conversation.json"


def test_markdown_export_includes_images_as_files_beside_it(tmp_path) -> None:
    from app.core.store import Store
    from app.export import export_conversation, write_export
    from tests.vision_fixtures import png_bytes

    picture = tmp_path / "stored.png"
    picture.write_bytes(png_bytes(8, 8))
    with Store(tmp_path / "db.sqlite3") as store:
        conversation = store.create_conversation("With a picture")
        user = store.add_message(conversation.id, "user", "What is this?")
        store.add_message(conversation.id, "assistant", "A red square.")
        image = store.add_attachment(
            conversation.id, "image", "photo.png", path=str(picture), meta={"state": "ready"}
        )
        doc = store.add_attachment(
            conversation.id, "document", "report.pdf", meta={"state": "ready", "pages": 3}
        )
        store.link_attachments([image.id, doc.id], user.id)
        exported = export_conversation(store, conversation.id)
    out = tmp_path / "out" / "chat.md"
    out.parent.mkdir()
    write_export(exported, out)
    text = out.read_text(encoding="utf-8")
    copied = list((tmp_path / "out" / "chat_files").iterdir())
    assert len(copied) == 1
    assert copied[0].read_bytes() == picture.read_bytes()
    assert f"![photo.png](chat_files/{copied[0].name})" in text
    assert "*Attached document: report.pdf, 3 pages*" in text
    as_json = write_export(exported, tmp_path / "out" / "chat.json").read_text(encoding="utf-8")
    assert '"name": "photo.png"' in as_json


def test_markdown_holds_the_branch_shown_and_json_the_whole_tree(store: Store, tmp_path: Path) -> None:
    conv = store.create_conversation("Branches")
    question = store.add_message(conv.id, "user", "Name a colour")
    store.add_message(conv.id, "assistant", "Vermilion")
    store.add_message(conv.id, "assistant", "Ultramarine", parent_id=question.id)  # regenerated
    edited = store.add_message(conv.id, "user", "Name a bird", parent_id=None)  # the first one edited
    store.add_message(conv.id, "assistant", "Kingfisher")
    store.activate(question.id)  # back on the colours, showing the branch seen last there
    exported = export_conversation(store, conv.id)
    md_path = write_export(exported, tmp_path / "chat.md")
    md = md_path.read_text(encoding="utf-8")
    assert "Ultramarine" in md
    assert "Vermilion" not in md
    assert "Kingfisher" not in md
    json_path = write_export(exported, tmp_path / "chat.json")
    data = json.loads(json_path.read_text(encoding="utf-8"))
    assert data["version"] == 2
    assert [m["content"] for m in data["messages"]] == [
        "Name a colour", "Vermilion", "Ultramarine", "Name a bird", "Kingfisher"
    ]  # fmt: skip
    assert [m["parent"] for m in data["messages"]][3] is None
    with Store(tmp_path / "fresh.sqlite3") as fresh:
        imported = import_json(fresh, json_path.read_text(encoding="utf-8"))
        assert [m.content for m in fresh.messages(imported.id)] == ["Name a colour", "Ultramarine"]
        assert len(fresh.tree(imported.id)) == 5
        bird = next(m for m in fresh.tree(imported.id) if m.content == "Name a bird")
        fresh.activate(bird.id)
        assert [m.content for m in fresh.messages(imported.id)] == ["Name a bird", "Kingfisher"]
    assert edited.parent_id is None


def test_a_parent_that_is_not_an_earlier_message_is_refused(store: Store) -> None:
    doc = {
        "format": "scout-chat.conversation",
        "version": 2,
        "conversation": {"title": "x"},
        "messages": [{"id": 1, "parent": 7, "role": "user", "content": "hi"}],
    }
    with pytest.raises(ExportFormatError, match=r"messages\[0\]\.parent"):
        import_json(store, json.dumps(doc))


def test_the_json_keeps_a_conversation_s_own_instructions_sampling_and_pin(
    store: Store, tmp_path: Path
) -> None:
    conv_id = _fill(store)
    options = {"preset": "Precise", "system_prompt": "Answer in French.", "sampling": [0.3, 0.8, 0.05]}
    store.set_conversation_options(conv_id, options)
    store.set_pinned(conv_id, True)
    target = write_export(export_conversation(store, conv_id), tmp_path / "chat.json")
    with Store(tmp_path / "fresh.sqlite3") as fresh:
        imported = import_json(fresh, target.read_text(encoding="utf-8"))
        assert imported.pinned
        assert fresh.conversation_options(imported.id) == options


def test_imported_sampling_out_of_range_is_refused(store: Store) -> None:
    doc = {
        "format": "scout-chat.conversation",
        "version": 2,
        "conversation": {"title": "x", "options": {"sampling": [50, 0.9, 0.01]}},
        "messages": [],
    }
    with pytest.raises(ExportFormatError, match=r"conversation\.options\.sampling: .*out of range"):
        import_json(store, json.dumps(doc))
    doc["conversation"] = {"title": "x", "pinned": "yes"}
    with pytest.raises(ExportFormatError, match=r"conversation\.pinned"):
        import_json(store, json.dumps(doc))
    assert store.list_conversations() == []
