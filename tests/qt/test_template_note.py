"""The note about a missing chat template is shown once per model file, not at every launch
(real llama.cpp on the tiny model without a template; settings saved and read back)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from app.config import load_settings
from app.core.engine import LlamaEngine
from app.core.tiny_model import TinyModelSpec, write_tiny_model

if TYPE_CHECKING:
    from pathlib import Path

    from app.config import AppPaths


def _load_and_collect(make_controller, qtbot, app_paths: AppPaths, model: Path) -> list[str]:
    settings = load_settings(app_paths).replace(n_ctx=512, n_threads=1)
    controller = make_controller(LlamaEngine(), settings)  # type: ignore[arg-type]
    errors: list[str] = []
    controller.notices.error_occurred.connect(errors.append)
    with qtbot.waitSignal(controller.models.model_loaded, timeout=30_000):
        controller.models.load_model(str(model))
    return [e for e in errors if "chat template" in e]


def test_the_template_note_is_shown_once_per_model(
    make_controller, qtbot, app_paths: AppPaths, tiny_model_no_template: Path, tmp_path: Path
) -> None:
    first = _load_and_collect(make_controller, qtbot, app_paths, tiny_model_no_template)
    assert first == [
        "This model file has no chat template; using llama.cpp's built-in Llama 4 format instead."
    ]
    # the next launch (settings read back from disk) says nothing about the same file
    assert _load_and_collect(make_controller, qtbot, app_paths, tiny_model_no_template) == []
    # another model file without a template is named once too
    other = write_tiny_model(tmp_path / "other.gguf", TinyModelSpec(chat_template=None, seed=5))[0]
    assert len(_load_and_collect(make_controller, qtbot, app_paths, other)) == 1
    assert _load_and_collect(make_controller, qtbot, app_paths, other) == []
