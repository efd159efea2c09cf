"""The inference worker: the one thread that owns the model.

``LlamaWorker`` lives in its own QThread for the life of the app. Commands arrive as queued
signals (``*_requested`` on the controller, connected to the worker's slots); results leave as
signals carrying plain data. Nothing is raised across threads: failures become ``*_failed``
signals with a human message and a detail string.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QObject, QThread, Signal, Slot

from app.config import kv_state_files
from app.core import reading
from app.core.api_requests import ApiError
from app.core.context import MessageTooLongError, reply_reserve
from app.core.engine import OutOfMemoryError, ProjectorError, check_model_file, first_split_part
from app.core.engine.errors import ComputeServerError, EngineCrashedError, EngineHungError, TrialCrashedError
from app.core.engine.remote import RemoteEngine, ServerConfig, ServerLostError
from app.core.engine.rpc import lost_compute_server
from app.core.errors import UserError
from app.core.gguf_info import GGUFError, find_projector, projector_mismatch, read_gguf_info
from app.core.heap import release_free_heap
from app.core.images import image_uri
from app.core.planner import LoadRequest, safer_overrides
from app.core.ports import SavesKVState, TriesFiles
from app.core.retrieval import DocumentChunks, HybridSource
from app.core.turns import MAX_SOURCES_KEPT, DocumentDecision, ModelLimits, Turn, build_turn
from app.core.types import DocumentMode, FinishReason

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from app.core.api_requests import ApiJob
    from app.core.planner import PlannedLoad
    from app.core.ports import Engine
    from app.core.reading import ReadingRequest
    from app.core.retrieval import ChunkIndex, EmbedQuery
    from app.core.turns import DocumentSource, TurnRequest
    from app.core.types import ChatMessage, LoadParams, ModelInfo, SamplingParams

log = logging.getLogger(__name__)

MAX_UI_UPDATES_PER_SECOND = 30
# At most this often, freed heap memory is handed back after an answer (a Scout answer takes
# longer: after every one). Each trim takes ~0.6 ms on average here (worst 9 ms), on this thread.
TRIM_INTERVAL_S = 2.0


def _human(exc: BaseException) -> tuple[str, str]:
    """The message for the user and the technical detail of a failure."""
    detail = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, UserError):  # its message is written for the user
        return exc.message, exc.detail or detail
    return f"Something went wrong: {exc}", detail


def _projector_mismatch(model: Path, projector: Path) -> str | None:
    """:func:`projector_mismatch` from the model's header; None when the header cannot be read
    (llama.cpp then says what is wrong with the model)."""
    try:
        return projector_mismatch(read_gguf_info(model), projector)
    except GGUFError:
        return None


class LlamaWorker(QObject):
    """Owns the engine. Lives in its own QThread.

    Signals:
        load_progress(float): model loading, 0..1.
        plan_ready(object): the offload Plan chosen for the model (planner.Plan).
        load_notice(str): a sentence for the user, e.g. what a retry after a memory failure changed.
        model_loaded(object): ModelInfo.
        model_kept(object): ModelInfo of the model still loaded after a failed load (emitted just
            before ``load_failed``; not emitted when no model is left).
        load_failed(str, str): human message, detail.
        turn_built(int, object): gen_id, the Turn decided for it (before any text streams).
        turn_previewed(int, object): request id, the Turn the conversation would send now.
        prompt_progress(int, int, int): gen_id, prompt tokens evaluated so far, total to evaluate.
        tokens_generated(int, str): gen_id, text (batched: at most 30 emissions per second).
        generation_finished(int, object): gen_id, GenerationStats.
        generation_failed(int, str, str): gen_id, human message, detail.
        session_saved(int, int): conversation id, tokens of KV cache written to disk.
        session_restored(int, int): conversation id, tokens of KV cache read back (0: none).
        engine_stopped(str, str): the engine process died or hung (message, detail); the model is
            gone. Sent before the ``*_failed`` signal of the request it broke.
        answer_interrupted(int): gen_id: the server answering it went away mid-answer (the text
            so far stands, as after a local engine's crash). Sent before ``generation_failed``.
        reading_progress(int, int, int): gen_id, parts read, parts in all (``read_whole``; first
            with 0 read, before any part).
        extract_read(int, object): gen_id, the PartExtract of a part just read (to be saved).
        load_killed_engine(str): the load of this model path ended with an engine process dead
            (the engine's, or the throw-away one that tried the file). Sent before ``load_failed``.
        compute_server_failed(): the load failed because a compute server (Settings → Machines)
            cannot be used: not reachable, or lost while loading. Sent before ``load_failed``.
        file_tried(str, float): a model path was tried in a throw-away engine process and
            survived; the seconds that took.
        api_answer_started(int): the worker began answering an API request (job id).
        api_answer_finished(int): that answer ended (done, failed or cancelled).
    """

    load_progress = Signal(float)
    plan_ready = Signal(object)
    load_notice = Signal(str)
    model_loaded = Signal(object)
    model_kept = Signal(object)
    load_failed = Signal(str, str)
    turn_built = Signal(int, object)
    turn_previewed = Signal(int, object)
    prompt_progress = Signal(int, int, int)
    tokens_generated = Signal(int, str)
    generation_finished = Signal(int, object)
    generation_failed = Signal(int, str, str)
    session_saved = Signal(int, int)
    session_restored = Signal(int, int)
    engine_stopped = Signal(str, str)
    answer_interrupted = Signal(int)
    reading_progress = Signal(int, int, int)
    extract_read = Signal(int, object)
    load_killed_engine = Signal(str)
    compute_server_failed = Signal()
    file_tried = Signal(str, float)
    api_answer_started = Signal(int)
    api_answer_finished = Signal(int)

    def __init__(
        self,
        engine_factory: Callable[[], Engine],
        planner: Callable[[LoadRequest], PlannedLoad] | None = None,
        documents: Callable[[], ChunkIndex] | None = None,
        search_model: Callable[[], tuple[EmbedQuery | None, str | None]] | None = None,
    ) -> None:
        super().__init__()  # no parent: it will be moved to its thread
        self._engine_factory = engine_factory
        self._planner = planner
        self._engine: Engine | None = None  # the local engine (the factory's)
        self._remote: RemoteEngine | None = None  # a server's model, while one is used
        self.cancel_event = threading.Event()  # set from any thread: stops generation
        self.load_cancel_event = threading.Event()  # set from any thread: stops loading
        self.closing_event = threading.Event()  # set when the app closes: no model is reloaded
        self._loaded_params: LoadParams | None = None  # how the loaded model was loaded
        self._last_progress_emit = 0.0
        self._trimmed_at = 0.0
        self._open_documents = documents  # opened lazily, in this worker's thread
        self._document_source: ChunkIndex | None = None
        self._hybrid: HybridSource | None = None
        self._search_model = search_model  # (embed_query, model id) of the search model, or Nones

    @property
    def engine(self) -> Engine:
        """The engine answers come from: a server's while one is connected, else the local one."""
        if self._remote is not None:
            return self._remote
        if self._engine is None:
            self._engine = self._engine_factory()
        return self._engine

    def _connect_server(self, config: ServerConfig) -> None:
        """Use a model on a server. The model in use stays until the server answered; then a
        local model is unloaded (its memory is free again) and a previous server is let go."""
        remote = RemoteEngine(config)
        try:
            info = remote.load(None, lambda _f: not self.load_cancel_event.is_set())
        except Exception as exc:  # noqa: BLE001 - thread boundary
            remote.close()
            message, detail = _human(exc)
            log.warning("connecting to %s failed: %s", config.address, message)
            kept = self.engine.model_info
            if kept is not None:
                self.model_kept.emit(kept)
            self.load_failed.emit(message, detail)
            return
        previous, self._remote = self._remote, remote
        if previous is not None:
            previous.close()
        if self._engine is not None and self._engine.model_info is not None:
            self._engine.unload()
            self._release_free_heap(force=True)
        self._loaded_params = None
        self.model_loaded.emit(info)

    @Slot(object)
    @Slot(object)
    def load_untried_model(self, request: LoadParams | LoadRequest) -> None:
        """:meth:`load_model` for a file never loaded before: with an engine that can
        (:class:`~app.core.ports.TriesFiles`), the file is first opened in a throw-away engine
        process, before anything is unloaded, so a file that aborts llama.cpp leaves the loaded
        model (and the engine serving the chat) as they are."""
        self.load_model(request, try_first=True)

    @Slot(object)
    def load_model(
        self, request: LoadParams | LoadRequest | ServerConfig, *, try_first: bool = False
    ) -> None:
        """Load from explicit LoadParams, or plan a LoadRequest first (header, free memory, dry run).

        The model already loaded stays usable when the new one fails: the new file is checked
        (file, header, vision projector) before anything is unloaded, and when the new model fails
        after that (llama.cpp refused it, memory ran out, the user cancelled), the previous one is
        loaded again with the parameters it had. ``model_kept`` then names it, before ``load_failed``.
        """
        self.load_cancel_event.clear()
        self._last_progress_emit = 0.0
        if isinstance(request, ServerConfig):
            self._connect_server(request)
            return
        remote, self._remote = self._remote, None  # a local load: the server's model stays until it succeeds

        def progress(fraction: float) -> bool:
            now = time.monotonic()
            if fraction >= 1.0 or now - self._last_progress_emit >= 0.1:
                self._last_progress_emit = now
                self.load_progress.emit(fraction)
            return not self.load_cancel_event.is_set()

        previous = self._loaded_params if self.engine.model_info is not None else None
        try:
            if not isinstance(request, LoadRequest):
                info, params = self._load_params(request, progress, try_first)
            elif self._planner is None:
                raise RuntimeError("no planner configured for a LoadRequest")
            else:
                info, params = self._load_planned(request, progress, try_first)
        except Exception as exc:  # noqa: BLE001 - thread boundary
            message, detail = _human(exc)
            self._note_engine_stopped(exc, message, detail)
            servers = request.compute_servers
            if servers and (isinstance(exc, ComputeServerError) or lost_compute_server(detail, servers)):
                self.compute_server_failed.emit()  # the network's doing, not the file's
            elif isinstance(exc, (EngineCrashedError, EngineHungError, TrialCrashedError)):
                self.load_killed_engine.emit(str(request.model_path))
            log.warning("model load failed: %s", message)
            if remote is not None:
                self._remote = remote
                kept = remote.model_info
            else:
                kept = self._keep_previous(previous)
            if kept is not None:
                self.model_kept.emit(kept)
            self.load_failed.emit(message, detail)
            return
        if remote is not None:
            remote.close()
        self._loaded_params = params
        self.model_loaded.emit(info)

    def _try_first(self, path: Path) -> None:
        """Open ``path`` in a throw-away engine process (engines that can); raises what it raised."""
        engine = self.engine
        if isinstance(engine, TriesFiles):
            check_model_file(path)  # the same clear sentences as a direct load
            seconds = engine.try_file(path)
            log.info("%s survived a throw-away engine process (%.2f s)", path.name, seconds)
            self.file_tried.emit(str(path), seconds)

    def _load_params(
        self, params: LoadParams, progress: Callable[[float], bool], try_first: bool = False
    ) -> tuple[ModelInfo, LoadParams]:
        """Load from explicit parameters; a projector that does not fit is left out (with a notice).
        The engine checks the file before it unloads anything."""
        path = Path(params.model_path)
        if try_first:
            self._try_first(path)
        if params.mmproj_path is not None:
            reason = _projector_mismatch(path, Path(params.mmproj_path))
            if reason:
                self._projector_not_used(path, Path(params.mmproj_path), reason)
                params = dataclasses.replace(params, mmproj_path=None)
        try:
            return self.engine.load(params, progress), params
        except ProjectorError as exc:
            if params.mmproj_path is None or self.load_cancel_event.is_set():
                raise
            self._projector_not_used(path, Path(params.mmproj_path), exc.message.rstrip("."), refused=True)
            params = dataclasses.replace(params, mmproj_path=None)
            return self.engine.load(params, progress), params

    def _load_planned(
        self, request: LoadRequest, progress: Callable[[float], bool], try_first: bool = False
    ) -> tuple[ModelInfo, LoadParams]:
        """Check the file, then plan and load it (retrying with safer plans after running out of
        memory, and without the projector when the projector cannot be attached)."""
        assert self._planner is not None
        path = first_split_part(Path(request.model_path))
        check_model_file(path)  # the same clear sentences as a direct load
        attempt = dataclasses.replace(request, model_path=path)
        header = read_gguf_info(path)  # a damaged header fails here, before anything is unloaded
        projector = find_projector(path) if request.use_projector else None
        if projector is not None:
            reason = projector_mismatch(header, projector)
            if reason:
                self._projector_not_used(path, projector, reason)
                attempt = dataclasses.replace(attempt, use_projector=False)
        if try_first:
            self._try_first(path)
        # Plan against the memory that will really be free: a loaded model (on a reload, say)
        # would otherwise count against the new plan's budget. It is loaded again on failure.
        self.engine.unload()
        changes: list[str] = []
        while True:
            planned = self._planner(attempt)
            if planned.plan is not None:
                self.plan_ready.emit(planned.plan)
                if not planned.plan.fits:
                    log.warning("plan does not fit: %s", planned.plan.fits_text)
            try:
                return self.engine.load(planned.params, progress), planned.params
            except ProjectorError as exc:
                mmproj = planned.params.mmproj_path
                if mmproj is None or self.load_cancel_event.is_set():
                    raise
                self._projector_not_used(path, Path(mmproj), exc.message.rstrip("."), refused=True)
                attempt = dataclasses.replace(attempt, use_projector=False)
            except OutOfMemoryError:
                safer = safer_overrides(planned.plan, attempt.overrides) if planned.plan else None
                if safer is None or self.load_cancel_event.is_set():
                    raise
                attempt = dataclasses.replace(attempt, overrides=safer[0])
                changes.append(safer[1])
                self.load_notice.emit(
                    "Loading ran out of memory, so Scout Chat retried with a safer plan: "
                    + "; ".join(changes)
                    + "."
                )

    def _projector_not_used(
        self, model: Path, projector: Path, reason: str, *, refused: bool = False
    ) -> None:
        """Tell the user the model is loaded without its projector: ``reason`` is a few words
        from the headers, or (``refused``) llama.cpp's sentence."""
        log.warning("vision projector %s not used for %s: %s", projector, model, reason)
        if refused:
            why = (
                f"llama.cpp could not attach the vision projector {projector.name} to {model.name}: {reason}"
            )
        else:
            why = f"The vision projector {projector.name} does not match {model.name} ({reason})"
        self.load_notice.emit(
            f"{why}. It was not used: the model is loaded for text only and cannot read pictures."
        )

    def _keep_previous(self, previous: LoadParams | None) -> ModelInfo | None:
        """After a failed load: the model still loaded, loading the previous one again when the
        failure came after it was unloaded; None when no model is left (or the app is closing)."""
        engine = self.engine
        if engine.model_info is not None:
            return engine.model_info  # the failure came before anything was unloaded
        if previous is None or self.closing_event.is_set():
            self._loaded_params = None
            return None
        log.info("loading %s again after the failed load", Path(previous.model_path).name)
        try:
            return engine.load(previous)
        except Exception:
            log.exception("the previous model could not be loaded again")
            self._loaded_params = None
            return None

    @Slot()
    def unload_model(self) -> None:
        self._loaded_params = None
        if self._remote is not None:
            self._remote.close()
            self._remote = None
        if self._engine is not None:
            self._engine.unload()
            self._release_free_heap(force=True)

    def _release_free_heap(self, force: bool = False) -> None:
        """Return freed heap memory to the OS after an answer (at most every ``TRIM_INTERVAL_S``)
        or an unload, on this thread so the GUI thread never waits for it."""
        now = time.monotonic()
        if force or now - self._trimmed_at >= TRIM_INTERVAL_S:
            self._trimmed_at = now
            release_free_heap()

    # -- turns: what the model sees, decided where the tokenizer lives ---------------------------
    def _limits(self) -> ModelLimits | None:
        info = self.engine.model_info
        if info is None:
            return None
        return ModelLimits(
            info.n_ctx,
            info.has_vision,
            self.engine.count_chat_tokens,
            self.engine.count_tokens,
            info.n_ctx_train,
        )

    def _documents(self) -> HybridSource | None:
        if self._document_source is None and self._open_documents is not None:
            self._document_source = self._open_documents()
        if self._document_source is None:
            return None
        embed_query, model = self._search_model() if self._search_model is not None else (None, None)
        source = self._hybrid
        if source is None or (source.embed_query, source.model) != (embed_query, model):
            # kept while the search model stays: it caches the documents' vectors between turns
            source = self._hybrid = HybridSource(self._document_source, embed_query, model)
        return source

    @Slot(int, object)
    def preview_turn(self, request_id: int, request: TurnRequest) -> None:
        """The turn as it would be sent now (the context meter, the document chips' mode)."""
        try:
            limits = self._limits()
            if limits is None:
                return
            turn = build_turn(request, limits, self._documents(), image_uri)
        except MessageTooLongError:
            return  # nothing to preview until the user shortens the system prompt
        except Exception:
            log.exception("previewing the turn failed")
            return
        self.turn_previewed.emit(request_id, turn)

    # -- KV state of a conversation on disk (long documents reopen without re-reading) ---------
    def _session_file(self, conversation_id: int, directory: str) -> tuple[SavesKVState, Path] | None:
        """The engine that keeps KV states and the file for this conversation (None: no state)."""
        engine = self.engine
        if not isinstance(engine, SavesKVState) or self.engine.model_info is None:
            return None
        return engine, Path(directory) / f"conversation-{conversation_id}-{engine.state_key()}.llamastate"

    @Slot(int, str)
    def save_session(self, conversation_id: int, directory: str) -> None:
        try:
            session = self._session_file(conversation_id, directory)
            if session is None:
                return
            engine, path = session
            tokens = engine.save_state(path)
            for stale in kv_state_files(path.parent, conversation_id):
                if stale != path:
                    stale.unlink(missing_ok=True)  # made for another model or plan
            self.session_saved.emit(conversation_id, tokens)
        except Exception:
            log.exception("saving the KV state of conversation %d failed", conversation_id)

    @Slot(int, str)
    def restore_session(self, conversation_id: int, directory: str) -> None:
        try:
            session = self._session_file(conversation_id, directory)
            tokens = session[0].load_state(session[1]) if session is not None else 0
        except Exception:
            log.exception("restoring the KV state of conversation %d failed", conversation_id)
            tokens = 0
        self.session_restored.emit(conversation_id, tokens)

    @Slot(int, object, object)
    def answer(self, gen_id: int, request: TurnRequest, sampling: SamplingParams) -> None:
        """Decide the turn (:func:`app.core.turns.build_turn`), announce it, then stream the answer."""
        try:
            limits = self._limits()
            if limits is None:
                self.generation_failed.emit(gen_id, "No model is loaded. Open a GGUF model file first.", "")
                return
            turn = build_turn(request, limits, self._documents(), image_uri)
            self.turn_built.emit(gen_id, turn)
            self._stream(gen_id, turn, sampling)
        except Exception as exc:  # noqa: BLE001 - thread boundary
            self._answer_failed(gen_id, exc, "generation")

    @Slot(object)
    def answer_api(self, job: ApiJob) -> None:
        """Answer a request of the local API server (app/core/api_server.py): the client's own
        messages, streamed into ``job.events`` for the HTTP thread. It waited in this thread's
        queue like the window's answers; ``job.cancel`` stops it (client gone, the window's Stop)."""
        if job.cancel.is_set():  # the client left while it waited
            job.fail(ApiError(499, "The client went away.", "cancelled"))
            return
        self.api_answer_started.emit(job.id)
        try:
            engine = self.engine
            info = engine.model_info
            if info is None:
                job.fail(
                    ApiError(503, "No model is loaded in Scout Chat.", "server_error", "model_not_loaded")
                )
                return
            messages = job.request.prompt_messages  # the client's, with its tools offered
            if job.request.has_images and not info.has_vision:
                job.fail(
                    ApiError(400, f"The loaded model ({info.name}) cannot read pictures.", param="messages")
                )
                return
            room = info.n_ctx - engine.count_chat_tokens(messages)
            if room < 1:
                job.fail(
                    ApiError(
                        400,
                        f"The messages do not fit the model's context of {info.n_ctx:,} tokens.",
                        code="context_length_exceeded",
                        param="messages",
                    )
                )
                return
            sampling = job.with_max_tokens(min(job.request.sampling.max_tokens, room))
            for piece in engine.stream_chat(messages, sampling, job.cancel, None):
                job.piece(piece)
            job.done(engine.last_stats)
        except Exception as exc:
            message, detail = _human(exc)
            log.exception("API answer %d failed", job.id)
            self._note_engine_stopped(exc, message, detail)
            job.fail(ApiError(500, message, "server_error"))
        finally:
            self.api_answer_finished.emit(job.id)

    def _answer_failed(self, gen_id: int, exc: Exception, what: str) -> None:
        """Report why answer ``gen_id`` failed: a question too long for the context as it is;
        anything else logged, and noted when the engine stopped."""
        if isinstance(exc, MessageTooLongError):
            self.generation_failed.emit(gen_id, str(exc), "")
            return
        message, detail = _human(exc)
        log.error("%s %d failed", what, gen_id, exc_info=exc)
        self._note_engine_stopped(exc, message, detail)
        if isinstance(exc, ServerLostError):
            self.answer_interrupted.emit(gen_id)
        self.generation_failed.emit(gen_id, message, detail)

    @Slot(int, object, object)
    def read_whole(self, gen_id: int, request: ReadingRequest, sampling: SamplingParams) -> None:
        """Read the documents whole, in parts that fit (app/core/reading.py), then stream the answer
        combined from the extracts. Stopped mid-way, the answer is the extracts found so far."""
        try:
            limits = self._limits()
            source = self._documents()
            if limits is None or source is None:
                self.generation_failed.emit(gen_id, "No model is loaded. Open a GGUF model file first.", "")
                return
            self._read_whole(gen_id, request, sampling, limits, source)
        except Exception as exc:  # noqa: BLE001 - thread boundary
            self._answer_failed(gen_id, exc, "reading")

    def _read_whole(
        self,
        gen_id: int,
        request: ReadingRequest,
        sampling: SamplingParams,
        limits: ModelLimits,
        source: DocumentSource,
    ) -> None:
        docs = [
            DocumentChunks(doc_id, name, tuple(source.chunks(doc_id))) for doc_id, name in request.documents
        ]
        question = request.question
        budget = reading.part_budget(limits.n_ctx, question, limits.count_chat_tokens, request.whole_limit)
        if budget < reading.MIN_PART_TOKENS:
            raise MessageTooLongError(limits.n_ctx - budget + reading.MIN_PART_TOKENS, limits.n_ctx)
        parts = reading.plan_parts(docs, budget, limits.count_text_tokens)
        total = len(parts)
        key = reading.question_key(question)
        quick = dataclasses.replace(
            sampling,
            max_tokens=reading.extract_reserve(limits.n_ctx),
            temperature=min(sampling.temperature, reading.EXTRACT_TEMPERATURE),
        )
        self.reading_progress.emit(gen_id, 0, total)
        extracts: list[tuple[reading.Part, str]] = []
        for number, part in enumerate(parts, start=1):
            text = request.saved.get((part.doc_id, part.key))
            if text is None:
                if self.cancel_event.is_set():
                    break
                text = self._generate(reading.extract_messages(question, part, number, total), quick)
                if self.cancel_event.is_set():
                    break  # this part was cut short: not kept
                self.extract_read.emit(gen_id, reading.PartExtract(part.doc_id, part.key, key, text))
            extracts.append((part, text))
            self.reading_progress.emit(gen_id, number, total)
        if len(extracts) < total:
            self._stopped_reading(gen_id, reading.partial_answer(extracts, total))
            return

        names = [name for _doc_id, name in request.documents]
        reserve = reply_reserve(limits.n_ctx, request.turn.max_tokens)
        usable = limits.n_ctx - reserve

        def final(group: Sequence[reading.Note]) -> list[ChatMessage]:
            return reading.combine_messages(question, group, names, request.turn.system_prompt)

        notes = reading.notes_of(extracts)
        for _pass in range(reading.MAX_MERGE_PASSES):
            groups = reading.combine_groups(notes, usable, limits.count_chat_tokens, final)
            if len(groups) == 1:
                notes = groups[0]
                break
            if all(len(group) == 1 for group in groups):  # each note alone fills the context
                notes = reading.squeeze_notes(notes, usable, limits.count_chat_tokens, final)
                break
            merged: list[reading.Note] = []
            for group in groups:
                if len(group) == 1:
                    merged.append(group[0])
                    continue
                text = self._generate(reading.merge_messages(question, group), quick)
                if self.cancel_event.is_set():
                    self._stopped_reading(gen_id, reading.partial_answer(extracts, total))
                    return
                label = f"{group[0].label} to {group[-1].label}"
                if not reading.is_none(text):
                    merged.append(reading.Note(label, text.strip()))
            notes = merged
        else:  # still too many after every pass (never seen)
            log.warning("reading %d: notes still too long after %d merges", gen_id, reading.MAX_MERGE_PASSES)
            notes = reading.squeeze_notes(notes, usable, limits.count_chat_tokens, final)
        messages = tuple(final(notes))
        prompt_tokens = limits.count_chat_tokens(messages)
        if prompt_tokens > usable:
            raise MessageTooLongError(prompt_tokens, usable)
        decision = DocumentDecision(
            DocumentMode.WHOLE,
            f"read whole in {total} part{'s' if total != 1 else ''}: {sum(p.tokens for p in parts):,} tokens",
            prompt_tokens,
            tuple(doc_id for doc_id, _name in request.documents),
            0,
            _reading_sources(docs, reading.cited_pages(notes)),
        )
        turn = Turn(messages, prompt_tokens, reserve, 0, decision)
        self.turn_built.emit(gen_id, turn)
        self._stream(gen_id, turn, sampling)

    def _generate(self, messages: Sequence[ChatMessage], sampling: SamplingParams) -> str:
        """A whole answer at once (an extract, a merge), stopped by ``cancel_event``."""
        return "".join(self.engine.stream_chat(messages, sampling, self.cancel_event, None))

    def _stopped_reading(self, gen_id: int, text: str) -> None:
        self.tokens_generated.emit(gen_id, text)
        stats = dataclasses.replace(self.engine.last_stats, finish_reason=FinishReason.CANCELLED)
        self.generation_finished.emit(gen_id, stats)

    def _note_engine_stopped(self, exc: BaseException, message: str, detail: str) -> None:
        if isinstance(exc, (EngineCrashedError, EngineHungError)):
            self.engine_stopped.emit(message, detail)

    def _stream(self, gen_id: int, turn: Turn, sampling: SamplingParams) -> None:
        engine = self.engine
        interval = 1.0 / MAX_UI_UPDATES_PER_SECOND
        buffer: list[str] = []
        last_emit = 0.0  # the first piece goes out at once: it is what TTFT measures

        def on_prompt_progress(done: int, total: int) -> None:
            self.prompt_progress.emit(gen_id, done, total)

        # only a Continue passes the flag: every engine takes the plain call
        extra = {"continue_last": True} if turn.continues else {}
        for piece in engine.stream_chat(
            turn.messages, sampling, self.cancel_event, on_prompt_progress, **extra
        ):
            buffer.append(piece)
            now = time.monotonic()
            if now - last_emit >= interval:
                self.tokens_generated.emit(gen_id, "".join(buffer))
                buffer.clear()
                last_emit = now
        if buffer:
            self.tokens_generated.emit(gen_id, "".join(buffer))
        stats = engine.last_stats
        if self.cancel_event.is_set() and stats.finish_reason != FinishReason.CANCELLED:
            stats = dataclasses.replace(stats, finish_reason=FinishReason.CANCELLED)
        self.generation_finished.emit(gen_id, dataclasses.replace(stats, dropped_messages=turn.dropped))
        self._release_free_heap()

    def close(self) -> None:
        """Release what the worker opened in its thread (call after the thread has finished)."""
        if self._document_source is not None:
            self._document_source.close()
            self._document_source = None
            self._hybrid = None
        if self._remote is not None:
            self._remote.close()
            self._remote = None


def _reading_sources(docs: Sequence[DocumentChunks], pages: Sequence[int]) -> tuple[dict[str, Any], ...]:
    """The passages of the pages the notes cite (what a clicked citation of the answer shows)."""
    out: list[dict[str, Any]] = []
    for page in pages[:MAX_SOURCES_KEPT]:
        for doc in docs:
            text = "\n\n".join(c.text for c in doc.chunks if c.page == page)
            if text:
                anchor = f"p. {page}"
                out.append({"doc": doc.name, "anchor": anchor, "page": page, "text": text[:4000]})
    return tuple(out)


class InferenceThread:
    """The inference thread and the :class:`LlamaWorker` living on it, for the life of the app.

    The model and conversation controllers both talk to this one worker (one owner of the model);
    ``generating`` tells them whether an answer is being written.
    """

    def __init__(
        self,
        engine_factory: Callable[[], Engine],
        planner: Callable[[LoadRequest], PlannedLoad] | None = None,
        documents: Callable[[], ChunkIndex] | None = None,
        search_model: Callable[[], tuple[EmbedQuery | None, str | None]] | None = None,
    ) -> None:
        self.worker = LlamaWorker(engine_factory, planner, documents, search_model)
        self.generating = False
        self._thread = QThread()
        self._thread.setObjectName("inference")
        self.worker.moveToThread(self._thread)
        self._thread.start()

    def cancel_generation(self) -> None:
        self.worker.cancel_event.set()

    def shutdown(self, timeout_ms: int = 15000) -> None:
        """Stop generating and loading, stop the thread, then release the model here."""
        self.worker.cancel_event.set()
        self.worker.load_cancel_event.set()
        self.worker.closing_event.set()
        if self._thread.isRunning():
            self._thread.quit()
            if not self._thread.wait(timeout_ms):
                log.error("inference thread did not stop within %d s", timeout_ms // 1000)
                return
        self.worker.close()
        engine = self.worker._engine
        if engine is not None:
            engine.unload()
            close = getattr(engine, "close", None)  # an engine process ends here
            if close is not None:
                close()
