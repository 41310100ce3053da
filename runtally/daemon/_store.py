"""The database: opened once by the one writer, written in whole batches.

Plain synchronous sqlite3, no trio: the daemon's writer task calls it from a
worker thread, the CLI calls it directly.  Every write is one ``BEGIN
IMMEDIATE`` ... ``COMMIT`` (a deferred transaction that upgrades to a write
fails at once with SQLITE_BUSY in WAL mode).  A batch commits whole or not at
all: events, the dead letters of refused frames, and audit rows together.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import msgspec

from ..protocol import Event
from ._apply import Applier, Rejected
from ._migrations import SCHEMA_VERSION, migrate, schema_version
from ._timefmt import iso_from_ms, now_ms

__all__ = [
    "SCHEMA_VERSION",
    "ApplyError",
    "AuditEntry",
    "DeadLetter",
    "Origin",
    "Store",
    "StoreBusy",
    "connect",
    "is_transient",
]

_json = msgspec.json.Encoder()


class ApplyError(Exception):
    """A batch that cannot be applied as a whole (it was rolled back entirely)."""


class StoreBusy(Exception):
    """The database cannot be written right now (locked, disk full, I/O): retry later."""


class Origin(msgspec.Struct, frozen=True):
    """Where a frame came from: ``socket`` with the peer's credentials, or a spool file.

    ``source``: "socket", "spool:<file name>" or "parked"; ``uid``/``gid``/``pid``:
    the peer's SO_PEERCRED, None when unknown.
    """

    source: str = "socket"
    uid: int | None = None
    gid: int | None = None
    pid: int | None = None


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


#: SQLite's primary result codes that retrying later can fix: a lock held by
#: another connection (BUSY, LOCKED), a full disk (FULL), failed I/O (IOERR).
_TRANSIENT_CODES = frozenset(
    {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR}
)


def is_transient(exc: BaseException) -> bool:
    """True for a sqlite3 error that retrying later can fix: BUSY, LOCKED, FULL or IOERR.

    Decided on ``sqlite_errorcode``'s primary code (its low byte: extended
    codes such as SQLITE_IOERR_WRITE or SQLITE_BUSY_SNAPSHOT count as their
    primary), never on the message or the exception class, which both lump
    unrelated faults together.  Everything else is permanent: no such table,
    READONLY, CORRUPT, NOTADB, a constraint, a schema error, and any exception
    that is not SQLite's.
    """
    if not isinstance(exc, sqlite3.Error):
        return False
    code = getattr(exc, "sqlite_errorcode", None)  # None: raised by Python, not SQLite
    return code is not None and code & 0xFF in _TRANSIENT_CODES


class Store:
    """The daemon's single write connection to ``dashboard.sqlite``."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path
        self._applier = Applier(conn)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
        busy_timeout_ms: int = 5000,
    ) -> Store:
        """Open (creating if needed) and migrate the database."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = connect(path, synchronous=synchronous, busy_timeout_ms=busy_timeout_ms)
        try:
            migrate(conn)
        except BaseException:
            conn.close()
            raise
        return cls(conn, path)

    # -- reading ----------------------------------------------------------------

    @property
    def schema_version(self) -> int:
        """The schema version recorded in the database (see ``_migrations``)."""
        return schema_version(self._conn)

    @property
    def parked(self) -> int:
        """Events waiting for their run or step."""
        return self._applier.parked_count

    @property
    def conn(self) -> sqlite3.Connection:
        """The write connection, for chores the writer runs in its thread (retention, vacuum).

        Whoever deletes rows through it calls ``forget_cached`` afterwards.
        """
        return self._conn

    def forget_cached(self) -> None:
        """Drop the cached uid -> id maps and parked counts (after rows were deleted)."""
        self._applier.forget()

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Read rows on the writer's connection (tests, status)."""
        return self._conn.execute(sql, params).fetchall()

    # -- writing ------------------------------------------------------------------

    def apply(
        self,
        events: Sequence[Event],
        *,
        frames: Sequence[bytes] | None = None,
        origins: Sequence[Origin] | None = None,
        dead_letters: Sequence[DeadLetter] = (),
        audit: Sequence[AuditEntry] = (),
    ) -> list[str | None]:
        """Apply a batch in one transaction; return a refusal reason per event.

        ``None`` means the event is in the database (applied, a duplicate, or
        parked until its run or step appears); a string means it contradicts
        the database and was dead-lettered (``frames``/``origins`` give the raw
        frame and its source for that).  Raises StoreBusy for a lock, a full
        disk or an I/O error (nothing was written: retry later) and ApplyError
        for anything else (nothing was written: apply the events one by one to
        find the bad one).
        """
        conn, applier = self._conn, self._applier
        results: list[str | None] = []
        refused: list[DeadLetter] = list(dead_letters)
        try:
            conn.execute("BEGIN IMMEDIATE")
            for index, event in enumerate(events):
                try:
                    applier.apply(event)
                except Rejected as exc:
                    reason = str(exc)
                    results.append(reason)
                    refused.append(
                        DeadLetter(
                            frames[index] if frames is not None else _reencode(event),
                            reason,
                            event.id,
                            origins[index] if origins is not None else Origin(),
                        )
                    )
                else:
                    results.append(None)
            # Parked events that their run's or step's arrival showed to be wrong.
            refused.extend(
                DeadLetter(_reencode(event), reason, event.id, Origin(source="parked"))
                for event, reason in applier.refused
            )
            applier.refused.clear()
            applier.finish()
            self._write_dead_letters(refused)
            self._write_audit(audit)
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            applier.forget()
            if is_transient(exc):
                raise StoreBusy(str(exc)) from exc
            if isinstance(exc, Exception):
                raise ApplyError(f"{type(exc).__name__}: {exc}") from exc
            raise
        return results

    def _write_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        if not letters:
            return
        now = now_ms()
        self._conn.executemany(
            "INSERT INTO dead_letters (received_at, source, peer_uid, peer_gid, peer_pid,"
            " event_id, reason, frame) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    iso_from_ms(d.received_ms or now),
                    d.origin.source,
                    d.origin.uid,
                    d.origin.gid,
                    d.origin.pid,
                    d.event_id,
                    d.reason,
                    d.frame,
                )
                for d in letters
            ],
        )

    def _write_audit(self, entries: Sequence[AuditEntry]) -> None:
        if not entries:
            return
        now = now_ms()
        self._conn.executemany(
            "INSERT INTO audit_log (ts, level, run_id, scope, event, message, data_json)"
            " VALUES (?, ?, NULL, ?, ?, ?, ?)",
            [
                (
                    iso_from_ms(a.ts_ms or now),
                    a.level,
                    a.scope,
                    a.event,
                    a.message,
                    None if a.data is None else _json.encode(a.data).decode(),
                )
                for a in entries
            ],
        )

    def audit(self, event: str, message: str, **kwargs: Any) -> None:
        """Write one audit row in a transaction of its own."""
        self.apply((), audit=[AuditEntry(event, message, **kwargs)])

    def checkpoint(self) -> None:
        """Fold the WAL back into the database (on clean shutdown)."""
        self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self) -> None:
        """Close the connection; the Store is unusable afterwards."""
        self._conn.close()


def connect(
    path: Path,
    *,
    synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
    busy_timeout_ms: int = 5000,
) -> sqlite3.Connection:
    """A write connection with runtally's pragmas, in autocommit mode.

    ``check_same_thread=False``: the writer task runs it from trio worker
    threads, one call at a time.
    """
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if mode.lower() != "wal":
        conn.close()
        raise sqlite3.OperationalError(f"cannot switch {path} to WAL (journal_mode={mode})")
    conn.execute("PRAGMA foreign_keys = ON")
    if synchronous not in ("NORMAL", "FULL"):
        raise ValueError("synchronous must be NORMAL or FULL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    return conn


def _reencode(event: Event) -> bytes:
    return msgspec.msgpack.encode(event)
