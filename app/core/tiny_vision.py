"""Generate a tiny, real llama4 vision projector (``mmproj``) GGUF with seeded random weights.

It pairs with the tiny text models of :mod:`app.core.tiny_model`: libmtmd (llama.cpp's
multimodal library, used by llama-cpp-python's ``MTMDChatHandler``) loads it next to the text
model and turns a picture into embeddings of the text model's width, exactly as it does with
Scout's 1.7 GB projector, only on a 32×32 tile instead of a 336×336 one.

What libmtmd requires for ``PROJECTOR_TYPE_LLAMA4`` (tools/mtmd/clip.cpp, models/llama4.cpp):

* keys: ``clip.projector_type = "llama4"``, ``clip.has_vision_encoder``, ``clip.vision.{image_size,
  patch_size, embedding_length, feed_forward_length, block_count, attention.head_count,
  attention.layer_norm_epsilon, projection_dim, image_mean, image_std}`` and
  ``clip.vision.projector.scale_factor`` (the pixel-shuffle factor, 2 on Scout);
  ``clip.use_gelu`` as Meta's encoder uses GELU;
* tensors: ``v.patch_embd.weight`` (the unfold "convolution": a ``[n_embd, 3·p·p]`` matrix),
  ``v.class_embd``, ``v.position_embd.weight`` (``(image_size/p)² + 1`` rows, the +1 for CLS),
  pre/post layer norms, per block ``ln1``/``ln2``, ``attn_{q,k,v,out}``, ``ffn_{up,down}`` (weights
  and biases), and the projector: ``mm.model.mlp.1`` (``4·n_embd → proj``), ``mm.model.mlp.2``
  (``proj → proj``), ``mm.model.fc`` (``proj → n_embd_text``). libmtmd refuses a projector whose
  output width differs from the text model's embedding width.

Per 32×32 tile: (32/8)² = 16 patches, pixel shuffle 2 → 4 image tokens (Scout: (336/14)² = 576
patches → 144 tokens). Images larger than a tile are cut into up to 3×3 tiles plus a global view,
as on Scout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from app.core.tiny_model import TinyModelSpec

if TYPE_CHECKING:
    from pathlib import Path

    import numpy as np


@dataclass(frozen=True)
class TinyProjectorSpec:
    """Shape of a generated projector. The defaults make a ~0.3 MB (F32) file."""

    image_size: int = 32  # one tile (Scout: 336)
    patch_size: int = 8  # (Scout: 14)
    n_embd: int = 64  # vision encoder width (Scout: 1408); head_dim 16 suits the 2-D RoPE
    n_head: int = 4
    n_ff: int = 128
    n_layer: int = 2
    scale_factor: int = 2  # pixel shuffle (Scout: 2, i.e. pixel_shuffle_ratio 0.5)
    proj_dim: int = 64  # adapter MLP width (Scout: 4096)
    name: str = "Tiny Llama 4 vision projector (random weights)"

    @property
    def patches_per_side(self) -> int:
        return self.image_size // self.patch_size

    @property
    def tokens_per_tile(self) -> int:
        return self.patches_per_side**2 // self.scale_factor**2


def _check(spec: TinyProjectorSpec) -> None:
    if spec.image_size % spec.patch_size:
        raise ValueError("image_size must be a multiple of patch_size")
    if spec.patches_per_side % spec.scale_factor:
        raise ValueError("patches per side must be a multiple of the pixel-shuffle factor")
    if spec.n_embd % spec.n_head or (spec.n_embd // spec.n_head) % 4:
        raise ValueError("the head dimension must be a multiple of 4 (2-D RoPE)")


def _weights(spec: TinyProjectorSpec, n_embd_text: int, seed: int) -> list[tuple[str, np.ndarray]]:
    """Tensors as numpy arrays (numpy shape = reversed ggml ne), all F32."""
    import numpy as np

    rng = np.random.default_rng(seed)
    e, p = spec.n_embd, spec.patch_size

    def rand(*shape: int, fan_in: int) -> np.ndarray:
        weights: np.ndarray = rng.standard_normal(shape) / np.sqrt(fan_in)
        return weights.astype(np.float32)

    def small(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    ones = np.ones(e, dtype=np.float32)
    zeros = np.zeros(e, dtype=np.float32)
    n_pos = spec.patches_per_side**2 + 1
    out: list[tuple[str, np.ndarray]] = [
        ("v.patch_embd.weight", rand(e, 3 * p * p, fan_in=3 * p * p)),
        ("v.class_embd", small(e)),
        ("v.position_embd.weight", small(n_pos, e)),
        ("v.pre_ln.weight", ones.copy()),
        ("v.pre_ln.bias", zeros.copy()),
    ]
    for i in range(spec.n_layer):
        b = f"v.blk.{i}."
        out += [
            (b + "ln1.weight", ones.copy()),
            (b + "ln1.bias", zeros.copy()),
            (b + "attn_q.weight", rand(e, e, fan_in=e)),
            (b + "attn_q.bias", small(e)),
            (b + "attn_k.weight", rand(e, e, fan_in=e)),
            (b + "attn_k.bias", small(e)),
            (b + "attn_v.weight", rand(e, e, fan_in=e)),
            (b + "attn_v.bias", small(e)),
            (b + "attn_out.weight", rand(e, e, fan_in=e)),
            (b + "attn_out.bias", small(e)),
            (b + "ln2.weight", ones.copy()),
            (b + "ln2.bias", zeros.copy()),
            (b + "ffn_up.weight", rand(spec.n_ff, e, fan_in=e)),
            (b + "ffn_up.bias", small(spec.n_ff)),
            (b + "ffn_down.weight", rand(e, spec.n_ff, fan_in=spec.n_ff)),
            (b + "ffn_down.bias", small(e)),
        ]
    shuffled = e * spec.scale_factor**2
    out += [
        ("v.post_ln.weight", ones.copy()),
        ("v.post_ln.bias", zeros.copy()),
        ("mm.model.mlp.1.weight", rand(spec.proj_dim, shuffled, fan_in=shuffled)),
        ("mm.model.mlp.2.weight", rand(spec.proj_dim, spec.proj_dim, fan_in=spec.proj_dim)),
        # Scaled like the text model's token embeddings (std 0.5) so image tokens look like text.
        ("mm.model.fc.weight", rand(n_embd_text, spec.proj_dim, fan_in=spec.proj_dim) * 0.5),
    ]
    return out


def write_tiny_projector(
    path: Path,
    text_spec: TinyModelSpec | None = None,
    *,
    seed: int = 4321,
    spec: TinyProjectorSpec | None = None,
) -> Path:
    """Write a tiny llama4 vision projector GGUF at ``path`` for a model made from ``text_spec``."""
    import gguf

    text_spec = text_spec or TinyModelSpec()
    spec = spec or TinyProjectorSpec()
    _check(spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), "clip")
    writer.add_type(gguf.GGUFType.MMPROJ)
    writer.add_name(spec.name)
    writer.add_file_type(0)  # all F32
    writer.add_clip_has_vision_encoder(True)
    writer.add_clip_projector_type(gguf.VisionProjectorType.LLAMA4)
    writer.add_vision_projection_dim(text_spec.n_embd)
    writer.add_vision_image_size(spec.image_size)
    writer.add_vision_patch_size(spec.patch_size)
    writer.add_vision_embedding_length(spec.n_embd)
    writer.add_vision_feed_forward_length(spec.n_ff)
    writer.add_vision_block_count(spec.n_layer)
    writer.add_vision_head_count(spec.n_head)
    writer.add_vision_attention_layernorm_eps(1e-5)
    writer.add_vision_image_mean([0.5, 0.5, 0.5])
    writer.add_vision_image_std([0.5, 0.5, 0.5])
    writer.add_vision_projector_scale_factor(spec.scale_factor)
    writer.add_vision_use_gelu(True)
    for name, data in _weights(spec, text_spec.n_embd, seed):
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
