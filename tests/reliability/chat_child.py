"""Child process for the crash-safety tests: the real AppController + Store + the app's engine
(``app.main.make_engine``: llama.cpp in its own engine process, as the app runs it).

``python -m tests.reliability.chat_child chat DATA_DIR MODEL SIDE_FILE``
    loads the tiny model, sends one message and streams a long answer; every streamed delta
    appends ``<monotonic time> <chars streamed so far>`` to SIDE_FILE (flushed: a SIGKILL keeps it).
``python -m tests.reliability.chat_child branch DATA_DIR MODEL SIDE_FILE CONVERSATION ANSWER``
    as ``chat``, but in a conversation already in DATA_DIR's database: opens CONVERSATION and
    regenerates ANSWER, so a new sibling branch streams beside the branches already there.
``python -m tests.reliability.chat_child ingest DATA_DIR MODEL SIDE_FILE DOC``
    attaches DOC (a big generated document) and writes ``attached <id>`` then progress lines.

The parent SIGKILLs this process at a random moment and then inspects the database.
"""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ["HF_HUB_OFFLINE"] = "1"


def main(argv: list[str]) -> int:
    from pathlib import Path

    from PySide6.QtCore import QCoreApplication, QTimer

    from app.config import AppPaths, Settings
    from app.core.store import Store
    from app.main import make_engine
    from app.workers.controller import AppController

    mode, data_dir, model, side = argv[0], Path(argv[1]), argv[2], argv[3]
    app = QCoreApplication([])
    paths = AppPaths.under(data_dir).ensure()
    store = Store(paths.database)
    settings = Settings(max_tokens=100_000, n_ctx=32768, n_threads=1, temperature=1.0, top_p=1.0, min_p=0.0)
    engine = make_engine(paths)  # an EngineProxy: SIGKILL of this process must end its engine too
    controller = AppController(store, paths, settings, lambda: engine)
    out = open(side, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - lives as long as the process
    streamed = [0]

    def log_line(text: str) -> None:
        out.write(text + "\n")
        out.flush()

    def on_tokens(_message_id: int, text: str) -> None:
        streamed[0] += len(text)
        log_line(f"{time.monotonic():.4f} {streamed[0]}")

    def on_loaded(_info: object) -> None:
        log_line("loaded")
        if mode == "chat":
            controller.conversations.send("Tell me a very long story about a lighthouse keeper.")
        elif mode == "branch":
            controller.conversations.open_conversation(int(argv[4]))
            controller.conversations.regenerate(int(argv[5]))
        else:
            controller.attachments.attach_files([argv[4]])

    def on_finished(*_args: object) -> None:
        log_line("finished")
        app.quit()

    def on_failed(*args: object) -> None:
        log_line(f"failed {args!r}")
        app.quit()

    controller.models.model_loaded.connect(on_loaded)
    controller.models.model_load_failed.connect(on_failed)
    controller.conversations.tokens_streamed.connect(on_tokens)
    controller.conversations.generation_finished.connect(on_finished)
    controller.conversations.generation_failed.connect(on_failed)
    controller.attachments.attachment_added.connect(
        lambda a: log_line(f"attached {a.id} {a.meta.get('state')}")
    )
    controller.attachments.attachment_progress.connect(lambda aid, f: log_line(f"progress {aid} {f:.3f}"))
    controller.attachments.attachment_updated.connect(
        lambda a: (log_line(f"updated {a.id} {a.meta.get('state')}"), app.quit())
    )
    controller.attachments.attachment_failed.connect(
        lambda *a: (log_line(f"attach-failed {a!r}"), app.quit())
    )
    controller.models.load_model(model)
    QTimer.singleShot(120_000, app.quit)  # never outlive a broken parent
    app.exec()
    controller.shutdown()
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
