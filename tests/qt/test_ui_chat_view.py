"""ChatView: Markdown + highlighted code, copy buttons, notices, badges, throttled streaming."""

from __future__ import annotations

import time

import pytest
from PySide6.QtCore import QPoint, Qt
from PySide6.QtGui import QGuiApplication, QTextCursor

from app.ui.chat_view import RETIRE_PER_PASS, UPDATE_INTERVAL_MS, ChatView
from app.ui.markdown_render import chunk_text, render_markdown, split_stable
from app.ui.message_widget import MessageWidget, NoticeWidget, RichTextSegment
from tests.qt.test_ui_doubles import msg, stats

pytestmark = pytest.mark.qt_log_ignore("This plugin does not support propagateSizeHints")

ANSWER = """Intro with **bold** and `inline`.

```python
def add(a, b):
    return a + b
```

| a | b |
|---|---|
| 1 | 2 |

```bash
echo second
```
"""


@pytest.fixture
def view(qtbot) -> ChatView:
    widget = ChatView()
    qtbot.addWidget(widget)
    widget.resize(800, 600)
    widget.set_model_loaded(True)
    widget.show()
    qtbot.waitExposed(widget)
    return widget


def _segments(widget: MessageWidget) -> list[RichTextSegment]:
    return widget.segments


def test_markdown_renders_code_tables_and_escapes_html() -> None:
    rendered = render_markdown(ANSWER + "\n<script>alert(1)</script>\n")
    assert rendered.code_blocks == ["def add(a, b):\n    return a + b", "echo second"]
    assert 'href="copy:0"' in rendered.html
    assert 'href="copy:1"' in rendered.html
    assert "<table" in rendered.html
    assert "<b>" not in rendered.html
    assert "<strong>bold</strong>" in rendered.html
    assert "<script>" not in rendered.html
    assert "&lt;script&gt;" in rendered.html
    # Pygments coloured the keyword with an inline style
    assert "<span style=" in rendered.html
    assert ">def</span>" in rendered.html


def test_stable_split_never_cuts_inside_a_fence() -> None:
    text = "Para one.\n\n```py\nx = 1\n\ny = 2\n"
    assert split_stable(text) == len("Para one.\n\n")
    closed = text + "```\nafter\n"
    assert split_stable(closed) == len(text + "```\n")
    assert "".join(chunk_text(ANSWER * 20, 200)) == ANSWER * 20


def test_user_and_assistant_render_differently(view: ChatView) -> None:
    user = msg("user", "Show me **code**")
    answer = msg("assistant", ANSWER)
    view.set_messages([user, answer])
    assert view.current_page() == ChatView.PAGE_MESSAGES
    user_widget = view.message_widget(user.id)
    answer_widget = view.message_widget(answer.id)
    assert isinstance(user_widget, MessageWidget)
    assert isinstance(answer_widget, MessageWidget)
    assert user_widget.bubble is not None
    assert answer_widget.bubble is None
    # the user's text is shown as typed, the answer as Markdown
    assert "**code**" in user_widget.segments[0].toPlainText()
    plain = "".join(s.toPlainText() for s in answer_widget.segments)
    assert "**" not in plain
    assert "bold" in plain
    assert "return a + b" in plain
    assert answer_widget.code_block_count() == 2


def _anchor_point(segment: RichTextSegment, href: str) -> QPoint:
    document = segment.document()
    block = document.begin()
    while block.isValid():
        it = block.begin()
        while not it.atEnd():
            fragment = it.fragment()
            if fragment.charFormat().anchorHref() == href:
                cursor = QTextCursor(document)
                cursor.setPosition(fragment.position() + 1)
                return segment.cursorRect(cursor).center()
            it += 1
        block = block.next()
    raise AssertionError(f"no anchor {href}")


def test_copy_button_copies_that_code_block(qtbot, view: ChatView) -> None:
    answer = msg("assistant", ANSWER)
    view.set_messages([msg("user", "q"), answer])
    widget = view.message_widget(answer.id)
    assert isinstance(widget, MessageWidget)
    segment = next(s for s in widget.segments if len(s.code_blocks) == 2)
    QGuiApplication.clipboard().clear()
    point = _anchor_point(segment, "copy:1")
    with qtbot.waitSignal(view.copied) as blocker:
        qtbot.mouseClick(segment.viewport(), Qt.MouseButton.LeftButton, pos=point)
    assert blocker.args == ["code"]
    assert QGuiApplication.clipboard().text() == "echo second"
    qtbot.mouseClick(segment.viewport(), Qt.MouseButton.LeftButton, pos=_anchor_point(segment, "copy:0"))
    assert QGuiApplication.clipboard().text() == "def add(a, b):\n    return a + b"


def test_copy_message_and_last_message_actions(qtbot, view: ChatView) -> None:
    first_q, first_a = msg("user", "first"), msg("assistant", "one")
    last_q, last_a = msg("user", "second"), msg("assistant", "two **2**")
    view.set_messages([first_q, first_a, last_q, last_a])
    widgets = {m.id: view.message_widget(m.id) for m in (first_q, first_a, last_q, last_a)}
    # any message can be edited or answered again (a new branch beside it)
    assert widgets[last_q.id].edit_button.isVisibleTo(view)
    assert widgets[first_q.id].edit_button.isVisibleTo(view)
    assert widgets[last_a.id].regenerate_button.isVisibleTo(view)
    assert widgets[first_a.id].regenerate_button.isVisibleTo(view)
    with qtbot.waitSignal(view.regenerate_requested) as regenerated:
        qtbot.mouseClick(widgets[first_a.id].regenerate_button, Qt.MouseButton.LeftButton)
    assert regenerated.args == [first_a.id]
    with qtbot.waitSignal(view.edit_requested) as blocker:
        qtbot.mouseClick(widgets[last_q.id].edit_button, Qt.MouseButton.LeftButton)
    assert blocker.args == [last_q.id]
    qtbot.mouseClick(widgets[first_a.id].copy_button, Qt.MouseButton.LeftButton)
    assert QGuiApplication.clipboard().text() == "one"
    view.set_busy(True)
    assert not widgets[last_a.id].regenerate_button.isVisibleTo(view)
    assert not widgets[last_q.id].edit_button.isVisibleTo(view)


def test_notice_and_status_badges(view: ChatView) -> None:
    notice = msg("notice", "2 earlier messages were left out to fit the context")
    stopped = msg("assistant", "partial", status="cancelled")
    interrupted = msg("assistant", "half", status="interrupted")
    failed = msg("assistant", "", status="error", stats={"error": "out of memory"})
    view.set_messages([msg("user", "q"), notice, stopped, interrupted, failed])
    notice_widget = view.message_widget(notice.id)
    assert isinstance(notice_widget, NoticeWidget)
    assert notice_widget.label.text() == notice.content
    assert notice_widget.label.alignment() & Qt.AlignmentFlag.AlignHCenter
    assert view.message_widget(stopped.id).badge.text() == "stopped"
    assert view.message_widget(interrupted.id).badge.text() == "interrupted — the app closed while answering"
    failed_widget = view.message_widget(failed.id)
    assert failed_widget.badge.text() == "error"
    assert failed_widget.error_label.text() == "out of memory"


def test_streaming_is_buffered_until_the_timer(qtbot, view: ChatView) -> None:
    view.add_message(msg("user", "q"))
    placeholder = msg("assistant", "", status="streaming")
    view.add_message(placeholder)
    widget = view.message_widget(placeholder.id)
    assert isinstance(widget, MessageWidget)
    qtbot.waitUntil(lambda: widget.typing_label.isVisibleTo(view), timeout=1000)
    for piece in ["Hel", "lo ", "**wor", "ld**"]:
        view.append_delta(placeholder.id, piece)
    assert widget.text == ""  # nothing rendered per token
    qtbot.waitUntil(lambda: widget.text == "Hello **world**", timeout=UPDATE_INTERVAL_MS * 20)
    assert widget.segments[-1].toPlainText().strip() == "Hello world"
    assert not widget.typing_label.isVisibleTo(view)
    view.finish_message(placeholder.id, stats(tps=31.0, reason="stop", tokens=4))
    assert widget.status == "complete"
    assert "31.0 tok/s" in widget.stats_label.text()
    assert widget.regenerate_button.isVisibleTo(view)


def test_stopped_answer_gets_a_badge(view: ChatView) -> None:
    placeholder = msg("assistant", "", status="streaming")
    view.set_messages([msg("user", "q"), placeholder])
    view.append_delta(placeholder.id, "partial answer")
    view.finish_message(placeholder.id, stats(reason="cancelled"))
    widget = view.message_widget(placeholder.id)
    assert widget.text == "partial answer"
    assert widget.badge.text() == "stopped"


def test_removing_messages_and_empty_states(view: ChatView) -> None:
    question = msg("user", "q")
    view.set_messages([question])
    view.remove_message(question.id)
    assert view.current_page() == ChatView.PAGE_EMPTY
    view.set_model_loaded(False)
    assert view.current_page() == ChatView.PAGE_NO_MODEL


def test_a_replaced_conversation_is_hidden_at_once_and_deleted_a_few_per_pass(qtbot, view: ChatView) -> None:
    old = [msg("user" if i % 2 == 0 else "assistant", f"message {i}") for i in range(40)]
    view.set_messages(old)
    widgets = list(view._widgets.values())
    destroyed: list[int] = []
    for widget in widgets:
        widget.destroyed.connect(lambda *_a: destroyed.append(1))
    view.set_messages([msg("user", "a new conversation")])
    assert not any(w.isVisible() for w in widgets)  # gone from the screen at once
    assert len(view._widgets) == 1
    qtbot.wait(1)
    assert len(destroyed) <= RETIRE_PER_PASS * 2  # not all at once
    qtbot.waitUntil(lambda: len(destroyed) == len(widgets), timeout=5000)
    assert not view._retire_timer.isActive()


def test_long_streamed_answer_renders_incrementally_and_stays_at_bottom(qtbot, view: ChatView) -> None:
    section = (
        "Some text with **bold**, `code` and a [link](https://example.com).\n\n"
        "- a list item\n- another item\n\n"
        "```python\n" + "".join(f"def f{i}(x):\n    return x * {i}\n" for i in range(10)) + "```\n\n"
    )
    text = section * 30  # ~16 KB, about 4,000 tokens
    placeholder = msg("assistant", "", status="streaming")
    view.set_messages([msg("user", "long please"), placeholder])
    widget = view.message_widget(placeholder.id)
    worst = 0.0
    step = 16  # ~4 tokens per delta
    for start in range(0, len(text), step):
        view.append_delta(placeholder.id, text[start : start + step])
        if (start // step) % 6 == 0:  # a flush per ~24 tokens, like the 40 ms timer at full speed
            began = time.perf_counter()
            view.flush()
            QGuiApplication.processEvents()
            worst = max(worst, time.perf_counter() - began)
    view.finish_message(placeholder.id, stats())
    QGuiApplication.processEvents()
    assert widget.text == text
    assert len(widget.segments) > 5  # finished blocks were frozen, not re-rendered
    assert widget.code_block_count() == 30
    assert view.is_at_bottom()
    # generous bound for a shared CI machine; bench/ui_stall.py measures the real figure
    assert worst < 0.25, f"slowest incremental render took {worst * 1000:.0f} ms"


def test_theme_change_rerenders(qtbot, view: ChatView) -> None:
    from app.ui.theme import make_palette

    answer = msg("assistant", ANSWER)
    view.set_messages([msg("user", "q"), answer])
    before = view.message_widget(answer.id).segments[0].toHtml()
    view.setPalette(make_palette(dark=True))
    qtbot.waitUntil(lambda: not view._rerender_timer.isActive(), timeout=1000)
    after = view.message_widget(answer.id).segments[0].toHtml()
    assert before != after
