"""llama.cpp's own programs, ``llama-server`` and ``rpc-server``, built by ``scripts/bootstrap.py``
from the same llama.cpp source as the installed llama-cpp-python (its source archive's
``vendor/llama.cpp``), so that their RPC protocol and model support match the engine's.

They live in ``~/.cache/scout-chat/llama-tools/<version>-cpu[-noamx]-<flags>/bin`` beside a
``tools.json`` that names the llama-cpp-python version they were built for (``SCOUT_LLAMA_TOOLS``
may point at such a folder). The folder also holds the ``libggml-rpc`` library of that build.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

MANIFEST = "tools.json"


def default_cache() -> Path:
    default = Path.home() / ".cache" / "scout-chat" / "llama-tools"
    return Path(os.environ.get("SCOUT_LLAMA_TOOLS_CACHE", default))


def _exe(name: str) -> str:
    return name + (".exe" if sys.platform == "win32" else "")


@dataclass(frozen=True)
class LlamaTools:
    folder: Path
    version: str  # the llama-cpp-python version whose llama.cpp they were built from

    @property
    def bin_dir(self) -> Path:
        return self.folder / "bin"

    @property
    def llama_server(self) -> Path:
        return self.bin_dir / _exe("llama-server")

    @property
    def rpc_server(self) -> Path:
        return self.bin_dir / _exe("rpc-server")

    @property
    def rpc_library(self) -> Path | None:
        """The build's ``libggml-rpc`` (the RPC client the engine loads beside its own ggml)."""
        for name in ("libggml-rpc.so", "libggml-rpc.dylib", "ggml-rpc.dll"):
            if (self.bin_dir / name).exists():
                return self.bin_dir / name
        return None


def installed_llama_cpp_version() -> str:
    try:
        return importlib.metadata.version("llama_cpp_python")
    except importlib.metadata.PackageNotFoundError:
        return ""


def find_llama_tools(version: str | None = None) -> LlamaTools | None:
    """The tools built for ``version`` (default: the installed llama-cpp-python), or None."""
    wanted = installed_llama_cpp_version() if version is None else version
    if not wanted:
        return None
    override = os.environ.get("SCOUT_LLAMA_TOOLS")
    candidates = [Path(override)] if override else sorted(default_cache().glob("*/"))
    for folder in candidates:
        try:
            manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(manifest, dict) or manifest.get("llama_cpp_python") != wanted:
            continue
        tools = LlamaTools(folder, wanted)
        if tools.llama_server.exists() and tools.rpc_server.exists():
            return tools
    return None


def why_missing() -> str:
    """The sentence for a test skip or ``--check`` when :func:`find_llama_tools` finds nothing."""
    version = installed_llama_cpp_version() or "(not installed)"
    return (
        f"llama.cpp's llama-server and rpc-server for llama-cpp-python {version} are not built "
        f"(in {default_cache()}); `make test` or `python3 scripts/bootstrap.py` builds them"
    )
