"""The main window: conversation sidebar, chat view, composer, status bar and menus.

Its parts live beside it: the status bar's figures in :mod:`app.ui.status_bar`, the file dialogs
and the error banner in :mod:`app.ui.window_dialogs`, the attachment wiring in :mod:`app.ui.attachments`.
Over ~600 lines: it is the one place that connects every controller signal and menu action to a widget
(about 60 one-line slots); each job it does is a call into one of those parts.

It talks to an :class:`~app.workers.controller.AppController` (its ``models``, ``conversations`` and
``attachments`` controllers, ``preferences`` and ``notices``) only through their public methods and
signals, and owns no state the controllers also keep: the sidebar is re-read on
``conversations_changed``, the chat view is filled from ``conversation_opened`` / ``message_added``.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QByteArray, QSize, Qt
from PySide6.QtGui import QAction, QGuiApplication, QKeySequence
from PySide6.QtWidgets import (
    QApplication,
    QHBoxLayout,
    QMainWindow,
    QMessageBox,
    QSplitter,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app.core.types import DocumentMode
from app.export import export_conversation, suggested_filename, write_export
from app.ui import theme
from app.ui.about_dialog import AboutDialog, SystemInfoDialog
from app.ui.attachments import WindowAttachments
from app.ui.branch_actions import BranchActions
from app.ui.chat_view import ChatView
from app.ui.composer import Composer
from app.ui.instructions_dialog import InstructionsDialog
from app.ui.plan_panel import PlanPanel
from app.ui.search_dialog import SearchDialog
from app.ui.settings_dialog import SettingsDialog, context_cap_reason
from app.ui.sidebar import ConversationSidebar
from app.ui.status_bar import ACTIVITY_MESSAGE_MS, NOTICE_MESSAGE_MS, WindowStatus
from app.ui.window_dialogs import (
    ErrorBanner,
    InfoBanner,
    ask_resume_downloads,
    choose_export_file,
    choose_model_file,
    export_start_dir,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from PySide6.QtGui import QCloseEvent

    from app.config import AppPaths, Settings
    from app.core.hardware import HardwareProbe
    from app.core.planner import Plan
    from app.core.reading import ReadingOffer
    from app.core.turns import Turn
    from app.core.types import GenerationStats, ModelInfo
    from app.ui.servers_dialog import ServersDialog
    from app.ui.welcome import WelcomePage
    from app.workers.controller import AppController
    from app.workers.conversations import MessageQueue

log = logging.getLogger(__name__)

COMPOSER_MAX_WIDTH = 860


class MainWindow(QMainWindow):
    """Scout Chat's window, driven by an AppController.

    ``choose_model_file(parent, start_dir) -> str`` picks a GGUF (a file dialog; tests replace it).
    """

    def __init__(self, controller: AppController, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.controller = controller
        self.models = controller.models
        self.conversations = controller.conversations
        self.choose_model_file: Callable[[QWidget, str], str] = choose_model_file
        self.hardware_probe: HardwareProbe | None = None  # the plan panel's (tests inject one)
        self.app_paths: AppPaths | None = None  # set by the composition root (System information…)
        self.choose_export_file: Callable[[QWidget, str], str] = choose_export_file
        # Welcome page "Download <build>": the model manager's download entry point, once wired.
        self.download_build_handler: Callable[[str], None] | None = None
        self.downloads: Any = None  # a DownloadController, see set_download_controller()
        self.ask_resume_downloads: Callable[[QWidget, list[str]], bool] = ask_resume_downloads
        self._model_manager: Any = None
        self.welcome_page: WelcomePage | None = None
        self._welcome_done = False
        self._model_loading = False
        self._search_dialog: SearchDialog | None = None
        self._plan_panel: PlanPanel | None = None
        self.reading_box: QMessageBox | None = None  # "Read all 212 pages? …" while it is asked
        self.reading_read_button: object = None
        self._busy = False
        self._api_answering = False  # the worker is answering an API request (Stop stops it)
        self._editing_message: int | None = None  # the user message the composer is editing
        self._editing_queued: int | None = None  # the queued message the composer is editing
        self._conversation_id: int | None = None
        self.setWindowTitle("Scout Chat")
        self.setWindowIcon(theme.app_icon())
        self.setMinimumSize(QSize(720, 480))

        # -- widgets ------------------------------------------------------------------------
        self.sidebar = ConversationSidebar(self.conversations.conversations)
        self.chat_view = ChatView()
        self.error_banner = ErrorBanner()
        self.info_banner = InfoBanner()
        self.composer = Composer()

        chat_panel = QWidget()
        chat_panel.setObjectName("chatPage")
        chat_layout = QVBoxLayout(chat_panel)
        chat_layout.setContentsMargins(0, 0, 0, 0)
        chat_layout.setSpacing(0)
        self._chat_layout = chat_layout
        banner_row = QHBoxLayout()
        banner_row.setContentsMargins(16, 10, 16, 0)
        banner_row.addWidget(self.error_banner)
        chat_layout.addLayout(banner_row)
        info_row = QHBoxLayout()
        info_row.setContentsMargins(16, 10, 16, 0)
        info_row.addWidget(self.info_banner)
        chat_layout.addLayout(info_row)
        # what this conversation uses (preset, own instructions): opens "Instructions & preset"
        self.instructions_button = QToolButton()
        self.instructions_button.setObjectName("instructionsButton")
        self.instructions_button.setIcon(theme.icon("settings"))
        self.instructions_button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.instructions_button.setCursor(Qt.CursorShape.PointingHandCursor)
        self.instructions_button.setToolTip("Instructions & preset of this conversation")
        self.instructions_button.setAccessibleName("Instructions and preset")
        self.instructions_button.clicked.connect(self._on_instructions_button_clicked)
        self.instructions_dialog: InstructionsDialog | None = None
        header_row = QHBoxLayout()
        header_row.setContentsMargins(16, 6, 16, 0)
        header_row.addStretch(1)
        header_row.addWidget(self.instructions_button)
        chat_layout.addLayout(header_row)
        chat_layout.addWidget(self.chat_view, 1)
        composer_row = QHBoxLayout()
        composer_row.setContentsMargins(24, 6, 24, 14)
        composer_row.addStretch(1)
        self.composer.setMaximumWidth(COMPOSER_MAX_WIDTH)
        composer_row.addWidget(self.composer, 100)
        composer_row.addStretch(1)
        chat_layout.addLayout(composer_row)

        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.setChildrenCollapsible(False)
        self.splitter.setHandleWidth(1)
        self.splitter.addWidget(self.sidebar)
        self.splitter.addWidget(chat_panel)
        self.splitter.setStretchFactor(0, 0)
        self.splitter.setStretchFactor(1, 1)
        self.splitter.setSizes([260, 900])
        self.setCentralWidget(self.splitter)

        self._build_status_bar()
        self._build_actions()
        self._build_menus()
        self._connect()

        # paperclip, drops anywhere in the window, paste, chips, citations (after _connect: its slots
        # run after the chat view got the message)
        self.attachments = WindowAttachments(self)
        # Compare two answers, "Keep this one", "Delete this branch…"
        self.branches = BranchActions(self, self.chat_menu)

        self._restore_geometry()
        self._set_model(self.models.model_info)
        if self.models.is_loading:
            self.status.show_loading("")
        self._set_busy(self.conversations.is_busy)
        self.sidebar.set_current(self.conversations.current_conversation_id)
        self._update_instructions_button()
        announcement = controller.preferences.announce_default_changes()  # once: then saved
        if announcement:
            self.info_banner.show_message(announcement)

    # -- construction -----------------------------------------------------------------------
    def _build_status_bar(self) -> None:
        self.status = WindowStatus(self.statusBar())
        self.status.model_clicked.connect(self._on_status_model_clicked)
        self.status.cancel_load_clicked.connect(self._on_status_cancel_load_clicked)
        self.status.stop_api_clicked.connect(self._on_status_stop_api_clicked)
        # the bar's widgets, by name (tests and screenshots read them)
        self.model_label = self.status.model_label
        self.speed_label = self.status.speed_label
        self.activity_label = self.status.activity_label
        self.load_label = self.status.load_label
        self.load_progress = self.status.load_progress
        self.cancel_load_button = self.status.cancel_load_button
        self.context_label = self.status.context_label
        self.context_meter = self.status.context_meter

    @property
    def clock(self) -> Callable[[], float]:
        """The clock of the live tokens/s estimate (tests set one)."""
        return self.status.clock

    @clock.setter
    def clock(self, clock: Callable[[], float]) -> None:
        self.status.clock = clock

    def _action(self, text: str, slot: Callable[[], None], shortcut: Any = None, tip: str = "") -> QAction:
        action = QAction(text, self)
        if shortcut is not None:
            action.setShortcut(QKeySequence(shortcut))
        if tip:
            action.setStatusTip(tip)
            action.setToolTip(tip)
        action.triggered.connect(slot)
        self.addAction(action)  # shortcuts work with the menu bar hidden too
        return action

    def _build_actions(self) -> None:
        self.new_chat_action = self._action("&New chat", self._on_new_chat_action_triggered, "Ctrl+N")
        self.open_model_action = self._action(
            "&Open model file…", self._on_open_model_action_triggered, "Ctrl+O", "Load a local GGUF model"
        )
        self.quit_action = self._action(
            "&Quit", self._on_quit_action_triggered, QKeySequence.StandardKey.Quit
        )
        self.quit_action.setMenuRole(QAction.MenuRole.QuitRole)
        self.copy_answer_action = self._action("&Copy last answer", self._on_copy_answer_action_triggered)
        self.settings_action = self._action("&Settings…", self._on_settings_action_triggered, "Ctrl+,")
        self.settings_action.setMenuRole(QAction.MenuRole.PreferencesRole)
        self.focus_composer_action = self._action(
            "&Focus composer", self._on_focus_composer_action_triggered, "Ctrl+L"
        )
        self.search_action = self._action("&Search conversations", self._on_search_action_triggered, "Ctrl+F")
        self.global_search_action = self._action(
            "Search &all conversations…",
            self._on_global_search_action_triggered,
            "Ctrl+Shift+F",
            "Find text in every conversation",
        )
        self.export_action = self._action(
            "&Export conversation…",
            self._on_export_action_triggered,
            "Ctrl+Shift+E",
            "Save this conversation as Markdown or JSON",
        )
        self.system_info_action = self._action(
            "System &information…",
            self._on_system_info_action_triggered,
            tip="Versions, llama.cpp backends, devices, memory and installed models (copyable)",
        )
        self.stop_action = self._action("&Stop", self._on_stop_action_triggered, "Esc")
        self.regenerate_action = self._action("&Regenerate", self._on_regenerate_action_triggered, "Ctrl+R")
        self.edit_last_action = self._action("&Edit last message", self._on_edit_last_action_triggered)
        self.about_action = self._action("&About Scout Chat", self._on_about_action_triggered)
        self.about_action.setMenuRole(QAction.MenuRole.AboutRole)
        self.plan_panel_action = self._action(
            "&Memory && offload…",
            self._on_plan_panel_action_triggered,
            tip="How the model fits this machine's memory; GPU layers, context, KV cache",
        )
        self.models_action = self._action(
            "&Models…", self._on_models_action_triggered, "Ctrl+M", "Download and manage Scout builds"
        )
        self.models_action.setEnabled(False)  # until set_download_controller()
        self.servers_action = self._action(
            "Ser&vers…",
            self._on_servers_action_triggered,
            tip="Use a model served by another program or computer (any OpenAI-compatible server)",
        )

    def _build_menus(self) -> None:
        menus = self.menuBar()
        file_menu = menus.addMenu("&File")
        file_menu.addAction(self.new_chat_action)
        file_menu.addAction(self.open_model_action)
        self.recent_models_menu = file_menu.addMenu("&Recent models")
        self.recent_models_menu.setToolTipsVisible(True)
        self.recent_models_menu.aboutToShow.connect(self._on_recent_models_menu_about_to_show)
        self.update_recent_models_menu()
        file_menu.addAction(self.models_action)
        file_menu.addAction(self.servers_action)
        file_menu.addAction(self.plan_panel_action)
        file_menu.addAction(self.export_action)
        file_menu.addSeparator()
        file_menu.addAction(self.quit_action)
        edit_menu = menus.addMenu("&Edit")
        edit_menu.addAction(self.copy_answer_action)
        edit_menu.addSeparator()
        edit_menu.addAction(self.settings_action)
        view_menu = menus.addMenu("&View")
        view_menu.addAction(self.focus_composer_action)
        view_menu.addAction(self.search_action)
        view_menu.addAction(self.global_search_action)
        chat_menu = menus.addMenu("&Chat")
        chat_menu.addAction(self.stop_action)
        chat_menu.addAction(self.regenerate_action)
        chat_menu.addAction(self.edit_last_action)
        self.chat_menu = chat_menu
        help_menu = menus.addMenu("&Help")
        help_menu.addAction(self.system_info_action)
        help_menu.addAction(self.about_action)

    def _connect(self) -> None:
        m = self.models
        m.model_load_started.connect(self._on_models_model_load_started)
        m.model_load_progress.connect(self._on_models_model_load_progress)
        m.model_loaded.connect(self._on_models_model_loaded)
        m.model_load_failed.connect(self._on_models_model_load_failed)
        m.model_lost.connect(self._on_models_model_lost)
        m.reconnect_failed.connect(self._on_models_reconnect_failed)
        m.compute_servers_failed.connect(self._on_models_compute_servers_failed)
        m.load_confirmation_needed.connect(self._on_models_load_confirmation_needed)
        m.plan_changed.connect(self._on_models_plan_changed)
        c = self.conversations
        c.conversations_changed.connect(self._on_conversations_conversations_changed)
        c.conversation_updated.connect(self._on_conversations_conversation_updated)
        c.conversation_pinned.connect(self._on_conversations_conversation_pinned)
        c.options_changed.connect(self._on_conversations_options_changed)
        c.presets_changed.connect(self._on_conversations_presets_changed)
        c.conversation_opened.connect(self._on_conversations_conversation_opened)
        c.message_added.connect(self._on_conversations_message_added)
        c.message_removed.connect(self._on_conversations_message_removed)
        c.path_changed.connect(self._on_conversations_path_changed)
        c.tokens_streamed.connect(self._on_conversations_tokens_streamed)
        c.generation_finished.connect(self._on_conversations_generation_finished)
        c.generation_failed.connect(self._on_conversations_generation_failed)
        c.prompt_progress.connect(self._on_conversations_prompt_progress)
        c.context_changed.connect(self._on_conversations_context_changed)
        c.busy_changed.connect(self._on_conversations_busy_changed)
        c.reading_offered.connect(self._on_conversations_reading_offered)
        c.reading_progress.connect(self._on_conversations_reading_progress)
        c.turn_decided.connect(self._on_conversations_turn_decided)
        c.tool_call_proposed.connect(self._on_conversations_tool_call_proposed)
        c.tool_call_updated.connect(self._on_conversations_tool_call_updated)
        self.chat_view.tool_decision_requested.connect(self._on_chat_view_tool_decision_requested)
        c.queue_changed.connect(self._on_conversations_queue_changed)
        c.answer_continued.connect(self._on_conversations_answer_continued)
        self.controller.notices.error_occurred.connect(self._on_notices_error_occurred)
        self.controller.api.state_changed.connect(self._on_api_state_changed)
        self.controller.api.answering_changed.connect(self._on_api_answering_changed)
        self.status.set_api_server(self.controller.api.address)

        self.sidebar.new_chat_requested.connect(self._on_sidebar_new_chat_requested)
        self.sidebar.conversation_selected.connect(self._on_sidebar_conversation_selected)
        self.sidebar.rename_requested.connect(self._on_sidebar_rename_requested)
        self.sidebar.delete_requested.connect(self._on_sidebar_delete_requested)
        self.sidebar.pin_requested.connect(self._on_sidebar_pin_requested)
        self.composer.send_requested.connect(self._on_composer_send_requested)
        self.composer.edit_requested.connect(self._on_composer_edit_requested)
        self.composer.edit_cancelled.connect(self._on_composer_edit_cancelled)
        self.composer.stop_requested.connect(self._on_composer_stop_requested)
        self.composer.read_whole_requested.connect(self._on_composer_read_whole_requested)
        self.chat_view.open_model_requested.connect(self._on_chat_view_open_model_requested)
        self.chat_view.edit_requested.connect(self._on_chat_view_edit_requested)
        self.chat_view.regenerate_requested.connect(self._on_chat_view_regenerate_requested)
        self.chat_view.continue_requested.connect(self._on_chat_view_continue_requested)
        self.chat_view.branch_requested.connect(self._on_chat_view_branch_requested)
        self.chat_view.copied.connect(self._on_chat_view_copied)
        queue = self.chat_view.queue_panel
        queue.edit_requested.connect(self._on_queue_panel_edit_requested)
        queue.cancel_requested.connect(self._on_queue_panel_cancel_requested)
        queue.resume_requested.connect(self._on_queue_panel_resume_requested)

    # -- public API -------------------------------------------------------------------------
    def open_plan_panel(self) -> PlanPanel:
        """Show the (single, non-modal) Memory & offload panel."""
        if self._plan_panel is None:
            self._plan_panel = PlanPanel(self.controller, self, hardware_probe=self.hardware_probe)
        self._plan_panel.show()
        self._plan_panel.raise_()
        self._plan_panel.activateWindow()
        return self._plan_panel

    def open_servers_dialog(self) -> ServersDialog:
        """Servers…: on Connect, the model on that server replaces the one in use."""
        from app.core.server_keys import ServerKeyStore
        from app.ui.servers_dialog import SETTINGS_KEY, ServersDialog

        saved = self.controller.settings.extra.get(SETTINGS_KEY)
        dialog = ServersDialog(
            ServerKeyStore(self.controller.paths.data_dir), saved if isinstance(saved, dict) else None, self
        )
        dialog.accepted.connect(self._on_servers_dialog_accepted)
        dialog.open()
        return dialog

    def _on_servers_dialog_accepted(self) -> None:
        from app.ui.servers_dialog import SETTINGS_KEY, ServersDialog

        dialog = self.sender()
        if isinstance(dialog, ServersDialog):
            preferences = self.controller.preferences
            preferences.remember(extra={**preferences.settings.extra, SETTINGS_KEY: dialog.saved()})
            self.models.connect_server(dialog.config())

    def set_download_controller(self, downloads: Any) -> None:
        """Enable File → Models… (and the welcome page's Download) with a DownloadController."""
        self.downloads = downloads
        self.models_action.setEnabled(True)
        if self.download_build_handler is None:
            self.download_build_handler = self._download_build

    def open_model_manager(self) -> Any:
        """Show the (single, non-modal) model manager; "Use this model" loads through the controller."""
        from app.ui.model_manager import ModelManagerDialog

        if self._model_manager is None:
            self._model_manager = ModelManagerDialog(self.downloads, self, hardware_probe=self.hardware_probe)
            self._model_manager.load_requested.connect(self._on_model_manager_load_requested)
        self._model_manager.set_recent_models(self.recent_models(), self._loaded_model_path())
        self._model_manager.show()
        self._model_manager.raise_()
        self._model_manager.activateWindow()
        return self._model_manager

    def recent_models(self) -> list[str]:
        """Recently loaded model files that still exist, most recent first."""
        return [p for p in self.controller.settings.recent_models if Path(p).is_file()]

    def _loaded_model_path(self) -> str:
        info = self.models.model_info
        return str(info.path) if info is not None else ""

    def update_recent_models_menu(self) -> None:
        """File → Recent models: one entry per recent file (the loaded one checked)."""
        menu = self.recent_models_menu
        menu.clear()
        current = self._loaded_model_path()
        recent = self.recent_models()
        for number, path in enumerate(recent, start=1):
            name = Path(path).name.replace("&", "&&")
            action = menu.addAction(f"&{number} {name}" if number < 10 else name)
            action.setData(path)
            action.setToolTip(path)
            action.setStatusTip(f"Load {path}")
            action.setCheckable(True)
            action.setChecked(path == current)
            action.triggered.connect(self._on_recent_model_action_triggered)
        if not recent:
            empty = menu.addAction("No recent models")
            empty.setEnabled(False)

    def offer_resume_downloads(self) -> None:
        """At start: ask whether to resume the downloads left unfinished last time (never automatic)."""
        pending = self.downloads.pending_from_last_session() if self.downloads is not None else []
        if not pending:
            return
        names = [self.downloads.build(b).display_name for b in pending]
        if self.ask_resume_downloads(self, names):
            for build_id in pending:
                self.downloads.enqueue(build_id)
            self.open_model_manager()

    def _download_build(self, build_id: str) -> None:
        self.open_model_manager()
        self.downloads.enqueue(build_id)

    def set_welcome_page(self, page: WelcomePage) -> None:
        """Show ``page`` in place of the chat until a model loads (first run: nothing installed)."""
        self.welcome_page = page
        self._chat_layout.insertWidget(self._chat_layout.indexOf(self.chat_view), page, 1)
        page.download_requested.connect(self._on_welcome_page_download_requested)
        page.open_file_requested.connect(self._on_welcome_page_open_file_requested)
        page.server_requested.connect(self._on_welcome_page_server_requested)
        self._update_welcome()

    def open_global_search(self) -> SearchDialog:
        """The (single, non-modal) search over every conversation's text."""
        if self._search_dialog is None:
            self._search_dialog = SearchDialog(self.controller.store.search_messages, self)
            self._search_dialog.conversation_requested.connect(self._on_search_dialog_conversation_requested)
        dialog = self._search_dialog
        dialog.show()
        dialog.raise_()
        dialog.activateWindow()
        dialog.query_edit.setFocus()
        dialog.query_edit.selectAll()
        return dialog

    def export_current_conversation(self) -> Path | None:
        """Ask for a file and write the open conversation as Markdown (.md) or JSON (.json)."""
        if not self._conversation_id:
            self.show_activity("Open a conversation to export it")
            return None
        exported = export_conversation(self.controller.store, self._conversation_id)
        start = export_start_dir(self.controller.settings.last_export_dir)
        path = self.choose_export_file(self, str(start / suggested_filename(exported.conversation, "md")))
        if not path:
            return None
        target = Path(path)
        try:
            write_export(exported, target)  # images are copied into "<name>_files/" beside it
        except OSError as exc:
            self.show_error(f"Could not export the conversation: {exc}")
            return None
        self.controller.preferences.remember(last_export_dir=str(target.parent))
        self.show_activity(f"Exported to {target.name}")
        return target

    def system_information_text(self) -> str:
        from app.config import AppPaths
        from app.diagnostics import collect_report, format_report

        paths = self.app_paths or AppPaths.default()
        last = self.controller.settings.last_model
        report = collect_report(
            paths, hardware_probe=self.hardware_probe, extra_models=[Path(last)] if last else []
        )
        return format_report(report)

    def open_system_information(self) -> SystemInfoDialog:
        dialog = SystemInfoDialog(self.system_information_text(), self)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.open()
        return dialog

    def open_model_file(self) -> None:
        """Ask for a GGUF file and load it."""
        last = str(self.controller.settings.last_model or "")
        start_dir = str(Path(last).parent) if last else str(Path.home())
        path = self.choose_model_file(self, start_dir)
        if path:
            self.models.load_model(path)

    def open_settings(self) -> SettingsDialog:
        """Show the settings dialog (window-modal, non-blocking); applied when accepted."""
        overrides = self.models.overrides
        dialog = SettingsDialog(
            self.controller.settings,
            self,
            model=self.models.model_info,
            plan=self.models.plan if self.models.model_info is not None else None,
            fixed_n_ctx=overrides.n_ctx if overrides is not None else None,
            api_keys=self.controller.api,
            tool_servers=self.controller.tools,
        )
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.accepted.connect(self._on_settings_dialog_accepted)
        dialog.open()
        self._settings_dialog = dialog
        return dialog

    def show_error(self, message: str, detail: str = "") -> None:
        self.error_banner.show_message(message, detail)

    def show_activity(self, text: str, duration_ms: int = ACTIVITY_MESSAGE_MS) -> None:
        self.status.show_activity(text, duration_ms)

    def start_edit_last_message(self) -> None:
        last_user = self.chat_view.last_message("user")
        if last_user is not None:
            self.start_edit(last_user.message_id)

    def start_edit(self, message_id: int) -> None:
        """Put a message in the composer; sending it makes a new branch beside it (an edited
        question is answered; an edited answer is kept as written)."""
        widget = self.chat_view.message_widget(message_id)
        if widget is None or widget.role not in ("user", "assistant") or self._busy:
            return
        self._on_composer_edit_cancelled()  # a queued message being edited stays as it was
        self._editing_message = message_id
        self.composer.begin_edit(widget.text)

    # -- state ------------------------------------------------------------------------------
    def _set_model(self, info: ModelInfo | None) -> None:
        loaded = info is not None
        self.status.set_model(info)
        self.chat_view.set_model_loaded(loaded)
        self.composer.set_model_ready(loaded)
        self._update_actions()
        self._update_welcome()

    def _update_welcome(self) -> None:
        page = self.welcome_page
        if page is None:
            return
        show = not self._welcome_done and self.models.model_info is None and not self._model_loading
        page.setVisible(show)
        self.chat_view.setVisible(not show)
        self.composer.setVisible(not show)

    def _set_busy(self, busy: bool) -> None:
        self._busy = busy
        self.composer.set_busy(busy or self._api_answering)
        self.chat_view.set_busy(busy)
        if not busy:
            self.status.clear_activity()
        self._update_actions()

    def _update_actions(self) -> None:
        loaded = self.models.model_info is not None
        has_user = self.chat_view.last_message("user") is not None
        self.stop_action.setEnabled(self._busy or self._api_answering)
        self.regenerate_action.setEnabled(loaded and not self._busy and has_user)
        self.edit_last_action.setEnabled(loaded and not self._busy and has_user)
        self.copy_answer_action.setEnabled(self.chat_view.last_message("assistant") is not None)
        self.export_action.setEnabled(bool(self._conversation_id))

    def _update_title(self) -> None:
        title = ""
        if self._conversation_id:
            title = self.sidebar.model.title(self._conversation_id)
        self.setWindowTitle(f"{title} — Scout Chat" if title else "Scout Chat")

    def _restore_geometry(self) -> None:
        saved = self.controller.settings.window_geometry
        if saved:
            try:
                restored = self.restoreGeometry(QByteArray.fromHex(saved.encode("ascii")))
            except (UnicodeEncodeError, ValueError):
                restored = False
            if restored:
                return
        self.resize(1180, 780)

    def geometry_hex(self) -> str:
        return bytes(self.saveGeometry().toHex().data()).decode("ascii")

    def closeEvent(self, event: QCloseEvent) -> None:
        settings: Settings = self.controller.settings
        geometry = self.geometry_hex()
        if geometry != settings.window_geometry:
            self.controller.update_settings(settings.replace(window_geometry=geometry))
        super().closeEvent(event)

    # -- controller slots -------------------------------------------------------------------
    def _on_models_plan_changed(self, plan: Plan) -> None:
        self.status.set_plan(plan)

    def _on_models_model_load_started(self, path: str) -> None:
        self._model_loading = True
        self.error_banner.set_action("", None)
        self._update_welcome()
        self.status.show_loading(path)

    def _on_models_model_load_progress(self, fraction: float) -> None:
        self.status.set_load_progress(fraction)

    def _on_models_model_loaded(self, info: ModelInfo) -> None:
        self._model_loading = False
        self._welcome_done = True
        self.status.hide_loading()
        self._set_model(info)
        self.update_recent_models_menu()
        if self._model_manager is not None:
            self._model_manager.set_recent_models(self.recent_models(), str(info.path))
        overrides = self.models.overrides
        capped = context_cap_reason(
            self.controller.settings.n_ctx,
            info,
            self.models.plan,
            overrides.n_ctx if overrides is not None else None,
        )
        loaded = f"Loaded {info.name} in {info.load_seconds:.1f} s"
        if capped:
            self.status.add_model_note(capped)
            self.show_activity(f"{loaded}. {capped}", NOTICE_MESSAGE_MS)
        else:
            self.show_activity(loaded)
        self.composer.focus()

    def _on_models_model_load_failed(self, message: str, detail: str) -> None:
        self._model_loading = False
        self.status.hide_loading()
        self._set_model(self.models.model_info)
        self.show_error(message, detail)

    def _on_models_model_lost(self) -> None:
        # the engine process stopped: the error that follows says so; the banner offers the way back
        self._set_model(None)
        self._update_actions()
        safer = self.models.safer_reload()  # the cause looks like memory: offer a smaller plan too
        second = (safer[0], self.models.reload_lost_model_safer) if safer is not None else None
        self.error_banner.set_action("Reload model", self.models.reload_lost_model, second)

    def _on_models_reconnect_failed(self, _address: str) -> None:
        # the server used last did not answer at start: the error says why, the banner retries
        self.error_banner.set_action("Retry", self.models.retry_reconnect)

    def _on_models_compute_servers_failed(self, _path: str) -> None:
        # a compute server cannot be used: nothing was half-loaded; the error names it, the banner
        # offers the choice
        self.error_banner.set_action(
            "Retry", self.models.retry_compute_servers, ("Load here only", self.models.load_here_only)
        )

    def _on_models_load_confirmation_needed(self, path: str, question: str) -> None:
        # a model whose load stopped the engine twice: asked in the banner, never loaded unasked
        self.show_error(question, path)
        self.error_banner.set_action("Load anyway", functools.partial(self.models.load_model, path))

    def _on_conversations_conversations_changed(self) -> None:
        self.sidebar.reload()
        self._update_title()

    def _update_instructions_button(self) -> None:
        options = self.conversations.conversation_options()
        self.instructions_button.setText(options.describe(self.conversations.user_presets()))

    def open_instructions(self) -> InstructionsDialog:
        """Show "Instructions & preset" for the conversation shown (one at a time)."""
        if self.instructions_dialog is not None:
            self.instructions_dialog.close()
            self.instructions_dialog.deleteLater()
        self.instructions_dialog = InstructionsDialog(self.conversations, self)
        self.instructions_dialog.show()
        return self.instructions_dialog

    def _on_instructions_button_clicked(self) -> None:
        self.open_instructions()

    def _on_conversations_options_changed(self, _options: Any) -> None:
        self._update_instructions_button()

    def _on_conversations_presets_changed(self) -> None:
        self._update_instructions_button()

    def _on_conversations_conversation_pinned(self, conversation: Any) -> None:
        self.sidebar.conversation_pinned(conversation)

    def _on_sidebar_pin_requested(self, conversation_id: int, pinned: bool) -> None:
        self.conversations.set_pinned(conversation_id, pinned)

    def _on_conversations_conversation_updated(self, conversation: Any) -> None:
        self.sidebar.conversation_updated(conversation)
        self._update_title()

    def _on_conversations_conversation_opened(self, conversation_id: int, messages: list[Any]) -> None:
        self._conversation_id = conversation_id or None
        if conversation_id and not self._welcome_done:
            self._welcome_done = True  # an older chat was opened: show it rather than the welcome
            self._update_welcome()
        self.composer.cancel_edit()
        self.status.clear_speed()  # the last answer's speed belongs to the chat that was shown
        self.chat_view.set_messages(messages)
        self.chat_view.set_branches(self.conversations.branch_positions())
        self.sidebar.set_current(self._conversation_id)
        self._update_title()
        self._update_actions()
        self._update_instructions_button()

    def _on_conversations_path_changed(self, _conversation_id: int, messages: list[Any], focus: int) -> None:
        self.composer.cancel_edit()
        self.chat_view.show_path(messages, focus)
        self.chat_view.set_branches(self.conversations.branch_positions())
        self._update_actions()

    def _on_conversations_message_added(self, message: Any) -> None:
        self.chat_view.add_message(message)
        self.chat_view.set_branches(self.conversations.branch_positions())
        if message.role == "assistant" and message.status == "streaming":
            self.status.start_answer(message.id)
        self._update_actions()

    def _on_conversations_message_removed(self, message_id: int) -> None:
        self.chat_view.remove_message(message_id)
        self._update_actions()

    def _on_conversations_tokens_streamed(self, message_id: int, text: str) -> None:
        self.chat_view.append_delta(message_id, text)
        self.status.answer_text(message_id, text)

    def _on_conversations_generation_finished(self, message_id: int, stats: GenerationStats) -> None:
        self.chat_view.finish_message(message_id, stats)
        self.status.answer_finished(stats)
        self._update_actions()

    def _on_conversations_generation_failed(self, message_id: int, message: str, detail: str) -> None:
        self.chat_view.fail_message(message_id, message)
        self.status.answer_failed()
        self.show_error(message, detail)
        self._update_actions()

    def _on_conversations_prompt_progress(self, fraction: float, seconds_left: float) -> None:
        self.status.show_prompt_progress(fraction, None if seconds_left < 0 else seconds_left)

    def _on_conversations_context_changed(self, used: int, n_ctx: int) -> None:
        self.status.set_context(used, n_ctx)

    def _on_conversations_busy_changed(self, busy: bool) -> None:
        self._set_busy(busy)
        if not busy and self.reading_box is not None:  # stopped while asked whether to read
            self.reading_box.close()

    def _on_conversations_reading_offered(self, offer: ReadingOffer) -> None:
        """Ask before reading a long document whole: how much, and how long it takes here."""
        box = QMessageBox(QMessageBox.Icon.Question, offer.title, offer.text, parent=self)
        box.setInformativeText(offer.detail)
        self.reading_read_button = box.addButton("Read it all", QMessageBox.ButtonRole.AcceptRole)
        box.addButton("Answer from passages", QMessageBox.ButtonRole.RejectRole)
        box.setDefaultButton(self.reading_read_button)
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.finished.connect(self._on_reading_box_finished)
        self.reading_box = box
        box.open()

    def _on_reading_box_finished(self, _result: int) -> None:
        box, self.reading_box = self.reading_box, None
        if box is not None and box.clickedButton() is self.reading_read_button:
            self.conversations.accept_reading()
        else:
            self.conversations.decline_reading()

    def _on_conversations_reading_progress(self, message_id: int, done: int, total: int) -> None:
        self.chat_view.set_reading_progress(message_id, done, total)

    def _on_conversations_tool_call_proposed(self, message_id: int, record: dict[str, Any]) -> None:
        self.chat_view.flush()
        self.chat_view.show_tool_call(message_id, record)

    def _on_conversations_tool_call_updated(self, message_id: int, record: dict[str, Any]) -> None:
        self.chat_view.show_tool_call(message_id, record)

    def _on_chat_view_tool_decision_requested(self, _message_id: int, decision: str) -> None:
        self.conversations.decide_tool_call(decision)

    def _on_conversations_turn_decided(self, turn: Turn) -> None:
        documents = turn.documents
        self.composer.set_can_read_whole(documents is not None and documents.mode == DocumentMode.RETRIEVAL)

    def _on_composer_read_whole_requested(self, text: str) -> None:
        self.conversations.read_whole_document(text)

    def _on_notices_error_occurred(self, message: str) -> None:
        self.show_error(message)

    # -- widget slots -----------------------------------------------------------------------
    def _on_sidebar_new_chat_requested(self) -> None:
        self.conversations.new_conversation()
        self.composer.focus()

    def _on_sidebar_conversation_selected(self, conversation_id: int) -> None:
        self.conversations.open_conversation(conversation_id)

    def _on_sidebar_rename_requested(self, conversation_id: int, title: str) -> None:
        self.conversations.rename_conversation(conversation_id, title)

    def _on_sidebar_delete_requested(self, conversation_id: int) -> None:
        self.conversations.delete_conversation(conversation_id)

    def _on_composer_send_requested(self, text: str) -> None:
        self.conversations.send(text)

    def _on_conversations_queue_changed(self, queue: MessageQueue | None) -> None:
        self.chat_view.set_queue(queue)
        if self._editing_queued is not None and (
            queue is None or all(item.id != self._editing_queued for item in queue.items)
        ):
            self._editing_queued = None  # it went out or was cancelled meanwhile
            self.composer.cancel_edit()

    def _on_queue_panel_edit_requested(self, item_id: int) -> None:
        queue = self.conversations.queue()
        item = next((i for i in queue.items if i.id == item_id), None) if queue else None
        if item is None:
            return
        self._editing_message = None
        self._editing_queued = item_id
        self.conversations.hold_queued(item_id)
        self.composer.begin_edit(
            item.text, "Editing a queued message — Enter keeps it in its place, Esc leaves it as it was"
        )

    def _on_queue_panel_cancel_requested(self, item_id: int) -> None:
        self.conversations.cancel_queued(item_id)

    def _on_queue_panel_resume_requested(self) -> None:
        self.conversations.resume_queue()

    def _on_composer_edit_cancelled(self) -> None:
        if self._editing_queued is not None:
            self._editing_queued = None
            self.conversations.hold_queued(None)

    def _on_composer_edit_requested(self, text: str) -> None:
        if self._editing_queued is not None:
            item_id, self._editing_queued = self._editing_queued, None
            self.conversations.edit_queued(item_id, text)
            return
        message_id, self._editing_message = self._editing_message, None
        widget = self.chat_view.message_widget(message_id) if message_id is not None else None
        if message_id is None:
            self.conversations.edit_last_user_message(text)
        elif widget is not None and widget.role == "assistant":
            self.conversations.edit_answer(message_id, text)  # kept as written: no new answer
        else:
            self.conversations.edit_message(message_id, text)

    def _on_composer_stop_requested(self) -> None:
        self._stop()

    def _stop(self) -> None:
        """Stop what is being written: the window's answer, else an API request's answer."""
        if self._busy:
            self.conversations.stop()
        elif self._api_answering:
            self.controller.api.stop_answer()

    def _on_chat_view_open_model_requested(self) -> None:
        self.open_model_file()

    def _on_chat_view_edit_requested(self, message_id: int) -> None:
        self.start_edit(message_id)

    def _on_chat_view_regenerate_requested(self, message_id: int) -> None:
        self.conversations.regenerate(message_id)

    def _on_chat_view_continue_requested(self, message_id: int) -> None:
        self.conversations.continue_answer(message_id)

    def _on_conversations_answer_continued(self, message_id: int) -> None:
        self.chat_view.resume_message(message_id)
        self.status.start_answer(message_id)

    def _on_chat_view_branch_requested(self, message_id: int, step: int) -> None:
        self.conversations.switch_branch(message_id, step)

    def _on_chat_view_copied(self, what: str) -> None:
        self.show_activity("Code copied to the clipboard" if what == "code" else "Message copied")

    def _on_status_cancel_load_clicked(self) -> None:
        self.models.cancel_load()

    def _on_status_stop_api_clicked(self) -> None:
        self.controller.api.stop_answer()

    def _on_api_state_changed(self, address: str) -> None:
        self.status.set_api_server(address)

    def _on_api_answering_changed(self, answering: bool) -> None:
        self._api_answering = answering
        self.status.set_api_answering(answering)
        self.composer.set_busy(self._busy or answering)  # its Stop (and Esc) stop the API answer
        self._update_actions()

    def _on_status_model_clicked(self) -> None:
        if self.models.is_remote:  # no plan for a server's model: its connection instead
            self.open_servers_dialog()
        else:
            self.open_plan_panel()

    def _on_servers_action_triggered(self) -> None:
        self.open_servers_dialog()

    def _on_settings_dialog_accepted(self) -> None:
        dialog = self.sender()
        if not isinstance(dialog, SettingsDialog):
            return
        old = self.controller.settings
        new = dialog.result_settings()
        if new != old:
            self.controller.update_settings(new)
        if new.theme != old.theme:
            app = QApplication.instance()
            if isinstance(app, QApplication):
                theme.apply_theme(app, new.theme)

    # -- action slots -----------------------------------------------------------------------
    def _on_new_chat_action_triggered(self) -> None:
        self._on_sidebar_new_chat_requested()

    def _on_open_model_action_triggered(self) -> None:
        self.open_model_file()

    def _on_quit_action_triggered(self) -> None:
        self.close()
        app = QApplication.instance()
        if app is not None:
            app.quit()

    def _on_copy_answer_action_triggered(self) -> None:
        last = self.chat_view.last_message("assistant")
        if last is not None:
            QGuiApplication.clipboard().setText(last.text)
            self.show_activity("Answer copied")

    def _on_settings_action_triggered(self) -> None:
        self.open_settings()

    def _on_focus_composer_action_triggered(self) -> None:
        self.composer.focus()

    def _on_search_action_triggered(self) -> None:
        self.sidebar.focus_filter()

    def _on_stop_action_triggered(self) -> None:
        self._stop()

    def _on_regenerate_action_triggered(self) -> None:
        self.conversations.regenerate()

    def _on_edit_last_action_triggered(self) -> None:
        self.start_edit_last_message()

    def _on_plan_panel_action_triggered(self) -> None:
        if self.models.is_remote:  # a server's model has no plan on this computer
            self.open_servers_dialog()
        else:
            self.open_plan_panel()

    def _on_models_action_triggered(self) -> None:
        if self.downloads is not None:
            self.open_model_manager()

    def _on_model_manager_load_requested(self, path: str) -> None:
        self.models.load_model(path)

    def _on_recent_models_menu_about_to_show(self) -> None:
        self.update_recent_models_menu()  # files deleted since are left out

    def _on_recent_model_action_triggered(self) -> None:
        action = self.sender()
        if not isinstance(action, QAction):
            return
        path = str(action.data())
        if not Path(path).is_file():
            self.show_error(f"{Path(path).name} is no longer there: {path}")
            self.update_recent_models_menu()
            return
        if path == self._loaded_model_path():
            action.setChecked(True)
            return
        self.models.load_model(path)

    def _on_global_search_action_triggered(self) -> None:
        self.open_global_search()

    def _on_search_dialog_conversation_requested(self, conversation_id: int, message_id: int) -> None:
        self.conversations.open_message(conversation_id, message_id)  # on the branch holding it

    def _on_export_action_triggered(self) -> None:
        self.export_current_conversation()

    def _on_system_info_action_triggered(self) -> None:
        self.open_system_information()

    def _on_welcome_page_open_file_requested(self) -> None:
        self.open_model_file()

    def _on_welcome_page_server_requested(self) -> None:
        self.open_servers_dialog()

    def _on_welcome_page_download_requested(self, build_id: str) -> None:
        """Route "Download <build>" to the model manager; never download from here directly."""
        if self.download_build_handler is not None:
            self.download_build_handler(build_id)
            return
        for action in self.actions():
            label = action.text().replace("&", "").lower()
            if label.startswith(("models", "model manager")) and action.isEnabled():
                action.trigger()
                return
        page = self.welcome_page
        build = page.selected_build if page is not None else None
        where = f"https://huggingface.co/{build.repo_id}" if build is not None else "Hugging Face"
        name = build.display_name if build is not None else "the build"
        self.show_error(
            f"Downloads are not available in this version yet. Download {name} from {where} "
            "(the model file and the mmproj projector), then click “I already have a GGUF file…”."
        )

    def _on_about_action_triggered(self) -> None:
        dialog = AboutDialog(self)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.open()
