"""How a reported error becomes an error row's member, message and stack.

Pipelines report errors as strings, dicts, objects or exceptions
(``RunTracker.record_errors``); this turns each into ``(member, message,
stack)`` and an exception into its text and traceback.  Imported with the
first RunTracker (``_tracker._load``), never at ``import runtally``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import Any

from runtally.protocol import MAX_MESSAGE, stack_tail

from . import _coerce

__all__ = ["describe", "exception_text", "format_traceback"]


def describe(item: Any, member_keys: Iterable[str]) -> tuple[Any, Any, Any]:
    """(member, message, stack) of one error as pipelines report them."""
    if isinstance(item, str | bytes):
        return None, item, None
    get = item.get if isinstance(item, Mapping) else functools.partial(getattr, item)
    member = None
    for key in member_keys:
        value = get(key, None)
        if value is not None and value != "":
            member = value
            break
    stack = get("stack", None)
    if isinstance(item, BaseException):
        return member, exception_text(item), stack or format_traceback(item)
    message = get("message", None) or get("error", None)
    if isinstance(message, BaseException):
        stack = stack or format_traceback(message)
        message = exception_text(message)
    if message is None or message == "":
        message = item
    return member, message, stack


def exception_text(exc: BaseException) -> str:
    """``Type: text`` of an exception, cut to MAX_MESSAGE characters."""
    # As a traceback's last line and Sentry show it: ``KeyError: 'k'``, not ``'k'``.
    text = _coerce.text(exc, MAX_MESSAGE)
    return _coerce.text(
        f"{type(exc).__name__}: {text}" if text else type(exc).__name__, MAX_MESSAGE
    )


def format_traceback(exc: BaseException) -> str | None:
    """The traceback of a raised exception, its tail cut to MAX_STACK; None if never raised."""
    if exc.__traceback__ is None:
        return None
    import traceback  # only when an exception is recorded

    lines = traceback.format_exception(type(exc), exc, exc.__traceback__)
    text = "".join(lines)
    return stack_tail(text)
