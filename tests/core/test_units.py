"""The one formatter for bytes, token counts and context sizes (GB = 10^9 bytes)."""

from __future__ import annotations

from app.core.units import (
    format_bytes,
    format_context,
    format_gb,
    format_rate,
    format_token_count,
    format_tokens,
    gb_number,
)


def test_bytes_are_decimal_gigabytes_and_small_amounts_megabytes() -> None:
    assert format_bytes(67_100_000_000) == "67.1 GB"
    assert format_bytes(24 * 1024**3) == "25.8 GB"  # a "24 GB" GPU holds 24 GiB
    assert format_bytes(100_000_000) == "0.1 GB"
    assert format_bytes(45_600_000) == "45.6 MB"
    assert format_bytes(-5) == "0.0 MB"
    assert format_gb(45_600_000) == "0.0 GB"  # side-by-side figures stay in one unit
    assert gb_number(22_800_000_000) == "22.8"
    assert format_rate(12_300_000) == "12.3 MB/s"
    assert format_rate(0) == ""


def test_token_counts_use_k_for_thousands() -> None:
    assert [format_tokens(n) for n in (0, 850, 1000, 2048, 12_345, 99_949, 412_000)] == [
        "0",
        "850",
        "1.0k",
        "2.0k",
        "12.3k",
        "99.9k",
        "412k",
    ]
    assert format_token_count(12_345) == "≈ 12.3k tokens"


def test_context_sizes_use_binary_k_and_m() -> None:
    assert [format_context(n) for n in (4096, 32768, 1 << 20, 8 << 20, 3 << 19, 4100, 512)] == [
        "4k",
        "32k",
        "1M",
        "8M",
        "1536k",
        "4,100",
        "512",
    ]
