"""Parked events: stored until their run or step appears, bounded in bytes and age.

An event whose run (or step) does not exist yet waits in ``parked_events``,
keyed by event id, written in the same transaction as its ack.  Unbounded,
a flood of events whose run never starts would grow the database without
limit, so:

* bytes: at most ``max_bytes`` in total and ``max_bytes_per_peer`` per peer
  uid (spool replays count as uid None); an event beyond them is refused
  (dead-lettered with the reason) rather than parked;
* age: ``expire`` moves events parked before a cutoff into ``dead_letters``
  with the reason "its run never started" (or step), so nothing waits forever.

The counters live in memory (loaded at open, kept by every park, release and
expiry); they are only right because the daemon is the one writer, and must be
reloaded after a rollback (``load``).
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from dataclasses import dataclass

__all__ = ["Expired", "OverBudget", "Parking"]


class OverBudget(Exception):
    """Parking this event would exceed a byte bound; the message says which."""


@dataclass(frozen=True, slots=True)
class Expired:
    """A parked event moved out by ``expire``: its id, payload, peer and the reason."""

    event_id: str
    payload: bytes
    peer_uid: int | None
    reason: str


class Parking:
    """The parked events' bookkeeping on one connection (the caller's transaction)."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        *,
        max_bytes: int = 256 << 20,
        max_bytes_per_peer: int = 64 << 20,
    ) -> None:
        self._conn = conn
        self.max_bytes = max_bytes
        self.max_bytes_per_peer = max_bytes_per_peer
        #: How many parked events wait for each "run:<uid>"/"step:<uid>": a new
        #: run or step nobody waits for costs no query.
        self.waiting: Counter[str] = Counter()
        self.bytes_total = 0
        self.bytes_by_peer: Counter[int | None] = Counter()
        self.load()

    def load(self) -> None:
        """Recount from the table (at open and after a rollback)."""
        conn = self._conn
        self.waiting = Counter(
            dict(conn.execute("SELECT waiting_for, count(*) FROM parked_events GROUP BY 1"))
        )
        self.bytes_by_peer = Counter(
            dict(conn.execute("SELECT peer_uid, total(size) FROM parked_events GROUP BY 1"))
        )
        self.bytes_by_peer = Counter({k: int(v) for k, v in self.bytes_by_peer.items()})
        self.bytes_total = sum(self.bytes_by_peer.values())

    @property
    def count(self) -> int:
        """Events parked now."""
        return sum(self.waiting.values())

    def park(
        self, event_id: str, waiting_for: str, payload: bytes, peer_uid: int | None, now: str
    ) -> None:
        """Store one event until ``waiting_for`` appears; OverBudget beyond a byte bound."""
        size = len(payload)
        if self.bytes_total + size > self.max_bytes:
            raise OverBudget(
                f"parked events would exceed {self.max_bytes} bytes in total"
                f" (events whose run or step has not started yet); {waiting_for} never started?"
            )
        if self.bytes_by_peer[peer_uid] + size > self.max_bytes_per_peer:
            raise OverBudget(
                f"parked events of uid {peer_uid} would exceed {self.max_bytes_per_peer} bytes"
                f" (events whose run or step has not started yet); {waiting_for} never started?"
            )
        cur = self._conn.execute(
            "INSERT INTO parked_events (event_id, waiting_for, parked_at, payload, peer_uid, size)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (event_id) DO NOTHING",
            (event_id, waiting_for, now, payload, peer_uid, size),
        )
        if cur.rowcount:  # else parked already: parking twice is parking once
            self.waiting[waiting_for] += 1
            self.bytes_total += size
            self.bytes_by_peer[peer_uid] += size

    def release(self, waiting_for: str) -> list[bytes]:
        """Remove and return the payloads waiting for ``waiting_for`` (none: no query)."""
        if self.waiting.pop(waiting_for, 0) == 0:
            return []
        rows = self._conn.execute(
            "DELETE FROM parked_events WHERE waiting_for = ? RETURNING payload, peer_uid, size",
            (waiting_for,),
        ).fetchall()
        for _, peer, size in rows:
            self._forget_bytes(peer, size)
        return [payload for payload, _, _ in rows]

    def expire(self, cutoff: str) -> list[Expired]:
        """Remove the events parked before ``cutoff`` (stored-format UTC) and return them."""
        rows = self._conn.execute(
            "DELETE FROM parked_events WHERE parked_at < ?"
            " RETURNING event_id, waiting_for, payload, peer_uid, size",
            (cutoff,),
        ).fetchall()
        out = []
        for event_id, waiting_for, payload, peer, size in rows:
            self._forget_one(waiting_for, peer, size)
            kind = waiting_for.split(":", 1)[0]
            reason = f"its {kind} never started ({waiting_for}); parked since before {cutoff}"
            out.append(Expired(event_id, payload, peer, reason))
        return out

    def waiting_for_steps(self, cutoff: str) -> list[tuple[str, str, bytes, int | None, int]]:
        """(event_id, waiting_for, payload, peer_uid, size) of the events parked before
        ``cutoff`` that wait for a step (none waiting: no query)."""
        if not any(key.startswith("step:") for key in self.waiting):
            return []
        return self._conn.execute(
            "SELECT event_id, waiting_for, payload, peer_uid, size FROM parked_events"
            " WHERE waiting_for >= 'step:' AND waiting_for < 'step;' AND parked_at < ?",
            (cutoff,),
        ).fetchall()

    def drop(self, event_id: str, waiting_for: str, peer_uid: int | None, size: int) -> None:
        """Remove one parked event (``waiting_for_steps`` found it), keeping the counts."""
        self._conn.execute("DELETE FROM parked_events WHERE event_id = ?", (event_id,))
        self._forget_one(waiting_for, peer_uid, size)

    def oldest(self) -> str | None:
        """When the oldest parked event was parked (stored-format UTC), None if none."""
        return self._conn.execute("SELECT min(parked_at) FROM parked_events").fetchone()[0]

    def _forget_one(self, waiting_for: str, peer: int | None, size: int) -> None:
        """The counts, after one parked event left the table."""
        self._forget_bytes(peer, size)
        left = self.waiting[waiting_for] - 1
        if left > 0:
            self.waiting[waiting_for] = left
        else:
            self.waiting.pop(waiting_for, None)

    def _forget_bytes(self, peer: int | None, size: int) -> None:
        self.bytes_total -= size
        left = self.bytes_by_peer[peer] - size
        if left > 0:
            self.bytes_by_peer[peer] = left
        else:
            self.bytes_by_peer.pop(peer, None)
