"""What a database file is, decided before anything writes to it.

Three kinds are ours to touch: an empty file (or none), the seed schema
(seeds/1-dashboard-db-schema.plan.md, which migration 0001 recreates exactly)
and a runtally database (``schema_migrations`` and ``meta``).  Anything else
belongs to another program: switching it to WAL or adding our tables would
modify it, and applying events to a foreign ``runs`` table would crash later.
It is refused untouched, with one line saying what was found.

The look is taken on a ``mode=ro`` connection, which writes nothing to a
database in rollback-journal mode (a foreign file's usual mode).
"""

from __future__ import annotations

import sqlite3
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Literal

from ..errors import RuntallyError
from ._dbfiles import sqlite_uri

__all__ = ["ForeignDatabase", "Kind", "recognise"]

Kind = Literal["empty", "seed", "runtally"]

_OURS = frozenset({"schema_migrations", "meta"})


class ForeignDatabase(RuntallyError):
    """A database that is neither empty, the seed schema, nor runtally's: left untouched."""


@cache
def _seed_columns() -> dict[str, tuple[str, ...]]:
    """Table -> column names of the seed schema, read from migration 0001 itself."""
    sql = (resources.files(__package__) / "migrations" / "0001_seed_schema.sql").read_text("utf-8")
    return _columns_made_by(sql)


@cache
def _bootstrap_columns() -> dict[str, tuple[str, ...]]:
    """Table -> column names of ``schema_migrations`` and ``meta`` as ``migrate`` makes them."""
    from ._migrations import BOOTSTRAP

    return _columns_made_by(BOOTSTRAP)


def _columns_made_by(script: str) -> dict[str, tuple[str, ...]]:
    """Table -> column names of what ``script`` creates in an empty database."""
    conn = sqlite3.connect(":memory:")
    try:
        conn.executescript(script)
        return _columns(conn)
    finally:
        conn.close()


def _columns(conn: sqlite3.Connection) -> dict[str, tuple[str, ...]]:
    tables = [
        row[0]
        for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
    ]
    return {
        t: tuple(row[1] for row in conn.execute("SELECT * FROM pragma_table_info(?)", (t,)))
        for t in tables
    }


def recognise(path: Path) -> Kind:
    """``empty``, ``seed`` or ``runtally``; raises ForeignDatabase for anything else.

    A missing or zero-byte file is ``empty``.  A file SQLite cannot read as a
    database raises ForeignDatabase too (its message says so).
    """
    try:
        if path.stat().st_size == 0:
            return "empty"
    except FileNotFoundError:
        return "empty"
    try:
        conn = sqlite3.connect(sqlite_uri(path.resolve(), "mode=ro"), uri=True)
        try:
            found = _columns(conn)
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise ForeignDatabase(f"{path}: not a SQLite database ({exc})") from exc
    return _kind(path, found)


def _kind(path: Path, found: dict[str, tuple[str, ...]]) -> Kind:
    if not found:
        return "empty"
    if found.keys() >= _OURS:
        return "runtally"
    bootstrap = _bootstrap_columns()
    if any(found.get(t) == bootstrap[t] for t in _OURS):
        # Part of our own bootstrap (one of its tables, exactly as we make it):
        # a daemon killed while it created them on a fresh file.  Ours to finish.
        found = {t: c for t, c in found.items() if t not in _OURS}
        if not found:
            return "runtally"
    seed = _seed_columns()
    others = sorted(found.keys() - seed.keys())
    if others:
        shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
        raise ForeignDatabase(
            f"{path} is not runtally's: it has table(s) {shown}, neither empty, the seed"
            " schema nor a runtally database; refusing to touch it"
        )
    for table, columns in sorted(found.items()):
        if columns != seed[table]:
            raise ForeignDatabase(
                f"{path} is not runtally's: table {table} has columns {','.join(columns)},"
                f" not the seed schema's {','.join(seed[table])}; refusing to touch it"
            )
    return "seed"
