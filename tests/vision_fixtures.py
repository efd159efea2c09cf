"""Fixtures for vision tests: a tiny llama4 projector matching the tiny text model.

Import the fixtures into a test module (``from tests.vision_fixtures import tiny_projector``).
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import pytest

from app.core.tiny_model import TinyModelSpec
from app.core.tiny_vision import TinyProjectorSpec, write_tiny_projector
from app.core.engine.vision import VisionGeometry

if TYPE_CHECKING:
    from pathlib import Path

TINY_PROJECTOR_SPEC = TinyProjectorSpec()
TINY_GEOMETRY = VisionGeometry(
    tile_size=TINY_PROJECTOR_SPEC.image_size, tokens_per_tile=TINY_PROJECTOR_SPEC.tokens_per_tile
)


@pytest.fixture(scope="session")
def tiny_projector(models_dir: Path, tiny_model: Path) -> Path:
    """The tiny llama4 vision projector, written next to the tiny model (F32, ~0.3 MB)."""
    return write_tiny_projector(tiny_model.with_name("mmproj-tiny-llama4.gguf"), TinyModelSpec())


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
