"""``runtally runs``, ``runtally show RUN``, ``runtally errors``: read-only views.

Each opens dashboard.sqlite read-only (``_query.read_only``) and prints either
a table for people (``_render``) or, with ``--json``, one JSON object whose
shape is documented in README.md ("Everyday commands") and kept stable.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.text import Text

from . import _query as q
from ._common import config_option, db_option, settings_from
from ._render import (
    SinceType,
    console,
    fmt_duration,
    fmt_local,
    fmt_when,
    loads_or_text,
    outcome_text,
    table,
)

__all__ = ["errors", "runs", "show"]

F = TypeVar("F", bound=Callable[..., Any])

#: Longest error message shown in a table cell (``--json`` and ``--stack`` show all).
MESSAGE_CELL = 300
#: Errors ``show`` prints for people (``--json`` has them all).
SHOW_ERRORS = 50

_COUNTS = ("CREATED", "UPDATED", "SKIPPED", "FAILED", "ERRORS")

_since_option = click.option(
    "--since",
    type=SinceType(),
    default=None,
    metavar="WHEN",
    help="Only since WHEN: 30m, 24h, 7d, 2w, or an ISO date/time (local unless it has a zone).",
)
_json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON object (shape in README)."
)
_pipeline_option = click.option("--pipeline", "-p", default=None, help="Only this pipeline.")
_club_option = click.option("--club", "-c", default=None, help="Only this club (club_slug).")


def _limit_option(default: int) -> Callable[[F], F]:
    return click.option(
        "--limit",
        "-n",
        type=click.IntRange(min=0),
        default=default,
        show_default=True,
        help="At most this many, newest first (0: no limit).",
    )


def _db_path(db: Path | None, config_file: Path | None) -> Path:
    return settings_from(db=db, config_file=config_file).db


def _echo_json(payload: dict[str, Any]) -> None:
    click.echo(json.dumps(payload, indent=2, ensure_ascii=False))


def run_json(run: dict[str, Any]) -> dict[str, Any]:
    """A run in ``--json`` output: the columns of RUN_FIELDS, in that order."""
    return {field: run.get(field) for field in q.RUN_FIELDS}


def _pick(row: dict[str, Any], fields: Iterable[str]) -> dict[str, Any]:
    return {field: row.get(field) for field in fields}


def _count(n: int | None) -> str:
    return "-" if n is None else f"{n:,}"


def _more_note(out: Console, shown: int, limit: int, noun: str) -> None:
    if limit and shown >= limit:
        out.print(Text(f"(the newest {shown} {noun}; --limit to see more)", style="dim"))


# -- runs ----------------------------------------------------------------------------


@click.command()
@_pipeline_option
@_club_option
@click.option(
    "--outcome",
    "-o",
    type=click.Choice(["success", "failure", "running"]),
    default=None,
    help="Only runs with this outcome.",
)
@_since_option
@_limit_option(50)
@_json_option
@db_option
@config_option
def runs(
    *,
    pipeline: str | None,
    club: str | None,
    outcome: str | None,
    since: str | None,
    limit: int,
    as_json: bool,
    db: Path | None,
    config_file: Path | None,
) -> None:
    """List runs, newest first: outcome, duration, counts and errors of each."""
    path = _db_path(db, config_file)
    with q.read_only(path) as conn:
        found = q.list_runs(
            conn, pipeline=pipeline, club=club, outcome=outcome, since=since, limit=limit
        )
    if as_json:
        _echo_json({"runs": [run_json(r) for r in found]})
        return
    out = console()
    if not found:
        out.print("no runs match")
        return
    out.print(_runs_table(found))
    _more_note(out, len(found), limit, "runs")


def _runs_table(found: list[dict[str, Any]], title: str | None = None) -> Any:
    nested = any(r["parent_run_id"] is not None or r["parent_uid"] for r in found)
    columns = ["ID", "PIPELINE", "CLUB", "STARTED", "DURATION", "OUTCOME", *_COUNTS]
    if nested:
        columns.append("PARENT")
    t = table(*columns, title=title, right=("ID", "DURATION", *_COUNTS))
    for r in found:
        row: list[Any] = [
            str(r["id"]),
            r["pipeline"],
            r["club_slug"],
            fmt_when(r["started_at"]),
            fmt_duration(r["duration_ms"]),
            outcome_text(r["outcome"]),
            _count(r["total_created"]),
            _count(r["total_updated"]),
            _count(r["total_skipped"]),
            _count(r["total_failed"]),
            Text(_count(r["error_count"]), style="red" if r["error_count"] else ""),
        ]
        if nested:
            row.append(_parent_ref(r))
        t.add_row(*row)
    return t


def _parent_ref(run: dict[str, Any]) -> str:
    if run["parent_run_id"] is not None:
        return f"#{run['parent_run_id']}"
    return run["parent_uid"] or ""


# -- show ----------------------------------------------------------------------------


@click.command()
@click.argument("run")
@click.option("--pipeline", "-p", default=None, help="With RUN `latest`: of this pipeline.")
@click.option("--club", "-c", default=None, help="With RUN `latest`: of this club.")
@click.option("--stack", is_flag=True, help="Print each error's stack (or stderr tail) in full.")
@_json_option
@db_option
@config_option
def show(
    *,
    run: str,
    pipeline: str | None,
    club: str | None,
    stack: bool,
    as_json: bool,
    db: Path | None,
    config_file: Path | None,
) -> None:
    """One run in full: its steps, errors, parent and child runs.

    RUN is a run id, a run uid, or `latest` (of --pipeline/--club when given).
    """
    path = _db_path(db, config_file)
    with q.read_only(path) as conn:
        found = q.find_run(conn, run, pipeline=pipeline, club=club)
        steps = q.steps_of(conn, found["id"])
        errs = q.errors_of(conn, found["id"])
        parent = q.parent_of(conn, found)
        children = q.children_of(conn, found)
    if as_json:
        _echo_json(
            {
                "run": {
                    **run_json(found),
                    "summary": loads_or_text(found["summary_json"]),
                    "meta": loads_or_text(found["meta_json"]),
                },
                "steps": [
                    {
                        **_pick(s, (f for f in q.STEP_FIELDS if f != "detail_json")),
                        "detail": loads_or_text(s["detail_json"]),
                    }
                    for s in steps
                ],
                "errors": [_pick(e, q.ERROR_FIELDS) for e in errs],
                "parent": run_json(parent) if parent is not None else None,
                "children": [run_json(c) for c in children],
            }
        )
        return
    out = console()
    _print_run(out, found, parent)
    if steps:
        out.print()
        out.print(_steps_table(steps))
    else:
        out.print(Text("\nno steps", style="dim"))
    if errs:
        out.print()
        shown = errs[:SHOW_ERRORS]
        if stack:
            _print_error_blocks(out, shown, total=len(errs))
        else:
            out.print(_errors_table(shown, title=f"Errors ({len(errs)})", with_run=False))
        if len(errs) > len(shown):
            out.print(
                Text(
                    f"(the first {len(shown)} of {len(errs)} errors; all of them: "
                    f"runtally errors --run {found['id']} --limit 0)",
                    style="dim",
                )
            )
    if children:
        out.print()
        out.print(_runs_table(children, title=f"Child runs ({len(children)})"))


def _print_run(out: Console, run: dict[str, Any], parent: dict[str, Any] | None) -> None:
    head = Text(f"Run {run['id']}", style="bold")
    head.append(f"  {run['pipeline']}  (club {run['club_slug']})")
    out.print(head)
    fields: list[tuple[str, Any]] = [
        ("uid", run["uid"] or "-"),
        ("outcome", outcome_text(run["outcome"])),
        ("started", fmt_when(run["started_at"])),
        ("finished", fmt_when(run["finished_at"])),
        ("duration", fmt_duration(run["duration_ms"])),
        (
            "totals",
            f"created {_count(run['total_created'])}, updated {_count(run['total_updated'])}, "
            f"skipped {_count(run['total_skipped'])}, failed {_count(run['total_failed'])}",
        ),
        ("steps", _count(run["step_count"])),
        ("errors", Text(_count(run["error_count"]), style="red" if run["error_count"] else "")),
    ]
    if parent is not None:
        fields.append(("parent", _run_line(parent)))
    elif run["parent_uid"]:
        fields.append(("parent", f"uid {run['parent_uid']} (not in the database)"))
    meta = loads_or_text(run["meta_json"])
    if isinstance(meta, dict) and meta:
        fields.append(("meta", _meta_line(meta)))
    if run["summary_json"] is not None:
        fields.append(("summary", run["summary_json"]))
    for label, value in fields:
        line = Text(f"  {label:<9} ", style="dim")
        line.append(value if isinstance(value, Text) else Text(str(value)))
        out.print(line)


def _run_line(run: dict[str, Any]) -> Text:
    line = Text(f"#{run['id']} {run['pipeline']} ")
    line.append(outcome_text(run["outcome"]))
    line.append(f", started {fmt_when(run['started_at'])}")
    return line


def _meta_line(meta: dict[str, Any]) -> str:
    parts = []
    for key, value in meta.items():
        shown = " ".join(str(v) for v in value) if isinstance(value, list) else value
        parts.append(f"{key}={shown}")
    return "  ".join(parts)


def _steps_table(steps: list[dict[str, Any]]) -> Any:
    t = table(
        "STEP",
        "STARTED",
        "DURATION",
        "OUTCOME",
        *_COUNTS,
        title=f"Steps ({len(steps)})",
        right=("DURATION", *_COUNTS),
    )
    for s in steps:
        t.add_row(
            s["step_name"],
            fmt_local(s["started_at"]),
            fmt_duration(s["duration_ms"]),
            outcome_text(s["outcome"] or ("running" if s["finished_at"] is None else None)),
            _count(s["created_count"]),
            _count(s["updated_count"]),
            _count(s["skipped_count"]),
            _count(s["failed_count"]),
            Text(_count(s["error_count"]), style="red" if s["error_count"] else ""),
        )
    return t


def _message_cell(message: str | None) -> str:
    text = (message or "").strip()
    first, _, rest = text.partition("\n")
    if len(first) > MESSAGE_CELL:
        return first[: MESSAGE_CELL - 1] + "…"
    return first + (" …" if rest.strip() else "")


def _errors_table(errs: list[dict[str, Any]], *, title: str | None, with_run: bool) -> Any:
    columns = ["TIME", *(["RUN", "PIPELINE"] if with_run else []), "STEP", "MEMBER", "MESSAGE"]
    t = table(*columns, title=title, right=("RUN",))
    for e in errs:
        row = [fmt_local(e["created_at"])]
        if with_run:
            row += [str(e["run_id"]), e["pipeline"]]
        row += [e["step_name"], e["member_identifier"] or "-", _message_cell(e["error_message"])]
        t.add_row(*row)
    return t


def _print_error_blocks(out: Console, errs: list[dict[str, Any]], total: int | None = None) -> None:
    out.print(Text(f"Errors ({len(errs) if total is None else total})", style="bold"))
    for e in errs:
        head = Text(f"#{e['id']} {fmt_local(e['created_at'])}  run {e['run_id']} {e['pipeline']}")
        head.append(f"  step {e['step_name']}")
        if e["member_identifier"]:
            head.append(f"  member {e['member_identifier']}")
        out.print(head)
        for line in (e["error_message"] or "").splitlines() or [""]:
            out.print(Text(f"    {line}", style="red"))
        if e["error_stack"]:
            for line in e["error_stack"].splitlines():
                out.print(Text(f"      {line}", style="dim"))


# -- errors --------------------------------------------------------------------------


@click.command()
@click.option(
    "--run", "run_ref", default=None, metavar="RUN", help="Only this run: id, uid or `latest`."
)
@_pipeline_option
@_club_option
@click.option("--step", "-s", default=None, help="Only errors of this step (step_name).")
@click.option("--member", "-m", default=None, help="Only errors about this member (exact).")
@_since_option
@_limit_option(100)
@click.option("--stack", is_flag=True, help="Print each error in full with its stack.")
@_json_option
@db_option
@config_option
def errors(
    *,
    run_ref: str | None,
    pipeline: str | None,
    club: str | None,
    step: str | None,
    member: str | None,
    since: str | None,
    limit: int,
    stack: bool,
    as_json: bool,
    db: Path | None,
    config_file: Path | None,
) -> None:
    """List errors, newest first: when, which run and step, which member, why.

    With --run latest, --pipeline/--club choose whose latest run.
    """
    path = _db_path(db, config_file)
    with q.read_only(path) as conn:
        run_id = None
        if run_ref is not None:
            run_id = q.find_run(conn, run_ref, pipeline=pipeline, club=club)["id"]
        found = q.list_errors(
            conn,
            run_id=run_id,
            pipeline=pipeline,
            club=club,
            step=step,
            member=member,
            since=since,
            limit=limit,
        )
    if as_json:
        _echo_json({"errors": [_pick(e, q.ERROR_FIELDS) for e in found]})
        return
    out = console()
    if not found:
        out.print("no errors match")
        return
    if stack:
        _print_error_blocks(out, found)
    else:
        out.print(_errors_table(found, title=None, with_run=True))
    _more_note(out, len(found), limit, "errors")
