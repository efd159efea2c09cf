"""Sentence embeddings with a BERT-style GGUF (mean pooling) through llama.cpp.

One :class:`Embedder` owns one ``Llama(embedding=True)``: like the chat model, it is used from one
thread only (the embedding worker's). Vectors come back L2-normalised as float32 rows, so a dot
product is the cosine similarity.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from app.core.engine.errors import ModelLoadError
from app.core.engine.native import import_llama_cpp
from app.core.hardware import physical_cores

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    import numpy as np

log = logging.getLogger(__name__)

MAX_TOKENS = 256
"""Tokens of a text that are embedded (the rest is cut): all-MiniLM-L6-v2 was trained on 128 and
sentence-transformers cuts at 256."""
BATCH_TOKENS = 512


class Embedder:
    """Embeds texts with the GGUF at ``path``."""

    def __init__(self, path: Path, *, n_threads: int | None = None) -> None:
        llama_cpp = import_llama_cpp()
        threads = n_threads or physical_cores()
        try:
            self._llm: Any = llama_cpp.Llama(
                str(path),
                embedding=True,
                n_ctx=BATCH_TOKENS,
                n_batch=BATCH_TOKENS,
                n_ubatch=BATCH_TOKENS,
                n_threads=threads,
                n_threads_batch=threads,
                n_gpu_layers=0,
                verbose=False,
            )
        except (ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"The search model {path.name} could not be loaded: {exc}") from exc
        self.dimensions = int(self._llm.n_embd())
        self._max_sequences = max(1, int(self._llm.context_params.n_seq_max))
        self.name = path.stem

    def _tokens(self, text: str) -> list[int]:
        tokens: list[int] = list(
            self._llm.tokenize(text.encode("utf-8", "replace"), add_bos=True, special=False)
        )
        if len(tokens) > MAX_TOKENS:
            tokens = [*tokens[: MAX_TOKENS - 1], tokens[-1]]  # keep [SEP] at the end
        return tokens

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """One normalised float32 row per text, in order."""
        import numpy as np

        out = np.zeros((len(texts), self.dimensions), dtype=np.float32)
        batch: list[tuple[int, list[int]]] = []
        used = 0
        for n, text in enumerate(texts):
            tokens = self._tokens(text)
            if batch and (used + len(tokens) > BATCH_TOKENS or len(batch) >= self._max_sequences):
                self._decode(batch, out)
                batch, used = [], 0
            batch.append((n, tokens))
            used += len(tokens)
        if batch:
            self._decode(batch, out)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1, norms)

    def _decode(self, batch: list[tuple[int, list[int]]], out: np.ndarray) -> None:
        llama_cpp = import_llama_cpp()
        ctx = self._llm._ctx
        llama_batch = self._llm._batch
        llama_batch.reset()
        ctx.kv_cache_clear()
        for seq, (_n, tokens) in enumerate(batch):
            llama_batch.add_sequence(tokens, seq, True)  # embeddings need every token as an output
        ctx.decode(llama_batch)
        for seq, (n, _tokens) in enumerate(batch):
            out[n] = llama_cpp.llama_get_embeddings_seq(ctx.ctx, seq)[: self.dimensions]
        llama_batch.reset()

    def close(self) -> None:
        self._llm.close()
