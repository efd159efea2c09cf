"""Text extraction: every format from files generated here, with anchors, and every bad-file message."""

from __future__ import annotations

import hashlib
import struct
import threading
from typing import TYPE_CHECKING

import pytest

from app.core.documents import DocumentError, ExtractionCancelled, extract

if TYPE_CHECKING:
    from pathlib import Path

    from pytest_qt.qtbot import QApplication  # type: ignore[attr-defined]

NEEDLE = "The harbour master keeps the spare lighthouse key under the blue anchor."
NEEDLE_PAGE = 347
LONG_PAGES = 500


# --- generated documents (shared with test_retrieval) -------------------------------------------


def write_pdf(path: Path, pages: list[list[str]], *, image_only_pages: frozenset[int] = frozenset()) -> Path:
    """A PDF with ``pages[i]`` drawn as lines of text on page i + 1 (Qt's QPdfWriter, so a QGuiApplication).

    Lines are 24 pt apart: QPdfWriter writes a flipped text matrix, and PDFium's line detection
    fragments lines set closer than about 18 pt under it (real-world PDFs are not affected).
    """
    from PySide6.QtCore import QRect
    from PySide6.QtGui import QColor, QFont, QImage, QPageSize, QPainter, QPdfWriter

    writer = QPdfWriter(str(path))
    writer.setPageSize(QPageSize(QPageSize.PageSizeId.A4))
    writer.setResolution(72)
    painter = QPainter(writer)
    font = QFont("DejaVu Sans")
    font.setPointSize(11)
    painter.setFont(font)
    for number, lines in enumerate(pages, start=1):
        if number > 1:
            writer.newPage()
        if number in image_only_pages:
            image = QImage(200, 120, QImage.Format.Format_RGB32)
            image.fill(QColor(30, 120, 200))
            painter.drawImage(QRect(50, 50, 400, 240), image)
            continue
        for row, line in enumerate(lines):
            painter.drawText(50, 60 + 24 * row, line)
    painter.end()
    return path


def long_pdf_pages() -> list[list[str]]:
    pages = [
        [f"Page {n} of the depot ledger lists routine deliveries of timber and grain."]
        for n in range(1, LONG_PAGES + 1)
    ]
    pages[NEEDLE_PAGE - 1].append(NEEDLE)
    return pages


@pytest.fixture(scope="session")
def long_pdf(qapp: QApplication, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """500 pages, one ledger line each, and the needle sentence on page 347 (about 0.2 s to write)."""
    return write_pdf(tmp_path_factory.mktemp("pdf") / "ledger.pdf", long_pdf_pages())


_PAD = bytes.fromhex("28BF4E5E4E758A4164004E56FFFA01082E2E00B6D0683E802F0CA9FE6453697A")


def _rc4(key: bytes, data: bytes) -> bytes:
    s = list(range(256))
    j = 0
    for i in range(256):
        j = (j + s[i] + key[i % len(key)]) % 256
        s[i], s[j] = s[j], s[i]
    out = bytearray()
    i = j = 0
    for byte in data:
        i = (i + 1) % 256
        j = (j + s[i]) % 256
        s[i], s[j] = s[j], s[i]
        out.append(byte ^ s[(s[i] + s[j]) % 256])
    return bytes(out)


def encrypted_pdf(user_password: str, sentence: str) -> bytes:
    """A one-page PDF encrypted with the standard security handler, revision 2 (RC4, 40-bit), by hand."""

    def pad(pw: bytes) -> bytes:
        return (pw + _PAD)[:32]

    permissions, file_id = -44, b"scout-chat-test!"
    owner_key = hashlib.md5(pad(b"owner secret")).digest()[:5]
    o_entry = _rc4(owner_key, pad(user_password.encode()))
    key = hashlib.md5(
        pad(user_password.encode()) + o_entry + struct.pack("<i", permissions) + file_id
    ).digest()[:5]
    u_entry = _rc4(key, _PAD)
    content = f"BT /F1 18 Tf 72 700 Td ({sentence}) Tj ET".encode("latin-1")
    object_key = hashlib.md5(key + (4).to_bytes(3, "little") + (0).to_bytes(2, "little")).digest()[:10]
    stream = _rc4(object_key, content)
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Filter /Standard /V 1 /R 2 /O <%s> /U <%s> /P %d >>"
        % (o_entry.hex().encode(), u_entry.hex().encode(), permissions),
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R /Encrypt 6 0 R /ID [<%s> <%s>] >>\n" % (
        len(objects) + 1,
        file_id.hex().encode(),
        file_id.hex().encode(),
    )
    out += b"startxref\n%d\n%%%%EOF\n" % xref
    return bytes(out)


# --- PDF ------------------------------------------------------------------------------------------


def test_pdf_text_and_page_anchors(qapp: QApplication, tmp_path: Path) -> None:
    pdf = write_pdf(
        tmp_path / "report.pdf",
        [
            ["Introduction to tidal power."],
            ["Turbines spin slowly.", "Second line."],
            ["Naïve café — “fin”."],
        ],
    )

    doc = extract(pdf)

    assert (doc.name, doc.kind, doc.pages) == ("report.pdf", "pdf", 3)
    assert [s.anchor for s in doc.sections] == ["p. 1", "p. 2", "p. 3"]
    assert [s.page for s in doc.sections] == [1, 2, 3]
    assert doc.sections[1].text == "Turbines spin slowly.\nSecond line."
    assert doc.sections[2].text == "Naïve café — “fin”."
    assert doc.text_chars == sum(len(s.text) for s in doc.sections)
    assert doc.note is None


def test_long_pdf_has_the_needle_on_its_page(long_pdf: Path) -> None:
    doc = extract(long_pdf)

    assert doc.pages == LONG_PAGES == len(doc.sections)
    assert NEEDLE in doc.sections[NEEDLE_PAGE - 1].text
    assert [s.page for s in doc.sections if NEEDLE in s.text] == [NEEDLE_PAGE]
    assert doc.sections[99].text.startswith("Page 100 of the depot ledger")


def test_pdf_progress_per_page_and_cancel_between_pages(long_pdf: Path) -> None:
    calls: list[tuple[int, int]] = []
    cancel = threading.Event()

    def progress(done: int, total: int) -> None:
        calls.append((done, total))
        if done == 10:
            cancel.set()

    with pytest.raises(ExtractionCancelled):
        extract(long_pdf, cancel=cancel, progress=progress)

    assert calls == [(n, LONG_PAGES) for n in range(1, 11)]


def test_encrypted_pdf_asks_for_a_password_and_rejects_a_wrong_one(tmp_path: Path) -> None:
    pdf = tmp_path / "secret.pdf"
    pdf.write_bytes(encrypted_pdf("opensesame", "The vault opens at dawn."))

    with pytest.raises(DocumentError) as asked:
        extract(pdf)
    assert asked.value.needs_password
    assert asked.value.reason == "password"
    assert str(asked.value).startswith("This PDF is password-protected")

    with pytest.raises(DocumentError) as wrong:
        extract(pdf, password="letmein")
    assert wrong.value.needs_password
    assert wrong.value.reason == "wrong_password"
    assert str(wrong.value) == "The password for “secret.pdf” is incorrect."

    doc = extract(pdf, password="opensesame")
    assert doc.sections[0].text == "The vault opens at dawn."


def test_pdf_encrypted_by_pypdf_opens_with_its_password(qapp: QApplication, tmp_path: Path) -> None:
    pypdf = pytest.importorskip("pypdf")
    plain = write_pdf(tmp_path / "plain.pdf", [["Quarterly figures are confidential."]])
    writer = pypdf.PdfWriter(clone_from=plain)
    writer.encrypt("pw-123", algorithm="RC4-128")
    locked = tmp_path / "locked.pdf"
    with locked.open("wb") as fh:
        writer.write(fh)

    with pytest.raises(DocumentError) as asked:
        extract(locked)
    assert asked.value.needs_password
    assert extract(locked, password="pw-123").sections[0].text == "Quarterly figures are confidential."


def test_scanned_pdf_says_there_is_no_text_and_no_ocr(qapp: QApplication, tmp_path: Path) -> None:
    pdf = write_pdf(tmp_path / "scan.pdf", [[], []], image_only_pages=frozenset({1, 2}))

    with pytest.raises(DocumentError) as err:
        extract(pdf)

    assert err.value.reason == "scanned"
    assert "scanned PDF: no text to read" in str(err.value)
    assert "OCR" in str(err.value)
    assert "not supported" in str(err.value)


def test_pdf_with_some_image_pages_notes_them(qapp: QApplication, tmp_path: Path) -> None:
    pdf = write_pdf(
        tmp_path / "mixed.pdf", [["Words."], [], ["More words."]], image_only_pages=frozenset({2})
    )

    doc = extract(pdf)

    assert [s.text for s in doc.sections] == ["Words.", "", "More words."]
    assert doc.note == "1 of 3 pages have no text layer and were skipped."


def test_truncated_pdf_is_reported_as_damaged(long_pdf: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.pdf"
    broken.write_bytes(long_pdf.read_bytes()[:2000])

    with pytest.raises(DocumentError) as err:
        extract(broken)

    assert err.value.reason == "corrupt"
    assert str(err.value) == "“broken.pdf” is damaged or not a PDF file."


def test_text_renamed_to_pdf_is_reported_as_damaged(tmp_path: Path) -> None:
    fake = tmp_path / "fake.pdf"
    fake.write_text("just some words\n")

    with pytest.raises(DocumentError, match="damaged or not a PDF"):
        extract(fake)


# --- DOCX -----------------------------------------------------------------------------------------


def test_docx_headings_paragraphs_and_tables(tmp_path: Path) -> None:
    import docx

    document = docx.Document()
    document.add_paragraph("Prepared for the board.")
    document.add_heading("Introduction", level=1)
    document.add_paragraph("Tidal power is predictable.")
    document.add_heading("Costs", level=2)
    table = document.add_table(rows=3, cols=2)
    for r, (a, b) in enumerate([("Item", "Cost"), ("Turbine", "4 M€"), ("Cable", "1 | 2 M€")]):
        table.cell(r, 0).text, table.cell(r, 1).text = a, b
    document.add_paragraph("Costs fall every year.")
    path = tmp_path / "plan.docx"
    document.save(str(path))

    doc = extract(path)

    assert doc.kind == "docx"
    assert doc.pages is None
    assert [s.anchor for s in doc.sections] == ["§ Start", "§ Introduction", "§ Costs"]
    assert [s.heading for s in doc.sections] == [None, "Introduction", "Costs"]
    assert doc.sections[0].text == "Prepared for the board."
    assert doc.sections[1].text == "Introduction\n\nTidal power is predictable."
    assert doc.sections[2].text == (
        "Costs\n\n| Item | Cost |\n|---|---|\n| Turbine | 4 M€ |\n| Cable | 1 \\| 2 M€ |\n\n"
        "Costs fall every year."
    )


def test_corrupt_docx(tmp_path: Path) -> None:
    path = tmp_path / "broken.docx"
    path.write_bytes(b"PK\x03\x04 this is not really a zip archive")

    with pytest.raises(DocumentError) as err:
        extract(path)

    assert err.value.reason == "corrupt"
    assert str(err.value) == "“broken.docx” is damaged or not a Word document."


# --- HTML and Markdown ----------------------------------------------------------------------------

HTML = """<!DOCTYPE html>
<html><head><title>Guide</title><style>body { color: red }</style>
<script>var secret = "do not show";</script></head>
<body>
<nav><a href="/">Home</a> | <a href="/x">Menu item</a></nav>
<p>Welcome to the <a href="/guide">tidal guide</a>. It&rsquo;s short.</p>
<h2>Safety <em>first</em></h2>
<p>Wear a   life
   jacket.</p>
<ul><li>Check the tide</li><li>Tell a friend</li></ul>
<script>alert("nope")</script>
<template><p>hidden template</p></template>
<table><tr><th>Tide</th><th>Time</th></tr><tr><td>High</td><td>06:12</td></tr></table>
<pre>line one
  indented line</pre>
</body></html>
"""


def test_html_readable_text_without_scripts_styles_or_navigation(tmp_path: Path) -> None:
    path = tmp_path / "guide.html"
    path.write_text(HTML, encoding="utf-8")

    doc = extract(path)

    assert doc.kind == "html"
    assert [s.anchor for s in doc.sections] == ["§ Start", "§ Safety first"]
    assert doc.sections[0].text == "Welcome to the tidal guide. It’s short."
    assert doc.sections[1].text == (
        "Safety first\n\nWear a life jacket.\n\n- Check the tide\n- Tell a friend\n\n"
        "| Tide | Time |\n| High | 06:12 |\n\nline one\n  indented line"
    )
    for hidden in ("secret", "color", "nope", "Menu item", "hidden template", "Guide"):
        assert hidden not in doc.text


def test_html_meta_charset_is_honoured(tmp_path: Path) -> None:
    path = tmp_path / "old.htm"
    path.write_bytes(
        '<html><head><meta charset="windows-1252"></head><p>Caf\xe9 cr\xe8me</p>'.encode("cp1252")
    )

    assert extract(path).sections[0].text == "Café crème"


MARKDOWN = """Intro line before any heading.

# Overview

Scout reads long documents.

```python
# not a heading: inside a code fence
print("hi")
```

Details
-------

Setext heading above.

## Limits ##
No OCR.
"""


def test_markdown_headings_are_anchors_and_fences_are_not_headings(tmp_path: Path) -> None:
    path = tmp_path / "README.md"
    path.write_text(MARKDOWN, encoding="utf-8")

    doc = extract(path)

    assert doc.kind == "markdown"
    assert [s.anchor for s in doc.sections] == ["§ Start", "§ Overview", "§ Details", "§ Limits"]
    assert [s.start_line for s in doc.sections] == [1, 3, 12, 17]
    assert "# not a heading" in doc.sections[1].text
    assert doc.sections[3].text == "## Limits ##\nNo OCR."


# --- text, code, tables ---------------------------------------------------------------------------

SAMPLES = {
    "utf-8": "Crème brûlée, naïve façade — “quotes”, 日本語 and emoji ✓.\n",
    "utf-8-sig": "Byte order mark first: Ærøskøbing, Zürich, São Paulo.\n",
    "utf-16": "Sixteen bits per unit: Ελληνικά, русский, 中文.\n",
    "cp1252": (
        "Les élèves déjà arrivés à l’école reçoivent des crêpes “maison” — voilà. "
        "Señor Muñoz paid 50 € for the café’s crème brûlée. Naïve façade, déjà vu.\n"
    )
    * 3,
    "latin-1": "Der Bär läuft über die Straße; süße Äpfel für Jürgen. Ça coûte très cher, señor.\n" * 3,
    "shift_jis": (
        "吾輩は猫である。名前はまだ無い。どこで生れたかとんと見当がつかぬ。"
        "何でも薄暗いじめじめした所でニャーニャー泣いていた事だけは記憶している。\n"
    )
    * 3,
}


@pytest.mark.parametrize("encoding", list(SAMPLES))
def test_plain_text_in_common_encodings(tmp_path: Path, encoding: str) -> None:
    path = tmp_path / f"notes-{encoding}.txt"
    path.write_bytes(SAMPLES[encoding].encode(encoding))

    doc = extract(path)

    assert doc.kind == "text"
    assert doc.text == SAMPLES[encoding].strip()
    assert doc.sections[0].anchor.startswith("line")


def test_windows_line_endings_are_normalised(tmp_path: Path) -> None:
    path = tmp_path / "dos.txt"
    path.write_bytes(b"one\r\ntwo\r\n")

    assert extract(path).text == "one\ntwo"


def test_code_sections_are_line_ranges_of_about_80_lines(tmp_path: Path) -> None:
    lines = []
    for n in range(1, 41):
        lines += [f"def function_{n}(x):", f"    return x + {n}", "", ""]
    source = "\n".join(lines[:-2]) + "\n"
    path = tmp_path / "module.py"
    path.write_text(source, encoding="utf-8")

    doc = extract(path)

    assert doc.kind == "code"
    assert [s.anchor for s in doc.sections] == ["lines 1–78", "lines 81–158"]
    assert [s.start_line for s in doc.sections] == [1, 81]
    assert doc.sections[1].text.startswith("def function_21(x):")
    assert doc.sections[1].text.endswith("    return x + 40")
    for section in doc.sections:  # the anchor's lines are the text's lines
        assert source.split("\n")[section.start_line - 1] == section.text.split("\n")[0]


@pytest.mark.parametrize(
    "name", ["main.go", "lib.rs", "app.ts", "conf.yaml", "query.sql", "Makefile", "x.json"]
)
def test_code_by_extension(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text("first line\nsecond line\n", encoding="utf-8")

    doc = extract(path)

    assert (doc.kind, doc.sections[0].anchor, doc.text) == ("code", "lines 1–2", "first line\nsecond line")


def test_csv_is_a_table_with_the_header_repeated_per_section(tmp_path: Path) -> None:
    rows = ["city,country,population"] + [f"City {n},Country {n % 7},{n * 1000}" for n in range(1, 201)]
    path = tmp_path / "cities.csv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")

    doc = extract(path)

    assert doc.kind == "table"
    assert len(doc.sections) > 3
    assert doc.sections[0].anchor == "rows 2–" + doc.sections[0].anchor.split("–")[1]
    for section in doc.sections:
        assert section.text.startswith("| city | country | population |\n|---|---|---|\n| City ")
    assert doc.sections[-1].anchor.endswith("–201")
    assert "| City 200 | Country 4 | 200000 |" in doc.sections[-1].text


def test_tsv_with_quoted_cells(tmp_path: Path) -> None:
    path = tmp_path / "data.tsv"
    path.write_text('name\tnote\nAda\t"tabs, commas"\nBob\tplain\n', encoding="utf-8")

    doc = extract(path)

    assert doc.sections[0].anchor == "rows 2–3"
    assert doc.sections[0].text == "| name | note |\n|---|---|\n| Ada | tabs, commas |\n| Bob | plain |"


# --- refusals -------------------------------------------------------------------------------------


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "nothing.txt"
    path.write_bytes(b"")

    with pytest.raises(DocumentError) as err:
        extract(path)

    assert (err.value.reason, str(err.value)) == ("empty", "“nothing.txt” is empty.")


def test_whitespace_only_file_has_no_text(tmp_path: Path) -> None:
    path = tmp_path / "blank.md"
    path.write_text("\n\n   \n")

    with pytest.raises(DocumentError, match="contains no text"):
        extract(path)


def test_unsupported_type_names_the_supported_ones(tmp_path: Path) -> None:
    path = tmp_path / "movie.mkv"
    path.write_bytes(b"\x1aE\xdf\xa3 binary")

    with pytest.raises(DocumentError) as err:
        extract(path)

    assert err.value.reason == "unsupported"
    message = str(err.value)
    assert message.startswith("“movie.mkv”: .mkv files are not supported. Supported: PDF, Word (.docx), HTML")
    assert "Markdown" in message
    assert "CSV/TSV" in message


def test_old_word_doc_is_refused_with_advice(tmp_path: Path) -> None:
    path = tmp_path / "old.doc"
    path.write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 100)

    with pytest.raises(DocumentError, match=r"old Word \.doc file.*save it as \.docx"):
        extract(path)


def test_file_over_the_size_limit_names_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "big.txt"
    path.write_text("x" * 3000)

    with pytest.raises(DocumentError) as err:
        extract(path, max_bytes=2048)

    assert err.value.reason == "too_large"
    assert str(err.value) == "“big.txt” is 2.9 KB, over the 2 KB limit for documents."


@pytest.mark.parametrize(
    "payload",
    [
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x01\x00" + bytes(range(256)) * 8,
        bytes(range(256)) * 16,
        b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff\x00\x00" * 50,
    ],
    ids=["png", "all-bytes", "exe"],
)
def test_binary_content_masquerading_as_text(tmp_path: Path, payload: bytes) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(payload)

    with pytest.raises(DocumentError) as err:
        extract(path)

    assert err.value.reason == "binary"
    assert str(err.value) == "“notes.txt” does not look like text: it contains binary data."


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DocumentError, match="no longer exists"):
        extract(tmp_path / "gone.pdf")


def test_non_pdf_formats_report_progress_once(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("hello")
    calls: list[tuple[int, int]] = []

    extract(path, progress=lambda done, total: calls.append((done, total)))

    assert calls == [(1, 1)]
