"""``runtally runs``, ``runtally show RUN``, ``runtally errors``: read-only views.

Each reads dashboard.sqlite read-only (``_query.read``) and prints either
tables for people (``_views``) or, with ``--json``, one JSON object whose
shape is documented in README.md ("Everyday commands") and kept stable.
"""

from __future__ import annotations

import itertools
import json
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.text import Text

from ..config import Settings
from . import _query as q
from ._common import fits, uses_settings, warn, wide_option
from ._render import SinceType, console, loads_or_text, plural
from ._views import print_error_blocks, print_errors, print_run, print_runs, print_steps

__all__ = ["errors", "runs", "show"]

F = TypeVar("F", bound=Callable[..., Any])

#: Errors ``show`` prints for people (``--json`` has them all).
SHOW_ERRORS = 50
#: Rows read for the first page of a listing (it fixes the column widths), then per page.
FIRST_PAGE = 200
PAGE = 5000

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


def show_json(
    found: dict[str, Any],
    steps: list[dict[str, Any]],
    errs: list[dict[str, Any]],
    parent: dict[str, Any] | None,
    children: list[dict[str, Any]],
) -> dict[str, Any]:
    """``runtally show --json`` (and the dashboard's ``/api/runs/RUN``): the run with
    its summary and meta, its steps with their detail, errors, parent, children."""
    return {
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


def run_json(run: dict[str, Any]) -> dict[str, Any]:
    """A run in ``--json`` output: the columns of RUN_FIELDS, in that order."""
    return {field: run.get(field) for field in q.RUN_FIELDS}


def _pick(row: dict[str, Any], fields: Iterable[str]) -> dict[str, Any]:
    return {field: row.get(field) for field in fields}


def _more_note(out: Console, shown: int, limit: int, noun: str) -> None:
    if limit and shown >= limit:
        out.print(Text(f"(the newest {plural(shown, noun)}; --limit to see more)", style="dim"))


def _note_cut_names(**names: str | None) -> None:
    """Say so when a name filter is longer than a name can be (it is cut, as names are)."""
    for option, value in names.items():
        if value is not None and len(value) > q.max_name():
            warn(
                f"--{option} is longer than {q.max_name()} characters: cut to "
                f"{q.max_name()}, as names are when they are recorded"
            )


def _pages(
    fetch: Callable[[int | None, int], list[dict[str, Any]]], limit: int
) -> Iterator[list[dict[str, Any]]]:
    """Pages of a newest-first listing: ``fetch(before_id, n)`` until ``limit`` (0: all).

    Each page is its own read (``q.read``), keyed on the last id seen, so the
    first rows are printed while the rest are still unread, and a page that
    ``read`` must repeat is repeated whole, never printed twice.
    """
    before: int | None = None
    left = limit or None
    size = FIRST_PAGE
    while left is None or left > 0:
        n = size if left is None else min(size, left)
        page = fetch(before, n)
        if page:
            yield page
        if len(page) < n:
            return
        before = page[-1]["id"]
        if left is not None:
            left -= len(page)
        size = PAGE


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
@wide_option
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
    wide: bool,
    as_json: bool,
) -> None:
    """List runs, newest first (as the daemon received them): outcome, duration, counts, errors.

    On a terminal the table fits its width, one run per line; --wide or a
    pipe shows every column in full.
    """
    _note_cut_names(pipeline=pipeline, club=club)

    def fetch(before: int | None, n: int) -> list[dict[str, Any]]:
        return q.read(
            settings.db,
            lambda conn: q.list_runs(
                conn,
                pipeline=pipeline,
                club=club,
                outcome=outcome,
                since=since,
                limit=n,
                before=before,
            ),
        )

    if as_json:
        _echo_json({"runs": [run_json(r) for r in fetch(None, limit)]})
        return
    out = console()
    pages = _pages(fetch, limit)
    first = next(pages, None)
    if first is None:
        out.print("no runs match")
        return
    shown = print_runs(out, itertools.chain([first], pages), fit=fits(out, wide))
    _more_note(out, shown, limit, "run")


# -- show ----------------------------------------------------------------------------


@click.command()
@click.argument("run")
@click.option("--pipeline", "-p", default=None, help="With RUN `latest`: of this pipeline.")
@click.option("--club", "-c", default=None, help="With RUN `latest`: of this club.")
@click.option("--stack", is_flag=True, help="Print each error's stack (or stderr tail) in full.")
@wide_option
@_json_option
@uses_settings("db")
def show(
    settings: Settings,
    *,
    run: str,
    pipeline: str | None,
    club: str | None,
    stack: bool,
    wide: bool,
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
        _echo_json(show_json(found, steps, errs, parent, children))
        return
    out = console()
    fit = fits(out, wide)
    print_run(out, found, parent)
    if steps:
        out.print()
        print_steps(out, steps, fit=fit)
    else:
        out.print(Text("\nno steps", style="dim"))
    if errs:
        out.print()
        shown = errs[:SHOW_ERRORS]
        if stack:
            print_error_blocks(out, shown, total=len(errs))
        else:
            print_errors(out, [shown], fit=fit, with_run=False, title=f"Errors ({len(errs):,})")
        if len(errs) > len(shown):
            out.print(
                Text(
                    f"(the first {len(shown)} of {len(errs):,} errors; all of them: "
                    f"runtally errors --run {found['id']} --limit 0)",
                    style="dim",
                )
            )
    if children:
        out.print()
        print_runs(out, [children], fit=fit, title=f"Child runs ({len(children):,})")


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
@wide_option
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
    wide: bool,
    as_json: bool,
) -> None:
    """List errors, newest first: when, which run and step, which member, why.

    With --run latest, --pipeline/--club choose whose latest run.
    """
    _note_cut_names(pipeline=pipeline, club=club, step=step)
    run_id: int | None = None
    if run_ref is not None:
        run_id = q.read(
            settings.db, lambda conn: q.find_run(conn, run_ref, pipeline=pipeline, club=club)
        )["id"]

    def fetch(before: int | None, n: int) -> list[dict[str, Any]]:
        return q.read(
            settings.db,
            lambda conn: q.list_errors(
                conn,
                run_id=run_id,
                pipeline=pipeline,
                club=club,
                step=step,
                member=member,
                since=since,
                limit=n,
                before=before,
            ),
        )

    if as_json:
        _echo_json({"errors": [_pick(e, q.ERROR_FIELDS) for e in fetch(None, limit)]})
        return
    out = console()
    pages = _pages(fetch, limit)
    first = next(pages, None)
    if first is None:
        out.print("no errors match")
        return
    if stack:
        everything = [e for page in itertools.chain([first], pages) for e in page]
        print_error_blocks(out, everything)
        shown = len(everything)
    else:
        shown = print_errors(
            out, itertools.chain([first], pages), fit=fits(out, wide), with_run=True
        )
    _more_note(out, shown, limit, "error")
