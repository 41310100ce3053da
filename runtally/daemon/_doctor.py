"""``runtally db doctor``: what state is dashboard.sqlite in, and what to do about it.

Strictly read-only.  A missing file is reported as "not initialized" and is
not created.  An existing database is read through ``_readonly.read_only``
(``mode=ro``, or ``immutable`` when nobody has it open, so that not even side
files are created).  Every finding that makes the database unhealthy is a
sentence in ``problems`` saying what to do.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import msgspec

from ._migrations import SCHEMA_VERSION, migration_status
from ._modes import readable_by_others
from ._readonly import CannotOpen, read_only, table_names

__all__ = ["COUNTED_TABLES", "DoctorReport", "ForeignKeyViolation", "doctor", "row_counts"]

#: Tables whose row counts the report gives (None when the table is missing).
COUNTED_TABLES = ("runs", "run_steps", "run_errors", "audit_log", "dead_letters", "parked_events")

_SQLITE_MAGIC = b"SQLite format 3\x00"
_MAX_LISTED = 100  # integrity messages / fk violations kept in the report


class ForeignKeyViolation(msgspec.Struct, frozen=True):
    """One row of ``PRAGMA foreign_key_check``."""

    table: str
    rowid: int | None
    parent: str
    fkid: int


class DoctorReport(msgspec.Struct):
    """Everything ``doctor`` found; ``msgspec.json.encode(report)`` is its JSON form."""

    path: str
    exists: bool
    #: "healthy", "unhealthy", "not initialized" or "unreadable" (see ``error``).
    status: str = "not initialized"
    initialized: bool = False
    healthy: bool = False
    problems: list[str] = msgspec.field(default_factory=list)
    warnings: list[str] = msgspec.field(default_factory=list)
    error: str | None = None
    file_size: int | None = None
    wal_size: int | None = None
    opened: str | None = None  # "read-only" or "immutable"
    schema_version: int | None = None  # from meta; None when meta is missing or empty
    code_schema_version: int = SCHEMA_VERSION
    app_version: str | None = None
    applied_migrations: list[str] = msgspec.field(default_factory=list)
    pending_migrations: list[str] = msgspec.field(default_factory=list)
    unknown_migrations: list[str] = msgspec.field(default_factory=list)
    journal_mode: str | None = None
    integrity: list[str] = msgspec.field(default_factory=list)
    integrity_ok: bool | None = None
    foreign_key_violations: list[ForeignKeyViolation] = msgspec.field(default_factory=list)
    row_counts: dict[str, int | None] = msgspec.field(default_factory=dict)


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def _side(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def row_counts(conn: sqlite3.Connection, tables: set[str] | None = None) -> dict[str, int | None]:
    """Rows in each of COUNTED_TABLES; None for a table the database does not have.

    ``tables``: the database's table names when the caller has them already.
    """
    present = table_names(conn) if tables is None else tables
    return {
        table: conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]
        if table in present
        else None
        for table in COUNTED_TABLES
    }


def _header_says_wal(path: Path) -> bool:
    """Bytes 18/19 of the header are 2 in WAL mode (an immutable connection says "delete")."""
    with path.open("rb") as fh:
        header = fh.read(20)
    return header[18:20] == b"\x02\x02"


def doctor(path: str | os.PathLike[str], *, quick: bool = False) -> DoctorReport:
    """Inspect the database at ``path`` without writing anything.

    ``quick`` uses ``PRAGMA quick_check`` (no index cross-checks) instead of
    ``integrity_check``: faster on large files.
    """
    path = Path(path)
    report = DoctorReport(path=str(path), exists=path.exists())
    _examine(path, report, quick=quick)
    report.healthy = report.initialized and report.error is None and not report.problems
    if report.error is not None:
        report.status = "unreadable"
    elif report.initialized:
        report.status = "healthy" if report.healthy else "unhealthy"
    return report


def _examine(path: Path, report: DoctorReport, *, quick: bool) -> None:
    if not report.exists:
        report.problems.append(
            f"database {path} does not exist (not initialized): run `runtally db migrate` "
            "or start the daemon to create it"
        )
        return
    if path.is_dir():
        report.error = f"{path} is a directory, not a database file"
        report.problems.append(report.error)
        return
    report.file_size = _size(path)
    report.wal_size = _size(_side(path, "-wal"))
    try:
        with path.open("rb") as fh:
            header = fh.read(100)
    except OSError as exc:
        report.error = f"cannot read {path}: {exc.strerror or exc}"
        report.problems.append(report.error)
        return
    if not header:
        report.problems.append(
            f"{path} is an empty file (not initialized): run `runtally db migrate`"
        )
        return
    if not header.startswith(_SQLITE_MAGIC) or len(header) < 100:
        report.error = f"{path} is not a SQLite database (file is not a database)"
        report.problems.append(report.error)
        return

    try:
        found, opened = read_only(path, lambda conn: _inspect(conn, path, quick=quick))
    except CannotOpen as exc:
        report.error = str(exc)
        report.problems.append(report.error)
        return
    except (sqlite3.DatabaseError, OSError) as exc:
        report.error = f"cannot read {path}: {exc}"
        report.problems.append(report.error)
        return
    for field in found.__struct_fields__:
        if field not in ("path", "exists", "file_size", "wal_size"):
            setattr(report, field, getattr(found, field))
    report.opened = opened
    if report.initialized:
        _judge(report)


def _inspect(conn: sqlite3.Connection, path: Path, *, quick: bool) -> DoctorReport:
    """What the database says about itself; may run twice (see ``_readonly``)."""
    found = DoctorReport(path=str(path), exists=True)
    tables = table_names(conn)
    found.initialized = bool(tables)
    if not tables:
        found.problems.append(f"{path} has no tables (not initialized): run `runtally db migrate`")
        return found

    found.journal_mode = str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower()
    if found.journal_mode != "wal" and _header_says_wal(path):
        found.journal_mode = "wal"  # opened immutable: SQLite reports "delete"

    # Schema and migrations.
    if "meta" in tables:
        row = conn.execute("SELECT schema_version, app_version FROM meta").fetchone()
        if row is not None:
            found.schema_version, found.app_version = int(row[0]), row[1]
    if "schema_migrations" in tables:
        status = migration_status(
            r[0] for r in conn.execute("SELECT id FROM schema_migrations ORDER BY id")
        )
    else:
        status = migration_status(())
    found.applied_migrations = status.applied
    found.pending_migrations = [m.id for m in status.pending]
    found.unknown_migrations = status.unknown

    # Structure.
    check = "quick_check" if quick else "integrity_check"
    found.integrity = [str(r[0]) for r in conn.execute(f"PRAGMA {check}({_MAX_LISTED})").fetchall()]
    found.integrity_ok = found.integrity == ["ok"]
    found.foreign_key_violations = [
        ForeignKeyViolation(r[0], r[1], r[2], r[3])
        for r in conn.execute("PRAGMA foreign_key_check").fetchmany(_MAX_LISTED)
    ]
    found.row_counts = row_counts(conn, tables)
    return found


def _judge(report: DoctorReport) -> None:
    """Turn the findings into problems (unhealthy) and warnings (worth a look)."""
    problems, warnings = report.problems, report.warnings
    if report.unknown_migrations:
        problems.append(
            "the database has migrations this runtally does not know "
            f"({', '.join(report.unknown_migrations)}): it was written by a newer "
            "runtally; upgrade runtally, do not migrate it with this version"
        )
    elif report.schema_version is not None and report.schema_version > SCHEMA_VERSION:
        problems.append(
            f"schema version {report.schema_version} is newer than this runtally's "
            f"{SCHEMA_VERSION}: upgrade runtally"
        )
    if report.pending_migrations:
        problems.append(
            f"schema version {report.schema_version or 0}, this runtally needs "
            f"{SCHEMA_VERSION}: {len(report.pending_migrations)} migration(s) pending "
            f"({', '.join(report.pending_migrations)}); run `runtally db migrate` "
            "(or restart the daemon, which migrates on start)"
        )
    elif report.schema_version is None and not report.unknown_migrations:
        problems.append(
            "the meta table has no schema version although every migration is recorded: "
            "the database was edited by hand; run `runtally db migrate` to rewrite meta"
        )
    elif (
        report.schema_version is not None
        and report.schema_version < SCHEMA_VERSION
        and not report.unknown_migrations
    ):
        problems.append(
            f"meta says schema version {report.schema_version} but every migration up to "
            f"{SCHEMA_VERSION} is recorded: run `runtally db migrate` to rewrite meta"
        )
    if report.journal_mode != "wal":
        problems.append(
            f"journal mode is {report.journal_mode!r}, not 'wal': readers would block the "
            "writer; run `runtally db migrate` (it switches the database to WAL)"
        )
    if not report.integrity_ok:
        shown = "; ".join(report.integrity[:3])
        problems.append(
            f"integrity check failed ({shown}): stop the daemon, copy the file, and restore "
            "from a backup or rebuild it with `sqlite3 dashboard.sqlite .recover`"
        )
    if report.foreign_key_violations:
        tables = sorted({v.table for v in report.foreign_key_violations})
        problems.append(
            f"{len(report.foreign_key_violations)} row(s) in {', '.join(tables)} refer to "
            "rows that do not exist (see foreign_key_violations): delete or repair them"
        )
    for table in ("runs", "run_steps", "run_errors"):
        if report.row_counts.get(table) is None:
            problems.append(f"table {table} is missing: run `runtally db migrate` to create it")
    if readable_by_others(Path(report.path)):
        warnings.append(
            f"{report.path} is readable by every local user (it holds error messages and "
            "argv): chmod o-r it, and its -wal and -shm (the daemon does this at start)"
        )
    dead = report.row_counts.get("dead_letters")
    if dead:
        warnings.append(
            f"{dead} refused frame(s) in dead_letters: look at their reasons "
            "(SELECT reason, count(*) FROM dead_letters GROUP BY reason)"
        )
    parked = report.row_counts.get("parked_events")
    if parked:
        warnings.append(
            f"{parked} event(s) parked waiting for their run or step: normal while a "
            "spool is being replayed, suspicious if the number stays"
        )
