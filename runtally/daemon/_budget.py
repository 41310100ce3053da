"""One budget for the bytes of incomplete frames buffered by all connections.

A frame may be 1 MiB and a connection may send all but its last byte, then
wait: 1,000 such connections held 1 GB.  Complete frames go to the writer,
whose queue has its own byte budget; this covers what is not a frame yet.
Each connection reports what its decoder holds after every read
(``update``); when the total is over the limit, the connections that have
gone longest without completing a frame are evicted (their buffer dropped at
once, an ``error`` reply sent, the connection closed) until it fits again.
So the total exceeds the limit by at most one read, and only until that read
is accounted.  The oldest holder is the slowest one: a slowloris, or a
client that stopped halfway; a healthy client completes its frame within a
few reads.  An evicted client spools what it saw no ack for, so nothing is
lost.
"""

from __future__ import annotations

from typing import Protocol

from ..protocol import MAX_FRAME
from ._log import logger
from ._throttle import Throttle

__all__ = ["PartialBudget", "PartialHolder"]

#: A budget below two whole frames would evict a connection for one honest frame.
MIN_PARTIAL_BYTES = 2 * MAX_FRAME


class PartialHolder(Protocol):
    """A connection, as the budget sees it."""

    #: Bytes of incomplete frames it holds, as last reported (kept by the budget).
    partial_bytes: int

    def evict(self, reason: str) -> None:
        """Drop the buffered bytes now, and close with ``reason`` as an ``error`` reply."""
        ...


class PartialBudget:
    """Bytes of incomplete frames across connections (``used``) against ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = max(limit, MIN_PARTIAL_BYTES)
        self.used = 0
        #: Connections holding a partial frame, the longest without a complete frame first.
        self._holders: dict[PartialHolder, None] = {}
        self.evicted = 0
        self._throttle = Throttle()

    def update(self, holder: PartialHolder, nbytes: int, *, progressed: bool) -> None:
        """``holder`` now buffers ``nbytes`` of incomplete frames; evict whoever is over.

        ``progressed``: it completed a frame in this read (so it is the newest
        holder, not the oldest, whatever it buffers now).
        """
        self._set(holder, nbytes, progressed=progressed)
        if self.used > self.limit:
            self._evict_oldest()

    def release(self, holder: PartialHolder) -> None:
        """``holder`` buffers nothing any more (closed, or evicted)."""
        self._set(holder, 0, progressed=True)

    def _set(self, holder: PartialHolder, nbytes: int, *, progressed: bool) -> None:
        self.used += nbytes - holder.partial_bytes
        holder.partial_bytes = nbytes
        if nbytes == 0:
            self._holders.pop(holder, None)
        elif progressed or holder not in self._holders:
            self._holders.pop(holder, None)
            self._holders[holder] = None  # to the end: the newest

    def _evict_oldest(self) -> None:
        reason = (
            f"incomplete frames from all connections exceed the daemon's budget of "
            f"{self.limit} bytes and this connection's has waited longest; closing"
        )
        victims = 0
        for holder in list(self._holders):
            if self.used <= self.limit:
                break
            self.release(holder)
            holder.evict(reason)
            victims += 1
        self.evicted += victims
        reported = self._throttle.hit(None, victims)
        if reported is not None:
            logger.warning(
                "closed a connection holding an incomplete frame: incomplete frames "
                "exceeded %d bytes (%s, %d in all)",
                self.limit,
                reported.describe("such closes"),
                self.evicted,
            )
