"""Load and validate ``models_manifest.json``: the catalog of downloadable Scout builds, and of the
search (embedding) models in its ``embedders`` section.

Validation errors name the offending field with a JSON-path-like location, e.g.
``builds[3].files[0].sha256: expected 64 hex chars``. Unknown sizes/hashes are ``None``:
:mod:`app.core.downloads` takes them from the Hub's LFS metadata at download time.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.core.errors import UserError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MANIFEST_FILE = Path(__file__).resolve().parents[2] / "models_manifest.json"

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_BUILD_ID = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
_BRANCH = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_./-]*$")


class ManifestError(UserError, ValueError):
    """The manifest is malformed; the message names the field."""


@dataclass(frozen=True)
class ModelFile:
    """One file on the Hub. ``size``/``sha256`` are ``None`` when not known offline."""

    repo_id: str
    path: str
    size: int | None
    sha256: str | None
    revision: str = "main"

    @property
    def name(self) -> str:
        """The file's base name: the name it gets on disk (shards keep their ``-0000N-of-0000M`` names)."""
        return self.path.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Licence:
    name: str
    url: str
    note: str


@dataclass(frozen=True)
class Recommended:
    context: int
    temperature: float
    top_p: float
    min_p: float


@dataclass(frozen=True)
class Build:
    id: str
    display_name: str
    repo_id: str
    revision: str
    revision_note: str
    quantization: str
    bits_per_weight: float
    approx_size_bytes: int
    files: tuple[ModelFile, ...]
    projector: ModelFile | None
    gated: bool
    licence: Licence
    recommended: Recommended
    who_for: str  # who the build suits (quality, download size); memory needs come from the planner
    suggested: bool = False
    notes: str = ""

    @property
    def revision_is_pinned(self) -> bool:
        """True when ``revision`` is a 40-hex commit (else a branch resolved at download time)."""
        return bool(_COMMIT.match(self.revision))

    @property
    def is_split(self) -> bool:
        return len(self.files) > 1

    @property
    def all_files(self) -> tuple[ModelFile, ...]:
        """Model files (shards in order) followed by the projector, if any."""
        return (*self.files, self.projector) if self.projector else self.files


@dataclass(frozen=True)
class EmbedderEntry:
    """A search (embedding) model: sentence-transformers files on the Hub, converted to a GGUF on
    this computer after the download (:mod:`app.core.search_model`). Downloaded by the same
    :class:`~app.core.downloads.Downloader` as the builds (it reads ``id``, ``display_name``,
    ``files``, ``projector`` and ``all_files``)."""

    id: str
    display_name: str
    repo_id: str
    revision: str
    files: tuple[ModelFile, ...]
    languages: tuple[str, ...]
    dimensions: int
    licence: Licence
    notes: str = ""
    projector: None = None

    @property
    def all_files(self) -> tuple[ModelFile, ...]:
        return self.files

    @property
    def download_size(self) -> int:
        """Bytes of the files whose size is known (the weights; the small JSON files are not)."""
        return sum(f.size or 0 for f in self.files)


Downloadable = Build | EmbedderEntry
"""What :class:`~app.core.downloads.Downloader` downloads into ``<models_dir>/<id>/``."""


@dataclass(frozen=True)
class Manifest:
    schema_version: int
    model: str
    builds: tuple[Build, ...]
    embedders: tuple[EmbedderEntry, ...] = ()

    def embedder(self, embedder_id: str) -> EmbedderEntry:
        for entry in self.embedders:
            if entry.id == embedder_id:
                return entry
        raise KeyError(embedder_id)

    def build(self, build_id: str) -> Build:
        for build in self.builds:
            if build.id == build_id:
                return build
        raise KeyError(build_id)

    def by_repo(self) -> dict[str, list[Build]]:
        """Builds grouped by repo id, in manifest order."""
        groups: dict[str, list[Build]] = {}
        for build in self.builds:
            groups.setdefault(build.repo_id, []).append(build)
        return groups

    @staticmethod
    def total_size(build: Build) -> int | None:
        """Exact bytes of all model files plus the projector; ``None`` if any size is unknown."""
        sizes = [f.size for f in build.all_files]
        if any(s is None for s in sizes):
            return None
        return sum(s for s in sizes if s is not None)

    @staticmethod
    def estimated_size(build: Build) -> int:
        """Best estimate for display: exact when known, else the approximate model size plus projector."""
        exact = Manifest.total_size(build)
        if exact is not None:
            return exact
        projector = build.projector.size if build.projector and build.projector.size else 0
        return build.approx_size_bytes + projector


# --------------------------------------------------------------------------- validation helpers


def _get(obj: dict[str, Any], key: str, where: str) -> Any:
    if key not in obj:
        raise ManifestError(f"{where}.{key}: missing" if where else f"{key}: missing")
    return obj[key]


def _str(obj: dict[str, Any], key: str, where: str, *, pattern: re.Pattern[str] | None = None) -> str:
    value = _get(obj, key, where)
    loc = f"{where}.{key}" if where else key
    if not isinstance(value, str) or not value.strip():
        raise ManifestError(f"{loc}: expected a non-empty string, got {value!r}")
    if pattern is not None and not pattern.match(value):
        raise ManifestError(f"{loc}: {value!r} does not match {pattern.pattern}")
    return value


def _int(
    obj: dict[str, Any], key: str, where: str, *, nullable: bool = False, minimum: int = 1
) -> int | None:
    value = _get(obj, key, where)
    loc = f"{where}.{key}"
    if value is None and nullable:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ManifestError(f"{loc}: expected an integer >= {minimum}{' or null' if nullable else ''}")
    return value


def _float(obj: dict[str, Any], key: str, where: str, lo: float, hi: float) -> float:
    value = _get(obj, key, where)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise ManifestError(f"{where}.{key}: expected a number in [{lo}, {hi}], got {value!r}")
    return float(value)


def _bool(obj: dict[str, Any], key: str, where: str, default: bool | None = None) -> bool:
    if key not in obj and default is not None:
        return default
    value = _get(obj, key, where)
    if not isinstance(value, bool):
        raise ManifestError(f"{where}.{key}: expected true or false")
    return value


def _obj(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ManifestError(f"{where}: expected an object")
    return value


def _sha(obj: dict[str, Any], where: str) -> str | None:
    value = _get(obj, "sha256", where)
    if value is None:
        return None
    if not isinstance(value, str) or not _SHA256.match(value):
        raise ManifestError(f"{where}.sha256: expected 64 hex chars (lower case) or null")
    return value


def _revision(obj: dict[str, Any], where: str) -> str:
    value = _str(obj, "revision", where)
    if not (_COMMIT.match(value) or _BRANCH.match(value)):
        raise ManifestError(f"{where}.revision: expected a 40-hex commit or a branch name")
    return value


def _file(
    raw: Any, where: str, repo_id: str, revision: str, suffixes: tuple[str, ...] = (".gguf",)
) -> ModelFile:
    raw = _obj(raw, where)
    path = _str(raw, "path", where)
    if path.startswith("/") or ".." in path.split("/") or "\\" in path:
        raise ManifestError(f"{where}.path: must be a relative POSIX path inside the repo")
    if not path.endswith(suffixes):
        raise ManifestError(f"{where}.path: expected a {' or '.join(suffixes)} file")
    return ModelFile(
        repo_id=_str(raw, "repo_id", where, pattern=_REPO_ID) if "repo_id" in raw else repo_id,
        path=path,
        size=_int(raw, "size", where, nullable=True),
        sha256=_sha(raw, where),
        revision=_revision(raw, where) if "revision" in raw else revision,
    )


def _build(raw: Any, where: str) -> Build:
    raw = _obj(raw, where)
    repo_id = _str(raw, "repo_id", where, pattern=_REPO_ID)
    revision = _revision(raw, where)
    revision_note = raw.get("revision_note", "")
    if not isinstance(revision_note, str):
        raise ManifestError(f"{where}.revision_note: expected a string")
    if not _COMMIT.match(revision) and not revision_note.strip():
        raise ManifestError(f"{where}.revision_note: required when revision is not a 40-hex commit")
    files_raw = _get(raw, "files", where)
    if not isinstance(files_raw, list) or not files_raw:
        raise ManifestError(f"{where}.files: expected a non-empty list")
    files = tuple(_file(f, f"{where}.files[{i}]", repo_id, revision) for i, f in enumerate(files_raw))
    names = [f.name for f in files]
    if len(set(names)) != len(names):
        raise ManifestError(f"{where}.files: two files share a base name")
    if len(files) > 1:
        for i, f in enumerate(files):
            if f"-{i + 1:05d}-of-{len(files):05d}.gguf" not in f.name:
                raise ManifestError(
                    f"{where}.files[{i}].path: split parts must be listed in order "
                    f"(expected '-{i + 1:05d}-of-{len(files):05d}.gguf')"
                )
    projector_raw = raw.get("projector")
    projector = (
        None if projector_raw is None else _file(projector_raw, f"{where}.projector", repo_id, revision)
    )
    if projector is not None and projector.name in names:
        raise ManifestError(f"{where}.projector.path: clashes with a model file name")
    lic = _obj(_get(raw, "licence", where), f"{where}.licence")
    rec = _obj(_get(raw, "recommended", where), f"{where}.recommended")
    return Build(
        id=_str(raw, "id", where, pattern=_BUILD_ID),
        display_name=_str(raw, "display_name", where),
        repo_id=repo_id,
        revision=revision,
        revision_note=revision_note,
        quantization=_str(raw, "quantization", where),
        bits_per_weight=_float(raw, "bits_per_weight", where, 1.0, 32.0),
        approx_size_bytes=_int(raw, "approx_size_bytes", where) or 0,
        files=files,
        projector=projector,
        gated=_bool(raw, "gated", where),
        licence=Licence(
            name=_str(lic, "name", f"{where}.licence"),
            url=_str(lic, "url", f"{where}.licence"),
            note=_str(lic, "note", f"{where}.licence"),
        ),
        recommended=Recommended(
            context=_int(rec, "context", f"{where}.recommended", minimum=512) or 0,
            temperature=_float(rec, "temperature", f"{where}.recommended", 0.0, 2.0),
            top_p=_float(rec, "top_p", f"{where}.recommended", 0.0, 1.0),
            min_p=_float(rec, "min_p", f"{where}.recommended", 0.0, 1.0),
        ),
        who_for=_str(raw, "who_for", where),
        suggested=_bool(raw, "suggested", where, default=False),
        notes=raw.get("notes", "") if isinstance(raw.get("notes", ""), str) else "",
    )


EMBEDDER_FILES = ("model.safetensors", "config.json", "tokenizer.json")
"""What a sentence-transformers BERT needs to be converted (:mod:`app.core.bert_gguf`)."""


def _embedder(raw: Any, where: str) -> EmbedderEntry:
    raw = _obj(raw, where)
    repo_id = _str(raw, "repo_id", where, pattern=_REPO_ID)
    revision = _revision(raw, where)
    if raw.get("format") != "sentence-transformers":
        raise ManifestError(f"{where}.format: expected 'sentence-transformers'")
    files_raw = _get(raw, "files", where)
    if not isinstance(files_raw, list):
        raise ManifestError(f"{where}.files: expected a list")
    files = tuple(
        _file(f, f"{where}.files[{i}]", repo_id, revision, (".safetensors", ".json"))
        for i, f in enumerate(files_raw)
    )
    missing = [name for name in EMBEDDER_FILES if name not in {f.name for f in files}]
    if missing:
        raise ManifestError(f"{where}.files: {missing[0]} is missing")
    languages = _get(raw, "languages", where)
    if not isinstance(languages, list) or not languages or not all(isinstance(x, str) for x in languages):
        raise ManifestError(f"{where}.languages: expected a non-empty list of language codes")
    lic = _obj(_get(raw, "licence", where), f"{where}.licence")
    notes = raw.get("notes", "")
    return EmbedderEntry(
        id=_str(raw, "id", where, pattern=_BUILD_ID),
        display_name=_str(raw, "display_name", where),
        repo_id=repo_id,
        revision=revision,
        files=files,
        languages=tuple(languages),
        dimensions=_int(raw, "dimensions", where) or 0,
        licence=Licence(
            name=_str(lic, "name", f"{where}.licence"),
            url=_str(lic, "url", f"{where}.licence"),
            note=_str(lic, "note", f"{where}.licence"),
        ),
        notes=notes if isinstance(notes, str) else "",
    )


def parse_manifest(data: Any) -> Manifest:
    """Validate an already-decoded manifest document."""
    data = _obj(data, "manifest")
    version = _get(data, "schema_version", "")
    if version != SCHEMA_VERSION:
        raise ManifestError(f"schema_version: expected {SCHEMA_VERSION}, got {version!r}")
    builds_raw = _get(data, "builds", "")
    if not isinstance(builds_raw, list) or not builds_raw:
        raise ManifestError("builds: expected a non-empty list")
    builds = tuple(_build(b, f"builds[{i}]") for i, b in enumerate(builds_raw))
    seen: set[str] = set()
    for i, build in enumerate(builds):
        if build.id in seen:
            raise ManifestError(f"builds[{i}].id: duplicate id {build.id!r}")
        seen.add(build.id)
    embedders_raw = data.get("embedders", [])
    if not isinstance(embedders_raw, list):
        raise ManifestError("embedders: expected a list")
    embedders = tuple(_embedder(e, f"embedders[{i}]") for i, e in enumerate(embedders_raw))
    for i, entry in enumerate(embedders):
        if entry.id in seen:
            raise ManifestError(f"embedders[{i}].id: duplicate id {entry.id!r}")
        seen.add(entry.id)
    model = data.get("model", "")
    return Manifest(
        schema_version=version,
        model=model if isinstance(model, str) else "",
        builds=builds,
        embedders=embedders,
    )


def load_manifest(path: Path | None = None) -> Manifest:
    """Read and validate the manifest (default: ``models_manifest.json`` at the repo root)."""
    path = path or MANIFEST_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path.name}: not valid JSON ({exc})") from exc
    manifest = parse_manifest(data)
    log.debug("loaded %d builds from %s", len(manifest.builds), path)
    return manifest
