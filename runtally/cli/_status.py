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
from collections.abc import Mapping

import click
import msgspec
from rich.console import Console
from rich.text import Text

from .._pipeline_config import PipelineConfig
from ..config import Settings
from ..daemon._timefmt import iso_from_ms
from ._common import Seconds, source_note, uses_settings
from ._health import (
    DEFAULT_MAX_SPOOL_AGE_S,
    DaemonSection,
    DatabaseSection,
    SpoolSection,
    StatusReport,
    collect,
)
from ._render import (
    OUTCOME_STYLES,
    console,
    fmt_ago,
    fmt_bytes,
    fmt_duration,
    fmt_when,
    plural,
)
from ._state_view import next_run, state_style
from ._table import Column, StreamTable
from ._text import visible

__all__ = ["print_report", "status"]

EXIT_UNHEALTHY = 1


@click.command()
@click.option(
    "--max-spool-age",
    type=Seconds(min=0, max=30 * 86400),
    default=DEFAULT_MAX_SPOOL_AGE_S,
    show_default=True,
    metavar="SECONDS",
    envvar="RUNTALLY_MAX_SPOOL_AGE",
    help="The spool is backing up when an event has waited longer than this"
    " [env RUNTALLY_MAX_SPOOL_AGE].",
)
@click.option(
    "--timeout",
    type=Seconds(min=0.05, max=3600),
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
        print_report(out, report, settings.pipelines, fit=out.is_terminal and not wide)
    if report.problems:
        sys.exit(EXIT_UNHEALTHY)


def print_report(
    out: Console, report: StatusReport, declared: Mapping[str, PipelineConfig], *, fit: bool
) -> None:
    """The report for people: one section a line or more, the pipelines, the verdict.

    ``declared``: the config's pipelines (shown even before their first run);
    ``fit``: fit the pipelines table to ``out``'s width.
    """
    _print_daemon(out, report.daemon)
    _print_database(out, report.database)
    _print_spool(out, report.spool)
    _line(out, "club", f"{report.default_club} (runs started without one; default_club)")
    _print_pipelines(out, _pipeline_rows(report, declared), fit=fit)
    _print_verdict(out, report)


#: Width of the label column (``daemon``, ``database``...) and the space after it.
_LABEL = 11


def _line(out: Console, label: str, *parts: Text | str, style: str = "") -> None:
    """``label`` then ``parts``; on a terminal, wrapped lines stay under the parts."""
    _hanging(out, Text(f"{label:<{_LABEL - 1}} ", style="bold"), parts, style=style)


def _hanging(out: Console, head: Text, parts: tuple[Text | str, ...], *, style: str = "") -> None:
    """``head`` and ``parts`` as one line; wrapped on a terminal with a hanging indent.

    A pipe gets one line whatever its length (for grep).  On a terminal the
    parts are wrapped at spaces to the width left after ``head``, each further
    line indented by ``head``'s width, no line with trailing spaces.
    """
    body = Text(style=style)
    for part in parts:
        body.append(part if isinstance(part, Text) else Text(visible(part)))
    if not out.is_terminal:
        out.print(head + body, soft_wrap=True)
        return
    indent = head.cell_len
    lines = body.wrap(out, max(20, out.width - indent), overflow="fold") if body else [body]
    for n, line in enumerate(lines):
        line.rstrip()
        out.print((head if n == 0 else Text(" " * indent)) + line, soft_wrap=True)


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
            f"{plural(s['connections'], 'connection')}",
        )
        _line(out, "", f"last commit {last}")
    else:
        _line(out, "daemon", Text("DOWN", style="bold red"), f": {d.error}")
    _line(out, "socket", d.socket)


def _print_database(out: Console, db: DatabaseSection) -> None:
    _line(out, "database", db.path)
    if db.error:
        _line(out, "", Text(visible(db.error), style="red"))
        return
    wal = f" (WAL {fmt_bytes(db.wal_bytes)})" if db.wal_bytes is not None else ""
    _line(out, "", f"schema {db.schema_version}, {fmt_bytes(db.size_bytes)}{wal}")
    # A line of its own, as "last commit": a time and its age never broken apart.
    _line(out, "", f"last write {fmt_when(db.last_write) if db.last_write else 'never'}")
    # As many "table count" pairs a line as fit, each line under the label column.
    pairs = [f"{t} {'-' if n is None else f'{n:,}'}" for t, n in db.row_counts.items()]
    room = max(20, out.width - _LABEL) if out.is_terminal else 10**6
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


def _when_compact(key: str) -> Column:
    """A time column: ``2026-11-30 10:18:17 (11s ago)``, or only the age when narrow."""
    return Column(
        key.upper(),
        lambda p: fmt_when(p[key]),
        keep=85,
        compact=lambda p: fmt_ago(p[key]) or "-",
    )


#: The pipelines table: its columns as _table gives way at narrow widths.
PIPELINE_COLUMNS = [
    Column("PIPELINE", lambda p: p["pipeline"], keep=100, flex=True, min_width=10),
    Column("CLUB", lambda p: p["club_slug"] or "-", keep=40, max_width=12),
    Column("STATE", lambda p: p["state"] or "-", keep=100, style=lambda p: state_style(p["state"])),
    Column(
        "LAST RUN",
        lambda p: "-" if p["run_id"] is None else f"#{p['run_id']}",
        right=True,
        keep=90,
    ),
    Column(
        "STARTED",
        lambda p: fmt_when(p["started_at"]),
        keep=85,
        compact=lambda p: fmt_ago(p["started_at"]) or "-",
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
        lambda p: "-" if p["error_count"] is None else f"{p['error_count']:,}",
        right=True,
        keep=80,
        style=lambda p: "red" if p["error_count"] else None,
    ),
    Column(
        "NEXT RUN",
        lambda p: fmt_when(p["next"]),
        keep=65,
        compact=lambda p: fmt_ago(p["next"]) or "-",
    ),
]

_NO_RUN = dict.fromkeys(("run_id", "started_at", "duration_ms", "outcome", "error_count"), None)


def _pipeline_rows(
    report: StatusReport, declared: Mapping[str, PipelineConfig]
) -> list[dict[str, object]]:
    """Each (pipeline, club)'s last run with its state, and the pipelines without a run.

    A pipeline declared in the config or judged by the monitor that never ran
    is a row of its own (state, next run, no run), so none is left out.
    """
    states = {s["pipeline"]: s for s in report.states}
    rows: list[dict[str, object]] = []
    for p in report.pipelines:
        rows.append({**msgspec.structs.asdict(p), "state": None, "next": None})
    ran = {p.pipeline for p in report.pipelines}
    for name in (set(states) | set(declared)) - ran:
        club = declared[name].club if name in declared else None
        rows.append({"pipeline": name, "club_slug": club, **_NO_RUN, "state": None, "next": None})
    for row in rows:
        name = str(row["pipeline"])
        state = states.get(name, {})
        row["state"] = state.get("state")
        row["next"] = next_run(state.get("next_expected_at"), declared.get(name))
    rows.sort(key=lambda r: (str(r["pipeline"]), str(r["club_slug"] or "")))
    return rows


def _print_pipelines(out: Console, rows: list[dict[str, object]], *, fit: bool) -> None:
    if not rows:
        return
    out.print()
    StreamTable(out, PIPELINE_COLUMNS, fit=fit, title="Pipelines").print_rows([rows])


def _print_verdict(out: Console, report: StatusReport) -> None:
    """Problems (a bad pipeline state is one of them), warnings, or ``healthy``."""
    for problem in report.problems:
        _hanging(out, Text("problem: ", style="bold red"), (problem,), style="bold red")
    for warning in report.warnings:
        _hanging(out, Text("warning: ", style="yellow"), (warning,), style="yellow")
    if not report.problems:
        out.print(Text("healthy", style="green"))
