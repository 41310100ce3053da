"""What the metrics say, gathered as plain data (no prometheus_client here).

Three sources, each read the way ``runtally status`` reads it and none of them
ever written: the database through the one read-only opening
(``cli._query.read``), the daemon's ``status`` reply over its socket, and the
spool directory.  A source that cannot be read leaves its part empty and says
so (``database_up``/``daemon`` None); gathering never raises for it.

Pipeline states: ``pipeline_states(conn)`` derives ``ok``/``running``/``failing``
from each pipeline's newest run and takes the monitor's judgement from the
``pipeline_states`` table (pipeline, club_slug, state) where it has one.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path

import msgspec

from ..cli._ask import ask
from ..cli._errors import CliError
from ..cli._health import spool_section
from ..cli._query import read
from ..daemon._readonly import table_names
from ..daemon._records import PURGE_EVENT
from ..daemon._timefmt import parse_iso
from ..protocol import Status, StatusReply
from ..states import STATES

__all__ = ["STATES", "PipelineFacts", "Snapshot", "gather", "pipeline_states"]

#: A finished run's outcomes, the ``outcome`` label of ``runtally_runs_total``.
OUTCOMES = ("success", "failure")
_DERIVED = {"success": "ok", "failure": "failing", "running": "running"}

Key = tuple[str, str]  # (pipeline, club_slug)


class PipelineFacts(msgspec.Struct, kw_only=True):
    """One (pipeline, club): its state and what its runs add up to.

    Times are epoch seconds; ``runs`` counts finished runs per outcome and
    ``errors`` error rows, both including those purged by retention.
    """

    pipeline: str
    club: str
    state: str | None = None
    last_success_s: float | None = None
    last_duration_s: float | None = None
    runs: dict[str, int] = msgspec.field(default_factory=dict)
    errors: int = 0


class Snapshot(msgspec.Struct, kw_only=True):
    """Everything one exposition shows (sizes in bytes, ages in seconds)."""

    pipelines: list[PipelineFacts] = msgspec.field(default_factory=list)
    database_up: bool = False
    database_error: str | None = None
    database_bytes: int | None = None
    wal_bytes: int | None = None
    parked_events: int | None = None
    dead_letters: int | None = None
    daemon: StatusReply | None = None
    daemon_error: str | None = None
    spool_files: int = 0
    spool_oldest_age_s: float = 0.0
    spool_corrupt_files: int = 0
    taken_at: float = 0.0  # epoch seconds


def _seconds(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return parse_iso(text).timestamp()
    except ValueError:
        return None


def pipeline_states(
    conn: sqlite3.Connection, clubs: Mapping[str, str] | None = None
) -> dict[Key, str]:
    """Each (pipeline, club)'s state: ``ok``/``running``/``failing`` from its newest
    run (by ``id``: the order the daemon received them), overridden by the
    monitor's judgement where its ``pipeline_states`` table has one.  A state
    row without a club applies to every club the pipeline ran in; when it never
    ran (a declared pipeline, late or missed), to the club it is declared for
    in ``clubs`` (its ``[pipelines]`` table's ``club``), else ``""``."""
    rows = conn.execute(
        "SELECT pipeline, club_slug, coalesce(outcome, 'running'), max(id)"
        " FROM runs GROUP BY club_slug, pipeline"
    )
    states = {(p, c): _DERIVED.get(o, "running") for p, c, o, _ in rows}
    if "pipeline_states" not in table_names(conn):
        return states
    for p, c, s in conn.execute("SELECT pipeline, club_slug, state FROM pipeline_states"):
        if c is not None:
            keys = [(p, c)]
        else:  # (a scan of every pair: only for a row without a club)
            keys = [k for k in states if k[0] == p] or [(p, (clubs or {}).get(p, ""))]
        for key in keys:
            states[key] = s
    return states


def _purged(conn: sqlite3.Connection) -> tuple[dict[tuple[str, str, str], int], dict[Key, int]]:
    """Runs per (pipeline, club, outcome) and errors per (pipeline, club) removed by retention."""
    runs: dict[tuple[str, str, str], int] = {}
    errors: dict[Key, int] = {}
    rows = conn.execute(
        "SELECT data_json FROM audit_log WHERE event = ? AND scope = 'retention'", (PURGE_EVENT,)
    )
    for (data_json,) in rows:
        try:
            data = json.loads(data_json or "{}")
            for p, c, o, n in data.get("runs") or ():
                runs[p, c, o] = runs.get((p, c, o), 0) + int(n)
            for p, c, n in data.get("errors") or ():
                errors[p, c] = errors.get((p, c), 0) + int(n)
        except (ValueError, TypeError):
            continue  # a row we did not write: not ours to count
    return runs, errors


def _pipelines(conn: sqlite3.Connection, clubs: Mapping[str, str] | None) -> list[PipelineFacts]:
    facts: dict[Key, PipelineFacts] = {}

    def of(key: Key) -> PipelineFacts:
        if key not in facts:
            facts[key] = PipelineFacts(pipeline=key[0], club=key[1])
        return facts[key]

    for key, state in pipeline_states(conn, clubs).items():
        of(key).state = state
    for p, c, finished in conn.execute(
        "SELECT pipeline, club_slug, max(finished_at) FROM runs"
        " WHERE outcome = 'success' GROUP BY club_slug, pipeline"
    ):
        of((p, c)).last_success_s = _seconds(finished)
    for p, c, ms, _ in conn.execute(
        "SELECT pipeline, club_slug, duration_ms, max(started_at) FROM runs"
        " WHERE finished_at IS NOT NULL GROUP BY club_slug, pipeline"
    ):
        of((p, c)).last_duration_s = None if ms is None else ms / 1000
    purged_runs, purged_errors = _purged(conn)
    for (p, c, o), n in purged_runs.items():
        if o in OUTCOMES:
            runs = of((p, c)).runs
            runs[o] = runs.get(o, 0) + n
    for p, c, o, n in conn.execute(
        "SELECT pipeline, club_slug, outcome, count(*) FROM runs"
        " WHERE outcome IN ('success', 'failure') GROUP BY club_slug, pipeline, outcome"
    ):
        runs = of((p, c)).runs
        runs[o] = runs.get(o, 0) + n
    for (p, c), n in purged_errors.items():
        of((p, c)).errors += n
    for p, c, n in conn.execute(
        "SELECT r.pipeline, r.club_slug, count(*) FROM run_errors e"
        " JOIN runs r ON r.id = e.run_id GROUP BY r.club_slug, r.pipeline"
    ):
        of((p, c)).errors += n
    return [facts[k] for k in sorted(facts)]


def _size(path: Path) -> int | None:
    try:
        return os.stat(path).st_size
    except OSError:
        return None


def gather(
    db: Path,
    socket: Path,
    spool: Path,
    *,
    timeout: float = 1.0,
    clubs: Mapping[str, str] | None = None,
) -> Snapshot:
    """Read the database, ask the daemon (``timeout`` seconds) and look at the spool.

    ``clubs``: the club of each declared pipeline that has one (its label
    before its first run; found by a new user: ``club=""`` while the config
    said ``rondo``, and a new series at the first run).
    """
    now = time.time()
    snap = Snapshot(taken_at=now)
    snap.database_bytes = _size(db)
    snap.wal_bytes = _size(db.with_name(db.name + "-wal"))

    def database(conn: sqlite3.Connection) -> None:
        snap.pipelines = _pipelines(conn, clubs)
        snap.parked_events = conn.execute("SELECT count(*) FROM parked_events").fetchone()[0]
        snap.dead_letters = conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0]

    try:
        read(db, database)
        snap.database_up = True
    except CliError as exc:
        snap.database_error = str(exc)
    try:
        reply = ask(socket, Status(), timeout=timeout)
    except CliError as exc:
        snap.daemon_error = str(exc)
    else:
        if isinstance(reply, StatusReply):
            snap.daemon = reply
        else:
            snap.daemon_error = f"unexpected {type(reply).__name__} reply to status"
    found = spool_section(spool, now, max_age=float("inf"))
    snap.spool_files = found.pending_files
    snap.spool_oldest_age_s = found.oldest_age_s or 0.0
    snap.spool_corrupt_files = found.corrupt_files
    return snap
