"""``runtally db migrate|doctor|vacuum``.

``doctor`` only reads.  ``migrate`` and ``vacuum`` write, so they first ask
whether a daemon writes the database (``_writer_of``): the one on the socket,
if its status names this file, or any other holding the file's lock.  While
one runs it is the only writer (it migrates itself on start; ``vacuum`` asks
the one on the socket to vacuum, see ``_vacuum_through_daemon``).
Every failure is one line on stderr (click.ClickException), never a traceback.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import click
import msgspec

from ..config import Settings
from ..daemon._dbfiles import lock_holder, lock_path, same_file, sqlite_uri
from ..daemon._doctor import DoctorReport, doctor
from ..daemon._migrations import SCHEMA_VERSION, MigrationError, applied, migration_status
from ..daemon._probe import Silence, probe
from ..daemon._readonly import CannotOpen, read_only
from ..daemon._recognise import recognise
from ..daemon._store import Store, StoreBusy
from ..protocol import ErrorReply, Status, StatusReply, Vacuum, Vacuumed
from ._ask import ask
from ._common import Seconds, uses_settings
from ._errors import CliError, DaemonIsWriter, DatabaseError

__all__ = ["db"]

EXIT_UNHEALTHY = 1
EXIT_NOT_INITIALIZED = 2


@click.group()
def db() -> None:
    """Database maintenance: migrate, doctor, vacuum."""


@contextlib.contextmanager
def _database_errors(path: Path) -> Iterator[None]:
    """What the database layer raises, as one DatabaseError sentence naming ``path``."""
    try:
        yield
    except (MigrationError, CannotOpen) as exc:
        raise DatabaseError(f"{path}: {exc}") from exc
    except StoreBusy as exc:
        raise DatabaseError(f"{path}: busy, try again later ({exc})") from exc
    except sqlite3.DatabaseError as exc:
        text = str(exc)
        if "not a database" in text:
            text = f"not a SQLite database ({text})"
        raise DatabaseError(f"{path}: {text}") from exc
    except OSError as exc:
        where = exc.filename or path
        raise DatabaseError(f"{where}: {exc.strerror or exc}") from exc


@dataclass(frozen=True)
class _Writer:
    """Who writes ``db`` besides this command: ``why`` says (None: nobody);
    ``on_socket`` whether it is the daemon on our socket, and ``askable``
    whether that one answered (so an admin message can go to it)."""

    why: str | None
    on_socket: bool = False
    askable: bool = False


def _writer_of(settings: Settings, timeout: float = 2.0) -> _Writer:
    """The daemon that writes ``settings.db``, if one does.

    The daemon on the socket counts only when its status names this very file
    (found from outside: ``db vacuum --db OTHER`` vacuumed the daemon's own
    database and reported its sizes as OTHER's).  A socket that cannot be
    probed (permission denied, accepting nothing) may hide one: not ours to
    write.  Any other daemon writing the file holds its ``<db>.lock``.
    """
    path = settings.socket
    nobody = probe(path, timeout=1.0)
    if nobody is None:
        writes = _daemon_db(path, timeout)
        if writes is None or same_file(writes, settings.db):  # its file, or it cannot tell
            why = f"the daemon is running (socket {path} answers)"
            return _Writer(why, on_socket=True, askable=True)
    elif nobody.silence is Silence.DENIED:
        why = f"cannot tell whether the daemon is running (socket {path}: permission denied)"
        return _Writer(why, on_socket=True)
    elif nobody.silence is Silence.BUSY:
        why = f"the daemon's socket {path} accepts no connection (busy daemon?)"
        return _Writer(why, on_socket=True)
    holder = lock_holder(settings.db)
    if holder is not None:
        return _Writer(
            f"a runtallyd (pid {holder}) is writing {settings.db} (it holds"
            f" {lock_path(settings.db)}), not the daemon on {settings.socket}"
        )
    return _Writer(None)


def _daemon_db(socket_path: Path, timeout: float) -> str | None:
    """The database the daemon on ``socket_path`` writes (its status), None if unknown."""
    try:
        reply = ask(socket_path, Status(), timeout=timeout)
    except CliError:
        return None
    return reply.db_path if isinstance(reply, StatusReply) else None


@db.command()
@uses_settings("socket", "db")
def migrate(settings: Settings) -> None:
    """Create the database or bring it to this runtally's schema."""
    path = settings.db
    before: list[str] = []
    if path.exists():
        recognise(path)  # another program's database: refused untouched, in one line
        with _database_errors(path):
            before, _ = read_only(path, applied)
        if migration_status(before).pending and (writer := _writer_of(settings)).why:
            raise DaemonIsWriter(
                f"{writer.why}: it is the only writer; restart it to migrate (it migrates on start)"
            )
    with _database_errors(path):
        store = Store.open(
            path, synchronous=settings.synchronous, busy_timeout_ms=settings.busy_timeout_ms
        )
        try:
            after = [r[0] for r in store.query("SELECT id FROM schema_migrations ORDER BY id")]
            version = store.schema_version
        finally:
            store.close()
    done = [m for m in after if m not in before]
    if done:
        for migration in done:
            click.echo(f"applied {migration}")
        click.echo(f"{path}: now at schema version {version}")
    else:
        click.echo(f"{path}: already at schema version {version}")


def _human(report: DoctorReport) -> str:
    lines = [f"database      {report.path}"]
    if report.file_size is not None:
        wal = f", WAL {report.wal_size:,} bytes" if report.wal_size is not None else ""
        lines.append(f"size          {report.file_size:,} bytes{wal}")
    if report.initialized:
        version = report.schema_version if report.schema_version is not None else "none"
        lines.append(f"schema        version {version} (this runtally: {SCHEMA_VERSION})")
        lines.append(
            f"migrations    {len(report.applied_migrations)} applied"
            f", {len(report.pending_migrations)} pending"
            + (f", {len(report.unknown_migrations)} unknown" if report.unknown_migrations else "")
        )
        lines.append(f"journal mode  {report.journal_mode}")
        lines.append(f"integrity     {'ok' if report.integrity_ok else 'FAILED'}")
        fk = len(report.foreign_key_violations)
        lines.append(f"foreign keys  {'ok' if not fk else f'{fk} violation(s)'}")
        counts = ", ".join(
            f"{table} {'-' if n is None else f'{n:,}'}" for table, n in report.row_counts.items()
        )
        lines.append(f"rows          {counts}")
    lines.append(f"status        {report.status}")
    lines.extend(f"problem: {p}" for p in report.problems)
    lines.extend(f"warning: {w}" for w in report.warnings)
    return "\n".join(lines)


@db.command(name="doctor")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@click.option(
    "--quick",
    is_flag=True,
    help="Use PRAGMA quick_check instead of the full integrity_check (faster on big files).",
)
@uses_settings("db")
def doctor_command(settings: Settings, as_json: bool, quick: bool) -> None:
    """Check the database without writing to it.

    Exit status: 0 healthy, 1 unhealthy or unreadable, 2 not initialized.
    """
    report = doctor(settings.db, quick=quick)
    if as_json:
        click.echo(msgspec.json.encode(report).decode())
    elif report.error is not None:
        raise DatabaseError(report.error)
    else:
        click.echo(_human(report))
    if report.error is not None:
        raise SystemExit(EXIT_UNHEALTHY)
    if not report.initialized:
        raise SystemExit(EXIT_NOT_INITIALIZED)
    if not report.healthy:
        raise SystemExit(EXIT_UNHEALTHY)


@db.command()
@click.option(
    "--timeout",
    type=Seconds(min=0.1),
    default=3600.0,
    show_default=True,
    help="Seconds to wait for a running daemon's answer.",
)
@uses_settings("socket", "db")
def vacuum(settings: Settings, timeout: float) -> None:
    """Rebuild the database file compactly (VACUUM) and empty the WAL.

    While the daemon runs, it does it (an admin message): events sent
    meanwhile wait in its queue.  Otherwise this command does it itself.
    """
    path = settings.db
    writer = _writer_of(settings, min(timeout, 2.0))
    if writer.on_socket:
        _vacuum_through_daemon(settings, writer, timeout)
        return
    if writer.why is not None:
        raise DaemonIsWriter(f"{writer.why}: vacuum with that daemon's --socket, or stop it")
    if not path.exists():
        raise DatabaseError(f"{path}: database does not exist (not initialized); nothing to vacuum")
    with _database_errors(path):
        size_before = path.stat().st_size
        # mode=rw: never create a database that is not there.
        conn = sqlite3.connect(sqlite_uri(path, "mode=rw"), uri=True, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(settings.busy_timeout_ms)}")
            conn.execute("VACUUM")
            busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            conn.close()
        size_after = path.stat().st_size
    note = "" if not busy else " (WAL not fully checkpointed: a reader held it)"
    click.echo(f"{path}: vacuumed, {size_before:,} -> {size_after:,} bytes{note}")


def _vacuum_through_daemon(settings: Settings, writer: _Writer, timeout: float) -> None:
    """Ask the running daemon to vacuum; one line with the sizes, or a ClickException."""
    if not writer.askable:
        # Permission denied or a socket that accepts nothing: cannot ask, must not write.
        raise DaemonIsWriter(f"{writer.why}: stop it before `runtally db vacuum`")
    reply = ask(settings.socket, Vacuum(), timeout=timeout)
    if isinstance(reply, ErrorReply):
        raise DaemonIsWriter(f"the daemon refused to vacuum: {reply.error}")
    if not isinstance(reply, Vacuumed):
        raise DaemonIsWriter(f"unexpected {type(reply).__name__} reply to vacuum")
    note = "" if reply.wal_truncated else " (WAL not fully checkpointed: a reader held it)"
    click.echo(
        f"{settings.db}: {reply.method} by the daemon, {reply.bytes_before:,} ->"
        f" {reply.bytes_after:,} bytes in {reply.seconds:g} s{note}"
    )
