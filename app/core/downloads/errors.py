"""The download errors, each with a ``message`` fit for the UI, and the byte counts they quote."""

from __future__ import annotations

from typing import TYPE_CHECKING

from app.core.errors import UserError
from app.core.units import format_bytes

if TYPE_CHECKING:
    from pathlib import Path


class DownloadError(UserError):
    """A download problem with a ``message`` fit for the UI (and an optional technical ``detail``)."""

    def __init__(self, message: str, *, detail: str = "") -> None:
        super().__init__(message, detail)


class OfflineError(DownloadError):
    """``HF_HUB_OFFLINE`` is set, or the Hub cannot be reached."""


class GatedRepoAccessError(DownloadError):
    """401/403: the licence was not accepted or the token is missing/wrong."""

    def __init__(self, repo_id: str, *, detail: str = "") -> None:
        super().__init__(
            "This model is gated: accept the licence on the model page "
            f"(https://huggingface.co/{repo_id}), then paste a Hugging Face token.",
            detail=detail,
        )
        self.repo_id = repo_id


class ManifestMismatchError(DownloadError):
    """The Hub disagrees with the manifest (size, sha256, missing file): nothing is downloaded."""


class NotEnoughDiskSpaceError(DownloadError):
    def __init__(self, needed: int, available: int, directory: Path) -> None:
        super().__init__(
            f"Not enough disk space: need {format_bytes(needed - available)} more in {directory}",
            detail=f"needed={needed} available={available}",
        )
        self.needed, self.available, self.directory = needed, available, directory


class VerificationError(DownloadError):
    """Size or sha256 of a finished file is wrong. The data is kept at ``corrupt_path``."""

    def __init__(self, message: str, *, dest: Path, corrupt_path: Path, detail: str = "") -> None:
        super().__init__(message, detail=detail)
        self.dest, self.corrupt_path = dest, corrupt_path


class TransferError(DownloadError):
    """The transfer kept failing after all retries; the partial data is kept for a later resume."""


class DownloadInterrupted(DownloadError):
    """Base of the user's own interruptions (pause, cancel)."""


class DownloadPaused(DownloadInterrupted):
    def __init__(self) -> None:
        super().__init__("Download paused.")


class DownloadCancelled(DownloadInterrupted):
    def __init__(self, kept_partial: bool) -> None:
        super().__init__(
            "Download cancelled; the partial data was kept." if kept_partial else "Download cancelled."
        )
        self.kept_partial = kept_partial
