"""Fixtures for vision tests: a tiny llama4 projector matching the tiny text model.

Helpers for the vision tests (the ``tiny_projector`` fixture lives in tests/conftest.py).
"""

from __future__ import annotations

import io

from app.core.engine.vision import VisionGeometry
from app.core.tiny_vision import TinyProjectorSpec

TINY_PROJECTOR_SPEC = TinyProjectorSpec()
TINY_GEOMETRY = VisionGeometry(
    tile_size=TINY_PROJECTOR_SPEC.image_size, tokens_per_tile=TINY_PROJECTOR_SPEC.tokens_per_tile
)


def png_bytes(
    width: int, height: int, color: tuple[int, int, int] = (200, 30, 30), *, gradient: bool = False
) -> bytes:
    """A PIL-made PNG; with ``gradient`` the pixels vary so that different pictures differ."""
    from PIL import Image

    im = Image.new("RGB", (width, height), color)
    if gradient:
        im.putdata(
            [
                ((x * 255) // max(1, width - 1), (y * 255) // max(1, height - 1), 128)
                for y in range(height)
                for x in range(width)
            ]
        )
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()
