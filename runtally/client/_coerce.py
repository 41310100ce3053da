"""Make whatever a pipeline passes acceptable to the protocol: warn, never raise.

The daemon refuses an invalid event (and keeps it in ``dead_letters``), so a
bad argument would cost a row.  Repairing it here keeps the row: a negative
count becomes 0, a non-string name becomes ``str(name)``, a free-form outcome
is mapped onto the protocol's, an unencodable ``detail`` becomes plain data.
Each kind of repair is reported once per process.

Text that UTF-8 cannot encode
-----------------------------
MessagePack strings are UTF-8, and a Python ``str`` may hold lone surrogates
that UTF-8 cannot encode: ``os.fsdecode``/``sys.argv``/``os.environ`` turn
each byte of a non-UTF-8 file name into ``U+DC80..U+DCFF`` (PEP 383's
``surrogateescape``).  One such character used to make the whole event
unencodable, and a ``run_start`` lost that way took its whole run with it.
``clean_text`` (``runtally._text``, shared with the daemon) is the one
sanitiser every string of an event goes through (``text``, ``name``, ``uid``,
every key and value of ``plain``, and the Client's last-resort re-encoding
of any event): a smuggled byte becomes the four characters ``\\xNN``
(``report-\\xe9.csv``: readable, and the original byte recoverable), any
other lone surrogate becomes U+FFFD.  Valid text is returned as is, the same
object, after an ``isascii``/encode check.
"""

from __future__ import annotations

from typing import Any

import msgspec

from runtally._text import clean_text
from runtally.protocol import MAX_COUNT, MAX_NAME, MAX_UID, limit_depth

from ._warn import warn_once

__all__ = ["clean", "clean_text", "count", "name", "outcome", "plain", "text", "uid"]

#: ``detail`` / ``summary`` bigger than this once encoded are replaced by a
#: short repr: a frame is capped at 1 MiB and a dashboard cell needs far less.
MAX_PLAIN_BYTES = 256 * 1024

_SUCCESS = frozenset({"success", "succeeded", "ok", "passed", "pass", "done", "true", "yes"})
_FAILURE = frozenset({"failure", "failed", "fail", "error", "errored", "false", "no", "crashed"})
_SKIPPED = frozenset({"skipped", "skip", "skipping"})


def clean(value: Any) -> Any:
    """Builtins (``msgspec.to_builtins`` output) with every key and string cleaned, any depth.

    Containers are rebuilt, so call it only when an encode failed: valid data
    is never walked on the fast path.  Depth is bounded by the caller (the
    encoder refused the data already if it nests too deep).
    """
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    return value


def text(value: Any, limit: int) -> str:
    """``value`` as a string of at most ``limit`` characters (None -> "")."""
    if value is None:
        return ""
    if not isinstance(value, str):
        value = _str(value)
    return clean_text(value)[:limit]


def name(value: Any, what: str, default: str) -> str:
    """A protocol name: 1 to 256 characters."""
    result = text(value, MAX_NAME).strip()
    if not result:
        warn_once(f"name-{what}", f"empty {what} {value!r}; using {default!r}")
        return default
    return result


def uid(value: Any, what: str) -> str | None:
    """A uid: 1 to 128 characters, or None when absent or unusable.

    Only a str: what ``start_run``/``start_step`` return.  Anything else (a
    list, a dict holding the id, an object) is a pipeline's slip, said once on
    stderr; its ``str()`` was sent before, named a step that never started,
    and parked the event for days, out of sight (found from outside).
    """
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        warn_once(
            f"uid-type-{what}",
            f"ignoring {what} of type {type(value).__name__}: a uid is the str"
            " that start_run/start_step returned",
        )
        return None
    result = clean_text(value)
    if not 1 <= len(result) <= MAX_UID:
        warn_once(f"uid-{what}", f"ignoring {what} {result[:40]!r}: not a 1-128 character uid")
        return None
    return result


def count(value: Any, what: str) -> int:
    """A count: an int from 0 to 2**62 (None, bad or negative -> clamped, with a warning)."""
    if type(value) is int and 0 <= value <= MAX_COUNT:
        return value  # what nearly every call passes
    if value is None:
        return 0
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        result = value
    else:
        try:
            number = float(value) if isinstance(value, str) else value
            result = int(number)  # inf: OverflowError, nan: ValueError
        except (TypeError, ValueError, OverflowError):
            if isinstance(value, str | bytes) or not hasattr(value, "__len__"):
                warn_once(f"count-{what}", f"{what}={value!r:.60} is not a count; using 0")
                return 0
            result = len(value)  # a list of errors passed where its length was meant
    if result < 0:
        warn_once(f"count-neg-{what}", f"{what}={result} is negative; using 0")
        return 0
    return min(result, MAX_COUNT)


def outcome(value: Any, allowed: tuple[str, ...], default: str = "success") -> str:
    """Map ``value`` onto ``allowed``; anything unrecognised means failure (with a warning)."""
    if value is None:
        return default
    if isinstance(value, str):
        key = value.strip().lower()
        if key in allowed:
            if key != value:
                warn_once(f"outcome-{value}", f"outcome {value!r} read as {key!r}")
            return key
        if key in _SUCCESS:
            mapped = "success"
        elif key in _SKIPPED:
            mapped = "skipped" if "skipped" in allowed else "success"
        elif key in _FAILURE:
            mapped = "failure"
        else:
            mapped = ""
    elif isinstance(value, bool | int):
        mapped = "success" if value else "failure"
    else:
        mapped = ""
    if not mapped:
        warn_once(f"outcome-?{value!r}"[:80], f"unknown outcome {value!r}; recorded as failure")
        return "failure"
    if not isinstance(value, bool):
        warn_once(f"outcome-{value!r}"[:80], f"outcome {value!r} recorded as {mapped!r}")
    return mapped


#: What ``plain`` passes through without msgspec's round trip: a small flat
#: dict of short ASCII strings, in-range ints, floats, bools and None, whose
#: encoding can neither fail nor come near MAX_PLAIN_BYTES.
_FLAT_MAX_ITEMS = 64
_FLAT_MAX_CHARS = 1024
_INT_RANGE = range(-(1 << 63), 1 << 64)  # what MessagePack's ints hold


def _flat(value: dict[Any, Any]) -> bool:
    if len(value) > _FLAT_MAX_ITEMS:
        return False
    for key, item in value.items():
        if type(key) is not str or len(key) > _FLAT_MAX_CHARS or not key.isascii():
            return False
        kind = type(item)
        if kind is str:
            if len(item) > _FLAT_MAX_CHARS or not item.isascii():
                return False
        elif kind is int:
            if item not in _INT_RANGE:
                return False
        elif kind is not bool and kind is not float and item is not None:
            return False
    return True


def plain(value: Any) -> Any:
    """``value`` as MessagePack-able builtins with string keys (for detail/summary)."""
    if value is None:
        return None
    if type(value) is dict and _flat(value):
        # The usual detail ({"batches": 3}): a copy, as to_builtins would make,
        # for ~1/5 of the round trip through it and a trial encode.
        return dict(value)
    try:
        # Cut what nests deeper than the daemon accepts, before (any depth of plain
        # containers) and after (objects that expand into containers) converting.
        result = limit_depth(msgspec.to_builtins(limit_depth(value), str_keys=True, enc_hook=_str))
        try:
            size = len(msgspec.msgpack.encode(result))
        except UnicodeEncodeError:  # a key or string UTF-8 cannot take: repair, keep the rest
            result = clean(result)
            size = len(msgspec.msgpack.encode(result))
    except Exception as exc:  # noqa: BLE001 - any object at all may be passed in
        warn_once(f"plain-{type(value).__name__}", f"cannot encode {type(value).__name__}: {exc}")
        return {"unencodable": _str(value)[:4000]}
    if size > MAX_PLAIN_BYTES:
        warn_once("plain-size", f"a {size}-byte detail/summary was cut to a short repr")
        return {"truncated": True, "bytes": size, "repr": _str(value)[:4000]}
    return result


def _str(value: Any) -> str:
    try:
        return clean_text(str(value))
    except Exception:  # noqa: BLE001 - a __str__ that raises
        try:
            return repr(value)
        except Exception:  # noqa: BLE001
            return f"<unprintable {type(value).__name__}>"
