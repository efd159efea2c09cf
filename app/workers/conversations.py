"""ConversationController: conversations and their turns, on the GUI thread.

It keeps the current conversation, stores what the user sends, asks the inference worker to decide
the turn and answer it (the decision itself is :func:`app.core.turns.build_turn`, on the worker's
thread), creates the answer's placeholder once the turn is decided, saves the streamed text, and
ignores results whose ``gen_id`` is stale.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from PySide6.QtCore import QObject, Signal, Slot

from app.core import reading
from app.core import tools as tool_calls
from app.core.context import dropped_notice
from app.core.forecast import PromptTimer
from app.core.presets import (
    ConversationOptions,
    Preset,
    check_preset_name,
    dump_user_presets,
    find_preset,
    parse_user_presets,
)
from app.core.store import DEFAULT_TITLE, AttachmentState, MessageStatus, answer_unfinished, make_title
from app.core.turns import TurnRequest
from app.core.types import DocumentMode, FinishReason, GenerationStats, Role, SamplingParams

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from app.config import AppPaths, Settings
    from app.core.store import Attachment, Conversation, Store, StoredMessage
    from app.core.turns import Turn
    from app.core.types import ChatMessage, ModelInfo
    from app.workers.inference import InferenceThread
    from app.workers.models import ModelController
    from app.workers.preferences import Notices, Preferences
    from app.workers.tools import ToolsController

log = logging.getLogger(__name__)

MAX_IMAGES_TESTED = 5  # Meta tested Scout with up to 5 images per prompt
KV_SAVE_MIN_PROMPT_TOKENS = 2048  # after a prompt this long, keep its KV cache on disk
PARTIAL_SAVE_INTERVAL_S = 0.5  # the partial answer reaches the database at least once a second
MIN_TOKENS_MEASURED = 64  # a prompt this long measures the prompt speed well enough for an estimate
DEFAULT_READING_QUESTION = "Summarize the whole document."


@dataclass(frozen=True)
class QueuedMessage:
    """A message sent while an answer was being written: it waits and goes out when the answer
    ends. ``id`` is the queue's own (it is not stored until it is sent)."""

    id: int
    text: str


@dataclass(frozen=True)
class MessageQueue:
    """The messages waiting in one conversation, in order. ``paused``: the answer before them was
    stopped or failed, so they wait for the user (Resume) instead of going out by themselves."""

    conversation_id: int
    items: tuple[QueuedMessage, ...] = ()
    paused: str = ""  # why they wait ("" while they go out when the answer ends)


@dataclass(frozen=True)
class CompareSide:
    """One side of a comparison: a preset (by name; "" the conversation's own sampling) and, on a
    server that offers several, a model ("" the one in use)."""

    preset: str = ""
    model: str = ""

    @property
    def label(self) -> str:
        """What the side's column is headed with: "Precise", "qwen3 · Precise"."""
        preset = self.preset or "This chat's settings"
        return f"{self.model} · {preset}" if self.model else preset


@dataclass(frozen=True)
class CompareRun:
    """One message sent to two sides, answered one after the other as siblings under
    ``question_id``. ``answers``: the answers' ids as they start (left first); ``side``: the one
    being written; ``done``: both ended (or the run was stopped or failed)."""

    conversation_id: int
    question_id: int
    sides: tuple[CompareSide, CompareSide]
    answers: tuple[int, ...] = ()
    side: int = 0
    done: bool = False


class ConversationController(QObject):
    """Signals:
    conversations_changed(): the sidebar should reload ``conversations()``.
    conversation_updated(object): a Conversation that just had activity: it moves to the top of the
        list as one row (users keep thousands of conversations).
    conversation_pinned(object): a Conversation just pinned or unpinned: it moves into or out of
        the sidebar's "Pinned" group as one row.
    options_changed(object): the ConversationOptions of the conversation shown (its preset and
        instructions) were set, or another conversation was shown.
    presets_changed(): the user's presets were saved, renamed or deleted.
    conversation_opened(int, list): conversation id (0: a new, empty chat), list[StoredMessage].
    message_added(object): StoredMessage.
    message_removed(int): message id.
    tokens_streamed(int, str): assistant message id, text delta.
    generation_finished(int, object): message id, GenerationStats.
    generation_failed(int, str, str): message id (0 when no answer was started), human message, detail.
    prompt_progress(float, float): 0..1 while a long prompt is processed, and the seconds left
        (from the rate measured while it is read; -1 while unknown).
    documents_reading(object, float, float): the documents the model is reading in that prompt, as
        ((message id, attachment id), ...) — the chips that show it —, 0..1 and the seconds left
        (-1 while unknown); an empty tuple: the reading ended.
    context_changed(int, int): tokens used, n_ctx.
    busy_changed(bool): True from a send until its answer ends.
    turn_decided(object): the Turn the model sees (a preview of the next one, or one being answered).
    attachments_sent(list): ids of the composer's attachments that went out with a message.
    reading_offered(object): a ReadingOffer: ask whether to read the documents whole
        (:meth:`accept_reading` / :meth:`decline_reading`).
    reading_progress(int, int, int): answer message id, parts read, parts in all.
    path_changed(int, list, int): conversation id, the new active path (list[StoredMessage]), the
        message to keep in view: another branch is shown.
    tool_call_proposed(int, dict): answer message id, its tool call record (``stats["tool_call"]``)
        waiting for the user's approval (:meth:`decide_tool_call`).
    tool_call_updated(int, dict): answer message id, its tool call record once allowed, run, denied
        or failed (the result is in the record).
    answer_continued(int): message id: the answer is being continued (its text grows again).
    queue_changed(object): the MessageQueue of the conversation shown (messages sent while an
        answer was being written).
    compare_started(object): a CompareRun: one message goes to two presets or models (the chat
        shows their answers side by side).
    compare_answer_added(int, object): side (0 left, 1 right), the answer's StoredMessage (it then
        streams like any answer: ``tokens_streamed``, ``generation_finished``).
    compare_finished(object): the CompareRun once both answers ended (or it was stopped): the user
        keeps one (:meth:`keep_compared`).
    """

    conversations_changed = Signal()
    conversation_updated = Signal(object)
    conversation_pinned = Signal(object)
    options_changed = Signal(object)
    presets_changed = Signal()
    conversation_opened = Signal(int, list)
    message_added = Signal(object)
    message_removed = Signal(int)
    tokens_streamed = Signal(int, str)
    generation_finished = Signal(int, object)
    generation_failed = Signal(int, str, str)
    prompt_progress = Signal(float, float)
    documents_reading = Signal(object, float, float)
    context_changed = Signal(int, int)
    busy_changed = Signal(bool)
    turn_decided = Signal(object)
    attachments_sent = Signal(list)
    reading_offered = Signal(object)
    reading_progress = Signal(int, int, int)
    path_changed = Signal(int, list, int)
    tool_call_proposed = Signal(int, dict)
    tool_call_updated = Signal(int, dict)
    queue_changed = Signal(object)
    answer_continued = Signal(int)
    compare_started = Signal(object)
    compare_answer_added = Signal(int, object)
    compare_finished = Signal(object)

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
        self._tools: ToolsController | None = None
        self._tool_wait: tuple[int, int, dict[str, Any]] | None = None  # conversation, answer, record
        self._tool_chain = 0  # tool calls since the user's last message
        self._tool_call_id = 0
        self._queues: dict[int, MessageQueue] = {}  # conversation id → messages waiting
        self._queue_ids = itertools.count(1)
        self._queue_editing: int | None = None  # a queued message open in the composer: it waits
        self._continuing: StoredMessage | None = None  # the answer being continued, as it was
        self._compare: CompareRun | None = None  # a message answered by two presets or models
        self._prompt_timer: tuple[int, PromptTimer] | None = None  # (gen id, its timer)
        # the answer's whole documents: (gen id, their chips, their tokens), and whether shown read
        self._turn_documents: tuple[int, tuple[tuple[int, int], ...], int] | None = None
        self._documents_shown = False
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
        worker.answer_interrupted.connect(self._on_worker_answer_interrupted)
        models.model_loaded.connect(self._on_models_model_loaded)
        preferences.settings_changed.connect(self._on_preferences_settings_changed)

    # -- state ------------------------------------------------------------------------------
    @property
    def current_conversation_id(self) -> int | None:
        return self._conversation_id

    @property
    def is_busy(self) -> bool:
        """True from a send until its answer has ended."""
        return self._answering is not None or self._tool_wait is not None

    def attach_tools(self, tools: ToolsController) -> None:
        """Offer the tools of the servers that are on to the model (the AppController does it)."""
        self._tools = tools
        tools.call_finished.connect(self._on_tools_call_finished)

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
        self._compare = None
        self.conversation_opened.emit(0, [])
        self.queue_changed.emit(None)
        self.context_changed.emit(0, self._models.n_ctx)

    def open_conversation(self, conversation_id: int) -> None:
        if self._store.get_conversation(conversation_id) is None:
            self._notices.error_occurred.emit("That conversation no longer exists.")
            return
        if self.is_busy and conversation_id != self._conversation_id:
            self.stop()
        self._conversation_id = conversation_id
        if self._compare is not None and self._compare.done:
            self._compare = None  # the conversation opens on its branch shown
        self._preferences.remember(last_conversation=conversation_id)
        self.conversation_opened.emit(conversation_id, self._store.messages(conversation_id))
        self.queue_changed.emit(self._queues.get(conversation_id))
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

    def save_api_exchange(
        self, messages: Sequence[ChatMessage], answer: str, model: str, finished: bool
    ) -> int | None:
        """Keep one API request and its answer as a conversation of the history (Settings → API
        server → "Keep API conversations"): titled "API: …", the client's system message as the
        chat's own instructions, pictures named but not kept. Returns the conversation's id (None
        when the request had nothing to keep)."""
        turns = [m for m in messages if m.role in ("user", "assistant") and (m.content or m.images)]
        if not turns or not answer:
            return None
        first = next((m.content for m in turns if m.role == "user" and m.content.strip()), "")
        conversation = self._store.create_conversation(f"API: {make_title(first or 'request')}", model)
        system = "\n\n".join(m.content for m in messages if m.role == "system" and m.content.strip())
        if system:
            options = ConversationOptions(system_prompt=system)
            self._store.set_conversation_options(conversation.id, options.to_dict())
        for message in turns:
            pictures = len(message.images)
            note = (
                f"\n\n({pictures} picture{'s' if pictures != 1 else ''} sent, not kept)" if pictures else ""
            )
            self._store.add_message(conversation.id, message.role, message.content + note)
        status = MessageStatus.COMPLETE if finished else MessageStatus.CANCELLED
        self._store.add_message(conversation.id, "assistant", answer, model=model, status=status)
        self.conversations_changed.emit()
        return conversation.id

    def set_pinned(self, conversation_id: int, pinned: bool) -> None:
        """Pin a conversation to the top of the sidebar (or unpin it)."""
        self._store.set_pinned(conversation_id, pinned)
        conversation = self._store.get_conversation(conversation_id)
        if conversation is not None:
            self.conversation_pinned.emit(conversation)

    def delete_conversation(self, conversation_id: int) -> None:
        if conversation_id == self._conversation_id:
            if self.is_busy:
                self.stop()
            self._conversation_id = None
            self.conversation_opened.emit(0, [])
            self.queue_changed.emit(None)
        self._store.delete_conversation(conversation_id)
        self._queues.pop(conversation_id, None)
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

    # -- this conversation's own instructions and sampling (app/core/presets.py) ---------------
    def conversation_options(self) -> ConversationOptions:
        """The options of the conversation shown (the app's settings when it has none)."""
        if self._conversation_id is None:
            return ConversationOptions()
        return ConversationOptions.from_dict(self._store.conversation_options(self._conversation_id))

    def set_conversation_options(self, options: ConversationOptions) -> None:
        """Give the conversation shown its own preset, system prompt and/or sampling (it is
        created when there is none yet); the next answer uses them."""
        conversation_id = self.ensure_conversation()
        self._store.set_conversation_options(conversation_id, options.to_dict())
        self.options_changed.emit(options)
        self.refresh_preview()

    def resolved_options(self, options: ConversationOptions) -> tuple[str, tuple[float, float, float]]:
        """The system prompt and (temperature, top_p, min_p) ``options`` give with the app's
        settings and the user's presets (what the window's panel shows)."""
        s = self._preferences.settings
        return options.resolve(s.system_prompt, (s.temperature, s.top_p, s.min_p), self.user_presets())

    def _resolved(self, conversation_id: int | None) -> tuple[str, tuple[float, float, float]]:
        """The system prompt and sampling a conversation uses (its own, else the app's)."""
        stored = self._store.conversation_options(conversation_id) if conversation_id is not None else {}
        options = ConversationOptions.from_dict(stored)
        side = self._compare_side(conversation_id)
        if side is not None and side.preset:  # the side's preset, with this chat's own instructions
            options = dataclasses.replace(options, preset=side.preset, sampling=None)
        return self.resolved_options(options)

    # -- the user's presets (kept in the settings) -----------------------------------------------
    def user_presets(self) -> tuple[Preset, ...]:
        return parse_user_presets(self._preferences.settings.user_presets)

    def save_preset(self, preset: Preset) -> Preset:
        """Add (or, same name, replace) a user preset; ValueError with a sentence when its name
        is taken by a built-in or its values are out of range."""
        mine = self.user_presets()
        replaced = next((p for p in mine if p.name.casefold() == preset.name.strip().casefold()), None)
        name = check_preset_name(preset.name, mine, renaming=replaced.name if replaced else "")
        checked = Preset.from_dict({**preset.to_dict(), "name": name})
        kept = [p for p in mine if p is not replaced]
        self._save_presets([*kept, checked])
        return checked

    def rename_preset(self, old: str, new: str) -> str:
        """Rename a user preset; the conversations that use it follow. Returns the new name."""
        mine = self.user_presets()
        found = next((p for p in mine if p.name.casefold() == old.strip().casefold()), None)
        if found is None:
            raise ValueError(f"There is no preset of yours named “{old}”.")
        name = check_preset_name(new, mine, renaming=found.name)
        renamed = Preset.from_dict({**found.to_dict(), "name": name})
        self._save_presets([renamed if p is found else p for p in mine])
        self._store.rename_preset_uses(found.name, name)
        if self._conversation_id is not None:
            self.options_changed.emit(self.conversation_options())
        return name

    def delete_preset(self, name: str) -> None:
        """Delete a user preset; conversations that used it go back to the app's settings."""
        mine = self.user_presets()
        self._save_presets([p for p in mine if p.name.casefold() != name.strip().casefold()])
        if self._conversation_id is not None:
            self.options_changed.emit(self.conversation_options())

    def _save_presets(self, presets: list[Preset]) -> None:
        settings = self._preferences.settings
        self._preferences.update(settings.replace(user_presets=dump_user_presets(presets)))
        self.presets_changed.emit()
        self.refresh_preview()

    # -- turns ------------------------------------------------------------------------------
    def _sampling(self) -> SamplingParams:
        s = self._preferences.settings
        temperature, top_p, min_p = self._resolved(self._conversation_id)[1]
        side = self._compare_side(self._conversation_id)
        return SamplingParams(
            temperature=temperature,
            top_p=top_p,
            min_p=min_p,
            max_tokens=s.max_tokens,
            model=side.model if side is not None else "",
        )

    def _turn_request(
        self, conversation_id: int | None, *, draft: str | None = None, continue_answer: bool = False
    ) -> TurnRequest:
        """The conversation as plain data for :func:`app.core.turns.build_turn`."""
        stored = tuple(self._store.messages(conversation_id)) if conversation_id is not None else ()
        user_ids = [m.id for m in stored if m.role == Role.USER.value]
        attachments = {mid: tuple(found) for mid, found in self._store.message_attachments(user_ids).items()}
        pending: tuple[Attachment, ...] = ()
        if draft is not None and conversation_id is not None:
            pending = tuple(self._store.pending_attachments(conversation_id))
        s = self._preferences.settings
        system = self._resolved(conversation_id)[0]
        if self._tools is not None:
            system = tool_calls.with_tools(system, self._tools.tools())
        return TurnRequest(
            stored,
            attachments,
            system,
            s.max_tokens,
            draft,
            pending,
            s.whole_document_limit,
            continue_answer,
        )

    def refresh_preview(self) -> None:
        """Ask the worker what the next turn would look like (context meter, document chips)."""
        if self._models.model_info is None or self.is_busy or self._closed:
            return
        self._preview_id += 1
        self.preview_requested.emit(self._preview_id, self._turn_request(self._conversation_id, draft=""))

    def send(self, text: str) -> None:
        """Send ``text`` after the last message of the branch shown. While an answer is being
        written it is queued instead, and goes out when that answer ends (:meth:`queue`)."""
        if self.is_busy and self._answering is not None and self._answering == self._conversation_id:
            self._enqueue(self._answering, text)
            return
        self._send(text, "active", None)

    # -- the queue: messages sent while an answer is being written -------------------------------
    def queue(self) -> MessageQueue | None:
        """The messages waiting in the conversation shown (None: none)."""
        if self._conversation_id is None:
            return None
        return self._queues.get(self._conversation_id)

    def _enqueue(self, conversation_id: int, text: str) -> None:
        text = text.strip()
        if not text:
            return
        queue = self._queues.get(conversation_id, MessageQueue(conversation_id))
        item = QueuedMessage(next(self._queue_ids), text)
        self._set_queue(dataclasses.replace(queue, items=(*queue.items, item)))

    def _set_queue(self, queue: MessageQueue) -> None:
        if queue.items:
            self._queues[queue.conversation_id] = queue
        else:
            self._queues.pop(queue.conversation_id, None)
        if queue.conversation_id == self._conversation_id:
            self.queue_changed.emit(queue if queue.items else None)

    def edit_queued(self, item_id: int, text: str) -> None:
        """Replace the text of a queued message (empty text: take it out of the queue)."""
        if self._queue_editing == item_id:
            self._queue_editing = None
        queue = self.queue()
        if queue is None:
            return
        text = text.strip()
        items = tuple(
            QueuedMessage(i.id, text) if i.id == item_id else i
            for i in queue.items
            if i.id != item_id or text
        )
        self._set_queue(dataclasses.replace(queue, items=items))
        self._drain_queue()

    def cancel_queued(self, item_id: int) -> None:
        """Take a queued message out of the queue: it is never sent."""
        self.edit_queued(item_id, "")

    def hold_queued(self, item_id: int | None) -> None:
        """``item_id`` is being edited in the composer: it (and those after it) wait until the
        edit is kept or cancelled. None: the edit ended without a change."""
        self._queue_editing = item_id
        if item_id is None:
            self._drain_queue()

    def resume_queue(self) -> None:
        """Send the messages of a paused queue (the answer before them was stopped or failed)."""
        queue = self.queue()
        if queue is None:
            return
        self._set_queue(dataclasses.replace(queue, paused=""))
        self._drain_queue()

    def _pause_queue(self, conversation_id: int | None, why: str) -> None:
        queue = self._queues.get(conversation_id) if conversation_id is not None else None
        if queue is not None:
            self._set_queue(dataclasses.replace(queue, paused=why))

    def _drain_queue(self) -> None:
        """The answer ended: send the first queued message of the conversation shown, unless the
        queue is paused, its first message is being edited, or another answer is on its way."""
        queue = self.queue()
        if queue is None or queue.paused or self.is_busy or self._closed:
            return
        first = queue.items[0]
        if self._queue_editing == first.id:
            return
        self._set_queue(dataclasses.replace(queue, items=queue.items[1:]))
        self._send(first.text, "active", None)
        if not self.is_busy:  # it could not go (attachments not ready, no model): it waits again
            queue = self._queues.get(queue.conversation_id, MessageQueue(queue.conversation_id))
            self._set_queue(
                dataclasses.replace(
                    queue, items=(first, *queue.items), paused="It could not be sent; see the message above."
                )
            )

    def _send(self, text: str, parent: int | Literal["active"] | None, edited_from: int | None) -> None:
        """Store the user's message under ``parent`` (a branch beside its other children) and
        answer it. ``edited_from``: the message this one is an edit of (its attachments go too)."""
        if self._store_question(text, parent, edited_from) is None:
            return
        if not ((self._force_offer or reading.is_aggregate_question(text)) and self._offer_reading(text)):
            self._start_generation()

    def _store_question(
        self, text: str, parent: int | Literal["active"] | None, edited_from: int | None
    ) -> StoredMessage | None:
        """Store the user's message with the composer's attachments and show it; None when it
        cannot go (nothing typed, no model, busy, attachments not ready: the user is told why)."""
        text = text.strip()
        if not text:
            return None
        info = self._models.model_info
        if info is None:
            self._notices.error_occurred.emit("Load a model first: File → Open model file…")
            return None
        if self.is_busy:
            return None
        pending = self._store.pending_attachments(self._conversation_id) if self._conversation_id else []
        if any(a.meta.get("state") != AttachmentState.READY for a in pending):
            self._notices.error_occurred.emit(
                "Wait until the attachments are ready (or remove them), then send."
            )
            return None
        images = [a for a in pending if a.kind == "image"]
        if images and not info.has_vision:
            self._notices.error_occurred.emit(
                "This model has no vision projector, so it cannot see images. Download the projector "
                "(mmproj) for it in the model manager, or remove the images."
            )
            return None
        self._settle_compare()
        conversation_id = self._title_conversation(text)
        stats = {"edited_from": edited_from} if edited_from is not None else None
        user = self._store.add_message(
            conversation_id, Role.USER.value, text, model=info.name, stats=stats, parent_id=parent
        )
        if pending:
            self._store.link_attachments([a.id for a in pending], user.id)
            self.attachments_sent.emit([a.id for a in pending])  # now shown with the message
        if len(images) > MAX_IMAGES_TESTED:
            self._notices.info_message.emit(
                f"{len(images)} images in one message: Meta tested Scout with up to {MAX_IMAGES_TESTED}; "
                "answers may get less reliable."
            )
        self.message_added.emit(user)
        self._tool_chain = 0
        return user

    # -- compare: one message, two presets or models, answers side by side ---------------------
    @property
    def compare_run(self) -> CompareRun | None:
        """The comparison being written, or ended and waiting for the user's choice (None: none)."""
        return self._compare

    def compare(self, text: str, left: CompareSide, right: CompareSide) -> None:
        """Send ``text`` to two sides: each answer is written in turn with its side's preset (and
        model, on a server), as two branches under the one message. :meth:`keep_compared` then
        shows the one the user keeps; the other stays one ‹ › away."""
        if self.is_busy:
            self._notices.error_occurred.emit("Wait until the answer ends (or stop it), then compare.")
            return
        problem = self._compare_problem(left, right)
        if problem:
            self._notices.error_occurred.emit(problem)
            return
        question = self._store_question(text, "active", None)
        if question is None:
            return
        assert self._conversation_id is not None
        self._compare = CompareRun(self._conversation_id, question.id, (left, right))
        self.compare_started.emit(self._compare)
        self._start_generation()

    def compare_models(self) -> tuple[str, ...]:
        """The models a comparison may name: those the connected server offers (none locally)."""
        info = self._models.model_info
        return info.server_models if info is not None and info.server else ()

    def _compare_problem(self, left: CompareSide, right: CompareSide) -> str:
        if left == right:
            return "Choose two different presets (or models) to compare."
        for side in (left, right):
            if side.preset and find_preset(side.preset, self.user_presets()) is None:
                return f"There is no preset named “{side.preset}”."
            if side.model and side.model not in self.compare_models():
                return (
                    f"The model “{side.model}” is not offered by the server in use: models can be "
                    "compared only on a server that serves several (File → Servers…)."
                )
        return ""

    def _compare_side(self, conversation_id: int | None) -> CompareSide | None:
        """The side being answered, while a comparison of ``conversation_id`` is written."""
        run = self._compare
        if run is None or run.done or run.conversation_id != conversation_id:
            return None
        return run.sides[run.side]

    def _advance_compare(self, conversation_id: int, ended_early: bool) -> bool:
        """One side's answer ended: start the other side's (True: still busy), or end the run
        (stopped, failed, or both written)."""
        run = self._compare
        if run is None or run.done or run.conversation_id != conversation_id:
            return False
        if run.side == 0 and not ended_early and self._shown(conversation_id) and not self._closed:
            self._compare = dataclasses.replace(run, side=1)
            self._store.set_active_leaf(conversation_id, run.question_id)  # a sibling of the first
            self._start_generation()
            return True
        self._finish_compare()
        return False

    def _finish_compare(self) -> None:
        run = self._compare
        assert run is not None
        run = dataclasses.replace(run, done=True)
        if run.answers and self._store.get_conversation(run.conversation_id) is not None:
            self._store.activate(run.answers[0])  # until the user keeps one: the left one
        self._compare = run if self._shown(run.conversation_id) and run.answers else None
        self.compare_finished.emit(run)

    def _settle_compare(self) -> None:
        """A comparison waiting for a choice becomes the plain branch shown (the left answer, or
        the one kept) before anything else changes the conversation."""
        run = self._compare
        if run is None or not run.done:
            return
        self._compare = None
        if self._shown(run.conversation_id):
            leaf = self._store.active_leaf(run.conversation_id)
            self._show_path(leaf if leaf is not None else run.question_id)

    def keep_compared(self, answer_id: int) -> None:
        """Keep one answer of the comparison: its branch is shown (the other stays a sibling)."""
        run = self._compare
        if run is None or not run.done or answer_id not in run.answers or self.is_busy:
            return
        self._compare = None
        if self._shown(run.conversation_id):
            self._store.activate(answer_id)
            self._show_path(answer_id)

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
        self._continuing = None
        self._turn = None
        self._inference.worker.cancel_event.clear()
        self.busy_changed.emit(True)
        return self._gen_id

    def stop(self) -> None:
        if self._tool_wait is not None:  # Stop while a tool call waits: denied, no answer follows
            self._decide_tool(tool_calls.DENIED, tool_calls.denied_result(self._pending_call()), resume=False)
            return
        if self._offer is not None:  # Stop while asked whether to read: no answer
            self._offer = None
            conversation_id = self._answering
            self._end_answer()
            self.busy_changed.emit(False)
            self._pause_queue(conversation_id, "The answer was stopped, so these wait: Resume sends them.")
            return
        self._inference.cancel_generation()

    # -- branches ---------------------------------------------------------------------------
    def branch_positions(self) -> dict[int, tuple[int, int]]:
        """For each user message and answer of the branch shown that has other branches beside
        it: (its place, counting from 1; how many). An answer after a "left out" notice counts
        with the notice: the branch starts there."""
        if self._conversation_id is None:
            return {}
        children = self._store.children(self._conversation_id)
        out: dict[int, tuple[int, int]] = {}
        path = self._store.messages(self._conversation_id)
        for i, message in enumerate(path):
            if message.role not in (Role.USER.value, Role.ASSISTANT.value):
                continue
            anchor = _branch_anchor(path, i)
            siblings = children.get(anchor.parent_id, [])
            if len(siblings) > 1 and anchor.id in siblings:
                out[message.id] = (siblings.index(anchor.id) + 1, len(siblings))
        return out

    def switch_branch(self, message_id: int, step: int) -> None:
        """Show the branch ``step`` places beside the one holding ``message_id`` (‹ −1, › +1)."""
        if self.is_busy or self._conversation_id is None:
            return
        self._settle_compare()
        path = self._store.messages(self._conversation_id)
        index = _position(path, message_id)
        if index is None:
            return
        anchor = _branch_anchor(path, index)
        siblings = self._store.children(self._conversation_id).get(anchor.parent_id, [])
        if anchor.id not in siblings:
            return
        target = siblings.index(anchor.id) + step
        if not 0 <= target < len(siblings):
            return
        self._store.activate(siblings[target])
        self._show_path(siblings[target])

    def can_delete_branch(self, message_id: int) -> bool:
        """Whether the branch holding ``message_id`` (on the branch shown) has another branch
        beside it: the last one left cannot be deleted this way."""
        return self._deletable(message_id) is not None

    def _deletable(self, message_id: int) -> tuple[StoredMessage, int] | None:
        """(where the branch holding ``message_id`` starts, the sibling to show instead)."""
        if self.is_busy or self._conversation_id is None:
            return None
        path = self._store.messages(self._conversation_id)
        index = _position(path, message_id)
        if index is None:
            return None
        anchor = _branch_anchor(path, index)
        siblings = self._store.children(self._conversation_id).get(anchor.parent_id, [])
        if anchor.id not in siblings or len(siblings) < 2:
            return None
        place = siblings.index(anchor.id)
        return anchor, siblings[place - 1] if place > 0 else siblings[place + 1]

    def delete_branch(self, message_id: int) -> None:
        """Delete the branch holding ``message_id``: that message (with its "left out" notice) and
        everything after it on every branch below it. The branch beside it is shown instead."""
        self._settle_compare()
        found = self._deletable(message_id)
        if found is None:
            self._notices.error_occurred.emit(
                "This is the only branch here: delete the conversation instead, or edit the message."
            )
            return
        anchor, sibling = found
        assert self._conversation_id is not None
        self._store.delete_messages_from(self._conversation_id, anchor.id)
        self._store.activate(sibling)
        self._show_path(sibling)
        self._announce(self._conversation_id)

    def open_message(self, conversation_id: int, message_id: int) -> None:
        """Open a conversation on the branch holding ``message_id`` (a search result)."""
        found = self._store.get_message(message_id)
        if found is None or found.conversation_id != conversation_id:
            self.open_conversation(conversation_id)
            return
        if conversation_id == self._conversation_id and self.is_busy:
            if any(m.id == message_id for m in self._store.messages(conversation_id)):
                self.path_changed.emit(conversation_id, self._store.messages(conversation_id), message_id)
            return  # another branch waits until the answer ends
        self._store.activate(message_id)
        if conversation_id == self._conversation_id:
            self._show_path(message_id)
        else:
            self.open_conversation(conversation_id)
            self.path_changed.emit(conversation_id, self._store.messages(conversation_id), message_id)

    def _show_path(self, focus: int) -> None:
        assert self._conversation_id is not None
        self.path_changed.emit(self._conversation_id, self._store.messages(self._conversation_id), focus)
        self.refresh_preview()

    def _cut_view_from(self, path: list[StoredMessage], index: int) -> None:
        """The messages of the branch shown from ``index`` on leave the view (they stay stored)."""
        for m in path[index:]:
            self.message_removed.emit(m.id)

    def regenerate(self, message_id: int | None = None) -> None:
        """Answer again (the last answer, or ``message_id``): the new answer is a branch beside
        the old one, which is kept."""
        if self.is_busy or self._conversation_id is None or self._models.model_info is None:
            return
        self._settle_compare()
        path = self._store.messages(self._conversation_id)
        if message_id is None:
            last_user = max((i for i, m in enumerate(path) if m.role == Role.USER.value), default=None)
            if last_user is None:
                return
            index = last_user + 1
        else:
            found = _position(path, message_id)
            if found is None or path[found].role != Role.ASSISTANT.value:
                return
            index = path.index(_branch_anchor(path, found))
        if index == 0 or path[index - 1].role != Role.USER.value:
            return
        self._store.set_active_leaf(self._conversation_id, path[index - 1].id)
        self._cut_view_from(path, index)
        self._start_generation()

    def _editable(
        self, message_id: int, role: Role, text: str
    ) -> tuple[int, list[StoredMessage], int] | None:
        """The conversation shown, its branch shown and the position in it of ``message_id``, when
        that message can be edited now into ``text`` (not empty, nothing being written, a ``role``
        message of that branch); an open comparison is settled first."""
        conversation_id = self._conversation_id
        if not text or self.is_busy or conversation_id is None:
            return None
        self._settle_compare()
        path = self._store.messages(conversation_id)
        index = _position(path, message_id)
        if index is None or path[index].role != role.value:
            return None
        return conversation_id, path, index

    def edit_message(self, message_id: int, text: str) -> None:
        """Send ``text`` in place of the user message ``message_id``: a new branch beside it (the
        old message and everything after it stay, one ‹ › away)."""
        text = text.strip()
        found = self._editable(message_id, Role.USER, text)
        if found is None:
            return
        conversation_id, path, index = found
        old = path[index]
        if index == 0:
            conversation = self._store.get_conversation(conversation_id)
            if conversation is not None and conversation.title == make_title(old.content):
                self._store.rename_conversation(conversation.id, DEFAULT_TITLE)  # retitled by send
        self._cut_view_from(path, index)
        origin = old.stats.get("edited_from")
        self._send(text, old.parent_id, origin if isinstance(origin, int) else old.id)

    def can_continue(self, message_id: int) -> bool:
        """Whether the answer ``message_id`` can be continued: it is the last message of the
        branch shown and it was stopped, cut off by the max-tokens limit, or interrupted."""
        if self.is_busy or self._conversation_id is None or self._models.model_info is None:
            return False
        path = self._store.messages(self._conversation_id)
        if not path or path[-1].id != message_id:
            return False
        last = path[-1]
        return answer_unfinished(last.role, last.content, last.status, last.stats.get("finish_reason"))

    def continue_answer(self, message_id: int) -> None:
        """Continue the answer ``message_id`` in place: the model carries on the same text (its
        prompt ends with the answer as written, no end of turn), and what it writes is added to
        the same message (its figures updated)."""
        if not self.can_continue(message_id):
            return
        self._settle_compare()
        message = self._store.get_message(message_id)
        assert message is not None
        assert self._conversation_id is not None
        gen_id = self._begin_answer()
        request = self._turn_request(self._conversation_id, continue_answer=True)
        self._continuing = message
        self._streaming_message = message_id
        self._streaming_text = [message.content]
        self._last_saved = time.monotonic()
        self.answer_continued.emit(message_id)
        self.answer_requested.emit(gen_id, request, self._sampling())

    def edit_answer(self, message_id: int, text: str) -> None:
        """Keep ``text`` as the answer ``message_id`` (the user fixed it): a new branch beside it,
        marked ``stats["edited"]``; the model's answer stays one ‹ away."""
        text = text.strip()
        found = self._editable(message_id, Role.ASSISTANT, text)
        if found is None:
            return
        conversation_id, path, index = found
        old = path[index]
        anchor = _branch_anchor(path, index)
        edited = self._store.add_message(
            conversation_id,
            Role.ASSISTANT.value,
            text,
            model=old.model,
            sampling=old.sampling,
            stats={"edited": True, "edited_from": old.id},
            parent_id=anchor.parent_id,
        )
        self._show_path(edited.id)
        self._announce(conversation_id)

    def edit_last_user_message(self, text: str) -> None:
        if self._conversation_id is None:
            return
        stored = self._store.messages(self._conversation_id)
        last_user = next((m for m in reversed(stored) if m.role == Role.USER.value), None)
        if last_user is not None:
            self.edit_message(last_user.id, text)

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
        if turn.dropped > 0 and not turn.continues:  # a notice would follow the answer continued
            notice = self._store.add_message(conversation_id, "notice", dropped_notice(turn.dropped))
            if self._shown(conversation_id) and self._compare_side(conversation_id) is None:
                self.message_added.emit(notice)
        reading_turn = self._streaming_message is not None  # a reading made its answer when it started
        if not reading_turn:
            placeholder = self._add_answer(
                conversation_id, MessageStatus.STREAMING, sampling=_sampling_dict(self._sampling())
            )
            self._streaming_message = placeholder.id
            self._last_saved = time.monotonic()
            self._show_answer(conversation_id, placeholder)
        if self._shown(conversation_id):
            self.context_changed.emit(turn.prompt_tokens, self._models.n_ctx)
        if not reading_turn:  # the documents' usual mode (their chips) is not the reading's
            self.turn_decided.emit(turn)
            self._turn_documents = self._whole_documents(gen_id, turn)
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
        documents = self._turn_documents
        # the documents' chips say so while they are read (not when the cache already held them)
        if documents is not None and documents[0] == gen_id and total >= documents[2]:
            if done < total:
                self._documents_shown = True
                self.documents_reading.emit(documents[1], done / total, -1.0 if left is None else left)
            else:
                self._end_documents_reading()

    def _whole_documents(
        self, gen_id: int, turn: Turn
    ) -> tuple[int, tuple[tuple[int, int], ...], int] | None:
        """The documents a turn sends whole, as (gen id, their chips, their tokens)."""
        decision = turn.documents
        if decision is None or decision.mode != DocumentMode.WHOLE:
            return None
        chips = []
        for attachment_id in decision.doc_ids:
            attachment = self._store.get_attachment(attachment_id)
            if attachment is not None and attachment.message_id is not None:
                chips.append((attachment.message_id, attachment_id))
        return (gen_id, tuple(chips), decision.tokens) if chips else None

    def _end_documents_reading(self) -> None:
        self._turn_documents = None
        if self._documents_shown:
            self._documents_shown = False
            self.documents_reading.emit((), 1.0, -1.0)

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
            if self._compare_side(conversation_id) is not None:
                self._finish_compare()
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
        continued, self._continuing = self._continuing, None
        if continued is not None:  # the figures cover the whole answer now
            saved_stats = _continued_stats(continued.stats, saved_stats)
        documents = self._turn.documents if self._turn is not None else None
        if documents is not None and continued is None:
            saved_stats["context_mode"] = documents.mode.value
            saved_stats["document_tokens"] = documents.tokens
            saved_stats["sources"] = list(documents.sources)
        self._store.update_message(
            message_id, content="".join(self._streaming_text), stats=saved_stats, status=status
        )
        self._streaming_text = []
        if continued is not None:
            stats = dataclasses.replace(stats, completion_tokens=saved_stats["completion_tokens"])
        self.generation_finished.emit(message_id, stats)
        if self._shown(conversation_id):
            self.context_changed.emit(stats.context_used, stats.n_ctx or self._models.n_ctx)
        if stats.prompt_tokens >= KV_SAVE_MIN_PROMPT_TOKENS:
            self.save_session_requested.emit(conversation_id, str(self._paths.kv_state_dir))
        if self._advance_compare(conversation_id, ended_early=cancelled):
            return  # still busy: the other side's answer is on its way
        if self._compare is None and (
            not cancelled and self._propose_tool_call(conversation_id, message_id, saved_stats)
        ):
            return  # still busy: the call waits for the user, then the answer continues
        self.busy_changed.emit(False)
        self._announce(conversation_id)
        if cancelled:
            self._pause_queue(conversation_id, "The answer was stopped, so these wait: Resume sends them.")
        elif self._shown(conversation_id):
            self._drain_queue()

    # -- tool calls -------------------------------------------------------------------------
    def _propose_tool_call(self, conversation_id: int, message_id: int, stats: dict[str, Any]) -> bool:
        """If the answer just stored is a call of a tool that is on, keep it as a pending call and
        ask for approval (or run it, when the user chose "Always" for that tool)."""
        if self._tools is None or self._tool_chain >= tool_calls.MAX_CALLS_PER_QUESTION:
            return False
        offered = {t.name for t in self._tools.tools()}
        if not offered:
            return False
        message = next((m for m in self._store.messages(conversation_id) if m.id == message_id), None)
        call = tool_calls.parse_tool_call(message.content, offered) if message is not None else None
        spec = self._tools.find(call.name) if call is not None else None
        if call is None or spec is None:
            return False
        self._tool_chain += 1
        record = tool_calls.call_record(spec.server, call)
        self._store.update_message(message_id, stats={**stats, "tool_call": record})
        self._tool_wait = (conversation_id, message_id, record)
        if self._tools.always_allowed(spec):
            self._run_tool()
        else:
            self.tool_call_proposed.emit(message_id, record)
        return True

    @property
    def pending_tool_call(self) -> dict[str, Any] | None:
        """The tool call record waiting for approval or its result (None: none)."""
        return self._tool_wait[2] if self._tool_wait is not None else None

    def _pending_call(self) -> tool_calls.ToolCall:
        assert self._tool_wait is not None
        record = self._tool_wait[2]
        return tool_calls.ToolCall(record["name"], dict(record.get("arguments") or {}))

    def decide_tool_call(self, decision: str) -> None:
        """The user's answer to the pending call: ``once``, ``always`` (this tool from now on) or
        ``deny`` (the model is told it was denied and answers without it)."""
        if self._tool_wait is None or self._tool_wait[2].get("running"):
            return
        if decision == "deny":
            self._decide_tool(tool_calls.DENIED, tool_calls.denied_result(self._pending_call()))
            return
        if decision == "always" and self._tools is not None:
            spec = self._tools.find(self._tool_wait[2]["name"])
            if spec is not None:
                self._tools.allow_always(spec)
        self._run_tool()

    def _run_tool(self) -> None:
        assert self._tool_wait is not None
        assert self._tools is not None
        conversation_id, message_id, record = self._tool_wait
        record = {**record, "running": True}
        self._tool_wait = (conversation_id, message_id, record)
        self.tool_call_updated.emit(message_id, record)
        self._tool_call_id += 1
        self._tools.call(self._tool_call_id, record["server"], record["name"], dict(record["arguments"]))

    @Slot(int, object)
    def _on_tools_call_finished(self, call_id: int, outcome: Any) -> None:
        if call_id != self._tool_call_id or self._tool_wait is None:
            return
        call = self._pending_call()
        if getattr(outcome, "is_error", None) is None:  # a ToolServerError: the server failed or died
            text = tool_calls.failed_result(call, outcome.message)
            self._notices.error_occurred.emit(outcome.message)
            self._decide_tool(tool_calls.FAILED, text)
            return
        text, cut = tool_calls.cap_result(outcome.text)
        if outcome.is_error:
            self._decide_tool(tool_calls.FAILED, tool_calls.failed_result(call, text), cut)
        else:
            self._decide_tool(tool_calls.DONE, text, cut)

    def _decide_tool(self, state: str, result: str, cut: bool = False, *, resume: bool = True) -> None:
        assert self._tool_wait is not None
        conversation_id, message_id, record = self._tool_wait
        record = tool_calls.decided_record(
            {k: v for k, v in record.items() if k != "running"}, state, result, cut
        )
        message = next((m for m in self._store.messages(conversation_id) if m.id == message_id), None)
        if message is not None:
            self._store.update_message(message_id, stats={**message.stats, "tool_call": record})
        self._tool_wait = None
        self.tool_call_updated.emit(message_id, record)
        if resume and message is not None and self._conversation_id == conversation_id and not self._closed:
            self._start_generation()  # the model reads the result (or the denial) and goes on
        else:
            self.busy_changed.emit(False)
            self._announce(conversation_id)

    @Slot(str, str)
    def _on_worker_engine_stopped(self, _message: str, _detail: str) -> None:
        # the answer being written (if any) fails next: its partial text is kept as "interrupted"
        self._engine_stopped_gen = self._gen_id if self._answering is not None else None

    @Slot(int)
    def _on_worker_answer_interrupted(self, gen_id: int) -> None:
        # a server went away mid-answer: kept as "interrupted", as for a local engine's crash
        if gen_id == self._gen_id and self._answering is not None:
            self._engine_stopped_gen = gen_id

    @Slot(int, str, str)
    def _on_worker_generation_failed(self, gen_id: int, message: str, detail: str) -> None:
        if gen_id != self._gen_id or self._answering is None:
            return
        conversation_id, message_id = self._answering, self._streaming_message
        interrupted = self._engine_stopped_gen == gen_id
        self._engine_stopped_gen = None
        self._end_answer()
        continued, self._continuing = self._continuing, None
        if message_id is not None and continued is not None:
            # Continue failed: the answer keeps what it had and what was added, and how it ended
            status = MessageStatus.INTERRUPTED if interrupted else MessageStatus(continued.status)
            self._store.update_message(
                message_id,
                content="".join(self._streaming_text),
                status=status,
                stats={**continued.stats, "error": message},
            )
        elif message_id is not None:
            partial = "".join(self._streaming_text)
            status = MessageStatus.INTERRUPTED if interrupted and partial else MessageStatus.ERROR
            self._store.update_message(message_id, content=partial, status=status, stats={"error": message})
        elif self._store.get_conversation(conversation_id) is not None:
            # the turn could not be built (too long, say): the answer that never started says why
            failed = self._add_answer(conversation_id, MessageStatus.ERROR, stats={"error": message})
            message_id = failed.id
            self._show_answer(conversation_id, failed)
        self._streaming_text = []
        self.generation_failed.emit(message_id or 0, message, detail)
        self._advance_compare(conversation_id, ended_early=True)
        self.busy_changed.emit(False)
        self._pause_queue(conversation_id, "The answer failed, so these wait: Resume sends them.")

    def _show_answer(self, conversation_id: int, answer: StoredMessage) -> None:
        """A new answer goes into the chat: under its question, or into its side of a comparison."""
        side = self._compare_side(conversation_id)
        if side is not None:
            run = self._compare
            assert run is not None
            self._compare = dataclasses.replace(run, answers=(*run.answers, answer.id))
            if self._shown(conversation_id):
                self.compare_answer_added.emit(run.side, answer)
        elif self._shown(conversation_id):
            self.message_added.emit(answer)

    def _add_answer(
        self,
        conversation_id: int,
        status: MessageStatus,
        *,
        sampling: dict[str, Any] | None = None,
        stats: dict[str, Any] | None = None,
    ) -> StoredMessage:
        """An empty answer by the loaded model (filled as it streams, or saying why it failed),
        after the last message of the branch shown."""
        info = self._models.model_info
        side = self._compare_side(conversation_id)
        model = side.model if side is not None and side.model else (info.name if info else "")
        return self._store.add_message(
            conversation_id,
            Role.ASSISTANT.value,
            "",
            model=model,
            status=status,
            sampling=sampling,
            stats=stats,
        )

    def _end_answer(self) -> None:
        self._end_documents_reading()
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
        self._tool_wait = None

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


def _branch_anchor(path: list[StoredMessage], index: int) -> StoredMessage:
    """Where the branch holding ``path[index]`` starts: an answer after "left out" notices starts
    at the first of them (a turn's notice and answer are one branch)."""
    while index > 0 and path[index].role == Role.ASSISTANT.value and path[index - 1].role == "notice":
        index -= 1
    if path[index].role == "notice":
        while index > 0 and path[index - 1].role == "notice":
            index -= 1
    return path[index]


def _position(path: list[StoredMessage], message_id: int) -> int | None:
    """Where ``message_id`` is on the branch ``path`` (None: not on it)."""
    return next((i for i, m in enumerate(path) if m.id == message_id), None)


def _continued_stats(before: dict[str, Any], now: dict[str, Any]) -> dict[str, Any]:
    """The stats of an answer after a Continue: tokens added up, the speed and the finish of the
    continuation, how many times it was continued; what the first part recorded (sources) kept."""
    merged = {**before, **now}
    merged.pop("error", None)
    merged["completion_tokens"] = int(before.get("completion_tokens") or 0) + int(now["completion_tokens"])
    merged["continued"] = int(before.get("continued") or 0) + 1
    for key in ("context_mode", "document_tokens", "sources"):
        if key in before:
            merged[key] = before[key]
    return merged


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
        "drafted_tokens": stats.drafted_tokens,
        "accepted_tokens": stats.accepted_tokens,
    }
