"""Reading dashboard.sqlite without writing it: the one way everybody but the daemon opens it.

A ``mode=ro`` URI with ``query_only`` on never writes and never creates the
file.  But on a WAL database that nobody has open, even a read-only connection
creates the ``-wal`` and ``-shm`` side files (and leaves them behind), or fails
where the directory is not writable by the reader.  So when no side file
exists, the database is opened ``immutable``: SQLite then takes no locks and
assumes the file cannot change.

That assumption fails if a daemon starts while we read, and an immutable read
of pages a checkpoint is rewriting can return nonsense.  Every change SQLite
makes to the file happens while a side file exists (WAL: ``-wal``/``-shm``
from the first connection on; rollback: ``-journal``), and moves the file's
mtime.  So an immutable read is kept only if, after it, there is still no
side file and the file's identity, size and times are unchanged; otherwise it
is discarded and done again (read-only, as a daemon now has the file open).
The read is a function of the connection for that reason: it may run twice.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Literal, TypeVar

from .._text import db_text
from ..errors import RuntallyError
from ._dbfiles import sqlite_uri

__all__ = ["SIDE_FILES", "CannotOpen", "Opened", "read_only", "table_names"]

T = TypeVar("T")
Opened = Literal["immutable", "read-only"]

#: Files SQLite keeps beside a database while a connection has it open or writes it.
SIDE_FILES = ("-wal", "-shm", "-journal")
_ATTEMPTS = 3  # immutable, then again if a writer came, the last one never immutable


class CannotOpen(RuntallyError):
    """SQLite could not open the file read-only (the message says why)."""


def _stamp(path: Path) -> tuple[int, ...] | None:
    """What must not change during an immutable read; None when it must not be tried."""
    if any(path.with_name(path.name + s).exists() for s in SIDE_FILES):
        return None  # somebody has it open (or crashed mid-write): read it properly
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _connect(path: Path, *, immutable: bool, busy_timeout_ms: int) -> sqlite3.Connection:
    uri = sqlite_uri(path, "mode=ro&immutable=1" if immutable else "mode=ro")
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        raise CannotOpen(f"cannot open {path} read-only: {exc}") from exc
    conn.text_factory = db_text
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        conn.execute("PRAGMA query_only = ON")
    except sqlite3.Error as exc:
        conn.close()
        raise CannotOpen(f"cannot open {path} read-only: {exc}") from exc
    return conn


def read_only(
    path: Path, read: Callable[[sqlite3.Connection], T], *, busy_timeout_ms: int = 5000
) -> tuple[T, Opened]:
    """``read(conn)`` on a read-only connection to the existing database ``path``.

    Returns what ``read`` returned and how the file was opened.  ``read``
    must only read: it may be called again on a new connection (see the
    module's docstring).  Raises CannotOpen when SQLite cannot open the file,
    and lets ``sqlite3.Error`` from ``read`` through.
    """
    for attempt in range(_ATTEMPTS):
        before = _stamp(path) if attempt < _ATTEMPTS - 1 else None
        immutable = before is not None
        conn = _connect(path, immutable=immutable, busy_timeout_ms=busy_timeout_ms)
        try:
            value = read(conn)
        except sqlite3.DatabaseError:
            if immutable and _stamp(path) != before:
                continue  # a writer came: what we read may have been half-written
            raise
        finally:
            conn.close()
        if not immutable:
            return value, "read-only"
        if _stamp(path) == before:
            return value, "immutable"
    raise AssertionError("unreachable: the last attempt is never immutable")


def table_names(conn: sqlite3.Connection) -> set[str]:
    """The names of the database's tables."""
    return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
