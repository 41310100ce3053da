"""runtallyd: the one writer of dashboard.sqlite.

Importing this package does not import trio: the store is plain sqlite3 and the
CLI's ``db`` commands use it directly.  The server lives in ``_server``.
"""

from ._migrations import SCHEMA_VERSION, MigrationError
from ._store import ApplyError, AuditEntry, DeadLetter, Origin, Store, StoreBusy

__all__ = [
    "SCHEMA_VERSION",
    "ApplyError",
    "AuditEntry",
    "DeadLetter",
    "MigrationError",
    "Origin",
    "Store",
    "StoreBusy",
]
