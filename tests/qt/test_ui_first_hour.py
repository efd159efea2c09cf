"""Rough edges a new user meets in the first hour: the context and threads settings, live
status-bar figures, answers that name their model, search highlights, the export folder, the
spin-box arrows and markers that wrap instead of being cut. Real widgets on real AppControllers
around a FakeEngine."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from PySide6.QtCore import QStandardPaths

from app.config import Settings, load_settings
from app.core.context import dropped_notice
from app.core.hardware import physical_cores
from app.core.store import StoredMessage
from app.core.types import ModelInfo
from app.ui import theme
from app.ui.main_window import MainWindow
from app.ui.message_widget import NoticeWidget
from app.ui.search_dialog import HTML_ROLE, MARK_STYLE, SearchDialog, highlight
from app.ui.settings_dialog import context_cap_reason
from app.ui.status_bar import LIVE_SPEED_TIP
from app.ui.window_dialogs import export_start_dir
from tests.fakes import FakeEngine

if TYPE_CHECKING:
    from collections.abc import Callable

    from app.config import AppPaths
    from app.core.types import LoadParams
    from app.workers.controller import AppController

pytestmark = pytest.mark.qt_log_ignore(
    "This plugin does not support propagateSizeHints", "This plugin does not support raise"
)


class NamedEngine(FakeEngine):
    """A FakeEngine whose model is named after its file (two models, two names)."""

    def load(self, params: LoadParams, progress: Callable[[float], bool] | None = None) -> ModelInfo:
        info = dataclasses.replace(super().load(params, progress), name=Path(params.model_path).stem)
        self._info = info
        return info


@pytest.fixture
def engine() -> NamedEngine:
    return NamedEngine(pieces=[" Hello", " there"], n_ctx=4096)


@pytest.fixture
def window(qtbot, make_controller, engine: NamedEngine) -> MainWindow:
    win = MainWindow(make_controller(engine))
    qtbot.addWidget(win)
    win.show()
    qtbot.waitExposed(win)
    return win


def info(n_ctx: int, n_ctx_train: int) -> ModelInfo:
    return ModelInfo(Path("m.gguf"), "m", "llama", n_ctx, n_ctx_train, 1, 1, True)


# -- 4: the context size and threads settings ------------------------------------------------------
def test_settings_show_auto_context_for_this_model_and_a_threads_setting(
    qtbot, window: MainWindow, load_fake_model, app_paths: AppPaths
) -> None:
    controller = window.controller
    load_fake_model(controller, "gemma.gguf")
    dialog = window.open_settings()
    assert dialog.n_ctx.value() == 0
    assert dialog.n_ctx.text() == "Auto (4,096 for this model)"  # not "512 tokens"
    assert not dialog.n_ctx_note.isVisible()
    assert dialog.n_threads.text() == f"Auto ({physical_cores()} cores)"
    dialog.n_threads.setValue(3)
    with qtbot.waitSignal(controller.models.model_loaded, timeout=5000):  # threads reload the model
        dialog.accept()
    assert controller.settings.n_threads == 3
    assert controller.settings.n_ctx == 0
    assert load_settings(app_paths).n_threads == 3


def test_a_capped_context_says_why(qtbot, window: MainWindow, load_fake_model) -> None:
    controller = window.controller
    controller.update_settings(controller.settings.replace(n_ctx=16_384))
    load_fake_model(controller, "small.gguf")  # the engine gives it 4,096
    expected = (
        "The model runs with 4,096 tokens of context, not the 16,384 asked for: "
        "llama.cpp could not give it more."
    )
    assert expected in window.activity_label.text()
    assert expected in window.model_label.toolTip()
    dialog = window.open_settings()
    assert dialog.n_ctx.value() == 16_384
    assert dialog.n_ctx_note.isVisible()
    assert dialog.n_ctx_note.text() == expected
    dialog.n_ctx.setValue(2048)  # the note is about the saved value
    assert not dialog.n_ctx_note.isVisible()
    dialog.reject()


def test_context_cap_reasons() -> None:
    assert context_cap_reason(0, info(4096, 4096)) == ""  # Auto is never "capped"
    assert context_cap_reason(4096, info(4096, 4096)) == ""
    assert context_cap_reason(8192, None) == ""
    assert context_cap_reason(8192, info(4096, 4096)).endswith(
        "the model was trained for at most 4,096 tokens."
    )
    assert context_cap_reason(8192, info(2048, 32768), fixed_n_ctx=2048).endswith(
        "Memory & offload fixes the context at 2,048 tokens."
    )


# -- 6: live figures in the status bar, cleared when they no longer apply --------------------------
def test_status_bar_shows_live_speed_and_context_then_clears(
    qtbot, window: MainWindow, engine: NamedEngine, load_fake_model
) -> None:
    controller = window.controller
    engine.pieces, engine.delay, engine.hold = ["One two ", "three four ", "five six"], 0.1, True
    ticks = iter(range(1000))
    window.clock = lambda: float(next(ticks))  # a second between the pieces' arrivals
    load_fake_model(controller, "a.gguf")
    with qtbot.waitSignal(controller.conversations.turn_decided, timeout=5000) as decided:
        controller.conversations.send("Count to six")
    prompt = decided.args[0].prompt_tokens
    answer = window.chat_view.last_message("assistant")
    assert answer is not None
    qtbot.waitUntil(lambda: window.status._live_text == "One two three four five six", timeout=5000)
    assert re.fullmatch(r"≈ \d+\.\d tok/s", window.speed_label.text())
    assert window.speed_label.toolTip() == LIVE_SPEED_TIP
    assert window.context_label.isVisible()
    live = window.context_label.text()
    assert live.startswith("Context ≈ ")
    assert live.endswith(" / 4.1k")
    assert live != f"Context ≈ {prompt} / 4.1k"  # the answer's tokens are counted as they come
    with qtbot.waitSignal(controller.conversations.generation_finished, timeout=5000):
        window.stop_action.trigger()
    assert window.speed_label.text() == "100.0 tok/s"  # the engine's figure replaces the estimate
    assert "≈" not in window.context_label.text()

    window.new_chat_action.trigger()
    assert window.speed_label.text() == ""

    controller.conversations.open_conversation(controller.store.list_conversations()[0].id)
    kept = controller.models.model_info
    assert kept is not None
    engine.load_error = "not a model"
    with qtbot.waitSignal(controller.models.model_load_failed, timeout=5000):
        controller.models.load_model("broken.gguf")
    # the model that was loaded stays loaded (and named); the last answer's speed is gone
    assert window.model_label.text() == kept.name
    assert window.speed_label.text() == ""

    # with no model left, no context figures either
    engine.unload()
    with qtbot.waitSignal(controller.models.model_load_failed, timeout=5000):
        controller.models.load_model("broken.gguf")
    assert window.model_label.text() == "No model"
    assert not window.context_label.isVisible()
    assert not window.context_meter.isVisible()
    assert window.speed_label.text() == ""


# -- 7: each answer names the model that wrote it; no stray leading space --------------------------
def answer_with_two_models(qtbot, controller: AppController, load_fake_model) -> None:
    """ "First" answered by a model named tiny-llama4, then "Second" by one named gemma-3-270m."""
    for model, question in (("tiny-llama4.gguf", "First"), ("gemma-3-270m.gguf", "Second")):
        load_fake_model(controller, model)
        with qtbot.waitSignal(controller.conversations.generation_finished, timeout=5000):
            controller.conversations.send(question)


def test_answers_record_and_show_the_model_that_wrote_them(
    qtbot, window: MainWindow, load_fake_model
) -> None:
    controller = window.controller
    answer_with_two_models(qtbot, controller, load_fake_model)
    answers = [m for m in controller.conversations.messages() if m.role == "assistant"]
    assert [(m.model, m.content) for m in answers] == [
        ("tiny-llama4", "Hello there"),  # the engine's first piece was " Hello"
        ("gemma-3-270m", "Hello there"),
    ]
    widgets = [window.chat_view.message_widget(m.id) for m in answers]
    assert [w.role_label.text() for w in widgets] == ["tiny-llama4", "gemma-3-270m"]
    assert widgets[0].text == "Hello there"


def test_export_names_each_answers_model_and_opens_in_documents(
    qtbot, window: MainWindow, load_fake_model, tmp_path: Path, app_paths: AppPaths
) -> None:
    controller = window.controller
    answer_with_two_models(qtbot, controller, load_fake_model)
    offered: list[str] = []
    folder = tmp_path / "exports"
    folder.mkdir()

    def choose(_parent: Any, suggested: str) -> str:
        offered.append(suggested)
        return str(folder / "chat.md")

    window.choose_export_file = choose
    target = window.export_current_conversation()
    assert target == folder / "chat.md"
    documents = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.DocumentsLocation)
    first_dir = Path(offered[0]).parent
    assert first_dir == (Path(documents) if Path(documents).is_dir() else Path.home())
    text = target.read_text(encoding="utf-8")
    assert "## tiny-llama4\n\nHello there" in text
    assert "## gemma-3-270m\n\nHello there" in text
    assert "models: tiny-llama4, gemma-3-270m" in text
    window.export_current_conversation()  # the next export starts where the last one went
    assert Path(offered[1]).parent == folder
    assert load_settings(app_paths).last_export_dir == str(folder)


def test_export_start_dir_falls_back_to_documents_then_home(tmp_path: Path) -> None:
    documents = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.DocumentsLocation)
    default = Path(documents) if documents and Path(documents).is_dir() else Path.home()
    assert export_start_dir("") == default
    assert export_start_dir(str(tmp_path / "gone")) == default
    assert export_start_dir(str(tmp_path)) == tmp_path


# -- 13: spin-box arrows, wrapped markers and status messages ----------------------------------------
@pytest.mark.parametrize("dark", [False, True])
def test_spin_box_arrows_are_images_that_exist(dark: bool) -> None:
    sheet = theme.stylesheet(dark)
    for arrow in ("up-arrow", "down-arrow"):
        rule = re.search(r"QSpinBox::" + arrow + r"[^{]*\{([^}]*)\}", sheet)
        assert rule is not None, arrow
        image = re.search(r'image: url\("([^"]+)"\)', rule.group(1))
        assert image is not None, arrow
        assert Path(image.group(1)).is_file()
        assert ("-dark.svg" in image.group(1)) == dark


def test_the_left_out_marker_wraps_in_a_narrow_column(qtbot) -> None:
    notice = NoticeWidget(StoredMessage(1, 1, "notice", dropped_notice(3), 0.0, "", {}, {}, "complete"))
    qtbot.addWidget(notice)
    notice.resize(420, 100)
    notice.show()
    assert notice.minimumSizeHint().width() <= 420  # it used to need the whole sentence's width
    assert notice.label.heightForWidth(notice.label.width()) <= notice.label.height()


def test_a_long_status_message_wraps_instead_of_being_cut(qtbot, window: MainWindow) -> None:
    window.resize(760, 560)
    text = (
        "This conversation has images: each answer re-reads the whole conversation "
        "(the vision path cannot reuse the cache), so it starts more slowly."
    )
    window.controller.notices.info_message.emit(text)
    label = window.activity_label

    def shown_whole() -> bool:
        if label.wordWrap():
            return label.heightForWidth(label.width()) <= label.height()
        return label.fontMetrics().horizontalAdvance(text) <= label.width()

    qtbot.waitUntil(shown_whole, timeout=2000)
    assert label.text() == text
    assert label.geometry().right() <= window.statusBar().width()


# -- 14: search results highlight the query ------------------------------------------------------
def test_search_results_highlight_the_query_words(qtbot, make_controller) -> None:
    controller = make_controller()
    store = controller.store
    conversation = store.create_conversation("Bread")
    store.add_message(conversation.id, "user", "How long should a sourdough Levain ferment?")
    dialog = SearchDialog(store.search_messages)
    qtbot.addWidget(dialog)
    dialog.set_query("levai ferm")
    assert dialog.hit_count() == 1
    rich = dialog.results.item(0).data(HTML_ROLE)
    assert f'<b style="{MARK_STYLE}">Levai</b>n' in rich
    assert f'<b style="{MARK_STYLE}">ferm</b>ent' in rich
    assert highlight("a <b> & unprefixed levain", "levain b") == (
        f'a &lt;<b style="{MARK_STYLE}">b</b>&gt; &amp; unprefixed <b style="{MARK_STYLE}">levain</b>'
    )
    assert highlight("x", '"" *') == "x"


def test_settings_dataclass_has_the_export_folder() -> None:
    assert Settings().last_export_dir == ""
    assert Settings.from_dict({"last_export_dir": "/tmp"}).last_export_dir == "/tmp"
