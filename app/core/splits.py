"""Split GGUF file names: ``model-00001-of-00003.gguf`` and its sibling parts.

llama.cpp's ``gguf-split`` writes ``<stem>-%05d-of-%05d.gguf``: two five-digit numbers, parts counted
from 1, and llama.cpp opens the *first* part (it finds the others beside it). This module is the one
place that reads or writes such names.

Case rules: the ``-of-`` separator and the ``.gguf`` extension match in any case (Windows and
macOS users rename files freely, and the Hub keeps whatever case a publisher chose), and the sibling
names are built with the case *as written* in the name given, so ``X-00002-OF-00002.GGUF`` leads to
``X-00001-OF-00002.GGUF``, which is the file that exists on a case-sensitive disk. Exactly five
digits each; a part number of 0 or above the count, or a count of 0, is not a split name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

_SPLIT_RE = re.compile(
    r"^(?P<stem>.+)-(?P<no>\d{5})-(?P<of>of)-(?P<count>\d{5})(?P<ext>\.gguf)$", re.IGNORECASE
)
WIDTH = 5


@dataclass(frozen=True)
class SplitName:
    """A parsed split-part file name."""

    stem: str  # "model-Q4_K_M" in "model-Q4_K_M-00001-of-00002.gguf"
    number: int  # 1-based
    count: int
    of: str = "of"  # the separator as written (case kept)
    ext: str = ".gguf"  # the extension as written (case kept)

    @property
    def is_first(self) -> bool:
        return self.number == 1

    def part(self, number: int) -> str:
        """The file name of part ``number`` (1-based) of the same model."""
        return f"{self.stem}-{number:0{WIDTH}d}-{self.of}-{self.count:0{WIDTH}d}{self.ext}"

    def parts(self) -> tuple[str, ...]:
        """Every part's file name, in order."""
        return tuple(self.part(k) for k in range(1, self.count + 1))


def parse_split_name(name: str) -> SplitName | None:
    """The split-part reading of a file name (no folders), or None when it is not one."""
    match = _SPLIT_RE.match(name)
    if match is None:
        return None
    number, count = int(match["no"]), int(match["count"])
    if count < 1 or not 1 <= number <= count:
        return None
    return SplitName(match["stem"], number, count, match["of"], match["ext"])


def split_file_name(stem: str, number: int, count: int) -> str:
    """``stem-0000N-of-0000M.gguf``: the name llama.cpp's gguf-split gives part ``number``."""
    return SplitName(stem, number, count).part(number)


def is_first_part(name: str) -> bool:
    """True for a whole (non-split) model file name or the first part of a split one."""
    split = parse_split_name(name)
    return split is None or split.is_first


def split_parts(path: Path) -> tuple[Path, ...]:
    """All parts of a split model in order (whichever part ``path`` names), or just ``(path,)``."""
    split = parse_split_name(path.name)
    if split is None:
        return (path,)
    return tuple(path.with_name(name) for name in split.parts())


def first_split_part(path: Path) -> Path:
    """The first part of a split model when it exists beside ``path``, else ``path`` itself."""
    split = parse_split_name(path.name)
    if split is not None and not split.is_first:
        first = path.with_name(split.part(1))
        if first.exists():
            return first
    return path


def missing_split_parts(path: Path) -> list[str]:
    """Names of the parts of ``path``'s split model that are not beside it (empty when whole)."""
    return [p.name for p in split_parts(path) if not p.exists()] if parse_split_name(path.name) else []
