"""The set-up's cached build of llama.cpp's llama-server and rpc-server (scripts/bootstrap.py) and
how the app finds it (app/core/engine/llama_tools.py): one folder per llama-cpp-python version
and build flags, reused when its manifest and programs are there, found by the installed version."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from app.core.engine.llama_tools import find_llama_tools
from tests.test_system_libs import bootstrap

if TYPE_CHECKING:
    from pathlib import Path


def test_the_folder_is_keyed_by_version_and_flags(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SCOUT_LLAMA_TOOLS_CACHE", str(tmp_path))
    folder = bootstrap.llama_tools_dir("0.3.36")
    assert folder.parent == tmp_path
    assert folder.name.startswith("0.3.36-cpu-")
    args = bootstrap.llama_tools_cmake_args()
    assert "-DGGML_RPC=ON" in args
    assert "-DLLAMA_CURL=OFF" in args
    assert ("-noamx-" in folder.name) == any("-mno-amx-tile" in arg for arg in args)
    assert bootstrap.llama_tools_dir("0.3.37") != folder


def test_a_built_folder_is_reused_and_found_by_the_app(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SCOUT_LLAMA_TOOLS_CACHE", str(tmp_path))
    monkeypatch.delenv("SCOUT_LLAMA_TOOLS", raising=False)
    monkeypatch.setattr(bootstrap, "installed_llama_cpp_version", lambda: "9.9.9")
    folder = bootstrap.llama_tools_dir("9.9.9")
    (folder / "bin").mkdir(parents=True)
    for name in ("llama-server", "rpc-server", "libggml-rpc.so"):
        (folder / "bin" / name).write_bytes(b"")
    (folder / "tools.json").write_text(json.dumps({"llama_cpp_python": "9.9.9"}))
    monkeypatch.setattr(bootstrap.shutil, "which", lambda _name: pytest.fail("nothing may be built"))
    assert bootstrap.ensure_llama_tools() == folder
    assert "cached in" in capsys.readouterr().err
    tools = find_llama_tools("9.9.9")
    assert tools is not None
    assert tools.folder == folder
    assert tools.rpc_library == folder / "bin" / "libggml-rpc.so"
    assert find_llama_tools("9.9.8") is None  # another llama-cpp-python: another llama.cpp


def test_the_step_can_be_skipped(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SCOUT_SKIP_LLAMA_TOOLS", "1")
    assert bootstrap.ensure_llama_tools() is None
    assert "their tests will skip" in capsys.readouterr().err
