"""AppController: the controllers of a running app, wired once, with the app-wide policies.

The widgets talk to the three controllers it holds, each with one job:

- :class:`~app.workers.models.ModelController` (``models``): load, plan, reload, failure;
- :class:`~app.workers.conversations.ConversationController` (``conversations``): conversations
  and their turns (send, stream, stop, regenerate, edit);
- :class:`~app.workers.attachments.AttachmentController` (``attachments``): pictures and
  documents in the composer, read on the ingest thread;

- :class:`~app.workers.embedding.EmbeddingController` (``search``): the search model (offered,
  downloaded on request) and the documents it indexes in the background;
- :class:`~app.workers.api.ApiController` (``api``): the local OpenAI-compatible API server,
  answered by the same inference worker;

plus :class:`~app.workers.preferences.Preferences` (``preferences``: the settings) and
:class:`~app.workers.preferences.Notices` (``notices``: sentences for the user from any of them).
Here live the policies that span them: garbage collection on the GUI thread only while worker
threads run, freezing long-lived objects after each model load, the start-up restore and shutdown.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import QObject, Slot

from app.core.heap import freeze_long_lived
from app.core.retrieval import ChunkIndex
from app.workers.api import ApiController
from app.workers.attachments import AttachmentController
from app.workers.conversations import ConversationController
from app.workers.embedding import EmbeddingController
from app.workers.gc_guard import MainThreadGarbageCollector
from app.workers.inference import InferenceThread
from app.workers.models import ModelController
from app.workers.preferences import Notices, Preferences
from app.workers.tools import ToolsController

if TYPE_CHECKING:
    from collections.abc import Callable

    from app.config import AppPaths, Settings
    from app.core.api_requests import ApiJob
    from app.core.engine.remote import ServerConfig
    from app.core.planner import LoadRequest, PlannedLoad
    from app.core.ports import Engine
    from app.core.retrieval import EmbedQuery
    from app.core.store import Store
    from app.core.types import ModelInfo

log = logging.getLogger(__name__)


class AppController(QObject):
    """Create on the GUI thread; call :meth:`shutdown` once (``aboutToQuit``)."""

    def __init__(
        self,
        store: Store,
        paths: AppPaths,
        settings: Settings,
        engine_factory: Callable[[], Engine],
        parent: QObject | None = None,
        *,
        planner: Callable[[LoadRequest], PlannedLoad] | None = None,
        save_settings: bool = True,
    ) -> None:
        super().__init__(parent)
        self.store = store
        self.paths = paths
        self.notices = Notices()
        self.preferences = Preferences(paths, settings, self.notices, save=save_settings)
        database = store.path
        self._inference = InferenceThread(
            engine_factory, planner, lambda: ChunkIndex.open(database), self._search_model
        )
        self.models = ModelController(self._inference, self.preferences, self.notices, planner)
        self.conversations = ConversationController(
            store, paths, self.preferences, self.notices, self._inference, self.models
        )
        self.attachments = AttachmentController(store, paths, self.notices, self.conversations, self.models)
        models_dir = Path(settings.models_dir).expanduser() if settings.models_dir else paths.models_dir
        self.search = EmbeddingController(
            store,
            self.preferences,
            self.notices,
            self.conversations,
            models_dir,
            n_threads=settings.n_threads,
        )
        self.api = ApiController(
            paths, self.preferences, self.notices, self._inference, self.models, self._search_model
        )
        self.api.exchange_finished.connect(self._on_api_exchange_finished)
        self.tools = ToolsController(paths, self.preferences, self.notices)
        self.conversations.attach_tools(self.tools)
        self.models.model_loaded.connect(self._on_models_model_loaded)
        self._gc = MainThreadGarbageCollector(self)  # worker threads must never finalize Qt objects
        self._gc.start()
        self._shut_down = False

    @property
    def settings(self) -> Settings:
        return self.preferences.settings

    def update_settings(self, settings: Settings) -> None:
        self.preferences.update(settings)

    def restore_session(self, *, reload_model: bool = True) -> None:
        """Reopen the last conversation and reconnect the server used last or reload the last
        model (called once at start-up; ``reload_model`` False: the command line names one) —
        unless the model's load stopped the engine twice: then the user is asked first."""
        self.conversations.restore_last()
        if not reload_model:
            return
        if self.settings.last_server:
            self.models.connect_server(self.last_server_config(), reconnecting=True)
            return
        last_model = self.settings.last_model
        if last_model and Path(last_model).exists() and not self.models.ask_before_loading(last_model):
            self.models.load_model(last_model)

    def last_server_config(self) -> ServerConfig:
        """The server connected last (File → Servers…), with its key from the key store."""
        from app.core.engine.remote import ServerConfig
        from app.core.server_keys import ServerKeyStore

        s = self.settings
        return ServerConfig(
            s.last_server,
            api_key=ServerKeyStore(self.paths.data_dir).get(s.last_server) or "",
            model=s.last_server_model,
            ca_file=Path(s.last_server_ca) if s.last_server_ca else None,
            allow_plain_http=s.last_server_plain_http,
        )

    def _search_model(self) -> tuple[EmbedQuery | None, str | None]:
        """The search model for the inference thread's documents (thread-safe)."""
        search = getattr(self, "search", None)  # None only while this controller is being built
        return search.search_model() if search is not None else (None, None)

    @Slot(object)
    def _on_api_exchange_finished(self, job: ApiJob) -> None:
        info = self.models.model_info
        self.conversations.save_api_exchange(
            job.request.messages, "".join(job.answer), info.name if info else "", job.outcome == "done"
        )

    @Slot(object)
    def _on_models_model_loaded(self, _info: ModelInfo) -> None:
        freeze_long_lived()  # llama_cpp's modules and the model's Python side live until the next load

    @Slot()
    def shutdown(self) -> None:
        """Stop generation and ingest, keep the partial answer, stop the threads (idempotent)."""
        if self._shut_down:
            return
        self._shut_down = True
        self.conversations.save_partial_answer()
        self.conversations.close()
        self.attachments.shutdown()
        self.search.shutdown()
        self.api.shutdown()
        self.tools.shutdown()
        self._inference.shutdown()
        self._gc.stop()
