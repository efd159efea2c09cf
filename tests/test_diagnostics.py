"""``scout-chat --check``: the report's sections, devices, installed models with plans; advice."""

from __future__ import annotations

import io
import re
import shutil
from typing import TYPE_CHECKING

from app.config import AppPaths
from app.core.hardware import SimulatedHardware
from app.core.manifest import load_manifest
from app.diagnostics import (
    SECTIONS,
    collect_report,
    cpu_features,
    format_report,
    installed_models,
    recommend_build,
)
from app.main import main

if TYPE_CHECKING:
    from pathlib import Path

    import pytest


def parse_report(text: str) -> dict[str, dict[str, str]]:
    """``== Section ==`` headers, then ``label: value`` lines (indented lines: sub-items)."""
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in text.splitlines():
        header = re.fullmatch(r"== (.+) ==", line)
        if header:
            current = sections.setdefault(header.group(1), {})
        elif current is not None and ":" in line:
            label, _, value = line.partition(":")
            current.setdefault(label.strip(), value.strip())
    return sections


def test_check_prints_every_section_and_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--check", "--data-dir", str(tmp_path / "data")])
    out = capsys.readouterr().out
    assert code == 0
    report = parse_report(out)
    assert list(report) == list(SECTIONS)
    versions = report["Versions"]
    assert versions["Scout Chat"] == "0.1.0"
    assert re.match(r"3\.\d+\.\d+", versions["Python"])
    assert re.match(r"6\.\d+", versions["Qt"])
    assert re.match(r"6\.\d+", versions["PySide6"])
    assert re.match(r"0\.3\.\d+", versions["llama-cpp-python"])
    assert "CPU" in report["llama.cpp"]["Backends"]
    assert re.match(
        r"starts \(spawn\): pid \d+, llama-cpp-python 0\.3\.\d+", report["llama.cpp"]["Engine process"]
    )
    assert "AVX" in report["llama.cpp"]["CPU features"] or report["llama.cpp"]["CPU features"]
    # this CI machine has no GPU that llama.cpp can use
    assert report["Devices"]["Accelerators"].startswith("CPU only")
    assert re.match(r"[\d.]+ GB available of [\d.]+ GB", report["Memory"]["RAM"])
    assert report["Directories"]["Models"].startswith(str(tmp_path / "data" / "models"))
    assert "free" in report["Directories"]["Models"]
    assert report["Installed models"]["Models"].startswith("none found")
    assert report["Recommendation"]["Build"]


def test_cpu_features_from_system_info() -> None:
    info = "CPU : SSE3 = 1 | AVX = 1 | AVX512 = 0 | AVX2 = 1 | CUDA : ARCHS = 890 | USE_GRAPHS = 1 |"
    assert cpu_features(info) == ["SSE3", "AVX", "AVX2", "USE_GRAPHS"]


def _install_build(models: Path, build_id: str, model_src: Path) -> None:
    """The tiny model under the build's file name; a sparse projector of the manifest's exact size."""
    build = load_manifest().build(build_id)
    folder = models / build.id
    folder.mkdir(parents=True)
    shutil.copy(model_src, folder / build.files[0].name)
    assert build.projector is not None
    assert build.projector.size is not None
    with (folder / build.projector.name).open("wb") as fh:
        fh.truncate(build.projector.size)


def test_installed_models_have_state_and_plan(tmp_path: Path, tiny_model: Path, tiny_projector: Path) -> None:
    paths = AppPaths.under(tmp_path / "data").ensure()
    # a manifest build (single file, sizes unknown in the manifest: present = installed)
    _install_build(paths.models_dir, "unsloth-ud-iq1_s", tiny_model)
    # a partial download of another build
    partial = paths.models_dir / "unsloth-ud-iq1_m"
    partial.mkdir()
    (partial / "Llama-4-Scout-17B-16E-Instruct-UD-IQ1_M.gguf.part").write_bytes(b"GGUF")
    # a loose GGUF and its projector (the projector is not listed as a model)
    loose = paths.models_dir / "mine"
    loose.mkdir()
    shutil.copy(tiny_model, loose / "my-model.gguf")
    shutil.copy(tiny_projector, loose / "mmproj-my-model.gguf")
    hardware = SimulatedHardware.cpu_only(16).probe()
    found = {m.name: m for m in installed_models(paths.models_dir, load_manifest(), hardware)}
    assert set(found) == {"Scout UD-IQ1_S (unsloth)", "Scout UD-IQ1_M (unsloth)", "my-model.gguf"}
    iq1s = found["Scout UD-IQ1_S (unsloth)"]
    assert iq1s.state == "installed"
    assert iq1s.projector is not None
    assert iq1s.plan_text.startswith("CPU only: all ")
    assert found["Scout UD-IQ1_M (unsloth)"].state == "partial"
    assert "unfinished" in found["Scout UD-IQ1_M (unsloth)"].plan_text
    mine = found["my-model.gguf"]
    assert mine.state == "file"
    assert mine.projector is not None
    assert mine.projector.name == "mmproj-my-model.gguf"

    out = io.StringIO()
    report = collect_report(paths, hardware_probe=SimulatedHardware.nvidia(24, 64))
    out.write(format_report(report))
    text = out.getvalue()
    parsed = parse_report(text)
    assert parsed["Devices"]["CUDA0"].startswith("NVIDIA GeForce RTX 4090 (CUDA) — 25.8 GB free of 25.8 GB")
    assert "installed, build unsloth-ud-iq1_s" in parsed["Installed models"]["Scout UD-IQ1_S (unsloth)"]
    assert "partial, build unsloth-ud-iq1_m" in parsed["Installed models"]["Scout UD-IQ1_M (unsloth)"]
    assert re.search(r"^  plan: Fits fully on GPU: all \d+ layers on the NVIDIA GeForce RTX 4090", text, re.M)
    assert "  vision projector: " in text


def test_recommendation_for_a_24gb_gpu_and_64gb_ram() -> None:
    rec = recommend_build(load_manifest(), SimulatedHardware.nvidia(24, 64).probe())
    assert not rec.too_small
    assert rec.best is not None
    assert rec.best.build.quantization == "Q4_K_M"
    assert rec.best.plan.verdict == "split GPU+RAM"
    assert rec.summary.startswith("Recommended for this machine: Scout Q4_K_M")


def test_recommendation_for_cpu_only_16gb_is_too_small() -> None:
    rec = recommend_build(load_manifest(), SimulatedHardware.cpu_only(16).probe())
    assert rec.too_small
    assert rec.smallest is not None
    assert rec.smallest.build.quantization == "UD-IQ1_S"
    assert re.search(r"too small .* needs about 3\d\.\d GB of RAM \+ VRAM", rec.summary)


def test_recommendation_for_cpu_only_64gb_leaves_room_for_context() -> None:
    rec = recommend_build(load_manifest(), SimulatedHardware.cpu_only(64).probe())
    assert rec.best is not None
    assert rec.best.plan.verdict == "CPU only"
    assert rec.best.plan.n_ctx >= rec.best.build.recommended.context


def test_self_test_uses_the_vision_projector_beside_the_model(
    tmp_path: Path, tiny_model: Path, tiny_projector: Path
) -> None:
    import os
    import subprocess
    import sys

    folder = tmp_path / "model"
    folder.mkdir()
    model = folder / tiny_model.name
    shutil.copy(tiny_model, model)
    shutil.copy(tiny_projector, folder / tiny_projector.name)
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "app",
            "--self-test",
            "--model",
            str(model),
            "--data-dir",
            str(tmp_path / "d"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"vision projector {tiny_projector.name}" in done.stdout
    assert re.search(r"image turn: \d+ prompt tokens, [1-9]\d* tokens", done.stdout)
    assert done.stdout.rstrip().endswith("self-test OK")
