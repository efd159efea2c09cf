"""Generate tiny, real llama4 GGUF models with seeded random weights.

The files are shaped like Llama 4 Scout in every way that matters to the app, only small:
``llama4`` architecture, a mixture-of-experts FFN with a shared expert on every layer,
grouped-query attention, no sliding-window key (so llama.cpp uses Scout's chunked attention),
a byte-level BPE tokenizer (pre-tokenizer ``llama4``) carrying Llama 4's special tokens, and
Llama 4's chat template. A model is written in well under a second; llama.cpp loads and runs it.

The output rows of special and non-printable tokens are zero and the other rows are scaled so
that sampling produces printable ASCII text and never stops by itself: answers end at
``max_tokens`` or on cancellation, which is what tests of streaming and stopping need.

Used by the test suite, the benchmarks and ``scout-chat --self-test`` (which is why it lives in
the package rather than under ``tests/``).
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    import numpy as np
    from gguf import GGMLQuantizationType, GGUFWriter

LLAMA4_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|header_start|>",
    "<|header_end|>",
    "<|eom|>",
    "<|eot|>",
    "<|step|>",
    "<|python_start|>",
    "<|python_end|>",
    "<|finetune_right_pad|>",
    "<|image_start|>",
    "<|image_end|>",
    "<|image|>",
    "<|patch|>",
    "<|tile_x_separator|>",
    "<|tile_y_separator|>",
    "<|reasoning_reserved_special_token_0|>",
    "<|reasoning_reserved_special_token_1|>",
    "<|reasoning_thinking_start|>",
    "<|reasoning_thinking_end|>",
    "<|text_post_train_reserved_special_token_0|>",
)

# Llama 4's chat template (the shape of Meta's, without the tool-calling branches): system
# message first, each turn framed by header tokens and closed by <|eot|>, content either a
# string or a list of {"type": "text"|"image"} parts.
LLAMA4_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|header_start|>' + message['role'] + '<|header_end|>\\n\\n' }}"
    "{%- if message['content'] is string %}"
    "{{- message['content'] | trim }}"
    "{%- else %}"
    "{%- for part in message['content'] %}"
    "{%- if part['type'] == 'image' or part['type'] == 'image_url' %}"
    "{{- '<|image|>' }}"
    "{%- elif part['type'] == 'text' %}"
    "{{- part['text'] | trim }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- endif %}"
    "{{- '<|eot|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|header_start|>assistant<|header_end|>\\n\\n' }}"
    "{%- endif %}"
)

# A little English, Markdown and Python: the BPE merges are learnt from it, so common words
# tokenize into few tokens as with a real vocabulary.
_CORPUS = """
The quick brown fox jumps over the lazy dog. Scout is a mixture of experts model with sixteen
experts and a shared expert. It reads long documents and answers questions about them, and it
can look at images. The answer is in the document on page twelve. What is the capital of France?
Paris is the capital of France. Hello, how are you today? I am fine, thank you for asking.
def main(args):
    for item in items:
        if item is not None:
            return item.value
    return None
## Summary
- first point
- second point
```python
print("hello world")
```
"""


@dataclass(frozen=True)
class TinyModelSpec:
    """Shape and content of a generated model. The defaults make a ~4 MB (F32) model."""

    n_layer: int = 4
    n_embd: int = 128  # head_dim 32: quantized KV caches (block size 32) work, as on Scout (128)
    n_head: int = 4
    n_head_kv: int = 2
    n_expert: int = 4
    n_expert_used: int = 1
    n_ff: int = 128  # dense FFN width (layers without MoE)
    n_ff_exp: int = 64  # expert and shared-expert width
    moe_every: int = 1  # 1: MoE on every layer, as Scout
    context_length: int = 10_485_760  # Scout's trained-context key (never pass n_ctx=0!)
    n_merges: int = 88
    dtype: str = "F32"  # F32, F16, Q8_0 or Q4_0 for the 2-D+ weight tensors
    seed: int = 1234
    chat_template: str | None = LLAMA4_CHAT_TEMPLATE
    name: str = "Tiny Llama 4 (random weights)"
    logit_scale: float = 4.0  # std of the logits of printable tokens
    extra_metadata: dict[str, str] = field(default_factory=dict)
    # None: no key (Scout's chunked attention). 0: no chunked attention, without the attention
    # temperature keys that go with it: llama.cpp loads such a file, then aborts the process
    # (GGML_ASSERT f_attn_temp_scale != 0) when it builds the first graph — the engine-process tests.
    sliding_window: int | None = None
    # None: the learnt vocabulary alone (a few hundred tokens). A larger number pads it with unused
    # reserved tokens to that size (Scout's 202,048: the logits are Scout-sized, the rest tiny).
    n_vocab: int | None = None

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


@dataclass(frozen=True)
class Vocabulary:
    tokens: tuple[str, ...]
    token_types: tuple[int, ...]
    merges: tuple[str, ...]
    printable: tuple[bool, ...]  # whether sampling may emit the token

    def index(self, token: str) -> int:
        return self.tokens.index(token)


@lru_cache(maxsize=1)
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode character map (byte-level BPE)."""
    printable = list(range(ord("!"), ord("~") + 1))
    printable += list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {byte: chr(char) for byte, char in zip(printable, chars, strict=True)}


def _learn_merges(n_merges: int) -> list[tuple[str, str]]:
    to_unicode = _bytes_to_unicode()
    words = Counter(
        tuple(to_unicode[b] for b in word.encode("utf-8"))
        for word in re.findall(r" ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+", _CORPUS)
    )
    merges: list[tuple[str, str]] = []
    for _ in range(n_merges):
        pairs: Counter[tuple[str, str]] = Counter()
        for word, count in words.items():
            for pair in itertools.pairwise(word):
                pairs[pair] += count
        if not pairs:
            break
        # Ties broken by the pair itself so the vocabulary is deterministic.
        best = max(pairs.items(), key=lambda item: (item[1], item[0]))[0]
        merges.append(best)
        merged: Counter[tuple[str, ...]] = Counter()
        for word, count in words.items():
            out: list[str] = []
            i = 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += count
        words = merged
    return merges


@lru_cache(maxsize=4)
def build_vocabulary(n_merges: int) -> Vocabulary:
    """256 byte tokens, BPE merges learnt from a small corpus, then Llama 4's special tokens."""
    to_unicode = _bytes_to_unicode()
    from_unicode = {char: byte for byte, char in to_unicode.items()}
    tokens = [to_unicode[b] for b in range(256)]
    merges = _learn_merges(n_merges)
    seen = set(tokens)
    for left, right in merges:
        if left + right not in seen:
            tokens.append(left + right)
            seen.add(left + right)
    n_normal = len(tokens)
    tokens.extend(LLAMA4_SPECIAL_TOKENS)

    def printable(token: str) -> bool:
        raw = bytes(from_unicode[c] for c in token)
        return all(0x20 <= b < 0x7F or b == 0x0A for b in raw) and raw != b"\n\n"

    return Vocabulary(
        tokens=tuple(tokens),
        token_types=tuple([1] * n_normal + [3] * len(LLAMA4_SPECIAL_TOKENS)),
        merges=tuple(f"{a} {b}" for a, b in merges),
        printable=tuple([printable(t) for t in tokens[:n_normal]] + [False] * len(LLAMA4_SPECIAL_TOKENS)),
    )


def vocabulary_of(spec: TinyModelSpec) -> Vocabulary:
    """The vocabulary written for ``spec``: the learnt one, padded to ``spec.n_vocab`` with unused
    reserved tokens (type 5: never special, never produced by the tokenizer, never sampled)."""
    vocab = build_vocabulary(spec.n_merges)
    n_pad = (spec.n_vocab or 0) - len(vocab.tokens)
    if n_pad <= 0:
        return vocab
    return Vocabulary(
        tokens=vocab.tokens + tuple(f"<|reserved_special_token_{k}|>" for k in range(n_pad)),
        token_types=vocab.token_types + (5,) * n_pad,
        merges=vocab.merges,
        printable=vocab.printable + (False,) * n_pad,
    )


def _weights(spec: TinyModelSpec) -> list[tuple[str, np.ndarray]]:
    """Tensors in GGUF order, as numpy arrays (numpy shape = reversed ggml ne)."""
    import numpy as np

    rng = np.random.default_rng(spec.seed)
    vocab = vocabulary_of(spec)
    n_vocab = len(vocab.tokens)
    e, hd = spec.n_embd, spec.head_dim

    def rand(*shape: int, fan_in: int) -> np.ndarray:
        weights: np.ndarray = rng.standard_normal(shape) / np.sqrt(fan_in)
        return weights.astype(np.float32)

    ones = np.ones(e, dtype=np.float32)
    out: list[tuple[str, np.ndarray]] = [("token_embd.weight", rand(n_vocab, e, fan_in=1) * 0.5)]
    for i in range(spec.n_layer):
        p = f"blk.{i}."
        out += [
            (p + "attn_norm.weight", ones.copy()),
            (p + "attn_q.weight", rand(spec.n_head * hd, e, fan_in=e)),
            (p + "attn_k.weight", rand(spec.n_head_kv * hd, e, fan_in=e)),
            (p + "attn_v.weight", rand(spec.n_head_kv * hd, e, fan_in=e)),
            (p + "attn_output.weight", rand(e, spec.n_head * hd, fan_in=spec.n_head * hd)),
            (p + "ffn_norm.weight", ones.copy()),
        ]
        if spec.moe_every > 0 and (i + 1) % spec.moe_every == 0:
            f, x = spec.n_ff_exp, spec.n_expert
            out += [
                (p + "ffn_gate_inp.weight", rand(x, e, fan_in=e)),
                (p + "ffn_gate_exps.weight", rand(x, f, e, fan_in=e)),
                (p + "ffn_down_exps.weight", rand(x, e, f, fan_in=f)),
                (p + "ffn_up_exps.weight", rand(x, f, e, fan_in=e)),
                (p + "ffn_gate_shexp.weight", rand(f, e, fan_in=e)),
                (p + "ffn_down_shexp.weight", rand(e, f, fan_in=f)),
                (p + "ffn_up_shexp.weight", rand(f, e, fan_in=e)),
            ]
        else:
            out += [
                (p + "ffn_gate.weight", rand(spec.n_ff, e, fan_in=e)),
                (p + "ffn_down.weight", rand(e, spec.n_ff, fan_in=spec.n_ff)),
                (p + "ffn_up.weight", rand(spec.n_ff, e, fan_in=e)),
            ]
    output = rand(n_vocab, e, fan_in=e) * spec.logit_scale
    output[~np.array(vocab.printable)] = 0.0
    out += [("output_norm.weight", ones.copy()), ("output.weight", output)]
    return out


def _encode(name: str, data: np.ndarray, dtype: str) -> tuple[np.ndarray, GGMLQuantizationType]:
    """Quantize a tensor for the chosen dtype; norms and 1-D tensors stay F32 as in real GGUFs."""
    import numpy as np
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize

    if data.ndim < 2 or name.endswith("norm.weight") or dtype == "F32":
        return data, GGMLQuantizationType.F32
    if dtype == "F16":
        return data.astype(np.float16), GGMLQuantizationType.F16
    qtype = GGMLQuantizationType[dtype]
    return quantize(data, qtype), qtype


def write_tiny_model(path: Path, spec: TinyModelSpec | None = None, *, n_shards: int = 1) -> list[Path]:
    """Write a tiny llama4 GGUF at ``path``; return the files written.

    With ``n_shards > 1`` the model is split like the published Scout builds:
    ``<stem>-00001-of-0000N.gguf`` … (llama.cpp opens the first and finds its siblings).
    """
    import gguf

    spec = spec or TinyModelSpec()
    vocab = vocabulary_of(spec)
    tensors = [(name, *_encode(name, data, spec.dtype)) for name, data in _weights(spec)]
    path.parent.mkdir(parents=True, exist_ok=True)
    if n_shards == 1:
        targets = [path]
    else:
        stem = path.name.removesuffix(".gguf")
        targets = [path.with_name(f"{stem}-{k:05d}-of-{n_shards:05d}.gguf") for k in range(1, n_shards + 1)]
    per_shard = -(-len(tensors) // n_shards)
    for k, target in enumerate(targets):
        writer = gguf.GGUFWriter(str(target), "llama4")
        if k == 0:
            _write_metadata(writer, spec, vocab)
        if n_shards > 1:
            writer.add_uint16(gguf.Keys.Split.LLM_KV_SPLIT_NO, k)
            writer.add_uint16(gguf.Keys.Split.LLM_KV_SPLIT_COUNT, n_shards)
            writer.add_int32(gguf.Keys.Split.LLM_KV_SPLIT_TENSORS_COUNT, len(tensors))
        for name, data, qtype in tensors[k * per_shard : (k + 1) * per_shard]:
            writer.add_tensor(name, data, raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return targets


def _write_metadata(writer: GGUFWriter, spec: TinyModelSpec, vocab: Vocabulary) -> None:
    file_type = {"F32": 0, "F16": 1, "Q4_0": 2, "Q8_0": 7}[spec.dtype]
    writer.add_name(spec.name)
    writer.add_file_type(file_type)
    write_llama4_hparams(
        writer,
        context_length=spec.context_length,
        n_embd=spec.n_embd,
        n_layer=spec.n_layer,
        n_ff=spec.n_ff,
        n_head=spec.n_head,
        n_head_kv=spec.n_head_kv,
        head_dim=spec.head_dim,
        n_expert=spec.n_expert,
        n_expert_used=spec.n_expert_used,
        n_ff_exp=spec.n_ff_exp,
        moe_every=spec.moe_every,
        n_vocab=len(vocab.tokens),
    )
    if spec.sliding_window is not None:
        writer.add_uint32("llama4.attention.sliding_window", spec.sliding_window)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("llama4")
    writer.add_token_list(list(vocab.tokens))
    writer.add_token_types(list(vocab.token_types))
    writer.add_token_merges(list(vocab.merges))
    writer.add_bos_token_id(vocab.index("<|begin_of_text|>"))
    writer.add_eos_token_id(vocab.index("<|eot|>"))
    writer.add_eot_token_id(vocab.index("<|eot|>"))
    writer.add_pad_token_id(vocab.index("<|finetune_right_pad|>"))
    writer.add_add_bos_token(True)
    if spec.chat_template is not None:
        writer.add_chat_template(spec.chat_template)
    for key, value in spec.extra_metadata.items():
        writer.add_string(key, value)


def write_llama4_hparams(
    writer: GGUFWriter,
    *,
    context_length: int,
    n_embd: int,
    n_layer: int,
    n_ff: int,
    n_head: int,
    n_head_kv: int,
    head_dim: int,
    n_expert: int,
    n_expert_used: int,
    n_ff_exp: int,
    moe_every: int,
    n_vocab: int,
) -> None:
    """The llama4 hyperparameter keys, as convert_hf_to_gguf writes them for Scout (no
    sliding-window key: llama.cpp then uses Scout's chunked attention)."""
    writer.add_context_length(context_length)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(500000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_expert_count(n_expert)
    writer.add_expert_used_count(n_expert_used)
    writer.add_expert_feed_forward_length(n_ff_exp)
    writer.add_interleave_moe_layer_step(moe_every)
    writer.add_vocab_size(n_vocab)


def quantized(spec: TinyModelSpec, dtype: str = "Q8_0") -> TinyModelSpec:
    return replace(spec, dtype=dtype, name=f"{spec.name} {dtype}")
