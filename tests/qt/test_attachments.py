"""Attachments through the controller: real ingest thread (images, documents), real SQLite."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from app.config import Settings
from tests.fakes import FakeEngine
from tests.vision_fixtures import png_bytes

if TYPE_CHECKING:
    from app.workers.controller import AppController

NEEDLE = "The secret launch code is PURPLE-ELEPHANT-42."


def loaded(controller: AppController, qtbot) -> AppController:
    with qtbot.waitSignal(controller.models.model_loaded, timeout=5000):
        controller.models.load_model("fake.gguf")
    return controller


def attach(controller: AppController, qtbot, paths: list[Path]) -> list[object]:
    """Attach ``paths`` and wait until each is read and, for a document, its mode is decided
    (whole or retrieval: the turn builder's preview, the same decision the prompt will use)."""
    latest: dict[int, object] = {}

    def settled(a: object) -> bool:
        return a.meta.get("state") == "ready" and (a.kind == "image" or "mode" in a.meta)

    controller.attachments.attachment_updated.connect(lambda a: latest.__setitem__(a.id, a))
    controller.attachments.attach_files([str(p) for p in paths])
    qtbot.waitUntil(lambda: len(latest) == len(paths) and all(map(settled, latest.values())), timeout=20_000)
    return list(latest.values())


def long_document(tmp_path: Path, paragraphs: int = 400) -> Path:
    lines = [f"Paragraph {i}. The committee discussed budget item {i} at length." for i in range(paragraphs)]
    lines[paragraphs * 2 // 3] = NEEDLE
    path = tmp_path / "minutes.md"
    path.write_text("# Minutes\n\n" + "\n\n".join(lines), encoding="utf-8")
    return path


def test_small_document_goes_in_whole(make_controller, qtbot, tmp_path: Path) -> None:
    engine = FakeEngine(["ok"])
    controller = loaded(make_controller(engine), qtbot)
    doc = tmp_path / "notes.txt"
    doc.write_text("Alpha beta gamma.\n\n" + NEEDLE + "\n", encoding="utf-8")
    (ready,) = attach(controller, qtbot, [doc])
    assert ready.meta["mode"] == "whole"
    assert ready.meta["tokens"] > 0
    with qtbot.waitSignal(controller.conversations.generation_finished, timeout=5000) as done:
        controller.conversations.send("What is the launch code?")
    sent = engine.seen[-1][-1]
    assert NEEDLE in sent.content
    assert sent.content.endswith("What is the launch code?")
    stats = controller.store.get_message(done.args[0]).stats
    assert stats["context_mode"] == "whole"
    assert stats["sources"]
    # the document now belongs to the message, and leaves the composer
    user_id = controller.conversations.messages()[0].id
    assert [a.name for a in controller.attachments.message_attachments([user_id])[user_id]] == ["notes.txt"]
    assert controller.attachments.pending_attachments() == []


def test_long_document_is_searched_and_cited(make_controller, qtbot, tmp_path: Path) -> None:
    engine = FakeEngine(["ok"], n_ctx=1024)
    controller = loaded(make_controller(engine, Settings(n_ctx=1024, max_tokens=128)), qtbot)
    (ready,) = attach(controller, qtbot, [long_document(tmp_path)])
    assert ready.meta["mode"] == "retrieval"
    with qtbot.waitSignal(controller.conversations.generation_finished, timeout=5000) as done:
        controller.conversations.send("What is the secret launch code?")
    sent = engine.seen[-1][-1].content
    assert NEEDLE in sent  # the needle was retrieved by BM25
    assert len(sent) < 4 * 1024  # …and only a few passages, not the whole document
    stats = controller.store.get_message(done.args[0]).stats
    assert stats["context_mode"] == "retrieval"
    assert any(NEEDLE in source["text"] for source in stats["sources"])


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("empty.txt", b"", "empty"),
        ("binary.txt", bytes(range(256)) * 40, "binary"),
        ("broken.pdf", b"%PDF-1.7\n1 0 obj <<", "damaged"),
        ("archive.xyz", b"PK\x03\x04", "supported"),
    ],
)
def test_bad_documents_are_refused_with_a_message(
    make_controller, qtbot, tmp_path, name, content, expected
) -> None:
    controller = loaded(make_controller(), qtbot)
    bad = tmp_path / name
    bad.write_bytes(content)
    removed: list[int] = []
    controller.attachments.attachment_removed.connect(removed.append)
    with qtbot.waitSignal(controller.attachments.attachment_failed, timeout=10_000) as failed:
        controller.attachments.attach_files([str(bad)])
    assert failed.args[0] == name
    assert expected in failed.args[1].lower()
    assert removed
    assert controller.attachments.pending_attachments() == []
    with qtbot.waitSignal(controller.conversations.generation_finished, timeout=5000):
        controller.conversations.send("still works?")


def test_image_needs_a_projector(make_controller, qtbot) -> None:
    controller = loaded(make_controller(), qtbot)
    ready: list[object] = []
    controller.attachments.attachment_updated.connect(lambda a: ready.append(a))
    controller.attachments.attach_image_data(png_bytes(64, 48, gradient=True), "screenshot.png")
    qtbot.waitUntil(lambda: bool(ready), timeout=10_000)
    image = ready[-1]
    assert image.meta["width"] == 64
    assert Path(image.path).is_file()
    with qtbot.waitSignal(controller.notices.error_occurred) as error:
        controller.conversations.send("What is this?")
    assert "no vision projector" in error.args[0]
    assert (
        len(controller.attachments.pending_attachments()) == 1
    )  # nothing lost: still waiting in the composer


def test_bad_image_is_refused(make_controller, qtbot) -> None:
    controller = loaded(make_controller(), qtbot)
    with qtbot.waitSignal(controller.attachments.attachment_failed, timeout=10_000) as failed:
        controller.attachments.attach_image_data(b"this is not a picture", "fake.png")
    assert failed.args[0] == "fake.png"
    assert failed.args[1]


def test_pending_attachments_survive_a_restart(make_controller, qtbot, tmp_path: Path, app_paths) -> None:
    controller = loaded(make_controller(), qtbot)
    doc = tmp_path / "keep.md"
    doc.write_text("# Keep me\n\nImportant text.\n", encoding="utf-8")
    attach(controller, qtbot, [doc])
    conversation_id = controller.conversations.current_conversation_id
    controller.shutdown()

    again = make_controller()
    restored: list[object] = []
    again.attachments.attachment_added.connect(restored.append)
    again.conversations.open_conversation(conversation_id)
    assert [a.name for a in restored] == ["keep.md"]
    assert restored[0].meta["state"] == "ready"


def test_removing_an_attachment_deletes_its_chunks(make_controller, qtbot, tmp_path: Path) -> None:
    controller = loaded(make_controller(), qtbot)
    (ready,) = attach(controller, qtbot, [long_document(tmp_path, 50)])
    index = controller.store.chunk_index()
    assert index.chunks(ready.id)
    controller.attachments.remove_attachment(ready.id)
    assert controller.attachments.pending_attachments() == []
    assert index.chunks(ready.id) == []


def test_attachment_left_processing_by_a_crash_is_read_again_on_reopen(
    make_controller, qtbot, tmp_path
) -> None:
    controller = loaded(make_controller(), qtbot)
    doc = tmp_path / "report.md"
    doc.write_text("# Report\n\nQuarterly figures.\n", encoding="utf-8")
    conversation = controller.store.create_conversation("crashed")
    stuck = controller.store.add_attachment(
        conversation.id, "document", "report.md", path=str(doc), meta={"state": "processing"}
    )
    lost = controller.store.add_attachment(
        conversation.id, "image", "pasted.png", meta={"state": "processing"}
    )
    ready: list[object] = []
    failed: list[tuple] = []
    controller.attachments.attachment_updated.connect(
        lambda a: a.meta.get("state") == "ready" and ready.append(a)
    )
    controller.attachments.attachment_failed.connect(lambda *args: failed.append(args))
    controller.conversations.open_conversation(conversation.id)
    qtbot.waitUntil(lambda: bool(ready), timeout=10_000)
    assert ready[0].id == stuck.id
    assert failed[0][0] == "pasted.png"
    assert "Attach it again" in failed[0][1]
    assert [a.id for a in controller.attachments.pending_attachments()] == [stuck.id]
    assert controller.store.get_attachment(lost.id) is None
