"""The window's branch actions beyond ‹ ›: Compare (Chat → Compare two answers…, the answers side
by side, "Keep this one") and "Delete this branch…" (a message's context menu, confirmed)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from PySide6.QtCore import QObject
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import QDialog

from app.ui.compare_view import CompareDialog
from app.ui.window_dialogs import confirm_delete

if TYPE_CHECKING:
    from collections.abc import Callable

    from PySide6.QtWidgets import QMenu, QWidget

    from app.core.store import StoredMessage
    from app.ui.main_window import MainWindow
    from app.workers.conversations import CompareRun


def ask_delete_branch(parent: QWidget) -> bool:
    """The default confirmation before a branch is deleted (a modal question)."""
    return confirm_delete(
        parent,
        "Delete this branch",
        "Delete this message and everything after it on this branch?\n"
        "The branch beside it stays and is shown instead; this cannot be undone.",
    )


def ask_compare(dialog: CompareDialog) -> bool:
    """Show the compare control (modal); True when the user pressed Compare."""
    return dialog.exec() == QDialog.DialogCode.Accepted


class BranchActions(QObject):
    """Connects the conversation controller's compare signals and the chat's branch requests to
    the window. ``confirm_delete(parent) -> bool`` and ``run_compare_dialog(dialog) -> bool`` ask
    the user; tests replace them."""

    def __init__(self, window: MainWindow, chat_menu: QMenu) -> None:
        super().__init__(window)
        self._window = window
        self._chats = window.conversations
        self.confirm_delete: Callable[[QWidget], bool] = ask_delete_branch
        self.run_compare_dialog: Callable[[CompareDialog], bool] = ask_compare
        self.compare_action = QAction("Co&mpare two answers…", window)
        self.compare_action.setShortcut(QKeySequence("Ctrl+Shift+M"))
        self.compare_action.setToolTip("Send the message to two presets (or models); keep the better answer")
        self.compare_action.triggered.connect(self._on_compare_action_triggered)
        chat_menu.addAction(self.compare_action)

        chats, view = self._chats, window.chat_view
        chats.compare_started.connect(self._on_conversations_compare_started)
        chats.compare_answer_added.connect(self._on_conversations_compare_answer_added)
        chats.compare_finished.connect(self._on_conversations_compare_finished)
        chats.busy_changed.connect(self._on_conversations_busy_changed)
        view.keep_requested.connect(self._on_chat_view_keep_requested)
        view.delete_branch_requested.connect(self._on_chat_view_delete_branch_requested)
        self._update()

    def open_compare(self) -> CompareDialog:
        """The compare control, filled with the composer's text (not shown yet)."""
        info = self._window.models.model_info
        models = self._chats.compare_models()
        return CompareDialog(
            self._window.composer.text(),
            models,
            info.name if info else "",
            self._window,
            user_presets=self._chats.user_presets(),
        )

    def _update(self) -> None:
        self.compare_action.setEnabled(not self._chats.is_busy)

    # -- slots ------------------------------------------------------------------------------
    def _on_compare_action_triggered(self) -> None:
        if self._window.models.model_info is None:
            self._window.error_banner.show_message("Load a model first: File → Open model file…")
            return
        dialog = self.open_compare()
        try:
            if not self.run_compare_dialog(dialog):
                return
            text, (left, right) = dialog.text(), dialog.sides()
        finally:
            dialog.deleteLater()
        self._chats.compare(text, left, right)
        if self._chats.compare_run is not None:
            self._window.composer.set_text("")

    def _on_conversations_compare_started(self, run: CompareRun) -> None:
        self._window.chat_view.start_compare(run)

    def _on_conversations_compare_answer_added(self, side: int, message: StoredMessage) -> None:
        self._window.chat_view.add_compare_answer(side, message)

    def _on_conversations_compare_finished(self, run: CompareRun) -> None:
        if run.conversation_id == self._chats.current_conversation_id:
            self._window.chat_view.finish_compare(run)

    def _on_conversations_busy_changed(self, _busy: bool) -> None:
        self._update()

    def _on_chat_view_keep_requested(self, message_id: int) -> None:
        self._chats.keep_compared(message_id)

    def _on_chat_view_delete_branch_requested(self, message_id: int) -> None:
        if not self._chats.can_delete_branch(message_id):
            self._window.error_banner.show_message(
                "This is the only branch here: it cannot be deleted on its own."
            )
            return
        if self.confirm_delete(self._window):
            self._chats.delete_branch(message_id)
