"""SIGKILL the app (a child process with the real AppController, Store and engine process) at
random moments while it streams an answer or ingests a document; the database must always come
back.

Figures (kills, worst loss) are printed with ``-s`` and recorded in docs/reliability.md.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.config import AppPaths
from app.core.store import Store
from tests.reliability.figures import emit

ROOT = Path(__file__).resolve().parents[2]
# 20 SIGKILLs of the app in all (issue 9): 14 while streaming an answer, 6 while ingesting a document.
CHAT_KILLS = int(os.environ.get("SCOUT_RELIABILITY_KILLS", "14"))
INGEST_KILLS = 6
BRANCH_KILLS = 6  # SIGKILLs while a regenerated answer (a new sibling branch) streams
SAVE_WINDOW_S = 1.0  # at most one second of streamed text may be lost


def _spawn(*args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.reliability.chat_child", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _read_side(side: Path) -> list[str]:
    try:
        return side.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []


def _wait_for(side: Path, proc: subprocess.Popen[bytes], predicate, timeout: float = 30.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = _read_side(side)
        if predicate(lines):
            return lines
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            pytest.fail(f"child exited early ({proc.returncode}): {lines[-5:]}\n{err[-3000:]}")
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    pytest.fail(f"child never got there: {_read_side(side)[-5:]}")


def _kill(proc: subprocess.Popen[bytes]) -> float:
    killed_at = time.monotonic()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    if proc.stderr:
        proc.stderr.close()
    return killed_at


def _integrity(db: Path) -> str:
    conn = sqlite3.connect(str(db))
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


def _token_lines(lines: list[str]) -> list[tuple[float, int]]:
    out = []
    for line in lines:
        parts = line.split()
        if len(parts) == 2 and parts[0][0].isdigit():
            out.append((float(parts[0]), int(parts[1])))
    return out


def test_sigkill_while_streaming_loses_at_most_one_second(tiny_model: Path, tmp_path: Path) -> None:
    rng = random.Random(int(os.environ.get("SCOUT_RELIABILITY_SEED", "9")))
    worst_lag = 0.0
    summary: list[tuple[int, int, int, float]] = []
    finished_first = 0
    for run in range(CHAT_KILLS * 2):
        if len(summary) == CHAT_KILLS:
            break
        data = tmp_path / f"run{run}"
        side = tmp_path / f"run{run}.side"
        proc = _spawn("chat", str(data), str(tiny_model), str(side))
        _wait_for(side, proc, lambda ls: len(_token_lines(ls)) >= 1)
        time.sleep(rng.uniform(0.05, 2.5))
        killed_at = _kill(proc)

        db = data / "scout-chat.sqlite3"
        assert _integrity(db) == "ok", f"run {run}: integrity_check failed"
        lines = _read_side(side)
        ticks = _token_lines(lines)
        if "finished" in lines:  # the answer ended before the kill: it must be complete and whole
            with Store(db) as store:
                answer = store.messages(store.list_conversations()[0].id)[-1]
                assert answer.status == "complete"
                assert len(answer.content) == ticks[-1][1]
            finished_first += 1
            continue
        before = [chars for t, chars in ticks if t <= killed_at - SAVE_WINDOW_S]
        must_have = before[-1] if before else 0
        streamed = ticks[-1][1] if ticks else 0

        with Store(db) as store:  # reopening marks the answer left streaming as interrupted
            conversations = store.list_conversations()
            assert len(conversations) == 1, f"run {run}: conversation lost"
            messages = store.messages(conversations[0].id)
            roles = [m.role for m in messages]
            assert roles[0] == "user"
            assert "lighthouse" in messages[0].content
            assert roles[-1] == "assistant", f"run {run}: {roles}"
            answer = messages[-1]
            assert answer.status == "interrupted"
            assert len(answer.content) >= must_have, (
                f"run {run}: saved {len(answer.content)} chars, but {must_have} had streamed "
                f"{SAVE_WINDOW_S} s before the kill (of {streamed})"
            )
        # what was lost, in seconds of streaming: from the first unsaved delta to the kill
        unsaved = [t for t, chars in ticks if chars > len(answer.content)]
        lag = killed_at - unsaved[0] if unsaved else 0.0
        worst_lag = max(worst_lag, lag)
        summary.append((run, streamed, len(answer.content), round(lag, 3)))
        assert _integrity(db) == "ok"
    emit(f"streaming kills: {len(summary)} (+{finished_first} finished first), worst loss {worst_lag:.3f} s")
    for n, streamed, saved, lost in summary:
        emit(f"  run {n}: streamed {streamed} chars, saved {saved}, lost the last {lost:.3f} s")


def _branched_conversation(database: Path) -> tuple[int, int, list[tuple[int, str, str, int | None]]]:
    """A conversation with branches: q1 → a1 → q2 → (a2 → q3 → a3 | a2') → returns its id, the
    answer to regenerate (a2, on the branch shown) and every message as (id, role, text, parent)."""
    with Store(database) as store:
        c = store.create_conversation("Branches")
        q1 = store.add_message(c.id, "user", "Where is the lighthouse?")
        a1 = store.add_message(c.id, "assistant", "On the northern cape, above the harbour.")
        q2 = store.add_message(c.id, "user", "Who keeps it?")
        a2b = store.add_message(c.id, "assistant", "A keeper named Ada, for thirty years.")
        a2 = store.add_message(c.id, "assistant", "Nobody: it is automatic now.", parent_id=q2.id)
        q3 = store.add_message(c.id, "user", "Since when?")
        a3 = store.add_message(c.id, "assistant", "Since 1987, when the last keeper retired.")
        assert [m.id for m in store.messages(c.id)] == [q1.id, a1.id, q2.id, a2.id, q3.id, a3.id]
        tree = [(m.id, m.role, m.content, m.parent_id) for m in store.tree(c.id)]
        assert len(tree) == 7
        assert a2b.parent_id == q2.id
    return c.id, a2.id, tree


def test_sigkill_while_a_branch_streams_keeps_every_other_branch(tiny_model: Path, tmp_path: Path) -> None:
    """Regenerate an answer in a conversation with branches and SIGKILL the app while the new
    sibling streams: that branch loses at most the last second; every other message (both
    earlier siblings, the sub-branch under one of them) is intact, and the conversation reopens on
    the new branch."""
    rng = random.Random(int(os.environ.get("SCOUT_RELIABILITY_SEED", "9")) + 20)
    worst_lag = 0.0
    summary: list[tuple[int, int, int, float]] = []
    for run in range(BRANCH_KILLS * 2):
        if len(summary) == BRANCH_KILLS:
            break
        data = tmp_path / f"branch{run}"
        db = AppPaths.under(data).ensure().database
        conversation, regenerated, before_tree = _branched_conversation(db)
        side = tmp_path / f"branch{run}.side"
        proc = _spawn("branch", str(data), str(tiny_model), str(side), str(conversation), str(regenerated))
        _wait_for(side, proc, lambda ls: len(_token_lines(ls)) >= 1)
        time.sleep(rng.uniform(0.05, 2.5))
        killed_at = _kill(proc)

        assert _integrity(db) == "ok", f"run {run}: integrity_check failed"
        lines = _read_side(side)
        if "finished" in lines:
            continue  # the answer ended before the kill: nothing to measure
        ticks = _token_lines(lines)
        before = [chars for t, chars in ticks if t <= killed_at - SAVE_WINDOW_S]
        must_have = before[-1] if before else 0
        streamed = ticks[-1][1] if ticks else 0
        with Store(db) as store:  # reopening marks the answer left streaming as interrupted
            tree = store.tree(conversation)
            # every message that was there before is there unchanged, under the same parent
            assert [(m.id, m.role, m.content, m.parent_id) for m in tree[: len(before_tree)]] == before_tree
            assert all(m.status == "complete" for m in tree[: len(before_tree)])
            new = tree[len(before_tree) :]
            assert [m.role for m in new] == ["assistant"], f"run {run}: {[m.role for m in new]}"
            answer = new[0]
            q2 = before_tree[2][0]
            assert answer.parent_id == q2  # a sibling of the two earlier answers
            assert answer.status == "interrupted"
            assert len(answer.content) >= must_have, (
                f"run {run}: saved {len(answer.content)} chars, but {must_have} had streamed "
                f"{SAVE_WINDOW_S} s before the kill (of {streamed})"
            )
            # the conversation reopens on the new branch; the others are one ‹ › away
            path = [m.id for m in store.messages(conversation)]
            assert path == [before_tree[0][0], before_tree[1][0], q2, answer.id]
            assert store.children(conversation)[q2] == [before_tree[3][0], before_tree[4][0], answer.id]
            store.activate(before_tree[4][0])  # the earlier branch, with its own follow-up, is whole
            assert [m.content for m in store.messages(conversation)][-3:] == [
                before_tree[4][2],
                before_tree[5][2],
                before_tree[6][2],
            ]
        unsaved = [t for t, chars in ticks if chars > len(answer.content)]
        lag = killed_at - unsaved[0] if unsaved else 0.0
        worst_lag = max(worst_lag, lag)
        summary.append((run, streamed, len(answer.content), round(lag, 3)))
        assert _integrity(db) == "ok"
    assert len(summary) == BRANCH_KILLS, "the answers kept ending before the kill"
    emit(f"branch kills: {len(summary)}, worst loss of the streaming branch {worst_lag:.3f} s")
    for n, streamed, saved, lost in summary:
        emit(f"  run {n}: streamed {streamed} chars, saved {saved}, lost the last {lost:.3f} s")


@pytest.fixture(scope="module")
def big_markdown(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = random.Random(2)
    words = [
        "alpha",
        "beta",
        "gamma",
        "delta",
        "lighthouse",
        "keeper",
        "storm",
        "harbour",
        "ship",
        "lantern",
        "rope",
        "tide",
    ]
    path = tmp_path_factory.mktemp("docs") / "big notes.md"
    with path.open("w", encoding="utf-8") as fh:
        for s in range(9000):
            fh.write(f"## Section {s}\n\n")
            for _p in range(5):
                fh.write(" ".join(rng.choice(words) for _ in range(60)) + "\n\n")
    return path


def test_sigkill_while_ingesting_a_document(tiny_model: Path, big_markdown: Path, tmp_path: Path) -> None:
    """The attachment row may be left 'processing', but the database and the conversation survive."""
    rng = random.Random(5)
    states = []
    for run in range(INGEST_KILLS):
        data = tmp_path / f"ingest{run}"
        side = tmp_path / f"ingest{run}.side"
        proc = _spawn("ingest", str(data), str(tiny_model), str(side), str(big_markdown))
        _wait_for(side, proc, lambda ls: any(line.startswith("attached") for line in ls))
        time.sleep(rng.uniform(0.0, 1.2))  # during reading, chunking or storing the chunks
        if proc.poll() is None:
            _kill(proc)
        else:  # it finished first
            proc.wait()
            if proc.stderr:
                proc.stderr.close()
        db = data / "scout-chat.sqlite3"
        assert _integrity(db) == "ok"
        with Store(db) as store:
            conversations = store.list_conversations()
            assert len(conversations) == 1
            attachments = store.attachments(conversations[0].id)
            assert [a.name for a in attachments] == [big_markdown.name]
            states.append(attachments[0].meta.get("state"))
            # chunks are either all there or none (one transaction)
            n_chunks = len(store.chunk_index().chunks(attachments[0].id))
            assert (n_chunks > 0) == (states[-1] == "ready"), (states[-1], n_chunks)
        assert _integrity(db) == "ok"
    emit(f"ingest kills: {INGEST_KILLS}, attachment states after the kill: {states}")


def test_an_attachment_left_processing_by_a_crash_is_recovered_on_reopen(
    qtbot, tiny_model: Path, big_markdown: Path, tmp_path: Path
) -> None:
    """Found by this suite, fixed in f64b383: a reopen must not leave the chip 'processing' forever."""
    from app.config import AppPaths, load_settings
    from app.workers.controller import AppController
    from tests.fakes import FakeEngine

    data = tmp_path / "ingest-reopen"
    side = tmp_path / "ingest-reopen.side"
    proc = _spawn("ingest", str(data), str(tiny_model), str(side), str(big_markdown))
    _wait_for(side, proc, lambda ls: any(line.startswith("attached") for line in ls))
    _kill(proc)
    paths = AppPaths.under(data).ensure()
    store = Store(paths.database)
    controller = AppController(store, paths, load_settings(paths), lambda: FakeEngine())
    states: list[object] = []

    def settled() -> bool:
        states[:] = [a.meta.get("state") for a in controller.attachments.pending_attachments()]
        return bool(states) and all(state != "processing" for state in states)

    try:
        controller.restore_session()
        # A re-ingest, if one is started, takes as long as the machine needs (not a fixed 3 s: on a
        # loaded 2-core machine it took longer, and its result then arrived after the store was closed).
        qtbot.waitUntil(settled, timeout=120_000)
    finally:
        controller.shutdown()
        store.close()
    assert states, "the attachment row is gone"
    assert all(state != "processing" for state in states), states
