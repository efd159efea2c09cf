"""ModelController: the model's lifecycle on the GUI thread: load, plan, reload, failure."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import QObject, Signal, Slot

from app.config import push_recent_model
from app.core.engine.errors import looks_like_memory
from app.core.planner import LoadRequest, PlanOverrides, less_on_gpu, merge_overrides
from app.core.splits import first_split_part
from app.core.types import LoadParams

if TYPE_CHECKING:
    from collections.abc import Callable

    from app.config import Settings
    from app.core.engine.remote import ServerConfig
    from app.core.planner import Plan, PlannedLoad
    from app.core.types import ModelInfo
    from app.workers.inference import InferenceThread
    from app.workers.preferences import Notices, Preferences

log = logging.getLogger(__name__)

FALLBACK_N_CTX = 8192  # without a planner, "automatic" context means this
TEMPLATE_NOTES_KEY = "template_notes_shown"  # Settings.extra: model files told about their template
MAX_TEMPLATE_NOTES = 200
KNOWN_GOOD_KEY = "models_known_good"  # Settings.extra: files loaded successfully (path|size|mtime)
MAX_KNOWN_GOOD = 200
LOAD_DEATHS_KEY = "engine_deaths_while_loading"  # Settings.extra: {file key: engine deaths}
ASK_AFTER_DEATHS = 2  # a model whose load killed the engine this often is not loaded unasked


def file_key(path: str | Path) -> str:
    """A model file as the known-good record and the load-death count know it: full path, size
    and modification time (another download or an edited file is another file)."""
    part = first_split_part(Path(path))
    try:
        st = part.stat()
        return f"{part.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    except OSError:
        return str(part)


def _model_key(path: Path) -> str:
    """A model file as the template note remembers it: its full path and size (a new download
    of the same name is another file)."""
    try:
        return f"{path.resolve()}|{path.stat().st_size}"
    except OSError:
        return str(path)


class ModelController(QObject):
    """Loads models through the inference worker and remembers the plan they were loaded with.

    Signals:
        model_load_started(str): model path.
        model_load_progress(float): 0..1.
        model_loaded(object): ModelInfo.
        model_load_failed(str, str): human message, detail.
        plan_changed(object): the offload Plan chosen for the model being loaded (planner.Plan).
        model_lost(): the engine process stopped (crash, abort, watchdog): no model is loaded now.
        load_confirmation_needed(str, str): model path, the question: a model whose load stopped
            the engine twice was not loaded at start-up (:meth:`ask_before_loading`).
        reconnect_failed(str): the server used last (reconnected at start) did not answer: its
            address (``model_load_failed`` said why first); :meth:`retry_reconnect` tries again.
        compute_servers_failed(str): a model was not loaded because a compute server (Settings →
            Machines) cannot be used (``model_load_failed`` said which first): its path;
            :meth:`retry_compute_servers` tries again, :meth:`load_here_only` loads it on this
            computer alone.
    """

    model_load_started = Signal(str)
    model_load_progress = Signal(float)
    model_loaded = Signal(object)
    model_load_failed = Signal(str, str)
    plan_changed = Signal(object)
    model_lost = Signal()
    load_confirmation_needed = Signal(str, str)
    reconnect_failed = Signal(str)
    compute_servers_failed = Signal(str)

    load_requested = Signal(object)  # to the worker (queued across threads)
    load_untried_requested = Signal(object)  # to the worker: try the file in a throw-away process first

    def __init__(
        self,
        inference: InferenceThread,
        preferences: Preferences,
        notices: Notices,
        planner: Callable[[LoadRequest], PlannedLoad] | None = None,
    ) -> None:
        super().__init__()
        self._inference = inference
        self._preferences = preferences
        self._notices = notices
        self._planner = planner
        self._model_info: ModelInfo | None = None
        self._plan: Plan | None = None
        self._overrides: PlanOverrides | None = None
        self._loading = False
        self._kept: ModelInfo | None = None  # the model still loaded after a failed load
        self._server: ServerConfig | None = None  # the server asked for last (connect_server)
        self._reconnecting = False  # that request is the reconnection at start
        self._previous: tuple[Plan | None, PlanOverrides | None] = (None, None)
        # the model a stopped engine took: path, overrides, plan, whether memory looks like the cause
        self._lost: tuple[str, PlanOverrides | None, Plan | None, bool] | None = None
        self._loading_path: str | None = None
        self._loading_overrides: PlanOverrides | None = None
        self._compute_failed = False  # the load failing now failed because of a compute server

        worker = inference.worker
        self.load_requested.connect(worker.load_model)
        self.load_untried_requested.connect(worker.load_untried_model)
        worker.load_killed_engine.connect(self._on_worker_load_killed_engine)
        worker.compute_server_failed.connect(self._on_worker_compute_server_failed)
        worker.load_progress.connect(self._on_worker_load_progress)
        worker.plan_ready.connect(self._on_worker_plan_ready)
        worker.load_notice.connect(self._on_worker_load_notice)
        worker.model_loaded.connect(self._on_worker_model_loaded)
        worker.model_kept.connect(self._on_worker_model_kept)
        worker.load_failed.connect(self._on_worker_load_failed)
        worker.engine_stopped.connect(self._on_worker_engine_stopped)
        preferences.settings_changed.connect(self._on_preferences_settings_changed)

    @property
    def model_info(self) -> ModelInfo | None:
        """The loaded model (None while none is)."""
        return self._model_info

    @property
    def plan(self) -> Plan | None:
        """The offload plan of the loaded (or loading) model, when the planner made one."""
        return self._plan

    @property
    def overrides(self) -> PlanOverrides | None:
        """The Advanced plan overrides the current model was loaded with (None: automatic)."""
        return self._overrides

    @property
    def is_loading(self) -> bool:
        return self._loading

    @property
    def n_ctx(self) -> int:
        """The context size of the loaded model, else the one the settings ask for (0: automatic)."""
        return self._model_info.n_ctx if self._model_info else self._preferences.settings.n_ctx

    def load_params_for(
        self, path: str, overrides: PlanOverrides | None = None, *, here_only: bool = False
    ) -> LoadParams | LoadRequest:
        """A LoadRequest for the planner (context target from settings, shrunk to fit, unless the
        user's Advanced ``overrides`` fix it), or plain LoadParams when no planner is configured.
        ``here_only``: without the compute servers of Settings → Machines."""
        s = self._preferences.settings
        servers = () if here_only else s.compute_servers
        if self._planner is not None:
            return LoadRequest(
                Path(path),
                merge_overrides(overrides, s.n_ctx),
                n_threads=s.n_threads or None,
                compute_servers=servers,
            )
        n_ctx = s.n_ctx or FALLBACK_N_CTX
        return LoadParams(
            model_path=Path(path),
            n_ctx=n_ctx,
            n_threads=s.n_threads or None,
            compute_servers=servers,
            speculation=(overrides.speculation if overrides else None) or "auto",
        )

    def load_model(
        self, path: str, overrides: PlanOverrides | None = None, *, here_only: bool = False
    ) -> None:
        """Load (or reload) a model; ``overrides`` are the Advanced settings of the plan panel;
        ``here_only``: on this computer alone, without the compute servers (this load only)."""
        self._inference.cancel_generation()  # an answer being written stops first
        if not self._loading:  # what to go back to when this load fails and the model stays
            self._previous = (self._plan, self._overrides)
        self._overrides = overrides
        self._compute_failed = False
        try:
            params = self.load_params_for(path, overrides, here_only=here_only)
        except ValueError as exc:
            self.model_load_failed.emit(str(exc), "")
            return
        self._loading = True
        self._loading_path = path
        self._loading_overrides = overrides
        self._inference.worker.load_cancel_event.clear()
        self.model_load_started.emit(path)
        if self.known_good(path):
            self.load_requested.emit(params)
        else:
            self.load_untried_requested.emit(params)

    # -- what is known about model files (Settings.extra) -----------------------------------------
    def known_good(self, path: str) -> bool:
        """Whether this file (path, size, mtime) was loaded successfully before."""
        known = self._preferences.settings.extra.get(KNOWN_GOOD_KEY, [])
        return isinstance(known, list) and file_key(path) in known

    def engine_deaths_while_loading(self, path: str) -> int:
        """How often loading this file ended with the engine process dead (reset by a good load)."""
        deaths = self._preferences.settings.extra.get(LOAD_DEATHS_KEY, {})
        count = deaths.get(file_key(path), 0) if isinstance(deaths, dict) else 0
        return count if isinstance(count, int) else 0

    def ask_before_loading(self, path: str) -> bool:
        """At start-up: whether ``path`` must not be loaded unasked, because its load stopped the
        engine :data:`ASK_AFTER_DEATHS` times. Then ``load_confirmation_needed`` asks the user
        (the window offers "Load anyway", which calls :meth:`load_model`)."""
        if self.engine_deaths_while_loading(path) < ASK_AFTER_DEATHS:
            return False
        name = Path(path).name
        log.warning("not loading %s at start-up: its load stopped the engine before", name)
        self.load_confirmation_needed.emit(
            path, f"Scout Chat closed the engine twice while loading {name}. Load it anyway?"
        )
        return True

    def _remember_file(self, path: str, *, good: bool) -> None:
        """A successful load: the file is known good and its death count is reset. A load that
        killed the engine: one more death."""
        key = file_key(path)
        extra = dict(self._preferences.settings.extra)
        deaths = extra.get(LOAD_DEATHS_KEY, {})
        deaths = {k: v for k, v in deaths.items() if isinstance(v, int)} if isinstance(deaths, dict) else {}
        known = extra.get(KNOWN_GOOD_KEY, [])
        known = [k for k in known if isinstance(k, str)] if isinstance(known, list) else []
        if good:
            if key in known and key not in deaths:
                return
            deaths.pop(key, None)
            known = [*(k for k in known if k != key), key][-MAX_KNOWN_GOOD:]
        else:
            deaths[key] = deaths.get(key, 0) + 1
        extra[LOAD_DEATHS_KEY] = deaths
        extra[KNOWN_GOOD_KEY] = known
        self._preferences.remember(extra=extra)

    @Slot(str)
    def _on_worker_load_killed_engine(self, path: str) -> None:
        self._remember_file(path, good=False)

    @Slot()
    def _on_worker_compute_server_failed(self) -> None:
        self._compute_failed = True

    def retry_compute_servers(self) -> None:
        """Load the model again across the compute servers (after :attr:`compute_servers_failed`)."""
        if self._loading_path is not None:
            self.load_model(self._loading_path, self._loading_overrides)

    def load_here_only(self) -> None:
        """Load that model on this computer alone (after :attr:`compute_servers_failed`); the
        compute servers stay in Settings → Machines for the next load."""
        if self._loading_path is not None:
            self.load_model(self._loading_path, self._loading_overrides, here_only=True)

    def connect_server(self, config: ServerConfig, *, reconnecting: bool = False) -> None:
        """Use the model ``config`` names on a server (the current model stays until it answers);
        ``reconnecting``: the server used last, at start (a failure offers Retry)."""
        self._server = config
        self._reconnecting = reconnecting
        self._inference.cancel_generation()
        if not self._loading:
            self._previous = (self._plan, self._overrides)
        self._loading = True
        self._inference.worker.load_cancel_event.clear()
        self.model_load_started.emit(f"{config.model or 'model'} on {config.address}")
        self.load_requested.emit(config)

    def retry_reconnect(self) -> None:
        """Try the server used last again (after :attr:`reconnect_failed`)."""
        if self._server is not None:
            self.connect_server(self._server, reconnecting=True)

    @property
    def is_remote(self) -> bool:
        """The loaded model runs on a server (no plan, no memory figures on this computer)."""
        return bool(self._model_info and self._model_info.server)

    def cancel_load(self) -> None:
        self._inference.worker.load_cancel_event.set()

    @Slot(object, object)
    def _on_preferences_settings_changed(self, old: Settings, new: Settings) -> None:
        reload_needed = (old.n_ctx, old.n_threads, old.compute_servers) != (
            new.n_ctx,
            new.n_threads,
            new.compute_servers,
        )
        idle = not self._loading and not self._inference.generating
        if reload_needed and self._model_info is not None and idle and not self.is_remote:
            self.load_model(str(self._model_info.path), self._overrides)

    @Slot(float)
    def _on_worker_load_progress(self, fraction: float) -> None:
        self.model_load_progress.emit(fraction)

    @Slot(object)
    def _on_worker_plan_ready(self, plan: Plan) -> None:
        self._plan = plan
        self.plan_changed.emit(plan)

    @Slot(str)
    def _on_worker_load_notice(self, text: str) -> None:
        self._notices.error_occurred.emit(text)

    @Slot(object)
    def _on_worker_model_loaded(self, info: ModelInfo) -> None:
        self._loading = False
        self._model_info = info
        self._lost = None
        self._reconnecting = False
        if info.server:  # a server's model: not a file to reopen, the server is reconnected at start
            self._plan = None
            if self._server is not None:
                c = self._server
                self._preferences.remember(
                    last_server=c.url,
                    last_server_model=c.model,
                    last_server_ca=str(c.ca_file or ""),
                    last_server_plain_http=c.allow_plain_http,
                )
            self.model_loaded.emit(info)
            if info.chat_template_note:
                self._notices.info_message.emit(info.chat_template_note)
            return
        path = str(info.path)
        recent = push_recent_model(self._preferences.settings.recent_models, path)
        self._preferences.remember(last_model=path, recent_models=recent, last_server="")
        self._remember_file(path, good=True)
        self.model_loaded.emit(info)
        if info.chat_template_note:
            self._note_template_once(info)

    def _note_template_once(self, info: ModelInfo) -> None:
        """Say once per model file (not at every launch) that its chat template is missing or
        unusable; the files already named are kept in the settings' ``extra``."""
        key = _model_key(info.path)
        shown = self._preferences.settings.extra.get(TEMPLATE_NOTES_KEY, [])
        shown = [k for k in shown if isinstance(k, str)] if isinstance(shown, list) else []
        if key in shown:
            log.info("chat template note for %s already shown: %s", info.path, info.chat_template_note)
            return
        self._notices.error_occurred.emit(info.chat_template_note)
        extra = {**self._preferences.settings.extra, TEMPLATE_NOTES_KEY: [*shown, key][-MAX_TEMPLATE_NOTES:]}
        self._preferences.remember(extra=extra)

    @Slot(object)
    def _on_worker_model_kept(self, info: ModelInfo) -> None:
        self._kept = info

    @property
    def lost_model(self) -> str | None:
        """The model the engine process took with it when it stopped (None once one loads)."""
        return self._lost[0] if self._lost is not None else None

    def reload_lost_model(self) -> None:
        """Load the model the engine process took with it, with the same Advanced overrides."""
        if self._lost is not None:
            path, overrides, _plan, _memory = self._lost
            self.load_model(path, overrides)

    def safer_reload(self) -> tuple[str, PlanOverrides, str] | None:
        """When the engine that stopped looks like it ran out of memory (its log tail, or a
        SIGKILL we did not send: the kernel's OOM killer) and the planner has something to give
        up: the button's text ("Reload with less on the GPU"), the overrides, and what changes."""
        if self._lost is None or self._planner is None:
            return None
        _path, overrides, plan, memory = self._lost
        if not memory or plan is None:
            return None
        merged = merge_overrides(overrides, self._preferences.settings.n_ctx)
        safer = less_on_gpu(plan, merged)
        if safer is None:
            return None
        text = "Reload with less on the GPU" if plan.n_gpu_layers > 0 else "Reload with a smaller plan"
        return text, safer[0], safer[1]

    def reload_lost_model_safer(self) -> None:
        """Load the lost model with :meth:`safer_reload`'s overrides (and say what changed)."""
        safer = self.safer_reload()
        if self._lost is None or safer is None:
            return
        path = self._lost[0]
        _text, overrides, change = safer
        self._notices.info_message.emit(f"Reloading {Path(path).name} with {change}.")
        self.load_model(path, overrides)

    @Slot(str, str)
    def _on_worker_engine_stopped(self, _message: str, detail: str) -> None:
        if self._model_info is not None:
            plan = self._plan
            self._lost = (str(self._model_info.path), self._overrides, plan, looks_like_memory(detail))
            self._model_info = None
            self.model_lost.emit()

    @Slot(str, str)
    def _on_worker_load_failed(self, message: str, detail: str) -> None:
        """The model asked for did not load; the one loaded before stays when the worker kept it."""
        self._loading = False
        kept, self._kept = self._kept, None
        self._model_info = kept
        if kept is not None:
            plan, self._overrides = self._previous
            if plan is not None and plan is not self._plan:
                self._plan = plan
                self.plan_changed.emit(plan)
            message = f"{message} {kept.name} is still loaded."
        if self._compute_failed and self._loading_path is not None:
            self._compute_failed = False
            name = Path(self._loading_path).name
            if kept is None:
                message = f"{name} was not loaded: {message}"
            self.model_load_failed.emit(f"{message} Retry, or load {name} on this computer alone.", detail)
            self.compute_servers_failed.emit(self._loading_path)
            return
        if self._reconnecting and self._server is not None:
            self._reconnecting = False
            message = f"Could not reconnect to {self._server.address}, the server used last: {message}"
            self.model_load_failed.emit(message, detail)
            self.reconnect_failed.emit(self._server.address)
            return
        self.model_load_failed.emit(message, detail)
