"""Every error that is written for the user derives from one base, UserError, raised where it happens."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from app.core.context import MessageTooLongError, fit_messages
from app.core.documents import DocumentError, extract
from app.core.downloads.errors import DownloadCancelled, DownloadError, NotEnoughDiskSpaceError
from app.core.engine.errors import EngineError, LoadCancelled, NoModelError
from app.core.errors import UserError
from app.core.gguf_info import GGUFError, read_gguf_info
from app.core.images import ImageError, normalize_image
from app.core.manifest import ManifestError, parse_manifest
from app.core.store import StorageError, Store
from app.core.types import ChatMessage
from app.export import ExportFormatError, parse_json

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path


def test_user_error_keeps_message_and_detail() -> None:
    exc = UserError("The file is damaged.", "offset 12: bad magic")
    assert str(exc) == exc.message == "The file is damaged."
    assert exc.detail == "offset 12: bad magic"
    assert UserError("Only a message.").detail == ""


def test_error_classes_with_their_own_constructors_are_user_errors(tmp_path: Path) -> None:
    for exc in (
        LoadCancelled(),
        NoModelError(),
        EngineError("Not enough memory.", "ggml_backend_alloc failed"),
        DownloadCancelled(kept_partial=True),
        NotEnoughDiskSpaceError(10, 4, tmp_path),
        DownloadError("The Hub answered with an error.", detail="HTTP 500"),
        MessageTooLongError(900, 100),
    ):
        assert isinstance(exc, UserError)
        assert exc.message
        assert str(exc) == exc.message
    assert NotEnoughDiskSpaceError(10, 4, tmp_path).detail == "needed=10 available=4"


def _damaged_database(tmp_path: Path) -> None:
    path = tmp_path / "chat.sqlite3"
    path.write_bytes(b"not a database\n" * 200)
    Store(path)


def _text_as_model(tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    path.write_text("hello, I am not a model\n" * 50)
    read_gguf_info(path)


def _text_as_pdf(tmp_path: Path) -> None:
    path = tmp_path / "notes.pdf"
    path.write_text("plain text with a pdf name\n" * 50)
    extract(path)


def _text_as_image(tmp_path: Path) -> None:
    normalize_image(b"certainly not a picture" * 40, name="photo.png")


def _message_over_the_window(tmp_path: Path) -> None:
    messages = [ChatMessage.user("word " * 500)]
    fit_messages(messages, lambda ms: sum(len(m.content) // 4 for m in ms), n_ctx=200, reserve=50)


def _manifest_without_builds(tmp_path: Path) -> None:
    parse_manifest({"schema_version": 1})


def _export_that_is_not_one(tmp_path: Path) -> None:
    parse_json('{"hello": "world"}')


@pytest.mark.parametrize(
    ("cause", "error"),
    [
        (_damaged_database, StorageError),
        (_text_as_model, GGUFError),
        (_text_as_pdf, DocumentError),
        (_text_as_image, ImageError),
        (_message_over_the_window, MessageTooLongError),
        (_manifest_without_builds, ManifestError),
        (_export_that_is_not_one, ExportFormatError),
    ],
)
def test_errors_raised_for_the_user_are_user_errors(
    tmp_path: Path, cause: Callable[[Path], None], error: type[Exception]
) -> None:
    with pytest.raises(error) as info:
        cause(tmp_path)
    assert isinstance(info.value, UserError)
    assert info.value.message
    assert str(info.value) == info.value.message


def test_value_errors_stay_value_errors() -> None:
    """Callers that catch ValueError for a bad manifest or export keep working."""
    assert issubclass(ManifestError, ValueError)
    assert issubclass(ExportFormatError, ValueError)
