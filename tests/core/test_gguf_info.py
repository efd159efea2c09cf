"""GGUF header reading: ggml's C parser (fast path) and the gguf package (fallback)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import pytest

from app.core.gguf_info import GGUFError, find_projector, read_gguf_info, split_parts
from app.core.scout_shape import PUBLISHED_BYTES, write_scout_shape

if TYPE_CHECKING:
    from pathlib import Path


def test_tiny_model_header(tiny_model: Path) -> None:
    info = read_gguf_info(tiny_model)
    assert info.reader == "ggml"
    assert (info.architecture, info.n_layer, info.n_embd, info.n_head, info.n_head_kv) == (
        "llama4",
        4,
        128,
        4,
        2,
    )
    assert (info.head_dim_k, info.n_expert, info.n_expert_used, info.n_ff_exp) == (32, 4, 1, 64)
    assert info.attention == "chunked"
    assert info.swa_window == 8192
    assert info.swa_layers == (True, True, True, False)
    assert info.chat_template
    assert "header_start" in info.chat_template
    assert info.quant_name == "F32"
    assert info.total_bytes == info.dense_layer_bytes + info.expert_bytes + info.non_layer_bytes
    # expert tensors: 3 per layer, n_expert × n_ff_exp × n_embd f32 each
    assert all(layer.expert_bytes == 3 * 4 * 64 * 128 * 4 for layer in info.layers)


def test_fallback_reader_agrees(tiny_model_q8: Path) -> None:
    fast = read_gguf_info(tiny_model_q8)
    slow = read_gguf_info(tiny_model_q8, prefer_ggml=False)
    assert slow.reader == "gguf-py"
    assert fast.layers == slow.layers
    assert fast.total_bytes == slow.total_bytes
    assert (fast.vocab_size, fast.quant_name, fast.chat_template) == (
        slow.vocab_size,
        slow.quant_name,
        slow.chat_template,
    )


def test_split_model_sums_all_shards(tiny_model: Path, tiny_model_split: list[Path]) -> None:
    assert split_parts(tiny_model_split[1]) == tuple(tiny_model_split)
    whole = read_gguf_info(tiny_model)
    split = read_gguf_info(tiny_model_split[1])  # any part: the first is what llama.cpp opens
    assert split.path == tiny_model_split[0]
    assert split.is_split
    assert split.total_bytes == whole.total_bytes
    assert split.layers == whole.layers


def test_missing_split_part(tiny_model_split: list[Path], tmp_path: Path) -> None:
    lonely = tmp_path / tiny_model_split[0].name
    lonely.write_bytes(tiny_model_split[0].read_bytes())
    with pytest.raises(GGUFError, match="missing part"):
        read_gguf_info(lonely)


def test_scout_replica_is_fast_and_true_to_size(tmp_path: Path) -> None:
    started = time.perf_counter()
    path = write_scout_shape(tmp_path / "scout-Q4_K_M.gguf", "Q4_K_M")[0]
    assert time.perf_counter() - started < 10
    assert path.stat().st_blocks * 512 < 64 * 1024**2  # sparse: a few MB on disk
    info = read_gguf_info(path)
    assert info.read_seconds < 1.0
    assert (info.n_layer, info.n_embd, info.n_head, info.n_head_kv, info.n_expert) == (48, 5120, 40, 8, 16)
    assert (info.vocab_size, info.n_ff_exp, info.n_swa_layers) == (202_048, 8192, 36)
    assert info.quant_name == "Q4_K_M"
    assert abs(info.total_bytes / PUBLISHED_BYTES["Q4_K_M"] - 1) < 0.005
    assert info.expert_bytes / info.total_bytes > 0.85


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"Hello, this is a text file renamed to .gguf\n" * 10, "not a GGUF"),
        (b"", "not a GGUF"),
        (b"GGUF\x03\x00", "truncated"),
        (b"GGUF\x63\x00\x00\x00" + b"\x00" * 16, "unsupported GGUF version"),
        (b"GGUF\x03\x00\x00\x00" + (10**12).to_bytes(8, "little") + b"\x00" * 8, "damaged"),
        (b"ggjt\x01\x00\x00\x00" + b"\x00" * 32, "old GGML"),
    ],
)
def test_bad_files_raise_gguf_error(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(content)
    with pytest.raises(GGUFError, match=message):
        read_gguf_info(path)


def test_truncated_model(tiny_model: Path, tmp_path: Path) -> None:
    data = tiny_model.read_bytes()
    for cut, message in ((len(data) // 2, "truncated"), (2000, "damaged|truncated")):
        path = tmp_path / f"cut{cut}.gguf"
        path.write_bytes(data[:cut])
        with pytest.raises(GGUFError, match=message):
            read_gguf_info(path)
        with pytest.raises(GGUFError):
            read_gguf_info(path, prefer_ggml=False)


def test_find_projector(tmp_path: Path) -> None:
    model = tmp_path / "model.gguf"
    model.write_bytes(b"")
    assert find_projector(model) is None
    (tmp_path / "mmproj-model-f32.gguf").write_bytes(b"")
    (tmp_path / "mmproj-model-f16.gguf").write_bytes(b"")
    assert find_projector(model) == tmp_path / "mmproj-model-f16.gguf"
