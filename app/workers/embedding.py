"""The search model in the app: download on request, then documents embedded in the background.

:class:`EmbeddingWorker` lives on its own QThread ("embedding"). It downloads the search model with
the same :class:`~app.core.downloads.Downloader` as the chat models and converts it to a GGUF
(:class:`~app.core.search_model.SearchModelFiles`), and it embeds documents: the pieces
:meth:`ChunkIndex.unembedded` still lists, a few at a time, through the
:class:`~app.core.engine.embed_process.EmbedderProcess` (llama.cpp in a process of its own, never
the chat model's), storing each batch with :meth:`ChunkIndex.add_vectors`.

:class:`EmbeddingController` (GUI thread) decides what to do and when:

- a document the turn builder sends by retrieval is indexed when the search model is installed;
  when it is not, the user is offered the download **once** (``offer_requested``; the answer is
  the ``search_model`` setting: ``ask`` → ``on`` / ``off``). Nothing is ever downloaded unasked;
- each such document has a :class:`SearchStatus` for its chip (keyword only, downloading,
  indexing 40 %, ready, stopped, failed); indexing can be cancelled per document;
- :meth:`EmbeddingController.search_model` gives the inference thread the ``embed_query`` and
  model id its :class:`~app.core.retrieval.HybridSource` uses (None while not installed);
- turning the setting off removes the model and its vectors; a crash of the embedder process is a
  message, and keyword search (BM25) keeps working.
"""

from __future__ import annotations

import collections
import enum
import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from PySide6.QtCore import QObject, QThread, Signal, Slot

from app.core.downloads import DownloadCancelled, Downloader, DownloadProgress
from app.core.engine.embed_process import EmbedderProcess
from app.core.errors import UserError
from app.core.manifest import ManifestError, load_manifest
from app.core.retrieval import ChunkIndex
from app.core.search_model import DEFAULT_SEARCH_MODEL, SearchModelFiles
from app.core.types import DocumentMode
from app.core.units import format_bytes

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    import numpy as np

    from app.config import Settings
    from app.core.manifest import EmbedderEntry
    from app.core.store import Store
    from app.core.turns import Turn
    from app.workers.conversations import ConversationController
    from app.workers.preferences import Notices, Preferences

log = logging.getLogger(__name__)

BATCH = 8
"""Pieces embedded per request: a question waiting for the embedder waits at most one batch."""
SHUTDOWN_WAIT_MS = 5000
PAUSE_POLL_S = 0.1
"""How often a paused indexing job looks whether the chat model has finished answering."""

ASK, ON, OFF = "ask", "on", "off"  # the ``search_model`` setting

INDEXING_TIP = "Questions use keyword search until indexing is done."
PAUSED_TIP = "The search model waits for the answer to finish, so the two never share the cores."
KEYWORD_TEXT = "Keyword search: may miss reworded questions"
KEYWORD_NOTE = "Keyword search only: answers may miss questions asked in other words."


class SearchState(str, enum.Enum):
    KEYWORD = "keyword"  # no search model: BM25 only
    DOWNLOADING = "downloading"  # the search model is being downloaded
    QUEUED = "queued"
    INDEXING = "indexing"
    READY = "ready"
    STOPPED = "stopped"  # the user cancelled indexing
    FAILED = "failed"


@dataclass(frozen=True)
class SearchStatus:
    """What a document's chip says about search: ``text`` (short), ``tip`` (why), 0..1 progress."""

    state: SearchState
    text: str
    tip: str = ""
    fraction: float = 0.0

    @property
    def cancellable(self) -> bool:
        return self.state in (SearchState.QUEUED, SearchState.INDEXING)

    @property
    def busy(self) -> bool:
        return self.state in (SearchState.DOWNLOADING, SearchState.QUEUED, SearchState.INDEXING)


class EmbeddingWorker(QObject):
    """Downloads the search model and embeds documents, on the embedding thread.

    Signals:
        install_progress(int job, float fraction): download 0..1 (the conversion follows at 1).
        install_finished(int job, str gguf): the GGUF is in place.
        install_failed(int job, str message, str detail): message is for the user; "" if cancelled.
        index_progress(int job, int doc_id, int done, int total): pieces embedded so far.
        index_paused(int job, int doc_id, int done, int total): waiting for the chat model's answer.
        index_finished(int job, int doc_id, bool complete): False when cancelled.
        index_failed(int job, int doc_id, str message, str detail)
    """

    install_progress = Signal(int, float)
    install_finished = Signal(int, str)
    install_failed = Signal(int, str, str)
    index_progress = Signal(int, int, int, int)
    index_paused = Signal(int, int, int, int)
    index_finished = Signal(int, int, bool)
    index_failed = Signal(int, int, str, str)

    def __init__(self, database: Path) -> None:
        super().__init__()  # no parent: it is moved to its thread
        self._database = database
        self._index: ChunkIndex | None = None
        self.cancel_event = threading.Event()  # set from the GUI thread: stops the job in progress
        self.chat_busy = threading.Event()  # set from the GUI thread while the chat model answers
        self._downloader: Downloader | None = None

    def cancel(self) -> None:
        """Stop the job in progress (any thread): a batch in the embedder stops within a second."""
        self.cancel_event.set()
        downloader = self._downloader
        if downloader is not None:
            downloader.cancel(keep_partial=True)

    @Slot(int, object, str)
    def install(self, job: int, files: SearchModelFiles, endpoint: str) -> None:
        self.cancel_event.clear()

        def progress(report: DownloadProgress) -> None:
            if report.build_total > 0:
                self.install_progress.emit(job, report.build_done / report.build_total)

        self._downloader = Downloader(files.models_dir, endpoint=endpoint or None, progress=progress)
        try:
            if self.cancel_event.is_set():
                raise DownloadCancelled(kept_partial=True)
            self._downloader.download(files.entry)
            gguf = files.convert()
        except DownloadCancelled:
            self.install_failed.emit(job, "", "")
        except UserError as exc:  # DownloadError, SearchModelError
            log.info("search model download failed: %s (%s)", exc.message, exc.detail)
            self.install_failed.emit(job, exc.message, exc.detail)
        except Exception as exc:
            log.exception("search model download failed")
            self.install_failed.emit(job, f"The search model download failed: {exc}", repr(exc))
        else:
            self.install_finished.emit(job, str(gguf))
        finally:
            self._downloader = None

    @Slot(int, int, str, object)
    def index(self, job: int, doc_id: int, model: str, embedder: EmbedderProcess) -> None:
        self.cancel_event.clear()
        try:
            if self._index is None:
                self._index = ChunkIndex.open(self._database)
            index = self._index
            todo = index.unembedded(doc_id, model)
            done, total = index.embedding_progress(doc_id, model)
            self.index_progress.emit(job, doc_id, done, total)
            for start in range(0, len(todo), BATCH):
                if self.chat_busy.is_set():
                    self.index_paused.emit(job, doc_id, done, total)
                    self._wait_while_chat_busy()
                    self.index_progress.emit(job, doc_id, done, total)
                if self.cancel_event.is_set():
                    self.index_finished.emit(job, doc_id, False)
                    return
                batch = todo[start : start + BATCH]
                vectors = embedder.embed([text for _id, text in batch], self.cancel_event)
                if vectors is None:  # cancelled mid-batch
                    self.index_finished.emit(job, doc_id, False)
                    return
                index.add_vectors(model, [(piece, vectors[n]) for n, (piece, _t) in enumerate(batch)])
                done += len(batch)
                self.index_progress.emit(job, doc_id, done, total)
        except UserError as exc:  # EmbedderUnavailable: the process crashed, hung or cannot load
            self.index_failed.emit(job, doc_id, exc.message, exc.detail)
            return
        except Exception as exc:
            log.exception("indexing document %d for search failed", doc_id)
            self.index_failed.emit(job, doc_id, f"Indexing for search failed: {exc}", repr(exc))
            return
        self.index_finished.emit(job, doc_id, True)

    def _wait_while_chat_busy(self) -> None:
        """Between batches, give the cores back to the chat model while it answers (the embedder
        uses all of them: two llama.cpp thread pools on the same cores slow both many times)."""
        while self.chat_busy.is_set() and not self.cancel_event.wait(PAUSE_POLL_S):
            pass

    def close(self) -> None:
        """Close this worker's database connection (after its thread has finished)."""
        if self._index is not None:
            self._index.close()
            self._index = None


class EmbeddingController(QObject):
    """GUI-thread side of the search model: the offer, downloads, the indexing queue, statuses.

    Signals:
        offer_requested(str): a long document arrived and the search model is not installed; the
            argument is the offer's sentence. Answer with :meth:`accept_offer` / :meth:`decline_offer`.
        status_changed(int doc_id, object SearchStatus)
        model_changed(): installed, removed, or its download started or ended.
        install_requested / index_requested: to the worker (queued).
    """

    offer_requested = Signal(str)
    status_changed = Signal(int, object)
    model_changed = Signal()
    install_requested = Signal(int, object, str)
    index_requested = Signal(int, int, str, object)

    def __init__(
        self,
        store: Store,
        preferences: Preferences,
        notices: Notices,
        conversations: ConversationController,
        models_dir: Path,
        *,
        entry: EmbedderEntry | None = None,
        n_threads: int = 0,
    ) -> None:
        super().__init__()
        self._store = store
        self._preferences = preferences
        self._notices = notices
        self._n_threads = n_threads
        if entry is None:
            try:
                entry = load_manifest().embedder(DEFAULT_SEARCH_MODEL)
            except (ManifestError, OSError, KeyError):
                log.exception("no search model in the catalog: keyword search only")
        self.files = SearchModelFiles(entry, models_dir) if entry is not None else None
        self._embedder: EmbedderProcess | None = None
        self._statuses: dict[int, SearchStatus] = {}
        self._queue: collections.deque[int] = collections.deque()
        self._current: tuple[int, int] | None = None  # (job, doc id) at the worker
        self._installing: int | None = None  # job of the download in progress
        self._job_seq = 0
        self._stopped: set[int] = set()  # indexing cancelled by the user, or failed, this session
        self._down = False  # the embedder failed: questions use keywords until the next document
        self._offered = False
        self._shut_down = False
        self._thread = QThread()
        self._thread.setObjectName("embedding")
        self._worker = EmbeddingWorker(store.path)
        self._worker.moveToThread(self._thread)
        self.install_requested.connect(self._worker.install)
        self.index_requested.connect(self._worker.index)
        self._worker.install_progress.connect(self._on_worker_install_progress)
        self._worker.install_finished.connect(self._on_worker_install_finished)
        self._worker.install_failed.connect(self._on_worker_install_failed)
        self._worker.index_progress.connect(self._on_worker_index_progress)
        self._worker.index_paused.connect(self._on_worker_index_paused)
        self._worker.index_finished.connect(self._on_worker_index_finished)
        self._worker.index_failed.connect(self._on_worker_index_failed)
        preferences.settings_changed.connect(self._on_preferences_settings_changed)
        conversations.turn_decided.connect(self._on_conversations_turn_decided)
        conversations.busy_changed.connect(self._on_conversations_busy_changed)
        if self.installed:
            self._open_embedder()
            store.chunk_index().forget_vectors(self.model_id)  # vectors of an earlier search model
        # The thread starts with the first job: an app that never indexes never runs it.

    # -- queries (GUI thread, except search_model) ----------------------------------------------
    @property
    def available(self) -> bool:
        """The catalog names a search model."""
        return self.files is not None

    @property
    def installed(self) -> bool:
        return self.files is not None and self.files.installed

    @property
    def downloading(self) -> bool:
        return self._installing is not None

    @property
    def model_id(self) -> str | None:
        return self.files.entry.id if self.files is not None else None

    @property
    def offer_text(self) -> str:
        size = format_bytes(self.files.entry.download_size) if self.files is not None else ""
        return f"Better answers from long documents: download the {size} search model?"

    @property
    def embedder_pid(self) -> int | None:
        """The embedder process's id while it runs (diagnostics, tests)."""
        embedder = self._embedder
        return embedder.pid if embedder is not None else None

    def status(self, doc_id: int) -> SearchStatus | None:
        return self._statuses.get(doc_id)

    def search_model(self) -> tuple[Callable[[str], np.ndarray] | None, str | None]:
        """(embed_query, model id) for the inference thread's HybridSource; (None, None) while
        no search model is ready. Thread-safe: it reads one reference."""
        embedder = self._embedder
        if embedder is None or self.files is None or self._down:
            return None, None
        return embedder.embed_query, self.files.entry.id

    # -- commands ---------------------------------------------------------------------------------
    def document_wants_search(self, doc_id: int) -> None:
        """``doc_id`` goes to the model by retrieval: index it, or say why not (and offer once)."""
        if self._shut_down or doc_id in self._queue or (self._current and self._current[1] == doc_id):
            return
        if self.files is None:
            self._set_status(doc_id, _keyword())
            return
        if self.installed and self._embedder is not None:
            if doc_id in self._stopped:
                return
            done, total = self._store.chunk_index().embedding_progress(doc_id, self.files.entry.id)
            if total and done >= total:
                self._set_status(doc_id, _ready())
                return
            self._down = False  # a new document starts the search model again
            self._queue.append(doc_id)
            self._set_status(doc_id, SearchStatus(SearchState.QUEUED, "Waiting to index for search…"))
            self._start_next()
            return
        if self.downloading:
            self._set_status(doc_id, self._downloading_status(0.0))
            return
        self._set_status(doc_id, _keyword())
        if self._preferences.settings.search_model == ASK and not self._offered:
            self._offered = True
            self.offer_requested.emit(self.offer_text)

    def accept_offer(self) -> None:
        self._preferences.update(self._preferences.settings.replace(search_model=ON))  # → download

    def decline_offer(self) -> None:
        self._preferences.update(self._preferences.settings.replace(search_model=OFF))

    def download(self) -> None:
        """Download and prepare the search model (asked for by the user)."""
        if self._shut_down or self.files is None or self.installed or self.downloading:
            return
        self._job_seq += 1
        self._installing = self._job_seq
        self._ensure_thread()
        self.install_requested.emit(self._job_seq, self.files, self._preferences.settings.hf_endpoint)
        for doc_id, status in list(self._statuses.items()):
            if status.state == SearchState.KEYWORD:
                self._set_status(doc_id, self._downloading_status(0.0))
        self.model_changed.emit()

    def cancel_download(self) -> None:
        if self._installing is not None:
            self._worker.cancel()

    def remove(self) -> None:
        """Delete the search model's files and every vector; documents go back to keyword search."""
        if self.files is None:
            return
        self.cancel_download()
        for doc_id in list(self._queue):
            self._queue.remove(doc_id)
        if self._current is not None:
            self._worker.cancel()
        self._close_embedder()
        self._store.chunk_index().forget_vectors(None)
        try:
            self.files.remove()
        except OSError as exc:
            self._notices.error_occurred.emit(f"The search model could not be removed: {exc}")
        for doc_id in list(self._statuses):
            self._set_status(doc_id, _keyword())
        self.model_changed.emit()

    def cancel(self, doc_id: int) -> None:
        """Stop indexing ``doc_id`` (it stays searchable by keywords; this session does not retry)."""
        self._stopped.add(doc_id)
        if doc_id in self._queue:
            self._queue.remove(doc_id)
            self._set_status(doc_id, _stopped())
        elif self._current is not None and self._current[1] == doc_id:
            self._worker.cancel()

    def shutdown(self) -> None:
        """Stop the job in progress and the thread, then end the embedder process (idempotent)."""
        if self._shut_down:
            return
        self._shut_down = True
        self._queue.clear()
        self._worker.cancel()
        if self._thread.isRunning():
            self._thread.quit()
            if not self._thread.wait(SHUTDOWN_WAIT_MS):
                log.error("embedding thread did not stop within %d s", SHUTDOWN_WAIT_MS // 1000)
        self._worker.close()
        self._close_embedder()

    # -- internals --------------------------------------------------------------------------------
    def _ensure_thread(self) -> None:
        if not self._thread.isRunning():
            self._thread.start()

    def _open_embedder(self) -> None:
        assert self.files is not None
        threads = self._n_threads or _default_threads()
        self._embedder = EmbedderProcess(self.files.gguf, n_threads=threads, log_path=self.files.log_path)

    def _close_embedder(self) -> None:
        embedder, self._embedder = self._embedder, None
        if embedder is not None:
            embedder.close()

    def _downloading_status(self, fraction: float) -> SearchStatus:
        return SearchStatus(
            SearchState.DOWNLOADING,
            f"Downloading the search model… {round(fraction * 100)} %",
            "Keyword search until the search model is ready.",
            fraction,
        )

    def _set_status(self, doc_id: int, status: SearchStatus) -> None:
        if self._statuses.get(doc_id) != status:
            self._statuses[doc_id] = status
            self.status_changed.emit(doc_id, status)

    def _start_next(self) -> None:
        if self._shut_down or self._current is not None or not self._queue or self._embedder is None:
            return
        assert self.files is not None
        doc_id = self._queue.popleft()
        self._job_seq += 1
        self._current = (self._job_seq, doc_id)
        self._ensure_thread()
        self.index_requested.emit(self._job_seq, doc_id, self.files.entry.id, self._embedder)

    def _end_current(self, job: int) -> bool:
        if self._current is None or self._current[0] != job:
            return False
        self._current = None
        return True

    # -- slots ------------------------------------------------------------------------------------
    @Slot(object, object)
    def _on_preferences_settings_changed(self, old: Settings, new: Settings) -> None:
        if old.search_model == new.search_model:
            return
        if new.search_model == ON:
            self.download()
        elif new.search_model == OFF and (self.installed or self.downloading):
            self.remove()

    @Slot(bool)
    def _on_conversations_busy_changed(self, busy: bool) -> None:
        """Indexing pauses between batches while the chat model answers or reads."""
        if busy:
            self._worker.chat_busy.set()
        else:
            self._worker.chat_busy.clear()

    @Slot(object)
    def _on_conversations_turn_decided(self, turn: Turn) -> None:
        """Documents the turn builder sends by retrieval want the search model."""
        decision = turn.documents
        if decision is not None and decision.mode == DocumentMode.RETRIEVAL:
            for doc_id in decision.doc_ids:
                self.document_wants_search(doc_id)

    @Slot(int, float)
    def _on_worker_install_progress(self, job: int, fraction: float) -> None:
        if job != self._installing:
            return
        for doc_id, status in list(self._statuses.items()):
            if status.state == SearchState.DOWNLOADING:
                self._set_status(doc_id, self._downloading_status(fraction))

    @Slot(int, str)
    def _on_worker_install_finished(self, job: int, _gguf: str) -> None:
        if job != self._installing:
            return
        self._installing = None
        self._open_embedder()
        self._notices.info_message.emit("The search model is ready: long documents are being indexed.")
        self.model_changed.emit()
        for doc_id, status in list(self._statuses.items()):
            if status.state in (SearchState.DOWNLOADING, SearchState.KEYWORD):
                self.document_wants_search(doc_id)

    @Slot(int, str, str)
    def _on_worker_install_failed(self, job: int, message: str, detail: str) -> None:
        if job != self._installing:
            return
        self._installing = None
        if self._preferences.settings.search_model == ON and message:
            self._notices.error_occurred.emit(f"{message} Keyword search still works.")
        for doc_id, status in list(self._statuses.items()):
            if status.state == SearchState.DOWNLOADING:
                self._set_status(doc_id, _keyword())
        if detail:
            log.info("search model download: %s", detail)
        self.model_changed.emit()

    @Slot(int, int, int, int)
    def _on_worker_index_progress(self, job: int, doc_id: int, done: int, total: int) -> None:
        self._indexing(job, doc_id, done, total, "Indexing for search…", INDEXING_TIP)

    @Slot(int, int, int, int)
    def _on_worker_index_paused(self, job: int, doc_id: int, done: int, total: int) -> None:
        self._indexing(job, doc_id, done, total, "Indexing paused while Scout answers…", PAUSED_TIP)

    def _indexing(self, job: int, doc_id: int, done: int, total: int, text: str, tip: str) -> None:
        """The chip's status while the current job indexes ``doc_id`` (``done`` of ``total``)."""
        if self._current is None or self._current[0] != job:
            return
        fraction = done / total if total else 1.0
        self._set_status(
            doc_id, SearchStatus(SearchState.INDEXING, f"{text} {round(fraction * 100)} %", tip, fraction)
        )

    @Slot(int, int, bool)
    def _on_worker_index_finished(self, job: int, doc_id: int, complete: bool) -> None:
        if not self._end_current(job):
            return
        self._set_status(doc_id, _ready() if complete else _stopped())
        self._start_next()

    @Slot(int, int, str, str)
    def _on_worker_index_failed(self, job: int, doc_id: int, message: str, detail: str) -> None:
        if not self._end_current(job):
            return
        log.warning("indexing document %d failed: %s\n%s", doc_id, message, detail)
        self._stopped.add(doc_id)  # not again this session (each preview would retry it)
        self._down = True
        self._set_status(doc_id, SearchStatus(SearchState.FAILED, KEYWORD_TEXT, f"{message}\n{KEYWORD_NOTE}"))
        self._notices.error_occurred.emit(message)
        for waiting in list(self._queue):  # a broken search model would fail them all: not now
            self._queue.remove(waiting)
            self._set_status(waiting, _keyword())


def _ready() -> SearchStatus:
    return SearchStatus(
        SearchState.READY,
        "Search ready",
        "Questions find passages by meaning and by keywords.",
        1.0,
    )


def _stopped() -> SearchStatus:
    return SearchStatus(SearchState.STOPPED, KEYWORD_TEXT, f"Indexing was stopped. {KEYWORD_NOTE}")


def _keyword() -> SearchStatus:
    return SearchStatus(SearchState.KEYWORD, KEYWORD_TEXT, KEYWORD_NOTE)


def _default_threads() -> int:
    """Every physical core: indexing pauses while the chat model answers, so they never share."""
    from app.core.hardware import physical_cores

    return max(1, physical_cores())
