"""The app on a model served elsewhere (a real llama-cpp-python server on 127.0.0.1): a server
that dies mid-answer leaves the answer "interrupted" with its text, as a local engine's crash does."""

from __future__ import annotations

from typing import TYPE_CHECKING

from app.config import Settings
from app.core.engine.remote import ServerConfig
from tests.remote_servers import API_KEY, close_remote_engines, llama_cpp_server

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["close_remote_engines"]  # the fixture, used by this module


def test_a_server_killed_mid_answer_leaves_the_answer_interrupted(
    qtbot, make_controller, tiny_model: Path, tmp_path: Path
) -> None:
    with llama_cpp_server(tiny_model, tmp_path / "doomed.log", n_ctx=2048) as doomed:
        controller = make_controller(settings=Settings(max_tokens=1900))
        with qtbot.waitSignal(controller.models.model_loaded, timeout=60_000) as loaded:
            controller.models.connect_server(ServerConfig(doomed.url, api_key=API_KEY))
        assert loaded.args[0].server
        with qtbot.waitSignal(controller.conversations.tokens_streamed, timeout=60_000):
            controller.conversations.send("Tell me a very long story.")
        with qtbot.waitSignal(controller.conversations.generation_failed, timeout=60_000) as failed:
            doomed.kill()
    message_id, message, _detail = failed.args
    assert "The text so far is kept" in message
    stored = controller.store.get_message(message_id)
    assert stored.status == "interrupted"  # as after a local stop or crash, not "error"
    assert stored.content  # the partial answer


def test_the_server_used_last_is_reconnected_at_start_and_retried_from_the_banner(
    qtbot, make_controller, app_paths, tiny_model: Path, tmp_path: Path
) -> None:
    from PySide6.QtCore import Qt

    from app.core.server_keys import ServerKeyStore
    from app.ui.main_window import MainWindow

    with llama_cpp_server(tiny_model, tmp_path / "first.log", n_ctx=2048) as server:
        ServerKeyStore(app_paths.data_dir).set(server.url, API_KEY)  # as File → Servers… keeps it
        first = make_controller()
        with qtbot.waitSignal(first.models.model_loaded, timeout=60_000):
            first.models.connect_server(ServerConfig(server.url, api_key=API_KEY))
        assert first.settings.last_server == server.url
        port = server.port
        again = make_controller(settings=first.settings)  # the next start, the same settings
        with qtbot.waitSignal(again.models.model_loaded, timeout=60_000) as loaded:
            again.restore_session()
        assert loaded.args[0].server  # the model on that server, with the stored key
    # the server is gone at the next start: a clear message and Retry in the banner
    gone = make_controller(settings=first.settings)
    window = MainWindow(gone)
    qtbot.addWidget(window)
    window.show()
    with qtbot.waitSignal(gone.models.reconnect_failed, timeout=60_000):
        gone.restore_session()
    banner = window.error_banner
    assert f"Could not reconnect to 127.0.0.1:{port}, the server used last" in banner.label.text()
    assert banner.action_button.isVisible()
    assert banner.action_button.text() == "Retry"
    with llama_cpp_server(tiny_model, tmp_path / "second.log", n_ctx=2048, port=port):
        with qtbot.waitSignal(gone.models.model_loaded, timeout=60_000) as back:
            qtbot.mouseClick(banner.action_button, Qt.MouseButton.LeftButton)
        assert back.args[0].server


def test_loading_a_model_file_forgets_the_server(qtbot, make_controller, load_fake_model) -> None:
    settings = Settings(last_server="http://127.0.0.1:9", last_server_model="tiny")
    controller = make_controller(settings=settings)
    load_fake_model(controller)
    assert controller.settings.last_server == ""  # the next start reloads the file instead
