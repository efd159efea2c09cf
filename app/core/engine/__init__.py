"""The model runtime: the only package that imports llama_cpp (lazily, so importing it is cheap).

* :mod:`.llama` — ``LlamaEngine``: load, chat prompt, generation loop, KV state on disk;
* :mod:`.errors` — the errors it raises, each with a message for the user;
* :mod:`.files` — checks on a model file before llama.cpp opens it; split-file parts;
* :mod:`.native` — the lazy ``llama_cpp`` import, llama.cpp's log, its tokenizer call;
* :mod:`.overrides` — tensor buffer overrides (``-ot``) through ctypes;
* :mod:`.templates` — fallback chat templates for GGUFs without one;
* :mod:`.tokens` — prompt tokenization that reuses the tokens of long pieces;
* :mod:`.vision` — image turns through libmtmd; :mod:`.probe` — dry-run buffer measurement;
* :mod:`.remote` — ``RemoteEngine``: a model on an OpenAI-compatible server (no llama_cpp import).
"""

from app.core.engine.errors import (
    ContextOverflowError,
    EngineError,
    LoadCancelled,
    ModelLoadError,
    NoModelError,
    OutOfMemoryError,
    ProjectorError,
)
from app.core.engine.files import check_model_file, first_split_part
from app.core.engine.llama import LlamaEngine
from app.core.engine.native import NATIVE_LOG, import_llama_cpp, tokenize_bytes
from app.core.hardware import physical_cores

__all__ = [
    "NATIVE_LOG",
    "ContextOverflowError",
    "EngineError",
    "LlamaEngine",
    "LoadCancelled",
    "ModelLoadError",
    "NoModelError",
    "OutOfMemoryError",
    "ProjectorError",
    "check_model_file",
    "first_split_part",
    "import_llama_cpp",
    "physical_cores",
    "tokenize_bytes",
]
