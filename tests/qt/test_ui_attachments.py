"""Attachments in the window, end to end through the REAL AppController (ingest thread, SQLite):
drop / paste / pick, chips, locked PDFs, failures, history chips and thumbnails, page citations and
"What the model saw". Screenshots go to $SCOUT_UI_SHOTS (default /tmp/ui_shots)."""

from __future__ import annotations

import dataclasses
import os
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import pytest
from PySide6.QtCore import QMimeData, QPoint, QPointF, Qt, QUrl
from PySide6.QtGui import QColor, QDragEnterEvent, QDropEvent, QGuiApplication, QImage, QTextCursor
from PySide6.QtWidgets import QApplication

from app.config import AppPaths, Settings
from app.core.store import Store
from app.ui import theme
from app.ui.attachment_chips import AttachmentChip, format_token_count
from app.ui.attachment_drops import mime_attachments
from app.ui.attachment_viewer import ImageViewerDialog
from app.ui.citations import CITE_SCHEME, SourcesDialog
from app.ui.main_window import MainWindow
from app.ui.message_widget import MessageWidget
from app.workers.controller import AppController
from tests.core.test_documents import encrypted_pdf, write_pdf
from tests.fakes import FakeEngine
from tests.vision_fixtures import png_bytes

if TYPE_CHECKING:
    from collections.abc import Iterator

    from PySide6.QtWidgets import QWidget

    from app.core.types import LoadParams, ModelInfo

pytestmark = pytest.mark.qt_log_ignore("This plugin does not support propagateSizeHints")

SHOTS = Path(os.environ.get("SCOUT_UI_SHOTS", "/tmp/ui_shots"))
PAGE_TWO = "The vault code is PURPLE-ELEPHANT-42 and it changes every spring."
ANSWER = ["The vault code is PURPLE-ELEPHANT-42 ", "(p. 2); ", "the schedule is on page 1."]


class VisionFakeEngine(FakeEngine):
    """FakeEngine whose model has a vision projector."""

    def load(self, params: LoadParams, progress: Any = None) -> ModelInfo:
        info = super().load(params, progress)
        self._info = dataclasses.replace(info, has_vision=True)
        return self._info


@pytest.fixture
def make_window(qtbot, app_paths: AppPaths):
    made: list[tuple[MainWindow, AppController, Store]] = []

    def make(engine: FakeEngine | None = None) -> SimpleNamespace:
        store = Store(app_paths.database)
        fake = engine or FakeEngine(ANSWER)
        controller = AppController(store, app_paths, Settings(), lambda: fake)
        window = MainWindow(controller)
        qtbot.addWidget(window)
        window.show()
        qtbot.waitExposed(window)
        made.append((window, controller, store))
        with qtbot.waitSignal(controller.models.model_loaded, timeout=5000):
            controller.models.load_model("fake.gguf")
        return SimpleNamespace(
            window=window, controller=controller, engine=fake, bar=window.composer.attachments_bar
        )

    yield make
    for window, controller, store in made:
        window.close()
        controller.shutdown()
        store.close()


@pytest.fixture
def files(qapp, tmp_path: Path) -> SimpleNamespace:
    image = tmp_path / "photo.png"
    image.write_bytes(png_bytes(320, 200, gradient=True))
    pdf = write_pdf(
        tmp_path / "handbook.pdf",
        [["Chapter one: the schedule of the depot."], [PAGE_TWO], ["Appendix: nothing of note."]],
    )
    return SimpleNamespace(image=image, pdf=pdf, tmp=tmp_path)


def url_mime(*paths: Path) -> QMimeData:
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(p)) for p in paths])
    return mime


def drop(widget: QWidget, mime: QMimeData) -> bool:
    """Drag ``mime`` over ``widget`` and drop it there; True when the drop was accepted."""
    pos = widget.rect().center()
    enter = QDragEnterEvent(
        pos, Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier
    )
    QApplication.sendEvent(widget, enter)
    if not enter.isAccepted():
        return False
    event = QDropEvent(
        QPointF(pos),
        Qt.DropAction.CopyAction,
        mime,
        Qt.MouseButton.LeftButton,
        Qt.KeyboardModifier.NoModifier,
    )
    QApplication.sendEvent(widget, event)
    return event.isAccepted()


def wait_ready(qtbot, bar, count: int) -> list[AttachmentChip]:
    """Until ``count`` chips are read and each document shows how the next turn sends it (the turn
    builder's preview decides whole or retrieval once the document is read)."""

    def settled(chip: AttachmentChip) -> bool:
        return chip.state == "ready" and (chip.is_image or bool(chip.badge.text()))

    qtbot.waitUntil(lambda: len(bar.chips()) == count and all(map(settled, bar.chips())), timeout=20_000)
    return bar.chips()


def click_citation(qtbot, message: MessageWidget, page: int) -> None:
    """A real mouse click on the ``cite:<page>`` link in the answer."""
    qtbot.waitUntil(lambda: all(s.isVisible() and s.height() > 1 for s in message.segments))
    for segment in message.segments:
        document = segment.document()
        block = document.begin()
        while block.isValid():
            it = block.begin()
            while not it.atEnd():
                fragment = it.fragment()
                fmt = fragment.charFormat()
                if fmt.isAnchor() and fmt.anchorHref() == f"{CITE_SCHEME}:{page}":
                    cursor = QTextCursor(document)
                    cursor.setPosition(fragment.position() + 1)
                    rect = segment.cursorRect(cursor)
                    qtbot.mouseClick(
                        segment.viewport(), Qt.MouseButton.LeftButton, pos=rect.center() + QPoint(1, 0)
                    )
                    return
                it += 1
            block = block.next()
    raise AssertionError(f"no citation link to page {page}")


def citation_links(message: MessageWidget) -> list[str]:
    links = []
    for segment in message.segments:
        block = segment.document().begin()
        while block.isValid():
            it = block.begin()
            while not it.atEnd():
                fmt = it.fragment().charFormat()
                if fmt.isAnchor() and fmt.anchorHref().startswith(f"{CITE_SCHEME}:"):
                    links.append(it.fragment().text())
                it += 1
            block = block.next()
    return links


def send(qtbot, env: SimpleNamespace, text: str) -> int:
    env.window.composer.set_text(text)
    with qtbot.waitSignal(env.controller.conversations.generation_finished, timeout=10_000) as done:
        qtbot.keyClick(env.window.composer.edit, Qt.Key.Key_Return)
    return int(done.args[0])


# -- attaching ----------------------------------------------------------------------------------------
def test_token_counts_read_naturally() -> None:
    assert format_token_count(850) == "≈ 850 tokens"
    assert format_token_count(12_345) == "≈ 12.3k tokens"
    assert format_token_count(412_000) == "≈ 412k tokens"


def test_dropped_files_become_chips_anywhere_in_the_window(qtbot, make_window, files) -> None:
    env = make_window()
    bar = env.bar
    assert not bar.isVisible()
    # onto the conversation area, which does not take drops itself: the window does
    assert drop(env.window.chat_view.scroll_area.viewport(), url_mime(files.image, files.pdf))
    image_chip, doc_chip = wait_ready(qtbot, bar, 2)
    assert bar.isVisible()
    assert image_chip.is_image
    assert image_chip.has_thumbnail()
    assert image_chip.detail_label.text().startswith("320×200")
    assert doc_chip.name_label.text() == "handbook.pdf"
    assert "3 pages" in doc_chip.detail_label.text()
    assert "tokens" in doc_chip.detail_label.text()
    assert doc_chip.badge.text() == "whole"
    assert doc_chip.badge.isVisible()
    assert not doc_chip.progress.isVisible()
    # the image cannot be read by this model: the bar says so and offers the model manager
    assert bar.vision_row.isVisible()
    assert "cannot read images" in env.window.composer.attach_button.toolTip()

    qtbot.mouseClick(image_chip.remove_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: len(bar.chips()) == 1)
    assert [a.name for a in env.controller.attachments.pending_attachments()] == ["handbook.pdf"]
    assert not bar.vision_row.isVisible()

    # onto the sidebar's filter box (a line edit would otherwise take the path as text)
    assert drop(env.window.sidebar.filter_edit, url_mime(files.image))
    wait_ready(qtbot, bar, 2)
    assert env.window.sidebar.filter_edit.text() == ""


def test_image_data_dragged_from_a_browser(qtbot, make_window) -> None:
    env = make_window()
    mime = QMimeData()
    image = QImage(64, 48, QImage.Format.Format_RGB32)
    image.fill(QColor(20, 120, 200))
    mime.setImageData(image)
    mime.setUrls([QUrl("https://example.com/pictures/cat.jpg?size=large")])
    assert mime_attachments(mime).images[0][1] == "cat.png"
    assert drop(env.window.composer, mime)
    (chip,) = wait_ready(qtbot, env.bar, 1)
    assert chip.is_image
    assert chip.has_thumbnail()
    assert chip.attachment.meta["width"] == 64


def test_web_address_alone_is_refused_with_a_message(qtbot, make_window) -> None:
    env = make_window()
    mime = QMimeData()
    mime.setUrls([QUrl("https://example.com/report.pdf")])
    assert drop(env.window.chat_view, mime)
    assert env.window.error_banner.isVisible()
    assert "does not download" in env.window.error_banner.text()
    assert env.bar.chips() == []


def test_paste_image_files_and_text(qtbot, make_window, files) -> None:
    env = make_window()
    edit = env.window.composer.edit
    clipboard = QGuiApplication.clipboard()
    image = QImage(80, 60, QImage.Format.Format_RGB32)
    image.fill(QColor(200, 60, 20))
    clipboard.setImage(image)
    edit.setFocus()
    edit.paste()
    (chip,) = wait_ready(qtbot, env.bar, 1)
    assert chip.attachment.name == "pasted image.png"
    assert chip.has_thumbnail()
    assert edit.toPlainText() == ""

    clipboard.setMimeData(url_mime(files.pdf))
    qtbot.keyClick(edit, Qt.Key.Key_V, Qt.KeyboardModifier.ControlModifier)
    wait_ready(qtbot, env.bar, 2)
    assert edit.toPlainText() == ""

    clipboard.setText("just words")
    edit.paste()
    assert edit.toPlainText() == "just words"
    assert len(env.bar.chips()) == 2


def test_paperclip_picks_several_files(qtbot, make_window, files) -> None:
    env = make_window()
    seen: list[object] = []

    def choose(parent: object) -> list[str]:
        seen.append(parent)
        return [str(files.image), str(files.pdf)]

    env.window.attachments.choose_files = choose
    qtbot.mouseClick(env.window.composer.attach_button, Qt.MouseButton.LeftButton)
    assert seen == [env.window]
    assert len(wait_ready(qtbot, env.bar, 2)) == 2


def test_bad_file_shows_a_message_and_nothing_else_is_lost(qtbot, make_window, files) -> None:
    env = make_window()
    env.window.composer.set_text("my draft")
    broken = files.tmp / "broken.pdf"
    broken.write_bytes(b"%PDF-1.7\n1 0 obj <<")
    drop(env.window, url_mime(files.pdf))
    wait_ready(qtbot, env.bar, 1)
    with qtbot.waitSignal(env.controller.attachments.attachment_failed, timeout=10_000):
        drop(env.window, url_mime(broken))
    qtbot.waitUntil(lambda: len(env.bar.chips()) == 1)
    assert env.window.error_banner.isVisible()
    assert "damaged" in env.window.error_banner.text().lower()
    assert "broken.pdf" in env.window.error_banner.text()
    assert env.window.composer.text() == "my draft"
    assert [c.attachment.name for c in env.bar.chips()] == ["handbook.pdf"]


def test_locked_pdf_asks_for_its_password(qtbot, make_window, files) -> None:
    env = make_window()
    locked = files.tmp / "locked.pdf"
    locked.write_bytes(encrypted_pdf("open sesame", "Hidden sentence"))
    asked: list[str] = []

    def ask(_parent: object, name: str) -> str | None:
        asked.append(name)
        return "open sesame"

    env.window.attachments.ask_password = ask
    with qtbot.waitSignal(env.controller.attachments.attachment_failed, timeout=10_000):
        drop(env.window, url_mime(locked))
    (chip,) = env.bar.chips()
    qtbot.waitUntil(lambda: chip.state == "locked")
    assert chip.unlock_button.isVisible()
    assert chip.detail_label.text() == "Password-protected"
    assert env.window.error_banner.isVisible()
    qtbot.mouseClick(chip.unlock_button, Qt.MouseButton.LeftButton)
    assert asked == ["locked.pdf"]
    wait_ready(qtbot, env.bar, 1)
    assert "1 page" in chip.detail_label.text()


def test_progress_cancel_and_many_images_note(qtbot, make_window, files) -> None:
    env = make_window()
    for i in range(6):
        env.controller.attachments.attach_image_data(png_bytes(40 + i, 30, gradient=True), f"shot {i}.png")
    chips = wait_ready(qtbot, env.bar, 6)
    assert env.bar.note_label.isVisible()
    assert "tested with up to 5 images" in env.bar.note_label.text()
    qtbot.mouseClick(chips[0].remove_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: len(env.bar.chips()) == 5)
    assert not env.bar.note_label.isVisible()

    env.controller.attachments.attach_files([str(files.pdf)])
    chip = env.bar.chips()[-1]
    assert chip.state == "processing"  # the chip is there at once, before the document is read
    assert chip.progress.isVisible()
    chip.set_progress(0.5)
    assert chip.progress.value() == 500
    assert "50%" in chip.detail_label.text()
    qtbot.mouseClick(chip.remove_button, Qt.MouseButton.LeftButton)  # cancels
    qtbot.waitUntil(lambda: len(env.bar.chips()) == 5)


def test_info_messages_go_to_the_status_bar(qtbot, make_window) -> None:
    env = make_window()
    env.controller.notices.info_message.emit("Image turns re-read the history")
    assert env.window.activity_label.text() == "Image turns re-read the history"


# -- history, citations, what the model saw ---------------------------------------------------------
def test_what_the_model_saw_says_which_retriever_found_each_passage(qtbot) -> None:
    stats = {
        "context_mode": "retrieval",
        "sources": [
            {
                "doc": "lease.pdf",
                "anchor": "p. 3",
                "page": 3,
                "text": "Vacate within 30 days.",
                "found_by": "meaning",
            },
            {"doc": "lease.pdf", "anchor": "p. 4", "page": 4, "text": "Rent is due.", "found_by": ""},
            {
                "doc": "lease.pdf",
                "anchor": "p. 9",
                "page": 9,
                "text": "C++ clause.",
                "found_by": "keywords+meaning",
            },
            {"doc": "old.pdf", "anchor": "p. 1", "page": 1, "text": "Saved before hybrid search."},
        ],
    }
    dialog = SourcesDialog(stats)
    qtbot.addWidget(dialog)
    lines = dialog.text().splitlines()
    assert "lease.pdf — p. 3 (found by meaning)" in lines
    assert "lease.pdf — p. 4 (next to a match)" in lines
    assert "lease.pdf — p. 9 (found by keywords and meaning)" in lines
    assert "old.pdf — p. 1" in lines


def test_sent_document_is_shown_with_the_message_and_citations_open_passages(
    qtbot, make_window, files
) -> None:
    env = make_window()
    drop(env.window, url_mime(files.pdf))
    wait_ready(qtbot, env.bar, 1)
    answer_id = send(qtbot, env, "What is the vault code?")
    qtbot.waitUntil(lambda: not env.bar.isVisible())

    user = env.window.chat_view.last_message("user")
    assert user is not None
    assert user.attachments_widget is not None
    (chip,) = user.attachments_widget.chips
    assert chip.name_label.text() == "handbook.pdf"
    assert chip.badge.text() == "whole"
    assert not chip.remove_button.isVisible()

    answer = env.window.chat_view.message_widget(answer_id)
    assert isinstance(answer, MessageWidget)
    assert citation_links(answer) == ["p. 2", "page 1"]
    click_citation(qtbot, answer, 2)
    dialog = env.window.attachments.last_dialog
    assert isinstance(dialog, SourcesDialog)
    assert dialog.windowTitle() == "Page 2"
    assert PAGE_TWO in dialog.text()
    assert "Chapter one" not in dialog.text()
    dialog.close()

    assert answer.sources_button.isVisible()
    qtbot.mouseClick(answer.sources_button, Qt.MouseButton.LeftButton)
    saw = env.window.attachments.last_dialog
    assert isinstance(saw, SourcesDialog)
    assert saw.page is None
    assert saw.mode_label.text() == "whole"
    assert "Document text: ≈" in saw.summary_label.text()
    for sentence in ("Chapter one", PAGE_TWO, "Appendix"):
        assert sentence in saw.text()
    assert "handbook.pdf — p. 2" in saw.text()
    saw.close()

    # reopening the conversation shows the same (from the store)
    conversation_id = env.controller.conversations.current_conversation_id
    env.controller.conversations.new_conversation()
    env.controller.conversations.open_conversation(conversation_id)
    user = env.window.chat_view.last_message("user")
    assert user is not None
    assert user.attachments_widget is not None
    answer = env.window.chat_view.last_message("assistant")
    assert answer is not None
    assert citation_links(answer) == ["p. 2", "page 1"]


def test_image_thumbnail_in_history_opens_the_viewer(qtbot, make_window, files) -> None:
    env = make_window(VisionFakeEngine(["A gradient."]))
    assert not env.bar.vision_row.isVisible()
    drop(env.window, url_mime(files.image))
    wait_ready(qtbot, env.bar, 1)
    assert not env.bar.vision_row.isVisible()
    send(qtbot, env, "What is in this picture?")
    user = env.window.chat_view.last_message("user")
    assert user is not None
    assert user.attachments_widget is not None
    (thumb,) = user.attachments_widget.thumbnails
    assert thumb.has_image()
    assert thumb.width() <= 220
    assert thumb.height() <= 160
    qtbot.mouseClick(thumb, Qt.MouseButton.LeftButton)
    viewer = user.attachments_widget.viewer
    assert isinstance(viewer, ImageViewerDialog)
    assert viewer.image_label.pixmap().width() == 320
    viewer.close()


# -- screenshots ------------------------------------------------------------------------------------
def test_screenshots(qtbot, qapp, make_window, files) -> None:
    old_palette, old_sheet, old_style = qapp.palette(), qapp.styleSheet(), qapp.style().name()
    theme.apply_theme(qapp, "light")
    try:
        SHOTS.mkdir(parents=True, exist_ok=True)
        env = make_window(
            VisionFakeEngine(["The vault code is **PURPLE-ELEPHANT-42** (p. 2). ", "See also page 1."])
        )
        env.window.resize(1180, 760)
        drop(env.window, url_mime(files.image, files.pdf))
        wait_ready(qtbot, env.bar, 2)
        env.window.composer.set_text("What does the handbook say about the vault, and what is in the photo?")
        qtbot.wait(50)
        assert env.window.grab().save(str(SHOTS / "attach_composer_chips.png"))

        send(qtbot, env, env.window.composer.text())
        qtbot.wait(50)
        assert env.window.grab().save(str(SHOTS / "attach_conversation.png"))
        answer = env.window.chat_view.last_message("assistant")
        assert answer is not None
        qtbot.mouseClick(answer.sources_button, Qt.MouseButton.LeftButton)
        dialog = env.window.attachments.last_dialog
        assert dialog is not None
        qtbot.waitExposed(dialog)
        assert dialog.grab().save(str(SHOTS / "attach_what_the_model_saw.png"))
        dialog.close()
        click_citation(qtbot, answer, 2)
        popup = env.window.attachments.last_dialog
        assert popup is not None
        qtbot.waitExposed(popup)
        assert popup.grab().save(str(SHOTS / "attach_citation.png"))
        popup.close()
    finally:  # leave the application as the next tests expect it
        qapp.setStyleSheet(old_sheet)
        qapp.setPalette(old_palette)
        qapp.setStyle(old_style)


class SlowPromptEngine(FakeEngine):
    """A FakeEngine that reads its prompt in four batches, reporting each, and waits after the
    second until ``go`` is set (the test looks at the window in the middle of a long prompt)."""

    def __init__(self, pieces: list[str]) -> None:
        super().__init__(pieces)
        self.go = threading.Event()

    def stream_chat(self, messages, sampling, cancel, on_prompt_progress=None, **kwargs) -> Iterator[str]:
        total = self.count_chat_tokens(messages)

        def progress(done: int, _total: int) -> None:
            if on_prompt_progress is not None:
                for step in (1, 2):
                    on_prompt_progress(total * step // 4, total)
                self.go.wait(10)
                on_prompt_progress(total, total)

        return super().stream_chat(messages, sampling, cancel, progress, **kwargs)


def test_a_document_being_read_in_a_long_prompt_says_how_long_its_reading_takes(
    qtbot, make_window, files
) -> None:
    """The chip of the document the model reads whole shows the time left from the rate measured
    while the prompt is read (a quarter of it in 2 s: the half left takes 4 s); once read, its
    pages and tokens again."""
    engine = SlowPromptEngine(ANSWER)
    env = make_window(engine)
    drop(env.window, url_mime(files.pdf))
    (composer_chip,) = wait_ready(qtbot, env.bar, 1)
    details = composer_chip.detail_label.text()
    times = iter(range(100, 1000, 2))
    env.controller.conversations.clock = lambda: float(next(times))
    env.window.composer.set_text("What is the vault code?")
    with qtbot.waitSignal(env.controller.conversations.generation_finished, timeout=10_000):
        qtbot.keyClick(env.window.composer.edit, Qt.Key.Key_Return)

        def reading_chip() -> AttachmentChip | None:
            user = env.window.chat_view.last_message("user")
            if user is None or user.attachments_widget is None:
                return None
            return user.attachments_widget.chips[0]

        qtbot.waitUntil(
            lambda: (
                (chip := reading_chip()) is not None
                and chip.detail_label.text() == "Reading — about 4 s left"
            ),
            timeout=5000,
        )
        chip = reading_chip()
        assert chip is not None
        assert chip.progress.isVisible()
        assert chip.progress.value() == 500
        assert "about 4 s left" in env.window.status.activity_label.text()
        engine.go.set()
    chip = reading_chip()
    assert chip is not None
    qtbot.waitUntil(lambda: chip.detail_label.text() == details)
    assert not chip.progress.isVisible()
