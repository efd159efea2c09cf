"""Downloads of manifest builds from the Hugging Face Hub: the only package that touches the network.

A :class:`Downloader` is used from one worker thread; :meth:`Downloader.pause` and
:meth:`Downloader.cancel` may be called from any other thread (they set ``threading.Event``s
that the transfer checks between 1 MiB chunks and during back-off sleeps).

For each build it

1. resolves the files against the Hub (``model_info`` turns a branch into a commit, then
   ``get_paths_info(expand=True)`` gives each file's size and LFS sha256) and refuses on any
   mismatch with the manifest;
2. checks free disk space for everything still missing (shards + projector, minus partial bytes);
3. downloads each file with its own resumable transfer: ``GET`` with ``Range: bytes=N-`` on
   ``hf_hub_url(...)``, data appended to ``<dest>.part`` with a JSON sidecar ``<dest>.part.json``
   (url, size, sha256, etag, bytes done). A resume re-hashes the partial bytes (sequential read)
   instead of pickling hasher state; transient failures are retried with exponential back-off;
4. verifies size and the streaming sha256, and only then ``os.replace``s the file into place. A
   failed verify keeps the data as ``<dest>.corrupt`` and raises :class:`VerificationError`.

Files of a build go into one folder per build (``<models_dir>/<build id>/``), under their original
base names, so llama.cpp finds a split model's sibling shards; the projector lies beside them.

``huggingface_hub`` (and its ``httpx2``) is imported lazily. The byte transfer itself uses the standard
library (``urllib.request``, ``readinto`` into reused 1 MiB buffers; proxies from the environment, the
token dropped on cross-host redirects): httpx2's 64 KiB h11 read path measured 2.7x slower on loopback.
Tokens are passed in (see :class:`TokenStore`) and never logged.

The package's modules: :mod:`.manager` (:class:`Downloader`: resolve, disk space, the build-level
download, states of build folders), :mod:`.transfer` (the resumable HTTP transfer of one file),
:mod:`.errors`, :mod:`.models` (plain data), :mod:`.state` (the queue file and the token store).
"""

from app.core.downloads.errors import (
    DownloadCancelled,
    DownloadError,
    DownloadInterrupted,
    DownloadPaused,
    GatedRepoAccessError,
    ManifestMismatchError,
    NotEnoughDiskSpaceError,
    OfflineError,
    TransferError,
    VerificationError,
)
from app.core.downloads.manager import Downloader
from app.core.downloads.models import (
    BuildState,
    DownloadProgress,
    InstalledBuild,
    Phase,
    ResolvedBuild,
    ResolvedFile,
    TransferStats,
)
from app.core.downloads.state import QueueState, TokenStore
from app.core.downloads.transfer import CHUNK_SIZE

__all__ = [
    "CHUNK_SIZE",
    "BuildState",
    "DownloadCancelled",
    "DownloadError",
    "DownloadInterrupted",
    "DownloadPaused",
    "DownloadProgress",
    "Downloader",
    "GatedRepoAccessError",
    "InstalledBuild",
    "ManifestMismatchError",
    "NotEnoughDiskSpaceError",
    "OfflineError",
    "Phase",
    "QueueState",
    "ResolvedBuild",
    "ResolvedFile",
    "TokenStore",
    "TransferError",
    "TransferStats",
    "VerificationError",
]
