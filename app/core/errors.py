"""The one base of every error the user is told about.

A :class:`UserError` carries ``message``, a sentence written for the user (it is also ``str(exc)``),
and ``detail``, the technical part for the log and a details pane. Whoever shows errors tests
``isinstance(exc, UserError)``; anything else is a bug or an unexpected failure and is shown as
such. Programmer errors stay assertions and ordinary exceptions.
"""

from __future__ import annotations


class UserError(Exception):
    """A failure with a ``message`` for the user and an optional technical ``detail``."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail
