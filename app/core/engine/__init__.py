"""The model runtime: the only module that imports llama_cpp.

``LlamaEngine`` wraps one ``llama_cpp.Llama`` and must be used from one thread only (the
inference worker's). It adds what the high-level API lacks:

* a load-progress callback that can cancel (a 60 GB model takes minutes to map);
* tensor buffer overrides (``-ot``: keep MoE expert tensors in system RAM), filled into
  ``llama_model_params.tensor_buft_overrides`` through ctypes;
* a chat prompt rendered with the GGUF's own template in a sandboxed Jinja environment, with a
  sensible fallback when the file has none, and control-token text in message contents kept as
  text (a document cannot end the turn or open a system turn: ``tokens.LiteralSpecials``);
* a generation loop that evaluates the prompt in batches (progress, cancellation between batches)
  and samples token by token (cancellation between tokens), reusing the KV cache prefix of the
  previous turn — guarded for the chunked/sliding-window cache, where cells far back are pruned;
* figures for every answer (TTFT, tokens/s, prompt tokens evaluated, context used).
"""

from __future__ import annotations

import codecs
import collections
import contextlib
import ctypes
import dataclasses
import functools
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.core.engine.tokens import LiteralSpecials, PromptTokenizer
from app.core.hardware import physical_cores
from app.core.splits import first_split_part, missing_split_parts, split_parts
from app.core.types import ChatMessage, GenerationStats, LoadParams, ModelInfo, SamplingParams, timed_stats

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

log = logging.getLogger(__name__)
native_log = logging.getLogger("app.core.engine.llama_cpp")

GGUF_MAGIC = b"GGUF"
KV_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8, "bf16": 30}
LLAMA4_CHUNK = 8192  # llama.cpp hard-codes Llama 4's attention chunk

# Fallback prompt formats for GGUFs that carry no chat template.
LLAMA4_FALLBACK_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|header_start|>{{ m['role'] }}<|header_end|>\n\n"
    "{{ m['content'] | trim }}<|eot|>{% endfor %}"
    "{% if add_generation_prompt %}<|header_start|>assistant<|header_end|>\n\n{% endif %}"
)
LLAMA3_FALLBACK_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
CHATML_FALLBACK_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] | trim }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
PLAIN_FALLBACK_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ m['role'] | capitalize }}: "
    "{{ m['content'] | trim }}\n\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


class EngineError(Exception):
    """A failure with a message for the user and technical detail for the log/details pane."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


class ModelLoadError(EngineError):
    pass


class OutOfMemoryError(ModelLoadError):
    """llama.cpp could not allocate a buffer: a safer plan may load."""


class LoadCancelled(EngineError):
    def __init__(self) -> None:
        super().__init__("Loading was cancelled.")


class ContextOverflowError(EngineError):
    pass


class NoModelError(EngineError):
    def __init__(self) -> None:
        super().__init__("No model is loaded. Open a GGUF model file first.")


# --------------------------------------------------------------------------------------------
# llama.cpp's log: routed to Python logging, with a ring buffer of recent lines so that a failed
# load can tell the user *why* ("unknown model architecture", "failed to allocate ..." …).


class _NativeLog:
    def __init__(self) -> None:
        self.lines: collections.deque[str] = collections.deque(maxlen=4000)
        self.listeners: list[Callable[[int, str], None]] = []
        self._partial = ""
        self.total = 0  # lines seen since start (the deque keeps only the last ones)
        self._lock = threading.Lock()
        self._callback: Any = None
        self._installed = False

    def install(self, llama_cpp: Any) -> None:
        if self._installed:
            return

        @llama_cpp.llama_log_callback
        def _callback(level: int, text: bytes, _user_data: Any) -> None:
            with contextlib.suppress(Exception):  # never raise into C
                self._on_text(level, text.decode("utf-8", errors="replace"))

        self._callback = _callback  # keep alive for the life of the process
        llama_cpp.llama_log_set(_callback, ctypes.c_void_p(0))
        self._installed = True

    def _on_text(self, level: int, text: str) -> None:
        with self._lock:
            text = self._partial + text
            *complete, self._partial = text.split("\n")
            listeners = list(self.listeners)
        for line in complete:
            if not line.strip():
                continue
            self.lines.append(line)
            self.total += 1
            # ggml levels: 1 debug? 2 info, 3 warn, 4 error (5 = continuation)
            native_log.log(logging.INFO if level >= 4 else logging.DEBUG, "%s", line)
            for listener in listeners:
                listener(level, line)

    def recent(self, n: int = 25) -> str:
        return "\n".join(list(self.lines)[-n:])

    def mark(self) -> int:
        return self.total

    def since(self, mark: int) -> list[str]:
        """The lines logged after ``mark()`` returned ``mark`` (as many as are still kept)."""
        count = min(self.total - mark, len(self.lines))
        return list(self.lines)[-count:] if count > 0 else []


NATIVE_LOG = _NativeLog()


def _import_llama_cpp() -> Any:
    import llama_cpp

    NATIVE_LOG.install(llama_cpp)
    return llama_cpp


# --------------------------------------------------------------------------------------------
# Input checks that turn a crash or a cryptic llama.cpp error into a sentence.


def check_model_file(path: Path) -> None:
    """Raise ModelLoadError with a human message if ``path`` cannot be a loadable GGUF."""
    if not path.exists():
        raise ModelLoadError(f"The model file was not found: {path}")
    if path.is_dir():
        raise ModelLoadError(f"{path.name} is a folder, not a GGUF model file.")
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(24)
    except OSError as exc:
        raise ModelLoadError(f"The model file could not be read: {exc.strerror or exc}", str(exc)) from exc
    if size == 0:
        raise ModelLoadError(
            f"{path.name} is empty (0 bytes). The download may have failed: download it again."
        )
    if head[:4] != GGUF_MAGIC:
        hint = ""
        if head[:1] in (b"{", b"<") or all(32 <= b < 127 or b in (9, 10, 13) for b in head):
            hint = " It looks like a text file."
        raise ModelLoadError(
            f"{path.name} is not a GGUF model file.{hint} Scout Chat loads llama.cpp GGUF files (*.gguf).",
            f"first bytes: {head[:16]!r}",
        )
    version = int.from_bytes(head[4:8], "little")
    if version not in (2, 3):
        raise ModelLoadError(
            f"{path.name} uses GGUF version {version}, which this version of llama.cpp cannot read.",
            f"GGUF version {version}",
        )
    missing = missing_split_parts(path)
    if missing:
        raise ModelLoadError(
            f"This model is split into {len(split_parts(path))} files and {len(missing)} of them are "
            f"missing: {', '.join(missing)}. Put all parts in the same folder.",
        )


# --------------------------------------------------------------------------------------------
# Tensor buffer overrides (llama.cpp's -ot / --override-tensor), which the high-level API lacks.


class _BuftOverride(ctypes.Structure):
    _fields_ = [("pattern", ctypes.c_char_p), ("buft", ctypes.c_void_p)]


@dataclass
class _Overrides:
    array: Any  # ctypes array, NULL-terminated; must outlive the model
    patterns: list[bytes]


def _ggml_lib(name: str) -> ctypes.CDLL:
    import llama_cpp

    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    candidates = [f"lib{name}.so", f"lib{name}.dylib", f"{name}.dll", f"lib{name}.dll"]
    for candidate in candidates:
        path = lib_dir / candidate
        if path.exists():
            return ctypes.CDLL(str(path))
    raise ModelLoadError(f"llama.cpp library {name} not found in {lib_dir}")


def _buffer_type(device: str) -> int:
    """The ggml buffer type for a device name (CPU, CUDA0, Metal, Vulkan0 …)."""
    if device.upper() == "CPU":
        lib = _ggml_lib("ggml-cpu")
        lib.ggml_backend_cpu_buffer_type.restype = ctypes.c_void_p
        lib.ggml_backend_cpu_buffer_type.argtypes = []
        buft = lib.ggml_backend_cpu_buffer_type()
    else:
        lib = _ggml_lib("ggml")
        lib.ggml_backend_dev_by_name.restype = ctypes.c_void_p
        lib.ggml_backend_dev_by_name.argtypes = [ctypes.c_char_p]
        lib.ggml_backend_dev_buffer_type.restype = ctypes.c_void_p
        lib.ggml_backend_dev_buffer_type.argtypes = [ctypes.c_void_p]
        dev = lib.ggml_backend_dev_by_name(device.encode())
        if not dev:
            raise ModelLoadError(f"No llama.cpp device named {device!r} for a tensor override.")
        buft = lib.ggml_backend_dev_buffer_type(dev)
    if not buft:
        raise ModelLoadError(f"llama.cpp has no buffer type for device {device!r}.")
    return int(buft)


def build_tensor_overrides(params: LoadParams) -> _Overrides | None:
    if not params.tensor_overrides:
        return None
    patterns = [o.pattern.encode() for o in params.tensor_overrides]
    array = (_BuftOverride * (len(patterns) + 1))()
    for i, (override, pattern) in enumerate(zip(params.tensor_overrides, patterns, strict=True)):
        array[i].pattern = pattern
        array[i].buft = _buffer_type(override.device)
    array[len(patterns)].pattern = None
    array[len(patterns)].buft = None
    return _Overrides(array=array, patterns=patterns)


_PARAMS_LOCK = threading.Lock()


# --------------------------------------------------------------------------------------------


def tokenize_bytes(llm: Any, data: bytes, *, add_bos: bool, special: bool) -> list[int]:
    """llama.cpp's tokenizer with an output buffer sized to the text (see :func:`_tokenize_vocab`)."""
    return _tokenize_vocab(llm._model.vocab, data, add_bos, special)


def _tokenize_vocab(vocab: Any, data: bytes, add_bos: bool, special: bool) -> list[int]:
    """``Llama.tokenize`` allocates a buffer of ``n_ctx_train`` tokens on every call: for Scout
    (trained context 10,485,760) that is 40 MB zeroed per call, ~40 ms before any text is read. A
    token covers at least one byte, so ``len(data)`` plus the added BOS/EOS always suffices; the
    retry on a negative count (the size llama.cpp needs) is kept anyway. Installed in place of
    ``LlamaModel.tokenize`` on every loaded model, so llama-cpp-python's own callers use it too."""
    llama_cpp = _import_llama_cpp()
    size = len(data) + 4
    for _ in range(2):
        buf = (llama_cpp.llama_token * size)()
        n = int(llama_cpp.llama_tokenize(vocab, data, len(data), buf, size, add_bos, special))
        if n >= 0:
            return buf[:n]
        size = -n
    detail = f"llama_tokenize returned {n} for {len(data)} bytes"
    raise EngineError("The text could not be tokenized.", detail)


def _messages_as_dicts(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
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


class LlamaEngine:
    """The real engine: llama.cpp through llama-cpp-python. One thread only."""

    def __init__(self) -> None:
        self._llm: Any = None
        self._info: ModelInfo | None = None
        self._params: LoadParams | None = None
        self._formatter: Any = None
        self._template_source = ""
        self._stop_strings: tuple[str, ...] = ()
        self._overrides: _Overrides | None = None
        self._stats = GenerationStats()
        self._is_iswa = False
        self._vision: Any = None  # MTMDChatHandler when the model has a vision projector
        self._tokenizer: PromptTokenizer | None = None
        self._literal = LiteralSpecials(())  # guards message text against control-token injection

    # -- properties -------------------------------------------------------------------------
    @property
    def model_info(self) -> ModelInfo | None:
        return self._info

    @property
    def last_stats(self) -> GenerationStats:
        return self._stats

    @property
    def load_params(self) -> LoadParams | None:
        return self._params

    @property
    def n_tokens_cached(self) -> int:
        """Tokens whose KV entries are in the cache (the reusable prefix)."""
        return 0 if self._llm is None else int(self._llm.n_tokens)

    # -- loading ----------------------------------------------------------------------------
    def load(self, params: LoadParams, progress: Callable[[float], bool] | None = None) -> ModelInfo:
        llama_cpp = _import_llama_cpp()
        path = first_split_part(Path(params.model_path))
        check_model_file(path)
        self.unload()
        overrides = build_tensor_overrides(params)
        cancelled = threading.Event()

        @llama_cpp.llama_progress_callback
        def on_progress(fraction: float, _user_data: Any) -> bool:
            if progress is None:
                return True
            try:
                keep_going = bool(progress(min(1.0, max(0.0, float(fraction)))))
            except Exception:
                log.exception("load progress callback failed")
                keep_going = True
            if not keep_going:
                cancelled.set()
            return keep_going

        import llama_cpp.llama_cpp as low  # the module whose name Llama() resolves at call time

        real_defaults = low.llama_model_default_params

        def patched_defaults() -> Any:
            model_params = real_defaults()
            model_params.progress_callback = on_progress
            if overrides is not None:
                model_params.tensor_buft_overrides = ctypes.cast(overrides.array, ctypes.c_void_p)
            return model_params

        n_threads = params.n_threads or physical_cores()
        kwargs: dict[str, Any] = {
            "n_ctx": params.n_ctx,
            "n_gpu_layers": params.n_gpu_layers,
            "n_threads": n_threads,
            "n_threads_batch": params.n_threads_batch or n_threads,
            "n_batch": params.n_batch,
            "n_ubatch": params.n_ubatch,
            "flash_attn": params.flash_attn,
            "type_k": KV_TYPES[params.type_k],
            "type_v": KV_TYPES[params.type_v],
            "swa_full": params.swa_full,
            "use_mmap": params.use_mmap,
            "offload_kqv": params.offload_kqv,
            "seed": params.seed,
            "logits_all": False,
            "verbose": False,
        }
        mark = NATIVE_LOG.mark()
        started = time.perf_counter()
        with _PARAMS_LOCK:
            # Llama() builds its llama_model_params from llama_model_default_params() and never
            # touches progress_callback / tensor_buft_overrides: give it defaults that carry ours.
            low.llama_model_default_params = patched_defaults
            try:
                llm = llama_cpp.Llama(str(path), **kwargs)
            except (ValueError, RuntimeError, OSError) as exc:
                if cancelled.is_set():
                    raise LoadCancelled() from exc
                detail = "\n".join(NATIVE_LOG.since(mark)[-25:]) or str(exc)
                message = _explain_load_failure(path, detail)
                if message.startswith("Not enough memory"):
                    raise OutOfMemoryError(message, detail) from exc
                raise ModelLoadError(message, detail) from exc
            finally:
                low.llama_model_default_params = real_defaults
        elapsed = time.perf_counter() - started
        self._llm = llm
        self._overrides = overrides
        self._params = params
        # the vocab pointer, not the model: no reference cycle through the model's own attribute
        llm._model.tokenize = functools.partial(_tokenize_vocab, llm._model.vocab)
        self._setup_chat_format(llm)
        specials, controls = self._special_tokens(llm)
        self._literal = LiteralSpecials(controls)
        self._tokenizer = self._build_prompt_tokenizer(llm, specials)
        if params.mmproj_path is not None:
            from app.core.engine import vision

            try:
                handler = vision.make_chat_handler(
                    Path(params.mmproj_path), n_threads=n_threads, use_gpu=params.n_gpu_layers > 0
                )
                vision.prepare_handler(llm, handler)
            except Exception:
                self.unload()
                raise
            self._vision = handler
            self._literal = LiteralSpecials([*controls, vision.media_marker(handler)])
        # Llama 4 uses chunked attention unless the file sets sliding_window to 0 (MobileLLM).
        self._is_iswa = (
            self._arch(llm) == "llama4"
            and str(llm.metadata.get("llama4.attention.sliding_window", "")) != "0"
        )
        metadata = llm.metadata
        name = metadata.get("general.name") or path.stem
        self._info = ModelInfo(
            path=path,
            name=str(name),
            architecture=self._arch(llm),
            n_ctx=int(llm.n_ctx()),
            n_ctx_train=int(llm._model.n_ctx_train()),
            n_params=int(llm._model.n_params()),
            size_bytes=int(llm._model.size()),
            has_chat_template=bool(metadata.get("tokenizer.chat_template")),
            chat_template_note=self._template_note,
            load_seconds=elapsed,
            has_vision=self._vision is not None,
        )
        log.info(
            "loaded %s in %.2fs (n_ctx=%d, gpu layers=%d)",
            path.name,
            elapsed,
            params.n_ctx,
            params.n_gpu_layers,
        )
        return self._info

    @staticmethod
    def _arch(llm: Any) -> str:
        return str(llm.metadata.get("general.architecture", "unknown"))

    def _setup_chat_format(self, llm: Any) -> None:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        template = llm.metadata.get("tokenizer.chat_template")
        vocab_has = self._vocab_has
        self._template_note = ""
        if not template:
            if vocab_has(llm, "<|header_start|>"):
                template, style = LLAMA4_FALLBACK_TEMPLATE, "Llama 4"
            elif vocab_has(llm, "<|start_header_id|>"):
                template, style = LLAMA3_FALLBACK_TEMPLATE, "Llama 3"
            elif vocab_has(llm, "<|im_start|>"):
                template, style = CHATML_FALLBACK_TEMPLATE, "ChatML"
            else:
                template, style = PLAIN_FALLBACK_TEMPLATE, "plain text"
            self._template_note = (
                f"This model file has no chat template; using the {style} format instead. "
                "Answers may be less accurate than with the model's own template."
            )
            log.warning("%s", self._template_note)
        bos = self._token_text(llm, llm.token_bos())
        eos = self._token_text(llm, llm.token_eos())
        self._formatter = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)
        self._template_source = template
        self._stop_strings = ("\nUser:",) if template is PLAIN_FALLBACK_TEMPLATE else ()

    @staticmethod
    def _special_tokens(llm: Any) -> tuple[dict[str, int], list[str]]:
        """The texts llama.cpp cuts a prompt at when it parses special tokens (control,
        user-defined and unknown tokens) with their ids, and the control tokens' texts alone."""
        llama_cpp = _import_llama_cpp()
        vocab = llm._model.vocab
        control = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL
        special_attrs = control | llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED | llama_cpp.LLAMA_TOKEN_ATTR_UNKNOWN
        specials: dict[str, int] = {}
        controls: list[str] = []
        for tid in range(int(llama_cpp.llama_vocab_n_tokens(vocab))):
            attr = int(llama_cpp.llama_vocab_get_attr(vocab, tid))
            if attr & special_attrs:
                text = (llama_cpp.llama_vocab_get_text(vocab, tid) or b"").decode("utf-8", "replace")
                specials.setdefault(text, tid)
                if attr & control:
                    controls.append(text)
        return specials, controls

    def _build_prompt_tokenizer(self, llm: Any, specials: dict[str, int]) -> PromptTokenizer:
        """A tokenizer that keeps the tokens of long prompt pieces (documents) between turns."""

        def tokenize(data: bytes, add_bos: bool) -> list[int]:
            return tokenize_bytes(llm, data, add_bos=add_bos, special=True)

        sample = [
            ChatMessage.system("Be brief.\n"),
            ChatMessage.user("  A document:\n\n[p. 1] text.  "),
            ChatMessage.assistant("An answer.\n"),
            ChatMessage.user("Why?"),
        ]
        try:
            probes = [self.render_prompt(sample)]
        except EngineError:
            probes = []
        return PromptTokenizer(tokenize, specials, probes)

    @staticmethod
    def _token_text(llm: Any, token: int) -> str:
        if token < 0:
            return ""
        return bytes(llm._model.token_to_piece(token, special=True)).rstrip(b"\0").decode("utf-8", "replace")

    @staticmethod
    def _vocab_has(llm: Any, text: str) -> bool:
        tokens = tokenize_bytes(llm, text.encode(), add_bos=False, special=True)
        return len(tokens) == 1

    def unload(self) -> None:
        self._vision = None  # its libmtmd context is freed with the Llama it was attached to
        if self._llm is not None:
            self._llm.close()
        self._llm = None
        self._info = None
        self._overrides = None
        self._formatter = None
        self._tokenizer = None
        self._literal = LiteralSpecials(())

    # -- tokens -----------------------------------------------------------------------------
    def _require(self) -> Any:
        if self._llm is None:
            raise NoModelError()
        return self._llm

    def count_tokens(self, text: str) -> int:
        llm = self._require()
        return len(tokenize_bytes(llm, text.encode("utf-8"), add_bos=False, special=False))

    def render_prompt(self, messages: Sequence[ChatMessage]) -> str:
        self._require()
        try:
            result = self._formatter(messages=_messages_as_dicts(self._as_text(messages)))
        except Exception as exc:
            raise EngineError(
                "The model's chat template failed to format this conversation.",
                f"{type(exc).__name__}: {exc}",
            ) from exc
        return str(result.prompt)

    def _as_text(self, messages: Sequence[ChatMessage]) -> list[ChatMessage]:
        """``messages`` with any control-token text in their contents made plain text (see
        :class:`LiteralSpecials`): only the chat template puts control tokens in a prompt."""
        return [dataclasses.replace(m, content=self._literal(m.content)) for m in messages]

    def prompt_tokens(self, messages: Sequence[ChatMessage]) -> list[int]:
        llm = self._require()
        prompt = self.render_prompt(messages)
        bos = self._token_text(llm, llm.token_bos())
        add_bos = not (bos and prompt.startswith(bos))
        if self._tokenizer is not None:
            return self._tokenizer.tokens(prompt, add_bos)
        return tokenize_bytes(llm, prompt.encode("utf-8"), add_bos=add_bos, special=True)

    def count_chat_tokens(self, messages: Sequence[ChatMessage]) -> int:
        return len(self.prompt_tokens(messages))

    # -- KV state on disk -------------------------------------------------------------------
    def state_key(self) -> str:
        """Identifies what a saved KV state is valid for: the model file and every parameter that
        shapes the cache. A different model or plan gives a different key (the old state is stale)."""
        import hashlib

        import llama_cpp

        self._require()
        assert self._info is not None
        assert self._params is not None
        p = self._params
        try:
            stat = Path(self._info.path).stat()
            identity = f"{Path(self._info.path).resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
        except OSError:
            identity = str(self._info.path)
        shape = f"{p.n_ctx}|{p.type_k}|{p.type_v}|{p.flash_attn}|{p.swa_full}|{llama_cpp.__version__}"
        return hashlib.sha256(f"{identity}|{shape}".encode()).hexdigest()[:16]

    def save_state(self, path: Path) -> int:
        """Write the KV cache and its tokens to ``path`` (atomically); return the tokens saved."""
        llama_cpp = _import_llama_cpp()
        llm = self._require()
        n = int(llm.n_tokens)
        if n == 0:
            return 0
        tokens = (llama_cpp.llama_token * n)(*[int(t) for t in llm._input_ids[:n]])
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        if not llama_cpp.llama_state_save_file(llm.ctx, str(tmp).encode(), tokens, n):
            tmp.unlink(missing_ok=True)
            raise EngineError(
                "The conversation's cache could not be saved.", f"llama_state_save_file({tmp}) failed"
            )
        os.replace(tmp, path)
        return n

    def load_state(self, path: Path) -> int:
        """Restore a state saved by :meth:`save_state` for this model and plan; return the tokens
        restored (0 when the file is missing, damaged or does not fit: the cache is then empty)."""
        llama_cpp = _import_llama_cpp()
        llm = self._require()
        if not path.is_file():
            return 0
        capacity = int(llm.n_ctx())
        tokens = (llama_cpp.llama_token * capacity)()
        count = ctypes.c_size_t(0)
        ok = llama_cpp.llama_state_load_file(
            llm.ctx, str(path).encode(), tokens, capacity, ctypes.byref(count)
        )
        if not ok or count.value == 0 or count.value > capacity:
            log.warning("saved state %s could not be restored; the prompt will be re-read", path.name)
            self._reset_cache()
            return 0
        n = int(count.value)
        llm.input_ids[:n] = tokens[:n]
        llm.n_tokens = n
        return n

    def perf_counters(self) -> tuple[int, int]:
        """llama.cpp's own counters since the last reset: (prompt tokens evaluated, tokens decoded)."""
        llama_cpp = _import_llama_cpp()
        data = llama_cpp.llama_perf_context(self._require().ctx)
        return int(data.n_p_eval), int(data.n_eval)

    # -- generation -------------------------------------------------------------------------
    def _reusable_prefix(self, tokens: list[int]) -> int:
        """How many leading prompt tokens can keep their KV entries from the previous call."""
        llm = self._llm
        cached = int(llm.n_tokens)
        prefix = 0
        limit = min(cached, len(tokens))
        ids = llm._input_ids
        while prefix < limit and ids[prefix] == tokens[prefix]:
            prefix += 1
        if prefix == len(tokens):
            prefix -= 1  # the last prompt token is re-evaluated to get fresh logits
        if prefix > 0 and self._is_iswa and not (self._params and self._params.swa_full):
            # SWA guard (as llama-server): with the small chunked-attention cache, cells older than
            # one chunk are pruned. Resuming at `prefix` needs the cells of the current chunk; if
            # they are gone, reusing the prefix would silently give wrong logits: re-prefill.
            llama_cpp = _import_llama_cpp()
            mem = llama_cpp.llama_get_memory(llm.ctx)
            pos_min = int(llama_cpp.llama_memory_seq_pos_min(mem, 0))
            if pos_min > max(0, prefix - LLAMA4_CHUNK):
                log.info(
                    "KV prefix reuse refused: pos_min=%d > prefix %d - chunk; re-reading the prompt",
                    pos_min,
                    prefix,
                )
                prefix = 0
        return max(0, prefix)

    def _reset_cache(self) -> None:
        llama_cpp = _import_llama_cpp()
        llm = self._llm
        llm.reset()
        mem = llama_cpp.llama_get_memory(llm.ctx)
        llama_cpp.llama_memory_clear(mem, True)

    def stream_chat(
        self,
        messages: Sequence[ChatMessage],
        sampling: SamplingParams,
        cancel: threading.Event,
        on_prompt_progress: Callable[[int, int], None] | None = None,
    ) -> Iterator[str]:
        llama_cpp = _import_llama_cpp()
        llm = self._require()
        if any(m.images for m in messages):
            if self._vision is None:
                raise EngineError(
                    "This conversation has images, but the loaded model has no vision projector "
                    "(an mmproj-*.gguf file next to the model). Download the projector in the model "
                    "manager, or remove the images."
                )
            from app.core.engine import vision

            self._stats = yield from vision.stream_image_chat(
                llm, self._vision, self._as_text(messages), sampling, cancel
            )
            return
        started = time.perf_counter()
        tokens = self.prompt_tokens(messages)
        n_ctx = int(llm.n_ctx())
        if len(tokens) >= n_ctx:
            raise ContextOverflowError(
                f"This message is too long for the context window: it needs {len(tokens):,} tokens but "
                f"the model was loaded with room for {n_ctx:,}. Shorten it, or raise the context size "
                "in Settings.",
            )
        max_new = max(1, min(sampling.max_tokens, n_ctx - len(tokens)))

        prefix = self._reusable_prefix(tokens)
        if prefix == 0:
            self._reset_cache()
        elif prefix < llm.n_tokens and not llm._ctx.kv_cache_seq_rm(-1, prefix, -1):
            prefix = 0
            self._reset_cache()
        llm.n_tokens = prefix
        llama_cpp.llama_perf_context_reset(llm.ctx)

        # Prompt: evaluate the new part in batches; progress and cancellation between batches.
        todo = tokens[prefix:]
        step = max(1, int(llm.n_batch))
        done = 0
        finish = "stop"
        for i in range(0, len(todo), step):
            if cancel.is_set():
                finish = "cancelled"
                break
            batch = todo[i : i + step]
            llm.eval(batch)
            done += len(batch)
            if on_prompt_progress is not None:
                on_prompt_progress(done, len(todo))
        prompt_done = time.perf_counter()

        completion = 0
        first_token_at: float | None = None
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        vocab = llm._model.vocab
        pending = ""  # text held back while it could be the start of a stop string
        if finish != "cancelled":
            llm._sampler = llm._init_sampler(
                top_k=sampling.top_k,
                top_p=sampling.top_p,
                min_p=sampling.min_p,
                temp=sampling.temperature,
                repeat_penalty=sampling.repeat_penalty,
            )
            if sampling.seed is not None:
                llm.set_seed(sampling.seed)
            finish = "length"
            unevaluated: int | None = None  # sampled and shown, not yet fed to the model
            try:
                for _ in range(max_new):
                    if cancel.is_set():
                        finish = "cancelled"
                        break
                    if unevaluated is not None:
                        llm.eval([unevaluated])
                        unevaluated = None
                    token = llm._sampler.sample(llm._ctx, -1)
                    if llama_cpp.llama_vocab_is_eog(vocab, token):
                        finish = "stop"
                        break
                    completion += 1
                    if llm.n_tokens + 1 >= n_ctx:
                        finish = "context"
                        break
                    # The token is shown before it is evaluated: the evaluation (the cost of a
                    # token) runs when the caller asks for the next piece, not before this one.
                    unevaluated = token
                    piece = decoder.decode(bytes(llm._model.token_to_piece(token)).rstrip(b"\0"))
                    if not piece:
                        continue
                    pending += piece
                    if self._stop_strings:
                        hit = next((s for s in self._stop_strings if s in pending), None)
                        if hit:
                            pending = pending[: pending.index(hit)]
                            finish = "stop"
                            break
                        keep = max((len(s) - 1 for s in self._stop_strings), default=0)
                        emit, pending = pending[: len(pending) - keep], pending[len(pending) - keep :]
                    else:
                        emit, pending = pending, ""
                    if emit:
                        if first_token_at is None:
                            first_token_at = time.perf_counter()
                        yield emit
                if unevaluated is not None and finish != "cancelled":
                    llm.eval([unevaluated])  # the cache holds the whole answer
            finally:
                llm._sampler = None
        tail = pending + decoder.decode(b"", final=True)
        if tail and finish != "cancelled":
            if first_token_at is None:
                first_token_at = time.perf_counter()
            yield tail
        self._stats = timed_stats(
            started=started,
            prompt_done=prompt_done,
            first_token_at=first_token_at,
            ended=time.perf_counter(),
            prompt_tokens=len(tokens),
            prompt_tokens_evaluated=done,
            completion_tokens=completion,
            n_ctx=n_ctx,
            context_used=int(llm.n_tokens),
            finish_reason=finish,
        )


def _explain_load_failure(path: Path, detail: str) -> str:
    low = detail.lower()
    if "unknown model architecture" in low:
        arch = re.search(r"unknown model architecture: '([^']+)'", detail)
        return (
            f"{path.name} is a GGUF file, but this llama.cpp does not support its architecture"
            f"{' (' + arch.group(1) + ')' if arch else ''}."
        )
    if "failed to allocate" in low or "out of memory" in low or "unable to allocate" in low:
        return (
            f"Not enough memory to load {path.name} with these settings. Try a smaller context size, "
            "fewer GPU layers, or a smaller build of the model."
        )
    if "does not divide" in low and "cache type" in low:
        return (
            "The chosen KV-cache type does not fit this model's attention head size. "
            "Use the f16 KV cache for this model."
        )
    if "tensor" in low and (
        "data is not within the file bounds" in low or "truncated" in low or "out of bounds" in low
    ):
        return (
            f"{path.name} is incomplete or damaged (it is shorter than its header says). Download it again."
        )
    if "split" in low:
        return f"{path.name} is part of a split model and its other parts could not be opened."
    return f"llama.cpp could not load {path.name}. The file may be damaged or not a supported model."


def sampling_from_settings(temperature: float, top_p: float, min_p: float, max_tokens: int) -> SamplingParams:
    return SamplingParams(temperature=temperature, top_p=top_p, min_p=min_p, max_tokens=max_tokens)
