"""ApiController: the local API server's life in the app (Settings → API server).

The server (app/core/api_server.py) runs on threads of its own; its chat answers come from the one
inference worker that answers the window (``LlamaWorker.answer_api``), queued after whatever the
worker is doing — so there is one owner of the model, and the window can show and stop an API
answer. Embeddings come from the search model's process (``EmbeddingController.search_model``).
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from PySide6.QtCore import QObject, Signal, Slot

from app.core.api_requests import ApiError
from app.core.api_server import ApiServer, ApiServerConfig
from app.core.retrieval import EmbedderUnavailable
from app.core.server_keys import ApiTokenStore
from app.core.types import SamplingParams

if TYPE_CHECKING:
    from collections.abc import Callable

    from app.config import AppPaths, Settings
    from app.core.api_requests import ApiJob
    from app.core.retrieval import EmbedQuery
    from app.workers.inference import InferenceThread
    from app.workers.models import ModelController
    from app.workers.preferences import Notices, Preferences

log = logging.getLogger(__name__)

_SERVER_FIELDS = ("api_server", "api_host", "api_port", "api_cors_origins", "api_allowed_hosts")


def request_text(job: ApiJob) -> str:
    """A request's messages and its answer as one log line's text (request logging only)."""
    parts = [
        f"{m.role}: {m.content!r}" + (f" (+{len(m.images)} pictures)" if m.images else "")
        for m in job.request.messages
    ]
    return "; ".join([*parts, f"answer: {''.join(job.answer)!r}"])


def model_id(name: str) -> str:
    """The id clients use for a model (its file name without ``.gguf``)."""
    return name.removesuffix(".gguf")


class ApiController(QObject):
    """Starts and stops the API server as the settings say; serves it from the inference worker.

    Signals:
        state_changed(str): "host:port" while the server listens, "" while it is off.
        answering_changed(bool): the worker is (or is no longer) answering an API request.
        exchange_finished(object): an API answer ended (an ApiJob): the history keeps it only when
            Settings → API server → "Keep API conversations" is on.
    """

    state_changed = Signal(str)
    answering_changed = Signal(bool)
    exchange_finished = Signal(object)  # an ApiJob that wrote an answer (kept in the history when asked)
    api_answer_requested = Signal(object)  # to the worker (queued across threads): an ApiJob

    def __init__(
        self,
        paths: AppPaths,
        preferences: Preferences,
        notices: Notices,
        inference: InferenceThread,
        models: ModelController,
        search_model: Callable[[], tuple[EmbedQuery | None, str | None]],
        *,
        use_keyring: bool = True,
    ) -> None:
        super().__init__()
        self._preferences = preferences
        self._notices = notices
        self._models = models
        self._search_model = search_model
        self._tokens = ApiTokenStore(paths.data_dir, use_keyring=use_keyring)
        self._fixed_token = ""  # a key given for this run (headless --api-key-env), never saved
        self._server: ApiServer | None = None
        self._lock = threading.Lock()
        self._jobs: dict[int, ApiJob] = {}
        self._current: int | None = None  # the job the worker is answering
        self._sampling = self._defaults(preferences.settings)
        worker = inference.worker
        self.api_answer_requested.connect(worker.answer_api)
        worker.api_answer_started.connect(self._on_worker_api_answer_started)
        worker.api_answer_finished.connect(self._on_worker_api_answer_finished)
        preferences.settings_changed.connect(self._on_preferences_settings_changed)
        if preferences.settings.api_server:
            self._start(preferences.settings)

    # -- state -------------------------------------------------------------------------------------
    @property
    def address(self) -> str:
        """ "host:port" while listening; "" when off."""
        if self._server is None:
            return ""
        host, port = self._server.address
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    @property
    def answering(self) -> bool:
        return self._current is not None

    @property
    def answering_job(self) -> int | None:
        """The id of the API answer being written (``chatcmpl-<id>``); None when none is."""
        return self._current

    def token(self) -> str:
        """The bearer token clients must send (generated the first time)."""
        return self._fixed_token or self._tokens.get()

    def use_token(self, token: str) -> None:
        """Serve with ``token`` instead of the saved one, for this run only (not saved)."""
        self._fixed_token = token
        if self._server is not None:
            self._server.set_token(token)

    def regenerate_token(self) -> str:
        """A new token; the old one stops working at once."""
        self._fixed_token = ""
        token = self._tokens.regenerate()
        if self._server is not None:
            self._server.set_token(token)
        return token

    def stop_answer(self) -> None:
        """The window's Stop: end the API answer being written (its client gets an error)."""
        with self._lock:
            job = self._jobs.get(self._current) if self._current is not None else None
        if job is not None:
            job.stopped_by_user = True
            job.cancel.set()

    # -- the server's backend (called from its threads) --------------------------------------------
    def chat_model(self) -> str | None:
        info = self._models.model_info
        return model_id(info.path.name) if info is not None else None

    def search_model(self) -> str | None:
        embed, model = self._search_model()
        return model if embed is not None else None

    def sampling_defaults(self) -> SamplingParams:
        return self._sampling

    def submit(self, job: ApiJob) -> None:
        with self._lock:
            self._jobs = {i: j for i, j in self._jobs.items() if i == self._current or not j.cancel.is_set()}
            self._jobs[job.id] = job
        self.api_answer_requested.emit(job)

    def embed(self, texts: list[str]) -> list[list[float]]:
        embed, _model = self._search_model()
        if embed is None:
            raise ApiError(503, "The search model is not ready.", "server_error", "model_not_loaded")
        try:
            return [[float(x) for x in embed(text)] for text in texts]
        except EmbedderUnavailable as exc:
            raise ApiError(503, exc.message, "server_error") from exc

    # -- lifecycle ---------------------------------------------------------------------------------
    @staticmethod
    def _defaults(settings: Settings) -> SamplingParams:
        return SamplingParams(
            temperature=settings.temperature,
            top_p=settings.top_p,
            min_p=settings.min_p,
            max_tokens=settings.max_tokens,
        )

    def _start(self, settings: Settings) -> None:
        config = ApiServerConfig(
            host=settings.api_host or "127.0.0.1",
            port=settings.api_port,
            cors_origins=settings.api_cors_origins,
            allowed_hosts=settings.api_allowed_hosts,
        )
        server = ApiServer(config, self, self.token())
        try:
            server.start()
        except OSError as exc:
            why = exc.strerror or str(exc)
            log.warning("API server could not start on %s:%d: %s", config.host, config.port, why)
            self._notices.error_occurred.emit(
                f"The API server could not start on {config.host}:{config.port}: {why}. "
                "Choose another port in Settings → API server."
            )
            self.state_changed.emit("")
            return
        self._server = server
        self.state_changed.emit(self.address)

    def _stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop()
            self.state_changed.emit("")

    @Slot(object, object)
    def _on_preferences_settings_changed(self, old: Settings, new: Settings) -> None:
        self._sampling = self._defaults(new)
        if (
            all(getattr(old, f) == getattr(new, f) for f in _SERVER_FIELDS)
            and (self._server is not None) == new.api_server
        ):
            return
        self._stop()
        if new.api_server:
            self._start(new)

    @Slot(int)
    def _on_worker_api_answer_started(self, job_id: int) -> None:
        with self._lock:
            self._current = job_id
        self.answering_changed.emit(True)

    @Slot(int)
    def _on_worker_api_answer_finished(self, job_id: int) -> None:
        with self._lock:
            job = self._jobs.pop(job_id, None)
            if self._current == job_id:
                self._current = None
        self.answering_changed.emit(False)
        if job is None:
            return
        settings = self._preferences.settings
        if settings.api_log_requests:  # the user asked for it; off, no prompt ever reaches the log
            log.info("API request %d (%s): %s", job.id, job.outcome or "cancelled", request_text(job))
        if settings.api_save_history and job.answer:
            self.exchange_finished.emit(job)

    def shutdown(self) -> None:
        """Stop listening and end the requests in flight (idempotent)."""
        self._stop()
