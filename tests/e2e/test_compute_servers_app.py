"""The whole app with compute servers in Settings → Machines: the last model reloaded at start is
split across two real loopback ``rpc-server`` processes as the plan says, and a compute server that
is down at start is named in the banner, nothing is half-loaded, and the banner offers Retry or
loading on this computer alone. Skipped, with the reason, when the set-up has not built the tools."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import pytest

from app.config import Settings, load_settings
from app.core.engine.llama_tools import find_llama_tools, why_missing
from tests.remote_servers import free_port, rpc_server, sized_rpc_servers

if TYPE_CHECKING:
    from pathlib import Path

    from pytestqt.qtbot import QtBot

    from tests.launch import AppLauncher

TOOLS = find_llama_tools()
pytestmark = [
    pytest.mark.skipif(TOOLS is None, reason=why_missing()),
    pytest.mark.qt_log_ignore("This plugin does not support propagateSizeHints"),
]
MIB = 1024**2


def rpc_buffers(text: str) -> dict[str, float]:
    """The model buffers llama.cpp put on compute servers: endpoint -> MiB, the last one named
    (the load's: the planner's dry runs come first)."""
    found = re.findall(r"RPC\d+\[([^\]]+)\] model buffer size =\s+([\d.]+) MiB", text)
    return {endpoint: float(mib) for endpoint, mib in found}


def test_the_last_model_is_reloaded_at_start_across_two_compute_servers_as_planned(
    start_app: AppLauncher, qtbot: QtBot, tiny_model: Path, tmp_path: Path
) -> None:
    assert TOOLS is not None
    with sized_rpc_servers(TOOLS.rpc_server, tmp_path) as (small, big):
        servers = (f"127.0.0.1:{small.port}", f"127.0.0.1:{big.port}")
        settings = Settings(n_threads=1, n_ctx=512, last_model=str(tiny_model), compute_servers=servers)
        application = start_app(tmp_path / "data", settings=settings)
        models = application.controller.models
        if models.model_info is None:
            with qtbot.waitSignal(models.model_loaded, timeout=120_000):
                pass
        plan = models.plan
        assert plan is not None
        # the plan: 1 : 4 of free memory, so 1 of the 4 layers on the small server, the rest and
        # the output layer on the big one, nothing here
        assert f"1 layer on {servers[0]} (1.1 GB free)" in plan.explanation
        assert f"3 layers and the output layer on {servers[1]} (4.3 GB free)" in plan.explanation
        # llama.cpp's load log: the weights on both servers, as much on each as the plan projected
        text = (application.paths.log_dir / "engine.log").read_text(errors="replace")
        buffers = rpc_buffers(text)
        assert set(buffers) == set(servers), text[-3000:]
        for endpoint, usage in zip(servers, plan.devices, strict=True):
            assert abs(buffers[endpoint] * MIB - usage.weights) <= 10_486  # MiB, 2 decimals
        done: list[str] = []
        application.controller.conversations.generation_finished.connect(lambda *_: done.append("done"))
        application.controller.update_settings(application.controller.settings.replace(max_tokens=8))
        application.controller.conversations.send("Say hello.")
        qtbot.waitUntil(lambda: bool(done), timeout=60_000)
        assert application.controller.conversations.messages()[-1].content


def test_a_compute_server_down_at_start_is_named_and_nothing_is_half_loaded(
    start_app: AppLauncher, qtbot: QtBot, tiny_model: Path, tmp_path: Path
) -> None:
    assert TOOLS is not None
    down = f"127.0.0.1:{free_port()}"
    with rpc_server(TOOLS.rpc_server, tmp_path / "rpc-up.log") as up:
        servers = (f"127.0.0.1:{up.port}", down)
        settings = Settings(n_threads=1, n_ctx=512, last_model=str(tiny_model), compute_servers=servers)
        application = start_app(tmp_path / "data", settings=settings)
        models, banner = application.controller.models, application.window.error_banner
        log = application.paths.log_dir / "engine.log"

        def offers_the_choice() -> None:
            assert banner.isVisible()
            assert banner.action_button.isVisible()
            assert banner.second_button.isVisible()
            assert not models.is_loading

        qtbot.waitUntil(offers_the_choice, timeout=120_000)
        assert (banner.action_button.text(), banner.second_button.text()) == ("Retry", "Load here only")
        assert banner.text().startswith(f"{tiny_model.name} was not loaded: Nothing answers at {down}")
        assert banner.text().endswith(f"Retry, or load {tiny_model.name} on this computer alone.")
        # nothing half-loaded: no model, and no weights sent to the server that is up
        assert models.model_info is None
        assert "model buffer size" not in log.read_text(errors="replace")

        banner.action_button.click()  # Retry: still down, the same choice again
        assert models.is_loading
        qtbot.waitUntil(offers_the_choice, timeout=60_000)
        assert f"Nothing answers at {down}" in banner.text()
        assert models.model_info is None

        before = log.stat().st_size
        with qtbot.waitSignal(models.model_loaded, timeout=60_000):
            banner.second_button.click()  # Load here only
        with log.open("rb") as f:
            f.seek(before)
            this_load = f.read().decode("utf-8", "replace")
        assert f"loaded {tiny_model.name}" in this_load
        assert "using device RPC" not in this_load
        assert rpc_buffers(this_load) == {}
        assert models.plan is not None
        assert not models.plan.remote_devices
        # the compute servers stay in Settings → Machines for the next load
        assert load_settings(application.paths).compute_servers == servers
