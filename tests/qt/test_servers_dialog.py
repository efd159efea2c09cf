"""Servers… against a real llama-cpp-python server on 127.0.0.1, and the window chatting through it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from app.core.server_keys import ServerKeyStore
from app.ui.main_window import MainWindow
from app.ui.servers_dialog import SETTINGS_KEY, ServersDialog
from tests.remote_servers import API_KEY, llama_cpp_server

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from tests.remote_servers import RunningServer


@pytest.fixture(scope="module")
def server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with llama_cpp_server(tiny_model, tmp_path_factory.mktemp("qt-server") / "server.log") as running:
        yield running


def test_test_says_what_the_server_is(qtbot, server: RunningServer, tmp_path: Path) -> None:
    dialog = ServersDialog(ServerKeyStore(tmp_path, use_keyring=False))
    qtbot.addWidget(dialog)
    dialog.url_edit.setText(server.url)
    dialog.key_edit.setText("sk-not-the-key")
    with qtbot.waitSignal(dialog._prober.probe_failed, timeout=30_000):
        dialog.test_button.click()
    assert "refused the API key (HTTP 401)" in dialog.result_label.text()
    dialog.key_edit.setText(API_KEY)
    with qtbot.waitSignal(dialog._prober.probed, timeout=30_000):
        dialog.test_button.click()
    text = dialog.result_label.text()
    assert f"llama-cpp-python server {dialog.identity.version} at 127.0.0.1:{server.port}" in text  # type: ignore[union-attr]
    assert "model tiny" in text
    assert "context size not reported by the server" in text  # its server has no endpoint for it
    assert dialog.model_combo.currentText() == "tiny"
    assert not dialog.warning_label.isVisibleTo(dialog)  # loopback: no plain-HTTP warning
    dialog.url_edit.setText("http://8.8.8.8:8080")
    assert dialog.warning_label.isVisibleTo(dialog)


def test_connect_chats_through_the_server(
    qtbot, make_controller, server: RunningServer, tmp_path: Path
) -> None:
    controller = make_controller()
    window = MainWindow(controller)
    qtbot.addWidget(window)
    dialog = window.open_servers_dialog()
    dialog.url_edit.setText(server.url)
    dialog.key_edit.setText(API_KEY)
    dialog.ctx_spin.setValue(1024)
    with qtbot.waitSignal(controller.models.model_loaded, timeout=30_000):
        dialog.connect_button.click()
    assert window.model_label.text() == f"tiny on 127.0.0.1:{server.port} — llama-cpp-python server"
    assert controller.models.is_remote
    assert controller.models.plan is None
    saved = controller.settings.extra[SETTINGS_KEY]
    assert saved["url"] == server.url
    assert API_KEY not in repr(controller.settings)
    assert ServerKeyStore(controller.paths.data_dir).get(server.url) == API_KEY
    with qtbot.waitSignal(controller.conversations.generation_finished, timeout=60_000) as finished:
        controller.conversations.send("Say hello.")
    stats = finished.args[1]
    assert stats.completion_tokens > 0
    assert stats.n_ctx == 1024
    window.status.model_clicked.emit()  # a server's model: its connection, not the memory plan
    assert window._plan_panel is None
    for child in window.findChildren(ServersDialog):
        child.reject()
