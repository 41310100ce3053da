"""Timestamps as the dashboard schema stores them: UTC ISO 8601 with milliseconds.

The one place that writes and reads ``2026-02-08T14:53:00.123Z``: the daemon
stores events' ``ts`` with it, the CLI parses stored values and turns
``--since`` into it.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

__all__ = ["iso_from_datetime", "iso_from_ms", "ms_from_iso", "now_iso", "now_ms", "parse_iso"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)

# (minute, formatted prefix): one tuple, so readers in other threads never see
# a minute paired with another minute's prefix.  Per minute rather than per
# second: a run's events span seconds, and strftime costs more than the rest.
_cache: tuple[int, str] = (-1, "")
# The rest of the string from lookup tables: a format spec in an f-string
# costs ~0.5 us, on a path taken once or twice per event (~70 kB of strings).
_SECONDS = tuple(f"{second:02d}." for second in range(60))
_MILLIS = tuple(f"{millis:03d}Z" for millis in range(1000))


def iso_from_ms(ms: int) -> str:
    """``1770562380123`` -> ``'2026-02-08T14:53:00.123Z'`` (Unix epoch milliseconds)."""
    global _cache  # noqa: PLW0603 - one-entry cache on the hot path
    minute, rest = divmod(ms, 60_000)
    cached_minute, prefix = _cache
    if cached_minute != minute:
        prefix = (_EPOCH + timedelta(minutes=minute)).strftime("%Y-%m-%dT%H:%M:")
        _cache = (minute, prefix)
    second, millis = divmod(rest, 1000)
    return prefix + _SECONDS[second] + _MILLIS[millis]


def iso_from_datetime(moment: datetime) -> str:
    """An aware datetime (naive: local time) in the stored format, milliseconds truncated."""
    return iso_from_ms((moment.astimezone(UTC) - _EPOCH) // _MS)


def parse_iso(text: str) -> datetime:
    """A stored timestamp as an aware datetime; naive values are UTC.

    Also reads the old tracker's ISO strings (``+00:00``, no milliseconds).
    Raises ValueError for text that is not ISO 8601.
    """
    parsed = datetime.fromisoformat(text)  # Python 3.11+ reads the trailing Z itself
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def ms_from_iso(text: str) -> int:
    """Inverse of iso_from_ms; also reads the old tracker's ISO strings."""
    return round((parse_iso(text) - _EPOCH) / _MS)


def now_ms() -> int:
    """The wall clock in Unix epoch milliseconds."""
    return time.time_ns() // 1_000_000


def now_iso() -> str:
    """The wall clock in the stored format."""
    return iso_from_ms(now_ms())
