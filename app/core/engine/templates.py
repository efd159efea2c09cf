"""Chat prompt formats: llama.cpp's built-in formats for GGUFs whose chat template is missing or
cannot be used, a plain-text last resort, and messages as the dicts a chat template reads."""

from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING, Any

from app.core.engine.native import import_llama_cpp

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from app.core.types import ChatMessage

# The last resort, for a model whose format neither its vocabulary nor llama.cpp knows.
PLAIN_FALLBACK_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ m['role'] | capitalize }}: "
    "{{ m['content'] | trim }}\n\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
PLAIN_STOP_STRINGS = ("\nUser:",)

# Formats built into llama.cpp (``llama_chat_apply_template`` by name), for a GGUF without a chat
# template or with one that cannot be used. A special token in the vocabulary proves the format
# (a fine-tune keeps its base model's tokens, not always its architecture name): checked first.
VOCAB_BUILTIN_TEMPLATES = (
    ("<|header_start|>", "llama4"),
    ("<|start_header_id|>", "llama3"),
    ("<start_of_turn>", "gemma"),
    ("<|im_start|>", "chatml"),
)
# Then the architecture (``general.architecture``) of models whose published chat format is one
# of llama.cpp's built-in ones.
ARCH_BUILTIN_TEMPLATES = {
    "llama4": "llama4",
    "gemma": "gemma",
    "gemma2": "gemma",
    "gemma3": "gemma",
    "gemma3n": "gemma",
    "qwen2": "chatml",
    "qwen2moe": "chatml",
    "qwen3": "chatml",
    "qwen3moe": "chatml",
    "phi3": "phi3",
    "command-r": "command-r",
    "cohere2": "command-r",
    "exaone": "exaone3",
    "exaone4": "exaone4",
    "granite": "granite",
    "granitemoe": "granite",
    "minicpm": "minicpm",
    "chatglm": "chatglm4",
    "glm4": "chatglm4",
    "deepseek2": "deepseek3",
    "gpt-oss": "gpt-oss",
    "openai-moe": "gpt-oss",
}
STYLE_NAMES = {
    "llama4": "Llama 4",
    "llama3": "Llama 3",
    "gemma": "Gemma",
    "chatml": "ChatML",
    "phi3": "Phi-3",
    "command-r": "Command R",
    "deepseek3": "DeepSeek V3",
}


def builtin_template_for(architecture: str, vocab_has: Callable[[str], bool]) -> str | None:
    """The name of llama.cpp's built-in chat format for a model (``vocab_has(text)``: the text is
    one special token of its vocabulary), or None when llama.cpp knows none for it."""
    for token, name in VOCAB_BUILTIN_TEMPLATES:
        if vocab_has(token):
            return name
    return ARCH_BUILTIN_TEMPLATES.get(architecture)


def builtin_template_names() -> tuple[str, ...]:
    """The chat formats this llama.cpp has built in (``llama_chat_builtin_templates``)."""
    llama_cpp = import_llama_cpp()
    n = int(llama_cpp.llama_chat_builtin_templates((ctypes.c_char_p * 0)(), 0))
    names = (ctypes.c_char_p * max(n, 0))()
    llama_cpp.llama_chat_builtin_templates(names, n)
    return tuple(name.decode() for name in names if name)


def render_builtin(name: str, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = True) -> str:
    """``messages`` (``{"role", "content"}`` dicts) in llama.cpp's built-in format ``name``.

    No template language runs: llama.cpp writes the format in C++. Image parts keep their text."""
    llama_cpp = import_llama_cpp()
    encoded = [(str(m["role"]).encode(), _text_of(m["content"]).encode()) for m in messages]
    chat = (llama_cpp.llama_chat_message * len(encoded))(
        *[llama_cpp.llama_chat_message(role, content) for role, content in encoded]
    )
    size = 2 * sum(len(r) + len(c) for r, c in encoded) + 1024
    for _ in range(2):
        buf = ctypes.create_string_buffer(size)
        n = int(
            llama_cpp.llama_chat_apply_template(
                name.encode(), chat, len(encoded), add_generation_prompt, buf, size
            )
        )
        if n < 0:
            raise ValueError(f"llama.cpp has no built-in chat format named {name!r}")
        if n <= size:
            return buf.raw[:n].decode("utf-8", "replace")
        size = n + 1
    raise ValueError("llama.cpp's chat format kept growing")  # pragma: no cover - not reachable


def _text_of(content: Any) -> str:
    """A message's text (the text parts of a content list); NULs would cut a C string short."""
    if isinstance(content, list):
        content = "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content).replace("\x00", "\ufffd")


def messages_as_dicts(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for m in messages:
        if m.images:
            parts: list[dict[str, Any]] = [
                {"type": "image_url", "image_url": {"url": uri}} for uri in m.images
            ]
            parts.append({"type": "text", "text": m.content})
            out.append({"role": m.role, "content": parts})
        else:
            out.append({"role": m.role, "content": m.content})
    return out
