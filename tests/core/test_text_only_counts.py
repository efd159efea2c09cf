"""A model without vision never receives images, so the real llama.cpp engine counts (and renders)
its prompts without them, whatever its chat template does with an image part."""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING

import pytest

from app.core.engine import LlamaEngine
from app.core.tiny_model import TinyModelSpec, write_tiny_model
from app.core.types import ChatMessage, LoadParams
from tests.vision_fixtures import png_bytes

if TYPE_CHECKING:
    from pathlib import Path

# a template that prints a message's content as it is: a list of parts comes out as its text,
# data: URIs included (as a hand-written or fallback template may do)
PLAIN_TEMPLATE = (
    "{% for m in messages %}<|header_start|>{{ m['role'] }}<|header_end|>{{ m['content'] }}<|eot|>"
    "{% endfor %}{% if add_generation_prompt %}<|header_start|>assistant<|header_end|>{% endif %}"
)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory):
    folder: Path = tmp_path_factory.mktemp("text-only")
    model = write_tiny_model(folder / "plain-template.gguf", TinyModelSpec(chat_template=PLAIN_TEMPLATE))[0]
    eng = LlamaEngine()
    info = eng.load(LoadParams(model, n_ctx=2048))
    assert not info.has_vision
    yield eng
    eng.unload()


def test_images_are_not_counted_for_a_model_without_vision(engine: LlamaEngine) -> None:
    uri = "data:image/png;base64," + base64.b64encode(png_bytes(320, 240, gradient=True)).decode()
    plain = [ChatMessage.system("Be brief."), ChatMessage.user("What colour is the sky?")]
    with_image = [plain[0], ChatMessage("user", "What colour is the sky?", (uri,))]
    assert engine.count_chat_tokens(with_image) == engine.count_chat_tokens(plain)
    assert "data:image" not in engine.render_prompt(with_image)
    assert engine.render_prompt(with_image) == engine.render_prompt(plain)
