"""``vacuum`` while the daemon runs: a chore for the one writer.

The writer runs ``vacuum`` in its thread as a ``Job.task``: it checkpoints
the WAL, compacts the file (``VACUUM``, or ``PRAGMA incremental_vacuum`` when
the database was created with ``auto_vacuum = INCREMENTAL``), checkpoints
again so the file on disk is the compact one, and writes an audit row.  The
writer takes nothing else meanwhile: events that arrive wait in its queue (and
past its budget, in the clients' windows and spools), then commit as usual, so
nothing is lost; they are only late by the vacuum's duration.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from ..protocol import Vacuumed
from ._store import AuditEntry, Store, StoreBusy, is_transient

__all__ = ["database_bytes", "vacuum"]

_INCREMENTAL = 2  # PRAGMA auto_vacuum's value for INCREMENTAL


def database_bytes(path: Path) -> int:
    """The database file plus its WAL, in bytes (0 for a file that is not there)."""
    total = 0
    for p in (path, path.with_name(path.name + "-wal")):
        try:
            total += os.stat(p).st_size
        except FileNotFoundError:
            pass
    return total


def vacuum(store: Store) -> Vacuumed:
    """Checkpoint, compact and checkpoint ``store``'s database; what it did, with sizes.

    Runs in the writer's thread.  Raises StoreBusy when the compaction cannot
    take its lock (the writer retries); other sqlite3 errors propagate.
    """
    conn = store.conn
    started = time.perf_counter()
    before = database_bytes(store.path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        if conn.execute("PRAGMA auto_vacuum").fetchone()[0] == _INCREMENTAL:
            method = "incremental_vacuum"
            conn.execute("PRAGMA incremental_vacuum").fetchall()  # runs one page per step
        else:
            method = "vacuum"
            conn.execute("VACUUM")
        busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
    except Exception as exc:
        if is_transient(exc):
            raise StoreBusy(str(exc)) from exc
        raise
    seconds = round(time.perf_counter() - started, 3)
    after = database_bytes(store.path)
    reply = Vacuumed(method, before, after, seconds, wal_truncated=not busy)
    store.apply(
        (),
        audit=[
            AuditEntry(
                "vacuum",
                f"{method}: {before:,} -> {after:,} bytes in {seconds:g} s",
                scope="maintenance",
                data={"method": method, "bytes_before": before, "bytes_after": after},
            )
        ],
    )
    return reply
