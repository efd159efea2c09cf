"""Chat formats when a GGUF's template is missing, broken or hostile: llama.cpp's built-in format
for the model (real llama.cpp on the tiny generated models), and the sandbox still holds."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import pytest

from app.core.engine import LlamaEngine
from app.core.engine.templates import (
    ARCH_BUILTIN_TEMPLATES,
    VOCAB_BUILTIN_TEMPLATES,
    builtin_template_for,
    builtin_template_names,
    render_builtin,
)
from app.core.tiny_model import LLAMA4_CHAT_TEMPLATE, TinyModelSpec, write_tiny_model
from app.core.types import ChatMessage, LoadParams, SamplingParams

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

CONVERSATION = [
    ChatMessage.system("Be brief."),
    ChatMessage.user("Hi"),
    ChatMessage.assistant("Hello."),
    ChatMessage.user("Why?"),
]


@pytest.fixture
def engine() -> Iterator[LlamaEngine]:
    made = LlamaEngine()
    yield made
    made.unload()


def _answer(engine: LlamaEngine) -> str:
    return "".join(
        engine.stream_chat([ChatMessage.user("Hi")], SamplingParams(max_tokens=4, seed=1), threading.Event())
    )


def test_every_format_named_is_built_into_this_llama_cpp() -> None:
    names = set(builtin_template_names())
    assert {"llama4", "gemma", "chatml"} <= names
    assert set(ARCH_BUILTIN_TEMPLATES.values()) <= names
    assert {name for _token, name in VOCAB_BUILTIN_TEMPLATES} <= names


def test_the_format_is_chosen_by_special_tokens_then_architecture() -> None:
    none: set[str] = set()
    assert builtin_template_for("gemma3", none.__contains__) == "gemma"  # Gemma 3 270M has no template
    assert builtin_template_for("qwen3", none.__contains__) == "chatml"
    assert builtin_template_for("llama", {"<|start_header_id|>"}.__contains__) == "llama3"
    assert builtin_template_for("gemma3", {"<|im_start|>"}.__contains__) == "chatml"  # a ChatML fine-tune
    assert builtin_template_for("llama", none.__contains__) is None
    assert builtin_template_for("some-new-arch", none.__contains__) is None


def test_builtin_gemma_format() -> None:
    prompt = render_builtin("gemma", [{"role": "user", "content": "Hi"}])
    assert prompt == "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
    with pytest.raises(ValueError, match="no built-in chat format"):
        render_builtin("no-such-format", [{"role": "user", "content": "Hi"}])


def test_a_long_conversation_is_not_cut() -> None:
    long = "word " * 5000
    assert render_builtin("chatml", [{"role": "user", "content": long}]).count("word") == 5000


def test_model_without_template_uses_llama_cpps_builtin_format(
    engine: LlamaEngine, tiny_model_no_template: Path
) -> None:
    info = engine.load(LoadParams(tiny_model_no_template, n_ctx=512, n_threads=1))
    assert info.chat_template_note == (
        "This model file has no chat template; using llama.cpp's built-in Llama 4 format instead."
    )
    dicts = [{"role": m.role, "content": m.content} for m in CONVERSATION]
    assert engine.render_prompt(CONVERSATION) == render_builtin("llama4", dicts)
    assert _answer(engine).strip()


def test_a_hostile_template_is_not_used_and_the_sandbox_holds(engine: LlamaEngine, tmp_path: Path) -> None:
    marker = tmp_path / "template-ran-code"
    evil = "{{ cycler.__init__.__globals__.os.popen('touch " + str(marker) + "').read() }}"
    model = write_tiny_model(tmp_path / "evil.gguf", TinyModelSpec(chat_template=evil))[0]
    info = engine.load(LoadParams(model, n_ctx=512, n_threads=1))
    assert info.chat_template_note.startswith("This model's chat template cannot be used (it fails")
    assert "built-in Llama 4 format" in info.chat_template_note
    assert "<|header_start|>user<|header_end|>\n\nHi<|eot|>" in engine.render_prompt([ChatMessage.user("Hi")])
    assert _answer(engine).strip()
    assert not marker.exists()


def test_a_template_that_leaves_the_conversation_out_is_not_used(engine: LlamaEngine, tmp_path: Path) -> None:
    model = write_tiny_model(tmp_path / "empty.gguf", TinyModelSpec(chat_template="{{ bos_token }}Hello"))[0]
    info = engine.load(LoadParams(model, n_ctx=512, n_threads=1))
    assert "leaves the conversation out" in info.chat_template_note
    assert "Why?" in engine.render_prompt(CONVERSATION)


def test_a_template_refusing_one_conversation_falls_back_for_it(engine: LlamaEngine, tmp_path: Path) -> None:
    """A template that raises for a system message (as some do) still formats the others itself."""
    strict = (
        "{% for m in messages %}{% if m['role'] == 'system' %}"
        "{{ raise_exception('System role not supported') }}{% endif %}{% endfor %}" + LLAMA4_CHAT_TEMPLATE
    )
    model = write_tiny_model(tmp_path / "strict.gguf", TinyModelSpec(chat_template=strict))[0]
    info = engine.load(LoadParams(model, n_ctx=512, n_threads=1))
    assert info.chat_template_note == ""
    own = engine.render_prompt([ChatMessage.user("Hi")])
    assert own.startswith("<|begin_of_text|>")  # the file's own template writes the BOS token
    with_system = engine.render_prompt(CONVERSATION)
    assert with_system.startswith("<|header_start|>system<|header_end|>\n\nBe brief.<|eot|>")
