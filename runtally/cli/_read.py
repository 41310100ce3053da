"""``runtally runs``, ``runtally show RUN``, ``runtally errors``: read-only views.

Each reads dashboard.sqlite read-only (``_query.read``) and prints either
tables for people (``_views``) or, with ``--json``, one JSON object whose
shape is documented in README.md ("Everyday commands") and kept stable.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.text import Text

from ..config import Settings
from . import _query as q
from ._common import uses_settings
from ._render import SinceType, console, loads_or_text
from ._views import errors_table, print_error_blocks, print_run, runs_table, steps_table

__all__ = ["errors", "runs", "show"]

F = TypeVar("F", bound=Callable[..., Any])

#: Errors ``show`` prints for people (``--json`` has them all).
SHOW_ERRORS = 50

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


def _echo_json(payload: dict[str, Any]) -> None:
    click.echo(json.dumps(payload, indent=2, ensure_ascii=False))


def run_json(run: dict[str, Any]) -> dict[str, Any]:
    """A run in ``--json`` output: the columns of RUN_FIELDS, in that order."""
    return {field: run.get(field) for field in q.RUN_FIELDS}


def _pick(row: dict[str, Any], fields: Iterable[str]) -> dict[str, Any]:
    return {field: row.get(field) for field in fields}


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
@uses_settings("db")
def runs(
    settings: Settings,
    *,
    pipeline: str | None,
    club: str | None,
    outcome: str | None,
    since: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List runs, newest first: outcome, duration, counts and errors of each."""
    found = q.read(
        settings.db,
        lambda conn: q.list_runs(
            conn, pipeline=pipeline, club=club, outcome=outcome, since=since, limit=limit
        ),
    )
    if as_json:
        _echo_json({"runs": [run_json(r) for r in found]})
        return
    out = console()
    if not found:
        out.print("no runs match")
        return
    out.print(runs_table(found))
    _more_note(out, len(found), limit, "runs")


# -- show ----------------------------------------------------------------------------


@click.command()
@click.argument("run")
@click.option("--pipeline", "-p", default=None, help="With RUN `latest`: of this pipeline.")
@click.option("--club", "-c", default=None, help="With RUN `latest`: of this club.")
@click.option("--stack", is_flag=True, help="Print each error's stack (or stderr tail) in full.")
@_json_option
@uses_settings("db")
def show(
    settings: Settings,
    *,
    run: str,
    pipeline: str | None,
    club: str | None,
    stack: bool,
    as_json: bool,
) -> None:
    """One run in full: its steps, errors, parent and child runs.

    RUN is a run id, a run uid, or `latest` (of --pipeline/--club when given).
    """

    def gather(conn: sqlite3.Connection) -> tuple[Any, ...]:
        found = q.find_run(conn, run, pipeline=pipeline, club=club)
        return (
            found,
            q.steps_of(conn, found["id"]),
            q.errors_of(conn, found["id"]),
            q.parent_of(conn, found),
            q.children_of(conn, found),
        )

    found, steps, errs, parent, children = q.read(settings.db, gather)
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
    print_run(out, found, parent)
    if steps:
        out.print()
        out.print(steps_table(steps))
    else:
        out.print(Text("\nno steps", style="dim"))
    if errs:
        out.print()
        shown = errs[:SHOW_ERRORS]
        if stack:
            print_error_blocks(out, shown, total=len(errs))
        else:
            out.print(errors_table(shown, title=f"Errors ({len(errs)})", with_run=False))
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
        out.print(runs_table(children, title=f"Child runs ({len(children)})"))


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
@uses_settings("db")
def errors(
    settings: Settings,
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
) -> None:
    """List errors, newest first: when, which run and step, which member, why.

    With --run latest, --pipeline/--club choose whose latest run.
    """

    def gather(conn: sqlite3.Connection) -> list[dict[str, Any]]:
        run_id = None
        if run_ref is not None:
            run_id = q.find_run(conn, run_ref, pipeline=pipeline, club=club)["id"]
        return q.list_errors(
            conn,
            run_id=run_id,
            pipeline=pipeline,
            club=club,
            step=step,
            member=member,
            since=since,
            limit=limit,
        )

    found = q.read(settings.db, gather)
    if as_json:
        _echo_json({"errors": [_pick(e, q.ERROR_FIELDS) for e in found]})
        return
    out = console()
    if not found:
        out.print("no errors match")
        return
    if stack:
        print_error_blocks(out, found)
    else:
        out.print(errors_table(found, title=None, with_run=True))
    _more_note(out, len(found), limit, "errors")
