"""The offline guarantee (no socket touched in a full session) and secrets (no token in logs or settings)."""

from __future__ import annotations

import io
import logging
import socket
from typing import TYPE_CHECKING

import pytest
from PIL import Image

from app.config import AppPaths, RedactingFormatter, load_settings, save_settings, setup_logging

if TYPE_CHECKING:
    from pathlib import Path

    from tests.launch import AppLauncher

TOKEN = "hf_" + "AbCdEfGhIjKlMnOpQrStUvWxYz01234567"  # the shape of a real token: hf_ + 34 alphanumerics


def test_a_full_session_opens_no_socket(
    qtbot, start_app: AppLauncher, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    attempts: list[str] = []
    real_connect = socket.socket.connect  # already the suite's loopback guard: record before it

    def record(name: str, real):  # type: ignore[no-untyped-def]
        def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
            attempts.append(f"{name}{args[1:] if name == 'connect' else args!r}")
            return real(*args, **kwargs)

        return wrapper

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", record("connect", real_connect))
    monkeypatch.setattr(socket.socket, "connect_ex", record("connect_ex", socket.socket.connect_ex))
    monkeypatch.setattr(socket, "create_connection", record("create_connection", socket.create_connection))
    monkeypatch.setattr(socket, "getaddrinfo", record("getaddrinfo", socket.getaddrinfo))

    start_app.show = False
    data = tmp_path / "data"
    doc = tmp_path / "notes about the lighthouse.md"
    doc.write_text("# Lighthouse\n\nThe keeper lights the lamp at dusk.\n", encoding="utf-8")
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(buf, "PNG")
    for round_ in range(2):  # the second round is the restart
        application = start_app(data, "--model", str(tiny_model))
        controller = application.controller
        try:
            start_app.wait_loaded(application)
            with qtbot.waitSignal(controller.attachments.attachment_updated, timeout=10_000):
                controller.attachments.attach_files([str(doc)])
            with qtbot.waitSignal(controller.attachments.attachment_updated, timeout=10_000):
                controller.attachments.attach_image_data(buf.getvalue(), "pasted.png")
            controller.attachments.remove_attachment(
                controller.attachments.pending_attachments()[-1].id
            )  # no projector: drop it
            controller.update_settings(controller.settings.replace(max_tokens=16))
            with qtbot.waitSignal(controller.conversations.generation_finished, timeout=60_000):
                controller.conversations.send(f"Round {round_}: what does the keeper do?")
        finally:
            start_app.close(application)
    assert attempts == [], attempts


def test_with_a_server_and_a_compute_server_the_app_connects_only_to_them(
    qtbot, start_app: AppLauncher, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One OpenAI-compatible server (llama-server) and one compute server (rpc-server) configured,
    both on 127.0.0.1: an answer from the server, then the local model loaded across the compute
    server and an answer from it. Every connection the window's process makes (Python's sockets)
    and every one its engine processes make (connect() itself, preloaded: llama.cpp's RPC client
    is C) goes to one of those two addresses."""
    from app.config import Settings
    from app.core.engine.llama_tools import find_llama_tools, why_missing
    from tests.remote_servers import API_KEY, connect_recorder, llama_server, rpc_server

    tools = find_llama_tools()
    if tools is None:
        pytest.skip(why_missing())
    recorder = connect_recorder(tmp_path)
    if recorder is None:
        pytest.skip("no C compiler to build the connect() recorder")
    here: list[tuple[str, int]] = []  # the window's process
    real_connect, real_create = socket.socket.connect, socket.create_connection

    def connect(sock: socket.socket, address: object, *args: object) -> object:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            here.append((str(address[0]), int(address[1])))  # type: ignore[index]
        return real_connect(sock, address, *args)  # type: ignore[arg-type]

    def create_connection(address: tuple[str, int], *args: object, **kwargs: object) -> socket.socket:
        here.append((str(address[0]), int(address[1])))
        return real_create(address, *args, **kwargs)  # type: ignore[arg-type]

    children_log = tmp_path / "connections.txt"
    with (
        llama_server(tools.llama_server, tiny_model, tmp_path / "llama-server.log") as server,
        rpc_server(tools.rpc_server, tmp_path / "rpc.log") as compute,
    ):
        # from here on, every process the app starts records its connections
        monkeypatch.setenv("LD_PRELOAD", str(recorder))
        monkeypatch.setenv("SCOUT_TEST_CONNECT_LOG", str(children_log))
        monkeypatch.setenv("SCOUT_TEST_KEY", API_KEY)
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.setattr(socket.socket, "connect", connect)
        monkeypatch.setattr(socket, "create_connection", create_connection)
        start_app.show = False
        data = tmp_path / "data"
        settings = Settings(
            n_threads=1, n_ctx=512, max_tokens=8, compute_servers=(f"127.0.0.1:{compute.port}",)
        )
        application = start_app(
            data, "--server", server.url, "--api-key-env", "SCOUT_TEST_KEY", settings=settings
        )
        controller = application.controller
        try:
            start_app.wait_loaded(application)
            assert controller.models.is_remote
            with qtbot.waitSignal(controller.conversations.generation_finished, timeout=60_000):
                controller.conversations.send("From the server: say hello.")
            with qtbot.waitSignal(controller.models.model_loaded, timeout=120_000):
                controller.models.load_model(str(tiny_model))
            assert controller.models.plan is not None
            assert controller.models.plan.remote_devices  # the model is across the compute server
            with qtbot.waitSignal(controller.conversations.generation_finished, timeout=60_000):
                controller.conversations.send("From the compute server: say hello.")
        finally:
            start_app.close(application)
        allowed = {("127.0.0.1", server.port), ("127.0.0.1", compute.port)}
    children = [line.split() for line in children_log.read_text().splitlines()]
    elsewhere = [(host, int(port)) for _pid, host, port in children]
    assert ("127.0.0.1", server.port) in here
    assert ("127.0.0.1", compute.port) in elsewhere  # the engine process, through llama.cpp's RPC client
    assert set(here) | set(elsewhere) <= allowed, (here, elsewhere)


def test_the_token_never_reaches_the_log_or_the_settings(tmp_path: Path) -> None:
    from app.core.downloads import Downloader, DownloadError, TokenStore

    paths = AppPaths.under(tmp_path / "data").ensure()
    logfile = setup_logging(paths)
    try:
        store = TokenStore(paths.data_dir, use_keyring=False)
        store.set(TOKEN)
        assert store.get() == TOKEN
        downloader = Downloader(paths.models_dir, token=store.get(), endpoint="http://127.0.0.1:9")
        log = logging.getLogger("app.core.downloads")
        log.warning("request failed for token %s", downloader.token)
        try:
            raise DownloadError(f"401 for Authorization: Bearer {TOKEN}", detail=f"token={TOKEN}")
        except DownloadError:
            log.exception("download failed")
        logging.getLogger("huggingface_hub").error("headers: {'authorization': 'Bearer %s'}", TOKEN)
        save_settings(paths, load_settings(paths).replace(hf_endpoint="http://127.0.0.1:9"))
    finally:
        for handler in logging.getLogger().handlers:
            handler.flush()
    text = logfile.read_text(encoding="utf-8")
    assert "hf_***" in text
    assert TOKEN not in text
    assert TOKEN[3:] not in text
    assert TOKEN not in paths.settings_file.read_text(encoding="utf-8")
    for path in paths.data_dir.rglob("*"):
        if path.is_file() and path.name != "hf_token":
            assert TOKEN.encode() not in path.read_bytes(), path
    assert (paths.data_dir / "hf_token").stat().st_mode & 0o077 == 0


@pytest.mark.parametrize(
    ("text", "leaked"),
    [
        (f"token {TOKEN} end", TOKEN),
        (f"Bearer {TOKEN}", TOKEN),
        (f"url?token={TOKEN}&x=1", TOKEN),
        (f'{{"token": "{TOKEN}"}}', TOKEN),
    ],
)
def test_the_redacting_formatter_masks_tokens(text: str, leaked: str) -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, text, None, None)
    assert leaked not in RedactingFormatter("%(message)s").format(record)


def test_the_redacting_formatter_masks_tokens_with_underscores() -> None:
    token = "hf_secret_test_token_123"
    record = logging.LogRecord("x", logging.INFO, __file__, 1, f"token {token}", None, None)
    assert token not in RedactingFormatter("%(message)s").format(record)
