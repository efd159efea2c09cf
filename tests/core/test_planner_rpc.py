"""The planner with llama.cpp RPC compute servers, on device figures: layers spread over the
servers and this machine by free memory, the split explained, the network in the forecast."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from app.core.forecast import LOOPBACK_GBS, NETWORK_GBS
from app.core.gguf_info import GGUFInfo, read_gguf_info
from app.core.hardware import (
    GIB,
    Device,
    HardwareInfo,
    SimulatedHardware,
    describe_hardware,
    with_remote_devices,
)
from app.core.planner import LoadRequest, make_plan, plan_load
from app.core.projection import layer_devices
from app.core.scout_shape import write_scout_shape

if TYPE_CHECKING:
    from pathlib import Path


def server(endpoint: str, free_gb: float, rtt_ms: float = 0.5, index: int = 0) -> Device:
    return Device(
        name=f"RPC{index}",
        backend="RPC",
        free_bytes=int(free_gb * GIB),
        total_bytes=int(free_gb * GIB),
        description=f"compute server {endpoint}",
        endpoint=endpoint,
        rtt_s=rtt_ms / 1000,
    )


@pytest.fixture(scope="module")
def scout(tmp_path_factory: pytest.TempPathFactory) -> GGUFInfo:
    folder = tmp_path_factory.mktemp("scout")
    return read_gguf_info(write_scout_shape(folder / "scout-Q4_K_M.gguf", "Q4_K_M")[0])


def laptop(*remote: Device, ram_gb: float = 32) -> HardwareInfo:
    return with_remote_devices(SimulatedHardware.cpu_only(ram_gb).probe(), remote)


def layers_on(info: GGUFInfo, plan_gpu_layers: int, hw: HardwareInfo) -> list[int]:
    where = layer_devices(info.n_layer, plan_gpu_layers, hw.devices)
    return [sum(1 for d in where[: info.n_layer] if d == i) for i in range(-1, len(hw.devices))]


def test_layers_follow_the_servers_free_memory(scout: GGUFInfo) -> None:
    hw = laptop(server("workstation:50052", 48, index=0), server("nas:50052", 24, index=1))
    plan = make_plan(scout, hw)
    assert plan.fits
    here, first, second = layers_on(scout, plan.n_gpu_layers, hw)
    assert first + second + here == scout.n_layer
    # twice the free memory, twice the layers (the output layer, last, counts as one)
    assert abs(first - 2 * (second + 1)) <= 1
    assert [u.name for u in plan.devices] == ["RPC0", "RPC1"]
    assert all(u.total <= u.budget for u in plan.devices)
    assert plan.label == ("Fits on the compute servers" if not plan.n_cpu_moe and not here else plan.label)
    assert f"{first} layers on workstation:50052 (51.5 GB free)" in plan.explanation
    assert "on nas:50052 (25.8 GB free)" in plan.explanation
    assert plan.remote_devices == hw.devices


def test_what_the_servers_cannot_hold_stays_here_and_is_said(scout: GGUFInfo) -> None:
    hw = laptop(server("workstation:50052", 24), ram_gb=64)  # Scout Q4 is ~65 GB: most stays here
    plan = make_plan(scout, hw)
    assert plan.fits
    here, remote = layers_on(scout, plan.n_gpu_layers, hw)
    assert remote > 0
    assert plan.n_cpu_moe or here  # experts of some layers (or whole layers) in this computer's RAM
    assert plan.devices[0].weights <= plan.devices[0].budget
    assert "Layers spread by free memory:" in plan.explanation
    assert "on workstation:50052 (25.8 GB free)" in plan.explanation
    if here:
        assert f"{here} here" in plan.explanation
    else:
        assert f"the experts of {plan.n_cpu_moe} layers in this computer's RAM" in plan.explanation
    assert plan.label.startswith("Split compute servers")


def test_the_network_costs_each_token_and_a_slower_link_costs_more(scout: GGUFInfo) -> None:
    lan = make_plan(scout, laptop(server("192.168.1.20:50052", 80, rtt_ms=0.5)))
    loop = make_plan(scout, laptop(server("127.0.0.1:50052", 80, rtt_ms=0.5)))
    far = make_plan(scout, laptop(server("192.168.1.20:50052", 80, rtt_ms=5)))
    assert lan.n_gpu_layers == loop.n_gpu_layers == scout.n_layer + 1  # all on the server
    # the activations there and back and the logits back, at the link's rate, + round trips
    sent = 2 * scout.n_embd * 4 + scout.vocab_size * 4
    assert lan.network_s_per_token == pytest.approx(2 * 0.5e-3 + sent / (NETWORK_GBS * 1e9))
    assert loop.network_s_per_token == pytest.approx(2 * 0.5e-3 + sent / (LOOPBACK_GBS * 1e9))
    assert far.tokens_per_s < lan.tokens_per_s < loop.tokens_per_s
    assert (
        "the network adds ≈ 8.3 ms a token (round trip 0.5 ms measured, 1 Gbit/s Ethernet assumed)"
        in lan.explanation
    )


def test_the_load_names_the_servers_with_the_planned_split(tmp_path: Path) -> None:
    from app.core.tiny_model import write_tiny_model

    model = write_tiny_model(tmp_path / "tiny.gguf")[0]
    hw = laptop(server("127.0.0.1:50052", 1, index=0), server("127.0.0.1:50053", 4, index=1))
    servers = ("127.0.0.1:50052", "127.0.0.1:50053")
    planned = plan_load(LoadRequest(model, n_threads=1, compute_servers=servers), hw)
    assert planned.params.compute_servers == servers
    assert planned.params.tensor_split == (float(GIB), float(4 * GIB))
    assert planned.params.n_gpu_layers == planned.plan.n_gpu_layers > 0  # type: ignore[union-attr]


def test_hardware_lists_the_servers_devices_with_their_free_memory() -> None:
    local = SimulatedHardware.nvidia(24, 64).probe()
    hw = with_remote_devices(local, [server("workstation:50052", 48)])
    assert [d.name for d in hw.devices] == ["RPC0", "CUDA0"]  # llama.cpp puts the servers first
    assert hw.remote_devices[0].endpoint == "workstation:50052"
    assert hw.local_devices == local.devices
    lines = describe_hardware(hw)
    assert lines[0] == "compute server workstation:50052: 51.5 GB free of 51.5 GB"
