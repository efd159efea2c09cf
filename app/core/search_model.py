"""The search (embedding) model on disk: where its files go, and turning the download into a GGUF.

The catalog's search model (``models_manifest.json``, ``embedders``) is downloaded by the same
:class:`~app.core.downloads.Downloader` as the chat models, into ``<models_dir>/<id>/``
(``model.safetensors``, ``config.json``, ``tokenizer.json``), then converted on this computer
(:func:`app.core.bert_gguf.convert_sentence_transformer`) to ``<models_dir>/<id>/<id>.search.gguf``, the
file llama.cpp embeds with. The model counts as installed once that GGUF exists: it is written
under a temporary name and renamed into place, so a half-written one never counts.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from typing import TYPE_CHECKING

from app.core.bert_gguf import ConversionError, convert_sentence_transformer
from app.core.errors import UserError

if TYPE_CHECKING:
    from pathlib import Path

    from app.core.manifest import EmbedderEntry

log = logging.getLogger(__name__)

DEFAULT_SEARCH_MODEL = "all-minilm-l6-v2"
SEARCH_MODEL_SUFFIX = ".search.gguf"
"""The converted search model's file name ends so: lists of chat models skip it."""


class SearchModelError(UserError):
    """The downloaded search model could not be made ready (the message says why)."""


@dataclass(frozen=True)
class SearchModelFiles:
    """Where the search model ``entry`` lives under ``models_dir``."""

    entry: EmbedderEntry
    models_dir: Path

    @property
    def folder(self) -> Path:
        return self.models_dir / self.entry.id

    @property
    def gguf(self) -> Path:
        return self.folder / f"{self.entry.id}{SEARCH_MODEL_SUFFIX}"

    @property
    def log_path(self) -> Path:
        return self.folder / "embedder.log"

    @property
    def installed(self) -> bool:
        return self.gguf.is_file()

    def convert(self) -> Path:
        """Write the GGUF from the downloaded files (a few seconds); returns its path."""
        partial = self.gguf.with_name(self.gguf.name + ".tmp")
        try:
            convert_sentence_transformer(self.folder, partial)
            os.replace(partial, self.gguf)
        except (ConversionError, OSError, ValueError, KeyError) as exc:
            partial.unlink(missing_ok=True)
            raise SearchModelError(
                f"The search model {self.entry.display_name} was downloaded but could not be prepared: {exc}",
                f"{type(exc).__name__}: {exc}",
            ) from exc
        log.info("search model converted: %s", self.gguf)
        return self.gguf

    def remove(self) -> None:
        """Delete the downloaded files and the GGUF."""
        if self.folder.is_dir():
            shutil.rmtree(self.folder)
