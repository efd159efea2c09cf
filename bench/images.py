"""Images: drop-to-chip cost and image-turn TTFT.

    python -m bench.images [--runs 7]

1. From bytes to chip for a 24-megapixel JPEG (6000 × 4000): decode + EXIF + normalise (bounded
   to 1344 px, re-encoded), as the UI's one-shot worker does it off the GUI thread (the chip's
   thumbnail is read scaled from the stored copy by Qt). Target: < 300 ms on this machine. A 4K
   PNG screenshot is timed too, for the record.
2. Image-turn TTFT vs a text-only turn of the same prompt length, on the tiny llama4 model with
   the tiny projector (n_threads=1): both through the MTMD handler (which re-reads the whole
   prompt every turn), and the text-only turn also through raw ``Llama.create_completion``.
   Recorded; no target yet.
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any


def _jpeg_24mp() -> bytes:
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:4000, 0:6000]
    rng = np.random.default_rng(1)
    base = np.stack([(x * 255 // 6000), (y * 255 // 4000), ((x + y) * 255 // 10000)], axis=-1)
    arr = np.clip(base + rng.integers(-8, 8, base.shape), 0, 255).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # a phone photo taken upright: rotation applied on load
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, "JPEG", quality=90, exif=exif.tobytes())
    return buf.getvalue()


def _png_4k() -> bytes:
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (3840, 2160), (245, 245, 245))
    draw = ImageDraw.Draw(im)
    for row in range(0, 2160, 24):
        draw.text(
            (20, row), "def main(args):  return item.value  # a screenshot of code " * 3, fill=(20, 20, 20)
        )
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def _time_chip(data: bytes, runs: int) -> tuple[list[float], Any]:
    from app.core.images import normalize_image

    total_s = []
    result = None
    for _ in range(runs):
        started = time.perf_counter()
        result = normalize_image(data)
        total_s.append(time.perf_counter() - started)
    return total_s, result


def bench_chip(runs: int) -> None:
    jpeg = _jpeg_24mp()
    total, result = _time_chip(jpeg, runs)
    print(
        f"24 MP JPEG ({len(jpeg) / 1e6:.1f} MB, 6000x4000, EXIF rotated)"
        f" -> {result.width}x{result.height} {result.mime}"
    )
    print(
        f"  normalise median {statistics.median(total) * 1e3:.0f} ms, "
        f"min {min(total) * 1e3:.0f} ms, max {max(total) * 1e3:.0f} ms (target < 300 ms)"
    )
    png = _png_4k()
    total, result = _time_chip(png, max(3, runs // 2))
    print(f"4K PNG screenshot ({len(png) / 1e6:.1f} MB) -> {result.width}x{result.height} {result.mime}")
    print(f"  normalise median {statistics.median(total) * 1e3:.0f} ms")


def bench_ttft(runs: int) -> None:
    import llama_cpp
    from PIL import Image

    from app.core.engine.vision import (
        VisionGeometry,
        image_token_estimate,
        make_chat_handler,
        prepare_handler,
        stream_image_chat,
    )
    from app.core.images import data_uri, normalize_image
    from app.core.tiny_model import write_tiny_model
    from app.core.tiny_vision import TinyProjectorSpec, write_tiny_projector
    from app.core.types import ChatMessage, SamplingParams

    folder = Path(tempfile.mkdtemp(prefix="bench-images-"))
    model = write_tiny_model(folder / "tiny-llama4.gguf")[0]
    spec = TinyProjectorSpec()
    projector = write_tiny_projector(folder / "mmproj-tiny.gguf", spec=spec)
    geometry = VisionGeometry(tile_size=spec.image_size, tokens_per_tile=spec.tokens_per_tile)
    handler = make_chat_handler(projector, n_threads=1, use_gpu=False)
    llm = llama_cpp.Llama(
        model_path=str(model), chat_handler=handler, n_ctx=2048, n_threads=1, n_threads_batch=1, verbose=False
    )
    sampling = SamplingParams(max_tokens=8, seed=3)
    cancel = threading.Event()
    try:
        started = time.perf_counter()
        prepare_handler(llm, handler)
        print(f"projector load: {(time.perf_counter() - started) * 1e3:.0f} ms")

        buf = io.BytesIO()
        Image.radial_gradient("L").convert("RGB").resize((96, 96)).save(buf, "PNG")
        uri = data_uri(normalize_image(buf.getvalue()))
        image_tokens = image_token_estimate(96, 96, geometry)

        def turn(messages: list[ChatMessage]) -> Any:
            gen = stream_image_chat(llm, handler, messages, sampling, cancel)
            while True:
                try:
                    next(gen)
                except StopIteration as stop:
                    return stop.value

        def question(run: int, extra_words: int = 0) -> str:
            words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
            return f"Question {run}: " + " ".join(
                words[(run + i) % len(words)] for i in range(40 + extra_words)
            )

        target = turn([ChatMessage.user(question(0), (uri,))]).prompt_tokens
        extra = 0
        while turn([ChatMessage.user(question(0, extra))]).prompt_tokens < target:
            extra += 1
        text_len = turn([ChatMessage.user(question(0, extra))]).prompt_tokens

        image_ttft, text_ttft, raw_ttft = [], [], []
        for run in range(1, runs + 1):
            image_ttft.append(turn([ChatMessage.user(question(run), (uri,))]).ttft_s)
            text_ttft.append(turn([ChatMessage.user(question(run, extra))]).ttft_s)
            prompt = llm.tokenize(question(run, extra).encode(), add_bos=True)
            prompt = prompt + [0] * max(0, text_len - len(prompt))
            llm.reset()
            t0 = time.perf_counter()
            for _ in llm.create_completion(prompt, max_tokens=1, stream=True, seed=3):
                break
            raw_ttft.append(time.perf_counter() - t0)
        img, txt, raw = (statistics.median(v) * 1e3 for v in (image_ttft, text_ttft, raw_ttft))
        print(
            f"prompt: {target} tokens with one 96x96 image ({image_tokens} image tokens: 3x3 tiles + "
            f"global view, 4 each, + 2 framing); text-only prompt {text_len} tokens"
        )
        print(f"  image turn TTFT median {img:.1f} ms (handler, KV cleared every turn)")
        print(
            f"  text-only turn TTFT median {txt:.1f} ms (same handler path); ratio image/text {img / txt:.2f}"
        )
        print(
            f"  text-only raw create_completion TTFT median {raw:.1f} ms (fresh KV);"
            f" ratio image/raw {img / raw:.2f}"
        )
    finally:
        llm.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args(argv)
    bench_chip(args.runs)
    bench_ttft(args.runs)


if __name__ == "__main__":
    main()
