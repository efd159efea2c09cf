"""Child process for the hostile GGUF corpus: ``python -m tests.reliability.gguf_child CASES_JSON``.

CASES_JSON maps a case name to ``{"path", "chat": bool}``. For each case it reads the header
(gguf_info) and loads the model with the real LlamaEngine (and chats when ``chat``), printing one
JSON line per case *before* and after, so a native abort names the case that killed it."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path


def say(obj: object) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main(argv: list[str]) -> int:
    from app.core.engine import LlamaEngine
    from app.core.gguf_info import read_gguf_info
    from app.core.types import ChatMessage, LoadParams, SamplingParams

    cases = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    for name, case in cases.items():
        say({"case": name, "phase": "start"})
        result: dict[str, object] = {"case": name}
        path = Path(case["path"])
        for label, fn in (
            ("info", lambda path=path: read_gguf_info(path)),
            ("info_py", lambda path=path: read_gguf_info(path, prefer_ggml=False)),
        ):
            if case.get("chat"):
                continue
            t0 = time.monotonic()
            try:
                fn()
                result[label] = "ok"
            except Exception as exc:  # noqa: BLE001 - reported to the parent
                result[label] = f"{type(exc).__name__}: {exc}"
            result[label + "_s"] = round(time.monotonic() - t0, 3)
        engine = LlamaEngine()
        t0 = time.monotonic()
        try:
            engine.load(LoadParams(model_path=path, n_ctx=512, n_threads=1))
            result["load"] = "ok"
            result["note"] = engine.model_info.chat_template_note if engine.model_info else ""
            if case.get("chat"):
                text = "".join(
                    engine.stream_chat(
                        [ChatMessage.user("hi")], SamplingParams(max_tokens=4), threading.Event()
                    )
                )
                result["chat"] = f"ok {text!r}"
        except Exception as exc:  # noqa: BLE001 - reported to the parent
            key = "chat" if result.get("load") == "ok" else "load"
            result[key] = f"{type(exc).__name__}: {getattr(exc, 'args', [''])[0]}"
        finally:
            engine.unload()
        result["load_s"] = round(time.monotonic() - t0, 3)
        say(result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
