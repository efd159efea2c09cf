"""Checks on a model file before llama.cpp sees it: a crash or a cryptic error becomes a sentence."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from app.core.engine.errors import ModelLoadError

if TYPE_CHECKING:
    from pathlib import Path

GGUF_MAGIC = b"GGUF"
_SPLIT_RE = re.compile(r"^(?P<stem>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)


def first_split_part(path: Path) -> Path:
    """``model-00002-of-00003.gguf`` → ``model-00001-of-00003.gguf`` (llama.cpp needs the first)."""
    match = _SPLIT_RE.match(path.name)
    if match and match["no"] != "00001":
        first = path.with_name(f"{match['stem']}-00001-of-{match['count']}.gguf")
        if first.exists():
            return first
    return path


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
    match = _SPLIT_RE.match(path.name)
    if match:
        count = int(match["count"])
        missing = [
            path.with_name(f"{match['stem']}-{k:05d}-of-{match['count']}.gguf").name
            for k in range(1, count + 1)
            if not path.with_name(f"{match['stem']}-{k:05d}-of-{match['count']}.gguf").exists()
        ]
        if missing:
            raise ModelLoadError(
                f"This model is split into {count} files and {len(missing)} of them are missing: "
                f"{', '.join(missing)}. Put all parts in the same folder.",
            )
