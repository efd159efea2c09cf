"""``LlamaEngine``: one ``llama_cpp.Llama`` and what the high-level API lacks.

It must be used from one thread only (the inference worker's). It adds:

* a load-progress callback that can cancel (a 60 GB model takes minutes to map);
* tensor buffer overrides (``-ot``: keep MoE expert tensors in system RAM, see :mod:`.overrides`);
* a chat prompt rendered with the GGUF's own template in a sandboxed Jinja environment, with a
  sensible fallback when the file has none (:mod:`.templates`), and control-token text in message
  contents kept as text (a document cannot end the turn or open a system turn:
  ``tokens.LiteralSpecials``);
* a generation loop that evaluates the prompt in batches (progress, cancellation between batches)
  and samples token by token (cancellation between tokens), reusing the KV cache prefix of the
  previous turn — guarded for the chunked/sliding-window cache, where cells far back are pruned;
* figures for every answer (TTFT, tokens/s, prompt tokens evaluated, context used).

Over ~600 lines: loading, prompting, the KV cache and generation share the engine's state (the
``Llama``, its template, tokenizer and cache), so they stay one class.
"""

from __future__ import annotations

import codecs
import collections
import ctypes
import dataclasses
import functools
import logging
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.core.engine import rpc, speculation
from app.core.engine.errors import (
    ContextOverflowError,
    EngineError,
    LoadCancelled,
    ModelLoadError,
    NoModelError,
    OutOfMemoryError,
    ProjectorError,
    explain_load_failure,
)
from app.core.engine.files import check_model_file, first_split_part
from app.core.engine.native import NATIVE_LOG, import_llama_cpp, tokenize_bytes, tokenize_vocab
from app.core.engine.overrides import Overrides, build_tensor_overrides
from app.core.engine.speculation import SpeculationStats
from app.core.engine.templates import (
    PLAIN_FALLBACK_TEMPLATE,
    PLAIN_STOP_STRINGS,
    STYLE_NAMES,
    builtin_template_for,
    messages_as_dicts,
    render_builtin,
)
from app.core.engine.tokens import LiteralSpecials, PromptTokenizer
from app.core.hardware import physical_cores
from app.core.ports import EngineState
from app.core.types import (
    ChatMessage,
    FinishReason,
    GenerationStats,
    LoadParams,
    ModelInfo,
    SamplingParams,
    timed_stats,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Generator, Iterator, Sequence

log = logging.getLogger(__name__)

KV_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8, "bf16": 30}
LLAMA4_CHUNK = 8192  # llama.cpp hard-codes Llama 4's attention chunk
_PARAMS_LOCK = threading.Lock()


class LlamaEngine(EngineState):
    """The real engine: llama.cpp through llama-cpp-python. One thread only."""

    def __init__(self) -> None:
        super().__init__()
        self._llm: Any = None
        self._params: LoadParams | None = None
        self._render: Callable[[list[dict[str, Any]]], str] | None = None  # the chat format in use
        self._fallback_render: Callable[[list[dict[str, Any]]], str] | None = None
        self._template_note = ""
        self._stop_strings: tuple[str, ...] = ()
        self._overrides: Overrides | None = None
        self._speculation_stats = SpeculationStats()
        self._is_iswa = False
        self._recurrent = False  # recurrent/hybrid memory cannot take back a draft: no speculation
        self._vision: Any = None  # MTMDChatHandler when the model has a vision projector
        self._tokenizer: PromptTokenizer | None = None
        self._literal = LiteralSpecials(())  # guards message text against control-token injection
        self.last_prompt = ""  # the prompt of the last answer, as rendered (diagnostics, tests)
        self.last_sampling: SamplingParams | None = None  # the last answer's sampling (tests)

    # -- properties -------------------------------------------------------------------------
    @property
    def last_speculation(self) -> SpeculationStats:
        """What speculation did in the last answer (drafted, accepted, logits rows per batch)."""
        return self._speculation_stats

    @property
    def load_params(self) -> LoadParams | None:
        return self._params

    @property
    def n_tokens_cached(self) -> int:
        """Tokens whose KV entries are in the cache (the reusable prefix)."""
        return 0 if self._llm is None else int(self._llm.n_tokens)

    # -- loading ----------------------------------------------------------------------------
    def load(self, params: LoadParams, progress: Callable[[float], bool] | None = None) -> ModelInfo:
        import_llama_cpp()  # llama.cpp's log goes to Python before anything touches the library
        path = first_split_part(Path(params.model_path))
        check_model_file(path)
        self.unload()
        overrides = build_tensor_overrides(params)
        n_threads = params.n_threads or physical_cores()
        started = time.perf_counter()
        devices = None
        if params.compute_servers or rpc.REGISTRY.used:
            rpc.register_compute_servers(params.compute_servers)
            devices = rpc.REGISTRY.device_array(params.compute_servers)
        mark = NATIVE_LOG.mark()
        llm = _open_llama(path, _llama_kwargs(params, n_threads), overrides, progress, devices)
        if params.compute_servers:
            # where llama.cpp put the layers and weights (its load log is silenced on stderr while
            # llama-cpp-python loads: kept in the engine's log)
            for line in NATIVE_LOG.since(mark):
                if any(key in line for key in rpc.PLACEMENT_LINES):
                    log.info("llama.cpp: %s", line.strip())
        elapsed = time.perf_counter() - started
        self._llm = llm
        self._overrides = overrides
        self._params = params
        # the vocab pointer, not the model: no reference cycle through the model's own attribute
        llm._model.tokenize = functools.partial(tokenize_vocab, llm._model.vocab)
        self._setup_chat_format(llm)
        specials, controls = self._special_tokens(llm)
        self._literal = LiteralSpecials(controls)
        self._tokenizer = self._build_prompt_tokenizer(llm, specials)
        if params.mmproj_path is not None:
            use_gpu = params.n_gpu_layers > 0 and not params.compute_servers
            self._attach_vision(llm, Path(params.mmproj_path), n_threads, use_gpu, controls)
        # Llama 4 uses chunked attention unless the file sets sliding_window to 0 (MobileLLM).
        self._is_iswa = (
            self._arch(llm) == "llama4"
            and str(llm.metadata.get("llama4.attention.sliding_window", "")) != "0"
        )
        low, model = import_llama_cpp(), llm._model.model
        self._recurrent = bool(low.llama_model_is_recurrent(model) or low.llama_model_is_hybrid(model))
        self._info = self._model_info(llm, path, elapsed)
        log.info(
            "loaded %s in %.2fs (n_ctx=%d, gpu layers=%d)",
            path.name,
            elapsed,
            params.n_ctx,
            params.n_gpu_layers,
        )
        return self._info

    def _attach_vision(
        self, llm: Any, mmproj: Path, n_threads: int, use_gpu: bool, controls: list[str]
    ) -> None:
        """Load the vision projector into the model just loaded (unloading it if that fails: the
        ProjectorError raised then says that a load without the projector may succeed)."""
        from app.core.engine import vision

        try:
            handler = vision.make_chat_handler(mmproj, n_threads=n_threads, use_gpu=use_gpu)
            vision.prepare_handler(llm, handler)
        except Exception as exc:
            self.unload()
            message = getattr(exc, "message", "") or "The vision projector could not be loaded."
            detail = getattr(exc, "detail", "") or f"{type(exc).__name__}: {exc}"
            raise ProjectorError(message, detail) from exc
        self._vision = handler
        self._literal = LiteralSpecials([*controls, vision.media_marker(handler)])

    def _model_info(self, llm: Any, path: Path, elapsed: float) -> ModelInfo:
        metadata = llm.metadata
        name = metadata.get("general.name") or path.stem
        return ModelInfo(
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

    @staticmethod
    def _arch(llm: Any) -> str:
        return str(llm.metadata.get("general.architecture", "unknown"))

    def _setup_chat_format(self, llm: Any) -> None:
        """Choose how prompts are written: the GGUF's own chat template (rendered in a sandboxed
        Jinja environment) when it renders a plain conversation; else llama.cpp's built-in format
        for the model (by its special tokens, then its architecture); else plain text. A note for
        the user says which fallback is used and why."""
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        template = llm.metadata.get("tokenizer.chat_template")
        bos = self._token_text(llm, llm.token_bos())
        eos = self._token_text(llm, llm.token_eos())
        builtin = builtin_template_for(self._arch(llm), functools.partial(self._vocab_has, llm))
        self._template_note = ""
        self._stop_strings = ()
        self._fallback_render = functools.partial(render_builtin, builtin) if builtin else None
        problem = ""
        if template:
            jinja = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)

            def render(dicts: list[dict[str, Any]]) -> str:
                return str(jinja(messages=dicts).prompt)  # type: ignore[arg-type]

            problem = _template_problem(render)
            if not problem:
                self._render = render
                return
        if self._fallback_render is not None:
            self._render = self._fallback_render
            style = f"llama.cpp's built-in {STYLE_NAMES.get(str(builtin), str(builtin))} format"
        else:
            plain = Jinja2ChatFormatter(template=PLAIN_FALLBACK_TEMPLATE, eos_token=eos, bos_token=bos)
            self._render = lambda dicts: str(plain(messages=dicts).prompt)  # type: ignore[arg-type]
            self._stop_strings = PLAIN_STOP_STRINGS
            style = "a plain text format"
        if problem:
            self._template_note = (
                f"This model's chat template cannot be used ({problem}); using {style} instead."
            )
        else:
            self._template_note = f"This model file has no chat template; using {style} instead."
        if builtin is None:
            self._template_note += " Answers may be less accurate than with the model's own template."
        log.warning("%s", self._template_note)

    @staticmethod
    def _special_tokens(llm: Any) -> tuple[dict[str, int], list[str]]:
        """The texts llama.cpp cuts a prompt at when it parses special tokens (control,
        user-defined and unknown tokens) with their ids, and the control tokens' texts alone."""
        llama_cpp = import_llama_cpp()
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
        self._render = None
        self._fallback_render = None
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

    def render_prompt(self, messages: Sequence[ChatMessage], *, continue_last: bool = False) -> str:
        """The prompt for ``messages``, ending with the generation prompt (the header of the
        answer to write). ``continue_last``: the last message is an unfinished answer: the prompt
        is the conversation before it, the answer's header, then its text as written: no end of
        turn after it, so the model carries on with the same text."""
        if continue_last:
            if not messages or messages[-1].role != "assistant":
                raise EngineError("Only an answer can be continued.")
            head = self.render_prompt(messages[:-1])
            return head + self._literal(messages[-1].content)
        self._require()
        assert self._render is not None
        dicts = messages_as_dicts(self._as_text(messages))
        try:
            return self._render(dicts)
        except Exception as exc:
            if self._fallback_render is None or self._render is self._fallback_render:
                raise EngineError(
                    "The model's chat template failed to format this conversation.",
                    f"{type(exc).__name__}: {exc}",
                ) from exc
            # The model's own template refused this conversation (a role order it does not
            # accept, say): llama.cpp's built-in format for the model writes it instead.
            log.warning(
                "the chat template failed (%s: %s); using the built-in format", type(exc).__name__, exc
            )
        try:
            return self._fallback_render(dicts)
        except Exception as exc:
            raise EngineError(
                "The model's chat template failed to format this conversation.",
                f"{type(exc).__name__}: {exc}",
            ) from exc

    def _as_text(self, messages: Sequence[ChatMessage]) -> list[ChatMessage]:
        """``messages`` with any control-token text in their contents made plain text (see
        :class:`LiteralSpecials`): only the chat template puts control tokens in a prompt. A model
        without vision never receives images, so its prompts (and counts) leave them out: some
        templates would otherwise print an image's whole data: URI as text."""
        keep_images = self._vision is not None
        return [
            dataclasses.replace(m, content=self._literal(m.content), images=m.images if keep_images else ())
            for m in messages
        ]

    def prompt_tokens(self, messages: Sequence[ChatMessage], *, continue_last: bool = False) -> list[int]:
        return self._tokens_of(self.render_prompt(messages, continue_last=continue_last))

    def _tokens_of(self, prompt: str) -> list[int]:
        llm = self._require()
        bos = self._token_text(llm, llm.token_bos())
        add_bos = not (bos and prompt.startswith(bos))
        if self._tokenizer is not None:
            return self._tokenizer.tokens(prompt, add_bos)
        return tokenize_bytes(llm, prompt.encode("utf-8"), add_bos=add_bos, special=True)

    def count_chat_tokens(self, messages: Sequence[ChatMessage]) -> int:
        return len(self.prompt_tokens(messages))

    # -- KV state on disk -------------------------------------------------------------------
    def compute_devices(self, endpoints: Sequence[str]) -> list[rpc.ComputeDevice]:
        """The compute servers' devices with their free memory now (registered in this process
        the first time): what the planner spreads layers over."""
        return rpc.compute_devices(endpoints)

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
        llama_cpp = import_llama_cpp()
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
        llama_cpp = import_llama_cpp()
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
        llama_cpp = import_llama_cpp()
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
            llama_cpp = import_llama_cpp()
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
        llama_cpp = import_llama_cpp()
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
        *,
        continue_last: bool = False,
    ) -> Iterator[str]:
        llama_cpp = import_llama_cpp()
        llm = self._require()
        self._speculation_stats = SpeculationStats()
        if any(m.images for m in messages):
            if continue_last:
                raise EngineError(
                    "An answer in a conversation with pictures cannot be continued: use Regenerate, "
                    "or ask the model to go on."
                )
            self._stats = yield from self._stream_image_chat(llm, messages, sampling, cancel)
            return
        started = time.perf_counter()
        self.last_prompt = self.render_prompt(messages, continue_last=continue_last)
        self.last_sampling = sampling
        tokens = self._tokens_of(self.last_prompt)
        n_ctx = int(llm.n_ctx())
        if len(tokens) >= n_ctx:
            raise ContextOverflowError(
                f"This message is too long for the context window: it needs {len(tokens):,} tokens but "
                f"the model was loaded with room for {n_ctx:,}. Shorten it, or raise the context size "
                "in Settings.",
            )
        max_new = max(1, min(sampling.max_tokens, n_ctx - len(tokens)))
        prefix = self._keep_prefix(tokens)
        llama_cpp.llama_perf_context_reset(llm.ctx)
        done, finish = self._evaluate_prompt(tokens[prefix:], cancel, on_prompt_progress)
        prompt_done = time.perf_counter()

        answer = _AnswerText()
        if finish != FinishReason.CANCELLED:
            finish = yield from self._sample(sampling, max_new, n_ctx, cancel, answer)
        tail = answer.pending + answer.decoder.decode(b"", final=True)
        if tail and finish != FinishReason.CANCELLED:
            if answer.first_token_at is None:
                answer.first_token_at = time.perf_counter()
            yield tail
        self._stats = timed_stats(
            started=started,
            prompt_done=prompt_done,
            first_token_at=answer.first_token_at,
            ended=time.perf_counter(),
            prompt_tokens=len(tokens),
            prompt_tokens_evaluated=done,
            completion_tokens=answer.completion,
            n_ctx=n_ctx,
            context_used=int(llm.n_tokens),
            finish_reason=finish,
            drafted_tokens=answer.speculation.drafted,
            accepted_tokens=answer.speculation.accepted,
        )
        if answer.speculation.batches:
            log.info(
                "speculation: %d of %d drafted tokens accepted in %d batches",
                answer.speculation.accepted,
                answer.speculation.drafted,
                answer.speculation.batches,
            )

    def _stream_image_chat(
        self,
        llm: Any,
        messages: Sequence[ChatMessage],
        sampling: SamplingParams,
        cancel: threading.Event,
    ) -> Generator[str, None, GenerationStats]:
        if self._vision is None:
            raise EngineError(
                "This conversation has images, but the loaded model has no vision projector "
                "(an mmproj-*.gguf file next to the model). Download the projector in the model "
                "manager, or remove the images."
            )
        from app.core.engine import vision

        return (
            yield from vision.stream_image_chat(llm, self._vision, self._as_text(messages), sampling, cancel)
        )

    def _keep_prefix(self, tokens: list[int]) -> int:
        """Drop the cached KV entries past the reusable prefix of ``tokens``; return its length."""
        llm = self._llm
        prefix = self._reusable_prefix(tokens)
        if prefix == 0:
            self._reset_cache()
        elif prefix < llm.n_tokens and not llm._ctx.kv_cache_seq_rm(-1, prefix, -1):
            prefix = 0
            self._reset_cache()
        llm.n_tokens = prefix
        return prefix

    def _evaluate_prompt(
        self,
        todo: list[int],
        cancel: threading.Event,
        on_prompt_progress: Callable[[int, int], None] | None,
    ) -> tuple[int, FinishReason]:
        """Evaluate the new part of the prompt in batches, with progress and cancellation between
        batches; return the tokens evaluated and CANCELLED or STOP."""
        llm = self._llm
        step = max(1, int(llm.n_batch))
        done = 0
        for i in range(0, len(todo), step):
            if cancel.is_set():
                return done, FinishReason.CANCELLED
            batch = todo[i : i + step]
            llm.eval(batch)
            done += len(batch)
            if on_prompt_progress is not None:
                on_prompt_progress(done, len(todo))
        return done, FinishReason.STOP

    def _sample(
        self,
        sampling: SamplingParams,
        max_new: int,
        n_ctx: int,
        cancel: threading.Event,
        answer: _AnswerText,
    ) -> Generator[str, None, FinishReason]:
        """Sample up to ``max_new`` tokens (cancellation between tokens), yielding the text as it
        is decoded; return the finish reason. With speculation (:mod:`.speculation`) the tokens
        come from verified drafts several at a time, each one still handled (and cancellable) on
        its own; at the end the cache holds exactly the answer's tokens."""
        llama_cpp = import_llama_cpp()
        llm = self._llm
        vocab = llm._model.vocab
        llm._sampler = llm._init_sampler(
            top_k=sampling.top_k,
            top_p=sampling.top_p,
            min_p=sampling.min_p,
            temp=sampling.temperature,
            repeat_penalty=sampling.repeat_penalty,
        )
        if sampling.seed is not None:
            llm.set_seed(sampling.seed)
        decoder = _Decoder(self, llm, n_ctx, self._speculation())
        finish = FinishReason.LENGTH
        kept = 0  # answer tokens that belong in the cache
        try:
            for _ in range(max_new):
                if cancel.is_set():
                    finish = FinishReason.CANCELLED
                    break
                token = decoder.next_token(max_new - answer.completion)
                if llama_cpp.llama_vocab_is_eog(vocab, token):
                    finish = FinishReason.STOP
                    break
                answer.completion += 1
                if decoder.n_prompt + answer.completion >= n_ctx:
                    finish = FinishReason.CONTEXT
                    break
                decoder.take(token)
                kept = answer.completion
                # The token is shown before it is evaluated: the evaluation (the cost of a
                # token) runs when the caller asks for the next piece, not before this one.
                emit, stopped = self._take_text(answer, bytes(llm._model.token_to_piece(token)).rstrip(b"\0"))
                if stopped:
                    finish = FinishReason.STOP
                    break
                if emit:
                    if answer.first_token_at is None:
                        answer.first_token_at = time.perf_counter()
                    yield emit
            decoder.settle(kept, evaluate=finish != FinishReason.CANCELLED)
        finally:
            llm._sampler = None
            decoder.close()
            answer.speculation = self._speculation_stats = decoder.stats
        return finish

    def _speculation(self) -> str:
        """Advanced → Speculation for this model: "off"; "on" (drafts whenever the context has a
        match); "auto": as "on" while drafts save time, and only with flash attention — llama.cpp's
        other attention path rounds a batch's rows differently from single tokens, so a near-tie
        could go the other way (flash attention computes each row alone: with quantized matrices
        the greedy answer is then the same token for token; llama.cpp's batched F32/F16 matrix
        kernels still round differently from its one-token ones, e.g. a router kept in F32)."""
        params = self._params
        choice = params.speculation if params is not None else "auto"
        if self._recurrent or (choice == "auto" and not (params is not None and params.flash_attn)):
            return "off"
        return choice

    def _take_text(self, answer: _AnswerText, data: bytes) -> tuple[str, bool]:
        """Decode one token's bytes into ``answer``; return the text that can be shown now (text
        that could start a stop string is held back) and whether a stop string was reached."""
        piece = answer.decoder.decode(data)
        if not piece:
            return "", False
        pending = answer.pending + piece
        if not self._stop_strings:
            answer.pending = ""
            return pending, False
        hit = next((s for s in self._stop_strings if s in pending), None)
        if hit:
            answer.pending = pending[: pending.index(hit)]
            return "", True
        keep = max((len(s) - 1 for s in self._stop_strings), default=0)
        answer.pending = pending[len(pending) - keep :]
        return pending[: len(pending) - keep], False


class _Decoder:
    """The tokens of one answer, one at a time, from the sampler — with speculation, several at a
    time from one verified draft (:mod:`.speculation`). Keeps ``llm``'s token list in step with
    llama.cpp's cache: positions past the accepted tokens are removed after each verification,
    and :meth:`settle` leaves exactly the prompt and the answer's kept tokens."""

    def __init__(self, engine: LlamaEngine, llm: Any, n_ctx: int, mode: str) -> None:
        self._llm = llm
        self._n_ctx = n_ctx
        self.n_prompt = int(llm.n_tokens)
        self.answer: list[int] = []  # tokens handed out and taken, in order
        self._ready: collections.deque[int] = collections.deque()  # verified, not handed out yet
        self.stats = speculation.SpeculationStats()
        self._speculate = mode in ("auto", "on")
        self._drafter: speculation.NgramDrafter | None = None  # built at the first draft (not before
        # the first token: indexing a 32k-token prompt takes ~50 ms)
        self._batch: Any = None
        self._chunk = 0  # Llama 4's small chunked cache: drafts stay within the current chunk
        if self._speculate:
            from llama_cpp._internals import LlamaBatch

            self._policy = speculation.DraftPolicy(guarded=mode == "auto")
            self._batch = LlamaBatch(n_tokens=speculation.MAX_DRAFT + 1, embd=0, n_seq_max=1, verbose=False)
            params = engine.load_params
            if engine._is_iswa and not (params is not None and params.swa_full):
                self._chunk = LLAMA4_CHUNK

    def take(self, token: int) -> None:
        """``token`` is part of the answer (it was handed out and is not an end of turn)."""
        self.answer.append(token)
        if self._drafter is not None:
            self._drafter.append(token)

    def next_token(self, remaining: int) -> int:
        """The next token of the answer (``remaining``: tokens the answer may still have)."""
        if self._ready:
            return self._ready.popleft()
        llm = self._llm
        pending = self.answer[llm.n_tokens - self.n_prompt :]  # taken, not evaluated (0 or 1)
        if pending:
            draft = self._draft(remaining)
            if draft:
                return self._verify(pending, draft)
            started = time.perf_counter()
            llm.eval(pending)
            if self._speculate:
                self._policy.decoded(time.perf_counter() - started)
        return int(llm._sampler.sample(llm._ctx, -1))

    def _draft(self, remaining: int) -> list[int]:
        if not self._speculate:
            return []
        if self._drafter is None:
            self._drafter = speculation.NgramDrafter(
                [*self._llm._input_ids[: self.n_prompt].tolist(), *self.answer]
            )
        n_past = int(self._llm.n_tokens)  # the pending token's position
        limit = min(speculation.MAX_DRAFT, remaining - 1, self._n_ctx - n_past - 2)
        if self._chunk:
            limit = min(limit, self._chunk - 1 - n_past % self._chunk)
        draft = self._drafter.draft(limit)
        return draft[: self._policy.next_size()] if draft else []

    def _verify(self, pending: list[int], draft: list[int]) -> int:
        """Evaluate the pending token and ``draft`` in one batch whose every position requests
        logits; pick a token at each row while the picks equal the draft; drop the rest."""
        llm = self._llm
        n_past = int(llm.n_tokens)
        batch = [*pending, *draft]
        started = time.perf_counter()
        llm._ctx.kv_cache_seq_rm(-1, n_past, -1)
        self._batch.set_batch(batch=batch, n_past=n_past, logits_all=True)
        llm._ctx.decode(self._batch)
        seconds = time.perf_counter() - started  # the picks below cost what they cost without a draft
        llm.input_ids[n_past : n_past + len(batch)] = batch
        llm.n_tokens = n_past + len(batch)
        picks: list[int] = []
        for row in range(len(batch)):
            picks.append(int(llm._sampler.sample(llm._ctx, row)))
            if row == len(draft) or picks[-1] != draft[row]:
                break
        accepted = len(picks) - 1
        self._truncate(n_past + len(pending) + accepted)
        stats = self.stats
        stats.batches += 1
        stats.drafted += len(draft)
        stats.accepted += accepted
        stats.max_logit_rows = max(stats.max_logit_rows, len(batch))
        self._policy.verified(len(draft), accepted, seconds)
        self._ready.extend(picks[1:])
        return picks[0]

    def _truncate(self, n_tokens: int) -> None:
        llm = self._llm
        if llm.n_tokens > n_tokens:
            if not llm._ctx.kv_cache_seq_rm(-1, n_tokens, -1):
                raise EngineError(
                    "The model's cache could not take back a rejected draft.",
                    f"llama_memory_seq_rm(0, {n_tokens}, -1) failed",
                )
            llm.n_tokens = n_tokens

    def settle(self, kept: int, *, evaluate: bool) -> None:
        """Leave the prompt and the first ``kept`` answer tokens in the cache (evaluating the
        last one when it is not yet, unless ``evaluate`` is false: a cancelled answer)."""
        self.stats.dropped = len(self._ready)
        target = self.n_prompt + kept
        self._truncate(target)
        llm = self._llm
        if evaluate and llm.n_tokens < target:
            llm.eval(self.answer[llm.n_tokens - self.n_prompt : kept])

    def close(self) -> None:
        if self._batch is not None:
            self._batch.close()
            self._batch = None


_PROBE_TEXT = "Scout Chat checks the chat template"


def _template_problem(render: Callable[[list[dict[str, Any]]], str]) -> str:
    """Why a chat template cannot write a plain conversation (a few words), or "" when it can.
    A template that raises, escapes the sandbox or leaves the message out is not used."""
    try:
        prompt = render([{"role": "user", "content": _PROBE_TEXT}])
    except Exception as exc:  # noqa: BLE001 - any failure of a template from a file
        log.warning("the chat template fails: %s: %s", type(exc).__name__, exc)
        return "it fails to format a conversation"
    if _PROBE_TEXT not in prompt:
        return "it leaves the conversation out of the prompt"
    return ""


@dataclasses.dataclass
class _AnswerText:
    """The answer being sampled: its decoder, the text held back, the tokens and the first one's time."""

    decoder: codecs.IncrementalDecoder = dataclasses.field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace")
    )
    pending: str = ""  # text held back while it could be the start of a stop string
    completion: int = 0
    first_token_at: float | None = None
    speculation: SpeculationStats = dataclasses.field(default_factory=SpeculationStats)


def _llama_kwargs(params: LoadParams, n_threads: int) -> dict[str, Any]:
    """The ``Llama(...)`` keyword arguments for a plan."""
    return {
        "n_ctx": params.n_ctx,
        "n_gpu_layers": params.n_gpu_layers or (-1 if params.compute_servers else 0),
        "tensor_split": list(params.tensor_split) or None,
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


def _open_llama(
    path: Path,
    kwargs: dict[str, Any],
    overrides: Overrides | None,
    progress: Callable[[float], bool] | None,
    devices: Any = None,
) -> Any:
    """``llama_cpp.Llama(path, **kwargs)`` with a progress callback that can cancel, the tensor
    overrides and the devices (``None``: llama.cpp's choice); a failure becomes LoadCancelled,
    OutOfMemoryError or ModelLoadError with a sentence."""
    llama_cpp = import_llama_cpp()
    cancelled = threading.Event()

    def report_progress(fraction: float, _user_data: Any) -> bool:
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

    on_progress = llama_cpp.llama_progress_callback(report_progress)

    import llama_cpp.llama_cpp as low  # the module whose name Llama() resolves at call time

    real_defaults = low.llama_model_default_params

    def patched_defaults() -> Any:
        model_params = real_defaults()
        model_params.progress_callback = on_progress
        if overrides is not None:
            model_params.tensor_buft_overrides = ctypes.cast(overrides.array, ctypes.c_void_p)
        if devices is not None:
            model_params.devices = ctypes.cast(devices, ctypes.c_void_p)
        return model_params

    mark = NATIVE_LOG.mark()
    with _PARAMS_LOCK:
        # Llama() builds its llama_model_params from llama_model_default_params() and never
        # touches progress_callback / tensor_buft_overrides: give it defaults that carry ours.
        low.llama_model_default_params = patched_defaults
        try:
            return llama_cpp.Llama(str(path), **kwargs)
        except (ValueError, RuntimeError, OSError) as exc:
            if cancelled.is_set():
                raise LoadCancelled() from exc
            detail = "\n".join(NATIVE_LOG.since(mark)[-25:]) or str(exc)
            message = explain_load_failure(path, detail)
            if message.startswith("Not enough memory"):
                raise OutOfMemoryError(message, detail) from exc
            raise ModelLoadError(message, detail) from exc
        finally:
            low.llama_model_default_params = real_defaults
