"""Figures the reliability tests report (shown with ``pytest -s``; recorded in docs/reliability.md)."""

from __future__ import annotations

import sys


def emit(text: str) -> None:
    sys.stdout.write("\n" + text + "\n")
    sys.stdout.flush()
