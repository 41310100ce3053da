"""The records a batch writes besides events: dead letters, audit rows, and their origin.

Their text comes partly from outside (a spool file's name in ``source`` and
in messages, a path, a peer's refusal reason): every string is passed
through ``runtally._text`` here, where it enters the database, so a name that
is not valid UTF-8 is stored as ``\\xNN`` and can never make the batch, and
with it every ack, fail (it used to stop the daemon).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, Literal

import msgspec

from .._text import clean_data, clean_text
from ._timefmt import iso_from_ms, now_ms

__all__ = [
    "PURGE_EVENT",
    "AuditEntry",
    "DeadLetter",
    "Origin",
    "Write",
    "write_audit",
    "write_dead_letters",
]

#: The audit event of each retention batch; its data counts what was purged, so
#: the Prometheus counters can add it back and never go down.
PURGE_EVENT = "retention_purge"

_json = msgspec.json.Encoder()


class Origin(msgspec.Struct, frozen=True):
    """Where a frame came from: ``socket`` with the peer's credentials, or a spool file.

    ``source``: "socket", "spool:<file name>" or "parked"; ``uid``/``gid``/``pid``:
    the peer's SO_PEERCRED, None when unknown.
    """

    source: str = "socket"
    uid: int | None = None
    gid: int | None = None
    pid: int | None = None
    #: The peer's start time (/proc/<pid>/stat field 22, clock ticks since boot),
    #: so a reused pid is not taken for the run's process.
    start: int | None = None


#: A statement of the daemon's own (the monitor's ``pipeline_states``), run
#: inside a batch's transaction.
Write = Callable[[sqlite3.Connection], object]


class DeadLetter(msgspec.Struct, frozen=True):
    """A refused frame, kept with the reason it was refused.

    ``frame``: the raw MessagePack bytes as received; ``received_ms``: ms since
    the epoch, 0 for "when written".
    """

    frame: bytes
    reason: str
    event_id: str | None = None
    origin: Origin = Origin()
    received_ms: int = 0


class AuditEntry(msgspec.Struct, frozen=True):
    """One row of what the daemon did (start, replay, quarantine, refusal, ...).

    ``data``: anything JSON-encodable, stored as ``data_json``; ``ts_ms``: ms
    since the epoch, 0 for "when written".
    """

    event: str
    message: str
    level: Literal["debug", "info", "warning", "error"] = "info"
    scope: str = "daemon"
    data: Any = None
    ts_ms: int = 0


def write_dead_letters(conn: sqlite3.Connection, letters: Sequence[DeadLetter]) -> None:
    """INSERT the dead letters, inside the caller's transaction."""
    if not letters:
        return
    now = now_ms()
    conn.executemany(
        "INSERT INTO dead_letters (received_at, source, peer_uid, peer_gid, peer_pid,"
        " event_id, reason, frame) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (
                iso_from_ms(d.received_ms or now),
                clean_text(d.origin.source),
                d.origin.uid,
                d.origin.gid,
                d.origin.pid,
                None if d.event_id is None else clean_text(d.event_id),
                clean_text(d.reason),
                d.frame,
            )
            for d in letters
        ],
    )


def write_audit(conn: sqlite3.Connection, entries: Sequence[AuditEntry]) -> None:
    """INSERT the audit rows, inside the caller's transaction."""
    if not entries:
        return
    now = now_ms()
    conn.executemany(
        "INSERT INTO audit_log (ts, level, run_id, scope, event, message, data_json)"
        " VALUES (?, ?, NULL, ?, ?, ?, ?)",
        [
            (
                iso_from_ms(a.ts_ms or now),
                a.level,
                clean_text(a.scope),
                clean_text(a.event),
                clean_text(a.message),
                None if a.data is None else _json.encode(clean_data(a.data)).decode(),
            )
            for a in entries
        ],
    )
