"""PlanPanel on Scout-shaped sparse GGUFs and simulated machines: verdicts, bars, live projection,
applying overrides through a real AppController (a FakeEngine "loads" the Scout-shaped file), and the
main window's entry points."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from PySide6.QtCore import QPoint, Qt
from PySide6.QtWidgets import QApplication

from app.core.hardware import SimulatedHardware
from app.core.planner import VERDICT_SPLIT, PlanOverrides, make_plan, plan_load
from app.core.scout_shape import write_scout_shape
from app.core.units import GB, format_context
from app.ui.main_window import MainWindow
from app.ui.plan_panel import PlanPanel, context_choices

if TYPE_CHECKING:
    from collections.abc import Callable

    from app.core.planner import LoadRequest, Plan, PlannedLoad
    from app.workers.controller import AppController

pytestmark = pytest.mark.qt_log_ignore("This plugin does not support propagateSizeHints")

SHOTS = Path(os.environ.get("SCOUT_UI_SHOTS", "/tmp/ui_shots"))


def simulated_planner(hardware: SimulatedHardware) -> Callable[[LoadRequest], PlannedLoad]:
    """The app's planner (header, plan, load parameters) on a simulated machine, no dry run."""
    return lambda request: plan_load(request, hardware.probe())


@pytest.fixture(scope="module")
def scout_q4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_scout_shape(tmp_path_factory.mktemp("scout") / "Llama-4-Scout-Q4_K_M.gguf", "Q4_K_M")[0]


@pytest.fixture
def controller(make_controller, load_fake_model, scout_q4: Path) -> AppController:
    """A controller with the Scout-shaped file loaded (no planner: no plan of the last load)."""
    c = make_controller()
    info = load_fake_model(c, scout_q4)
    assert info.path == scout_q4
    return c


def apply_and_wait(qtbot: Any, panel: PlanPanel, controller: AppController) -> str:
    """Click "Apply and reload"; the path the controller started loading (the load is waited for)."""
    with (
        qtbot.waitSignal(controller.models.model_loaded, timeout=5000),
        qtbot.waitSignal(controller.models.model_load_started) as started,
    ):
        qtbot.mouseClick(panel.apply_button, Qt.MouseButton.LeftButton)
    return started.args[0]


def make_panel(qtbot: Any, controller: Any, hardware: SimulatedHardware) -> PlanPanel:
    panel = PlanPanel(controller, hardware_probe=hardware)
    qtbot.addWidget(panel)
    panel.resize(640, 10)
    panel.show()
    qtbot.waitExposed(panel)
    return panel


def set_combo_data(combo: Any, value: object) -> None:
    index = combo.findData(value)
    assert index >= 0, value
    combo.setCurrentIndex(index)


def shoot(panel: PlanPanel, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    QApplication.processEvents()
    layout = panel.layout()
    assert layout is not None
    assert panel.height() >= layout.totalHeightForWidth(panel.width())  # nothing squeezed
    target = SHOTS / f"plan_{name}.png"
    assert panel.grab().save(str(target))
    return target


# -- verdicts and bars ----------------------------------------------------------------------


def test_24gb_gpu_splits_with_one_bar_per_device(qtbot, controller, scout_q4) -> None:
    hw = SimulatedHardware.nvidia(24, 64)
    panel = make_panel(qtbot, controller, hw)
    expected = make_plan(panel.info, hw.probe())
    assert panel.verdict_text() == "Split GPU + RAM"
    assert panel.verdict_label.property("kind") == "split"
    assert [r.usage.name for r in panel.device_rows] == ["CUDA0", "RAM"]
    gpu, ram = panel.device_rows
    assert gpu.amount_label.text() == f"{gpu.usage.total / GB:.1f} of {gpu.usage.budget / GB:.1f} GB"
    assert gpu.bar.parts() == (gpu.usage.weights, gpu.usage.kv, gpu.usage.compute, gpu.usage.other)
    assert not gpu.over
    assert not ram.over
    assert panel.explanation_label.text() == expected.explanation
    assert "all 48 layers on the NVIDIA GeForce RTX 4090" in panel.explanation_label.text()
    assert panel.speed_label.text().startswith("≈ ")
    assert "tok/s, prompt ≈ " in panel.speed_label.text()
    assert "a 100-page document: " in panel.speed_label.text()
    assert "assumed figures" in panel.speed_label.text()  # no probe measured on a simulated machine
    # experts in RAM on a GPU: a larger prompt batch, explained, and shown as Advanced's Auto
    assert expected.n_ubatch > 512
    assert f"Prompts are read {expected.n_ubatch:,} tokens at a time" in panel.explanation_label.text()
    assert panel.ubatch_combo.itemText(0) == f"Auto ({expected.n_ubatch:,})"
    assert "Q4_K_M" in panel.model_detail.text()
    assert "48 layers" in panel.model_detail.text()
    assert panel.gpu_layers_spin.specialValueText() == f"Auto ({expected.n_gpu_layers})"
    assert panel.apply_button.isEnabled()


def test_cpu_only_machines(qtbot, controller) -> None:
    small = make_panel(qtbot, controller, SimulatedHardware.cpu_only(32))
    assert small.verdict_text().startswith("Won't fit: needs ")
    assert [r.usage.name for r in small.device_rows] == ["RAM"]
    assert small.device_rows[0].over
    assert not small.gpu_layers_spin.isEnabled()
    big = make_panel(qtbot, controller, SimulatedHardware.cpu_only(128))
    assert big.verdict_text() == "CPU only"
    assert big.verdict_label.property("kind") == "cpu"
    assert [r.usage.name for r in big.device_rows] == ["RAM"]


def test_wont_fit_shows_the_shortfall(qtbot, controller) -> None:
    panel = make_panel(qtbot, controller, SimulatedHardware.nvidia(8, 16))
    plan = panel.plan
    assert plan is not None
    assert not plan.fits
    assert panel.verdict_text() == f"Won't fit: needs {plan.shortfall_bytes / GB:.1f} GB more"
    assert panel.verdict_label.property("kind") == "danger"
    ram = panel.device_rows[-1]
    assert ram.over
    assert ram.amount_label.property("over") is True
    assert ram.amount_label.text().endswith(f"— {ram.usage.over / GB:.1f} GB over")


def test_full_offload_on_a_big_card(qtbot, controller) -> None:
    panel = make_panel(qtbot, controller, SimulatedHardware.nvidia(80, 128, name="NVIDIA H100"))
    assert panel.verdict_text() == "Fits fully on GPU"
    assert panel.verdict_label.property("kind") == "ok"


# -- live projection ------------------------------------------------------------------------


def test_context_128k_grows_the_kv_cache_live(qtbot, controller) -> None:
    panel = make_panel(qtbot, controller, SimulatedHardware.nvidia(24, 64))
    before = panel.plan
    assert before is not None
    assert before.n_ctx == 32768
    with qtbot.waitSignal(panel.plan_projected, timeout=1000) as blocker:
        set_combo_data(panel.context_combo, 131072)
    after: Plan = blocker.args[0]
    assert after is panel.plan
    assert after.n_ctx == 131072
    assert after.devices[0].kv > before.devices[0].kv
    assert panel.device_rows[0].usage.kv == after.devices[0].kv
    assert "128k context" in panel.explanation_label.text()
    assert panel.overrides() == PlanOverrides(n_ctx=131072)


def test_the_prompt_batch_can_be_fixed_in_advanced(qtbot, controller) -> None:
    panel = make_panel(qtbot, controller, SimulatedHardware.nvidia(24, 64))
    auto = panel.plan
    assert auto is not None
    assert auto.n_ubatch > 512
    with qtbot.waitSignal(panel.plan_projected, timeout=1000) as blocker:
        set_combo_data(panel.ubatch_combo, 512)
    fixed: Plan = blocker.args[0]
    assert (fixed.n_ubatch, fixed.n_batch) == (512, 512)
    assert fixed.forecast.prompt_tokens_per_s < auto.forecast.prompt_tokens_per_s
    assert "Prompts are read" not in panel.explanation_label.text()
    assert panel.overrides() == PlanOverrides(n_ubatch=512)


def test_edits_are_debounced_into_one_projection(qtbot, controller) -> None:
    panel = make_panel(qtbot, controller, SimulatedHardware.nvidia(24, 64))
    seen: list[Plan] = []
    panel.plan_projected.connect(seen.append)
    set_combo_data(panel.context_combo, 65536)
    set_combo_data(panel.kv_combo, "q8_0")
    panel.gpu_layers_spin.setValue(40)
    assert seen == []
    qtbot.waitUntil(lambda: len(seen) == 1, timeout=1000)
    qtbot.wait(120)
    assert len(seen) == 1
    assert (seen[0].n_ctx, seen[0].type_k, seen[0].n_gpu_layers) == (65536, "q8_0", 40)


def test_forcing_48_gpu_layers_on_an_8gb_card_shows_the_gpu_shortfall(qtbot, controller) -> None:
    panel = make_panel(qtbot, controller, SimulatedHardware.nvidia(8, 96))
    assert panel.plan is not None
    assert panel.plan.fits
    panel.gpu_layers_spin.setValue(48)
    panel.cpu_moe_spin.setValue(0)
    panel.recompute()
    gpu = panel.device_rows[0]
    assert gpu.usage.name == "CUDA0"
    assert gpu.over
    assert "GB over" in gpu.amount_label.text()
    assert panel.verdict_label.property("kind") == "danger"
    assert panel.verdict_text().startswith("Won't fit: needs ")
    assert panel.plan is not None
    assert panel.plan.n_gpu_layers == 48
    assert gpu.bar.budget() < sum(gpu.bar.parts())


def test_quantized_kv_with_flash_attention_off_explains_itself(qtbot, controller) -> None:
    panel = make_panel(qtbot, controller, SimulatedHardware.nvidia(24, 64))
    panel.advanced_button.setChecked(True)
    set_combo_data(panel.kv_combo, "q4_0")
    set_combo_data(panel.flash_combo, False)
    panel.recompute()
    assert panel.advanced_note.isVisible()
    assert panel.plan is not None
    assert panel.plan.flash_attn


# -- apply, reset, choose -------------------------------------------------------------------


def test_apply_and_reload_passes_the_overrides(qtbot, controller, scout_q4) -> None:
    panel = make_panel(qtbot, controller, SimulatedHardware.nvidia(24, 64))
    panel.advanced_button.setChecked(True)
    panel.gpu_layers_spin.setValue(30)
    panel.cpu_moe_spin.setValue(12)
    set_combo_data(panel.context_combo, 16384)
    set_combo_data(panel.kv_combo, "q8_0")
    set_combo_data(panel.flash_combo, True)
    assert apply_and_wait(qtbot, panel, controller) == str(scout_q4)
    expected = PlanOverrides(n_gpu_layers=30, n_cpu_moe=12, n_ctx=16384, kv_type="q8_0", flash_attn=True)
    assert controller.models.overrides == expected


def test_reset_to_automatic_clears_the_overrides(qtbot, controller, load_fake_model, scout_q4) -> None:
    load_fake_model(controller, scout_q4, PlanOverrides(n_gpu_layers=20, n_ctx=8192))
    assert controller.models.overrides == PlanOverrides(n_gpu_layers=20, n_ctx=8192)
    panel = make_panel(qtbot, controller, SimulatedHardware.nvidia(24, 64))
    assert panel.advanced_button.isChecked()  # the model was loaded with overrides: show them
    assert panel.overrides() == PlanOverrides(n_gpu_layers=20, n_ctx=8192)
    assert panel.plan is not None
    assert panel.plan.n_gpu_layers == 20
    qtbot.mouseClick(panel.reset_button, Qt.MouseButton.LeftButton)
    assert panel.overrides() == PlanOverrides()
    assert panel.gpu_layers_spin.value() == -1
    assert panel.plan is not None
    assert panel.plan.n_gpu_layers == 49
    assert apply_and_wait(qtbot, panel, controller) == str(scout_q4)
    assert controller.models.overrides is None


def test_auto_context_follows_the_settings_like_the_controller(qtbot, controller) -> None:
    with qtbot.waitSignal(controller.models.model_loaded, timeout=5000):  # a new context size reloads
        controller.update_settings(controller.settings.replace(n_ctx=8192))
    panel = make_panel(qtbot, controller, SimulatedHardware.nvidia(24, 64))
    assert panel.plan is not None
    assert panel.plan.n_ctx == 8192
    assert panel.context_combo.itemText(0) == "Auto (8k)"


def test_choose_model_reads_another_file_and_reports_bad_ones(
    qtbot, make_controller, tmp_path, scout_q4
) -> None:
    controller = make_controller()  # no model loaded
    panel = make_panel(qtbot, controller, SimulatedHardware.nvidia(24, 64))
    assert panel.empty_label.isVisible()
    assert not panel.apply_button.isEnabled()
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a gguf at all" * 10)
    panel.choose_model_file = lambda _parent, _start: str(bad)
    qtbot.mouseClick(panel.choose_button, Qt.MouseButton.LeftButton)
    assert panel.error_label.isVisible()
    assert "broken.gguf" in panel.error_label.text()
    assert not panel.plan_box.isVisible()
    assert not panel.apply_button.isEnabled()
    panel.choose_model_file = lambda _parent, _start: str(scout_q4)
    qtbot.mouseClick(panel.choose_button, Qt.MouseButton.LeftButton)
    assert not panel.error_label.isVisible()
    assert panel.plan_box.isVisible()
    assert panel.verdict_text() == "Split GPU + RAM"
    assert apply_and_wait(qtbot, panel, controller) == str(scout_q4)
    assert controller.models.overrides is None


def test_plan_changed_shows_the_last_load(qtbot, make_controller, scout_q4) -> None:
    hw = SimulatedHardware.nvidia(24, 64)
    controller = make_controller(planner=simulated_planner(hw))
    panel = make_panel(qtbot, controller, hw)
    assert panel.set_model_path(scout_q4)
    assert not panel.loaded_label.isVisible()
    assert panel.info is not None
    with (
        qtbot.waitSignal(controller.models.model_loaded, timeout=5000),
        qtbot.waitSignal(controller.models.plan_changed, timeout=5000) as changed,
    ):
        controller.models.load_model(str(scout_q4), PlanOverrides(n_ctx=16384))
    loaded: Plan = changed.args[0]
    assert (loaded.n_ctx, loaded.verdict) == (16384, VERDICT_SPLIT)
    assert panel.loaded_label.isVisible()
    assert panel.loaded_label.text() == "Last load: split GPU + RAM, 16k context"


def test_context_choices() -> None:
    assert [format_context(n) for n in context_choices(10_485_760)][:3] == ["4k", "8k", "16k"]
    assert format_context(context_choices(10_485_760)[-1]) == "8M"
    assert context_choices(8192) == [4096, 8192]


# -- main window ----------------------------------------------------------------------------


@pytest.mark.qt_log_ignore(
    "This plugin does not support propagateSizeHints", "This plugin does not support raise"
)
def test_main_window_menu_status_click_and_plan_tooltip(
    qtbot, make_controller, load_fake_model, scout_q4
) -> None:
    hw = SimulatedHardware.nvidia(24, 64)
    controller = make_controller(planner=simulated_planner(hw))
    window = MainWindow(controller)
    window.hardware_probe = hw
    qtbot.addWidget(window)
    window.show()
    qtbot.waitExposed(window)
    load_fake_model(controller, scout_q4)
    assert window.plan_panel_action in window.menuBar().actions()[0].menu().actions()
    window.plan_panel_action.trigger()
    panel = window.findChild(PlanPanel)
    assert panel is not None
    assert panel.isVisible()
    assert not panel.isModal()
    assert panel.verdict_text() == "Split GPU + RAM"
    panel.close()
    qtbot.mouseClick(window.model_label, Qt.MouseButton.LeftButton, pos=QPoint(5, 5))
    assert panel.isVisible()
    assert window.findChildren(PlanPanel) == [panel]  # one panel, re-shown
    assert panel.info is not None
    with (
        qtbot.waitSignal(controller.models.model_loaded, timeout=5000),
        qtbot.waitSignal(controller.models.plan_changed, timeout=5000) as changed,
    ):
        controller.models.load_model(str(scout_q4), PlanOverrides(n_ctx=8192))  # a reload, a new plan
    plan: Plan = changed.args[0]
    assert plan.n_ctx == 8192
    assert panel.loaded_label.text() == "Last load: split GPU + RAM, 8k context"
    tip = window.model_label.toolTip()
    assert f"Memory: {plan.fits_text}" in tip
    assert controller.models.model_info is not None
    assert str(controller.models.model_info.path) in tip


# -- screenshots ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["light", "dark"])
def test_screenshots(qtbot, controller, themed, mode: str) -> None:
    themed(mode)
    split = make_panel(qtbot, controller, SimulatedHardware.nvidia(24, 64))
    split.advanced_button.setChecked(True)
    assert shoot(split, f"24gb_{mode}").stat().st_size > 0
    no_fit = make_panel(qtbot, controller, SimulatedHardware.nvidia(8, 16))
    assert shoot(no_fit, f"wont_fit_{mode}").stat().st_size > 0
    forced = make_panel(qtbot, controller, SimulatedHardware.nvidia(8, 96))
    forced.advanced_button.setChecked(True)
    forced.gpu_layers_spin.setValue(48)
    forced.cpu_moe_spin.setValue(0)
    forced.recompute()
    assert shoot(forced, f"gpu_over_{mode}").stat().st_size > 0


def test_the_panel_shows_the_compute_servers_split(qtbot, make_controller, scout_q4) -> None:
    """With compute servers (Settings → Machines) the panel shows their devices as the last load
    found them: a bar each, and the split by free memory in the explanation."""
    from app.config import Settings
    from app.core.hardware import GIB, Device, with_remote_devices

    workstation = Device(
        "RPC0", "RPC", 48 * GIB, 48 * GIB, description="compute server workstation:50052",
        endpoint="workstation:50052", rtt_s=0.0005,
    )  # fmt: skip
    local = SimulatedHardware.cpu_only(32)
    pooled = with_remote_devices(local.probe(), [workstation])
    controller = make_controller(
        settings=Settings(compute_servers=("workstation:50052",)),
        planner=lambda request: plan_load(request, pooled),
    )
    with qtbot.waitSignal(controller.models.plan_changed, timeout=5000):
        controller.models.load_model(str(scout_q4))
    panel = make_panel(qtbot, controller, local)
    assert panel.set_model_path(scout_q4)
    names = [row.name_label.text() for row in panel.device_rows]
    assert "Compute server workstation:50052 (RPC0)" in names
    text = panel.explanation_label.text()
    assert "Layers spread by free memory:" in text
    assert "on workstation:50052 (51.5 GB free)" in text
    assert "the network adds ≈" in text


def test_speculation_can_be_set_in_advanced_and_reaches_the_load_parameters(
    qtbot, controller, tmp_path
) -> None:
    from app.core.planner import LoadRequest
    from app.core.tiny_model import write_tiny_model

    panel = make_panel(qtbot, controller, SimulatedHardware.nvidia(24, 64))
    assert panel.speculation_combo.currentData() is None  # Auto
    set_combo_data(panel.speculation_combo, "off")
    assert panel.overrides() == PlanOverrides(speculation="off")
    panel.set_overrides(PlanOverrides(speculation="on"))
    assert panel.speculation_combo.currentText() == "On"
    model = write_tiny_model(tmp_path / "tiny.gguf")[0]
    hardware = SimulatedHardware.nvidia(24, 64).probe()
    assert plan_load(LoadRequest(model, panel.overrides()), hardware).params.speculation == "on"
    assert plan_load(LoadRequest(model), hardware).params.speculation == "auto"
