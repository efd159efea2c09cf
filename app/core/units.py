"""How sizes and token counts are written for people: the one place that formats them.

Bytes use **decimal units**: 1 GB = 10^9 bytes and 1 MB = 10^6 bytes, as Hugging Face, disk makers
and download sizes do. Every memory figure the app shows (RAM, GPU memory, model sizes, what a
build needs) goes through :func:`format_bytes` or :func:`gb_number`, so one amount reads the same
on every screen. (The planner's internal safety margins may be binary constants; they are never
shown as such.)

Token counts use k = 1000 (``12.3k``). Context *sizes* (a setting: powers of two, as llama.cpp
users write them) use k = 1024 and M = 1024²: ``32k`` is 32,768 tokens.
"""

from __future__ import annotations

GB = 10**9
MB = 10**6


def gb_number(n_bytes: float) -> str:
    """``12.3`` (gigabytes, one decimal, no unit): for ``12.3 of 24.0 GB`` style figures."""
    return f"{n_bytes / GB:.1f}"


def format_gb(n_bytes: float) -> str:
    """``12.3 GB`` whatever the amount (for figures compared side by side)."""
    return f"{gb_number(n_bytes)} GB"


def format_bytes(n_bytes: float) -> str:
    """``12.3 GB``; amounts under 0.1 GB in megabytes (``45.6 MB``)."""
    if n_bytes >= 100 * MB:
        return format_gb(n_bytes)
    return f"{max(n_bytes, 0) / MB:.1f} MB"


def format_tokens(count: int) -> str:
    """A token count: ``850``, ``12.3k``, ``412k``."""
    if count >= 100_000:
        return f"{count / 1000:.0f}k"
    if count >= 1000:
        return f"{count / 1000:.1f}k"
    return str(count)


def format_token_count(count: int) -> str:
    """``≈ 850 tokens``, ``≈ 12.3k tokens``, ``≈ 412k tokens`` (an estimate, said as one)."""
    return f"≈ {format_tokens(count)} tokens"


def format_context(n_ctx: int) -> str:
    """A context size: ``4k``, ``32k``, ``8M`` for multiples of 1024 / 1024², else ``4,100``."""
    if n_ctx >= 1 << 20 and n_ctx % (1 << 20) == 0:
        return f"{n_ctx >> 20}M"
    if n_ctx >= 1024 and n_ctx % 1024 == 0:
        return f"{n_ctx // 1024}k"
    return f"{n_ctx:,}"


def format_rate(bytes_per_s: float) -> str:
    """A download speed: ``12.3 MB/s`` (empty when nothing is moving)."""
    return f"{bytes_per_s / MB:.1f} MB/s" if bytes_per_s > 0 else ""
