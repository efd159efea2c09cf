"""Entry point: ``scout-chat`` and ``python -m app``."""

from __future__ import annotations

import multiprocessing
import sys


def main() -> int:
    from app.main import main as real_main

    return real_main(sys.argv[1:])


if __name__ == "__main__":
    multiprocessing.freeze_support()  # a packaged app's engine process starts from this executable
    raise SystemExit(main())
