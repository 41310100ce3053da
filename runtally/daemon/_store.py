"""The database: opened once by the one writer, written in whole batches.

Plain synchronous sqlite3, no trio: the daemon's writer task calls it from a
worker thread, the CLI calls it directly.  Every write is one ``BEGIN
IMMEDIATE`` ... ``COMMIT`` (a deferred transaction that upgrades to a write
fails at once with SQLITE_BUSY in WAL mode).  A batch commits whole or not at
all: events, the dead letters of refused frames, and audit rows together.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import msgspec

from ..protocol import ErrorEvent, Event, RunStart
from . import _dbfiles as files
from ._apply import Applier, Rejected, decode_parked
from ._connect import connect, open_migrated
from ._handlers import HANDLERS
from ._migrations import SCHEMA_VERSION, schema_version
from ._parking import Parking
from ._records import AuditEntry, DeadLetter, Origin, Write, write_audit, write_dead_letters
from ._storeerrors import ApplyError, StoreBusy, is_transient
from ._timefmt import iso_from_ms, ms_from_iso, now_ms

__all__ = [
    "SCHEMA_VERSION",
    "ApplyError",
    "AuditEntry",
    "DeadLetter",
    "Origin",
    "Store",
    "StoreBusy",
    "Write",
    "connect",
    "is_transient",
]


class Store:
    """The daemon's single write connection to ``dashboard.sqlite``.

    ``parked_max_bytes``/``parked_max_bytes_per_peer`` bound the parked events
    (``_parking``); ``clock`` gives ms since the epoch for their ``parked_at``
    and their expiry (tests inject their own).
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        path: Path,
        *,
        synchronous: Literal["NORMAL", "FULL"] = "FULL",
        busy_timeout_ms: int = 5000,
        parked_max_bytes: int = 256 << 20,
        parked_max_bytes_per_peer: int = 64 << 20,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self._conn = conn
        self.path = path
        self.synchronous = synchronous
        self.busy_timeout_ms = busy_timeout_ms
        self.clock = clock
        self._limits = (parked_max_bytes, parked_max_bytes_per_peer)
        #: PRAGMA wal_autocheckpoint (pages; 0: off), kept across ``reopen``.
        self.autocheckpoint_pages = 1000
        self._applier = self._new_applier()
        #: The connection's busy timeout now (ms): ``busy_timeout_ms``, or 0 (``busy_wait``).
        self._busy_now_ms = busy_timeout_ms
        #: (st_dev, st_ino) of the database file and its WAL when opened.
        self._identity = files.identity(path)
        #: ``path`` as text, for the check before every commit (no pathlib there).
        self._path_str = os.fspath(path)

    def _new_applier(self) -> Applier:
        total, per_peer = self._limits
        parking = Parking(self._conn, max_bytes=total, max_bytes_per_peer=per_peer)
        return Applier(self._conn, parking=parking, clock=self.clock)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        synchronous: Literal["NORMAL", "FULL"] = "FULL",
        busy_timeout_ms: int = 5000,
        parked_max_bytes: int = 256 << 20,
        parked_max_bytes_per_peer: int = 64 << 20,
        clock: Callable[[], int] = now_ms,
    ) -> Store:
        """Open (creating if needed) and migrate the database.

        Raises ForeignDatabase, before writing anything, for a database that
        is neither empty, the seed schema nor runtally's (``_recognise``).
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = open_migrated(path, synchronous, busy_timeout_ms)
        return cls(
            conn,
            path,
            synchronous=synchronous,
            busy_timeout_ms=busy_timeout_ms,
            parked_max_bytes=parked_max_bytes,
            parked_max_bytes_per_peer=parked_max_bytes_per_peer,
            clock=clock,
        )

    def reopen(self) -> None:
        """Close the connection and open the file at ``path`` afresh.

        What a permanent error calls for, and the only way to follow a file
        replaced underneath (a restore from backup) or a deleted ``-wal``: the
        old connection writes into an orphaned inode.  Its WAL is folded into
        its own database file first (best effort), so nothing committed there
        is dropped by the close, and the path's ``-wal``/``-shm`` are not left
        to be read as the new file's.  Raises what ``open`` raises; the old
        connection is closed either way.
        """
        with contextlib.suppress(sqlite3.Error):
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        with contextlib.suppress(sqlite3.Error):
            self._conn.close()
        self._conn = open_migrated(self.path, self.synchronous, self.busy_timeout_ms)
        self._conn.execute(f"PRAGMA wal_autocheckpoint = {int(self.autocheckpoint_pages)}")
        self._applier = self._new_applier()
        self._busy_now_ms = self.busy_timeout_ms  # a new connection, as opened
        self._identity = files.identity(self.path)

    def busy_wait(self, on: bool) -> None:
        """Wait up to ``busy_timeout_ms`` for another connection's lock (on), or not at all.

        Off: a lock held by another connection is SQLITE_BUSY at once
        (StoreBusy).  For the writer's commits in the event loop's own thread,
        which must never sleep in SQLite's busy handler; it turns the wait
        back on before anything it runs in a worker thread.  A PRAGMA only
        when the setting changes, not twice per commit.
        """
        ms = self.busy_timeout_ms if on else 0
        if ms != self._busy_now_ms:
            self._conn.execute(f"PRAGMA busy_timeout = {int(ms)}")
            self._busy_now_ms = ms

    @contextlib.contextmanager
    def no_busy_wait(self) -> Iterator[None]:
        """Within: ``busy_wait(False)``; the wait is back on afterwards."""
        self.busy_wait(False)
        try:
            yield
        finally:
            self.busy_wait(True)

    def set_autocheckpoint(self, pages: int) -> None:
        """SQLite's automatic checkpoint after a COMMIT that leaves the WAL over ``pages``.

        0 turns it off: the daemon's writer does (it would run inside the
        COMMIT a client waits on, the tail of its latency) and checkpoints
        between batches itself (``checkpoint_passive``, ``checkpoint_idle``).
        """
        self._conn.execute(f"PRAGMA wal_autocheckpoint = {int(pages)}")
        self.autocheckpoint_pages = pages

    def changed_underneath(self) -> str | None:
        """Why the open connection no longer writes the file at ``path``, or None.

        The database file replaced or deleted (its inode differs from the one
        opened), or its ``-wal`` deleted or replaced while we are in WAL mode.
        Two stat calls: cheap enough before every commit.
        """
        return files.changed(self._path_str, self._identity)

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
    def parked_bytes(self) -> int:
        """Bytes of the parked events' payloads."""
        return self._applier.parking.bytes_total

    def parked_oldest_ms(self) -> int | None:
        """When the oldest parked event was parked (ms since the epoch), None if none."""
        if not self._applier.parking.waiting:
            return None  # no query after every commit of a daemon that parks nothing
        oldest = self._applier.parking.oldest()
        return ms_from_iso(oldest) if oldest else None

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
        durable: bool = False,
        writes: Sequence[Write] = (),
    ) -> list[str | None]:
        """Apply a batch in one transaction; return a refusal reason per event.

        ``durable``: synced to disk when this returns even at
        ``synchronous=NORMAL`` (this one commit runs at FULL, whose fsync of
        the WAL also covers every commit before it): what must precede the
        deletion of a replayed spool file.

        ``None`` means the event is in the database (applied, a duplicate, or
        parked until its run or step appears); a string means it contradicts
        the database and was dead-lettered (``frames``/``origins`` give the raw
        frame and its source for that).  Raises StoreBusy for a lock, a full
        disk or an I/O error (nothing was written: retry later) and ApplyError
        for anything else (nothing was written: apply the events one by one to
        find the bad one).  ``writes`` run last, in the same transaction.  A
        ``run_start`` from a socket peer records the peer's pid and start time
        on its run (the monitor's crash detection).
        """
        conn, applier = self._conn, self._applier
        results: list[str | None] = []
        refused: list[DeadLetter] = list(dead_letters)
        sync_now = durable and self.synchronous != "FULL"
        try:
            if sync_now:
                conn.execute("PRAGMA synchronous = FULL")
            conn.execute("BEGIN IMMEDIATE")
            applier.plan(events)
            handlers = HANDLERS
            for index, event in enumerate(events):
                origin = origins[index] if origins is not None else None
                applier.peer_uid = origin.uid if origin is not None else None
                # A run_start from a socket records its peer on the run's row.
                applier.peer = (
                    (origin.pid, origin.start)
                    if type(event) is RunStart
                    and origin is not None
                    and origin.pid is not None
                    and origin.source == "socket"
                    else None
                )
                try:
                    handler = handlers.get(type(event))
                    if handler is not None:
                        handler(applier, event)  # what applier.apply does, a call less
                    else:
                        applier.apply(event)  # Rejected
                except Rejected as exc:
                    reason = str(exc)
                    results.append(reason)
                    refused.append(
                        DeadLetter(
                            frames[index] if frames is not None else _reencode(event),
                            reason,
                            event.id,
                            origin if origin is not None else Origin(),
                        )
                    )
                else:
                    results.append(None)
            applier.peer = None  # parked events released below come from no socket
            # Parked events that their run's or step's arrival showed to be wrong.
            refused.extend(
                DeadLetter(_reencode(event), reason, event.id, Origin(source="parked"))
                for event, reason in applier.refused
            )
            applier.refused.clear()
            applier.finish()
            self._write_dead_letters(refused)
            self._write_audit(audit)
            for write in writes:
                write(conn)
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
        finally:
            if sync_now:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        return results

    def _write_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        write_dead_letters(self._conn, letters)

    def _write_audit(self, entries: Sequence[AuditEntry]) -> None:
        write_audit(self._conn, entries)

    def audit(self, event: str, message: str, **kwargs: Any) -> None:
        """Write one audit row in a transaction of its own."""
        self.apply((), audit=[AuditEntry(event, message, **kwargs)])

    def checkpoint(self) -> None:
        """Fold the WAL back into the database (on clean shutdown)."""
        self.busy_wait(True)
        self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def checkpoint_passive(self) -> None:
        """Copy what the WAL holds back into the database without waiting for anyone.

        PASSIVE never takes the busy handler: a reader pinning part of the WAL
        leaves that part for the next one.  Errors are left to the next commit.
        """
        with contextlib.suppress(sqlite3.Error):
            self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()

    def checkpoint_idle(self) -> bool:
        """Checkpoint between batches; True when the WAL was truncated to 0 bytes.

        PASSIVE first (never waits for anyone); only when it copied every frame
        back, TRUNCATE, with the busy timeout at 0 for that one call: a reader
        still holding an old snapshot makes it return at once instead of
        holding the writer for ``busy_timeout_ms``.  Never called inside the
        commit a client waits on.  Errors are left to the next commit to meet.
        """
        conn = self._conn
        try:
            busy, log, done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if busy or log != done:
                return False  # a reader pins part of the WAL: try again next time
            with self.no_busy_wait():
                busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.Error:
            return False
        return not busy

    def wal_bytes(self) -> int:
        """The ``-wal`` file's size in bytes (0 when there is none)."""
        return files.wal_bytes(self.path)

    def expire_parked(self, max_age_s: float, orphan_age_s: float = 300.0) -> int:
        """Move events parked longer than ``max_age_s`` into ``dead_letters``; how many.

        Reason "its run never started" (or step); one audit row per expiry.
        First, an event parked over ``orphan_age_s`` for a step of a run that
        has ended is settled (``_settle_orphans``).  One transaction;
        StoreBusy/ApplyError as ``apply``.
        """
        cutoff = iso_from_ms(self.clock() - int(max_age_s * 1000))
        conn, parking = self._conn, self._applier.parking
        try:
            conn.execute("BEGIN IMMEDIATE")
            self._settle_orphans(iso_from_ms(self.clock() - int(orphan_age_s * 1000)))
            expired = parking.expire(cutoff)
            if expired:
                self._write_dead_letters(
                    [
                        DeadLetter(
                            e.payload, e.reason, e.event_id, Origin("parked", uid=e.peer_uid)
                        )
                        for e in expired
                    ]
                )
                self._write_audit(
                    [
                        AuditEntry(
                            "parked_expired",
                            f"{len(expired)} parked event(s) older than {max_age_s:g} s moved"
                            " to dead_letters: their run or step never started",
                            level="warning",
                            data={"events": len(expired), "cutoff": cutoff},
                        )
                    ]
                )
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._applier.forget()
            if is_transient(exc):
                raise StoreBusy(str(exc)) from exc
            if isinstance(exc, Exception):
                raise ApplyError(f"{type(exc).__name__}: {exc}") from exc
            raise
        return len(expired)

    def _settle_orphans(self, cutoff: str) -> None:
        """Events parked before ``cutoff`` for a step that never started, of a run that
        has ended: that step will not come (a stale or foreign step id).

        An error is recorded against its run, without the step; a step_end goes
        to ``dead_letters`` saying so.  Found from outside: they waited 7 days,
        out of sight, while the run showed success with 0 errors.  Waiting
        ``cutoff`` first leaves a late step_start (a spool replayed out of
        order) its chance.
        """
        parking, applier = self._applier.parking, self._applier
        letters = []
        for event_id, waiting_for, payload, peer, size in parking.waiting_for_steps(cutoff):
            event = decode_parked(payload)
            ended = self._conn.execute(
                "SELECT 1 FROM runs WHERE uid = ? AND finished_at IS NOT NULL", (event.run,)
            ).fetchone()
            if ended is None:
                continue
            parking.drop(event_id, waiting_for, peer, size)
            reason = f"its step never started ({waiting_for}) and its run has ended"
            if isinstance(event, ErrorEvent):
                try:
                    applier.apply(msgspec.structs.replace(event, step=None))
                    continue
                except Rejected as exc:
                    reason = str(exc)
            letters.append(DeadLetter(payload, reason, event_id, Origin("parked", uid=peer)))
        if letters:
            self._write_dead_letters(letters)

    def close(self) -> None:
        """Close the connection; the Store is unusable afterwards."""
        self._conn.close()


def _reencode(event: Event) -> bytes:
    return msgspec.msgpack.encode(event)
