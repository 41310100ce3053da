"""How a failed write is classified: retry later (StoreBusy) or give up on the batch (ApplyError).

``is_transient`` decides it on SQLite's result code; the Store raises the two
exceptions, the writer and the maintenance chores act on them.
"""

from __future__ import annotations

import sqlite3

__all__ = ["ApplyError", "StoreBusy", "is_transient"]


class ApplyError(Exception):
    """A batch that cannot be applied as a whole (it was rolled back entirely)."""


class StoreBusy(Exception):
    """The database cannot be written right now (locked, disk full, I/O): retry later."""


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
