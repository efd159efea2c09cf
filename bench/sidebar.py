"""The sidebar with many conversations: a full reload (SQLite query + model reset), an answered
conversation moving to the top of its group (``conversation_updated``), and a pin or unpin
(``conversation_pinned``, where this version has pins). Offscreen, real widgets and SQLite.

    QT_QPA_PLATFORM=offscreen python -m bench.sidebar --conversations 5000 --pinned 50
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def _median_ms(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1000:.1f} ms (min {min(samples) * 1000:.1f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=5000)
    parser.add_argument("--pinned", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args(argv)

    from PySide6.QtWidgets import QApplication

    from app.core.store import Store
    from app.ui.sidebar import ConversationSidebar

    app = QApplication.instance() or QApplication(sys.argv[:1])
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "bench.sqlite3")
        with store.transaction():
            made = [store.create_conversation(f"Conversation {n}") for n in range(args.conversations)]
        pins = hasattr(store, "set_pinned")
        if pins:
            for conversation in made[: args.pinned]:
                store.set_pinned(conversation.id, True)
        sidebar = ConversationSidebar(store.list_conversations)
        sidebar.resize(260, 800)
        sidebar.show()
        app.processEvents()
        sidebar.set_current(made[len(made) // 2].id)

        def timed(action) -> float:  # type: ignore[no-untyped-def]
            start = time.perf_counter()
            action()
            app.processEvents()  # the relayout the change causes
            return time.perf_counter() - start

        reloads = [timed(sidebar.reload) for _ in range(args.repeat)]
        updates = []
        for n in range(args.repeat):
            picked = store.get_conversation(made[-1 - n * 7].id)
            assert picked is not None
            later = dataclasses.replace(picked, updated_at=time.time() + n)
            updates.append(timed(lambda later=later: sidebar.conversation_updated(later)))
        pinning: list[float] = []
        if pins:
            for n in range(args.repeat):
                target = store.get_conversation(made[-100 - n].id)
                assert target is not None
                store.set_pinned(target.id, n % 2 == 0)
                changed = store.get_conversation(target.id)
                pinning.append(timed(lambda changed=changed: sidebar.conversation_pinned(changed)))
        rows = sidebar.model.rowCount()
        sidebar.close()
        store.close()
    out = sys.stdout
    out.write(f"conversations: {args.conversations} ({args.pinned if pins else 0} pinned), rows {rows}\n")
    out.write(f"reload (query + reset): {_median_ms(reloads)}\n")
    out.write(f"answered conversation to the top: {_median_ms(updates)}\n")
    if pinning:
        out.write(f"pin / unpin: {_median_ms(pinning)}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
