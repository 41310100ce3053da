"""``runtally status``: is everything well?  Also a health check for monitoring.

The report is gathered by ``_health.collect``; this module is the command and
the human output, one function per section.  Exit status 0 when healthy, 1
when the daemon does not answer, the spool is backing up (an event waiting
longer than ``--max-spool-age``), or the database cannot be read.  ``--json``
prints the same report as one object (shape in README.md, "Everyday commands").
"""

from __future__ import annotations

import json
import sys

import click
import msgspec
from rich.console import Console
from rich.text import Text

from ..config import Settings
from ..daemon._timefmt import iso_from_ms
from ._common import source_note, uses_settings
from ._health import (
    DEFAULT_MAX_SPOOL_AGE_S,
    DaemonSection,
    DatabaseSection,
    PipelineRow,
    SpoolSection,
    StatusReport,
    collect,
)
from ._pipelines import state_text
from ._render import (
    OUTCOME_STYLES,
    console,
    fmt_ago,
    fmt_bytes,
    fmt_duration,
    fmt_when,
    plural,
)
from ._table import Column, StreamTable
from ._text import visible

__all__ = ["status"]

EXIT_UNHEALTHY = 1


@click.command()
@click.option(
    "--max-spool-age",
    type=click.FloatRange(min=0),
    default=DEFAULT_MAX_SPOOL_AGE_S,
    show_default=True,
    metavar="SECONDS",
    envvar="RUNTALLY_MAX_SPOOL_AGE",
    help="The spool is backing up when an event has waited longer than this"
    " [env RUNTALLY_MAX_SPOOL_AGE].",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.05),
    default=1.0,
    show_default=True,
    metavar="SECONDS",
    help="How long to wait for the daemon's answer.",
)
@click.option(
    "--wide", "-w", is_flag=True, help="Every column in full, nothing cut, even if lines wrap."
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (shape in README).")
@uses_settings("socket", "db", "spool")
def status(
    settings: Settings, *, max_spool_age: float, timeout: float, wide: bool, as_json: bool
) -> None:
    """Daemon, database, spool backlog and each pipeline's last run.

    Exit status 1 when the daemon is down, the spool is backing up, the
    database cannot be read, or a pipeline is late, missed, failing, stuck or
    crashed: usable as a health check.
    """
    report = collect(
        settings.socket,
        settings.db,
        settings.spool,
        max_spool_age=max_spool_age,
        timeout=timeout,
        default_club=settings.default_club,
    )
    if report.database.error:
        note = source_note(settings, "db")
        report.database.error += note
        report.problems = [
            f"{p}{note}" if p.startswith("database: ") else p for p in report.problems
        ]
    if as_json:
        click.echo(json.dumps(msgspec.to_builtins(report), indent=2, ensure_ascii=False))
    else:
        out = console()
        _print_daemon(out, report.daemon)
        _print_database(out, report.database)
        _print_spool(out, report.spool)
        _line(out, "club", f"{report.default_club} (runs started without one; default_club)")
        _print_pipelines(out, report.pipelines, fit=out.is_terminal and not wide)
        _print_states(out, report.states)
        _print_verdict(out, report)
    if report.problems:
        sys.exit(EXIT_UNHEALTHY)


def _line(out: Console, label: str, *parts: Text | str) -> None:
    text = Text(f"{label:<10} ", style="bold")
    for part in parts:
        text.append(part if isinstance(part, Text) else Text(visible(part)))
    out.print(text)


def _print_daemon(out: Console, d: DaemonSection) -> None:
    if d.up and d.status is not None:
        s = d.status
        _line(
            out,
            "daemon",
            Text("up", style="green"),
            f", pid {s['pid']}, version {s['version'] or '?'}, "
            f"uptime {fmt_duration(int(s['uptime_s'] * 1000))}",
        )
        last = fmt_when(iso_from_ms(s["last_commit_ts"])) if s["last_commit_ts"] else "none yet"
        _line(
            out,
            "",
            f"{plural(s['events_committed'], 'event')} committed, queue {s['queue_depth']:,}, "
            f"{plural(s['connections'], 'connection')}, last commit {last}",
        )
    else:
        _line(out, "daemon", Text("DOWN", style="bold red"), f": {d.error}")
    _line(out, "socket", d.socket)


def _print_database(out: Console, db: DatabaseSection) -> None:
    _line(out, "database", db.path)
    if db.error:
        _line(out, "", Text(visible(db.error), style="red"))
        return
    wal = f" (WAL {fmt_bytes(db.wal_bytes)})" if db.wal_bytes is not None else ""
    _line(
        out,
        "",
        f"schema {db.schema_version}, {fmt_bytes(db.size_bytes)}{wal}, "
        f"last write {fmt_when(db.last_write) if db.last_write else 'never'}",
    )
    # As many "table count" pairs a line as fit, each line under the label column.
    pairs = [f"{t} {'-' if n is None else f'{n:,}'}" for t, n in db.row_counts.items()]
    room = max(20, out.width - 11) if out.is_terminal else 10**6
    line: list[str] = []
    for pair in pairs:
        if line and len("  ".join([*line, pair])) > room:
            _line(out, "", "  ".join(line))
            line = []
        line.append(pair)
    if line:
        _line(out, "", "  ".join(line))


def _print_spool(out: Console, sp: SpoolSection) -> None:
    if sp.pending_files:
        summary = Text(
            f"{plural(sp.pending_files, 'file')} waiting, {fmt_bytes(sp.bytes)}, oldest event "
            f"{fmt_ago(sp.oldest_at)}",
            style="bold red" if sp.backing_up else "yellow",
        )
        if sp.backing_up:
            summary.append(f" - BACKING UP (limit {sp.max_age_s:g} s)")
    else:
        summary = Text("nothing waiting", style="green")
    if sp.live_files:
        summary.append(f" ({plural(sp.live_files, 'running pipeline')} writing ahead)")
    _line(out, "spool", f"{sp.path}: ", summary)


#: The pipelines table: its columns as _table gives way at narrow widths.
PIPELINE_COLUMNS = [
    Column("PIPELINE", lambda p: p["pipeline"], keep=100, flex=True, min_width=10),
    Column("CLUB", lambda p: p["club_slug"], keep=40, max_width=12),
    Column("LAST RUN", lambda p: f"#{p['run_id']}", right=True, keep=90),
    Column(
        "STARTED",
        lambda p: fmt_when(p["started_at"]),
        keep=85,
        compact=lambda p: fmt_ago(p["started_at"]),
    ),
    Column("DURATION", lambda p: fmt_duration(p["duration_ms"]), right=True, keep=60),
    Column(
        "OUTCOME",
        lambda p: p["outcome"] or "-",
        keep=95,
        style=lambda p: OUTCOME_STYLES.get(p["outcome"] or ""),
    ),
    Column(
        "ERRORS",
        lambda p: f"{p['error_count']:,}",
        right=True,
        keep=80,
        style=lambda p: "red" if p["error_count"] else None,
    ),
]


def _print_pipelines(out: Console, pipelines: list[PipelineRow], *, fit: bool) -> None:
    if not pipelines:
        return
    out.print()
    rows = [msgspec.structs.asdict(p) for p in pipelines]
    StreamTable(out, PIPELINE_COLUMNS, fit=fit, title="Pipelines").print_rows([rows])


def _print_states(out: Console, states: list[dict]) -> None:
    for s in states:
        nxt = f", next {fmt_when(s['next_expected_at'])}" if s["next_expected_at"] else ""
        _line(out, "state", f"{s['pipeline']}: ", state_text(s["state"]), f" - {s['detail']}{nxt}")


def _print_verdict(out: Console, report: StatusReport) -> None:
    for problem in report.problems:
        out.print(Text(f"problem: {visible(problem)}", style="bold red"))
    for warning in report.warnings:
        out.print(Text(f"warning: {visible(warning)}", style="yellow"))
    if not report.problems:
        out.print(Text("healthy", style="green"))
