"""llama.cpp's C side: the lazy ``llama_cpp`` import, its log routed to Python, and its tokenizer."""

from __future__ import annotations

import collections
import contextlib
import ctypes
import logging
import threading
from typing import TYPE_CHECKING, Any

from app.core.engine.errors import EngineError

if TYPE_CHECKING:
    from collections.abc import Callable

native_log = logging.getLogger("app.core.engine.llama_cpp")


# --------------------------------------------------------------------------------------------
# llama.cpp's log: routed to Python logging, with a ring buffer of recent lines so that a failed
# load can tell the user *why* ("unknown model architecture", "failed to allocate ..." …).


class _NativeLog:
    def __init__(self) -> None:
        self.lines: collections.deque[str] = collections.deque(maxlen=4000)
        self.listeners: list[Callable[[int, str], None]] = []
        self._partial = ""
        self.total = 0  # lines seen since start (the deque keeps only the last ones)
        self._lock = threading.Lock()
        self._callback: Any = None
        self._installed = False

    def install(self, llama_cpp: Any) -> None:
        if self._installed:
            return

        def on_log(level: int, text: bytes, _user_data: Any) -> None:
            with contextlib.suppress(Exception):  # never raise into C
                self._on_text(level, text.decode("utf-8", errors="replace"))

        self._callback = llama_cpp.llama_log_callback(on_log)  # kept alive for the process's life
        llama_cpp.llama_log_set(self._callback, ctypes.c_void_p(0))
        self._installed = True

    def _on_text(self, level: int, text: str) -> None:
        with self._lock:
            text = self._partial + text
            *complete, self._partial = text.split("\n")
            listeners = list(self.listeners)
        for line in complete:
            if not line.strip():
                continue
            self.lines.append(line)
            self.total += 1
            # ggml levels: 1 debug? 2 info, 3 warn, 4 error (5 = continuation)
            native_log.log(logging.INFO if level >= 4 else logging.DEBUG, "%s", line)
            for listener in listeners:
                listener(level, line)

    def recent(self, n: int = 25) -> str:
        return "\n".join(list(self.lines)[-n:])

    def mark(self) -> int:
        return self.total

    def since(self, mark: int) -> list[str]:
        """The lines logged after ``mark()`` returned ``mark`` (as many as are still kept)."""
        count = min(self.total - mark, len(self.lines))
        return list(self.lines)[-count:] if count > 0 else []


NATIVE_LOG = _NativeLog()


def import_llama_cpp() -> Any:
    import llama_cpp

    NATIVE_LOG.install(llama_cpp)
    return llama_cpp


def tokenize_bytes(llm: Any, data: bytes, *, add_bos: bool, special: bool) -> list[int]:
    """llama.cpp's tokenizer with an output buffer sized to the text (see :func:`tokenize_vocab`)."""
    return tokenize_vocab(llm._model.vocab, data, add_bos, special)


def tokenize_vocab(vocab: Any, data: bytes, add_bos: bool, special: bool) -> list[int]:
    """``Llama.tokenize`` allocates a buffer of ``n_ctx_train`` tokens on every call: for Scout
    (trained context 10,485,760) that is 40 MB zeroed per call, ~40 ms before any text is read. A
    token covers at least one byte, so ``len(data)`` plus the added BOS/EOS always suffices; the
    retry on a negative count (the size llama.cpp needs) is kept anyway. Installed in place of
    ``LlamaModel.tokenize`` on every loaded model, so llama-cpp-python's own callers use it too."""
    llama_cpp = import_llama_cpp()
    size = len(data) + 4
    for _ in range(2):
        buf = (llama_cpp.llama_token * size)()
        n = int(llama_cpp.llama_tokenize(vocab, data, len(data), buf, size, add_bos, special))
        if n >= 0:
            tokens: list[int] = buf[:n]  # a ctypes array's slice is a list
            return tokens
        size = -n
    detail = f"llama_tokenize returned {n} for {len(data)} bytes"
    raise EngineError("The text could not be tokenized.", detail)
