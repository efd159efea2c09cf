"""Plain data of a download: phases, build states, files resolved against the Hub, progress, counters."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    from app.core.manifest import ModelFile


class Phase(str, enum.Enum):
    RESOLVING = "resolving"
    REHASHING = "rehashing"  # reading back a partial file after a resume
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    DONE = "done"


class BuildState(str, enum.Enum):
    INSTALLED = "installed"
    PARTIAL = "partial"
    CORRUPT = "corrupt"
    ABSENT = "absent"


@dataclass(frozen=True)
class ResolvedFile:
    """A manifest file checked against the Hub: exact size, sha256 and the commit it comes from."""

    source: ModelFile
    commit: str
    url: str
    size: int
    sha256: str | None
    dest: Path

    @property
    def part(self) -> Path:
        return self.dest.with_name(self.dest.name + ".part")

    @property
    def sidecar(self) -> Path:
        return self.dest.with_name(self.dest.name + ".part.json")

    @property
    def corrupt(self) -> Path:
        return self.dest.with_name(self.dest.name + ".corrupt")


@dataclass(frozen=True)
class ResolvedBuild:
    build_id: str
    folder: Path
    files: tuple[ResolvedFile, ...]  # model shards in order, then the projector

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)


@dataclass(frozen=True)
class InstalledBuild:
    build_id: str
    folder: Path
    model_files: tuple[Path, ...]
    projector: Path | None

    @property
    def model_path(self) -> Path:
        """What llama.cpp opens: the single file, or the first shard of a split model."""
        return self.model_files[0]


@dataclass(frozen=True)
class DownloadProgress:
    """One progress report, per file and per build (plain data: safe to emit across threads)."""

    build_id: str
    phase: Phase
    file_name: str
    file_index: int  # 0-based
    file_count: int
    file_done: int
    file_total: int
    build_done: int
    build_total: int
    speed_bps: float  # moving average over the last few seconds; 0 when unknown
    eta_s: float | None  # for the whole build; None when the speed is unknown


@dataclass
class TransferStats:
    """Counters of the last :meth:`Downloader.download` (the benchmark reads them)."""

    bytes_received: int = 0  # over the network, re-fetched bytes included
    bytes_rehashed: int = 0
    attempts: int = 0  # HTTP GETs made
    retries: int = 0
    range_restarts: int = 0  # the server ignored Range or we had to start a file over
    hash_cpu_s: float = 0.0
    ranges_sent: list[str] = field(default_factory=list)
