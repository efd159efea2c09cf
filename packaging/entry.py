"""PyInstaller entry point: the same as ``scout-chat`` / ``python -m app``."""

from __future__ import annotations

import multiprocessing
import sys

if __name__ == "__main__":
    multiprocessing.freeze_support()
    from app.main import main

    sys.exit(main(sys.argv[1:]))
