"""Checks on a model file before llama.cpp sees it: a crash or a cryptic error becomes a sentence."""

from __future__ import annotations

from typing import TYPE_CHECKING

from app.core.engine.errors import ModelLoadError
from app.core.splits import first_split_part, missing_split_parts, split_parts

if TYPE_CHECKING:
    from pathlib import Path

GGUF_MAGIC = b"GGUF"
__all__ = ["GGUF_MAGIC", "check_model_file", "first_split_part"]


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
