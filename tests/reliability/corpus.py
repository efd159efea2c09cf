"""Generates the hostile input corpus (GGUF headers as raw bytes, PDFs, images, text, paths)."""

from __future__ import annotations

import io
import os
import random
import struct
import zlib
from typing import TYPE_CHECKING

from PIL import Image

if TYPE_CHECKING:
    from pathlib import Path

MARKER = "/tmp/scout-chat-pwned-marker"
EVIL_TEMPLATES = {
    "mro-subclasses": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "cycler-globals-popen": "{{ cycler.__init__.__globals__.os.popen('touch " + MARKER + "').read() }}",
    "for-base-subclasses": "{% for x in ().__class__.__base__.__subclasses__() %}{{ x }}{% endfor %}",
    "joiner-globals": "{{ joiner.__init__.__globals__['os'].system('touch " + MARKER + "') }}",
    "namespace-import": "{{ namespace.__init__.__globals__.__builtins__.__import__('os').system('touch "
    + MARKER
    + "') }}",
    "lipsum-globals": "{{ lipsum.__globals__['os'].popen('touch " + MARKER + "').read() }}",
    "self-context": "{{ self._TemplateReference__context.cycler.__init__.__globals__.os.system('touch "
    + MARKER
    + "') }}",
    "format-string": "{{ '{0.__class__.__mro__}'.format('') }}",
}


def _s(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def gguf(
    version: int = 3, n_tensors: int = 0, n_kv: int = 0, body: bytes = b"", magic: bytes = b"GGUF"
) -> bytes:
    return magic + struct.pack("<IQQ", version, n_tensors, n_kv) + body


def kv_string(key: str, value: str) -> bytes:
    return _s(key) + struct.pack("<I", 8) + _s(value)


def write_gguf_corpus(folder: Path, tiny_model: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    real = tiny_model.read_bytes()
    arch = kv_string("general.architecture", "llama4")
    cases: dict[str, bytes] = {
        "empty": b"",
        "truncated-24": real[:24],
        "truncated-200": real[:200],
        "truncated-half": real[: len(real) // 2],
        "truncated-last-byte": real[:-1],
        "wrong-magic": b"GGUX" + real[4:],
        "text-file": b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n",
        "version-1": gguf(version=1),
        "version-99": gguf(version=99),
        "tensor-count-2^63": gguf(n_tensors=1 << 63, n_kv=1, body=arch),
        "tensor-count-2^40": gguf(n_tensors=1 << 40, n_kv=1, body=arch),
        "kv-count-2^62": gguf(n_kv=1 << 62),
        "key-length-2^60": gguf(n_kv=1, body=struct.pack("<Q", 1 << 60) + b"general.architecture"),
        "value-length-2^60": gguf(
            n_kv=1, body=_s("general.architecture") + struct.pack("<I", 8) + struct.pack("<Q", 1 << 60) + b"x"
        ),
        "kv-type-99": gguf(n_kv=1, body=_s("general.architecture") + struct.pack("<I", 99) + b"\0" * 8),
        "array-length-2^60": gguf(
            n_kv=1, body=_s("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, 1 << 60) + _s("a")
        ),
        "tensor-dims-2^40": gguf(
            n_tensors=1,
            n_kv=1,
            body=arch + _s("token_embd.weight") + struct.pack("<IQQIQ", 2, 1 << 40, 1 << 40, 0, 0),
        ),
        "tensor-ndims-1000": gguf(
            n_tensors=1, n_kv=1, body=arch + _s("token_embd.weight") + struct.pack("<I", 1000) + b"\1" * 64
        ),
        "tensor-type-999": gguf(
            n_tensors=1,
            n_kv=1,
            body=arch + _s("token_embd.weight") + struct.pack("<IQQIQ", 2, 64, 64, 999, 0),
        ),
        "tensor-offset-past-eof": gguf(
            n_tensors=1,
            n_kv=1,
            body=arch + _s("token_embd.weight") + struct.pack("<IQQIQ", 2, 64, 64, 0, 1 << 50),
        ),
        "random-after-header": real[:64] + random.Random(1).randbytes(4096),
    }
    out = {}
    for name, data in cases.items():
        path = folder / f"{name}.gguf"
        path.write_bytes(data)
        out[name] = path
    split = folder / "split-model-00001-of-00003.gguf"  # its siblings are missing
    split.write_bytes(real)
    out["split-missing-parts"] = split
    return out


# ------------------------------------------------------------------------------------- images


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def png_header_only(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def png_bomb(width: int = 10000, height: int = 10000) -> bytes:
    """A real zero-filled image compressed tightly (a decompression bomb: 100 megapixels)."""
    row = b"\0" + b"\0" * width  # filter byte + 1 byte per pixel (greyscale)
    comp = zlib.compressobj(9)
    body = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", body)
        + _png_chunk(b"IEND", b"")
    )


def write_image_corpus(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, bytes] = {}
    buf = io.BytesIO()
    Image.new("RGB", (400, 300), (10, 200, 30)).save(buf, "PNG")
    good_png = buf.getvalue()
    files["truncated.png"] = good_png[: len(good_png) // 2]
    files["header-20000x20000.png"] = png_header_only(20000, 20000)
    files["header-65535x65535.png"] = png_header_only(65535, 65535)
    files["header-0x0.png"] = png_header_only(0, 0)
    files["bomb-10000x10000.png"] = png_bomb()
    b = io.BytesIO()
    Image.new("CMYK", (120, 80), (0, 255, 255, 0)).save(b, "JPEG")
    files["cmyk.jpg"] = b.getvalue()
    b = io.BytesIO()
    Image.new("I;16", (64, 64), 40000).save(b, "PNG")
    files["16bit.png"] = b.getvalue()
    b = io.BytesIO()
    frames = [Image.new("P", (32, 32), i) for i in range(5)]
    frames[0].save(b, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    files["animated.gif"] = b.getvalue()
    b = io.BytesIO()
    Image.new("RGBA", (50, 50), (255, 0, 0, 0)).save(b, "PNG")
    files["transparent.png"] = b.getvalue()
    files["text-named.png"] = b"this is not a picture\n" * 10
    files["empty.jpg"] = b""
    files["garbage.jpg"] = b"\xff\xd8\xff" + random.Random(3).randbytes(5000)
    out = {}
    for name, data in files.items():
        (folder / name).write_bytes(data)
        out[name] = folder / name
    return out


# ------------------------------------------------------------------------------------- PDFs


def _pdf(objects: list[bytes], root: int = 1, *, trailer_extra: bytes = b"", xref: bool = True) -> bytes:
    out = io.BytesIO()
    out.write(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for i, obj in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % i + obj + b"\nendobj\n")
    start = out.tell()
    if xref:
        out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
        for off in offsets:
            out.write(b"%010d 00000 n \n" % off)
    out.write(
        b"trailer\n<< /Size %d /Root %d 0 R %s>>\nstartxref\n%d\n%%%%EOF\n"
        % (len(objects) + 1, root, trailer_extra, start)
    )
    return out.getvalue()


def _text_page_objects(content: bytes, filt: bytes = b"") -> list[bytes]:
    return [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d %s>>\nstream\n" % (len(content), filt) + content + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]


def write_pdf_corpus(folder: Path) -> dict[str, Path]:
    from pypdf import PdfWriter

    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, bytes] = {}
    good = _pdf(_text_page_objects(b"BT /F1 12 Tf 20 100 Td (Hello lighthouse) Tj ET"))
    files["good.pdf"] = good
    files["truncated.pdf"] = good[: len(good) // 2]
    files["corrupt.pdf"] = b"%PDF-1.4\n" + random.Random(5).randbytes(20000)
    files["not-a-pdf.pdf"] = b"<html>nope</html>"
    files["no-xref.pdf"] = _pdf(_text_page_objects(b"BT /F1 12 Tf 20 100 Td (x) Tj ET"), xref=False)
    # xref bombs: /Prev pointing at itself, and a page tree whose Kids point back at the root
    files["xref-prev-loop.pdf"] = _pdf(_text_page_objects(b"BT ET"), trailer_extra=b"/Prev 9 ")
    loop = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [2 0 R 2 0 R 2 0 R] /Count 1000000000 >>",
    ]
    files["page-tree-loop.pdf"] = _pdf(loop)
    # a zip bomb in a page's content stream: 100 MB of spaces, ~100 KB compressed
    comp = zlib.compressobj(9)
    block = b" " * (1 << 20)
    bomb = b"".join(comp.compress(block) for _ in range(100)) + comp.flush()
    files["flate-bomb.pdf"] = _pdf(_text_page_objects(bomb, b"/Filter /FlateDecode "))
    # scanned: pages without any text layer
    writer = PdfWriter()
    for _ in range(3):
        writer.add_blank_page(200, 200)
    b = io.BytesIO()
    writer.write(b)
    files["scanned.pdf"] = b.getvalue()
    # encrypted (user password)
    from pypdf import PdfReader

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(good)))
    writer.encrypt("s3cret", algorithm="RC4-128")
    b = io.BytesIO()
    writer.write(b)
    files["encrypted.pdf"] = b.getvalue()
    out = {}
    for name, data in files.items():
        (folder / name).write_bytes(data)
        out[name] = folder / name
    out["5000-pages.pdf"] = many_pages(folder / "5000-pages.pdf", 5000)
    return out


def many_pages(path: Path, n: int) -> Path:
    """n tiny pages that share one content stream (written directly: fast)."""
    kids = b" ".join(b"%d 0 R" % (4 + i) for i in range(n))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [" + kids + b"] /Count %d >>" % n,
        b"<< /Length 40 >>\nstream\nBT /F1 8 Tf 10 10 Td (page text) Tj ET   \nendstream",
    ]
    font = 4 + n
    for _ in range(n):
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 50 50] /Contents 3 0 R "
            b"/Resources << /Font << /F1 %d 0 R >> >> >>" % font
        )
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    path.write_bytes(_pdf(objects))
    return path


# ------------------------------------------------------------------------------------- text, paths


def write_text_corpus(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}

    def put(name: str, data: bytes) -> None:
        (folder / name).write_bytes(data)
        out[name] = folder / name

    put("binary.txt", bytes(range(256)) * 200)
    put("invalid-utf8.txt", b"caf\xe9 au lait \xff\xfe\xfd ok\n" * 50)
    put("nul-heavy.md", b"# Title\n\0\0\0\0 text \0\n" * 100)
    put("utf16.txt", "Grüße aus dem Leuchtturm\n".encode("utf-16") * 20)
    put("über grüße 文档 file.md", "# Überschrift\n\nText mit Leerzeichen im Pfad.\n".encode())
    put("empty.txt", b"")
    put("only-whitespace.txt", b"   \n\n\t  \n")
    put("long-line.txt", b"x" * 5_000_000)
    put("binary.docx", b"PK\x03\x04" + random.Random(7).randbytes(3000))
    put(
        "evil.html",
        b"<html><script>alert(1)</script><body><p>visible text</p>" + b"<div>" * 20000 + b"</body></html>",
    )
    sparse = folder / "sparse-2GB.txt"
    with sparse.open("wb") as fh:
        fh.truncate(2 * 1024**3)  # apparent size 2 GB, nothing written
    out["sparse-2GB.txt"] = sparse
    target = folder / "target notes.md"
    target.write_text("# Target\n\nThe symlink points here.\n", encoding="utf-8")
    link = folder / "link to notes.md"
    os.symlink(target, link)
    out["symlink.md"] = link
    dangling = folder / "dangling.md"
    os.symlink(folder / "does-not-exist.md", dangling)
    out["dangling-symlink.md"] = dangling
    directory = folder / "a folder.txt"
    directory.mkdir()
    out["directory.txt"] = directory
    return out


# ------------------------------------------------------------------------ files that stop llama.cpp


def write_engine_corpus(folder: Path, good_model: Path) -> dict[str, Path]:
    """Model files that make llama.cpp abort or refuse, for the engine process at window level:

    * ``no-attention-temperature``: a llama4 file without the attention-temperature keys of its
      chunked attention; llama.cpp loads it, then aborts (``GGML_ASSERT(f_attn_temp_scale !=
      0.0f)``) at the first graph it builds — the first answer;
    * ``too-many-experts-used``: more experts used per token than the model has; llama.cpp aborts
      while it builds the model (the throw-away trial process catches it);
    * ``tensor-data-past-eof``: a real model whose last tensor's data offset points 1 GiB past the
      end of the file;
    * ``mismatched-projector``: a model with a vision projector beside it made for another model
      (its image embeddings are 64 wide, the model reads 128).
    """
    import gguf

    from app.core.tiny_model import TinyModelSpec, write_tiny_model
    from app.core.tiny_vision import write_tiny_projector

    folder.mkdir(parents=True, exist_ok=True)
    out = {
        "no-attention-temperature": write_tiny_model(
            folder / "llama4-no-attention-temperature.gguf", TinyModelSpec(sliding_window=0)
        )[0],
        "too-many-experts-used": write_tiny_model(
            folder / "llama4-too-many-experts-used.gguf", TinyModelSpec(n_expert_used=8)
        )[0],
    }
    data = bytearray(good_model.read_bytes())
    last = gguf.GGUFReader(str(good_model)).tensors[-1].field  # name, n_dims, dims, type, offset
    at = last.offset + sum(part.nbytes for part in last.parts[:-1])
    (offset,) = struct.unpack_from("<Q", data, at)
    struct.pack_into("<Q", data, at, offset + (1 << 30))
    past_eof = folder / "llama4-tensor-data-past-eof.gguf"
    past_eof.write_bytes(bytes(data))
    out["tensor-data-past-eof"] = past_eof
    mismatch = folder / "mismatched-projector"
    model = mismatch / "llama4-with-a-foreign-projector.gguf"
    mismatch.mkdir(exist_ok=True)
    model.write_bytes(good_model.read_bytes())
    write_tiny_projector(mismatch / "mmproj-other-model.gguf", TinyModelSpec(n_embd=64))
    out["mismatched-projector"] = model
    return out
