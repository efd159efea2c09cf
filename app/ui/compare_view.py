"""Compare: one message answered by two presets (or, on a server offering several, two models),
the answers side by side in the chat, and the control that starts it.

:class:`ComparePanel` sits in the chat under the question while the two answers are written (one
after the other, through the one inference worker) and until the user keeps one ("Keep this one":
that answer becomes the branch shown; the other stays beside it, one ‹ › away).
:class:`CompareDialog` is the small control: the message, and a preset (and model) for each side.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QFrame,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from app.core.presets import Preset, all_presets
from app.workers.conversations import CompareSide

if TYPE_CHECKING:
    from collections.abc import Sequence

    from app.ui.message_widget import MessageWidget
    from app.workers.conversations import CompareRun

SIDES = ("Left", "Right")
DEFAULT_SIDES = ("Default", "Precise")


class _CompareColumn(QFrame):
    """One side: its label, its answer (a MessageWidget) and "Keep this one"."""

    def __init__(self, label: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("compareColumn")
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.answer: MessageWidget | None = None
        self.layout_ = QVBoxLayout(self)
        self.layout_.setContentsMargins(12, 8, 12, 8)
        self.layout_.setSpacing(4)
        self.title = QLabel(label)
        self.title.setObjectName("compareTitle")
        font = self.title.font()
        font.setBold(True)
        self.title.setFont(font)
        self.waiting = QLabel("Waiting for the other answer…")
        self.waiting.setObjectName("metaLabel")
        self.keep_button = QPushButton("Keep this one")
        self.keep_button.setObjectName("keepButton")
        self.keep_button.setToolTip("Go on with this answer (the other stays as a branch)")
        self.keep_button.setEnabled(False)
        self.keep_button.setCursor(Qt.CursorShape.PointingHandCursor)
        self.layout_.addWidget(self.title)
        self.layout_.addWidget(self.waiting)
        self.layout_.addStretch(1)
        row = QHBoxLayout()
        row.addWidget(self.keep_button)
        row.addStretch(1)
        self.layout_.addLayout(row)

    def set_answer(self, widget: MessageWidget) -> None:
        self.waiting.hide()
        self.answer = widget
        widget.set_actions(can_edit=False, can_regenerate=False, can_switch=False)
        self.layout_.insertWidget(1, widget)


class ComparePanel(QFrame):
    """The two answers of a comparison side by side, under their question.

    Signals:
        keep_requested(int): the message id of the answer the user keeps.
    """

    keep_requested = Signal(int)

    def __init__(self, run: CompareRun, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("comparePanel")
        self.run = run
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 4, 0, 4)
        layout.setSpacing(6)
        self.note = QLabel("Two answers to the same message: keep the one you prefer.")
        self.note.setObjectName("metaLabel")
        self.note.setWordWrap(True)
        layout.addWidget(self.note)
        row = QHBoxLayout()
        row.setSpacing(10)
        self.columns = [_CompareColumn(side.label) for side in run.sides]
        for column in self.columns:
            row.addWidget(column, 1)
        for index, column in enumerate(self.columns):
            column.keep_button.clicked.connect(
                self._on_left_keep_clicked if index == 0 else self._on_right_keep_clicked
            )
        layout.addLayout(row)

    def set_answer(self, side: int, widget: MessageWidget) -> None:
        self.columns[side].set_answer(widget)

    def answer(self, side: int) -> MessageWidget | None:
        return self.columns[side].answer

    def finish(self, run: CompareRun) -> None:
        """Both answers ended (or it was stopped): each written answer can be kept."""
        self.run = run
        for column in self.columns:
            column.keep_button.setEnabled(column.answer is not None)
            if column.answer is None:
                column.waiting.setText("Not written: the comparison was stopped.")
        self.note.setText(
            "Two answers to the same message: keep the one you prefer. The other stays as a branch (‹ ›)."
        )

    def _keep(self, side: int) -> None:
        answer = self.columns[side].answer
        if answer is not None:
            self.keep_requested.emit(answer.message_id)

    def _on_left_keep_clicked(self) -> None:
        self._keep(0)

    def _on_right_keep_clicked(self) -> None:
        self._keep(1)


class CompareDialog(QDialog):
    """The compare control: the message, and for each side a preset (and, when the server in use
    offers several models, a model)."""

    def __init__(
        self,
        text: str,
        models: Sequence[str] = (),
        current_model: str = "",
        parent: QWidget | None = None,
        user_presets: Sequence[Preset] = (),
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle("Compare two answers")
        self.setObjectName("compareDialog")
        layout = QVBoxLayout(self)
        intro = QLabel(
            "Send one message twice and see the answers side by side. Both are kept as branches; "
            "you choose which one the conversation goes on with."
        )
        intro.setWordWrap(True)
        layout.addWidget(intro)
        self.message_edit = QPlainTextEdit(text)
        self.message_edit.setPlaceholderText("The message to send to both")
        self.message_edit.setFixedHeight(80)
        layout.addWidget(self.message_edit)
        form = QFormLayout()
        self.preset_boxes: list[QComboBox] = []
        self.model_boxes: list[QComboBox] = []
        self._several_models = len(models) > 1
        self._current_model = current_model
        names = [p.name for p in all_presets(user_presets)]
        for index, side in enumerate(SIDES):
            presets = QComboBox()
            presets.setObjectName(f"comparePreset{side}")
            presets.addItems(names)
            presets.setCurrentText(DEFAULT_SIDES[index])
            self.preset_boxes.append(presets)
            model_box = QComboBox()
            model_box.setObjectName(f"compareModel{side}")
            model_box.addItems(list(models))
            if current_model in models:
                model_box.setCurrentText(current_model)
            model_box.setVisible(self._several_models)  # only where the server offers several
            self.model_boxes.append(model_box)
            row = QHBoxLayout()
            row.addWidget(presets, 1)
            row.addWidget(model_box, 1)
            form.addRow(f"{side}:", row)
            presets.currentTextChanged.connect(self._on_choice_changed)
            model_box.currentTextChanged.connect(self._on_choice_changed)
        layout.addLayout(form)
        self.problem = QLabel()
        self.problem.setObjectName("metaLabel")
        layout.addWidget(self.problem)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Cancel)
        self.compare_button = self.buttons.addButton("Compare", QDialogButtonBox.ButtonRole.AcceptRole)
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        layout.addWidget(self.buttons)
        self.message_edit.textChanged.connect(self._on_choice_changed)
        self._on_choice_changed()

    def text(self) -> str:
        return self.message_edit.toPlainText().strip()

    def sides(self) -> tuple[CompareSide, CompareSide]:
        """What each side uses (a model only when it is not the one in use)."""
        chosen = []
        for presets, models in zip(self.preset_boxes, self.model_boxes, strict=True):
            model = models.currentText() if self._several_models else ""
            chosen.append(CompareSide(presets.currentText(), "" if model == self._current_model else model))
        return chosen[0], chosen[1]

    def _on_choice_changed(self, _text: str = "") -> None:
        left, right = self.sides()
        if not self.text():
            problem = "Type the message to send to both."
        elif left == right:
            problem = "Choose two different presets (or models)."
        else:
            problem = ""
        self.problem.setText(problem)
        self.compare_button.setEnabled(not problem)
