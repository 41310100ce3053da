"""What the monitor reads each tick, on a read-only connection of its own.

Every query is an index range (``idx_runs_pipeline_id``,
``idx_runs_outcome_id``, ``idx_run_errors_run_id``), so a tick costs the
same on 1M runs as on ten.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import msgspec

from .._text import db_text
from ._dbfiles import CACHE_SIZE, sqlite_uri
from ._states import RunInfo, Snapshot
from ._timefmt import ms_from_iso

__all__ = ["Running", "Stored", "open_reader", "read_running", "read_snapshot", "read_stored"]

#: The marker the monitor puts in the summary of a run it closes as crashed.
CRASH_MARK = "runtally_closed"


class Running(msgspec.Struct, frozen=True):
    """A run still marked running, with what tells whether its process lives."""

    id: int
    uid: str | None
    pipeline: str
    started_ms: int
    pid: int | None
    start: int | None  # the process's start time, clock ticks since boot
    meta_pid: int | None  # the pid the client put in meta (spooled run_start)
    meta_host: str | None
    open_steps: tuple[str, ...] = ()  # uids of its steps with no end yet


class Stored(msgspec.Struct):
    """A pipeline_states row: what the monitor last wrote."""

    pipeline: str
    state: str
    since_ms: int
    paused: bool
    first_seen_ms: int
    last_run_id: int | None = None
    expected_ms: int | None = None
    next_expected_ms: int | None = None
    alerted_state: str | None = None
    alerted_ms: int | None = None


def open_reader(path: Path) -> sqlite3.Connection:
    """A read-only connection (``mode=ro``), usable from any one thread at a time."""
    conn = sqlite3.connect(sqlite_uri(path, "mode=ro"), uri=True, check_same_thread=False)
    conn.text_factory = db_text
    conn.execute("PRAGMA busy_timeout = 5000")
    conn.execute(f"PRAGMA cache_size = {CACHE_SIZE}")  # resident memory, like the writer's
    return conn


def _ms(text: str | None) -> int | None:
    return ms_from_iso(text) if text else None


def pipeline_names(conn: sqlite3.Connection) -> list[str]:
    """Every pipeline that has a run: a skip scan of idx_runs_pipeline_id."""
    return [
        name
        for (name,) in conn.execute(
            "WITH RECURSIVE p(name) AS ("
            " SELECT min(pipeline) FROM runs"
            " UNION ALL SELECT (SELECT min(pipeline) FROM runs WHERE pipeline > p.name)"
            " FROM p WHERE p.name IS NOT NULL)"
            " SELECT name FROM p WHERE name IS NOT NULL"
        )
    ]


def read_snapshot(conn: sqlite3.Connection, pipeline: str, streak_limit: int) -> Snapshot:
    """``pipeline``'s newest run (with its errors) and its failure streak."""
    row = conn.execute(
        "SELECT id, uid, club_slug, started_at, outcome, finished_at, duration_ms,"
        f" CASE WHEN json_valid(summary_json) THEN json_extract(summary_json, '$.{CRASH_MARK}')"
        " END, received_at FROM runs WHERE pipeline = ? ORDER BY id DESC LIMIT 1",
        (pipeline,),
    ).fetchone()
    if row is None:
        return Snapshot(pipeline)
    count, first = conn.execute(
        "SELECT count(*), (SELECT error_message FROM run_errors WHERE run_id = ?1"
        " ORDER BY id LIMIT 1) FROM run_errors WHERE run_id = ?1",
        (row[0],),
    ).fetchone()
    last = RunInfo(
        id=row[0],
        uid=row[1],
        club=row[2],
        started_ms=ms_from_iso(row[3]),
        outcome=row[4],
        finished_ms=_ms(row[5]),
        duration_ms=row[6],
        crashed=row[7] == "crashed",
        error_count=count,
        first_error=first,
        received_ms=_ms(row[8]),
    )
    streak = 0
    for (outcome,) in conn.execute(
        "SELECT outcome FROM runs WHERE pipeline = ? AND outcome IN ('success', 'failure')"
        " ORDER BY id DESC LIMIT ?",
        (pipeline, streak_limit),
    ):
        if outcome != "failure":
            break
        streak += 1
    return Snapshot(pipeline, last, streak)


def read_running(conn: sqlite3.Connection) -> list[Running]:
    """Every run still marked running."""
    out = []
    for row in conn.execute(
        "SELECT id, uid, pipeline, started_at, peer_pid, peer_start,"
        " CASE WHEN json_valid(meta_json) THEN json_extract(meta_json, '$.pid') END,"
        " CASE WHEN json_valid(meta_json) THEN json_extract(meta_json, '$.host') END"
        " FROM runs WHERE outcome = 'running'"
    ):
        # (a pid is > 0: a spooled run_start's "pid": -1 or 0 named no process)
        meta_pid = row[6] if isinstance(row[6], int) and row[6] > 0 else None
        meta_host = row[7] if isinstance(row[7], str) else None
        steps = tuple(
            uid
            for (uid,) in conn.execute(
                "SELECT uid FROM run_steps WHERE run_id = ? AND finished_at IS NULL"
                " AND uid IS NOT NULL ORDER BY id",
                (row[0],),
            )
        )
        out.append(
            Running(
                row[0],
                row[1],
                row[2],
                ms_from_iso(row[3]),
                row[4],
                row[5],
                meta_pid,
                meta_host,
                steps,
            )
        )
    return out


def read_stored(conn: sqlite3.Connection) -> dict[str, Stored]:
    """Every pipeline_states row by pipeline."""
    out = {}
    for row in conn.execute(
        "SELECT pipeline, state, since, paused, first_seen_at, last_run_id, expected_at,"
        " next_expected_at, alerted_state, alerted_at FROM pipeline_states"
    ):
        out[row[0]] = Stored(
            pipeline=row[0],
            state=row[1],
            since_ms=ms_from_iso(row[2]),
            paused=bool(row[3]),
            first_seen_ms=ms_from_iso(row[4]),
            last_run_id=row[5],
            expected_ms=_ms(row[6]),
            next_expected_ms=_ms(row[7]),
            alerted_state=row[8],
            alerted_ms=_ms(row[9]),
        )
    return out
