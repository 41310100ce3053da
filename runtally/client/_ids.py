"""Time-ordered ids and timestamps for events, runs and steps.

Uids are UUIDv7 (RFC 9562): a 48-bit Unix-millisecond timestamp, version 7,
the RFC variant, and random bits.  They sort by creation time, which keeps the
daemon's UNIQUE indexes append-mostly, and they need no coordination between
processes.  Python 3.11 has no ``uuid.uuid7``; this is the whole of it.

A run makes ~40 of them, so their cost counts: the random part of BATCH ids
at a time comes from one ``os.urandom`` and is formatted in one go (the
version and variant bits set with one mask over all of them, the digits laid
out column by column), and an id is then its millisecond prefix plus the next
ready-made tail: ~3.6k instructions an id, where formatting each one alone
took ~14k.  The tails are taken with ``next()`` on an iterator, which the GIL
makes atomic: two threads never get the same one.  A forked child throws away
the tails it inherited (the parent hands out the very same ones, and in the
same millisecond they would be the same ids), like ``random`` reseeds in a
child.
"""

from __future__ import annotations

import os
import time

TYPE_CHECKING = False  # not typing's: the client path does not import typing for this
if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["now_ms", "uuid7"]

#: Ids whose random part one ``os.urandom`` call makes.
BATCH = 256
_BITS = 80  # an id's random part with its version and variant: 20 hex digits
#: Over each 80-bit chunk: clear the version nibble and the variant's two bits,
#: then set version 7 and variant 0b10 (RFC 9562 section 5.7).
_CLEAR = (1 << _BITS) - 1 ^ (0xF << 76 | 0b11 << 62)
_SET = 0x7 << 76 | 0b10 << 62
_DIGITS = _BITS // 4
_TAIL = 24  # " -dddd-dddd-dddddddddddd": a space to split on, then the tail
#: Where each of an id's 20 random hex digits goes in its tail.
_COLUMNS = (*range(2, 6), *range(7, 11), *range(12, 24))
_masks: tuple[int, int] | None = None  # _CLEAR and _SET repeated BATCH times, made once

_tails: Iterator[str] = iter(())  # "-7xxx-Vxxx-xxxxxxxxxxxx", one per id
_prefix: tuple[int, str] = (-1, "")  # (ms, "xxxxxxxx-xxxx"): ids of one ms share it
_fork_hook = False


def now_ms() -> int:
    """Unix epoch milliseconds on this machine's clock (the events' ``ts``)."""
    return time.time_ns() // 1_000_000


def uuid7(ms: int | None = None) -> str:
    """A new UUIDv7 as its canonical 36-character string."""
    if ms is None:
        ms = now_ms()
    prefix = _prefix  # one read: another thread may replace it meanwhile
    if prefix[0] != ms:
        prefix = _set_prefix(ms)
    tail = next(_tails, None)
    if tail is None:
        tail = _refill()
    return prefix[1] + tail


def _set_prefix(ms: int) -> tuple[int, str]:
    global _prefix  # noqa: PLW0603
    low = ms & 0xFFFF_FFFF_FFFF
    _prefix = prefix = (ms, f"{low >> 16:08x}-{low & 0xFFFF:04x}")
    return prefix


def _refill() -> str:
    """Make the next BATCH tails; returns the first (the others go to ``_tails``)."""
    global _tails, _masks, _fork_hook  # noqa: PLW0603
    if not _fork_hook:
        _fork_hook = True
        os.register_at_fork(after_in_child=_forget)
    if _masks is None:
        _masks = (
            sum(_CLEAR << (_BITS * i) for i in range(BATCH)),
            sum(_SET << (_BITS * i) for i in range(BATCH)),
        )
    clear, set_ = _masks
    size = BATCH * _BITS // 8
    # os.urandom: the kernel's CSPRNG, no state of ours that a fork could copy.
    digits = (int.from_bytes(os.urandom(size), "big") & clear | set_).to_bytes(size, "big").hex()
    # Lay the tails out as " -dddd-dddd-dddddddddddd" each with one strided slice
    # assignment per column (C loops, not a Python loop per id), then split.
    out = bytearray(b" -0000-0000-000000000000" * BATCH)
    hexed = digits.encode()
    for column, at in enumerate(_COLUMNS):
        out[at::_TAIL] = hexed[column::_DIGITS]
    tails = iter(out.decode().split())
    first = next(tails)
    _tails = tails
    return first


def _forget() -> None:
    """In a forked child: the inherited tails are the parent's next ids, never to be used."""
    global _tails  # noqa: PLW0603
    _tails = iter(())
