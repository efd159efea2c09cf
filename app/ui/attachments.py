"""Attachments in the window: :class:`WindowAttachments` wires the attachment widgets to the
``ChatController`` (drag and drop onto any part of the window, paste, the paperclip's file picker,
passwords for locked PDFs, attachments and citations in the history).

The widgets live beside it: the chips in :mod:`app.ui.attachment_chips`, drops and pastes in
:mod:`app.ui.attachment_drops`, the image viewer in :mod:`app.ui.attachment_viewer`, citations and
"What the model saw" in :mod:`app.ui.citations`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QEvent, QObject, Qt
from PySide6.QtGui import (
    QAction,
    QDragEnterEvent,
    QDragMoveEvent,
    QDropEvent,
    QGuiApplication,
    QKeySequence,
)
from PySide6.QtWidgets import (
    QAbstractButton,
    QDialog,
    QFileDialog,
    QInputDialog,
    QLineEdit,
    QMessageBox,
    QWidget,
)

from app.core.images import IMAGE_SUFFIXES
from app.ui.attachment_chips import NO_VISION_TEXT, AttachmentChip, AttachmentsBar
from app.ui.attachment_drops import (
    DOCUMENT_SUFFIXES,
    DroppedItems,
    has_attachments,
    mime_attachments,
)
from app.ui.citations import open_sources_dialog
from app.ui.message_widget import MessageWidget

if TYPE_CHECKING:
    from collections.abc import Callable

    from app.core.store import Attachment
    from app.ui.main_window import MainWindow
    from app.workers.embedding import SearchStatus


def attachment_file_filter() -> str:
    images = " ".join(f"*{s}" for s in IMAGE_SUFFIXES)
    documents = " ".join(f"*{s}" for s in DOCUMENT_SUFFIXES)
    return (
        f"Images and documents ({images} {documents});;Images ({images});;"
        f"Documents ({documents});;All files (*)"
    )


def choose_attachment_files(parent: QWidget) -> list[str]:
    paths, _chosen = QFileDialog.getOpenFileNames(parent, "Attach files", "", attachment_file_filter())
    return list(paths)


def ask_password(parent: QWidget, name: str) -> str | None:
    text, ok = QInputDialog.getText(
        parent,
        "Password needed",
        f"{name} is protected by a password.\nPassword:",
        QLineEdit.EchoMode.Password,
    )
    return text if ok and text else None


SEARCH_OFFER_DETAIL = (
    "The search model (all-MiniLM-L6-v2, English, Apache-2.0) finds the passages that answer a "
    "question asked in your own words. It runs on this computer; nothing leaves it.\n\n"
    "Without it, long documents are searched by keywords: answers may miss questions asked in "
    "other words. You can change this later in Settings."
)


def search_offer_dialog(parent: QWidget, text: str) -> QMessageBox:
    """The one-time offer of the search model (Download / Not now)."""
    box = QMessageBox(parent)
    box.setWindowTitle("Search model")
    box.setIcon(QMessageBox.Icon.Question)
    box.setText(text)
    box.setInformativeText(SEARCH_OFFER_DETAIL)
    download = box.addButton("Download", QMessageBox.ButtonRole.AcceptRole)
    box.addButton("Not now", QMessageBox.ButtonRole.RejectRole)
    box.setDefaultButton(download)
    return box


# -- wiring -----------------------------------------------------------------------------------------
class WindowAttachments(QObject):
    """Connects a MainWindow's attachment UI to its AppController: the paperclip, drops anywhere in
    the window, paste, chips, locked PDFs, attachments and citations in the history, info messages.

    ``choose_files(parent) -> list[str]`` and ``ask_password(parent, name) -> str | None`` are
    dialogs; tests replace them.
    """

    def __init__(self, window: MainWindow) -> None:
        super().__init__(window)
        self._window = window
        self._controller = window.controller
        self._attachments = window.controller.attachments
        self.composer = window.composer
        self.chat_view = window.chat_view
        self.bar: AttachmentsBar = window.composer.attachments_bar
        self.choose_files: Callable[[QWidget], list[str]] = choose_attachment_files
        self.ask_password: Callable[[QWidget, str], str | None] = ask_password
        self.offer_dialog: QMessageBox | None = None  # the search model's offer, while it is open
        self.last_dialog: QDialog | None = None
        # the documents the model is reading now: their chips, 0..1, seconds left (None: unknown)
        self._model_reading: tuple[tuple[tuple[int, int], ...], float, float | None] = ((), 0.0, None)

        a, c, m = self._attachments, self._controller.conversations, self._controller.models
        a.attachment_added.connect(self._on_attachments_attachment_added)
        a.attachment_updated.connect(self._on_attachments_attachment_updated)
        a.attachment_removed.connect(self._on_attachments_attachment_removed)
        a.attachment_progress.connect(self._on_attachments_attachment_progress)
        a.attachment_failed.connect(self._on_attachments_attachment_failed)
        self._controller.notices.info_message.connect(self._on_notices_info_message)
        c.conversation_opened.connect(self._on_conversations_conversation_opened)
        c.message_added.connect(self._on_conversations_message_added)
        c.path_changed.connect(self._on_conversations_path_changed)
        c.generation_finished.connect(self._on_conversations_generation_finished)
        c.documents_reading.connect(self._on_conversations_documents_reading)
        m.model_loaded.connect(self._on_models_model_loaded)
        m.model_load_failed.connect(self._on_models_model_load_failed)
        self.composer.attach_button.clicked.connect(self._on_attach_button_clicked)
        self.composer.attachments_pasted.connect(self._on_composer_attachments_pasted)
        self.bar.remove_requested.connect(self._on_bar_remove_requested)
        self.bar.unlock_requested.connect(self._on_bar_unlock_requested)
        self.bar.models_requested.connect(self._on_bar_models_requested)
        self.bar.search_cancel_requested.connect(self._on_bar_search_cancel_requested)
        search = self._controller.search
        search.offer_requested.connect(self._on_search_offer_requested)
        search.status_changed.connect(self._on_search_status_changed)
        self.chat_view.citation_clicked.connect(self._on_chat_view_citation_clicked)
        self.chat_view.sources_requested.connect(self._on_chat_view_sources_requested)

        self.paste_action = QAction("Paste attachment", window)
        self.paste_action.setShortcut(QKeySequence(QKeySequence.StandardKey.Paste))
        self.paste_action.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
        self.paste_action.triggered.connect(self._on_paste_action_triggered)
        window.addAction(self.paste_action)

        window.setAcceptDrops(True)
        window.installEventFilter(self)
        for child in window.findChildren(QWidget):
            if (
                child.acceptDrops()
                and child is not self.composer.edit
                and child is not self.composer.edit.viewport()
            ):
                child.installEventFilter(self)  # line edits would take the dropped file's path as text
        self._update_vision()
        for attachment in self._pending():
            self.bar.add_attachment(attachment)

    # -- public API -------------------------------------------------------------------------
    def attach(self, items: DroppedItems) -> None:
        """Hand what was dropped or pasted to the controller."""
        if items.paths:
            self._attachments.attach_files(list(items.paths))
        for data, name in items.images:
            self._attachments.attach_image_data(data, name)
        if items.remote and not items.paths and not items.images:
            self._window.show_error(
                f"{items.remote[0]} is on the web, and Scout Chat does not download it. "
                "Save the file first, then drop or attach it."
            )

    def paste(self) -> bool:
        """Attach what the clipboard holds (files or an image); False when it holds neither."""
        items = mime_attachments(QGuiApplication.clipboard().mimeData())
        if not (items.paths or items.images):
            return False
        self.attach(items)
        return True

    # -- internals --------------------------------------------------------------------------
    def _pending(self) -> list[Attachment]:
        return self._attachments.pending_attachments()

    def _has_vision(self) -> bool | None:
        info = self._controller.models.model_info
        return None if info is None else info.has_vision

    def _models_action(self) -> QAction:
        return self._window.models_action

    def _update_vision(self) -> None:
        has_vision = self._has_vision()
        self.bar.set_vision(has_vision, models_available=True)
        tip = (
            "Attach images or documents (PDF, Word, HTML, Markdown, text, code).\n"
            "You can also drop or paste them anywhere in the window."
        )
        if has_vision is False:
            tip = (
                "Attach documents (PDF, Word, HTML, Markdown, text, code).\n"
                f"{NO_VISION_TEXT}\nGet its projector in Models… to ask about images."
            )
        self.composer.attach_button.setToolTip(tip)

    def _show_message_attachments(self, message_ids: list[int]) -> None:
        if not message_ids:
            return
        for message_id, attachments in self._attachments.message_attachments(message_ids).items():
            if attachments:
                self.chat_view.set_attachments(message_id, attachments)
        self._show_model_reading()  # chips made again keep saying that they are being read

    def _message_chips(self, message_id: int) -> list[AttachmentChip]:
        widget = self.chat_view.message_widget(message_id)
        if isinstance(widget, MessageWidget) and widget.attachments_widget is not None:
            return list(widget.attachments_widget.chips)
        return []

    def _show_model_reading(self) -> None:
        chips, fraction, left = self._model_reading
        for message_id, attachment_id in chips:
            for chip in self._message_chips(message_id):
                if chip.attachment_id == attachment_id:
                    chip.set_model_reading(fraction, left)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        kind = event.type()
        if kind in (QEvent.Type.DragEnter, QEvent.Type.DragMove) and isinstance(
            event, (QDragEnterEvent, QDragMoveEvent)
        ):
            if has_attachments(event.mimeData()):
                event.acceptProposedAction()
                return True
        elif kind == QEvent.Type.Drop and isinstance(event, QDropEvent):
            items = mime_attachments(event.mimeData())
            if items:
                event.acceptProposedAction()
                self.attach(items)
                return True
        return super().eventFilter(watched, event)

    # -- controller slots -------------------------------------------------------------------
    def _on_attachments_attachment_added(self, attachment: Attachment) -> None:
        if attachment.message_id is None:
            self.bar.add_attachment(attachment)

    def _on_attachments_attachment_updated(self, attachment: Attachment) -> None:
        if attachment.message_id is None:
            self.bar.update_attachment(attachment)
        else:  # sent: its chip in the message shows how the turn used it (whole or retrieval)
            self._show_message_attachments([attachment.message_id])

    def _on_attachments_attachment_removed(self, attachment_id: int) -> None:
        self.bar.remove_attachment(attachment_id)

    def _on_attachments_attachment_progress(self, attachment_id: int, fraction: float) -> None:
        self.bar.set_progress(attachment_id, fraction)

    def _on_attachments_attachment_failed(self, name: str, message: str, _attachment_id: int) -> None:
        self._window.show_error(message if name in message else f"{name}: {message}")

    def _on_search_offer_requested(self, text: str) -> None:
        """Window-modal, not blocking: the chat goes on (with keyword search) while it is open."""
        box = search_offer_dialog(self._window, text)
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.buttonClicked.connect(self._on_offer_dialog_button_clicked)
        self.offer_dialog = box
        box.open()

    def _on_offer_dialog_button_clicked(self, button: QAbstractButton) -> None:
        box, self.offer_dialog = self.offer_dialog, None
        if box is not None and box.buttonRole(button) == QMessageBox.ButtonRole.AcceptRole:
            self._controller.search.accept_offer()
        else:
            self._controller.search.decline_offer()

    def _on_search_status_changed(self, attachment_id: int, status: SearchStatus) -> None:
        self.bar.set_search_status(attachment_id, status)

    def _on_bar_search_cancel_requested(self, attachment_id: int) -> None:
        self._controller.search.cancel(attachment_id)

    def _on_notices_info_message(self, text: str) -> None:
        self._window.show_activity(text)

    def _on_conversations_conversation_opened(self, _conversation_id: int, messages: list[Any]) -> None:
        self.bar.clear()  # the controller re-announces what waits in the composer of this conversation
        self._show_message_attachments([m.id for m in messages if m.role == "user"])

    def _on_conversations_path_changed(self, _conversation_id: int, messages: list[Any], _focus: int) -> None:
        self._show_message_attachments([m.id for m in messages if m.role == "user"])

    def _on_conversations_message_added(self, message: Any) -> None:
        if message.role == "user":
            self._show_message_attachments([message.id])

    def _on_conversations_documents_reading(
        self, chips: tuple[tuple[int, int], ...], fraction: float, seconds_left: float
    ) -> None:
        """The chips of the documents being read in a long prompt show the time left."""
        for message_id, attachment_id in self._model_reading[0]:
            if (message_id, attachment_id) not in chips:
                for chip in self._message_chips(message_id):
                    if chip.attachment_id == attachment_id:
                        chip.set_model_reading(None)
        self._model_reading = (tuple(chips), fraction, None if seconds_left < 0 else seconds_left)
        self._show_model_reading()

    def _on_conversations_generation_finished(self, message_id: int, _stats: object) -> None:
        stored = self._controller.store.get_message(message_id)
        if stored is not None and stored.stats and stored.stats.get("sources"):
            self.chat_view.set_message_stats(message_id, stored.stats)

    def _on_models_model_loaded(self, _info: object) -> None:
        self._update_vision()

    def _on_models_model_load_failed(self, _message: str, _detail: str) -> None:
        self._update_vision()

    # -- widget slots -----------------------------------------------------------------------
    def _on_attach_button_clicked(self) -> None:
        paths = self.choose_files(self._window)
        if paths:
            self._attachments.attach_files(paths)

    def _on_composer_attachments_pasted(self, items: DroppedItems) -> None:
        self.attach(items)

    def _on_paste_action_triggered(self) -> None:
        if not self.paste():
            self.composer.focus()
            self.composer.edit.paste()

    def _on_bar_remove_requested(self, attachment_id: int) -> None:
        self._attachments.remove_attachment(attachment_id)

    def _on_bar_unlock_requested(self, attachment_id: int) -> None:
        chip = self.bar.chip(attachment_id)
        name = chip.attachment.name if chip is not None else "This document"
        password = self.ask_password(self._window, name)
        if password:
            self._attachments.unlock_document(attachment_id, password)

    def _on_bar_models_requested(self) -> None:
        action = self._models_action()
        if action.isEnabled():
            action.trigger()
        else:
            self._window.show_activity("Download the model's vision projector (mmproj) to ask about images")

    def _on_chat_view_citation_clicked(self, message_id: int, page: int) -> None:
        stats = self.chat_view.message_stats(message_id)
        self.last_dialog = open_sources_dialog(self._window, stats, page)

    def _on_chat_view_sources_requested(self, message_id: int) -> None:
        stats = self.chat_view.message_stats(message_id)
        self.last_dialog = open_sources_dialog(self._window, stats)
