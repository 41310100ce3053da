"""The errors page's reads: keyset pages and the grouped view, fast for any pipeline filter.

Errors are listed newest first (the order the daemon received them in: ``id``).  With a pipeline
filter (a column of ``runs``, not of ``run_errors``) that walk is fast when
the pipeline has recent errors and reads every error when it has none.  So
a pipeline filter first walks a bounded window of the newest errors (plan A);
only when the window does not fill the page are the errors fetched through
the pipeline's runs instead (plan B: ``runs`` first, errors by ``run_id``,
then sorted).  Both are exact; the window bounds what plan A reads.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any

from ..cli import _query as q
from ._queries import Page, keyset

__all__ = ["GROUP_SCAN", "ErrorFilter", "error_groups", "errors_page"]

#: Newest matching errors the grouped view counts (bounds its cost on any database).
GROUP_SCAN = 10_000
#: Errors plan A reads at most before a pipeline-filtered query switches to plan B.
WINDOW = 20_000

_JOIN = "FROM run_errors e JOIN runs r ON r.id = e.run_id"
# CROSS JOIN fixes SQLite's join order (its documented way): plan A loops over
# the errors by created_at, plan B over the pipeline's runs.  Left to itself the
# planner takes the runs first whenever runs has an index on the pipeline.
_ERRORS_FIRST = "FROM run_errors e CROSS JOIN runs r ON r.id = e.run_id"
_RUNS_FIRST = "FROM runs r CROSS JOIN run_errors e ON e.run_id = r.id"
_SELECT_ERRORS_FIRST = q._ERROR_SELECT.replace(_JOIN, _ERRORS_FIRST)
_SELECT_RUNS_FIRST = q._ERROR_SELECT.replace(_JOIN, _RUNS_FIRST)


@dataclass(frozen=True, slots=True)
class ErrorFilter:
    """Filters of the errors page; ``text`` is a case-insensitive substring of the message."""

    run_id: int | None = None
    pipeline: str | None = None
    club: str | None = None
    step: str | None = None
    member: str | None = None
    since: str | None = None
    until: str | None = None
    text: str | None = None


def _error_where(f: ErrorFilter) -> tuple[list[str], list[Any]]:
    """SQL conditions for ``f``.  With a pipeline filter the club test is ``+e.club_slug``:
    the unary plus keeps SQLite from walking idx_run_errors_club_step (every error of
    the club) instead of the plan chosen below."""
    where: list[str] = []
    params: list[Any] = []
    for column, value in (
        ("e.run_id", f.run_id),
        ("r.pipeline", f.pipeline),
        ("+e.club_slug" if _needs_plans(f) else "e.club_slug", f.club),
        ("e.step_name", f.step),
        ("e.member_identifier", f.member),
    ):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    if f.since is not None:
        where.append("e.created_at >= ?")
        params.append(f.since)
    if f.until is not None:
        where.append("e.created_at < ?")
        params.append(f.until)
    if f.text:
        escaped = f.text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        where.append("e.error_message LIKE ? ESCAPE '\\'")
        params.append(f"%{escaped}%")
    return where, params


def _needs_plans(f: ErrorFilter) -> bool:
    """A pipeline filter not already narrowed by an indexed error column."""
    return f.pipeline is not None and f.run_id is None and f.member is None and f.step is None


def _window(conn: sqlite3.Connection, cursor: int | None, descending: bool) -> int | None:
    """The id of the WINDOW-th error from the cursor (None: fewer errors than that)."""
    op, order = ("<", "DESC") if descending else (">", "ASC")
    where, params = "", []
    if cursor is not None:
        where, params = f"WHERE id {op} ?", [cursor]
    row = conn.execute(
        f"SELECT id FROM run_errors {where} ORDER BY id {order} LIMIT 1 OFFSET ?",
        [*params, WINDOW],
    ).fetchone()
    return None if row is None else row[0]


def _page(
    conn: sqlite3.Connection,
    select: str,
    where: list[str],
    params: list[Any],
    *,
    before: int | None,
    after: int | None,
    limit: int,
) -> Page:
    return keyset(
        conn,
        select,
        where,
        params,
        alias="e",
        before=before,
        after=after,
        limit=limit,
    )


def errors_page(
    conn: sqlite3.Connection,
    f: ErrorFilter,
    *,
    before: int | None = None,
    after: int | None = None,
    limit: int = 100,
) -> Page:
    """A page of errors (``ERROR_FIELDS`` dicts) matching ``f``, newest first."""
    where, params = _error_where(f)
    page: Page | None = None
    if not _needs_plans(f):
        page = _page(conn, q._ERROR_SELECT, where, params, before=before, after=after, limit=limit)
    else:
        descending = after is None
        bound = _window(conn, after if not descending else before, descending)
        if bound is None:  # the whole remaining range is small: plan A reads it all
            page = _page(
                conn, _SELECT_ERRORS_FIRST, where, params, before=before, after=after, limit=limit
            )
        else:
            windowed = [*where, f"e.id {'>=' if descending else '<='} ?"]
            page = _page(
                conn,
                _SELECT_ERRORS_FIRST,
                windowed,
                [*params, bound],
                before=before,
                after=after,
                limit=limit,
            )
            filled = page.older if descending else page.newer
            if filled is None:  # fewer matches than a page in the window: plan B
                page = _page(
                    conn, _SELECT_RUNS_FIRST, where, params, before=before, after=after, limit=limit
                )
    page.rows = [{k: e[k] for k in q.ERROR_FIELDS} for e in page.rows]
    return page


def error_groups(
    conn: sqlite3.Connection, f: ErrorFilter, *, limit: int = 100
) -> list[dict[str, Any]]:
    """Errors matching ``f`` grouped by (step, message), biggest group first.

    Counts the newest ``GROUP_SCAN`` matching errors only (with a pipeline
    filter: the errors of the pipeline's newest runs, read run by run through
    ``idx_runs_pipeline_id``, which needs no sort), so one cause that
    failed many members shows as one line: ``{step_name, error_message,
    errors, members, runs, first_at, last_at, last_run_id, sample_members}``.
    """
    where, params = _error_where(f)
    if _needs_plans(f):
        join, order = _RUNS_FIRST, "r.id DESC"
    elif f.pipeline is not None:  # groups need no arrival order: walk created_at's index
        join, order = _JOIN, "e.created_at DESC, e.id DESC"
    else:  # no condition on runs: no lookup of each error's run
        join, order = "FROM run_errors e", "e.created_at DESC, e.id DESC"
    inner = (
        "SELECT e.id, e.run_id, e.step_name, e.member_identifier, e.error_message,"
        f" e.created_at {join}"
        + (" WHERE " + " AND ".join(where) if where else "")
        + f" ORDER BY {order} LIMIT ?"
    )
    rows = conn.execute(
        "SELECT step_name, error_message, count(*) AS errors,"
        " count(DISTINCT member_identifier) AS members, count(DISTINCT run_id) AS runs,"
        " min(created_at) AS first_at, max(created_at) AS last_at, max(run_id) AS last_run_id,"
        " substr(group_concat(DISTINCT member_identifier), 1, 400) AS sample"
        f" FROM ({inner}) GROUP BY step_name, error_message"
        " ORDER BY errors DESC, last_at DESC LIMIT ?",
        [*params, GROUP_SCAN, limit],
    ).fetchall()
    out = []
    for r in rows:
        item = dict(r)
        sample = item.pop("sample") or ""
        item["sample_members"] = [m for m in sample.split(",") if m][:10]
        out.append(item)
    return out
