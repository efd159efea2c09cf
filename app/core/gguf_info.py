"""Read a GGUF model's header without loading its weights.

The fast path is ggml's own C parser (``gguf_init_from_file`` with ``no_alloc``) from the libraries
inside the llama_cpp package, through ctypes: ~60 ms on a 60 GB Scout file. The ``gguf`` package's
``GGUFReader`` is the fallback (it parses every vocabulary string: ~9 s on Scout).

Bad files (not a GGUF, truncated, damaged header) raise :class:`GGUFError` with a sentence for the
user. The header is sanity-checked in Python before ggml sees it, so a damaged file cannot make the
C parser allocate absurd amounts of memory.
"""

from __future__ import annotations

import ctypes
import logging
import re
import struct
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.core import ggml_lib
from app.core.errors import UserError
from app.core.splits import split_parts
from app.core.units import format_bytes

log = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"
# llama.cpp's own expert pattern (common/arg.cpp, --n-cpu-moe): blk\.N\.ffn_(up|down|gate|gate_up)_(ch|)exps
EXPERT_RE = re.compile(r"^blk\.(\d+)\.ffn_(up|down|gate|gate_up)_(ch|)exps")
LAYER_RE = re.compile(r"^blk\.(\d+)\.")
NON_LAYER_NAMES = ("token_embd", "output_norm", "output")
LLAMA4_CHUNK = 8192  # llama.cpp hard-codes Llama 4's attention chunk (src/models/llama4.cpp)

# general.file_type (enum llama_ftype) -> the name people use for the build
FILE_TYPE_NAMES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
    11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
    17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS",
    23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S",
    29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0", 37: "TQ2_0",
    38: "MXFP4_MOE",
}  # fmt: skip

# Sanity limits for a header (Scout: ~35 keys, ~580 tensors, 202k-token vocabulary).
_MAX_TENSORS = 1_000_000
_MAX_KV = 100_000


class GGUFError(UserError):
    """A file that is not a readable GGUF model; ``message`` (``str(exc)``) is a sentence for the user."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    type_name: str  # ggml type, e.g. "q4_K"
    n_bytes: int
    layer: int | None  # blk.N -> N
    is_expert: bool  # routed-expert weights (llama.cpp's exps pattern)
    shard: int = 0


@dataclass(frozen=True)
class LayerBytes:
    index: int
    dense_bytes: int  # attention, norms, router, shared expert
    expert_bytes: int  # routed experts (blk.N.ffn_*_exps)

    @property
    def total_bytes(self) -> int:
        return self.dense_bytes + self.expert_bytes


@dataclass(frozen=True)
class GGUFInfo:
    path: Path  # the file llama.cpp opens (first shard of a split model)
    files: tuple[Path, ...]
    architecture: str
    name: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim_k: int
    head_dim_v: int
    n_expert: int
    n_expert_used: int
    n_ff_exp: int
    context_length: int
    vocab_size: int
    file_type: int | None
    quant_name: str
    chat_template: str | None
    attention: str  # "full", "chunked" (llama4) or "sliding"
    swa_window: int  # chunk / window size in tokens; 0 when attention == "full"
    swa_layers: tuple[bool, ...]  # per layer: uses the chunked/sliding cache
    layers: tuple[LayerBytes, ...]
    token_embd_bytes: int
    output_bytes: int  # output.weight (0 when tied to token_embd)
    output_norm_bytes: int
    other_bytes: int  # any other tensor outside blk.N (rope_freqs …)
    tensors: tuple[TensorInfo, ...] = field(repr=False)
    file_bytes: int = 0  # sum of the files' sizes on disk (apparent)
    reader: str = "ggml"  # "ggml" (C parser) or "gguf-py" (fallback)
    read_seconds: float = 0.0

    @property
    def total_bytes(self) -> int:
        """Bytes of all tensors: llama.cpp's model buffers add up to exactly this."""
        return sum(t.n_bytes for t in self.tensors)

    @property
    def expert_bytes(self) -> int:
        return sum(layer.expert_bytes for layer in self.layers)

    @property
    def dense_layer_bytes(self) -> int:
        return sum(layer.dense_bytes for layer in self.layers)

    @property
    def non_layer_bytes(self) -> int:
        return self.token_embd_bytes + self.output_bytes + self.output_norm_bytes + self.other_bytes

    @property
    def n_embd_k_gqa(self) -> int:
        return self.head_dim_k * self.n_head_kv

    @property
    def n_embd_v_gqa(self) -> int:
        return self.head_dim_v * self.n_head_kv

    @property
    def n_swa_layers(self) -> int:
        return sum(self.swa_layers)

    @property
    def is_split(self) -> bool:
        return len(self.files) > 1


# --------------------------------------------------------------------------------------------
# Files


def find_projector(model_path: Path) -> Path | None:
    """A vision projector (``mmproj*.gguf``) beside the model, or None. Prefers F16 > BF16 > F32."""
    folder = model_path.parent
    try:
        found = sorted(
            p for p in folder.iterdir() if p.name.lower().startswith("mmproj") and p.suffix == ".gguf"
        )
    except OSError:
        return None
    if not found:
        return None
    for tag in ("f16", "bf16", "f32"):
        for p in found:
            if tag in p.name.lower():
                return p
    return found[0]


def projector_mismatch(model: GGUFInfo, projector: Path) -> str | None:
    """Why the vision projector at ``projector`` cannot serve ``model`` (a few words), or None when
    its header says it can, or does not say (llama.cpp then decides when it loads it).

    Read from the headers alone, before anything is loaded: libmtmd refuses a projector whose
    output width (``clip.vision.projection_dim``, the text model's embedding width in every
    projector llama.cpp's converter writes) differs from the model's, and a file that is not a
    projector at all."""
    try:
        raw, _reader = _read_one(projector, prefer_ggml=True)
    except GGUFError as exc:
        return str(exc)
    arch = str(raw.kv.get("general.architecture", ""))
    if arch != "clip":
        return f"{projector.name} is not a vision projector (its architecture is {arch or 'missing'})"
    if raw.kv.get("clip.has_vision_encoder") is False:
        return f"{projector.name} has no vision encoder"
    width = raw.kv.get("clip.vision.projection_dim")
    if isinstance(width, int) and model.n_embd and width != model.n_embd:
        return f"it makes {width}-wide image embeddings and {model.name} reads {model.n_embd}-wide ones"
    return None


def _check_header(path: Path) -> int:
    """Validate magic/version/counts in Python before ggml parses the file; return the file size."""
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(24)
    except FileNotFoundError:
        raise GGUFError(f"{path.name} does not exist.") from None
    except IsADirectoryError:
        raise GGUFError(f"{path.name} is a folder, not a model file.") from None
    except OSError as exc:
        raise GGUFError(f"{path.name} could not be read: {exc.strerror or exc}.") from exc
    if len(head) < 4 or head[:4] != GGUF_MAGIC:
        if head[:4] in (b"ggjt", b"ggml", b"ggmf", b"tjgg", b"lmgg", b"fmgg"):
            raise GGUFError(f"{path.name} is an old GGML model; only GGUF models are supported.")
        raise GGUFError(
            f"{path.name} is not a GGUF model file (it may be a text file or a download error page)."
        )
    if len(head) < 24:
        raise GGUFError(f"{path.name} is truncated: its header is incomplete.")
    version, n_tensors, n_kv = struct.unpack("<IQQ", head[4:24])
    if version not in (2, 3):
        if struct.unpack(">I", head[4:8])[0] in (2, 3):
            raise GGUFError(f"{path.name} is a big-endian GGUF; it needs a little-endian build.")
        raise GGUFError(f"{path.name} has an unsupported GGUF version ({version}).")
    if n_tensors > _MAX_TENSORS or n_kv > _MAX_KV:
        raise GGUFError(f"{path.name} is damaged: its header claims {n_tensors} tensors and {n_kv} keys.")
    return size


# --------------------------------------------------------------------------------------------
# The two parsers produce the same raw record.


@dataclass
class _Raw:
    kv: dict[str, Any]
    tensors: list[tuple[str, str, int, int]]  # name, type name, bytes, offset in the data section
    data_offset: int


def _read_ggml(path: Path) -> _Raw:
    f = ggml_lib.function
    params = ggml_lib.GGUFInitParams(no_alloc=True, ctx=None)
    ctx = f("gguf_init_from_file")(str(path).encode(), params)
    if not ctx:
        raise GGUFError(f"{path.name} is damaged: its GGUF header could not be parsed.")
    try:
        kv: dict[str, Any] = {}
        scalar = {
            ggml_lib.GGUF_TYPE_UINT8: f("gguf_get_val_u8"),
            ggml_lib.GGUF_TYPE_INT8: f("gguf_get_val_i8"),
            ggml_lib.GGUF_TYPE_UINT16: f("gguf_get_val_u16"),
            ggml_lib.GGUF_TYPE_INT16: f("gguf_get_val_i16"),
            ggml_lib.GGUF_TYPE_UINT32: f("gguf_get_val_u32"),
            ggml_lib.GGUF_TYPE_INT32: f("gguf_get_val_i32"),
            ggml_lib.GGUF_TYPE_FLOAT32: f("gguf_get_val_f32"),
            ggml_lib.GGUF_TYPE_BOOL: f("gguf_get_val_bool"),
            ggml_lib.GGUF_TYPE_UINT64: f("gguf_get_val_u64"),
            ggml_lib.GGUF_TYPE_INT64: f("gguf_get_val_i64"),
            ggml_lib.GGUF_TYPE_FLOAT64: f("gguf_get_val_f64"),
        }
        ctype_of = {
            ggml_lib.GGUF_TYPE_UINT8: ctypes.c_uint8,
            ggml_lib.GGUF_TYPE_INT8: ctypes.c_int8,
            ggml_lib.GGUF_TYPE_UINT16: ctypes.c_uint16,
            ggml_lib.GGUF_TYPE_INT16: ctypes.c_int16,
            ggml_lib.GGUF_TYPE_UINT32: ctypes.c_uint32,
            ggml_lib.GGUF_TYPE_INT32: ctypes.c_int32,
            ggml_lib.GGUF_TYPE_FLOAT32: ctypes.c_float,
            ggml_lib.GGUF_TYPE_BOOL: ctypes.c_bool,
            ggml_lib.GGUF_TYPE_UINT64: ctypes.c_uint64,
            ggml_lib.GGUF_TYPE_INT64: ctypes.c_int64,
            ggml_lib.GGUF_TYPE_FLOAT64: ctypes.c_double,
        }
        get_key, get_type = f("gguf_get_key"), f("gguf_get_kv_type")
        for i in range(f("gguf_get_n_kv")(ctx)):
            key = get_key(ctx, i).decode("utf-8", "replace")
            kind = get_type(ctx, i)
            if kind == ggml_lib.GGUF_TYPE_STRING:
                kv[key] = f("gguf_get_val_str")(ctx, i).decode("utf-8", "replace")
            elif kind == ggml_lib.GGUF_TYPE_ARRAY:
                n = f("gguf_get_arr_n")(ctx, i)
                item = f("gguf_get_arr_type")(ctx, i)
                if item in ctype_of and n <= 4096:  # small numeric arrays (per-layer values)
                    data = f("gguf_get_arr_data")(ctx, i)
                    kv[key] = tuple((ctype_of[item] * n).from_address(data)) if n else ()
                else:
                    kv[key] = _ArrayLen(n)
            elif kind in scalar:
                kv[key] = scalar[kind](ctx, i)
        tensors = []
        name_of, type_of = f("gguf_get_tensor_name"), f("gguf_get_tensor_type")
        size_of, offset_of = f("gguf_get_tensor_size"), f("gguf_get_tensor_offset")
        type_name = f("ggml_type_name")
        names: dict[int, str] = {}
        for i in range(f("gguf_get_n_tensors")(ctx)):
            t = type_of(ctx, i)
            if t not in names:
                raw = type_name(t)
                names[t] = raw.decode() if raw else f"type{t}"
            tensors.append(
                (name_of(ctx, i).decode("utf-8", "replace"), names[t], size_of(ctx, i), offset_of(ctx, i))
            )
        return _Raw(kv, tensors, f("gguf_get_data_offset")(ctx))
    finally:
        f("gguf_free")(ctx)


class _ArrayLen(int):
    """A long array in the header (e.g. the vocabulary): only its length is kept."""


def _read_gguf_py(path: Path) -> _Raw:
    import numpy as np
    from gguf import GGUFReader, GGUFValueType

    try:
        reader = GGUFReader(str(path), "r")
    except (ValueError, OSError, struct.error, IndexError) as exc:
        raise GGUFError(f"{path.name} is damaged: its GGUF header could not be parsed ({exc}).") from exc
    kv: dict[str, Any] = {}
    for key, fld in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        if not fld.types:
            continue
        if fld.types[0] == GGUFValueType.STRING:
            kv[key] = bytes(fld.parts[fld.data[0]]).decode("utf-8", "replace")
        elif fld.types[0] == GGUFValueType.ARRAY:
            if len(fld.types) > 1 and fld.types[1] != GGUFValueType.STRING and len(fld.data) <= 4096:
                kv[key] = tuple(fld.parts[i][0].item() for i in fld.data)
            else:
                kv[key] = _ArrayLen(len(fld.data))
        else:
            value = fld.parts[fld.data[0]][0]
            kv[key] = value.item() if isinstance(value, np.generic) else value
    tensors = [
        (t.name, t.tensor_type.name.lower().replace("_k", "_K"), int(t.n_bytes), int(t.data_offset))
        for t in reader.tensors
    ]
    data_offset = int(reader.data_offset)
    tensors = [(n, ty, b, off - data_offset) for n, ty, b, off in tensors]
    return _Raw(kv, tensors, data_offset)


# --------------------------------------------------------------------------------------------


def _read_one(path: Path, prefer_ggml: bool) -> tuple[_Raw, str]:
    size = _check_header(path)
    raw: _Raw | None = None
    reader = "ggml"
    if prefer_ggml:
        try:
            raw = _read_ggml(path)
        except ggml_lib.GGMLLibraryError as exc:
            log.warning("ggml's GGUF parser is unavailable (%s); using the gguf package", exc)
    if raw is None:
        raw, reader = _read_gguf_py(path), "gguf-py"
    end = raw.data_offset + max((off + n for _, _, n, off in raw.tensors), default=0)
    if end > size:
        missing = end - size
        raise GGUFError(
            f"{path.name} is truncated: {format_bytes(missing)} of its weights are missing "
            "(the download may be incomplete)."
        )
    return raw, reader


def read_gguf_info(path: Path | str, *, prefer_ggml: bool = True) -> GGUFInfo:
    """Read a model's header (every shard of a split model). Raises :class:`GGUFError`."""
    started = time.perf_counter()
    path = Path(path)
    parts = split_parts(path)
    if len(parts) > 1:
        missing = [p.name for p in parts if not p.exists()]
        if missing:
            raise GGUFError(f"{path.name} is part of a split model; missing part(s): {', '.join(missing)}.")
        path = parts[0]
    kv: dict[str, Any] = {}
    tensors: list[TensorInfo] = []
    readers = set()
    file_bytes = 0
    for shard, part in enumerate(parts):
        raw, reader = _read_one(part, prefer_ggml)
        readers.add(reader)
        file_bytes += part.stat().st_size
        if shard == 0:
            kv = raw.kv
        for name, type_name, n_bytes, _offset in raw.tensors:
            expert = EXPERT_RE.match(name)
            layer = LAYER_RE.match(name)
            tensors.append(
                TensorInfo(
                    name=name,
                    type_name=type_name,
                    n_bytes=n_bytes,
                    layer=int(layer.group(1)) if layer else None,
                    is_expert=expert is not None,
                    shard=shard,
                )
            )
    expected = kv.get("split.tensors.count")
    if isinstance(expected, int) and expected and expected != len(tensors):
        raise GGUFError(f"{path.name}: the split model's parts hold {len(tensors)} of {expected} tensors.")
    info = _build_info(path, parts, kv, tensors, file_bytes, "+".join(sorted(readers)))
    info = _with_time(info, time.perf_counter() - started)
    log.debug("read %s (%s) in %.0f ms", path.name, info.reader, info.read_seconds * 1000)
    return info


def _with_time(info: GGUFInfo, seconds: float) -> GGUFInfo:
    from dataclasses import replace

    return replace(info, read_seconds=seconds)


def _int(kv: dict[str, Any], key: str, default: int = 0) -> int:
    value = kv.get(key, default)
    if isinstance(value, tuple):  # per-layer arrays: take the largest (memory bound)
        return int(max(value)) if value else default
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _build_info(
    path: Path,
    parts: tuple[Path, ...],
    kv: dict[str, Any],
    tensors: list[TensorInfo],
    file_bytes: int,
    reader: str,
) -> GGUFInfo:
    arch = str(kv.get("general.architecture", ""))
    if not arch:
        raise GGUFError(f"{path.name} has no architecture in its header; it is not a usable model.")
    a = arch + "."
    n_layer = _int(kv, a + "block_count")
    n_embd = _int(kv, a + "embedding_length")
    n_head = _int(kv, a + "attention.head_count")
    n_head_kv = _int(kv, a + "attention.head_count_kv", n_head)
    head_dim = n_embd // n_head if n_head else 0
    head_k = _int(kv, a + "attention.key_length", head_dim)
    head_v = _int(kv, a + "attention.value_length", head_dim)
    vocab = kv.get("tokenizer.ggml.tokens")
    vocab_size = int(vocab) if isinstance(vocab, int) else _int(kv, a + "vocab_size")

    attention, window, swa_layers = _attention(arch, kv, n_layer)
    layer_dense, layer_expert, embd, out, out_norm, other = _tensor_bytes(tensors, n_layer)
    file_type, quant = _quant(kv, tensors)
    template = kv.get("tokenizer.chat_template")
    return GGUFInfo(
        path=path,
        files=parts,
        architecture=arch,
        name=str(kv.get("general.name", "") or path.stem),
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim_k=head_k,
        head_dim_v=head_v,
        n_expert=_int(kv, a + "expert_count"),
        n_expert_used=_int(kv, a + "expert_used_count"),
        n_ff_exp=_int(kv, a + "expert_feed_forward_length"),
        context_length=_int(kv, a + "context_length"),
        vocab_size=vocab_size,
        file_type=file_type,
        quant_name=quant,
        chat_template=template if isinstance(template, str) and template else None,
        attention=attention,
        swa_window=window,
        swa_layers=swa_layers,
        layers=tuple(LayerBytes(i, layer_dense[i], layer_expert[i]) for i in range(n_layer)),
        token_embd_bytes=embd,
        output_bytes=out,
        output_norm_bytes=out_norm,
        other_bytes=other,
        tensors=tuple(tensors),
        file_bytes=file_bytes,
        reader=reader,
    )


def _attention(arch: str, kv: dict[str, Any], n_layer: int) -> tuple[str, int, tuple[bool, ...]]:
    """Sliding / chunked attention, as llama.cpp decides it: the kind, the window, the SWA layers."""
    a = arch + "."
    swa_key = a + "attention.sliding_window"
    pattern_value = kv.get(a + "attention.sliding_window_pattern")
    attention, window, swa_layers = "full", 0, tuple(False for _ in range(n_layer))
    if arch == "llama4":
        if swa_key in kv and _int(kv, swa_key) == 0:
            pass
        else:
            attention, window = "chunked", LLAMA4_CHUNK
            swa_layers = _swa_pattern(n_layer, pattern_value, 4)
    elif _int(kv, swa_key) > 0:
        attention, window = "sliding", _int(kv, swa_key)
        swa_layers = _swa_pattern(n_layer, pattern_value, 0)
    return attention, window, swa_layers


def _tensor_bytes(tensors: list[TensorInfo], n_layer: int) -> tuple[list[int], list[int], int, int, int, int]:
    """Bytes per layer (dense, expert), then of the token embedding, output, output norm and the rest."""
    layer_dense = [0] * n_layer
    layer_expert = [0] * n_layer
    embd = out = out_norm = other = 0
    for t in tensors:
        if t.layer is not None and 0 <= t.layer < n_layer:
            if t.is_expert:
                layer_expert[t.layer] += t.n_bytes
            else:
                layer_dense[t.layer] += t.n_bytes
        elif t.name.startswith("token_embd."):
            embd += t.n_bytes
        elif t.name.startswith("output_norm."):
            out_norm += t.n_bytes
        elif t.name.startswith("output."):
            out += t.n_bytes
        else:
            other += t.n_bytes
    return layer_dense, layer_expert, embd, out, out_norm, other


def _quant(kv: dict[str, Any], tensors: list[TensorInfo]) -> tuple[int | None, str]:
    """The file type and its quantization's name (else the most common type of the expert tensors)."""
    file_type = kv.get("general.file_type")
    file_type = int(file_type) if isinstance(file_type, int) else None
    quant = FILE_TYPE_NAMES.get(file_type, "") if file_type is not None else ""
    if not quant:
        counts = Counter(t.type_name for t in tensors if t.is_expert) or Counter(t.type_name for t in tensors)
        quant = counts.most_common(1)[0][0].upper() if counts else "?"
    return file_type, quant


def _swa_pattern(n_layer: int, value: object, default_pattern: int) -> tuple[bool, ...]:
    """llama_hparams::set_swa_pattern: layer il is SWA iff il % n < n - 1 (n = 0/1: all SWA)."""
    if isinstance(value, tuple) and len(value) == n_layer:
        return tuple(bool(v) for v in value)
    n = int(value) if isinstance(value, int) else default_pattern
    if n == 0:
        return (True,) * n_layer
    return tuple(il % n < n - 1 for il in range(n_layer))
