"""Ordered, immutable SQL migrations tracked in ``schema_migrations`` and ``meta``.

Migrations are the ``NNNN_name.sql`` files shipped beside this module.  Each
runs in its own ``BEGIN IMMEDIATE`` transaction together with its
``schema_migrations`` row, so a crash leaves a database either before or after
a migration, never inside one.  A database that records a migration this code
does not know was written by a newer runtally: we refuse to touch it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources

from .._version import __version__
from ..errors import RuntallyError
from ._timefmt import now_iso

__all__ = [
    "BOOTSTRAP",
    "MIGRATIONS",
    "Migration",
    "MigrationError",
    "MigrationStatus",
    "applied",
    "migrate",
    "migration_status",
    "pending",
]


class MigrationError(RuntallyError):
    """The database's migrations do not fit this code."""


@dataclass(frozen=True, slots=True)
class Migration:
    """One ``NNNN_name.sql`` file: its id (the file name without ``.sql``), number and SQL."""

    id: str
    number: int
    sql: str


def _load() -> tuple[Migration, ...]:
    folder = resources.files(__package__) / "migrations"
    found = sorted(p.name for p in folder.iterdir() if p.name.endswith(".sql"))
    out = [
        Migration(name.removesuffix(".sql"), int(name[:4]), (folder / name).read_text("utf-8"))
        for name in found
    ]
    numbers = [m.number for m in out]
    if numbers != list(range(1, len(out) + 1)):
        raise MigrationError(f"migration files are not numbered 1..n: {found}")
    return tuple(out)


MIGRATIONS: tuple[Migration, ...] = _load()
SCHEMA_VERSION = MIGRATIONS[-1].number

BOOTSTRAP = """
CREATE TABLE IF NOT EXISTS schema_migrations (
  id TEXT PRIMARY KEY,
  applied_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
  schema_version INTEGER NOT NULL,
  app_version TEXT,
  created_at TEXT
);
"""


def applied(conn: sqlite3.Connection) -> list[str]:
    """Ids of the migrations recorded in the database (empty if none)."""
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
    ).fetchone()
    if not exists:
        return []
    return [row[0] for row in conn.execute("SELECT id FROM schema_migrations ORDER BY id")]


@dataclass(frozen=True, slots=True)
class MigrationStatus:
    """Where a database stands against this code's migrations."""

    applied: list[str]  # ids recorded in the database, in order
    pending: list[Migration]  # this code's migrations not recorded yet, in order
    unknown: list[str]  # recorded ids this code does not know: a newer runtally wrote them


def migration_status(applied_ids: Iterable[str]) -> MigrationStatus:
    """Compare the recorded migration ids with ``MIGRATIONS``: the one place that does."""
    done = list(applied_ids)
    recorded = set(done)
    known = {m.id for m in MIGRATIONS}
    return MigrationStatus(
        applied=done,
        pending=[m for m in MIGRATIONS if m.id not in recorded],
        unknown=sorted(recorded - known),
    )


def pending(conn: sqlite3.Connection) -> list[Migration]:
    """Migrations not yet applied; raises MigrationError for unknown ones."""
    status = migration_status(applied(conn))
    if status.unknown:
        raise MigrationError(
            f"database has migrations this runtally does not know ({', '.join(status.unknown)}): "
            "it was written by a newer version"
        )
    return status.pending


def migrate(conn: sqlite3.Connection) -> list[str]:
    """Apply every pending migration in order; return the ids applied.

    ``conn`` must be in autocommit mode (``isolation_level=None``).
    """
    # One transaction (executescript would commit each statement): killed
    # half-way, a fresh file must not keep one table of the two.
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in _statements(BOOTSTRAP):
            conn.execute(statement)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    done: list[str] = []
    for migration in pending(conn):
        try:
            conn.execute("BEGIN IMMEDIATE")
            # Another process may have applied it since pending() looked.
            if conn.execute(
                "SELECT 1 FROM schema_migrations WHERE id = ?", (migration.id,)
            ).fetchone():
                conn.execute("ROLLBACK")
                continue
            # executescript would COMMIT first; run the statements one by one.
            for statement in _statements(migration.sql):
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations (id, applied_at) VALUES (?, ?)",
                (migration.id, now_iso()),
            )
            _write_meta(conn, migration.number)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        done.append(migration.id)
    if not done:
        _refresh_app_version(conn)
    return done


def _write_meta(conn: sqlite3.Connection, version: int) -> None:
    if conn.execute("SELECT 1 FROM meta").fetchone():
        conn.execute("UPDATE meta SET schema_version = ?, app_version = ?", (version, __version__))
    else:
        conn.execute(
            "INSERT INTO meta (schema_version, app_version, created_at) VALUES (?, ?, ?)",
            (version, __version__, now_iso()),
        )


def _refresh_app_version(conn: sqlite3.Connection) -> None:
    row = conn.execute("SELECT app_version FROM meta").fetchone()
    if row is not None and row[0] != __version__:
        conn.execute("UPDATE meta SET app_version = ?", (__version__,))


def _statements(sql: str) -> list[str]:
    """Split a migration into complete statements (sqlite3.complete_statement)."""
    out: list[str] = []
    current = ""
    for line in sql.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            stripped = current.strip()
            if stripped and not all(
                ln.strip().startswith("--") or not ln.strip() for ln in stripped.splitlines()
            ):
                out.append(stripped)
            current = ""
    if current.strip() and not all(
        ln.strip().startswith("--") or not ln.strip() for ln in current.splitlines()
    ):
        raise MigrationError(f"incomplete statement at end of migration: {current.strip()[:80]}")
    return out


def schema_version(conn: sqlite3.Connection) -> int:
    """The version in ``meta``, or 0 for a database runtally never migrated."""
    try:
        row = conn.execute("SELECT schema_version FROM meta").fetchone()
    except sqlite3.OperationalError:
        return 0
    return int(row[0]) if row else 0
