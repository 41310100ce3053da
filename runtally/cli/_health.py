"""What ``runtally status`` reports, gathered as data (the CLI's data layer for it).

It asks the daemon for its status over the socket, reads the database
read-only, looks at the spool directory, and lists each pipeline's last run.
``collect`` returns a ``StatusReport``; ``msgspec.to_builtins`` of it is the
``--json`` shape (README.md, "Everyday commands").  Nothing here raises for
what it finds: a daemon down or a database unreadable is an ``error`` in its
section and a line in ``problems``.
"""

from __future__ import annotations

import os
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from ..daemon._dbfiles import same_file
from ..daemon._doctor import row_counts
from ..daemon._readonly import table_names
from ..daemon._timefmt import iso_from_datetime, iso_from_ms, parse_iso
from ..protocol import ErrorReply, Status, StatusReply
from . import _query as q
from ._ask import ask
from ._errors import CliError
from ._health_spool import SpoolSection, spool_section
from ._render import clock_ahead_s, fmt_duration, plural
from ._state_view import BAD_STATES, state_problem

__all__ = [
    "DEFAULT_MAX_SPOOL_AGE_S",
    "DaemonSection",
    "DatabaseSection",
    "PipelineRow",
    "SpoolSection",
    "StatusReport",
    "collect",
    "spool_section",
]

DEFAULT_MAX_SPOOL_AGE_S = 60.0
#: Events lost to a full spool disk make ``status`` fail for this long (seconds).
LOST_WINDOW_S = 24 * 3600.0


class DaemonSection(msgspec.Struct, kw_only=True):
    """The daemon as its socket answered."""

    up: bool = False
    socket: str
    error: str | None = None  # why it is not up, a sentence
    status: dict[str, Any] | None = None  # its StatusReply's fields when up


class DatabaseSection(msgspec.Struct):
    """dashboard.sqlite as read from here (sizes in bytes, times stored-format UTC)."""

    path: str
    exists: bool
    size_bytes: int | None
    wal_bytes: int | None
    file_modified_at: str | None = None  # newest mtime of the file and its WAL
    schema_version: int | None = None
    row_counts: dict[str, int | None] = msgspec.field(default_factory=dict)
    last_write: str | None = None  # newest timestamp in runs, steps and errors
    lost_events: int = 0  # events clients reported lost (their spool's disk was full)
    lost_runs: int = 0  # runs those belonged to (closed as failure)
    error: str | None = None


class PipelineRow(msgspec.Struct):
    """A (club, pipeline)'s newest run."""

    pipeline: str
    club_slug: str
    run_id: int
    run_uid: str | None
    started_at: str
    finished_at: str | None
    duration_ms: int | None
    outcome: str | None
    error_count: int
    age_s: float | None  # seconds since it started (negative: the client's clock was ahead)
    clock_ahead_s: float | None = None  # started this far in the future (beyond a tolerance)


class StatusReport(msgspec.Struct):
    """The whole report; healthy when ``problems`` is empty."""

    healthy: bool
    problems: list[str]
    warnings: list[str]
    daemon: DaemonSection
    database: DatabaseSection
    spool: SpoolSection
    pipelines: list[PipelineRow]
    default_club: str = "rondo"  # the club of a run started without one (setting default_club)
    #: Each pipeline's state as the daemon's monitor last judged it (pipeline_states).
    states: list[dict[str, Any]] = msgspec.field(default_factory=list)


def collect(
    socket_path: Path,
    db_path: Path,
    spool_dir: Path,
    *,
    max_spool_age: float = DEFAULT_MAX_SPOOL_AGE_S,
    timeout: float = 1.0,
    default_club: str = "rondo",
) -> StatusReport:
    """Ask, read and look (``timeout`` seconds for the daemon); never raises for findings."""
    now = time.time()
    daemon = _daemon(socket_path, timeout)
    database, pipelines = _database(db_path, now)
    spool = spool_section(spool_dir, now, max_spool_age)
    problems: list[str] = []
    warnings: list[str] = []
    if not daemon.up:
        problems.append(f"daemon: {daemon.error}")
    elif daemon.status is not None and not same_file(daemon.status["db_path"], db_path):
        where = daemon.status["db_path"]
        warnings.append(f"the daemon writes {where}, this report reads {db_path}")
    if daemon.status is not None and daemon.status.get("spool_problem"):
        problems.append(f"spool: {daemon.status['spool_problem']}")
    if daemon.status is not None:  # what the daemon finds wrong with itself (writer, parked, WAL)
        problems += daemon.status.get("problems") or []
    if database.error:
        problems.append(f"database: {database.error}")
    if database.lost_events:
        problems.append(
            f"clients: {database.lost_events} event(s) of {database.lost_runs} run(s) were lost"
            " in the last 24 h because a spool disk was full: free space in the spool directory"
        )
    if spool.backing_up and spool.oldest_age_s is not None:
        problems.append(
            f"spool: an event has waited {fmt_duration(int(spool.oldest_age_s * 1000))} "
            f"in {spool_dir} (more than {max_spool_age:g} s): is the daemon replaying?"
        )
    states = _states(db_path) if database.error is None else []
    problems += [state_problem(s, now) for s in states if s["state"] in BAD_STATES]
    for s in states:
        del s["expected_at"]  # read for the problem's slot age; not in --json's shape
    if daemon.status is not None:
        warnings += [
            f"alert channel {c}: {e}"
            for c, e in (daemon.status.get("alert_failures") or {}).items()
        ]
    if spool.error:
        warnings.append(f"spool: {spool.error}")
    if spool.corrupt_files:
        warnings.append(
            f"spool: {plural(spool.corrupt_files, 'quarantined file')} in {spool_dir / 'corrupt'}"
        )
    for p in pipelines:
        if p.clock_ahead_s is not None:
            warnings.append(
                f"pipeline {p.pipeline} ({p.club_slug}): run #{p.run_id} started in the future,"
                f" client clock ahead by {fmt_duration(int(p.clock_ahead_s * 1000))}"
            )
    return StatusReport(
        healthy=not problems,
        problems=problems,
        warnings=warnings,
        daemon=daemon,
        database=database,
        spool=spool,
        pipelines=pipelines,
        default_club=default_club,
        states=states,
    )


def _states(db_path: Path) -> list[dict[str, Any]]:
    def gather(conn: sqlite3.Connection) -> list[dict[str, Any]]:
        try:
            rows = conn.execute(
                "SELECT pipeline, state, since, detail, last_run_id, next_expected_at,"
                " expected_at FROM pipeline_states ORDER BY pipeline"
            ).fetchall()
        except sqlite3.OperationalError:
            return []  # a database from before the monitor
        return [dict(r) for r in rows]

    try:
        return q.read(db_path, gather)
    except CliError:
        return []


# -- daemon ----------------------------------------------------------------------------


def _daemon(socket_path: Path, timeout: float) -> DaemonSection:
    out = DaemonSection(socket=str(socket_path))
    try:
        reply = ask(socket_path, Status(), timeout=timeout)
    except CliError as exc:
        out.error = str(exc)
        return out
    if isinstance(reply, StatusReply):
        out.up = True
        out.status = msgspec.structs.asdict(reply)
    elif isinstance(reply, ErrorReply):
        out.error = f"the daemon refused the status request: {reply.error}"
    else:
        out.error = f"unexpected {type(reply).__name__} reply to status"
    return out


# -- database --------------------------------------------------------------------------


def _stat(path: Path) -> os.stat_result | None:
    try:
        return path.stat()
    except OSError:
        return None


def _database(path: Path, now: float) -> tuple[DatabaseSection, list[PipelineRow]]:
    st, wal = _stat(path), _stat(path.with_name(path.name + "-wal"))
    out = DatabaseSection(
        path=str(path),
        exists=st is not None,
        size_bytes=st.st_size if st is not None else None,
        wal_bytes=wal.st_size if wal is not None else None,
    )
    mtimes = [s.st_mtime for s in (st, wal) if s is not None]
    if mtimes:
        out.file_modified_at = iso_from_datetime(datetime.fromtimestamp(max(mtimes), UTC))

    def gather(conn: sqlite3.Connection) -> tuple[DatabaseSection, list[PipelineRow]]:
        found = DatabaseSection(out.path, out.exists, out.size_bytes, out.wal_bytes)
        found.file_modified_at = out.file_modified_at
        tables = table_names(conn)
        if "meta" in tables:
            row = conn.execute("SELECT max(schema_version) FROM meta").fetchone()
            found.schema_version = row[0] if row is not None else None
        found.row_counts = row_counts(conn, tables)
        found.last_write = conn.execute(
            "SELECT max(ts) FROM ("
            " SELECT max(started_at) AS ts FROM runs"
            " UNION ALL SELECT max(finished_at) FROM runs"
            " UNION ALL SELECT max(started_at) FROM run_steps"
            " UNION ALL SELECT max(finished_at) FROM run_steps"
            " UNION ALL SELECT max(created_at) FROM run_errors)"
        ).fetchone()[0]
        # Error rows the daemon wrote for ``dropped`` markers (daemon/_apply.py), last 24 h.
        lost = conn.execute(
            "SELECT count(DISTINCT run_id), TOTAL(CAST(error_message AS INTEGER)) FROM run_errors"
            " WHERE error_message LIKE '% events were lost: spool disk full' AND created_at >= ?",
            [iso_from_ms(int((now - LOST_WINDOW_S) * 1000))],
        ).fetchone()
        found.lost_runs, found.lost_events = lost[0], int(lost[1])
        return found, _pipelines(conn, now)

    try:
        return q.read(path, gather)
    except CliError as exc:
        out.error = str(exc)
        return out, []


def _pipelines(conn: sqlite3.Connection, now: float) -> list[PipelineRow]:
    """Each (club, pipeline)'s newest run: the last the daemon received (highest id).

    Not the latest ``started_at``: a run recorded while a client's clock was
    ahead would stay "last" after the clock is corrected.
    """
    rows = conn.execute(
        "WITH latest AS (SELECT max(id) AS id FROM runs GROUP BY club_slug, pipeline)"
        " SELECT r.pipeline, r.club_slug, r.id AS run_id, r.uid AS run_uid, r.started_at,"
        " r.finished_at, r.duration_ms, r.outcome,"
        " (SELECT count(*) FROM run_errors e WHERE e.run_id = r.id) AS error_count"
        " FROM runs r JOIN latest l ON l.id = r.id ORDER BY r.pipeline, r.club_slug"
    ).fetchall()
    out = []
    for row in rows:
        started = _moment(row["started_at"])
        age = round(now - started.timestamp(), 3) if started is not None else None
        ahead = clock_ahead_s(row["started_at"], now)
        out.append(PipelineRow(**dict(row), age_s=age, clock_ahead_s=ahead))
    return out


def _moment(text: str | None) -> datetime | None:
    try:
        return parse_iso(text) if text else None
    except ValueError:
        return None
