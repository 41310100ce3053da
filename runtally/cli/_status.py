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
from ._common import uses_settings
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
from ._render import console, fmt_ago, fmt_bytes, fmt_duration, fmt_when, outcome_text, table

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
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (shape in README).")
@uses_settings("socket", "db", "spool")
def status(settings: Settings, *, max_spool_age: float, timeout: float, as_json: bool) -> None:
    """Daemon, database, spool backlog and each pipeline's last run.

    Exit status 1 when the daemon is down, the spool is backing up, the
    database cannot be read, or a pipeline is late, missed, failing, stuck or
    crashed: usable as a health check.
    """
    report = collect(
        settings.socket, settings.db, settings.spool, max_spool_age=max_spool_age, timeout=timeout
    )
    if as_json:
        click.echo(json.dumps(msgspec.to_builtins(report), indent=2, ensure_ascii=False))
    else:
        out = console()
        _print_daemon(out, report.daemon)
        _print_database(out, report.database)
        _print_spool(out, report.spool)
        _print_pipelines(out, report.pipelines)
        _print_states(out, report.states)
        _print_verdict(out, report)
    if report.problems:
        sys.exit(EXIT_UNHEALTHY)


def _line(out: Console, label: str, *parts: Text | str) -> None:
    text = Text(f"{label:<10} ", style="bold")
    for part in parts:
        text.append(part if isinstance(part, Text) else Text(part))
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
            f"{s['events_committed']:,} events committed, queue {s['queue_depth']:,}, "
            f"{s['connections']} connection(s), last commit {last}",
        )
    else:
        _line(out, "daemon", Text("DOWN", style="bold red"), f": {d.error}")
    _line(out, "socket", d.socket)


def _print_database(out: Console, db: DatabaseSection) -> None:
    _line(out, "database", db.path)
    if db.error:
        _line(out, "", Text(db.error, style="red"))
        return
    wal = f" (WAL {fmt_bytes(db.wal_bytes)})" if db.wal_bytes is not None else ""
    _line(
        out,
        "",
        f"schema {db.schema_version}, {fmt_bytes(db.size_bytes)}{wal}, "
        f"last write {fmt_when(db.last_write) if db.last_write else 'never'}",
    )
    counts = "  ".join(f"{t} {'-' if n is None else f'{n:,}'}" for t, n in db.row_counts.items())
    _line(out, "", counts)


def _print_spool(out: Console, sp: SpoolSection) -> None:
    if sp.pending_files:
        summary = Text(
            f"{sp.pending_files} file(s) waiting, {fmt_bytes(sp.bytes)}, oldest event "
            f"{fmt_ago(sp.oldest_at)}",
            style="bold red" if sp.backing_up else "yellow",
        )
        if sp.backing_up:
            summary.append(f" - BACKING UP (limit {sp.max_age_s:g} s)")
    else:
        summary = Text("nothing waiting", style="green")
    _line(out, "spool", f"{sp.path}: ", summary)


def _print_pipelines(out: Console, pipelines: list[PipelineRow]) -> None:
    if not pipelines:
        return
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
    for p in pipelines:
        t.add_row(
            p.pipeline,
            p.club_slug,
            f"#{p.run_id}",
            fmt_when(p.started_at),
            fmt_duration(p.duration_ms),
            outcome_text(p.outcome),
            Text(f"{p.error_count:,}", style="red" if p.error_count else ""),
        )
    out.print(t)


def _print_states(out: Console, states: list[dict]) -> None:
    for s in states:
        nxt = f", next {fmt_when(s['next_expected_at'])}" if s["next_expected_at"] else ""
        _line(out, "state", f"{s['pipeline']}: ", state_text(s["state"]), f" - {s['detail']}{nxt}")


def _print_verdict(out: Console, report: StatusReport) -> None:
    for problem in report.problems:
        out.print(Text(f"problem: {problem}", style="bold red"))
    for warning in report.warnings:
        out.print(Text(f"warning: {warning}", style="yellow"))
    if not report.problems:
        out.print(Text("healthy", style="green"))
