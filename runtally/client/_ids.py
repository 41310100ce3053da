"""Time-ordered ids and timestamps for events, runs and steps.

Uids are UUIDv7 (RFC 9562): a 48-bit Unix-millisecond timestamp, version 7,
the RFC variant, and random bits.  They sort by creation time, which keeps the
daemon's UNIQUE indexes append-mostly, and they need no coordination between
processes.  Python 3.11 has no ``uuid.uuid7``; this is the whole of it.
"""

from __future__ import annotations

import os
import time

__all__ = ["now_ms", "uuid7"]

_RAND_A = (1 << 12) - 1
_RAND_B = (1 << 62) - 1


def now_ms() -> int:
    """Unix epoch milliseconds on this machine's clock (the events' ``ts``)."""
    return time.time_ns() // 1_000_000


def uuid7(ms: int | None = None) -> str:
    """A new UUIDv7 as its canonical 36-character string."""
    if ms is None:
        ms = now_ms()
    rand = int.from_bytes(os.urandom(10), "big")  # os.urandom: no state shared across fork
    value = (
        (ms & 0xFFFF_FFFF_FFFF) << 80
        | 0x7 << 76
        | (rand >> 62 & _RAND_A) << 64
        | 0b10 << 62
        | rand & _RAND_B
    )
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
