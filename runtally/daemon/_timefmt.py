"""Timestamps as the dashboard schema stores them: UTC ISO 8601 with milliseconds."""

from __future__ import annotations

import time
from datetime import UTC, datetime

__all__ = ["iso_from_ms", "ms_from_iso", "now_iso", "now_ms"]

# (minute, formatted prefix): one tuple, so readers in other threads never see
# a minute paired with another minute's prefix.  Per minute rather than per
# second: a run's events span seconds, and strftime costs more than the rest.
_cache: tuple[int, str] = (-1, "")


def iso_from_ms(ms: int) -> str:
    """``1770562380123`` -> ``'2026-02-08T14:53:00.123Z'``."""
    global _cache  # noqa: PLW0603 - one-entry cache on the hot path
    minute, rest = divmod(ms, 60_000)
    cached_minute, prefix = _cache
    if cached_minute != minute:
        prefix = time.strftime("%Y-%m-%dT%H:%M:", time.gmtime(minute * 60))
        _cache = (minute, prefix)
    second, millis = divmod(rest, 1000)
    return f"{prefix}{second:02d}.{millis:03d}Z"


def ms_from_iso(text: str) -> int:
    """Inverse of iso_from_ms; also reads the old tracker's ISO strings."""
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return round(parsed.timestamp() * 1000)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def now_iso() -> str:
    return iso_from_ms(now_ms())
