"""Unexpected errors are logged and surfaced, never lost: ``sys.excepthook`` and ``threading.excepthook``.

An exception nobody caught ends in one of two hooks: ``sys.excepthook`` (the main thread, and every Qt
slot, virtual method or signal handler: PySide6 hands their exceptions to it and carries on) and
``threading.excepthook`` (a ``threading.Thread``'s ``run``). :func:`install` puts hooks in front of both
that write the traceback to the log and call ``notify(message, detail)``, which the GUI turns into a
non-modal error banner (through a Qt signal, so it may be called from any thread); then the hook that was
there before runs too (Python's own prints the traceback to stderr; a debugger's or test runner's still
sees the error). Qt-free.
"""

from __future__ import annotations

import logging
import sys
import threading
import traceback
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType

    Notify = Callable[[str, str], None]  # notify(message for people, traceback); called on any thread

log = logging.getLogger(__name__)

_notify: Notify | None = None
_next_sys_hook = sys.__excepthook__  # the hooks that were installed before ours: they run after ours
_next_threading_hook = threading.__excepthook__
_surfacing = threading.local()  # set while notify runs: an error inside notify is only logged


def install(notify: Notify | None = None) -> None:
    """Log and surface uncaught exceptions through ``notify`` (which replaces an earlier one)."""
    global _notify, _next_sys_hook, _next_threading_hook
    _notify = notify
    if sys.excepthook is not _sys_excepthook:  # installing twice must not chain our hook to itself
        _next_sys_hook, sys.excepthook = sys.excepthook, _sys_excepthook
    if threading.excepthook is not _threading_excepthook:
        _next_threading_hook, threading.excepthook = threading.excepthook, _threading_excepthook


def uninstall() -> None:
    """Put back the hooks that were there before :func:`install`."""
    global _notify
    _notify = None
    if sys.excepthook is _sys_excepthook:
        sys.excepthook = _next_sys_hook
    if threading.excepthook is _threading_excepthook:
        threading.excepthook = _next_threading_hook


def describe(exc_type: type[BaseException], exc: BaseException | None, where: str = "") -> str:
    """The sentence shown to the user: what went wrong, in one line, and where the details are."""
    what = f"{exc_type.__name__}: {exc}" if exc is not None and str(exc) else exc_type.__name__
    place = f" in {where}" if where else ""
    return f"Unexpected error{place} ({what}). The details are in the log; please report it."


def _sys_excepthook(
    exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
) -> None:  # fmt: skip
    if not issubclass(exc_type, KeyboardInterrupt):  # Ctrl+C in a terminal: only the usual message
        log.critical("uncaught exception", exc_info=(exc_type, exc, tb))
        _surface(exc_type, exc, tb, "")
    _next_sys_hook(exc_type, exc, tb)


def _threading_excepthook(args: threading.ExceptHookArgs) -> None:
    if not issubclass(args.exc_type, SystemExit):  # threading's own hook ignores SystemExit too
        name = args.thread.name if args.thread is not None else "an unknown thread"
        log.critical("uncaught exception in thread %s", name, exc_info=args.exc_value or True)
        _surface(args.exc_type, args.exc_value, args.exc_traceback, f"thread {name}")
    _next_threading_hook(args)


def _surface(
    exc_type: type[BaseException], exc: BaseException | None, tb: TracebackType | None, where: str
) -> None:  # fmt: skip
    notify = _notify
    if notify is None or getattr(_surfacing, "active", False):
        return
    detail = "".join(traceback.format_exception(exc_type, exc, tb))
    _surfacing.active = True
    try:
        notify(describe(exc_type, exc, where), detail)
    except Exception:  # a hook must never raise (the receiver may be gone at exit)
        log.exception("could not show an unexpected error to the user")
    finally:
        _surfacing.active = False
