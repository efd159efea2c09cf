"""Switching branches: what the next answer re-reads after a switch, vs re-reading everything.

A 20-turn conversation is stored as a tree in a real Store: branch A (20 turns) and branch B,
which shares A's first 10 turns and then differs (10 other turns). The real LlamaEngine answers
on branch A (its KV cache now holds A), then the store switches to B (``Store.activate``) and
B's next answer is timed; then the same prompt is read from an empty cache (what re-processing
the whole conversation costs). Then back to A. The prompts are the store's active paths, as the
app builds them.

    python -m bench.branches [--threads 1]

Prints the prompt tokens, the tokens evaluated and the prompt time of each.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from bench.generation import make_model

TURNS = 20
BRANCH_AT = 10  # branch B shares turns 1..10 with A
WORDS = ["harbour", "lantern", "meadow", "granite", "orchard", "compass", "velvet", "thunder"]


def _text(kind: str, branch: str, turn: int) -> str:
    words = " ".join(WORDS[(turn * 3 + i) % len(WORDS)] for i in range(24))
    return f"{kind} {turn} on branch {branch}: {words}."


def build_tree(store: object) -> tuple[int, int, int]:
    """The conversation: returns (conversation id, A's first differing message, B's)."""
    from app.core.store import Store

    assert isinstance(store, Store)
    conversation = store.create_conversation("Branches bench")
    fork_parent: int | None = None
    first_a = first_b = 0
    for branch in ("A", "B"):
        if branch == "B":
            store.set_active_leaf(conversation.id, fork_parent)
        for turn in range(1 if branch == "A" else BRANCH_AT + 1, TURNS + 1):
            name = branch if turn > BRANCH_AT else "shared"
            user = store.add_message(conversation.id, "user", _text("Question", name, turn))
            store.add_message(conversation.id, "assistant", _text("Answer", name, turn))
            if turn == BRANCH_AT:
                fork_parent = store.active_leaf(conversation.id)
            if turn == BRANCH_AT + 1:
                if branch == "A":
                    first_a = user.id
                else:
                    first_b = user.id
    return conversation.id, first_a, first_b


def run(threads: int) -> None:
    from app.core.engine import LlamaEngine
    from app.core.store import Store
    from app.core.types import ChatMessage, LoadParams, SamplingParams

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = make_model(folder)
        engine = LlamaEngine()
        engine.load(LoadParams(model, n_ctx=8192, n_threads=threads, n_threads_batch=threads, seed=1))
        store = Store(folder / "chat.sqlite3")
        conversation, first_a, first_b = build_tree(store)
        sampling = SamplingParams(max_tokens=1, temperature=0.0)
        cancel = threading.Event()

        def answer(label: str) -> tuple[int, int, float]:
            path = [ChatMessage(m.role, m.content) for m in store.messages(conversation)]
            path.append(ChatMessage.user("And the next question?"))
            started = time.perf_counter()
            for _ in engine.stream_chat(path, sampling, cancel):
                pass
            stats = engine.last_stats
            took = stats.prompt_eval_s or (time.perf_counter() - started)
            print(
                f"{label:<44} {stats.prompt_tokens:>6} {stats.prompt_tokens_evaluated:>9} {took * 1000:>9.1f}"
            )
            return stats.prompt_tokens, stats.prompt_tokens_evaluated, took

        print(f"{TURNS}-turn conversation, branch point after turn {BRANCH_AT}, n_threads={threads}")
        print(f"{'':<44} {'prompt':>6} {'evaluated':>9} {'ms':>9}")
        store.activate(first_a)
        answer("branch A, first answer (empty cache)")
        store.activate(first_b)
        _, switched, switch_s = answer("switch to branch B (cache holds A)")
        engine._reset_cache()
        _, whole, whole_s = answer("branch B again from an empty cache")
        store.activate(first_a)
        answer("switch back to branch A (cache holds B)")
        print(
            f"after a switch: {switched} of {whole} tokens evaluated ({switched / whole:.0%}), "
            f"{switch_s * 1000:.0f} ms vs {whole_s * 1000:.0f} ms ({whole_s / switch_s:.1f}x faster)"
        )
        store.close()
        engine.unload()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    run(args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
