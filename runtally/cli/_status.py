"""``runtally status``: is everything well?  Also a health check for monitoring.

It asks the daemon for its status over the socket (1 s), reads the database
read-only, looks at the spool directory, and lists each pipeline's last run.
Exit status 0 when healthy, 1 when the daemon does not answer, the spool is
backing up (an event waiting longer than ``--max-spool-age``), or the
database cannot be read.  ``--json`` prints the same report as one object
(shape in README.md, "Everyday commands").
"""

from __future__ import annotations

import json
import os
import struct
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import msgspec
from rich.console import Console
from rich.text import Text

from ..daemon._doctor import COUNTED_TABLES
from ..protocol import SPOOL_MAGIC, ErrorReply, Status, StatusReply
from . import _query as q
from ._ask import DaemonUnavailable, ask
from ._common import config_option, db_option, settings_from, socket_option, spool_option
from ._render import (
    console,
    fmt_ago,
    fmt_bytes,
    fmt_duration,
    fmt_when,
    iso_from_datetime,
    outcome_text,
    parse_iso,
    table,
)

__all__ = ["collect", "status"]

EXIT_UNHEALTHY = 1
DEFAULT_MAX_SPOOL_AGE_S = 60.0
_RECORD_HEADER = struct.Struct(">II")
_first_record = msgspec.msgpack.Decoder()


@click.command()
@click.option(
    "--max-spool-age",
    type=click.FloatRange(min=0),
    default=DEFAULT_MAX_SPOOL_AGE_S,
    show_default=True,
    metavar="SECONDS",
    help="The spool is backing up when an event has waited longer than this.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.05),
    default=1.0,
    show_default=True,
    metavar="SECONDS",
    help="How long to wait for the daemon's answer.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (shape in README).")
@socket_option
@db_option
@spool_option
@config_option
def status(
    *,
    max_spool_age: float,
    timeout: float,
    as_json: bool,
    socket: Path | None,
    db: Path | None,
    spool: Path | None,
    config_file: Path | None,
) -> None:
    """Daemon, database, spool backlog and each pipeline's last run.

    Exit status 1 when the daemon is down, the spool is backing up, or the
    database cannot be read: usable as a health check.
    """
    settings = settings_from(socket=socket, db=db, spool=spool, config_file=config_file)
    report = collect(
        settings.socket, settings.db, settings.spool, max_spool_age=max_spool_age, timeout=timeout
    )
    if as_json:
        click.echo(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        _print(console(), report)
    if report["problems"]:
        sys.exit(EXIT_UNHEALTHY)


def collect(
    socket_path: Path,
    db_path: Path,
    spool_dir: Path,
    *,
    max_spool_age: float = DEFAULT_MAX_SPOOL_AGE_S,
    timeout: float = 1.0,
) -> dict[str, Any]:
    """The whole report as plain data (the ``--json`` shape)."""
    now = time.time()
    daemon = _daemon(socket_path, timeout)
    database, pipelines = _database(db_path, now)
    spool = _spool(spool_dir, now, max_spool_age)
    problems: list[str] = []
    warnings: list[str] = []
    if not daemon["up"]:
        problems.append(f"daemon: {daemon['error']}")
    elif not _same_file(daemon["status"]["db_path"], db_path):
        warnings.append(
            f"the daemon writes {daemon['status']['db_path']}, this report reads {db_path}"
        )
    if database["error"]:
        problems.append(f"database: {database['error']}")
    if spool["backing_up"]:
        problems.append(
            f"spool: an event has waited {fmt_duration(int(spool['oldest_age_s'] * 1000))} "
            f"in {spool_dir} (more than {max_spool_age:g} s): is the daemon replaying?"
        )
    if spool["error"]:
        warnings.append(f"spool: {spool['error']}")
    if spool["corrupt_files"]:
        warnings.append(
            f"spool: {spool['corrupt_files']} quarantined file(s) in {spool_dir / 'corrupt'}"
        )
    return {
        "healthy": not problems,
        "problems": problems,
        "warnings": warnings,
        "daemon": daemon,
        "database": database,
        "spool": spool,
        "pipelines": pipelines,
    }


def _same_file(a: str, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).resolve() == b.resolve()


# -- daemon ----------------------------------------------------------------------------


def _daemon(socket_path: Path, timeout: float) -> dict[str, Any]:
    out: dict[str, Any] = {"up": False, "socket": str(socket_path), "error": None, "status": None}
    try:
        reply = ask(socket_path, Status(), timeout=timeout)
    except DaemonUnavailable as exc:
        out["error"] = str(exc)
        return out
    if isinstance(reply, StatusReply):
        out["up"] = True
        out["status"] = msgspec.structs.asdict(reply)
    elif isinstance(reply, ErrorReply):
        out["error"] = f"the daemon refused the status request: {reply.error}"
    else:
        out["error"] = f"unexpected {type(reply).__name__} reply to status"
    return out


# -- database --------------------------------------------------------------------------


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def _exists(path: Path) -> bool:
    try:
        path.stat()
    except OSError:
        return False
    return True


def _database(path: Path, now: float) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    wal = path.with_name(path.name + "-wal")
    out: dict[str, Any] = {
        "path": str(path),
        "exists": _exists(path),
        "size_bytes": _size(path),
        "wal_bytes": _size(wal),
        "file_modified_at": None,
        "schema_version": None,
        "row_counts": {},
        "last_write": None,
        "error": None,
    }
    mtimes = []
    for p in (path, wal):
        try:
            mtimes.append(p.stat().st_mtime)
        except OSError:
            pass
    if mtimes:
        out["file_modified_at"] = iso_from_datetime(_utc(max(mtimes)))
    pipelines: list[dict[str, Any]] = []
    try:
        with q.read_only(path) as conn:
            tables = {
                r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            }
            if "meta" in tables:
                row = conn.execute("SELECT max(schema_version) FROM meta").fetchone()
                out["schema_version"] = row[0] if row is not None else None
            out["row_counts"] = {
                t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0]
                if t in tables
                else None
                for t in COUNTED_TABLES
            }
            out["last_write"] = conn.execute(
                "SELECT max(ts) FROM ("
                " SELECT max(started_at) AS ts FROM runs"
                " UNION ALL SELECT max(finished_at) FROM runs"
                " UNION ALL SELECT max(started_at) FROM run_steps"
                " UNION ALL SELECT max(finished_at) FROM run_steps"
                " UNION ALL SELECT max(created_at) FROM run_errors)"
            ).fetchone()[0]
            pipelines = _pipelines(conn, now)
    except click.ClickException as exc:
        out["error"] = exc.message
    return out, pipelines


def _utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def _pipelines(conn: Any, now: float) -> list[dict[str, Any]]:
    """Each (club, pipeline)'s newest run."""
    rows = conn.execute(
        "WITH latest AS (SELECT id, max(started_at) FROM runs GROUP BY club_slug, pipeline)"
        " SELECT r.pipeline, r.club_slug, r.id AS run_id, r.uid AS run_uid, r.started_at,"
        " r.finished_at, r.duration_ms, r.outcome,"
        " (SELECT count(*) FROM run_errors e WHERE e.run_id = r.id) AS error_count"
        " FROM runs r JOIN latest l ON l.id = r.id ORDER BY r.pipeline, r.club_slug"
    ).fetchall()
    out = []
    for row in rows:
        item = dict(row)
        started = parse_iso(item["started_at"])
        item["age_s"] = round(now - started.timestamp(), 3) if started is not None else None
        out.append(item)
    return out


# -- spool -----------------------------------------------------------------------------


def _oldest_event_ms(path: Path) -> int | None:
    """The ``ts`` of a spool file's first record (None if it has none or is unreadable)."""
    try:
        with path.open("rb") as fh:
            head = fh.read(len(SPOOL_MAGIC) + _RECORD_HEADER.size)
            if len(head) < len(SPOOL_MAGIC) + _RECORD_HEADER.size:
                return None
            length, _crc = _RECORD_HEADER.unpack_from(head, len(SPOOL_MAGIC))
            if not 0 < length <= 1 << 20:
                return None
            event = _first_record.decode(fh.read(length))
    except (OSError, msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None
    ts = event.get("ts") if isinstance(event, dict) else None
    return ts if isinstance(ts, int) and not isinstance(ts, bool) else None


def _name_ms(path: Path) -> int | None:
    head = path.name.split("-", 1)[0]
    return int(head) if head.isdigit() else None


def _spool(spool_dir: Path, now: float, max_age: float) -> dict[str, Any]:
    """Spool files waiting for replay: a file beyond its 8-byte header holds events."""
    out: dict[str, Any] = {
        "path": str(spool_dir),
        "files": 0,
        "pending_files": 0,
        "bytes": 0,
        "oldest_at": None,
        "oldest_age_s": None,
        "max_age_s": max_age,
        "backing_up": False,
        "corrupt_files": 0,
        "error": None,
    }
    try:
        entries = list(os.scandir(spool_dir))
    except FileNotFoundError:
        return out  # created by the daemon or the first client that spools
    except OSError as exc:
        out["error"] = f"cannot list {spool_dir}: {exc.strerror or exc}"
        return out
    oldest_ms: int | None = None
    for entry in entries:
        if entry.name == "corrupt" and entry.is_dir():
            try:
                out["corrupt_files"] = sum(1 for _ in os.scandir(entry.path))
            except OSError:
                pass
            continue
        if not entry.name.endswith(".spool"):
            continue
        try:
            st = entry.stat()
        except OSError:
            continue  # replayed and deleted meanwhile
        out["files"] += 1
        out["bytes"] += st.st_size
        if st.st_size <= len(SPOOL_MAGIC):
            continue  # only a header: a live client's empty spool
        out["pending_files"] += 1
        path = Path(entry.path)
        ms = _oldest_event_ms(path) or _name_ms(path) or int(st.st_mtime * 1000)
        oldest_ms = ms if oldest_ms is None else min(oldest_ms, ms)
    if oldest_ms is not None:
        out["oldest_at"] = iso_from_datetime(_utc(oldest_ms / 1000))
        out["oldest_age_s"] = round(max(0.0, now - oldest_ms / 1000), 3)
        out["backing_up"] = out["oldest_age_s"] > max_age
    return out


# -- human output ----------------------------------------------------------------------


def _line(out: Console, label: str, *parts: Text | str) -> None:
    text = Text(f"{label:<10} ", style="bold")
    for part in parts:
        text.append(part if isinstance(part, Text) else Text(part))
    out.print(text)


def _print(out: Console, report: dict[str, Any]) -> None:
    d = report["daemon"]
    if d["up"]:
        s = d["status"]
        _line(
            out,
            "daemon",
            Text("up", style="green"),
            f", pid {s['pid']}, version {s['version'] or '?'}, "
            f"uptime {fmt_duration(int(s['uptime_s'] * 1000))}",
        )
        last = (
            fmt_when(iso_from_datetime(_utc(s["last_commit_ts"] / 1000)))
            if s["last_commit_ts"]
            else "none yet"
        )
        _line(
            out,
            "",
            f"{s['events_committed']:,} events committed, queue {s['queue_depth']:,}, "
            f"{s['connections']} connection(s), last commit {last}",
        )
    else:
        _line(out, "daemon", Text("DOWN", style="bold red"), f": {d['error']}")
    _line(out, "socket", d["socket"])

    db = report["database"]
    _line(out, "database", db["path"])
    if db["error"]:
        _line(out, "", Text(db["error"], style="red"))
    else:
        wal = f" (WAL {fmt_bytes(db['wal_bytes'])})" if db["wal_bytes"] is not None else ""
        _line(
            out,
            "",
            f"schema {db['schema_version']}, {fmt_bytes(db['size_bytes'])}{wal}, "
            f"last write {fmt_when(db['last_write']) if db['last_write'] else 'never'}",
        )
        counts = "  ".join(
            f"{t} {'-' if n is None else f'{n:,}'}" for t, n in db["row_counts"].items()
        )
        _line(out, "", counts)

    sp = report["spool"]
    if sp["pending_files"]:
        summary = Text(
            f"{sp['pending_files']} file(s) waiting, {fmt_bytes(sp['bytes'])}, oldest event "
            f"{fmt_ago(sp['oldest_at'])}",
            style="bold red" if sp["backing_up"] else "yellow",
        )
        if sp["backing_up"]:
            summary.append(f" - BACKING UP (limit {sp['max_age_s']:g} s)")
    else:
        summary = Text("nothing waiting", style="green")
    _line(out, "spool", f"{sp['path']}: ", summary)

    if report["pipelines"]:
        out.print()
        t = table(
            "PIPELINE",
            "CLUB",
            "LAST RUN",
            "STARTED",
            "DURATION",
            "OUTCOME",
            "ERRORS",
            title="Pipelines",
            right=("LAST RUN", "DURATION", "ERRORS"),
        )
        for p in report["pipelines"]:
            t.add_row(
                p["pipeline"],
                p["club_slug"],
                f"#{p['run_id']}",
                fmt_when(p["started_at"]),
                fmt_duration(p["duration_ms"]),
                outcome_text(p["outcome"]),
                Text(f"{p['error_count']:,}", style="red" if p["error_count"] else ""),
            )
        out.print(t)
    for problem in report["problems"]:
        out.print(Text(f"problem: {problem}", style="bold red"))
    for warning in report["warnings"]:
        out.print(Text(f"warning: {warning}", style="yellow"))
    if not report["problems"]:
        out.print(Text("healthy", style="green"))
