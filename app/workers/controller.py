"""ChatController: the GUI-thread brain between the widgets, the store and the inference worker.

It owns no widgets. Views call its methods; it answers with signals carrying plain data. It
mutates the store and forwards streamed text, ignoring results whose ``gen_id`` is stale.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QObject, QThread, Signal, Slot

from app.config import AppPaths, Settings, save_settings
from app.core.chunking import estimate_tokens
from app.core.context import dropped_notice, reply_reserve
from app.core.engine.vision import image_token_estimate
from app.core.heap import freeze_long_lived
from app.core.images import data_uri, load_stored_image
from app.core.planner import LoadRequest, PlanOverrides
from app.core.retrieval import DocumentChunks, compose_document_context
from app.core.store import make_title
from app.core.types import ChatMessage, GenerationStats, LoadParams, ModelInfo, Role, SamplingParams
from app.workers.gc_guard import MainThreadGarbageCollector
from app.workers.inference import LlamaWorker
from app.workers.ingest import IngestWorker, is_image_path

if TYPE_CHECKING:
    from collections.abc import Callable

    from app.core.planner import Plan, PlannedLoad
    from app.core.ports import Engine
    from app.core.store import Attachment, Conversation, Store, StoredMessage
    from app.workers.ingest import DocumentResult, ImageResult

log = logging.getLogger(__name__)

MAX_IMAGES_TESTED = 5  # Meta tested Scout with up to 5 images per prompt
MAX_SOURCES_KEPT = 40  # retrieved passages remembered per answer (citations, "what the model saw")
KV_SAVE_MIN_PROMPT_TOKENS = 2048  # after a prompt this long, keep its KV cache on disk
PARTIAL_SAVE_INTERVAL_S = 0.5  # the partial answer reaches the database at least once a second
FALLBACK_N_CTX = 8192  # without a planner, "automatic" context means this


class ChatController(QObject):
    """Signals:
    model_load_started(str): model path.
    model_load_progress(float): 0..1.
    model_loaded(object): ModelInfo.
    model_load_failed(str, str): human message, detail.
    plan_changed(object): the offload Plan chosen for the model being loaded (planner.Plan).
    conversations_changed(): the sidebar should reload ``conversations()``.
    conversation_updated(object): a Conversation that just had activity (an answer): it moves to
        the top of the list, without reloading the list (users keep thousands of conversations).
    conversation_opened(int, list): conversation id, list[StoredMessage].
    message_added(object): StoredMessage.
    message_removed(int): message id.
    tokens_streamed(int, str): assistant message id, text delta.
    generation_finished(int, object): message id, GenerationStats.
    generation_failed(int, str, str): message id, human message, detail.
    prompt_progress(float): 0..1 while a long prompt is processed.
    context_changed(int, int): tokens used, n_ctx.
    busy_changed(bool): True while generating.
    error_occurred(str): a human message for the user.
    info_message(str): a passing note for the status bar (e.g. "image turns re-read the history").
    attachment_added(object): an Attachment waiting in the composer (meta["state"]: processing|ready).
    attachment_updated(object): the Attachment after ingest (thumbnail, pages, tokens, mode…).
    attachment_removed(int): attachment id.
    attachment_progress(int, float): attachment id, 0..1 while a document is read.
    attachment_failed(str, str, int): file name, human message, attachment id (0 if none) — when
        the id is not 0 the attachment stays, waiting for a password (meta["needs_password"]).
    """

    model_load_started = Signal(str)
    model_load_progress = Signal(float)
    model_loaded = Signal(object)
    model_load_failed = Signal(str, str)
    plan_changed = Signal(object)
    conversations_changed = Signal()
    conversation_updated = Signal(object)
    conversation_opened = Signal(int, list)
    message_added = Signal(object)
    message_removed = Signal(int)
    tokens_streamed = Signal(int, str)
    generation_finished = Signal(int, object)
    generation_failed = Signal(int, str, str)
    prompt_progress = Signal(float)
    context_changed = Signal(int, int)
    busy_changed = Signal(bool)
    error_occurred = Signal(str)
    info_message = Signal(str)
    attachment_added = Signal(object)
    attachment_updated = Signal(object)
    attachment_removed = Signal(int)
    attachment_progress = Signal(int, float)
    attachment_failed = Signal(str, str, int)

    # commands to the worker (queued across threads)
    load_requested = Signal(object)
    generate_requested = Signal(int, list, object, int)
    count_requested = Signal(int, list)
    save_session_requested = Signal(int, str)
    restore_session_requested = Signal(int, str)
    ingest_image_requested = Signal(int, object, str)
    ingest_document_requested = Signal(int, str, object)

    def __init__(
        self,
        store: Store,
        paths: AppPaths,
        settings: Settings,
        engine_factory: Callable[[], Engine],
        parent: QObject | None = None,
        *,
        planner: Callable[[LoadRequest], PlannedLoad] | None = None,
    ) -> None:
        super().__init__(parent)
        self._store = store
        self._paths = paths
        self._settings = settings
        self._model_info: ModelInfo | None = None
        self._conversation_id: int | None = None
        self._gen_id = 0
        self._count_id = 0
        self._streaming_message: int | None = None
        self._streaming_text: list[str] = []
        self._last_saved = 0.0
        self._loading = False
        self._pending_path = ""

        self._thread = QThread()
        self._thread.setObjectName("inference")
        self._plan: Plan | None = None
        self._documents: ComposedDocuments | None = None
        self._jobs: dict[int, int] = {}  # ingest job id -> attachment id
        self._job_seq = 0
        self._planner = planner
        self._overrides: PlanOverrides | None = None
        self._worker = LlamaWorker(engine_factory, planner)
        self._worker.moveToThread(self._thread)
        self.load_requested.connect(self._worker.load_model)
        self.generate_requested.connect(self._worker.generate)
        self.count_requested.connect(self._worker.count_tokens)
        self.save_session_requested.connect(self._worker.save_session)
        self.restore_session_requested.connect(self._worker.restore_session)
        self._worker.load_progress.connect(self._on_worker_load_progress)
        self._worker.plan_ready.connect(self._on_worker_plan_ready)
        self._worker.load_notice.connect(self._on_worker_load_notice)
        self._worker.model_loaded.connect(self._on_worker_model_loaded)
        self._worker.load_failed.connect(self._on_worker_load_failed)
        self._worker.context_fitted.connect(self._on_worker_context_fitted)
        self._worker.prompt_progress.connect(self._on_worker_prompt_progress)
        self._worker.tokens_generated.connect(self._on_worker_tokens_generated)
        self._worker.generation_finished.connect(self._on_worker_generation_finished)
        self._worker.generation_failed.connect(self._on_worker_generation_failed)
        self._worker.tokens_counted.connect(self._on_worker_tokens_counted)
        self._thread.start()

        self._ingest_thread = QThread()
        self._ingest_thread.setObjectName("ingest")
        self._ingest = IngestWorker(paths.images_dir)
        self._ingest.moveToThread(self._ingest_thread)
        self.ingest_image_requested.connect(self._ingest.ingest_image)
        self.ingest_document_requested.connect(self._ingest.ingest_document)
        self._ingest.progress.connect(self._on_ingest_progress)
        self._ingest.image_ready.connect(self._on_ingest_image_ready)
        self._ingest.document_ready.connect(self._on_ingest_document_ready)
        self._ingest.failed.connect(self._on_ingest_failed)
        self._ingest.cancelled.connect(self._on_ingest_cancelled)
        self._ingest_thread.start()
        self._chunks = store.chunk_index()
        self._gc = MainThreadGarbageCollector(self)  # worker threads must never finalize Qt objects
        self._gc.start()

    # -- state ------------------------------------------------------------------------------
    @property
    def settings(self) -> Settings:
        return self._settings

    @property
    def model_info(self) -> ModelInfo | None:
        return self._model_info

    @property
    def overrides(self) -> PlanOverrides | None:
        """The Advanced plan overrides the current model was loaded with (None: automatic)."""
        return self._overrides

    @property
    def plan(self) -> Plan | None:
        """The offload plan of the loaded (or loading) model, when the planner made one."""
        return self._plan

    @property
    def current_conversation_id(self) -> int | None:
        return self._conversation_id

    @property
    def is_busy(self) -> bool:
        return self._streaming_message is not None

    @property
    def is_loading(self) -> bool:
        return self._loading

    @property
    def store(self) -> Store:
        return self._store

    def conversations(self, filter_text: str = "") -> list[Conversation]:
        return self._store.list_conversations(filter_text)

    def messages(self) -> list[StoredMessage]:
        if self._conversation_id is None:
            return []
        return self._store.messages(self._conversation_id)

    # -- settings ---------------------------------------------------------------------------
    def update_settings(self, settings: Settings) -> None:
        old = self._settings
        self._settings = settings
        try:
            save_settings(self._paths, settings)
        except OSError as exc:
            self.error_occurred.emit(f"Your settings could not be saved: {exc.strerror or exc}")
        reload_needed = (old.n_ctx, old.n_threads) != (settings.n_ctx, settings.n_threads)
        if reload_needed and self._model_info is not None and not self.is_busy and not self._loading:
            self.load_model(str(self._model_info.path), self._overrides)

    def _remember(self, **changes: Any) -> None:
        self._settings = self._settings.replace(**changes)
        try:
            save_settings(self._paths, self._settings)
        except OSError:
            log.exception("could not save settings")

    # -- model ------------------------------------------------------------------------------
    def load_params_for(self, path: str, overrides: PlanOverrides | None = None) -> LoadParams | LoadRequest:
        """A LoadRequest for the planner (context target from settings, shrunk to fit, unless the
        user's Advanced ``overrides`` fix it), or plain LoadParams when no planner is configured."""
        s = self._settings
        if self._planner is not None:
            if overrides is None:
                overrides = PlanOverrides(n_ctx_target=s.n_ctx or None)
            elif overrides.n_ctx is None and overrides.n_ctx_target is None and s.n_ctx:
                overrides = dataclasses.replace(overrides, n_ctx_target=s.n_ctx)
            return LoadRequest(Path(path), overrides, n_threads=s.n_threads or None)
        n_ctx = s.n_ctx or FALLBACK_N_CTX
        return LoadParams(model_path=Path(path), n_ctx=n_ctx, n_threads=s.n_threads or None)

    def load_model(self, path: str, overrides: PlanOverrides | None = None) -> None:
        """Load (or reload) a model; ``overrides`` are the Advanced settings of the plan panel."""
        if self.is_busy:
            self.stop()
        self._overrides = overrides
        try:
            params = self.load_params_for(path, overrides)
        except ValueError as exc:
            self.model_load_failed.emit(str(exc), "")
            return
        self._loading = True
        self._pending_path = path
        self._worker.load_cancel_event.clear()
        self.model_load_started.emit(path)
        self.load_requested.emit(params)

    def cancel_load(self) -> None:
        self._worker.load_cancel_event.set()

    @Slot(float)
    def _on_worker_load_progress(self, fraction: float) -> None:
        self.model_load_progress.emit(fraction)

    @Slot(object)
    def _on_worker_plan_ready(self, plan: Plan) -> None:
        self._plan = plan
        self.plan_changed.emit(plan)

    @Slot(str)
    def _on_worker_load_notice(self, text: str) -> None:
        self.error_occurred.emit(text)

    @Slot(object)
    def _on_worker_model_loaded(self, info: ModelInfo) -> None:
        self._loading = False
        self._model_info = info
        self._remember(last_model=str(info.path))
        self.model_loaded.emit(info)
        freeze_long_lived()  # llama_cpp's modules and the model's Python side live until the next load
        if info.chat_template_note:
            self.error_occurred.emit(info.chat_template_note)
        if self._conversation_id is not None:
            self._restore_kv(self._conversation_id)
        self._request_context_count()

    @Slot(str, str)
    def _on_worker_load_failed(self, message: str, detail: str) -> None:
        self._loading = False
        self._model_info = None
        self.model_load_failed.emit(message, detail)

    # -- conversations ----------------------------------------------------------------------
    def new_conversation(self) -> None:
        if self.is_busy:
            self.stop()
        self._conversation_id = None
        self.conversation_opened.emit(0, [])
        self.context_changed.emit(0, self._n_ctx())

    def open_conversation(self, conversation_id: int) -> None:
        conversation = self._store.get_conversation(conversation_id)
        if conversation is None:
            self.error_occurred.emit("That conversation no longer exists.")
            return
        if self.is_busy and conversation_id != self._conversation_id:
            self.stop()
        self._conversation_id = conversation_id
        self._remember(last_conversation=conversation_id)
        self.conversation_opened.emit(conversation_id, self._store.messages(conversation_id))
        for attachment in self._store.pending_attachments(conversation_id):
            if attachment.meta.get("state") == "processing" and not self._is_ingesting(attachment.id):
                self._resume_ingest(attachment)  # the app stopped while reading it
                continue
            self.attachment_added.emit(attachment)  # what waited in the composer is still there
        self._restore_kv(conversation_id)
        self._request_context_count()

    def _restore_kv(self, conversation_id: int) -> None:
        """Reopening a long-document conversation reads its KV cache back instead of the prompt."""
        if self._model_info is not None and not self._loading:
            self.restore_session_requested.emit(conversation_id, str(self._paths.kv_state_dir))

    def rename_conversation(self, conversation_id: int, title: str) -> None:
        title = " ".join(title.split())
        if not title:
            return
        self._store.rename_conversation(conversation_id, title[:200])
        self.conversations_changed.emit()

    def delete_conversation(self, conversation_id: int) -> None:
        if conversation_id == self._conversation_id:
            if self.is_busy:
                self.stop()
            self._conversation_id = None
            self.conversation_opened.emit(0, [])
        self._store.delete_conversation(conversation_id)
        for stale in self._paths.kv_state_files(conversation_id):
            stale.unlink(missing_ok=True)
        self.conversations_changed.emit()

    def restore_session(self) -> None:
        """Reopen the last conversation and reload the last model (called once at start-up)."""
        last = self._settings.last_conversation
        if last and self._store.get_conversation(last) is not None:
            self.open_conversation(last)
        if self._settings.last_model and Path(self._settings.last_model).exists():
            self.load_model(self._settings.last_model)

    # -- chatting ---------------------------------------------------------------------------
    def _n_ctx(self) -> int:
        return self._model_info.n_ctx if self._model_info else self._settings.n_ctx

    def _sampling(self) -> SamplingParams:
        s = self._settings
        return SamplingParams(
            temperature=s.temperature, top_p=s.top_p, min_p=s.min_p, max_tokens=s.max_tokens
        )

    def _model_messages(
        self, stored: list[StoredMessage], documents: ComposedDocuments | None = None
    ) -> list[ChatMessage]:
        """What the model sees: system prompt, the turns, images as data: URIs, documents composed
        into the user message that carried them (whole) or into the question (retrieval)."""
        out: list[ChatMessage] = []
        if self._settings.system_prompt.strip():
            out.append(ChatMessage.system(self._settings.system_prompt.strip()))
        attachments = self._store.message_attachments([m.id for m in stored if m.role == Role.USER.value])
        for m in stored:
            if m.role not in (Role.USER.value, Role.ASSISTANT.value):
                continue
            if m.role == Role.ASSISTANT.value and (m.status == "streaming" or not m.content.strip()):
                continue
            content = m.content
            if documents is not None and m.id == documents.host_message_id and documents.text:
                content = f"{documents.text}\n\n{content}"
            images = tuple(
                uri
                for a in attachments.get(m.id, [])
                if a.kind == "image" and (uri := _image_uri(a)) is not None
            )
            out.append(ChatMessage(m.role, content, images if m.role == Role.USER.value else ()))
        return out

    def _compose_documents(
        self, stored: list[StoredMessage], sampling: SamplingParams
    ) -> ComposedDocuments | None:
        """Whole documents when they fit the context budget, else retrieved passages (BM25)."""
        user_ids = [m.id for m in stored if m.role == Role.USER.value]
        by_message = self._store.message_attachments(user_ids)
        docs = [(mid, a) for mid in user_ids for a in by_message.get(mid, []) if a.kind == "document"]
        docs = [(mid, a) for mid, a in docs if a.meta.get("state") == "ready"]
        if not docs or self._model_info is None:
            return None
        n_ctx = self._model_info.n_ctx
        history = sum(estimate_tokens(m.content) + 8 for m in stored) + estimate_tokens(
            self._settings.system_prompt
        )
        budget = max(256, n_ctx - reply_reserve(n_ctx, sampling.max_tokens) - history - 64)
        chunks = [DocumentChunks(a.id, a.name, tuple(self._chunks.chunks(a.id))) for _mid, a in docs]
        question = next((m.content for m in reversed(stored) if m.role == Role.USER.value), "")
        composed = compose_document_context(chunks, question, budget, index=self._chunks)
        # Whole documents sit at a stable place (the first message that brought one), so later
        # turns reuse the KV cache; retrieved passages change with each question and go with it.
        host = docs[0][0] if composed.mode == "whole" else user_ids[-1]
        sources = [
            {"doc": p.doc_name, "anchor": p.anchor, "page": p.page, "text": p.text[:4000]}
            for p in composed.citations[:MAX_SOURCES_KEPT]
        ]
        return ComposedDocuments(composed.text, composed.mode, host, composed.tokens, sources)

    def send(self, text: str) -> None:
        text = text.strip()
        if not text:
            return
        if self._model_info is None:
            self.error_occurred.emit("Load a model first: File → Open model file…")
            return
        if self.is_busy:
            return
        pending = self._store.pending_attachments(self._conversation_id) if self._conversation_id else []
        if any(a.meta.get("state") != "ready" for a in pending):
            self.error_occurred.emit("Wait until the attachments are ready (or remove them), then send.")
            return
        images = [a for a in pending if a.kind == "image"]
        if images and not self._model_info.has_vision:
            self.error_occurred.emit(
                "This model has no vision projector, so it cannot see images. Download the projector "
                "(mmproj) for it in the model manager, or remove the images."
            )
            return
        if self._conversation_id is None:
            conversation = self._start_conversation(make_title(text))
            self.conversation_opened.emit(conversation.id, [])
        else:
            conversation = self._store.get_conversation(self._conversation_id)
            if conversation is not None and conversation.title == "New chat":
                self._store.rename_conversation(conversation.id, make_title(text))
                self._announce(conversation.id)
        user = self._store.add_message(
            self._conversation_id, Role.USER.value, text, model=self._model_info.name
        )
        if pending:
            self._store.link_attachments([a.id for a in pending], user.id)
            for a in pending:
                self.attachment_removed.emit(a.id)  # leaves the composer, now shown with the message
        if len(images) > MAX_IMAGES_TESTED:
            self.info_message.emit(
                f"{len(images)} images in one message: Meta tested Scout with up to {MAX_IMAGES_TESTED}; "
                "answers may get less reliable."
            )
        self.message_added.emit(user)
        self._start_generation()

    def _start_generation(self) -> None:
        assert self._conversation_id is not None
        assert self._model_info is not None
        history = self._store.messages(self._conversation_id)
        sampling = self._sampling()
        documents = self._compose_documents(history, sampling)
        messages = self._model_messages(history, documents)
        if any(m.images for m in messages):
            self.info_message.emit(
                "This conversation has images: each answer re-reads the whole conversation "
                "(the vision path cannot reuse the cache), so it starts more slowly."
            )
        self._documents = documents
        placeholder = self._store.add_message(
            self._conversation_id,
            Role.ASSISTANT.value,
            "",
            model=self._model_info.name,
            sampling=_sampling_dict(sampling),
            status="streaming",
        )
        self._gen_id += 1
        self._streaming_message = placeholder.id
        self._streaming_text = []
        self._last_saved = time.monotonic()
        self._worker.cancel_event.clear()
        self.message_added.emit(placeholder)
        self.busy_changed.emit(True)
        reserve = reply_reserve(self._model_info.n_ctx, sampling.max_tokens)
        self.generate_requested.emit(self._gen_id, messages, sampling, reserve)

    def stop(self) -> None:
        self._worker.cancel_event.set()

    def regenerate(self) -> None:
        if self.is_busy or self._conversation_id is None or self._model_info is None:
            return
        stored = self._store.messages(self._conversation_id)
        last_user = next((m for m in reversed(stored) if m.role == Role.USER.value), None)
        if last_user is None:
            return
        tail = [m for m in stored if m.id > last_user.id]
        if tail:
            self._store.delete_messages_from(self._conversation_id, tail[0].id)
            for m in tail:
                self.message_removed.emit(m.id)
        self._start_generation()

    def edit_last_user_message(self, text: str) -> None:
        text = text.strip()
        if not text or self.is_busy or self._conversation_id is None:
            return
        stored = self._store.messages(self._conversation_id)
        last_user = next((m for m in reversed(stored) if m.role == Role.USER.value), None)
        if last_user is None:
            return
        self._store.delete_messages_from(self._conversation_id, last_user.id)
        for m in stored:
            if m.id >= last_user.id:
                self.message_removed.emit(m.id)
        self.send(text)

    # -- attachments ------------------------------------------------------------------------
    def _ensure_conversation(self) -> int:
        if self._conversation_id is None:
            self._start_conversation("New chat")
        return self._conversation_id

    def _start_conversation(self, title: str) -> Conversation:
        """Create the current conversation and put it in the sidebar (one row, not a reload)."""
        model = self._model_info.name if self._model_info else ""
        conversation = self._store.create_conversation(title, model)
        self._conversation_id = conversation.id
        self._remember(last_conversation=conversation.id)
        self.conversation_updated.emit(conversation)
        return conversation

    def _announce(self, conversation_id: int) -> None:
        """Tell the sidebar that a conversation changed (it moves to the top as one row)."""
        conversation = self._store.get_conversation(conversation_id)
        if conversation is not None:
            self.conversation_updated.emit(conversation)

    def pending_attachments(self) -> list[Attachment]:
        return self._store.pending_attachments(self._conversation_id) if self._conversation_id else []

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
                self._ensure_conversation(), kind, path.name, path=str(path), meta={"state": "processing"}
            )
            self.attachment_added.emit(attachment)
            job = self._next_job(attachment.id)
            if kind == "image":
                self.ingest_image_requested.emit(job, str(path), path.name)
            else:
                self.ingest_document_requested.emit(job, str(path), None)

    def attach_image_data(self, data: bytes, name: str = "pasted image.png") -> None:
        """A screenshot pasted from the clipboard, or an image dragged from a browser."""
        attachment = self._store.add_attachment(
            self._ensure_conversation(), "image", name, meta={"state": "processing"}
        )
        self.attachment_added.emit(attachment)
        self.ingest_image_requested.emit(self._next_job(attachment.id), bytes(data), name)

    def unlock_document(self, attachment_id: int, password: str) -> None:
        attachment = self._store.get_attachment(attachment_id)
        if attachment is None or attachment.kind != "document":
            return
        self._store.update_attachment(attachment_id, meta={"state": "processing"})
        self.attachment_updated.emit(self._store.get_attachment(attachment_id))
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

    def _is_ingesting(self, attachment_id: int) -> bool:
        return attachment_id in self._jobs.values()

    def _resume_ingest(self, attachment: Attachment) -> None:
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
        job = self._next_job(attachment.id)
        if attachment.kind == "image":
            self.ingest_image_requested.emit(job, str(source), attachment.name)
        else:
            self.ingest_document_requested.emit(job, str(source), None)

    def _next_job(self, attachment_id: int) -> int:
        self._job_seq += 1
        self._jobs[self._job_seq] = attachment_id
        return self._job_seq

    def _job_attachment(self, job: int, *, finished: bool = True) -> Attachment | None:
        attachment_id = self._jobs.pop(job, None) if finished else self._jobs.get(job)
        return None if attachment_id is None else self._store.get_attachment(attachment_id)

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
            "state": "ready",
            "width": result.width,
            "height": result.height,
            "original_width": result.original_width,
            "original_height": result.original_height,
            "note": result.note,
            "tokens": image_token_estimate(result.width, result.height),
        }
        self._store.update_attachment(attachment.id, meta=meta, path=result.path, sha256=result.sha256)
        self.attachment_updated.emit(self._store.get_attachment(attachment.id))
        if self._model_info is not None and not self._model_info.has_vision:
            self.info_message.emit(
                "The loaded model has no vision projector: download it in the model manager "
                "to ask about images."
            )

    @Slot(int, object)
    def _on_ingest_document_ready(self, job: int, result: DocumentResult) -> None:
        attachment = self._job_attachment(job)
        if attachment is None:
            return
        self._chunks.add_document(attachment.id, result.chunks)
        n_ctx = self._model_info.n_ctx if self._model_info else self._settings.n_ctx or 8192
        budget = n_ctx - reply_reserve(n_ctx, self._settings.max_tokens)
        meta = {
            "state": "ready",
            "kind": result.kind,
            "pages": result.pages,
            "chars": result.chars,
            "tokens": result.tokens,
            "note": result.note,
            "mode": "whole" if result.tokens <= budget else "retrieval",
        }
        self._store.update_attachment(attachment.id, meta=meta)
        self.attachment_updated.emit(self._store.get_attachment(attachment.id))

    @Slot(int, str, bool)
    def _on_ingest_failed(self, job: int, message: str, needs_password: bool) -> None:
        attachment = self._job_attachment(job)
        if attachment is None:
            return
        if needs_password:
            self._store.update_attachment(attachment.id, meta={"state": "locked", "needs_password": True})
            self.attachment_updated.emit(self._store.get_attachment(attachment.id))
            self.attachment_failed.emit(attachment.name, message, attachment.id)
            return
        self._store.delete_attachment(attachment.id)
        self.attachment_removed.emit(attachment.id)
        self.attachment_failed.emit(attachment.name, message, 0)

    @Slot(int)
    def _on_ingest_cancelled(self, job: int) -> None:
        self._jobs.pop(job, None)

    # -- worker results ---------------------------------------------------------------------
    @Slot(int, int, int)
    def _on_worker_context_fitted(self, gen_id: int, prompt_tokens: int, dropped: int) -> None:
        if gen_id != self._gen_id or self._streaming_message is None or self._conversation_id is None:
            return
        self.context_changed.emit(prompt_tokens, self._n_ctx())
        if dropped <= 0:
            return
        # Put the marker above the answer: replace the (still empty) placeholder after it.
        old = self._store.get_message(self._streaming_message)
        self._store.delete_messages_from(self._conversation_id, self._streaming_message)
        self.message_removed.emit(self._streaming_message)
        notice = self._store.add_message(self._conversation_id, "notice", dropped_notice(dropped))
        self.message_added.emit(notice)
        placeholder = self._store.add_message(
            self._conversation_id,
            Role.ASSISTANT.value,
            "",
            model=old.model if old else "",
            sampling=old.sampling if old else None,
            status="streaming",
        )
        self._streaming_message = placeholder.id
        self.message_added.emit(placeholder)

    @Slot(int, int, int)
    def _on_worker_prompt_progress(self, gen_id: int, done: int, total: int) -> None:
        if gen_id == self._gen_id and total > 0:
            self.prompt_progress.emit(done / total)

    @Slot(int, str)
    def _on_worker_tokens_generated(self, gen_id: int, text: str) -> None:
        if gen_id != self._gen_id or self._streaming_message is None:
            return
        self._streaming_text.append(text)
        self.tokens_streamed.emit(self._streaming_message, text)
        now = time.monotonic()
        if now - self._last_saved >= PARTIAL_SAVE_INTERVAL_S:
            self._store.update_message(self._streaming_message, content="".join(self._streaming_text))
            self._last_saved = now

    @Slot(int, object)
    def _on_worker_generation_finished(self, gen_id: int, stats: GenerationStats) -> None:
        if gen_id != self._gen_id or self._streaming_message is None:
            return
        message_id = self._streaming_message
        status = "cancelled" if stats.finish_reason == "cancelled" else "complete"
        saved_stats = _stats_dict(stats)
        if self._documents is not None:
            saved_stats["context_mode"] = self._documents.mode
            saved_stats["document_tokens"] = self._documents.tokens
            saved_stats["sources"] = self._documents.sources
        self._store.update_message(
            message_id, content="".join(self._streaming_text), stats=saved_stats, status=status
        )
        self._streaming_message = None
        self._streaming_text = []
        self.generation_finished.emit(message_id, stats)
        if stats.prompt_tokens >= KV_SAVE_MIN_PROMPT_TOKENS and self._conversation_id is not None:
            self.save_session_requested.emit(self._conversation_id, str(self._paths.kv_state_dir))
        self.context_changed.emit(stats.context_used, stats.n_ctx or self._n_ctx())
        self.busy_changed.emit(False)
        if self._conversation_id is not None:
            self._announce(self._conversation_id)

    @Slot(int, str, str)
    def _on_worker_generation_failed(self, gen_id: int, message: str, detail: str) -> None:
        if gen_id != self._gen_id or self._streaming_message is None:
            return
        message_id = self._streaming_message
        partial = "".join(self._streaming_text)
        self._store.update_message(message_id, content=partial, status="error", stats={"error": message})
        self._streaming_message = None
        self._streaming_text = []
        self.generation_failed.emit(message_id, message, detail)
        self.busy_changed.emit(False)

    def _request_context_count(self) -> None:
        if self._model_info is None:
            return
        self._count_id += 1
        messages = self._model_messages(self.messages())
        self.count_requested.emit(self._count_id, messages)

    @Slot(int, int)
    def _on_worker_tokens_counted(self, request_id: int, tokens: int) -> None:
        if request_id == self._count_id and not self.is_busy:
            self.context_changed.emit(tokens, self._n_ctx())

    # -- shutdown ---------------------------------------------------------------------------
    @Slot()
    def shutdown(self) -> None:
        """Stop generation, save the partial answer, stop the thread (aboutToQuit)."""
        self._worker.cancel_event.set()
        self._worker.load_cancel_event.set()
        if self._streaming_message is not None:
            try:
                self._store.update_message(
                    self._streaming_message, content="".join(self._streaming_text), status="cancelled"
                )
            except Exception:
                log.exception("could not save the partial answer at shutdown")
        for job in list(self._jobs):
            self._ingest.cancel(job)
        for thread, name in ((self._thread, "inference"), (self._ingest_thread, "ingest")):
            if thread.isRunning():
                thread.quit()
                if not thread.wait(15000):
                    log.error("%s thread did not stop within 15 s", name)
        self._gc.stop()
        # The worker's engine is released in the thread that owns it being gone: close it here.
        engine = self._worker._engine
        if engine is not None:
            engine.unload()


@dataclass(frozen=True)
class ComposedDocuments:
    text: str
    mode: str  # whole | retrieval
    host_message_id: int  # the user message whose content carries the documents
    tokens: int
    sources: list[dict[str, Any]]


def _image_uri(attachment: Attachment) -> str | None:
    try:
        return data_uri(load_stored_image(Path(attachment.path)))
    except (OSError, ValueError) as exc:
        log.warning("image %s is no longer readable: %s", attachment.path, exc)
        return None


def _sampling_dict(sampling: SamplingParams) -> dict[str, Any]:
    return {
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "min_p": sampling.min_p,
        "max_tokens": sampling.max_tokens,
    }


def _stats_dict(stats: GenerationStats) -> dict[str, Any]:
    return {
        "prompt_tokens": stats.prompt_tokens,
        "prompt_tokens_evaluated": stats.prompt_tokens_evaluated,
        "completion_tokens": stats.completion_tokens,
        "ttft_s": round(stats.ttft_s, 4),
        "tokens_per_s": round(stats.tokens_per_s, 2),
        "finish_reason": stats.finish_reason,
        "context_used": stats.context_used,
        "n_ctx": stats.n_ctx,
        "dropped_messages": stats.dropped_messages,
    }
