"""Header-only sparse replicas of the published Llama 4 Scout GGUF builds.

Each file carries Scout's real metadata, tensor names, shapes and per-quant tensor types, but its
data region is never written: the header is written, then the file is truncated to its full size,
so a 60 GB build takes a few MB on disk and about a second to make. The reader and the planner see
the true layout; llama.cpp can even load it with mmap (the weights read as zeros).

The per-tensor types follow llama.cpp's quantization recipes (src/llama-quant.cpp:
``use_more_bits`` layers get Q6_K for attn_v/ffn_down in Q4_K_M …) and Unsloth's dynamic (UD) mixes
in spirit; totals land within a few percent of the published file sizes (see ``PUBLISHED_BYTES``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScoutShape:
    n_layer: int = 48
    n_embd: int = 5120
    n_head: int = 40
    n_head_kv: int = 8
    head_dim: int = 128
    n_expert: int = 16
    n_expert_used: int = 1
    n_ff_exp: int = 8192
    n_ff: int = 16384
    n_vocab: int = 202_048
    context_length: int = 10_485_760


SCOUT = ScoutShape()

# Published sizes in bytes (docs/architecture.md, "Facts the code relies on"), for tests and bench.
PUBLISHED_BYTES = {
    "Q4_K_M": 49_848_379_744 + 15_511_520_608,
    "UD-Q2_K_XL": 42_200_000_000,
    "UD-IQ2_XXS": 38_600_000_000,
    "UD-IQ1_M": 35_400_000_000,
    "UD-IQ1_S": 33_800_000_000,
}

# general.file_type of each build
_FTYPE = {
    "Q4_K_M": 15,
    "Q8_0": 7,
    "UD-Q2_K_XL": 10,
    "UD-IQ2_XXS": 19,
    "UD-IQ1_M": 31,
    "UD-IQ1_S": 24,
    "Q4_0": 2,
}

BUILDS = tuple(_FTYPE)


def _use_more_bits(i: int, n: int) -> bool:
    """llama-quant.cpp: the first and last eighth of the layers, and every third in between."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def _recipe(build: str, n_layer: int) -> Callable[[str, int | None], str]:
    """A function (tensor kind, layer) -> ggml type name for the build."""

    def q4_k_m(kind: str, il: int | None) -> str:
        if kind == "output":
            return "Q6_K"
        if (
            kind in ("attn_v", "ffn_down_exps", "ffn_down_shexp")
            and il is not None
            and _use_more_bits(il, n_layer)
        ):
            return "Q6_K"
        return "Q4_K"

    def ud(gate_up: str, down: str, edge: str) -> Callable[[str, int | None], str]:
        # Unsloth dynamic: experts low-bit, the first/last layers' experts and all dense parts higher.
        def pick(kind: str, il: int | None) -> str:
            if kind == "output":
                return "Q6_K"
            if kind == "token_embd":
                return "Q4_K"
            if kind.endswith("_exps"):
                assert il is not None
                if il < 2 or il >= n_layer - 1:
                    return edge
                return down if kind == "ffn_down_exps" else gate_up
            if kind in ("attn_v", "ffn_down_shexp"):
                return "Q6_K"
            return "Q4_K"

        return pick

    recipes: dict[str, Callable[[str, int | None], str]] = {
        "Q4_K_M": q4_k_m,
        "Q8_0": lambda kind, il: "Q8_0",
        "Q4_0": lambda kind, il: "Q6_K" if kind == "output" else "Q4_0",
        "UD-Q2_K_XL": ud("Q2_K", "Q3_K", "Q4_K"),
        "UD-IQ2_XXS": ud("IQ2_XXS", "IQ3_XXS", "Q4_K"),
        "UD-IQ1_M": ud("IQ1_M", "IQ2_XS", "Q4_K"),
        "UD-IQ1_S": ud("IQ1_S", "IQ2_XS", "Q4_K"),
    }
    if build not in recipes:
        raise ValueError(f"unknown Scout build {build!r}; known: {', '.join(recipes)}")
    return recipes[build]


def scout_tensors(build: str = "Q4_K_M", shape: ScoutShape = SCOUT) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, ggml ne, ggml type name) for every tensor of the build, in llama.cpp's order."""
    pick = _recipe(build, shape.n_layer)
    e, hd = shape.n_embd, shape.head_dim
    out: list[tuple[str, tuple[int, ...], str]] = [
        ("token_embd.weight", (e, shape.n_vocab), pick("token_embd", None)),
    ]
    for i in range(shape.n_layer):
        p = f"blk.{i}."
        f, x = shape.n_ff_exp, shape.n_expert
        out += [
            (p + "attn_norm.weight", (e,), "F32"),
            (p + "attn_q.weight", (e, shape.n_head * hd), pick("attn_q", i)),
            (p + "attn_k.weight", (e, shape.n_head_kv * hd), pick("attn_k", i)),
            (p + "attn_v.weight", (e, shape.n_head_kv * hd), pick("attn_v", i)),
            (p + "attn_output.weight", (shape.n_head * hd, e), pick("attn_output", i)),
            (p + "ffn_norm.weight", (e,), "F32"),
            (p + "ffn_gate_inp.weight", (e, x), "F32"),
            (p + "ffn_gate_exps.weight", (e, f, x), pick("ffn_gate_exps", i)),
            (p + "ffn_down_exps.weight", (f, e, x), pick("ffn_down_exps", i)),
            (p + "ffn_up_exps.weight", (e, f, x), pick("ffn_up_exps", i)),
            (p + "ffn_gate_shexp.weight", (e, f), pick("ffn_gate_shexp", i)),
            (p + "ffn_down_shexp.weight", (f, e), pick("ffn_down_shexp", i)),
            (p + "ffn_up_shexp.weight", (e, f), pick("ffn_up_shexp", i)),
        ]
    out += [
        ("output_norm.weight", (e,), "F32"),
        ("output.weight", (e, shape.n_vocab), pick("output", None)),
    ]
    return out


def tensor_bytes(ne: tuple[int, ...], type_name: str) -> int:
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    block, size = GGML_QUANT_SIZES[GGMLQuantizationType[type_name]]
    if ne[0] % block:
        raise ValueError(f"row of {ne[0]} values is not a multiple of {type_name}'s block ({block})")
    n = 1
    for d in ne:
        n *= d
    return n // block * size


def build_bytes(build: str = "Q4_K_M", shape: ScoutShape = SCOUT) -> int:
    return sum(tensor_bytes(ne, t) for _, ne, t in scout_tensors(build, shape))


def _vocabulary(n_vocab: int) -> tuple[list[str], list[int], list[str]]:
    """Tiny model's byte-level BPE vocabulary padded with reserved special tokens to Scout's size."""
    from app.core.tiny_model import build_vocabulary

    vocab = build_vocabulary(88)
    tokens = list(vocab.tokens)
    types = list(vocab.token_types)
    n_pad = n_vocab - len(tokens)
    tokens += [f"<|reserved_special_token_{k}|>" for k in range(n_pad)]
    types += [3] * n_pad
    return tokens, types, list(vocab.merges)


def write_scout_shape(
    path: Path, build: str = "Q4_K_M", *, n_shards: int = 1, shape: ScoutShape = SCOUT
) -> list[Path]:
    """Write a sparse Scout-shaped GGUF (or ``n_shards`` split parts); return the files."""
    import numpy as np
    from gguf import GGMLQuantizationType, GGUFWriter, Keys

    from app.core.splits import split_file_name
    from app.core.tiny_model import LLAMA4_CHAT_TEMPLATE, build_vocabulary, write_llama4_hparams

    tensors = scout_tensors(build, shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    if n_shards == 1:
        targets = [path]
    else:
        stem = path.name.removesuffix(".gguf")
        targets = [path.with_name(split_file_name(stem, k, n_shards)) for k in range(1, n_shards + 1)]
    per_shard = -(-len(tensors) // n_shards)
    tokens, types, merges = _vocabulary(shape.n_vocab)
    small = build_vocabulary(88)
    for k, target in enumerate(targets):
        writer = GGUFWriter(str(target), "llama4")
        if k == 0:
            writer.add_name(f"Llama 4 Scout 17B 16E Instruct (shape replica, {build})")
            writer.add_file_type(_FTYPE[build])
            write_llama4_hparams(
                writer,
                context_length=shape.context_length,
                n_embd=shape.n_embd,
                n_layer=shape.n_layer,
                n_ff=shape.n_ff,
                n_head=shape.n_head,
                n_head_kv=shape.n_head_kv,
                head_dim=shape.head_dim,
                n_expert=shape.n_expert,
                n_expert_used=shape.n_expert_used,
                n_ff_exp=shape.n_ff_exp,
                moe_every=1,
                n_vocab=shape.n_vocab,
            )
            writer.add_tokenizer_model("gpt2")
            writer.add_tokenizer_pre("llama4")
            writer.add_token_list(tokens)
            writer.add_token_types(types)
            writer.add_token_merges(merges)
            writer.add_bos_token_id(small.index("<|begin_of_text|>"))
            writer.add_eos_token_id(small.index("<|eot|>"))
            writer.add_eot_token_id(small.index("<|eot|>"))
            writer.add_pad_token_id(small.index("<|finetune_right_pad|>"))
            writer.add_chat_template(LLAMA4_CHAT_TEMPLATE)
        if n_shards > 1:
            writer.add_uint16(Keys.Split.LLM_KV_SPLIT_NO, k)
            writer.add_uint16(Keys.Split.LLM_KV_SPLIT_COUNT, n_shards)
            writer.add_int32(Keys.Split.LLM_KV_SPLIT_TENSORS_COUNT, len(tensors))
        data_bytes = 0
        for name, ne, type_name in tensors[k * per_shard : (k + 1) * per_shard]:
            n_bytes = tensor_bytes(ne, type_name)
            writer.add_tensor_info(
                name,
                tuple(reversed(ne)),
                np.dtype(np.float32),
                n_bytes,
                raw_dtype=GGMLQuantizationType[type_name],
            )
            data_bytes += GGUFWriter.ggml_pad(n_bytes, writer.data_alignment)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        writer.close()
        header = target.stat().st_size
        data_offset = GGUFWriter.ggml_pad(header, writer.data_alignment)
        with target.open("r+b") as fh:
            fh.truncate(data_offset + data_bytes)  # sparse: the data region is never written
    log.debug("wrote Scout-shaped %s (%d part(s))", build, len(targets))
    return targets
