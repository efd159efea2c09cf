"""The local API server with real clients — the official ``openai`` package, ``curl`` and a raw
socket — against the app's server on 127.0.0.1, answered by the real inference worker on the
real llama.cpp (the tiny model the suite generates)."""

from __future__ import annotations

import base64
import http.client
import io
import json
import logging
import shutil
import socket
import subprocess
import threading
from typing import TYPE_CHECKING, Any

import openai
import pytest
from PIL import Image

from app.config import Settings
from app.core.engine import LlamaEngine
from app.core.types import FinishReason

if TYPE_CHECKING:
    from pathlib import Path

    from app.workers.controller import AppController

SETTINGS = Settings(n_ctx=2048, n_threads=1, max_tokens=64, api_server=True, api_port=0)


@pytest.fixture
def served(llama_controller) -> tuple[AppController, LlamaEngine]:
    """An app with the tiny model loaded and its API server on (any free port)."""
    controller, engine = llama_controller(SETTINGS, planned=False)
    assert controller.api.address.startswith("127.0.0.1:")
    return controller, engine


def client(controller: AppController, token: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"http://{controller.api.address}/v1",
        api_key=token or controller.api.token(),
        max_retries=0,
        timeout=60,
    )


def raw(
    controller: AppController, method: str, path: str, body: Any = None, **headers: str
) -> tuple[int, Any]:
    """One request over http.client: status and decoded JSON body."""
    host, port = controller.api.address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        data = json.dumps(body).encode() if body is not None and not isinstance(body, bytes) else body
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        conn.close()


def model_name(controller: AppController) -> str:
    name = controller.api.chat_model()
    assert name is not None
    return name


def endless_answer(controller: AppController, content: str) -> tuple[threading.Thread, list[BaseException]]:
    """A thread (not started) that streams an answer with no length limit through the official
    client, and the API errors it met (an answer stopped in the window ends with one)."""
    errors: list[BaseException] = []

    def ask() -> None:
        try:
            with client(controller) as api:
                for _chunk in api.chat.completions.create(
                    model="tiny-llama4",
                    messages=[{"role": "user", "content": content}],
                    max_tokens=100_000,
                    stream=True,
                ):
                    pass
        except openai.APIError as exc:
            errors.append(exc)

    return threading.Thread(target=ask), errors


def test_models_and_a_whole_answer_through_the_openai_client(served) -> None:
    controller, _engine = served
    with client(controller) as api:
        models = [m.id for m in api.models.list()]
        assert models == ["tiny-llama4"]
        answer = api.chat.completions.create(
            model="tiny-llama4",
            messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}],
            max_tokens=8,
            temperature=0,
            seed=1,
        )
    choice = answer.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert answer.usage is not None
    assert answer.usage.completion_tokens <= 8
    assert answer.usage.prompt_tokens > 0
    assert answer.model == "tiny-llama4"


def test_streaming_with_usage_gives_the_same_text_as_the_whole_answer(served) -> None:
    controller, _engine = served
    request: dict[str, Any] = {
        "model": "tiny-llama4",
        "messages": [{"role": "user", "content": "Count with me"}],
        "max_tokens": 12,
        "temperature": 0,
        "seed": 3,
    }
    with client(controller) as api:
        whole = api.chat.completions.create(**request).choices[0].message.content
        chunks = list(
            api.chat.completions.create(**request, stream=True, stream_options={"include_usage": True})
        )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    assert chunks[0].choices[0].delta.role == "assistant"
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals in (["stop"], ["length"])
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert 0 < chunks[-1].usage.completion_tokens <= 12


def test_a_stop_string_cuts_the_answer(served) -> None:
    controller, _engine = served
    request: dict[str, Any] = {
        "model": "tiny-llama4",
        "messages": [{"role": "user", "content": "Say things"}],
        "max_tokens": 40,
        "temperature": 0,
        "seed": 7,
    }
    with client(controller) as api:
        full = api.chat.completions.create(**request).choices[0].message.content or ""
        assert len(full) > 6
        stop = full[3:6]  # a string the same answer is known to contain
        cut = api.chat.completions.create(**request, stop=[stop])
        streamed = "".join(
            c.choices[0].delta.content or ""
            for c in api.chat.completions.create(**request, stop=stop, stream=True)
        )
    assert cut.choices[0].message.content == full[: full.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    assert streamed == full[: full.index(stop)]


def test_curl_streams_and_wrong_tokens_host_and_bodies_are_refused(served) -> None:
    controller, _engine = served
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    url = f"http://{controller.api.address}/v1/chat/completions"
    body = json.dumps(
        {
            "model": "tiny-llama4",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 4,
            "stream": True,
        }
    )

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [curl, "-sS", "-N", *args], capture_output=True, text=True, timeout=60, check=False
        )

    token = controller.api.token()
    ok = run("-H", f"Authorization: Bearer {token}", "-H", "Content-Type: application/json", "-d", body, url)
    events = [line.removeprefix("data: ") for line in ok.stdout.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert json.loads(events[0])["object"] == "chat.completion.chunk"

    status = ["-o", "/dev/null", "-w", "%{http_code}"]
    wrong = run(*status, "-H", "Authorization: Bearer sk-scout-wrong", "-d", body, url)
    missing = run(*status, "-d", body, url)
    bad_host = run(
        *status, "-H", f"Authorization: Bearer {token}", "-H", "Host: evil.example:1236", "-d", body, url
    )
    assert (wrong.stdout, missing.stdout, bad_host.stdout) == ("401", "401", "403")

    auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    assert raw(controller, "POST", "/v1/chat/completions", b"{not json", **auth)[0] == 400
    status_, error = raw(
        controller,
        "POST",
        "/v1/chat/completions",
        {"model": "other", "messages": [{"role": "user", "content": "hi"}]},
        **auth,
    )
    assert status_ == 404
    assert error["error"]["code"] == "model_not_found"
    # an oversized body is refused from its Content-Length, before it is read
    host, port = controller.api.address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        conn.putrequest("POST", "/v1/chat/completions")
        for name, value in {**auth, "Content-Length": str(33 * 1024 * 1024)}.items():
            conn.putheader(name, value)
        conn.endheaders()
        response = conn.getresponse()
        assert response.status == 413
        assert json.loads(response.read())["error"]["code"] == "request_too_large"
    finally:
        conn.close()
    assert raw(controller, "GET", "/v1/nothing", **auth)[0] == 404


def test_wrong_and_missing_tokens_are_401_in_openai_s_shape(served) -> None:
    controller, _engine = served
    messages: Any = [{"role": "user", "content": "hi"}]
    with (
        client(controller, "sk-scout-not-the-key") as api,
        pytest.raises(openai.AuthenticationError) as wrong,
    ):
        api.chat.completions.create(model="tiny-llama4", messages=messages)
    assert wrong.value.status_code == 401
    assert "Incorrect API key" in wrong.value.message
    status, body = raw(controller, "GET", "/v1/models")
    assert status == 401
    assert body["error"]["code"] == "missing_api_key"
    # a regenerated key replaces the old one at once
    old = controller.api.token()
    new = controller.api.regenerate_token()
    assert new != old
    assert raw(controller, "GET", "/v1/models", Authorization=f"Bearer {old}")[0] == 401
    assert raw(controller, "GET", "/v1/models", Authorization=f"Bearer {new}")[0] == 200


def test_cors_is_off_unless_origins_are_listed(served, qtbot) -> None:
    controller, _engine = served
    auth = {"Authorization": f"Bearer {controller.api.token()}"}
    assert raw(controller, "GET", "/v1/models", Origin="http://page.example", **auth)[0] == 403
    assert raw(controller, "OPTIONS", "/v1/models", Origin="http://page.example")[0] == 403
    with qtbot.waitSignal(controller.api.state_changed, check_params_cb=bool):
        controller.update_settings(controller.settings.replace(api_cors_origins=("http://page.example",)))
    assert raw(controller, "GET", "/v1/models", Origin="http://page.example", **auth)[0] == 200


def test_a_picture_to_a_model_without_vision_is_a_clear_400(served) -> None:
    controller, _engine = served
    buf = io.BytesIO()
    Image.new("RGB", (32, 24), (10, 200, 30)).save(buf, "PNG")
    uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    content: Any = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": uri}},
    ]
    with client(controller) as api:
        with pytest.raises(openai.BadRequestError) as refused:
            api.chat.completions.create(model="tiny-llama4", messages=[{"role": "user", "content": content}])
        assert "cannot read pictures" in refused.value.message
        content[1]["image_url"]["url"] = "http://example.com/cat.png"
        with pytest.raises(openai.BadRequestError) as link:
            api.chat.completions.create(model="tiny-llama4", messages=[{"role": "user", "content": content}])
        assert "links are not fetched" in link.value.message


def test_a_client_that_disconnects_cancels_its_answer_and_the_window_goes_next(served, qtbot) -> None:
    controller, engine = served
    controller.update_settings(controller.settings.replace(max_tokens=16))
    host, port = controller.api.address.rsplit(":", 1)
    body = json.dumps(
        {
            "model": "tiny-llama4",
            "messages": [{"role": "user", "content": "A long story"}],
            "max_tokens": 100_000,
            "stream": True,
        }
    ).encode()
    with qtbot.waitSignal(controller.api.answering_changed, timeout=60_000, check_params_cb=lambda on: on):
        sock = socket.create_connection((host, int(port)))
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: "
            + host.encode()
            + b"\r\n"
            + f"Authorization: Bearer {controller.api.token()}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
    assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    with qtbot.waitSignal(
        controller.api.answering_changed, timeout=60_000, check_params_cb=lambda on: not on
    ):
        sock.close()
    stats = engine.last_stats
    assert stats.finish_reason == FinishReason.CANCELLED
    assert stats.completion_tokens < 2048 - stats.prompt_tokens  # it did not run to the context's end
    with qtbot.waitSignal(controller.conversations.generation_finished, timeout=60_000) as finished:
        controller.conversations.send("And now the window")
    assert controller.store.get_message(finished.args[0]).status == "complete"


def test_the_window_s_stop_stops_an_api_answer(served, qtbot) -> None:
    controller, engine = served
    thread, errors = endless_answer(controller, "Go on forever")
    with qtbot.waitSignal(controller.api.answering_changed, timeout=60_000, check_params_cb=lambda on: on):
        thread.start()
    assert controller.api.answering
    with qtbot.waitSignal(
        controller.api.answering_changed, timeout=60_000, check_params_cb=lambda on: not on
    ):
        controller.api.stop_answer()
    thread.join(60)
    assert not thread.is_alive()
    assert engine.last_stats.finish_reason == FinishReason.CANCELLED
    assert len(errors) == 1
    assert "stopped in Scout Chat" in str(errors[0])


def test_requests_queue_with_the_window_s_chat(served, qtbot) -> None:
    """An API request sent while the window answers waits for it, then is answered."""
    controller, _engine = served
    controller.update_settings(controller.settings.replace(max_tokens=200))
    answers: list[str] = []

    def ask() -> None:
        with client(controller) as api:
            answer = api.chat.completions.create(
                model="tiny-llama4", messages=[{"role": "user", "content": "hi"}], max_tokens=4
            )
            answers.append(answer.choices[0].message.content or "")

    order: list[str] = []
    controller.conversations.generation_finished.connect(lambda *_: order.append("window"))
    controller.api.answering_changed.connect(lambda on: order.append("api") if on else None)
    thread = threading.Thread(target=ask)
    with qtbot.waitSignal(controller.conversations.tokens_streamed, timeout=60_000):
        controller.conversations.send("Tell me a story")
    thread.start()
    qtbot.waitUntil(lambda: len(answers) == 1 and order[-1:] != [], timeout=60_000)
    thread.join(60)
    assert order[:2] == ["window", "api"]


def test_the_token_and_the_prompt_never_reach_the_log(served, caplog) -> None:
    controller, _engine = served
    secret_prompt = "my secret recipe for bread"
    with caplog.at_level(logging.DEBUG):
        with client(controller) as api:
            api.chat.completions.create(
                model="tiny-llama4", messages=[{"role": "user", "content": secret_prompt}], max_tokens=4
            )
            with pytest.raises(openai.AuthenticationError):
                api.with_options(api_key=controller.api.token() + "x").models.list()
        raw(
            controller,
            "GET",
            "/v1/models",
            Authorization=f"Bearer {controller.api.token()}",
            Host="evil.example",
        )
    logged = caplog.text + "".join(str(r.args) for r in caplog.records)
    assert "API request refused: 401" in logged  # the log does say what happened
    assert controller.api.token() not in logged
    assert secret_prompt not in logged


def test_the_server_listens_only_while_turned_on(make_controller, qtbot, monkeypatch) -> None:
    listened: list[Any] = []
    real_listen = socket.socket.listen

    def listen(self: socket.socket, *args: Any) -> None:
        listened.append(self.getsockname())
        real_listen(self, *args)

    monkeypatch.setattr(socket.socket, "listen", listen)
    controller = make_controller(settings=Settings())  # the default: off
    assert controller.api.address == ""
    assert listened == []
    with qtbot.waitSignal(controller.api.state_changed) as on:
        controller.update_settings(controller.settings.replace(api_server=True, api_port=0))
    host, port = on.args[0].rsplit(":", 1)
    assert listened == [(host, int(port))]
    assert host == "127.0.0.1"
    with qtbot.waitSignal(controller.api.state_changed) as off:
        controller.update_settings(controller.settings.replace(api_server=False))
    assert off.args == [""]
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((host, int(port)), timeout=5).close()


def test_no_model_loaded_is_503(make_controller) -> None:
    controller = make_controller(settings=SETTINGS)
    status, body = raw(
        controller,
        "POST",
        "/v1/chat/completions",
        {"model": "x", "messages": [{"role": "user", "content": "hi"}]},
        Authorization=f"Bearer {controller.api.token()}",
    )
    assert status == 503
    assert body["error"]["code"] == "model_not_loaded"


def test_the_window_shows_and_stops_an_api_answer_and_settings_turn_it_on(served, qtbot, show_window) -> None:
    from PySide6.QtGui import QGuiApplication

    controller, engine = served
    window = show_window(controller)
    status = window.status
    assert status.api_label.isVisible()
    assert status.api_label.text() == f"API on {controller.api.address}"

    dialog = window.open_settings()
    assert dialog.api_server.isChecked()
    assert not dialog.api_host_warning.isVisible()
    dialog.api_host.setText("0.0.0.0")
    assert dialog.api_host_warning.isVisible()  # reachable from other computers: said so
    dialog.api_host.setText("127.0.0.1")
    dialog.copy_api_key.click()
    assert QGuiApplication.clipboard().text() == controller.api.token()
    dialog.reject()

    thread, errors = endless_answer(controller, "Go on")
    with qtbot.waitSignal(controller.api.answering_changed, timeout=60_000, check_params_cb=lambda on: on):
        thread.start()
    assert status.api_label.text() == "Answering an API request…"
    assert status.stop_api_button.isVisible()
    with qtbot.waitSignal(
        controller.api.answering_changed, timeout=60_000, check_params_cb=lambda on: not on
    ):
        status.stop_api_button.click()
    thread.join(60)
    assert engine.last_stats.finish_reason == FinishReason.CANCELLED
    assert len(errors) == 1
    assert "stopped in Scout Chat" in str(errors[0])  # a 409 or an error event, whenever it came
    assert not status.stop_api_button.isVisible()

    dialog = window.open_settings()
    dialog.api_server.setChecked(False)
    with qtbot.waitSignal(controller.api.state_changed):
        dialog.accept()
    assert controller.api.address == ""
    assert not status.api_label.isVisible()


def test_a_burst_of_50_requests_is_answered_in_order_of_arrival_or_refused_with_429(served, qtbot) -> None:
    """50 official clients at once: each is answered (in the order the server queued them) or
    refused with 429 once the queue limit is reached; none is lost and none hangs."""
    from app.core.api_server import MAX_PENDING

    controller, _engine = served
    started: list[int] = []
    controller.api.answering_changed.connect(
        lambda on: started.append(controller.api.answering_job or 0) if on else None
    )
    answered: dict[int, str] = {}  # client number → the answer's id
    refused: list[int] = []  # their status (429, with the queue's sentence)
    other: list[BaseException] = []
    gate = threading.Barrier(50)

    def ask(number: int) -> None:
        try:
            with client(controller) as api:
                gate.wait(60)
                answer = api.chat.completions.create(
                    model="tiny-llama4",
                    messages=[{"role": "user", "content": f"Request {number}"}],
                    max_tokens=4,
                )
            assert answer.choices[0].message.content is not None
            answered[number] = answer.id
        except openai.RateLimitError as exc:
            refused.append(exc.status_code if "Too many requests are waiting" in exc.message else -1)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            other.append(exc)

    threads = [threading.Thread(target=ask, args=(n,)) for n in range(50)]
    for thread in threads:
        thread.start()
    qtbot.waitUntil(lambda: not any(t.is_alive() for t in threads), timeout=300_000)
    assert other == []
    assert set(refused) <= {429}
    assert len(answered) + len(refused) == 50  # none lost
    # a request is refused only while MAX_PENDING are queued, and those are all answered
    assert len(answered) >= min(50, MAX_PENDING)
    ids = sorted(int(i.removeprefix("chatcmpl-")) for i in answered.values())
    qtbot.waitUntil(lambda: len(started) == len(answered), timeout=60_000)
    assert started == ids  # the worker took them in the order the server queued them
    qtbot.waitUntil(lambda: not controller.api.answering, timeout=60_000)  # the last "finished" signal


@pytest.fixture(scope="module")
def tiny_vision_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with its vision projector beside it, in a folder of their own."""
    from app.core.tiny_model import TinyModelSpec, write_tiny_model
    from app.core.tiny_vision import write_tiny_projector

    folder = tmp_path_factory.mktemp("vision")
    model = write_tiny_model(folder / "tiny-llama4.gguf")[0]
    write_tiny_projector(folder / "mmproj-tiny-llama4.gguf", TinyModelSpec())
    return model


def test_a_picture_as_a_data_uri_reaches_a_model_with_vision(
    qtbot, make_controller, tiny_vision_model: Path
) -> None:
    from app.core.hardware import SimulatedHardware
    from app.core.planner import PlanOverrides, plan_load
    from tests.vision_fixtures import png_bytes

    hardware = SimulatedHardware.cpu_only(ram_gb=32).probe()
    controller = make_controller(  # the planner finds the projector beside the model
        LlamaEngine(), SETTINGS, planner=lambda request: plan_load(request, hardware)
    )
    with qtbot.waitSignal(controller.models.model_loaded, timeout=60_000) as loaded:
        controller.models.load_model(str(tiny_vision_model), PlanOverrides(n_ctx=2048))
    assert loaded.args[0].has_vision
    uri = "data:image/png;base64," + base64.b64encode(png_bytes(48, 40, gradient=True)).decode()
    question: Any = {"type": "text", "text": "What is in this picture?"}
    picture: Any = {"type": "image_url", "image_url": {"url": uri}}
    with client(controller) as api:
        text_only = api.chat.completions.create(
            model="tiny-llama4", messages=[{"role": "user", "content": [question]}], max_tokens=4
        )
        with_picture = api.chat.completions.create(
            model="tiny-llama4", messages=[{"role": "user", "content": [question, picture]}], max_tokens=4
        )
        streamed = list(
            api.chat.completions.create(
                model="tiny-llama4",
                messages=[{"role": "user", "content": [picture, question]}],
                max_tokens=4,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
    assert text_only.usage is not None
    assert with_picture.usage is not None
    assert with_picture.choices[0].message.content is not None
    # the picture's tokens were read by the model (the projector's image embeddings)
    assert with_picture.usage.prompt_tokens > text_only.usage.prompt_tokens
    assert streamed[-1].usage is not None
    assert streamed[-1].usage.prompt_tokens == with_picture.usage.prompt_tokens


def test_the_composer_s_stop_and_esc_stop_an_api_answer(served, qtbot, show_window) -> None:
    """While the window shows "Answering an API request…", its composer's Stop and Chat → Stop
    (Esc) stop that answer; typing still sends (after it)."""

    controller, engine = served
    window = show_window(controller)
    assert window.composer.send_button.accessibleName() == "Send"
    assert not window.stop_action.isEnabled()
    for stop in (window.composer.send_button.click, window.stop_action.trigger):
        thread, errors = endless_answer(controller, "Go on")
        with qtbot.waitSignal(
            controller.api.answering_changed, timeout=60_000, check_params_cb=lambda on: on
        ):
            thread.start()
        assert window.composer.send_button.accessibleName() == "Stop"
        assert window.stop_action.isEnabled()
        window.composer.set_text("typed meanwhile")
        assert window.composer.send_button.accessibleName() == "Queue"  # text: Enter would send it
        window.composer.set_text("")
        with qtbot.waitSignal(
            controller.api.answering_changed, timeout=60_000, check_params_cb=lambda on: not on
        ):
            stop()
        thread.join(60)
        assert engine.last_stats.finish_reason == FinishReason.CANCELLED
        assert len(errors) == 1
        assert "stopped in Scout Chat" in str(errors[0])
        assert window.composer.send_button.accessibleName() == "Send"
        assert not window.stop_action.isEnabled()


def test_an_openai_client_that_closes_its_stream_cancels_the_answer(served, qtbot) -> None:
    """The official client leaving mid-stream (``stream.close()``) ends the generation; the
    window's chat is answered next, in full."""
    controller, engine = served
    controller.update_settings(controller.settings.replace(max_tokens=8))
    pieces: list[str] = []
    with (
        qtbot.waitSignal(controller.api.answering_changed, timeout=60_000, check_params_cb=lambda on: not on),
        client(controller) as api,
    ):
        stream = api.chat.completions.create(
            model="tiny-llama4",
            messages=[{"role": "user", "content": "A long story"}],
            max_tokens=100_000,
            stream=True,
        )
        for chunk in stream:
            pieces.append(chunk.choices[0].delta.content or "")
            if len(pieces) > 3:
                break
        stream.close()
    assert engine.last_stats.finish_reason == FinishReason.CANCELLED
    with qtbot.waitSignal(controller.conversations.generation_finished, timeout=60_000) as finished:
        controller.conversations.send("And now the window")
    assert controller.store.get_message(finished.args[0]).status == "complete"
    assert engine.last_stats.finish_reason != FinishReason.CANCELLED


def ask_and_wait(qtbot, controller: AppController, messages: list[dict[str, str]]) -> str:
    """One answer through the official client; returns once the GUI thread heard it ended."""
    with (
        qtbot.waitSignal(controller.api.answering_changed, timeout=60_000, check_params_cb=lambda on: not on),
        client(controller) as api,
    ):
        reply = api.chat.completions.create(model=model_name(controller), messages=messages, max_tokens=4)  # type: ignore[arg-type]
    return reply.choices[0].message.content or ""


def test_api_conversations_are_kept_only_when_the_user_turns_it_on(served, qtbot) -> None:
    controller, _engine = served
    store = controller.conversations._store
    before = len(store.list_conversations())
    messages = [
        {"role": "system", "content": "Answer like a pirate."},
        {"role": "user", "content": "Where is the treasure buried?"},
    ]
    ask_and_wait(qtbot, controller, messages)
    assert len(store.list_conversations()) == before  # off by default: nothing stored

    controller.update_settings(controller.settings.replace(api_save_history=True))
    answer = ask_and_wait(qtbot, controller, messages)
    kept = store.list_conversations()[0]
    assert kept.title == "API: Where is the treasure buried?"
    stored = [(m.role, m.content, m.status) for m in store.messages(kept.id)]
    assert stored == [
        ("user", "Where is the treasure buried?", "complete"),
        ("assistant", answer, "complete"),
    ]
    assert store.conversation_options(kept.id) == {"system_prompt": "Answer like a pirate."}


def test_request_logging_writes_prompts_only_when_turned_on(served, qtbot, caplog) -> None:
    controller, _engine = served
    question = [{"role": "user", "content": "log this question"}]
    with caplog.at_level(logging.INFO, logger="app.workers.api"):
        ask_and_wait(qtbot, controller, question)
        assert "log this question" not in caplog.text  # off by default
        controller.update_settings(controller.settings.replace(api_log_requests=True))
        ask_and_wait(qtbot, controller, question)
    assert "user: 'log this question'" in caplog.text
    assert "answer: " in caplog.text
    assert controller.api.token() not in caplog.text
