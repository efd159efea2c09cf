"""BERT sentence-embedding models as GGUF files that llama.cpp loads with ``embedding=True``.

- :func:`convert_sentence_transformer` turns a sentence-transformers BERT model (``config.json``,
  ``model.safetensors``, a WordPiece ``tokenizer.json``; a directory or a ``.zip`` of one, such as
  all-MiniLM-L6-v2) into a GGUF with mean pooling, the way llama.cpp's own converter does: tensor
  names through :class:`gguf.TensorNameMap`, the vocabulary in llama.cpp's "phantom space" form
  (``##piece`` -> ``piece``, ``word`` -> ``▁word``), special tokens as control tokens.
- :func:`write_tiny_bert` writes a tiny BERT-shaped GGUF with seeded random weights for tests.

Used by the tests and the retrieval benchmark; nothing here touches the network.
"""

from __future__ import annotations

import json
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    import numpy as np

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
POOLING_MEAN = 1  # llama.cpp's LLAMA_POOLING_TYPE_MEAN
_SAFETENSORS_DTYPES = {"F32": "<f4", "F16": "<f2", "BF16": None, "I64": "<i8", "I32": "<i4"}


class ConversionError(Exception):
    """The model cannot be converted: the message says why."""


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int
    hidden_size: int
    layers: int
    heads: int
    intermediate_size: int
    max_positions: int
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12

    @classmethod
    def from_hf(cls, config: Mapping[str, Any]) -> BertConfig:
        if config.get("model_type") != "bert":
            raise ConversionError(f"not a BERT model (model_type {config.get('model_type')!r})")
        return cls(
            config["vocab_size"],
            config["hidden_size"],
            config["num_hidden_layers"],
            config["num_attention_heads"],
            config["intermediate_size"],
            config["max_position_embeddings"],
            config.get("type_vocab_size", 2),
            config.get("layer_norm_eps", 1e-12),
        )


def read_safetensors(data: bytes) -> dict[str, np.ndarray]:
    """The tensors of a ``.safetensors`` file's bytes (F32, F16, I64, I32)."""
    import numpy as np

    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size])
    base = 8 + size
    out: dict[str, np.ndarray] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _SAFETENSORS_DTYPES.get(info["dtype"])
        if dtype is None:
            raise ConversionError(f"tensor {name}: dtype {info['dtype']} is not supported")
        start, end = info["data_offsets"]
        out[name] = np.frombuffer(
            data, dtype=dtype, count=(end - start) // np.dtype(dtype).itemsize, offset=base + start
        ).reshape(info["shape"])
    return out


def _read_model(source: Path) -> tuple[dict[str, Any], bytes, dict[str, Any]]:
    """config.json, model.safetensors bytes and tokenizer.json of a model directory or zip."""
    names = ("config.json", "model.safetensors", "tokenizer.json")
    if source.is_dir():
        missing = [n for n in names if not (source / n).is_file()]
        if missing:
            raise ConversionError(f"{source} has no {missing[0]}")
        blobs = [(source / n).read_bytes() for n in names]
    elif zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as archive:
            members = {Path(m).name: m for m in archive.namelist() if m.count("/") <= 1}
            missing = [n for n in names if n not in members]
            if missing:
                raise ConversionError(f"{source.name} has no {missing[0]}")
            blobs = [archive.read(members[n]) for n in names]
    else:
        raise ConversionError(f"{source} is neither a model directory nor a zip of one")
    return json.loads(blobs[0]), blobs[1], json.loads(blobs[2])


def convert_sentence_transformer(source: Path, out: Path, *, f16: bool = True) -> Path:
    """Write ``out`` (a GGUF) from the sentence-transformers BERT model at ``source``."""
    config_json, weights, tokenizer = _read_model(source)
    config = BertConfig.from_hf(config_json)
    model = tokenizer.get("model", {})
    if model.get("type") != "WordPiece":
        raise ConversionError(f"the tokenizer is {model.get('type')!r}, not WordPiece")
    vocab: dict[str, int] = model["vocab"]
    tokens = [""] * len(vocab)
    for token, token_id in vocab.items():
        tokens[token_id] = token
    if not (tokenizer.get("normalizer") or {}).get("lowercase", True):
        raise ConversionError("cased BERT tokenizers are not supported")
    write_bert_gguf(out, config, read_safetensors(weights), tokens, name=source.stem, f16=f16)
    return out


def write_bert_gguf(
    out: Path,
    config: BertConfig,
    tensors: Mapping[str, np.ndarray],
    vocab: Sequence[str],
    *,
    name: str = "bert",
    f16: bool = True,
) -> None:
    """A BERT encoder with mean pooling, from Hugging Face tensor names and a WordPiece vocabulary."""
    import gguf
    import numpy as np

    arch = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.BERT]
    ids = {token: n for n, token in enumerate(vocab)}
    if len(ids) != len(vocab):
        raise ConversionError("the vocabulary has duplicate tokens")
    missing = [t for t in SPECIAL_TOKENS if t not in ids]
    if missing:
        raise ConversionError(f"the vocabulary has no {missing[0]} token")
    writer = gguf.GGUFWriter(str(out), arch)
    writer.add_name(name)
    writer.add_context_length(config.max_positions)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_block_count(config.layers)
    writer.add_head_count(config.heads)
    writer.add_layer_norm_eps(config.layer_norm_eps)
    writer.add_causal_attention(False)
    writer.add_pooling_type(gguf.PoolingType.MEAN)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if f16 else gguf.LlamaFileType.ALL_F32)

    writer.add_token_type_count(config.type_vocab_size)
    writer.add_tokenizer_model("bert")
    writer.add_tokenizer_pre("default")
    writer.add_token_list([_phantom(t) for t in vocab])
    special = set(SPECIAL_TOKENS)
    control, normal = gguf.TokenType.CONTROL, gguf.TokenType.NORMAL
    writer.add_token_types([control if t in special else normal for t in vocab])
    writer.add_unk_token_id(ids["[UNK]"])
    writer.add_sep_token_id(ids["[SEP]"])
    writer.add_pad_token_id(ids["[PAD]"])
    writer.add_mask_token_id(ids["[MASK]"])
    writer.add_bos_token_id(ids["[CLS]"])
    writer.add_eos_token_id(ids["[SEP]"])
    writer.add_add_bos_token(True)
    writer.add_add_sep_token(True)

    names = gguf.TensorNameMap(gguf.MODEL_ARCH.BERT, config.layers)
    for hf_name, tensor in tensors.items():
        if hf_name.endswith("position_ids") or hf_name.startswith(("pooler.", "bert.pooler.")):
            continue  # mean pooling: the pooler is not used
        key = hf_name.removeprefix("bert.")
        gguf_name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ConversionError(f"unexpected tensor {hf_name}")
        data = np.ascontiguousarray(tensor, dtype=np.float32)
        if f16 and data.ndim == 2 and not gguf_name.startswith("token_types"):
            data = data.astype(np.float16)
        writer.add_tensor(gguf_name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _phantom(token: str) -> str:
    """llama.cpp's WordPiece form: "##piece" continues a word, any other piece starts one."""
    if token.startswith("[") and token.endswith("]"):
        return token
    if token.startswith("##"):
        return token[2:]
    return "\u2581" + token


TINY_WORDS = (
    "the a of to and is in it that for on with as was be at by this not or from rent tenant lease vacate "
    "premises days notice month deposit pet key door house garden water fire python code function list "
    "string number file error"
)


def tiny_vocab() -> list[str]:
    """A small lowercase WordPiece vocabulary: specials, words, single characters and their "##" forms."""
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789.,;:!?'\"()-")
    pieces = [f"##{c}" for c in chars if c.isalnum()]
    return list(dict.fromkeys([*SPECIAL_TOKENS, *TINY_WORDS.split(), *chars, *pieces]))


def write_tiny_bert(out: Path, *, seed: int = 0, hidden: int = 32, layers: int = 2, heads: int = 4) -> Path:
    """A tiny BERT-shaped GGUF with seeded random weights (F32), for tests."""
    import numpy as np

    vocab = tiny_vocab()
    config = BertConfig(len(vocab), hidden, layers, heads, 4 * hidden, 128)
    rng = np.random.default_rng(seed)

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.2).astype(np.float32)

    ones, zeros = np.ones(hidden, np.float32), np.zeros(hidden, np.float32)
    tensors: dict[str, np.ndarray] = {
        "embeddings.word_embeddings.weight": w(config.vocab_size, hidden),
        "embeddings.position_embeddings.weight": w(config.max_positions, hidden),
        "embeddings.token_type_embeddings.weight": w(2, hidden),
        "embeddings.LayerNorm.weight": ones,
        "embeddings.LayerNorm.bias": zeros,
    }
    for i in range(layers):
        p = f"encoder.layer.{i}."
        for part in (
            "attention.self.query",
            "attention.self.key",
            "attention.self.value",
            "attention.output.dense",
        ):
            tensors[p + part + ".weight"] = w(hidden, hidden)
            tensors[p + part + ".bias"] = w(hidden)
        tensors[p + "intermediate.dense.weight"] = w(config.intermediate_size, hidden)
        tensors[p + "intermediate.dense.bias"] = w(config.intermediate_size)
        tensors[p + "output.dense.weight"] = w(hidden, config.intermediate_size)
        tensors[p + "output.dense.bias"] = w(hidden)
        for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
            tensors[p + norm + ".weight"] = ones
            tensors[p + norm + ".bias"] = zeros
    write_bert_gguf(out, config, tensors, vocab, name="tiny-bert", f16=False)
    return out
