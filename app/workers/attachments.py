"""AttachmentController: pictures and documents waiting in the composer, read off the GUI thread.

Files are read by the :class:`~app.workers.ingest.IngestWorker` on its own thread; this controller
stores what it finds and keeps each attachment's state (processing, ready, locked) and, for
documents, the mode the turn builder chose for them (whole or retrieval, with the reason).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import QObject, QThread, Signal, Slot

from app.core.engine.vision import image_token_estimate
from app.core.store import AttachmentState
from app.workers.ingest import IngestWorker, is_image_path

if TYPE_CHECKING:
    from app.config import AppPaths
    from app.core.store import Attachment, Store
    from app.core.turns import Turn
    from app.workers.conversations import ConversationController
    from app.workers.ingest import DocumentResult, ImageResult
    from app.workers.models import ModelController
    from app.workers.preferences import Notices

log = logging.getLogger(__name__)


class AttachmentController(QObject):
    """Signals:
    attachment_added(object): an Attachment waiting in the composer (meta["state"]: processing|ready).
    attachment_updated(object): the Attachment after ingest (thumbnail, pages, tokens, mode…).
    attachment_removed(int): attachment id (removed, or sent with a message).
    attachment_progress(int, float): attachment id, 0..1 while a document is read.
    attachment_failed(str, str, int): file name, human message, attachment id (0 if none) — when
        the id is not 0 the attachment stays, waiting for a password (meta["needs_password"]).
    """

    attachment_added = Signal(object)
    attachment_updated = Signal(object)
    attachment_removed = Signal(int)
    attachment_progress = Signal(int, float)
    attachment_failed = Signal(str, str, int)

    # commands to the ingest worker (queued across threads)
    ingest_image_requested = Signal(int, object, str)
    ingest_document_requested = Signal(int, str, object)

    def __init__(
        self,
        store: Store,
        paths: AppPaths,
        notices: Notices,
        conversations: ConversationController,
        models: ModelController,
    ) -> None:
        super().__init__()
        self._store = store
        self._notices = notices
        self._conversations = conversations
        self._models = models
        self._jobs: dict[int, int] = {}  # ingest job id -> attachment id
        self._job_seq = 0
        self._thread = QThread()
        self._thread.setObjectName("ingest")
        self._ingest = IngestWorker(paths.images_dir)
        self._ingest.moveToThread(self._thread)
        self.ingest_image_requested.connect(self._ingest.ingest_image)
        self.ingest_document_requested.connect(self._ingest.ingest_document)
        self._ingest.progress.connect(self._on_ingest_progress)
        self._ingest.image_ready.connect(self._on_ingest_image_ready)
        self._ingest.document_ready.connect(self._on_ingest_document_ready)
        self._ingest.failed.connect(self._on_ingest_failed)
        self._ingest.cancelled.connect(self._on_ingest_cancelled)
        self._thread.start()
        conversations.conversation_opened.connect(self._on_conversations_conversation_opened)
        conversations.attachments_sent.connect(self._on_conversations_attachments_sent)
        conversations.turn_decided.connect(self._on_conversations_turn_decided)

    def pending_attachments(self) -> list[Attachment]:
        """What waits in the composer of the current conversation."""
        current = self._conversations.current_conversation_id
        return self._store.pending_attachments(current) if current else []

    def message_attachments(self, message_ids: list[int]) -> dict[int, list[Attachment]]:
        return self._store.message_attachments(message_ids)

    def attach_files(self, paths: list[str]) -> None:
        """Images and documents dropped, pasted as files or picked: read off the GUI thread."""
        for raw in paths:
            path = Path(raw)
            if not path.is_file():
                self.attachment_failed.emit(path.name or raw, f"{path.name or raw} is not a file.", 0)
                continue
            kind = "image" if is_image_path(path) else "document"
            attachment = self._store.add_attachment(
                self._conversations.ensure_conversation(),
                kind,
                path.name,
                path=str(path),
                meta={"state": AttachmentState.PROCESSING},
            )
            self.attachment_added.emit(attachment)
            self._read(attachment, path)

    def attach_image_data(self, data: bytes, name: str = "pasted image.png") -> None:
        """A screenshot pasted from the clipboard, or an image dragged from a browser."""
        attachment = self._store.add_attachment(
            self._conversations.ensure_conversation(),
            "image",
            name,
            meta={"state": AttachmentState.PROCESSING},
        )
        self.attachment_added.emit(attachment)
        self.ingest_image_requested.emit(self._next_job(attachment.id), bytes(data), name)

    def unlock_document(self, attachment_id: int, password: str) -> None:
        attachment = self._store.get_attachment(attachment_id)
        if attachment is None or attachment.kind != "document":
            return
        self._store.update_attachment(attachment_id, meta={"state": AttachmentState.PROCESSING})
        self._emit_updated(attachment_id)
        self.ingest_document_requested.emit(self._next_job(attachment_id), attachment.path, password)

    def remove_attachment(self, attachment_id: int) -> None:
        for job, target in list(self._jobs.items()):
            if target == attachment_id:
                self._ingest.cancel(job)
                del self._jobs[job]
        attachment = self._store.get_attachment(attachment_id)
        if attachment is not None and attachment.message_id is None:
            self._store.delete_attachment(attachment_id)
        self.attachment_removed.emit(attachment_id)
        self._conversations.refresh_preview()

    def shutdown(self) -> None:
        for job in list(self._jobs):
            self._ingest.cancel(job)
        self._jobs.clear()  # results still queued from the ingest thread are ignored from now on
        if self._thread.isRunning():
            self._thread.quit()
            if not self._thread.wait(15000):
                log.error("ingest thread did not stop within 15 s")

    # -- reading ----------------------------------------------------------------------------
    def _read(self, attachment: Attachment, source: Path) -> None:
        job = self._next_job(attachment.id)
        if attachment.kind == "image":
            self.ingest_image_requested.emit(job, str(source), attachment.name)
        else:
            self.ingest_document_requested.emit(job, str(source), None)

    def _resume(self, attachment: Attachment) -> None:
        """An attachment left half-read (the app was closed or killed while ingesting): read the
        original file again, or drop it with a message when it cannot be read again."""
        source = Path(attachment.path) if attachment.path else None
        if source is None or not source.is_file():
            self._store.delete_attachment(attachment.id)
            self.attachment_failed.emit(
                attachment.name,
                f"{attachment.name} was still being read when Scout Chat closed, and the original is no "
                "longer available. Attach it again.",
                0,
            )
            return
        self.attachment_added.emit(attachment)
        self._read(attachment, source)

    def _next_job(self, attachment_id: int) -> int:
        self._job_seq += 1
        self._jobs[self._job_seq] = attachment_id
        return self._job_seq

    def _job_attachment(self, job: int, *, finished: bool = True) -> Attachment | None:
        attachment_id = self._jobs.pop(job, None) if finished else self._jobs.get(job)
        return None if attachment_id is None else self._store.get_attachment(attachment_id)

    def _emit_updated(self, attachment_id: int) -> None:
        attachment = self._store.get_attachment(attachment_id)
        if attachment is not None:
            self.attachment_updated.emit(attachment)

    # -- conversation events ----------------------------------------------------------------
    @Slot(int, list)
    def _on_conversations_conversation_opened(self, conversation_id: int, _messages: list[object]) -> None:
        if not conversation_id:
            return
        for attachment in self._store.pending_attachments(conversation_id):
            if (
                attachment.meta.get("state") == AttachmentState.PROCESSING
                and attachment.id not in self._jobs.values()
            ):
                self._resume(attachment)  # the app stopped while reading it
                continue
            self.attachment_added.emit(attachment)  # what waited in the composer is still there

    @Slot(list)
    def _on_conversations_attachments_sent(self, attachment_ids: list[int]) -> None:
        for attachment_id in attachment_ids:
            self.attachment_removed.emit(attachment_id)  # leaves the composer

    @Slot(object)
    def _on_conversations_turn_decided(self, turn: Turn) -> None:
        """Each document's chip says how the turn builder sends it, and why."""
        decision = turn.documents
        if decision is None:
            return
        for attachment_id in decision.doc_ids:
            attachment = self._store.get_attachment(attachment_id)
            if attachment is None:
                continue
            mode = {"mode": decision.mode.value, "mode_reason": decision.reason}
            if {k: attachment.meta.get(k) for k in mode} != mode:
                self._store.update_attachment(attachment_id, meta={**attachment.meta, **mode})
                self._emit_updated(attachment_id)

    # -- ingest results ---------------------------------------------------------------------
    @Slot(int, int, int)
    def _on_ingest_progress(self, job: int, done: int, total: int) -> None:
        attachment_id = self._jobs.get(job)
        if attachment_id is not None and total > 0:
            self.attachment_progress.emit(attachment_id, done / total)

    @Slot(int, object)
    def _on_ingest_image_ready(self, job: int, result: ImageResult) -> None:
        attachment = self._job_attachment(job)
        if attachment is None:
            return
        meta = {
            "state": AttachmentState.READY,
            "width": result.width,
            "height": result.height,
            "original_width": result.original_width,
            "original_height": result.original_height,
            "note": result.note,
            "tokens": image_token_estimate(result.width, result.height),
        }
        self._store.update_attachment(attachment.id, meta=meta, path=result.path, sha256=result.sha256)
        self._emit_updated(attachment.id)
        info = self._models.model_info
        if info is not None and not info.has_vision:
            self._notices.info_message.emit(
                "The loaded model has no vision projector: download it in the model manager "
                "to ask about images."
            )
        self._conversations.refresh_preview()

    @Slot(int, object)
    def _on_ingest_document_ready(self, job: int, result: DocumentResult) -> None:
        attachment = self._job_attachment(job)
        if attachment is None:
            return
        meta = {
            "state": AttachmentState.READY,
            "kind": result.kind,
            "pages": result.pages,
            "chars": result.chars,
            "tokens": result.tokens,
            "note": result.note,
        }
        self._store.finish_document(attachment.id, result.chunks, meta)
        self._emit_updated(attachment.id)
        self._conversations.refresh_preview()  # the turn builder decides whole or retrieval

    @Slot(int, str, bool)
    def _on_ingest_failed(self, job: int, message: str, needs_password: bool) -> None:
        attachment = self._job_attachment(job)
        if attachment is None:
            return
        if needs_password:
            self._store.update_attachment(
                attachment.id, meta={"state": AttachmentState.LOCKED, "needs_password": True}
            )
            self._emit_updated(attachment.id)
            self.attachment_failed.emit(attachment.name, message, attachment.id)
            return
        self._store.delete_attachment(attachment.id)
        self.attachment_removed.emit(attachment.id)
        self.attachment_failed.emit(attachment.name, message, 0)

    @Slot(int)
    def _on_ingest_cancelled(self, job: int) -> None:
        self._jobs.pop(job, None)
