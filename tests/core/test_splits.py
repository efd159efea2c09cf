"""Split GGUF names: one parser, its case rules, and what is not a split name."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.core.splits import (
    first_split_part,
    is_first_part,
    missing_split_parts,
    parse_split_name,
    split_file_name,
    split_parts,
)


def test_a_lower_case_name_parses_and_names_its_siblings() -> None:
    split = parse_split_name("Llama-4-Scout-Q4_K_M-00002-of-00003.gguf")
    assert split is not None
    assert (split.stem, split.number, split.count, split.is_first) == ("Llama-4-Scout-Q4_K_M", 2, 3, False)
    assert split.parts() == (
        "Llama-4-Scout-Q4_K_M-00001-of-00003.gguf",
        "Llama-4-Scout-Q4_K_M-00002-of-00003.gguf",
        "Llama-4-Scout-Q4_K_M-00003-of-00003.gguf",
    )


@pytest.mark.parametrize(
    ("name", "first"),
    [
        ("M-00002-OF-00002.GGUF", "M-00001-OF-00002.GGUF"),
        ("M-00002-Of-00002.Gguf", "M-00001-Of-00002.Gguf"),
        ("m-00002-of-00002.GGUF", "m-00001-of-00002.GGUF"),
    ],
)
def test_upper_and_mixed_case_parse_and_keep_their_case(name: str, first: str) -> None:
    split = parse_split_name(name)
    assert split is not None
    assert split.part(1) == first
    assert split.part(2) == name


@pytest.mark.parametrize(
    "name",
    [
        "model.gguf",
        "model-Q4_K_M.gguf",
        "model-0001-of-0002.gguf",  # four digits: not llama.cpp's format
        "model-000001-of-000002.gguf",  # six digits
        "model-00001-of-00002.bin",
        "model-00001-of-00002.gguf.part",
        "-00001-of-00002.gguf",  # no stem
        "model-00000-of-00002.gguf",  # parts count from 1
        "model-00003-of-00002.gguf",  # beyond the count
        "model-00001-of-00000.gguf",
        "mmproj-F16.gguf",
    ],
)
def test_names_that_are_not_split_parts(name: str) -> None:
    assert parse_split_name(name) is None
    assert is_first_part(name)
    assert split_parts(Path("/m") / name) == (Path("/m") / name,)


def test_five_digit_counts_and_the_first_part() -> None:
    assert split_file_name("big", 1, 12345) == "big-00001-of-12345.gguf"
    last = parse_split_name("big-12345-of-12345.gguf")
    assert last is not None
    assert (last.number, last.count) == (12345, 12345)
    assert is_first_part("big-00001-of-12345.gguf")
    assert not is_first_part("big-00002-of-12345.gguf")
    assert not is_first_part("BIG-00002-OF-12345.GGUF")


def test_first_part_and_missing_parts_on_disk(tmp_path: Path) -> None:
    names = [split_file_name("m", k, 3) for k in (1, 2, 3)]
    for name in names[1:]:
        (tmp_path / name).write_bytes(b"GGUF")
    second = tmp_path / names[1]
    assert first_split_part(second) == second  # the first part is not there: keep what was given
    assert missing_split_parts(second) == [names[0]]
    (tmp_path / names[0]).write_bytes(b"GGUF")
    assert first_split_part(second) == tmp_path / names[0]
    assert missing_split_parts(second) == []
    assert split_parts(second) == tuple(tmp_path / n for n in names)
    assert missing_split_parts(tmp_path / "whole.gguf") == []


def test_an_upper_case_part_finds_its_upper_case_siblings(tmp_path: Path) -> None:
    for k in (1, 2):
        (tmp_path / f"M-0000{k}-OF-00002.GGUF").write_bytes(b"GGUF")
    assert first_split_part(tmp_path / "M-00002-OF-00002.GGUF") == tmp_path / "M-00001-OF-00002.GGUF"
    assert missing_split_parts(tmp_path / "M-00002-OF-00002.GGUF") == []
