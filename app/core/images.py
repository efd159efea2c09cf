"""Pictures for the vision projector: decode, orient, convert, bound, re-encode, store.

Over ~600 lines: the safe decoders of very large JPEGs and PNGs (reduced size, strip by strip) share
the size limits and the pixel-mode conversion with the ordinary path, and are tested together.

Everything here is pure Pillow (no Qt, no llama.cpp) and keeps no shared state, so every function
may run on any thread (the UI calls them from a one-shot worker, never on the GUI thread).

* :func:`normalize_image` accepts PNG, JPEG, WebP, GIF (first frame), BMP and TIFF; applies the
  EXIF orientation; converts every pixel mode (RGBA/LA/palette with transparency composited on
  white, CMYK, 16-bit, 1-bit, float) to 8-bit RGB; downscales what is larger than the projector
  can use (a very large JPEG or PNG is decoded at reduced size or strip by strip, never whole);
  and refuses what cannot be decoded safely, empty, truncated, mislabelled and unsupported files
  with an :class:`ImageError` whose message is a sentence for the user.
* :func:`store_image` keeps the normalised bytes under ``<data_dir>/images/<aa>/<sha256>.<ext>``
  (content-addressed: the same picture is stored once).
* :func:`data_uri` builds the ``data:`` URI handed to llama-cpp-python. Never hand it a path or
  URL: its ``MTMDChatHandler`` fetches any other URL with urllib (``file://`` included).

Why 1344 px: Scout's projector (libmtmd, llava-uhd slicing) cuts an image into 336-px tiles, at
most 3×3 of them plus a global view, so it never looks at more than 1008×1008 pixels; 1344 (4
tiles) leaves a margin for the full-size viewer and for newer llama.cpp versions, while keeping a
screenshot's text legible.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import os
import struct
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image, ImageOps, UnidentifiedImageError

from app.core.errors import UserError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from app.core.store import Attachment

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff")
"""File name endings read as pictures (everything else attached is read as a document)."""
TILE_SIZE = 336  # Scout's vision tile
DEFAULT_MAX_SIDE = 4 * TILE_SIZE  # 1344
DEFAULT_MAX_PIXELS = DEFAULT_MAX_SIDE * DEFAULT_MAX_SIDE
# Pillow's own bomb threshold (it warns above it and refuses above twice it). Our check runs on
# the header, before any pixel is decoded, so a bigger limit would only turn into Pillow warnings.
DEFAULT_MAX_INPUT_PIXELS = 89_478_485
# Above DEFAULT_MAX_INPUT_PIXELS a picture is decoded at reduced size, never whole: a JPEG by
# libjpeg's DCT scaling (1/8 of each side at most, which brings even 65,535² under the limit), an
# 8-bit PNG strip by strip (:func:`_decode_png_in_strips`: memory bounded by one strip). A PNG up
# to this size is read that way (16,384²: ~5 s here); larger ones, or other formats above the
# limit, are refused before a pixel is decoded.
DEFAULT_MAX_STRIP_PIXELS = 16_384 * 16_384
STRIP_BYTES = 8 * 1024 * 1024  # the raw rows decoded at once by the strip decoder
MAX_FILE_BYTES = 200 * 1024 * 1024
JPEG_QUALITY = 90

SUPPORTED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")  # Pillow plugin names
SUPPORTED_DESCRIPTION = "PNG, JPEG, WebP, GIF, BMP or TIFF"
ANIMATED_GIF_NOTE = "animated GIF: only the first frame is used"

# Formats people try that Pillow cannot (or should not) open here: magic bytes → name.
_KNOWN_UNSUPPORTED: tuple[tuple[int, bytes, str], ...] = (
    (4, b"ftypheic", "HEIC"),
    (4, b"ftypheix", "HEIC"),
    (4, b"ftypmif1", "HEIF"),
    (4, b"ftypavif", "AVIF"),
    (0, b"%PDF", "PDF"),
    (0, b"8BPS", "Photoshop (PSD)"),
    (0, b"\x00\x00\x01\x00", "ICO"),
    (0, b"\xff\x0a", "JPEG XL"),
    (0, b"\x00\x00\x00\x0cJXL ", "JPEG XL"),
    (0, b"PK\x03\x04", "ZIP"),
)

_SUPPORTED_MAGIC = (
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff",
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
)


class ImageError(UserError):
    """A picture that cannot be used; ``message`` is a sentence for the user."""


@dataclass(frozen=True)
class NormalizedImage:
    """A picture ready for the projector: 8-bit RGB, oriented, bounded, re-encoded."""

    data: bytes  # PNG, or JPEG when the source was a JPEG photo
    mime: str  # "image/png" | "image/jpeg"
    width: int
    height: int
    sha256: str  # of ``data``
    original_width: int  # as displayed (after EXIF orientation)
    original_height: int
    note: str = ""  # e.g. "animated GIF: only the first frame is used"; "" when nothing to say

    @property
    def extension(self) -> str:
        return ".jpg" if self.mime == "image/jpeg" else ".png"

    @property
    def downscaled(self) -> bool:
        return (self.width, self.height) != (self.original_width, self.original_height)


# --------------------------------------------------------------------------------------------


def _read(source: bytes | Path, name: str) -> bytes:
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source)
    try:
        size = source.stat().st_size
        if source.is_dir():
            raise ImageError(f"{name} is a folder, not a picture.")
        if size > MAX_FILE_BYTES:
            raise ImageError(
                f"{name} is too large ({size / 1e6:,.0f} MB); pictures up to "
                f"{MAX_FILE_BYTES / 1e6:,.0f} MB can be attached."
            )
        return source.read_bytes()
    except FileNotFoundError as exc:
        raise ImageError(f"{name} was not found.", str(exc)) from exc
    except OSError as exc:
        raise ImageError(f"{name} could not be read: {exc.strerror or exc}.", str(exc)) from exc


def _looks_like_text(head: bytes) -> bool:
    if not head:
        return False
    if head.startswith((b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")):
        return True
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        # A multi-byte character may be cut at the end of the sample.
        try:
            text = head[:-3].decode("utf-8")
        except UnicodeDecodeError:
            return False
    return all(ch.isprintable() or ch in "\t\r\n\f" for ch in text)


def _identify_failure(data: bytes, name: str) -> ImageError:
    """The message for bytes that none of the supported decoders recognised."""
    head = data[:512]
    for offset, magic, label in _KNOWN_UNSUPPORTED:
        if head[offset : offset + len(magic)] == magic:
            return ImageError(
                f"{name} is a {label} file, which cannot be attached as a picture. "
                f"Use {SUPPORTED_DESCRIPTION}."
            )
    if head.startswith(_SUPPORTED_MAGIC):
        return ImageError(f"{name} is damaged or incomplete and cannot be read.")
    stripped = head.lstrip().lower()
    if stripped.startswith((b"<svg", b"<?xml")) and b"<svg" in data[:4096].lower():
        return ImageError(
            f"{name} is an SVG drawing, which cannot be attached as a picture. Export it as PNG first."
        )
    if _looks_like_text(head):
        return ImageError(f"{name} is not a picture: it looks like a text file.")
    return ImageError(
        f"{name} is not a picture Scout Chat can read (or it is damaged). Use {SUPPORTED_DESCRIPTION}."
    )


def _bomb_error(name: str, width: int, height: int, limit: int, scope: str = "") -> ImageError:
    return ImageError(
        f"{name} is too large to open safely ({width:,} × {height:,} pixels, "
        f"{width * height / 1e6:,.0f} megapixels; the limit{scope} is {limit / 1e6:,.0f} megapixels). "
        "Resize it first.",
        "decompression bomb check",
    )


def _target_size(width: int, height: int, max_side: int, max_pixels: int) -> tuple[int, int]:
    """Largest size within both bounds that keeps the aspect ratio (never upscales)."""
    scale = min(1.0, max_side / max(width, height), (max_pixels / (width * height)) ** 0.5)
    if scale >= 1.0:
        return width, height
    return max(1, round(width * scale)), max(1, round(height * scale))


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode → 8-bit RGB; transparency is composited on white."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        import numpy as np

        arr = np.asarray(im, dtype=np.float64)
        if mode.startswith("I;16"):
            arr = arr / 257.0
        else:
            lo, hi = float(arr.min()), float(arr.max())
            if mode == "F" or lo < 0 or hi > 255:
                # 32-bit integer or float data: stretch what is there to 0..255.
                arr = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else arr * 0.0
        gray = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L")
        return gray.convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode in ("P", "L", "RGB", "1") and "transparency" in im.info
    )
    if has_alpha:
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        background.alpha_composite(rgba)
        return background.convert("RGB")
    return im.convert("RGB")


def normalize_image(
    source: bytes | Path,
    *,
    name: str | None = None,
    max_side: int = DEFAULT_MAX_SIDE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_input_pixels: int = DEFAULT_MAX_INPUT_PIXELS,
    max_strip_pixels: int = DEFAULT_MAX_STRIP_PIXELS,
) -> NormalizedImage:
    """Decode ``source`` and return it as an 8-bit RGB PNG (or JPEG for JPEG photos) that fits
    in ``max_side`` × ``max_side`` and ``max_pixels``. A picture above ``max_input_pixels`` is
    decoded at reduced size (JPEG) or strip by strip (8-bit PNG, up to ``max_strip_pixels``), or
    refused before a pixel is decoded. Raises :class:`ImageError` (with a message
    for the user) for anything that is not a usable picture. Thread-safe; CPU-bound."""
    label = name or (source.name if isinstance(source, Path) else "The picture")
    data = _read(source, label)
    if not data:
        raise ImageError(f"{label} is empty (0 bytes).")

    notes: list[str] = []
    large = _large_png(data, label, max_input_pixels, max_strip_pixels)
    if large is not None:
        rgb = _decode_png_in_strips(
            data, large, label, _target_size(large.width, large.height, max_side, max_pixels)
        )
        fmt, width, height, orientation = "PNG", large.width, large.height, 1
    else:
        im = _open(data, label, max_input_pixels)
        fmt, width, height, orientation, rgb = _decode(
            im, label, max_side, max_pixels, max_input_pixels, notes
        )

    original = (height, width) if orientation in (5, 6, 7, 8) else (width, height)
    # The size is decided on the original (a JPEG may have been decoded at 1/2..1/8 scale).
    out_size = _target_size(*original, max_side, max_pixels)
    if rgb.size != out_size:
        rgb = rgb.resize(out_size, Image.Resampling.LANCZOS, reducing_gap=3.0)

    encoded, mime = _encode(rgb, fmt)
    result = NormalizedImage(
        data=encoded,
        mime=mime,
        width=rgb.width,
        height=rgb.height,
        sha256=hashlib.sha256(encoded).hexdigest(),
        original_width=original[0],
        original_height=original[1],
        note="; ".join(notes),
    )
    log.debug(
        "normalised %s: %s %dx%d → %s %dx%d (%d bytes)",
        label,
        fmt,
        result.original_width,
        result.original_height,
        mime,
        result.width,
        result.height,
        len(encoded),
    )
    return result


def _open(data: bytes, label: str, max_input_pixels: int) -> Image.Image:
    """Pillow's lazy open (header only) of ``data``, with a sentence for each way it fails."""
    try:
        if data.startswith(b"\xff\xd8\xff"):
            # Pillow's open refuses a JPEG above its bomb limit before draft() could shrink it;
            # the plugin class reads the header alone (the size is checked after draft, below).
            from PIL import JpegImagePlugin

            return JpegImagePlugin.JpegImageFile(io.BytesIO(data))
        return Image.open(io.BytesIO(data), formats=list(SUPPORTED_FORMATS))
    except UnidentifiedImageError as exc:
        raise _identify_failure(data, label) from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(
            f"{label} is too large to open safely (its header claims more than "
            f"{max_input_pixels / 1e6:,.0f} megapixels). Resize it first.",
            str(exc),
        ) from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"{label} is damaged and cannot be read.", repr(exc)) from exc


def _decode(
    im: Image.Image, label: str, max_side: int, max_pixels: int, max_input_pixels: int, notes: list[str]
) -> tuple[str, int, int, int, Image.Image]:
    """Decode the first frame of ``im`` (closing it), EXIF-oriented, as RGB; return its format, its
    stored width and height, its EXIF orientation and the pixels. Notes for the user go to ``notes``."""
    try:
        with im:
            fmt = im.format or ""
            width, height = im.size
            if width <= 0 or height <= 0:
                raise ImageError(f"{label} has no pixels ({width} × {height}).")
            target = _target_size(width, height, max_side, max_pixels)
            if fmt in ("JPEG", "MPO") and target != (width, height):
                # libjpeg's DCT scaling: decode a 24 MP photo at 1/2, 1/4 or 1/8 size directly.
                im.draft("RGB", target)
            # Header-only size check (of the size that will be decoded), before a pixel is decoded.
            if im.size[0] * im.size[1] > max_input_pixels:
                raise _bomb_error(label, width, height, max_input_pixels)
            if getattr(im, "n_frames", 1) > 1:
                im.seek(0)
                notes.extend(_first_frame_note(fmt))
            try:
                orientation = int(im.getexif().get(0x0112, 1))
            except (ValueError, TypeError, OSError, SyntaxError):
                orientation = 1
            im.load()
            oriented = ImageOps.exif_transpose(im) if orientation != 1 else im
            return fmt, width, height, orientation, _to_rgb(oriented)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{label} is too large to open safely. Resize it first.", str(exc)) from exc
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, MemoryError) as exc:
        truncated = "truncated" in str(exc).lower() or isinstance(exc, EOFError)
        reason = "is incomplete (the file is truncated)" if truncated else "is damaged"
        raise ImageError(f"{label} {reason} and cannot be read.", repr(exc)) from exc


@dataclass(frozen=True)
class _PngHeader:
    width: int
    height: int
    bit_depth: int
    color_type: int
    interlaced: bool

    @property
    def channels(self) -> int:
        return {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[self.color_type]


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# colour type → the 8-bit colour type whose samples have the same bytes per pixel (palette
# indices unfilter as greyscale bytes)
_SAME_BYTES_PER_PIXEL = {0: 0, 2: 2, 3: 0, 4: 4, 6: 6}


def _large_png(data: bytes, label: str, max_input_pixels: int, max_strip_pixels: int) -> _PngHeader | None:
    """The header of a PNG above ``max_input_pixels`` that :func:`_decode_png_in_strips` can read;
    None for a PNG within the limit (or not a PNG: Pillow says what it is). Raises the bomb error
    for a PNG too large for the strip decoder, before anything is decompressed."""
    if not data.startswith(_PNG_SIGNATURE) or data[12:16] != b"IHDR" or len(data) < 29:
        return None
    width, height, depth, color, _comp, _filt, interlace = struct.unpack(">IIBBBBB", data[16:29])
    if width * height <= max_input_pixels or width == 0 or height == 0:
        return None
    header = _PngHeader(width, height, depth, color, interlace == 1)
    readable = depth == 8 and color in _SAME_BYTES_PER_PIXEL and not header.interlaced
    if not readable:
        raise _bomb_error(label, width, height, max_input_pixels, " for 16-bit, 1/2/4-bit or interlaced PNGs")
    if width * height > max_strip_pixels:
        raise _bomb_error(label, width, height, max_strip_pixels)
    return header


def _png_chunks(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    """(type, body) of each chunk of a PNG, up to IEND (CRCs are not checked: Pillow's are
    not either when it reads image data)."""
    at = len(_PNG_SIGNATURE)
    while at + 8 <= len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        kind = data[at + 4 : at + 8]
        body = data[at + 8 : at + 8 + length]
        if len(body) < length:
            raise EOFError("truncated PNG chunk")
        yield kind, body
        if kind == b"IEND":
            return
        at += 12 + length


def _png(width: int, height: int, color_type: int, pieces: list[bytes | memoryview]) -> bytes:
    """A minimal 8-bit PNG of the filtered scanlines in ``pieces``, stored without compression.
    The image data's CRC is left at 0: Pillow does not check it (and this PNG never leaves here)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    deflate = zlib.compressobj(0)
    idat = b"".join([*(deflate.compress(piece) for piece in pieces), deflate.flush()])
    return b"".join(
        [
            _PNG_SIGNATURE,
            struct.pack(">I", 13),
            b"IHDR",
            ihdr,
            struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)),
            struct.pack(">I", len(idat)),
            b"IDAT",
            idat,
            b"\0\0\0\0\0\0\0\0IEND\xaeB`\x82",
        ]
    )


def _decode_png_in_strips(
    data: bytes, header: _PngHeader, label: str, target: tuple[int, int]
) -> Image.Image:
    """Decode a large 8-bit, non-interlaced PNG a strip of rows at a time and return it shrunk by
    a whole factor to about twice ``target`` (RGB; transparency composited on white).

    Memory stays near one strip (``STRIP_BYTES`` of raw rows) plus the shrunk picture, whatever
    the picture's size: the image data is inflated incrementally (never more than a strip ahead),
    each strip is unfiltered by Pillow (as a small PNG whose first row is the previous strip's
    last row, which PNG's Up/Average/Paeth filters refer to), composited to RGB and box-reduced.
    """
    w, h = header.width, header.height
    bpp = header.channels
    stride = 1 + w * bpp
    factor = max(1, min(w // max(1, target[0]), h // max(1, target[1])) // 2)
    rows_per_strip = max(factor, (STRIP_BYTES // stride) // factor * factor)
    palette: bytes | None = None
    transparency: bytes | None = None
    inflate = zlib.decompressobj()
    out = Image.new("RGB", (-(-w // factor), -(-h // factor)))
    previous = bytes(w * bpp)  # the row above the first one is zeros
    pending = bytearray()
    y = 0
    try:
        for kind, body in _png_chunks(data):
            if kind == b"PLTE":
                palette = body
            elif kind == b"tRNS":
                transparency = body
            elif kind == b"IDAT":
                chunk_in = body
                while chunk_in and y < h:
                    want = rows_per_strip * stride - len(pending)
                    pending += inflate.decompress(chunk_in, want)
                    chunk_in = inflate.unconsumed_tail
                    if len(pending) >= min(rows_per_strip, h - y) * stride:
                        y, previous = _emit_strip(
                            out, pending, header, y, previous, palette, transparency, factor
                        )
            elif kind == b"IEND":
                break
        if y < h and pending:
            pending += inflate.flush()
            y, previous = _emit_strip(out, pending, header, y, previous, palette, transparency, factor)
    except zlib.error as exc:
        raise ImageError(f"{label} is damaged and cannot be read.", repr(exc)) from exc
    except EOFError as exc:
        raise ImageError(
            f"{label} is incomplete (the file is truncated) and cannot be read.", repr(exc)
        ) from exc
    if y < h:
        raise ImageError(
            f"{label} is incomplete (the file is truncated) and cannot be read.",
            f"{y} of {h} rows in the image data",
        )
    return out


def _emit_strip(
    out: Image.Image,
    pending: bytearray,
    header: _PngHeader,
    y: int,
    previous: bytes,
    palette: bytes | None,
    transparency: bytes | None,
    factor: int,
) -> tuple[int, bytes]:
    """Unfilter the whole rows in ``pending`` (consuming them), paste them shrunk into ``out``;
    return the next row index and the last raw row."""
    w = header.width
    stride = 1 + w * header.channels
    n = min(len(pending) // stride, header.height - y)
    if n == 0:
        return y, previous
    with memoryview(pending) as view:
        mini = _png(
            w, n + 1, _SAME_BYTES_PER_PIXEL[header.color_type], [b"\x00", previous, view[: n * stride]]
        )
    del pending[: n * stride]
    with Image.open(io.BytesIO(mini), formats=["PNG"]) as decoded:
        decoded.load()
        previous = decoded.crop((0, n, w, n + 1)).tobytes()
        strip = decoded.crop((0, 1, w, n + 1))
    del mini
    rgb = _to_rgb(_with_palette(strip, header, palette, transparency))
    if factor > 1:
        rgb = rgb.reduce(factor)
    out.paste(rgb, (0, y // factor))
    return y + n, previous


def _with_palette(
    strip: Image.Image, header: _PngHeader, palette: bytes | None, transparency: bytes | None
) -> Image.Image:
    """``strip`` (unfiltered as greyscale / RGB / LA / RGBA samples) in the PNG's own mode, with
    its palette and transparency."""
    if header.color_type == 3:
        if palette is None:
            raise ValueError("palette PNG without a PLTE chunk")
        strip = Image.frombytes("P", strip.size, strip.tobytes())
        strip.putpalette(palette)
        if transparency is not None:
            strip.info["transparency"] = transparency
    elif transparency is not None and header.color_type == 0 and len(transparency) >= 2:
        strip.info["transparency"] = struct.unpack(">H", transparency[:2])[0] & 0xFF
    elif transparency is not None and header.color_type == 2 and len(transparency) >= 6:
        strip.info["transparency"] = tuple(v & 0xFF for v in struct.unpack(">HHH", transparency[:6]))
    return strip


def _first_frame_note(fmt: str) -> list[str]:
    """What to tell the user when a file of format ``fmt`` has several frames (the first is used)."""
    if fmt == "GIF":
        return [ANIMATED_GIF_NOTE]
    if fmt in ("WEBP", "PNG"):
        return [f"animated {fmt.title()}: only the first frame is used"]
    if fmt == "TIFF":
        return ["multi-page TIFF: only the first page is used"]
    return []


def _encode(rgb: Image.Image, fmt: str) -> tuple[bytes, str]:
    """``rgb`` as JPEG when it came from a JPEG photo, else as PNG; the bytes and their MIME type."""
    buf = io.BytesIO()
    if fmt in ("JPEG", "MPO"):
        rgb.save(buf, "JPEG", quality=JPEG_QUALITY)
        mime = "image/jpeg"
    else:
        rgb.save(buf, "PNG")
        mime = "image/png"
    return buf.getvalue(), mime


def store_image(data_dir: Path, normalized: NormalizedImage) -> Path:
    """Save ``normalized`` under ``<data_dir>/images/<sha[:2]>/<sha>.<png|jpg>``; the same picture
    is stored once. The write is atomic (temporary file + rename). Returns the path."""
    folder = data_dir / "images" / normalized.sha256[:2]
    target = folder / f"{normalized.sha256}{normalized.extension}"
    if target.exists() and target.stat().st_size == len(normalized.data):
        return target
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=normalized.extension)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(normalized.data)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def load_stored_image(path: Path) -> NormalizedImage:
    """Read back a picture written by :func:`store_image` (a conversation reopened)."""
    data = path.read_bytes()
    with Image.open(io.BytesIO(data)) as im:
        width, height = im.size
        mime = "image/jpeg" if im.format == "JPEG" else "image/png"
    return NormalizedImage(
        data=data,
        mime=mime,
        width=width,
        height=height,
        sha256=hashlib.sha256(data).hexdigest(),
        original_width=width,
        original_height=height,
    )


def data_uri(normalized: NormalizedImage) -> str:
    """``data:image/png;base64,…``: the only form in which pictures reach llama-cpp-python."""
    return f"data:{normalized.mime};base64,{base64.b64encode(normalized.data).decode('ascii')}"


def is_image_path(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def image_uri(attachment: Attachment) -> str | None:
    """The ``data:`` URI of a stored picture attachment, or None (logged) when it is unreadable."""
    try:
        return data_uri(load_stored_image(Path(attachment.path)))
    except (OSError, ValueError) as exc:
        log.warning("image %s is no longer readable: %s", attachment.path, exc)
        return None


def decode_data_uri(uri: str) -> bytes:
    """The bytes inside a ``data:…;base64,`` URI built by :func:`data_uri`."""
    header, sep, payload = uri.partition(",")
    if not sep or not header.startswith("data:") or not header.endswith(";base64"):
        raise ValueError("not a base64 data: URI")
    return base64.b64decode(payload, validate=True)
