"""models_manifest.json: schema validation and agreement with the published sizes in docs/architecture.md."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest

from app.core.manifest import MANIFEST_FILE, Manifest, ManifestError, load_manifest, parse_manifest

UNSLOTH = "unsloth/Llama-4-Scout-17B-16E-Instruct-GGUF"
GGML = "ggml-org/Llama-4-Scout-17B-16E-Instruct-GGUF"
BARTOWSKI = "bartowski/meta-llama_Llama-4-Scout-17B-16E-Instruct-GGUF"
N = "Llama-4-Scout-17B-16E-Instruct"

# (repo, path) -> (size, sha256) as docs/architecture.md gives them (None = not given there).
FACTS: dict[tuple[str, str], tuple[int | None, str | None]] = {
    (UNSLOTH, f"Q4_K_M/{N}-Q4_K_M-00001-of-00002.gguf"): (
        49_848_379_744,
        "fbe956902467171ed7c0c326e5d868771a84d46468d407abecd0f289297313f9",
    ),
    (UNSLOTH, f"Q4_K_M/{N}-Q4_K_M-00002-of-00002.gguf"): (
        15_511_520_608,
        "e7330ae14527f08e8a44a6a573b45084052b8822c4b8a5179c5cad9cd6f6f795",
    ),
    (GGML, f"mmproj-{N}-f16.gguf"): (
        1_746_780_608,
        "a7eec12068ae70f993fbba6eb350c095727be20f7a6ecbe6e431940c1a8823fb",
    ),
    (GGML, f"{N}-Q4_K_M-00002-of-00002.gguf"): (
        15_511_520_608,
        "53d9a61b90e38330daa4bb07afe56aa3e74a3d3aa31d344c053ebbdcfe5d59fe",
    ),
    (GGML, f"{N}-UD-IQ1_S.gguf"): (None, "27f0722ff2c4cc39f30f004877d0738c209c15d3a85f7415333bc7a11e50210b"),
    (BARTOWSKI, f"meta-llama_{N}-Q4_K_M/meta-llama_{N}-Q4_K_M-00001-of-00002.gguf"): (39_837_275_008, None),
    (BARTOWSKI, f"meta-llama_{N}-Q4_K_M/meta-llama_{N}-Q4_K_M-00002-of-00002.gguf"): (27_708_903_776, None),
}
UNSLOTH_QUANTS = {"UD-IQ1_S", "UD-IQ1_M", "UD-IQ2_XXS", "UD-Q2_K_XL", "UD-Q3_K_XL", "UD-Q4_K_XL", "Q4_K_M"}


@pytest.fixture(scope="module")
def manifest() -> Manifest:
    return load_manifest()


@pytest.fixture
def raw() -> dict[str, Any]:
    return json.loads(MANIFEST_FILE.read_text(encoding="utf-8"))


def test_every_expected_build_is_listed(manifest: Manifest) -> None:
    by_repo = manifest.by_repo()
    assert {b.quantization for b in by_repo[UNSLOTH]} == UNSLOTH_QUANTS
    assert {b.quantization for b in by_repo[GGML]} >= {"Q4_K_M", "UD-IQ1_S"}
    assert [b.quantization for b in by_repo[BARTOWSKI]] == ["Q4_K_M"]
    assert len({b.id for b in manifest.builds}) == len(manifest.builds)
    assert [b.id for b in manifest.builds if b.suggested] == ["unsloth-ud-q2_k_xl"]


def test_sizes_and_hashes_agree_with_the_facts(manifest: Manifest) -> None:
    listed = {(f.repo_id, f.path): (f.size, f.sha256) for b in manifest.builds for f in b.all_files}
    for key, (size, sha) in FACTS.items():
        assert key in listed, key
        got_size, got_sha = listed[key]
        assert got_size == size, key
        assert got_sha == sha, key
    # nothing invented: every known value in the manifest comes from the facts
    for key, (size, sha) in listed.items():
        if size is not None or sha is not None:
            assert key in FACTS, f"{key} has a size/sha256 that docs/architecture.md does not give"


def test_every_build_has_the_required_fields(manifest: Manifest) -> None:
    for b in manifest.builds:
        assert b.projector is not None
        assert (b.projector.repo_id, b.projector.path) == (GGML, f"mmproj-{N}-f16.gguf")
        assert b.licence.name == "Llama 4 Community License"
        assert (b.recommended.temperature, b.recommended.top_p, b.recommended.min_p) == (0.6, 0.9, 0.01)
        assert b.recommended.context >= 4096
        assert b.who_for
        assert b.display_name
        assert 1.5 < b.bits_per_weight < 6
        assert b.revision_is_pinned or "resolves" in b.revision_note
        assert b.gated is (b.repo_id == BARTOWSKI)
        if b.is_split:
            names = [f.name for f in b.files]
            assert names == sorted(names)
            assert all(f"-of-{len(names):05d}.gguf" in n for n in names)
        # one folder per build, so shard base names must not collide
        assert len({f.name for f in b.all_files}) == len(b.all_files)


def test_total_size_includes_the_projector(manifest: Manifest) -> None:
    q4 = manifest.build("unsloth-q4_k_m")
    assert Manifest.total_size(q4) == 49_848_379_744 + 15_511_520_608 + 1_746_780_608
    bart = manifest.build("bartowski-q4_k_m")
    assert Manifest.total_size(bart) == 39_837_275_008 + 27_708_903_776 + 1_746_780_608
    iq1 = manifest.build("unsloth-ud-iq1_s")
    assert Manifest.total_size(iq1) is None  # sizes unknown offline
    assert Manifest.estimated_size(iq1) == 33_800_000_000 + 1_746_780_608


@pytest.mark.parametrize(
    ("mutate", "error"),
    [
        (
            lambda d: d["builds"][3]["files"][0].update(sha256="abc"),
            r"builds\[3\]\.files\[0\]\.sha256: expected 64 hex",
        ),
        (
            lambda d: d["builds"][0]["files"][0].update(size=-5),
            r"builds\[0\]\.files\[0\]\.size: expected an integer",
        ),
        (lambda d: d["builds"][1].pop("repo_id"), r"builds\[1\]\.repo_id: missing"),
        (lambda d: d["builds"][1].update(revision_note=""), r"builds\[1\]\.revision_note: required"),
        (lambda d: d["builds"][2].update(gated="no"), r"builds\[2\]\.gated: expected true or false"),
        (lambda d: d["builds"][2]["projector"].update(path="../x.gguf"), r"builds\[2\]\.projector\.path"),
        (lambda d: d["builds"][0]["recommended"].update(top_p=3), r"builds\[0\]\.recommended\.top_p"),
        (lambda d: d["builds"][6]["files"].reverse(), r"builds\[6\]\.files\[0\]\.path: split parts must be"),
        (lambda d: d["builds"][1].update(id=d["builds"][0]["id"]), r"builds\[1\]\.id: duplicate"),
        (lambda d: d.update(schema_version=2), r"schema_version: expected 1"),
    ],
)
def test_schema_errors_name_the_field(raw: dict[str, Any], mutate: Any, error: str) -> None:
    doc = copy.deepcopy(raw)
    mutate(doc)
    with pytest.raises(ManifestError, match=error):
        parse_manifest(doc)


def test_a_pinned_commit_needs_no_note(raw: dict[str, Any]) -> None:
    doc = copy.deepcopy(raw)
    doc["builds"][0].update(revision="a" * 40, revision_note="")
    assert parse_manifest(doc).builds[0].revision_is_pinned


def test_manifest_json_is_canonical_lower_case_hex(raw: dict[str, Any]) -> None:
    text = MANIFEST_FILE.read_text(encoding="utf-8")
    assert not re.search(r'"sha256": "[0-9a-f]*[A-F]', text)
    assert raw["schema_version"] == 1
