"""What the dashboard reads: keyset pages of runs and errors, the overview, a pipeline's history.

Every function takes a read-only ``sqlite3.Connection`` from the CLI's
``_query.read`` and runs in a worker thread.  Runs and errors come back
in exactly the CLI's ``--json`` shapes (``_query.RUN_FIELDS`` and
``ERROR_FIELDS``, built on the CLI's own SELECTs), so ``/api/runs`` and
``runtally runs --json`` agree.  Pages are keyset-paginated on ``id`` (the
order the daemon received rows in, as in the CLI): a cursor is the id of the
row the page continues from, and every page is an index range, never an OFFSET.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from typing import Any

from ..cli import _query as q
from ..cli._read import run_json, show_json

__all__ = [
    "Page",
    "RunFilter",
    "overview",
    "pipeline_history",
    "run_detail",
    "runs_page",
]

#: Runs in the overview's success strip and duration sparkline.
STRIP_RUNS = 30


@dataclass(frozen=True, slots=True)
class RunFilter:
    """Filters of the runs page; ``since``/``until`` are stored-format UTC ISO strings."""

    pipeline: str | None = None
    club: str | None = None
    outcome: str | None = None
    since: str | None = None
    until: str | None = None


@dataclass(slots=True)
class Page:
    """One page of rows, newest first; ``older``/``newer`` are cursors (row ids) or None."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    older: int | None = None
    newer: int | None = None


def keyset(
    conn: sqlite3.Connection,
    select: str,
    where: list[str],
    params: list[Any],
    *,
    alias: str,
    before: int | None,
    after: int | None,
    limit: int,
) -> Page:
    """Rows of ``select`` newest first, the page older than ``before`` or newer than ``after``.

    "Newest" is the order the daemon received rows in (``id``), as in the CLI:
    a client clock that was wrong must not hide a row behind older ones.
    """
    descending = after is None
    cursor = before if before is not None else after
    if cursor is not None:
        where = [*where, f"{alias}.id {'<' if descending else '>'} ?"]
        params = [*params, cursor]
    order = "DESC" if descending else "ASC"
    sql = select + (" WHERE " + " AND ".join(where) if where else "")
    sql += f" ORDER BY {alias}.id {order} LIMIT ?"
    rows = [dict(r) for r in conn.execute(sql, [*params, limit + 1]).fetchall()]
    more = len(rows) > limit
    rows = rows[:limit]
    if not descending:
        rows.reverse()
    page = Page(rows)
    if rows:
        if descending:
            page.older = rows[-1]["id"] if more else None
            page.newer = rows[0]["id"] if cursor is not None else None
        else:
            page.older = rows[-1]["id"]  # we came from there: older rows exist
            page.newer = rows[0]["id"] if more else None
    return page


def _run_where(f: RunFilter) -> tuple[list[str], list[Any]]:
    where: list[str] = []
    params: list[Any] = []
    for column, value in (("r.pipeline", f.pipeline), ("r.club_slug", f.club)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    if f.outcome is not None:
        where.append("r.outcome = ?" if f.outcome != "running" else "r.outcome = 'running'")
        if f.outcome != "running":
            params.append(f.outcome)
    if f.since is not None:
        where.append("r.started_at >= ?")
        params.append(f.since)
    if f.until is not None:
        where.append("r.started_at < ?")
        params.append(f.until)
    return where, params


def runs_page(
    conn: sqlite3.Connection,
    f: RunFilter,
    *,
    before: int | None = None,
    after: int | None = None,
    limit: int = 50,
) -> Page:
    """A page of runs (``RUN_FIELDS`` dicts) matching ``f``, newest first."""
    where, params = _run_where(f)
    page = keyset(
        conn,
        q._RUN_SELECT,
        where,
        params,
        alias="r",
        before=before,
        after=after,
        limit=limit,
    )
    page.rows = [run_json(r) for r in page.rows]
    return page


def run_detail(conn: sqlite3.Connection, ref: str) -> dict[str, Any]:
    """``runtally show RUN --json``: run (with summary and meta), steps, errors, parent, children.

    Raises RunNotFound (from ``_query.find_run``) when there is no such run.
    """
    found = q.find_run(conn, ref)
    return show_json(
        found,
        q.steps_of(conn, found["id"]),
        q.errors_of(conn, found["id"]),
        q.parent_of(conn, found),
        q.children_of(conn, found),
    )


#: The (club_slug, pipeline) of run ``:key``: a pair used as a key without being
#: read into Python and passed back, which a name that is not UTF-8 (read as
#: ``\\xNN``) would not survive (found from outside: the scan below went round
#: for ever, then the overview's queries found no runs for such a name).
_SAME_PAIR = (
    "club_slug = (SELECT club_slug FROM runs WHERE id = :key)"
    " AND pipeline = (SELECT pipeline FROM runs WHERE id = :key)"
)


def _pipelines(conn: sqlite3.Connection) -> list[tuple[str, str, int]]:
    """Every (club_slug, pipeline, the id of one of its runs): a skip scan of
    ``idx_runs_club_pipeline``, one seek each, from run id to run id in SQL.

    ``(club_slug, pipeline) > (?, ?)`` would walk every run of the current
    pipeline; equality on the club and a range on the pipeline seeks instead.
    """
    return conn.execute(
        "WITH RECURSIVE p(id) AS ("
        " SELECT (SELECT id FROM runs ORDER BY club_slug, pipeline LIMIT 1)"
        " UNION ALL SELECT coalesce("
        "  (SELECT n.id FROM runs n WHERE n.club_slug = r.club_slug AND n.pipeline > r.pipeline"
        "   ORDER BY n.club_slug, n.pipeline LIMIT 1),"
        "  (SELECT n.id FROM runs n WHERE n.club_slug > r.club_slug"
        "   ORDER BY n.club_slug, n.pipeline LIMIT 1))"
        " FROM p JOIN runs r ON r.id = p.id)"
        " SELECT r.club_slug, r.pipeline, r.id FROM p JOIN runs r ON r.id = p.id"
    ).fetchall()


#: Order of pipelines on the overview: the ones needing attention first.
_ATTENTION = {"failure": 0, "running": 1}


def overview(conn: sqlite3.Connection, *, day_ago: str, week_ago: str) -> list[dict[str, Any]]:
    """One dict per (club, pipeline): last run, 24 h / 7 d counts, the last runs for strips.

    ``{pipeline, club_slug, last: RUN_FIELDS dict, runs_24h, failures_24h, runs_7d,
    failures_7d, recent: [{id, outcome, duration_ms, started_at}] oldest first}``;
    failing, then running pipelines first, then by name.
    """
    out = []
    for club, pipeline, key in _pipelines(conn):
        recent = [
            dict(r)
            for r in conn.execute(
                "SELECT id, outcome, duration_ms, started_at FROM runs"
                f" WHERE {_SAME_PAIR} ORDER BY id DESC LIMIT :limit",
                {"key": key, "limit": STRIP_RUNS},
            )
        ]
        last = dict(conn.execute(q._RUN_SELECT + " WHERE r.id = ?", (recent[0]["id"],)).fetchone())
        counts = conn.execute(
            "SELECT count(*), coalesce(sum(outcome = 'failure'), 0),"
            " coalesce(sum(started_at >= :day), 0),"
            " coalesce(sum(started_at >= :day AND outcome = 'failure'), 0)"
            f" FROM runs WHERE {_SAME_PAIR} AND started_at >= :week",
            {"day": day_ago, "key": key, "week": week_ago},
        ).fetchone()
        recent.reverse()
        out.append(
            {
                "pipeline": pipeline,
                "club_slug": club,
                "last": run_json(last),
                "runs_7d": counts[0],
                "failures_7d": counts[1],
                "runs_24h": counts[2],
                "failures_24h": counts[3],
                "recent": recent,
            }
        )
    out.sort(key=lambda p: (_ATTENTION.get(p["last"]["outcome"], 2), p["pipeline"], p["club_slug"]))
    return out


def pipeline_history(
    conn: sqlite3.Connection,
    pipeline: str,
    *,
    club: str | None,
    since_day: str,
    runs: int = 200,
) -> dict[str, Any]:
    """A pipeline's last ``runs`` runs (oldest first) and its success rate per UTC day.

    ``{pipeline, club_slug, clubs, runs: [{id, started_at, duration_ms, outcome,
    total_created, total_updated, total_skipped, total_failed}], days: [{day,
    runs, successes, failures}]}``; ``club`` None means every club.
    """
    where, params = "pipeline = ?", [pipeline]
    if club is not None:
        where += " AND club_slug = ?"
        params.append(club)
    rows = [
        dict(r)
        for r in conn.execute(
            "SELECT id, started_at, duration_ms, outcome, total_created, total_updated,"
            f" total_skipped, total_failed FROM runs WHERE {where}"
            " ORDER BY started_at DESC, id DESC LIMIT ?",
            [*params, runs],
        )
    ]
    rows.reverse()
    days = [
        dict(r)
        for r in conn.execute(
            "SELECT substr(started_at, 1, 10) AS day, count(*) AS runs,"
            " sum(outcome = 'success') AS successes, sum(outcome = 'failure') AS failures"
            f" FROM runs WHERE {where} AND started_at >= ? GROUP BY day ORDER BY day",
            [*params, since_day],
        )
    ]
    clubs = [c for c, p, _ in _pipelines(conn) if p == pipeline]
    return {"pipeline": pipeline, "club_slug": club, "clubs": clubs, "runs": rows, "days": days}
