"""ConversationController: conversations and their turns, on the GUI thread.

It keeps the current conversation, stores what the user sends, asks the inference worker to decide
the turn and answer it (the decision itself is :func:`app.core.turns.build_turn`, on the worker's
thread), creates the answer's placeholder once the turn is decided, saves the streamed text, and
ignores results whose ``gen_id`` is stale.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QObject, Signal, Slot

from app.core import reading
from app.core.context import dropped_notice
from app.core.forecast import PromptTimer
from app.core.store import DEFAULT_TITLE, AttachmentState, MessageStatus, make_title
from app.core.turns import TurnRequest
from app.core.types import DocumentMode, FinishReason, GenerationStats, Role, SamplingParams

if TYPE_CHECKING:
    from collections.abc import Callable

    from app.config import AppPaths, Settings
    from app.core.store import Attachment, Conversation, Store, StoredMessage
    from app.core.turns import Turn
    from app.core.types import ModelInfo
    from app.workers.inference import InferenceThread
    from app.workers.models import ModelController
    from app.workers.preferences import Notices, Preferences

log = logging.getLogger(__name__)

MAX_IMAGES_TESTED = 5  # Meta tested Scout with up to 5 images per prompt
KV_SAVE_MIN_PROMPT_TOKENS = 2048  # after a prompt this long, keep its KV cache on disk
PARTIAL_SAVE_INTERVAL_S = 0.5  # the partial answer reaches the database at least once a second
MIN_TOKENS_MEASURED = 64  # a prompt this long measures the prompt speed well enough for an estimate
DEFAULT_READING_QUESTION = "Summarize the whole document."


class ConversationController(QObject):
    """Signals:
    conversations_changed(): the sidebar should reload ``conversations()``.
    conversation_updated(object): a Conversation that just had activity: it moves to the top of the
        list as one row (users keep thousands of conversations).
    conversation_opened(int, list): conversation id (0: a new, empty chat), list[StoredMessage].
    message_added(object): StoredMessage.
    message_removed(int): message id.
    tokens_streamed(int, str): assistant message id, text delta.
    generation_finished(int, object): message id, GenerationStats.
    generation_failed(int, str, str): message id (0 when no answer was started), human message, detail.
    prompt_progress(float, float): 0..1 while a long prompt is processed, and the seconds left
        (from the rate measured while it is read; -1 while unknown).
    context_changed(int, int): tokens used, n_ctx.
    busy_changed(bool): True from a send until its answer ends.
    turn_decided(object): the Turn the model sees (a preview of the next one, or one being answered).
    attachments_sent(list): ids of the composer's attachments that went out with a message.
    reading_offered(object): a ReadingOffer: ask whether to read the documents whole
        (:meth:`accept_reading` / :meth:`decline_reading`).
    reading_progress(int, int, int): answer message id, parts read, parts in all.
    """

    conversations_changed = Signal()
    conversation_updated = Signal(object)
    conversation_opened = Signal(int, list)
    message_added = Signal(object)
    message_removed = Signal(int)
    tokens_streamed = Signal(int, str)
    generation_finished = Signal(int, object)
    generation_failed = Signal(int, str, str)
    prompt_progress = Signal(float, float)
    context_changed = Signal(int, int)
    busy_changed = Signal(bool)
    turn_decided = Signal(object)
    attachments_sent = Signal(list)
    reading_offered = Signal(object)
    reading_progress = Signal(int, int, int)

    # commands to the worker (queued across threads)
    answer_requested = Signal(int, object, object)
    read_requested = Signal(int, object, object)
    preview_requested = Signal(int, object)
    save_session_requested = Signal(int, str)
    restore_session_requested = Signal(int, str)

    def __init__(
        self,
        store: Store,
        paths: AppPaths,
        preferences: Preferences,
        notices: Notices,
        inference: InferenceThread,
        models: ModelController,
    ) -> None:
        super().__init__()
        self._store = store
        self._paths = paths
        self._preferences = preferences
        self._notices = notices
        self._inference = inference
        self._models = models
        self._conversation_id: int | None = None
        self._gen_id = 0
        self._engine_stopped_gen: int | None = None  # the answer whose engine process stopped
        self._preview_id = 0
        self._answering: int | None = None  # the conversation being answered (from send to the end)
        self._streaming_message: int | None = None  # its answer, once the turn is decided
        self._streaming_text: list[str] = []
        self._turn: Turn | None = None
        self._last_saved = 0.0
        self._closed = False
        self._offer: reading.ReadingOffer | None = None  # asked, not answered yet
        self._force_offer = False  # the user asked to read whole (not just an aggregate question)
        self._speeds: reading.Speeds | None = None  # measured by the last answers
        self._prompt_timer: tuple[int, PromptTimer] | None = None  # (gen id, its timer)
        self.clock: Callable[[], float] = time.monotonic  # the prompt timer's (tests set one)

        worker = inference.worker
        self.read_requested.connect(worker.read_whole)
        worker.reading_progress.connect(self._on_worker_reading_progress)
        worker.extract_read.connect(self._on_worker_extract_read)

        worker = inference.worker
        self.answer_requested.connect(worker.answer)
        self.preview_requested.connect(worker.preview_turn)
        self.save_session_requested.connect(worker.save_session)
        self.restore_session_requested.connect(worker.restore_session)
        worker.turn_built.connect(self._on_worker_turn_built)
        worker.turn_previewed.connect(self._on_worker_turn_previewed)
        worker.prompt_progress.connect(self._on_worker_prompt_progress)
        worker.tokens_generated.connect(self._on_worker_tokens_generated)
        worker.generation_finished.connect(self._on_worker_generation_finished)
        worker.generation_failed.connect(self._on_worker_generation_failed)
        worker.engine_stopped.connect(self._on_worker_engine_stopped)
        models.model_loaded.connect(self._on_models_model_loaded)
        preferences.settings_changed.connect(self._on_preferences_settings_changed)

    # -- state ------------------------------------------------------------------------------
    @property
    def current_conversation_id(self) -> int | None:
        return self._conversation_id

    @property
    def is_busy(self) -> bool:
        """True from a send until its answer has ended."""
        return self._answering is not None

    @property
    def store(self) -> Store:
        return self._store

    def conversations(self, filter_text: str = "") -> list[Conversation]:
        return self._store.list_conversations(filter_text)

    def messages(self) -> list[StoredMessage]:
        if self._conversation_id is None:
            return []
        return self._store.messages(self._conversation_id)

    # -- conversations ----------------------------------------------------------------------
    def new_conversation(self) -> None:
        if self.is_busy:
            self.stop()
        self._conversation_id = None
        self.conversation_opened.emit(0, [])
        self.context_changed.emit(0, self._models.n_ctx)

    def open_conversation(self, conversation_id: int) -> None:
        if self._store.get_conversation(conversation_id) is None:
            self._notices.error_occurred.emit("That conversation no longer exists.")
            return
        if self.is_busy and conversation_id != self._conversation_id:
            self.stop()
        self._conversation_id = conversation_id
        self._preferences.remember(last_conversation=conversation_id)
        self.conversation_opened.emit(conversation_id, self._store.messages(conversation_id))
        self._restore_kv(conversation_id)
        self.refresh_preview()

    def ensure_conversation(self) -> int:
        """The current conversation, created (as "New chat") when there is none yet."""
        if self._conversation_id is None:
            self._start_conversation(DEFAULT_TITLE)
        assert self._conversation_id is not None
        return self._conversation_id

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

    def restore_last(self) -> None:
        """Reopen the conversation that was open when the app last closed (start-up)."""
        last = self._preferences.settings.last_conversation
        if last and self._store.get_conversation(last) is not None:
            self.open_conversation(last)

    def _start_conversation(self, title: str) -> Conversation:
        """Create the current conversation and put it in the sidebar (one row, not a reload)."""
        info = self._models.model_info
        conversation = self._store.create_conversation(title, info.name if info else "")
        self._conversation_id = conversation.id
        self._preferences.remember(last_conversation=conversation.id)
        self.conversation_updated.emit(conversation)
        return conversation

    def _announce(self, conversation_id: int) -> None:
        """Tell the sidebar that a conversation changed (it moves to the top as one row)."""
        conversation = self._store.get_conversation(conversation_id)
        if conversation is not None:
            self.conversation_updated.emit(conversation)

    def _restore_kv(self, conversation_id: int) -> None:
        """Reopening a long-document conversation reads its KV cache back instead of the prompt."""
        if self._models.model_info is not None and not self._models.is_loading and not self._closed:
            self.restore_session_requested.emit(conversation_id, str(self._paths.kv_state_dir))

    # -- turns ------------------------------------------------------------------------------
    def _sampling(self) -> SamplingParams:
        s = self._preferences.settings
        return SamplingParams(
            temperature=s.temperature, top_p=s.top_p, min_p=s.min_p, max_tokens=s.max_tokens
        )

    def _turn_request(self, conversation_id: int | None, *, draft: str | None = None) -> TurnRequest:
        """The conversation as plain data for :func:`app.core.turns.build_turn`."""
        stored = tuple(self._store.messages(conversation_id)) if conversation_id is not None else ()
        user_ids = [m.id for m in stored if m.role == Role.USER.value]
        attachments = {mid: tuple(found) for mid, found in self._store.message_attachments(user_ids).items()}
        pending: tuple[Attachment, ...] = ()
        if draft is not None and conversation_id is not None:
            pending = tuple(self._store.pending_attachments(conversation_id))
        s = self._preferences.settings
        return TurnRequest(
            stored, attachments, s.system_prompt, s.max_tokens, draft, pending, s.whole_document_limit
        )

    def refresh_preview(self) -> None:
        """Ask the worker what the next turn would look like (context meter, document chips)."""
        if self._models.model_info is None or self.is_busy or self._closed:
            return
        self._preview_id += 1
        self.preview_requested.emit(self._preview_id, self._turn_request(self._conversation_id, draft=""))

    def send(self, text: str) -> None:
        text = text.strip()
        if not text:
            return
        info = self._models.model_info
        if info is None:
            self._notices.error_occurred.emit("Load a model first: File → Open model file…")
            return
        if self.is_busy:
            return
        pending = self._store.pending_attachments(self._conversation_id) if self._conversation_id else []
        if any(a.meta.get("state") != AttachmentState.READY for a in pending):
            self._notices.error_occurred.emit(
                "Wait until the attachments are ready (or remove them), then send."
            )
            return
        images = [a for a in pending if a.kind == "image"]
        if images and not info.has_vision:
            self._notices.error_occurred.emit(
                "This model has no vision projector, so it cannot see images. Download the projector "
                "(mmproj) for it in the model manager, or remove the images."
            )
            return
        conversation_id = self._title_conversation(text)
        user = self._store.add_message(conversation_id, Role.USER.value, text, model=info.name)
        if pending:
            self._store.link_attachments([a.id for a in pending], user.id)
            self.attachments_sent.emit([a.id for a in pending])  # now shown with the message
        if len(images) > MAX_IMAGES_TESTED:
            self._notices.info_message.emit(
                f"{len(images)} images in one message: Meta tested Scout with up to {MAX_IMAGES_TESTED}; "
                "answers may get less reliable."
            )
        self.message_added.emit(user)
        if not ((self._force_offer or reading.is_aggregate_question(text)) and self._offer_reading(text)):
            self._start_generation()

    # -- reading documents whole (app/core/reading.py) ----------------------------------------
    def read_whole_document(self, text: str) -> None:
        """The "Read the whole document" action: send ``text`` (or a request for a summary) and
        offer to read the conversation's long documents whole for it."""
        question = text.strip() or DEFAULT_READING_QUESTION
        if self._models.model_info is None or self.is_busy:
            return
        self._force_offer = True
        try:
            self.send(question)
        finally:
            self._force_offer = False

    def _long_documents(self) -> list[Attachment]:
        """The ready documents of this conversation that go in by passages (too long to send whole)."""
        if self._conversation_id is None:
            return []
        return [
            a
            for a in self._store.attachments(self._conversation_id)
            if a.kind == "document"
            and a.message_id is not None
            and a.meta.get("state") == AttachmentState.READY
            and a.meta.get("mode") == DocumentMode.RETRIEVAL
        ]

    def _offer_reading(self, question: str) -> bool:
        """Ask whether to read the long documents whole for ``question``; False: nothing to read
        (every document already goes in whole)."""
        docs = self._long_documents()
        if not docs:
            if self._force_offer:
                self._notices.info_message.emit(
                    "The whole document already goes to the model with every question."
                )
            return False
        s = self._preferences.settings
        tokens = sum(int(a.meta.get("tokens") or 0) for a in docs)
        pages = sum(int(a.meta.get("pages") or 0) for a in docs)
        budget = reading.rough_part_budget(self._models.n_ctx, s.whole_document_limit)
        saved = self._store.extracts([a.id for a in docs], reading.question_key(question))
        estimate = reading.estimate_reading(tokens, budget, self._speeds, saved_parts=len(saved))
        self._offer = reading.ReadingOffer(
            question, tuple((a.id, a.name) for a in docs), pages, estimate, len(saved)
        )
        self._answering = self._conversation_id
        self._inference.generating = True
        self.busy_changed.emit(True)
        self.reading_offered.emit(self._offer)
        return True

    @property
    def reading_offer(self) -> reading.ReadingOffer | None:
        return self._offer

    def accept_reading(self) -> None:
        """Read the documents of the pending offer whole, then answer."""
        offer, self._offer = self._offer, None
        if offer is None or self._conversation_id is None or self._answering != self._conversation_id:
            return
        gen_id = self._begin_answer()
        key = reading.question_key(offer.question)
        request = reading.ReadingRequest(
            self._turn_request(self._conversation_id),
            offer.question,
            offer.documents,
            self._preferences.settings.whole_document_limit,
            self._store.extracts([doc_id for doc_id, _name in offer.documents], key),
        )
        self.read_requested.emit(gen_id, request, self._sampling())

    def decline_reading(self) -> None:
        """Answer the pending offer's question from the passages that match it (as usual)."""
        if self._offer is None:
            return
        self._offer = None
        if self._conversation_id is not None and self._answering == self._conversation_id:
            self._start_generation()

    @Slot(int, int, int)
    def _on_worker_reading_progress(self, gen_id: int, done: int, total: int) -> None:
        conversation_id = self._answering
        if gen_id != self._gen_id or conversation_id is None:
            return
        if self._streaming_message is None:  # the answer shows the reading from its start
            placeholder = self._add_answer(
                conversation_id, MessageStatus.STREAMING, sampling=_sampling_dict(self._sampling())
            )
            self._streaming_message = placeholder.id
            self._last_saved = time.monotonic()
            if self._shown(conversation_id):
                self.message_added.emit(placeholder)
        self.reading_progress.emit(self._streaming_message, done, total)

    @Slot(int, object)
    def _on_worker_extract_read(self, _gen_id: int, extract: reading.PartExtract) -> None:
        # kept even when the answer is stale or stopped: the next reading need not read it again
        if self._closed:
            return
        info = self._models.model_info
        try:
            self._store.save_extract(
                extract.doc_id, extract.question, extract.part_key, extract.text, info.name if info else ""
            )
        except Exception:
            log.exception("could not save the extract of part %s", extract.part_key)

    def _title_conversation(self, text: str) -> int:
        """The conversation a message goes to, titled after its first message."""
        if self._conversation_id is None:
            conversation = self._start_conversation(make_title(text))
            self.conversation_opened.emit(conversation.id, [])
            return conversation.id
        current = self._store.get_conversation(self._conversation_id)
        if current is not None and current.title == DEFAULT_TITLE:
            self._store.rename_conversation(current.id, make_title(text))
            self._announce(current.id)
        return self._conversation_id

    def _start_generation(self) -> None:
        gen_id = self._begin_answer()
        request = self._turn_request(self._conversation_id)
        self.answer_requested.emit(gen_id, request, self._sampling())

    def _begin_answer(self) -> int:
        """A new answer of the current conversation: busy from now on; returns its gen_id."""
        assert self._conversation_id is not None
        self._gen_id += 1
        self._answering = self._conversation_id
        self._inference.generating = True
        self._streaming_message = None
        self._streaming_text = []
        self._turn = None
        self._inference.worker.cancel_event.clear()
        self.busy_changed.emit(True)
        return self._gen_id

    def stop(self) -> None:
        if self._offer is not None:  # Stop while asked whether to read: no answer
            self._offer = None
            self._end_answer()
            self.busy_changed.emit(False)
            return
        self._inference.cancel_generation()

    def regenerate(self) -> None:
        if self.is_busy or self._conversation_id is None or self._models.model_info is None:
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
        if last_user.id == stored[0].id:
            conversation = self._store.get_conversation(self._conversation_id)
            if conversation is not None and conversation.title == make_title(last_user.content):
                self._store.rename_conversation(conversation.id, DEFAULT_TITLE)  # retitled by send
        self.send(text)

    # -- worker results ---------------------------------------------------------------------
    def _shown(self, conversation_id: int | None) -> bool:
        return conversation_id is not None and conversation_id == self._conversation_id

    @Slot(int, object)
    def _on_worker_turn_built(self, gen_id: int, turn: Turn) -> None:
        conversation_id = self._answering
        if gen_id != self._gen_id or conversation_id is None:
            return
        if self._store.get_conversation(conversation_id) is None:
            self.stop()  # deleted while its turn was being decided
            return
        self._turn = turn
        if turn.dropped > 0:
            notice = self._store.add_message(conversation_id, "notice", dropped_notice(turn.dropped))
            if self._shown(conversation_id):
                self.message_added.emit(notice)
        reading_turn = self._streaming_message is not None  # a reading made its answer when it started
        if not reading_turn:
            placeholder = self._add_answer(
                conversation_id, MessageStatus.STREAMING, sampling=_sampling_dict(self._sampling())
            )
            self._streaming_message = placeholder.id
            self._last_saved = time.monotonic()
            if self._shown(conversation_id):
                self.message_added.emit(placeholder)
        if self._shown(conversation_id):
            self.context_changed.emit(turn.prompt_tokens, self._models.n_ctx)
        if not reading_turn:  # the documents' usual mode (their chips) is not the reading's
            self.turn_decided.emit(turn)
        if any(m.images for m in turn.messages):
            self._notices.info_message.emit(
                "This conversation has images: each answer re-reads the whole conversation "
                "(the vision path cannot reuse the cache), so it starts more slowly."
            )
        elif turn.images_left_out:
            self._notices.info_message.emit(
                "The loaded model cannot see images, so the pictures in this conversation were not sent."
            )

    @Slot(int, object)
    def _on_worker_turn_previewed(self, request_id: int, turn: Turn) -> None:
        if request_id != self._preview_id or self.is_busy:
            return
        self.context_changed.emit(turn.prompt_tokens, self._models.n_ctx)
        self.turn_decided.emit(turn)

    @Slot(int, int, int)
    def _on_worker_prompt_progress(self, gen_id: int, done: int, total: int) -> None:
        if gen_id != self._gen_id or total <= 0:
            return
        if self._prompt_timer is None or self._prompt_timer[0] != gen_id:
            self._prompt_timer = (gen_id, PromptTimer(self._known_prompt_rate()))
        left = self._prompt_timer[1].remaining(done, total, self.clock())
        self.prompt_progress.emit(done / total, -1.0 if left is None else left)

    def _known_prompt_rate(self) -> float:
        """Prompt tokens/s before this prompt measured its own: the last answers', else the plan's."""
        if self._speeds is not None and self._speeds.prompt > 0:
            return self._speeds.prompt
        plan = self._models.plan
        return plan.forecast.prompt_tokens_per_s if plan is not None else 0.0

    @Slot(int, str)
    def _on_worker_tokens_generated(self, gen_id: int, text: str) -> None:
        if gen_id != self._gen_id or self._streaming_message is None:
            return
        if not self._streaming_text:
            # A tokenizer that prefixes words with a space (SentencePiece's "▁Hello") starts the
            # answer with " Hello": the answer begins at its first visible character.
            text = text.lstrip()
            if not text:
                return
        self._streaming_text.append(text)
        self.tokens_streamed.emit(self._streaming_message, text)
        now = time.monotonic()
        if now - self._last_saved >= PARTIAL_SAVE_INTERVAL_S:
            self._store.update_message(self._streaming_message, content="".join(self._streaming_text))
            self._last_saved = now

    @Slot(int, object)
    def _on_worker_generation_finished(self, gen_id: int, stats: GenerationStats) -> None:
        if gen_id != self._gen_id or self._answering is None:
            return
        conversation_id, message_id = self._answering, self._streaming_message
        self._end_answer()
        if message_id is None:  # stopped before its turn was decided
            return
        if (
            stats.prompt_tokens_evaluated >= MIN_TOKENS_MEASURED
            and stats.prompt_eval_s > 0
            and stats.tokens_per_s
        ):
            self._speeds = reading.Speeds(
                stats.prompt_tokens_evaluated / stats.prompt_eval_s, stats.tokens_per_s
            )
        cancelled = stats.finish_reason == FinishReason.CANCELLED
        status = MessageStatus.CANCELLED if cancelled else MessageStatus.COMPLETE
        saved_stats = _stats_dict(stats)
        documents = self._turn.documents if self._turn is not None else None
        if documents is not None:
            saved_stats["context_mode"] = documents.mode.value
            saved_stats["document_tokens"] = documents.tokens
            saved_stats["sources"] = list(documents.sources)
        self._store.update_message(
            message_id, content="".join(self._streaming_text), stats=saved_stats, status=status
        )
        self._streaming_text = []
        self.generation_finished.emit(message_id, stats)
        if self._shown(conversation_id):
            self.context_changed.emit(stats.context_used, stats.n_ctx or self._models.n_ctx)
        if stats.prompt_tokens >= KV_SAVE_MIN_PROMPT_TOKENS:
            self.save_session_requested.emit(conversation_id, str(self._paths.kv_state_dir))
        self.busy_changed.emit(False)
        self._announce(conversation_id)

    @Slot(str, str)
    def _on_worker_engine_stopped(self, _message: str, _detail: str) -> None:
        # the answer being written (if any) fails next: its partial text is kept as "interrupted"
        self._engine_stopped_gen = self._gen_id if self._answering is not None else None

    @Slot(int, str, str)
    def _on_worker_generation_failed(self, gen_id: int, message: str, detail: str) -> None:
        if gen_id != self._gen_id or self._answering is None:
            return
        conversation_id, message_id = self._answering, self._streaming_message
        interrupted = self._engine_stopped_gen == gen_id
        self._engine_stopped_gen = None
        self._end_answer()
        if message_id is not None:
            partial = "".join(self._streaming_text)
            status = MessageStatus.INTERRUPTED if interrupted and partial else MessageStatus.ERROR
            self._store.update_message(message_id, content=partial, status=status, stats={"error": message})
        elif self._store.get_conversation(conversation_id) is not None:
            # the turn could not be built (too long, say): the answer that never started says why
            failed = self._add_answer(conversation_id, MessageStatus.ERROR, stats={"error": message})
            message_id = failed.id
            if self._shown(conversation_id):
                self.message_added.emit(failed)
        self._streaming_text = []
        self.generation_failed.emit(message_id or 0, message, detail)
        self.busy_changed.emit(False)

    def _add_answer(
        self, conversation_id: int, status: MessageStatus, **fields: dict[str, Any]
    ) -> StoredMessage:
        """An empty answer by the loaded model (filled as it streams, or saying why it failed)."""
        info = self._models.model_info
        model = info.name if info else ""
        return self._store.add_message(
            conversation_id, Role.ASSISTANT.value, "", model=model, status=status, **fields
        )

    def _end_answer(self) -> None:
        self._answering = None
        self._streaming_message = None
        self._inference.generating = False

    @Slot(object)
    def _on_models_model_loaded(self, _info: ModelInfo) -> None:
        if self._conversation_id is not None:
            self._restore_kv(self._conversation_id)
        self.refresh_preview()

    @Slot(object, object)
    def _on_preferences_settings_changed(self, old: Settings, new: Settings) -> None:
        if (old.system_prompt, old.max_tokens, old.whole_document_limit) != (
            new.system_prompt,
            new.max_tokens,
            new.whole_document_limit,
        ):
            self.refresh_preview()

    # -- shutdown ---------------------------------------------------------------------------
    def close(self) -> None:
        """At shutdown, after :meth:`save_partial_answer`: results still queued from the worker
        are stale from now on (the store may be closed before they arrive)."""
        self._closed = True
        self._gen_id += 1
        self._preview_id += 1
        self._answering = None
        self._streaming_message = None

    def save_partial_answer(self) -> None:
        """At shutdown: keep what was written of the answer, marked as stopped."""
        if self._streaming_message is None:
            return
        try:
            self._store.update_message(
                self._streaming_message, content="".join(self._streaming_text), status=MessageStatus.CANCELLED
            )
        except Exception:
            log.exception("could not save the partial answer at shutdown")


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
