"""llama.cpp's own speed on this machine, measured on two generated models (the forecast's probe).

Run in the engine process (:meth:`app.core.engine.process.EngineProxy.measure_speeds`), at the
thread count the app will use. Two llama4 models are generated into a temporary folder:

* ``tiny`` (the test model in Q8_0, ~1 MB): what one decoded token and one prompt micro-batch cost
  when the weights cost next to nothing — llama.cpp's fixed per-token and per-batch overheads;
* ``work`` (Q8_0, 768 wide, ~45 MB): the weights it streams per decoded token beyond the tiny
  model's time gives the streaming rate; a 256-token prompt gives the matrix-multiply rate.

The work model fits in a server CPU's last-level cache, and a real model does not: decoded
one token after another, its weights stay in the cache and stream faster than from RAM (with two
threads on this 2-core machine, 1.5–2.5× faster). So it also decodes a few tokens each after
reading an array twice the size of the cache (not timed), which leaves the weights in RAM: the
rate llama.cpp streams weights from RAM, as every model larger than the cache is read.

Returns ``(token_s, prompt_token_s, attention_gflops, read_gbs, gflops, ram_read_gbs)``; see
:mod:`app.core.forecast` for how they are used.
The whole probe takes a few seconds.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.core.forecast import GB, bits_per_weight

if TYPE_CHECKING:
    from app.core.forecast import LlamaFigures

WORK_SPEC = {
    "n_layer": 4,
    "n_embd": 768,
    "n_head": 12,
    "n_head_kv": 4,
    "n_expert": 2,
    "n_ff_exp": 1536,
    "dtype": "Q8_0",
    "seed": 71,
    "name": "speed probe",
}
PROMPT_TOKENS = 256
SHORT_PROMPT = 64
DECODES = 12
DECODE_BUDGET_S = 3.0  # no new block after this long (a busy machine: 2 threads on 2 shared cores)
DECODE_BLOCKS = 5  # the median block: one stall (another process took the core) does not count
COLD_TOKENS = 7  # tokens decoded with the weights out of the cache (the median counts)
FLUSH_MIN = 128 * 1024**2  # the array read between them: twice the last-level cache, within these
FLUSH_MAX = 1024**3


def measure_llama(n_threads: int) -> LlamaFigures:
    """(seconds per token, seconds per prompt token, attention GFLOP/s, GB/s streamed from the
    cache, prompt GFLOP/s, GB/s streamed from RAM).

    Decoding: tiny and work model each take the fixed cost plus their active weights over the
    streaming rate — two equations, two unknowns. Prompts (the fixed cost of the batch taken off):
    a cost per token, the attention's FLOPs (which grow with the square of the prompt) and the
    weights' FLOPs — the tiny model at two lengths and the work model: three equations. From RAM:
    the work model's tokens decoded after the cache was flushed, less the fixed cost."""
    import numpy as np

    from app.core.forecast import attention_flops, last_level_cache_bytes
    from app.core.gguf_info import read_gguf_info
    from app.core.tiny_model import TinyModelSpec, quantized, write_tiny_model

    with tempfile.TemporaryDirectory(prefix="scout-speed-") as tmp:
        tiny = write_tiny_model(Path(tmp) / "tiny.gguf", quantized(TinyModelSpec(), "Q8_0"))[0]
        work = write_tiny_model(Path(tmp) / "work.gguf", TinyModelSpec(**WORK_SPEC))[0]  # type: ignore[arg-type]
        tiny_token, tiny_short, tiny_prompt, _ = _time_model(tiny, n_threads)
        flush = _flush_array(last_level_cache_bytes())
        work_token, _work_short, work_prompt, work_cold = _time_model(work, n_threads, flush)
        del flush
        tiny_info, work_info = read_gguf_info(tiny), read_gguf_info(work)
    tiny_bytes, tiny_params = _active(tiny_info)
    work_bytes, work_params = _active(work_info)
    stream_s = max(work_token - tiny_token, 1e-6)
    inv_rate = stream_s / max(1.0, work_bytes - tiny_bytes)  # seconds per byte
    token_s = max(1e-6, tiny_token - tiny_bytes * inv_rate)
    read_gbs = 1 / inv_rate / GB
    # from RAM: never faster than from the cache (a stall in the warm blocks is not a faster RAM)
    ram_read_gbs = min(read_gbs, max(1.0, work_bytes - tiny_bytes) / max(work_cold - tiny_token, 1e-6) / GB)
    n1, n2 = SHORT_PROMPT, PROMPT_TOKENS
    rows = [
        [n1, attention_flops(tiny_info, n1), 2 * tiny_params * n1],
        [n2, attention_flops(tiny_info, n2), 2 * tiny_params * n2],
        [n2, attention_flops(work_info, n2), 2 * work_params * n2],
    ]
    times = [max(t - token_s, 1e-6) for t in (tiny_short, tiny_prompt, work_prompt)]
    try:
        per_token, per_attention, per_flop = (float(x) for x in np.linalg.solve(np.array(rows), times))
    except np.linalg.LinAlgError:
        per_token = per_attention = per_flop = -1.0
    if min(per_token, per_attention, per_flop) <= 0:  # noise: the simpler split
        per_flop = max(work_prompt - tiny_prompt, 1e-6) / max(1.0, rows[2][2] - rows[1][2])
        per_attention = per_flop * 4
        per_token = max(1e-7, (times[1] - rows[1][1] * per_attention - rows[1][2] * per_flop) / n2)
    # the tiny model's attention is a small share of its time, so its rate is poorly determined;
    # llama.cpp's CPU attention (f16 cache, f32 softmax) is never faster than its matmuls
    per_attention = max(per_attention, per_flop)
    return token_s, per_token, 1 / per_attention / 1e9, read_gbs, 1 / per_flop / 1e9, ram_read_gbs


def _flush_array(cache_bytes: int) -> Any:
    """An array twice the last-level cache (unknown: 512 MiB), read to push weights out of it."""
    import numpy as np

    size = min(FLUSH_MAX, max(FLUSH_MIN, 2 * cache_bytes)) if cache_bytes else FLUSH_MAX // 2
    return np.ones(size // 8, dtype=np.float64)


def _active(info: object) -> tuple[float, float]:
    """Bytes and parameters one token reads of the work model (shared + 1 routed expert)."""
    from app.core.gguf_info import GGUFInfo

    assert isinstance(info, GGUFInfo)
    used = max(1, info.n_expert_used) / info.n_expert if info.n_expert else 1.0
    total_bytes = 0.0
    total_params = 0.0
    for t in info.tensors:
        if t.name.startswith("token_embd."):
            continue
        share = used if t.is_expert else 1.0
        total_bytes += t.n_bytes * share
        total_params += t.n_bytes * 8 / bits_per_weight(t.type_name) * share
    return total_bytes, total_params


def _time_model(model: Path, n_threads: int, flush: Any = None) -> tuple[float, float, float, float]:
    """Seconds of one decoded token (the median of DECODE_BLOCKS blocks' means), the median of
    a SHORT_PROMPT- and a PROMPT_TOKENS-token prompt, and (with a ``flush`` array, else 0.0) the
    median of COLD_TOKENS tokens each decoded after reading it. Means over blocks, not the fastest token:
    llama.cpp's threads spin-wait between operations, and on a busy machine some tokens take many
    times the others (2 threads on 2 shared cores: a median token of 0.4 ms, a mean of 4 ms) —
    the mean is what an answer takes; the median block keeps one long stall from deciding it."""
    from app.core.engine.native import import_llama_cpp

    llama_cpp = import_llama_cpp()
    llm = llama_cpp.Llama(
        str(model),
        n_ctx=1024,
        n_batch=PROMPT_TOKENS,
        n_ubatch=PROMPT_TOKENS,
        n_threads=n_threads,
        n_threads_batch=n_threads,
        swa_full=False,
        verbose=False,
    )
    try:
        n_vocab = int(llm.n_vocab())
        tokens = [(i * 7) % (n_vocab - 20) + 10 for i in range(PROMPT_TOKENS)]
        times: dict[int, list[float]] = {SHORT_PROMPT: [], PROMPT_TOKENS: []}
        for _ in range(3):
            for n in (SHORT_PROMPT, PROMPT_TOKENS):
                llm.reset()
                llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(llm.ctx), True)
                started = time.perf_counter()
                llm.eval(tokens[:n])
                times[n].append(time.perf_counter() - started)
        llm.eval([tokens[0]])
        blocks: list[float] = []
        deadline = time.perf_counter() + DECODE_BUDGET_S
        for b in range(DECODE_BLOCKS):
            if blocks and time.perf_counter() > deadline:
                break  # a machine this slow now is measured well enough
            started = time.perf_counter()
            for k in range(DECODES):
                llm.eval([tokens[1 + b * DECODES + k]])
            blocks.append((time.perf_counter() - started) / DECODES)
        token = statistics.median(blocks)
        cold: list[float] = []
        if flush is not None:
            at = 1 + DECODE_BLOCKS * DECODES
            for k in range(COLD_TOKENS):
                float(flush.sum())
                started = time.perf_counter()
                llm.eval([tokens[at + k]])
                cold.append(time.perf_counter() - started)
        return (
            token,
            statistics.median(times[SHORT_PROMPT]),
            statistics.median(times[PROMPT_TOKENS]),
            statistics.median(cold) if cold else 0.0,
        )
    finally:
        llm.close()
