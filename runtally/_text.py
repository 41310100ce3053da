"""Text from outside made safe to store, encode and print: one sanitiser for every package.

A Python ``str`` may hold lone surrogates that UTF-8 cannot encode:
``os.fsdecode``/``os.listdir``/``sys.argv``/``os.environ`` turn each byte of
a non-UTF-8 file name into ``U+DC80..U+DCFF`` (PEP 383's
``surrogateescape``).  SQLite, MessagePack and JSON all need UTF-8, so one
such character made a whole row (or reply) unwritable.

``clean_text`` turns a smuggled byte into the four characters ``\\xNN``
(``report-\\xe9.csv``: readable, and the original byte recoverable), any
other lone surrogate into U+FFFD; valid text is returned as is, the same
object.  ``clean_name`` does the same and also escapes control characters
(``\\x1b``, ``\\x07``, newlines): what the daemon shows of a name it did not
choose (a spool file's, a path's) can then neither break a log line nor
drive a terminal.  ``clean_data`` applies ``clean_text`` to every string
(keys included) of plain data for JSON.  ``db_text`` is the other way round:
the TEXT of a database row that is not UTF-8 (an adopted or hand-edited
file) read with each bad byte as ``\\xNN``, rather than failing every read
that touches the row.
"""

from __future__ import annotations

import codecs
import re
from typing import Any

__all__ = ["clean_data", "clean_name", "clean_text", "db_text"]

_ERRORS = "runtally-escape"
_REPLACEMENT = "\ufffd".encode()
#: C0 controls, DEL and C1 controls: never shown raw.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _escape_unencodable(exc: UnicodeError) -> tuple[bytes, int]:
    """codecs error handler: ``\\xNN`` for a surrogate-escaped byte, U+FFFD otherwise.

    Returns bytes: the UTF-8 encoder takes a str replacement only if it is ASCII.
    """
    if not isinstance(exc, UnicodeEncodeError):
        raise exc
    out = bytearray()
    for ch in exc.object[exc.start : exc.end]:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:
            out += b"\\x%02x" % (code - 0xDC00)
        else:
            out += _REPLACEMENT
    return bytes(out), exc.end


codecs.register_error(_ERRORS, _escape_unencodable)


def clean_text(value: str) -> str:
    """``value`` with whatever UTF-8 cannot encode replaced (see the module doc); never raises."""
    if value.isascii():
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", _ERRORS).decode("utf-8")
    return value


def clean_name(value: str) -> str:
    """``clean_text(value)`` with control characters shown as ``\\xNN``: safe in a log line."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m[0]):02x}", clean_text(value))


def clean_data(value: Any) -> Any:
    """``value`` (JSON-like data) with every string, dict keys included, through ``clean_text``."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_text(k) if isinstance(k, str) else k: clean_data(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean_data(v) for v in value]
    return value


def db_text(data: bytes) -> str:
    """A ``sqlite3`` ``text_factory``: UTF-8, with each byte that is not shown as ``\\xNN``.

    Python's default (strict ``str``) raises ``OperationalError: Could not
    decode to UTF-8`` for the whole query on one such value: found from
    outside, one bad pipeline name in an adopted database stopped the
    daemon's monitor for every pipeline and every ``runs`` listing.  The
    daemon itself never writes such text (every string it stores is UTF-8).
    """
    return data.decode("utf-8", "backslashreplace")
