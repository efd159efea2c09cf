"""An image conversation continued with a model that cannot see images (the whole app, the real tiny
text-only model through llama.cpp): the pictures are not sent, so they are not counted; the context
meter shows what is really sent and no earlier turn is dropped."""

from __future__ import annotations

from typing import TYPE_CHECKING

from app.core.engine.vision import image_token_estimate
from app.core.tiny_model import TinyModelSpec, write_tiny_model
from tests.core.test_text_only_counts import PLAIN_TEMPLATE
from tests.e2e.test_app import start_app, wait_answer, wait_loaded  # noqa: F401 - start_app: fixture
from tests.vision_fixtures import png_bytes

if TYPE_CHECKING:
    from pathlib import Path

    from app.core.turns import Turn

N_CTX = 2048
PICTURES = 3
WIDTH, HEIGHT = 1344, 1008  # Scout would cut each into tiles: thousands of tokens if counted


def test_image_conversation_on_a_text_only_model(qtbot, start_app, tmp_path: Path) -> None:  # noqa: F811
    # no projector beside it; a template that would print an image part's data: URI if it got one
    spec = TinyModelSpec(chat_template=PLAIN_TEMPLATE)
    text_model = write_tiny_model(tmp_path / "text-only" / "tiny-text.gguf", spec)[0]
    app = start_app(tmp_path / "data", "--model", str(text_model), "--n-ctx", str(N_CTX))
    wait_loaded(qtbot, app)
    controller, store, window = app.controller, app.store, app.window
    controller.update_settings(controller.settings.replace(max_tokens=24))  # a short answer is enough
    info = controller.models.model_info
    assert not info.has_vision
    n_ctx = controller.models.n_ctx
    assert n_ctx <= 4 * N_CTX

    # a conversation written earlier with a vision model: three turns, a picture in each question
    image_tokens = image_token_estimate(WIDTH, HEIGHT)
    assert PICTURES * image_tokens > n_ctx  # counting the pictures would overflow the context
    conversation = store.create_conversation("Holiday pictures")
    questions = [f"Picture {n}: what is in this photo?" for n in range(1, PICTURES + 1)]
    for n, question in enumerate(questions, start=1):
        picture = tmp_path / f"photo{n}.png"
        picture.write_bytes(png_bytes(WIDTH, HEIGHT, gradient=True))
        asked = store.add_message(conversation.id, "user", question)
        meta = {"state": "ready", "width": WIDTH, "height": HEIGHT, "tokens": image_tokens}
        store.add_attachment(
            conversation.id, "image", picture.name, path=str(picture), meta=meta, message_id=asked.id
        )
        store.add_message(conversation.id, "assistant", f"A beach at sunset, photo {n}.")

    contexts: list[tuple[int, int]] = []
    controller.conversations.context_changed.connect(lambda used, total: contexts.append((used, total)))
    controller.conversations.open_conversation(conversation.id)
    qtbot.waitUntil(lambda: any(used > 0 for used, _total in contexts), timeout=30_000)
    used, total = next((u, t) for u, t in contexts if u > 0)
    assert total == n_ctx
    assert used < n_ctx // 4, f"the meter counts {used} of {n_ctx}: the pictures were counted"
    assert window.context_label.text().startswith("Context ")
    assert window.context_meter.property("level") == "normal"

    turns: list[Turn] = []
    infos: list[str] = []
    controller.conversations.turn_decided.connect(turns.append)
    controller.notices.info_message.connect(infos.append)
    message_id, stats = wait_answer(
        qtbot, app, lambda: controller.conversations.send("Which photo was the best?")
    )
    sent = turns[-1]
    assert sent.dropped == 0  # the whole history went in
    assert sent.images_left_out == PICTURES
    assert not any(m.images for m in sent.messages)
    sent_texts = [m.content for m in sent.messages]
    for question in questions:
        assert question in sent_texts
    assert sent_texts[-1] == "Which photo was the best?"
    assert sent.prompt_tokens < n_ctx // 4
    assert stats.prompt_tokens == sent.prompt_tokens  # what was counted is what llama.cpp read
    assert any("cannot see images" in text for text in infos)
    assert not [m for m in store.messages(conversation.id) if m.role == "notice"]  # no "left out" notice
    assert contexts[-1][0] == stats.context_used < n_ctx // 4
    assert store.get_message(message_id).status == "complete"
