"""ChatController: the GUI-thread brain between the widgets, the store and the inference worker.

It owns no widgets. Views call its methods; it answers with signals carrying plain data. It
mutates the store and forwards streamed text, ignoring results whose ``gen_id`` is stale.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QObject, QThread, Signal, Slot

from app.config import AppPaths, Settings, save_settings
from app.core.context import dropped_notice, reply_reserve
from app.core.planner import LoadRequest, PlanOverrides
from app.core.store import make_title
from app.core.types import ChatMessage, GenerationStats, LoadParams, ModelInfo, Role, SamplingParams
from app.workers.inference import LlamaWorker

if TYPE_CHECKING:
    from collections.abc import Callable

    from app.core.planner import Plan, PlannedLoad
    from app.core.ports import Engine
    from app.core.store import Conversation, Store, StoredMessage

log = logging.getLogger(__name__)

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
    """

    model_load_started = Signal(str)
    model_load_progress = Signal(float)
    model_loaded = Signal(object)
    model_load_failed = Signal(str, str)
    plan_changed = Signal(object)
    conversations_changed = Signal()
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

    # commands to the worker (queued across threads)
    load_requested = Signal(object)
    generate_requested = Signal(int, list, object, int)
    count_requested = Signal(int, list)

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
        self._planner = planner
        self._overrides: PlanOverrides | None = None
        self._worker = LlamaWorker(engine_factory, planner)
        self._worker.moveToThread(self._thread)
        self.load_requested.connect(self._worker.load_model)
        self.generate_requested.connect(self._worker.generate)
        self.count_requested.connect(self._worker.count_tokens)
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
        if info.chat_template_note:
            self.error_occurred.emit(info.chat_template_note)
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
        self._request_context_count()

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

    def _model_messages(self, stored: list[StoredMessage]) -> list[ChatMessage]:
        out: list[ChatMessage] = []
        if self._settings.system_prompt.strip():
            out.append(ChatMessage.system(self._settings.system_prompt.strip()))
        for m in stored:
            if m.role not in (Role.USER.value, Role.ASSISTANT.value):
                continue
            if m.role == Role.ASSISTANT.value and (m.status == "streaming" or not m.content.strip()):
                continue
            out.append(ChatMessage(m.role, m.content))
        return out

    def send(self, text: str) -> None:
        text = text.strip()
        if not text:
            return
        if self._model_info is None:
            self.error_occurred.emit("Load a model first: File → Open model file…")
            return
        if self.is_busy:
            return
        if self._conversation_id is None:
            conversation = self._store.create_conversation(make_title(text), self._model_info.name)
            self._conversation_id = conversation.id
            self._remember(last_conversation=conversation.id)
            self.conversations_changed.emit()
            self.conversation_opened.emit(conversation.id, [])
        user = self._store.add_message(
            self._conversation_id, Role.USER.value, text, model=self._model_info.name
        )
        self.message_added.emit(user)
        self._start_generation()

    def _start_generation(self) -> None:
        assert self._conversation_id is not None
        assert self._model_info is not None
        history = self._store.messages(self._conversation_id)
        messages = self._model_messages(history)
        sampling = self._sampling()
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
        self._store.update_message(
            message_id, content="".join(self._streaming_text), stats=_stats_dict(stats), status=status
        )
        self._streaming_message = None
        self._streaming_text = []
        self.generation_finished.emit(message_id, stats)
        self.context_changed.emit(stats.context_used, stats.n_ctx or self._n_ctx())
        self.busy_changed.emit(False)
        self.conversations_changed.emit()

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
        if self._thread.isRunning():
            self._thread.quit()
            if not self._thread.wait(15000):
                log.error("inference thread did not stop within 15 s")
        # The worker's engine is released in the thread that owns it being gone: close it here.
        engine = self._worker._engine
        if engine is not None:
            engine.unload()


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
