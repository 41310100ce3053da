"""Retention: old runs, audit rows and dead letters purged through the one writer.

Theory of operation
-------------------
A trio task (``RetentionTask.run``) wakes once per ``interval_s``.  For each
table with a ``retention_days``, it hands the writer one small batch at a time
(a ``Job`` whose ``task`` is ``purge_batch``), waits for it, and hands the next
one, so events queued meanwhile are committed between two batches.  A batch is
one ``BEGIN IMMEDIATE`` ... ``COMMIT`` bounded by a number of rows; the task
measures how long each took and scales the next one toward ``TARGET_S``, so no
batch holds the write lock much longer than that whatever the rows cost on
this machine (the promise is 50 ms; the target leaves room for a slow fsync).

=============  ==============================  ==================================
table          a row is old when               a batch deletes, in this order
=============  ==============================  ==================================
runs           ``started_at`` < now - days     errors of up to N old runs (at
                                               most N), then their steps (at most
                                               N), then the runs themselves
audit_log      ``ts`` < now - days             up to N rows, never a purge record
dead_letters   ``received_at`` < now - days    up to N rows
=============  ==============================  ==================================

Every batch writes one ``retention_purge`` audit row in its own transaction.
For runs it carries what was removed per (pipeline, club): runs per outcome
and errors.  ``runtally metrics`` adds these to the rows still there, so the
``runtally_runs_total`` and ``runtally_errors_total`` counters never go down
when a purge removes runs (Prometheus would read that as a counter reset); this
is also why audit retention spares those rows.

Foreign keys are switched off for the batch's transaction (we delete the
children ourselves, and clear the references from child runs and audit rows):
with them on, SQLite would scan ``audit_log``, which has no index on
``run_id``, once per deleted run.
"""

from __future__ import annotations

import functools
import json
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import trio

from ..config import Retention
from ._log import logger
from ._records import PURGE_EVENT
from ._store import Store, StoreBusy, is_transient
from ._timefmt import iso_from_ms, now_ms
from ._writer import Job, Writer

__all__ = ["PURGE_EVENT", "TARGET_S", "BatchResult", "RetentionTask", "purge_batch"]

Table = Literal["runs", "audit_log", "dead_letters"]
#: The audit event of a purge batch (spared by audit retention, read by the metrics).
#: Aim of a batch's duration (seconds): well under the 50 ms promise, for fsync jitter.
TARGET_S = 0.01
_FIRST_LIMIT = 200
_MIN_LIMIT = 10
_MAX_LIMIT = 50_000
_DAY_MS = 86_400_000

_OLD_RUNS = "SELECT id FROM runs WHERE started_at < ? ORDER BY started_at LIMIT ?"
_IDS = "SELECT value FROM json_each(?)"


@dataclass(slots=True)
class BatchResult:
    """What one batch removed: ``rows`` of its table, ``children`` (steps and errors
    of runs), whether old rows are left (``more``), and its ``seconds``."""

    table: Table
    rows: int = 0
    children: int = 0
    more: bool = False
    seconds: float = 0.0
    #: [pipeline, club, outcome, runs] and [pipeline, club, errors] removed.
    runs: list[list[object]] = field(default_factory=list)
    errors: list[list[object]] = field(default_factory=list)


def _delete_runs(conn: sqlite3.Connection, cutoff: str, limit: int, out: BatchResult) -> None:
    ids = [row[0] for row in conn.execute(_OLD_RUNS, (cutoff, limit))]
    if not ids:
        return
    out.more = True  # unless the whole set goes below
    doomed = json.dumps(ids)
    errors = [
        row[0]
        for row in conn.execute(
            f"SELECT id FROM run_errors WHERE run_id IN ({_IDS}) LIMIT ?", (doomed, limit + 1)
        )
    ]
    if errors:
        some = json.dumps(errors[:limit])
        out.errors = [
            list(row)
            for row in conn.execute(
                "SELECT r.pipeline, r.club_slug, count(*) FROM run_errors e"
                f" JOIN runs r ON r.id = e.run_id WHERE e.id IN ({_IDS})"
                " GROUP BY r.pipeline, r.club_slug",
                (some,),
            )
        ]
        out.children += conn.execute(
            f"DELETE FROM run_errors WHERE id IN ({_IDS})", (some,)
        ).rowcount
        if len(errors) > limit:
            return  # the batch is full: the rest of their errors, steps and runs next time
    steps = [
        row[0]
        for row in conn.execute(
            f"SELECT id FROM run_steps WHERE run_id IN ({_IDS}) LIMIT ?", (doomed, limit + 1)
        )
    ]
    if steps:
        out.children += conn.execute(
            f"DELETE FROM run_steps WHERE id IN ({_IDS})", (json.dumps(steps[:limit]),)
        ).rowcount
        if len(steps) > limit:
            return
    out.runs = [
        list(row)
        for row in conn.execute(
            "SELECT pipeline, club_slug, coalesce(outcome, 'running'), count(*) FROM runs"
            f" WHERE id IN ({_IDS}) GROUP BY 1, 2, 3",
            (doomed,),
        )
    ]
    conn.execute(f"UPDATE runs SET parent_run_id = NULL WHERE parent_run_id IN ({_IDS})", (doomed,))
    conn.execute(
        f"UPDATE audit_log SET run_id = NULL WHERE run_id IS NOT NULL AND run_id IN ({_IDS})",
        (doomed,),
    )
    out.rows = conn.execute(f"DELETE FROM runs WHERE id IN ({_IDS})", (doomed,)).rowcount
    out.more = len(ids) == limit


def _delete_rows(
    conn: sqlite3.Connection, table: Table, cutoff: str, limit: int, out: BatchResult
) -> None:
    column, spare = {
        "audit_log": ("ts", f" AND event != '{PURGE_EVENT}'"),
        "dead_letters": ("received_at", ""),
    }[table]
    out.rows = conn.execute(
        f"DELETE FROM {table} WHERE id IN (SELECT id FROM {table}"
        f" WHERE {column} < ?{spare} ORDER BY {column} LIMIT ?)",
        (cutoff, limit),
    ).rowcount
    out.more = out.rows == limit


def purge_batch(store: Store, table: Table, cutoff_ms: int, limit: int) -> BatchResult:
    """Delete at most about ``limit`` rows older than ``cutoff_ms`` from ``table``, in one
    transaction with its audit row (in the writer's thread, as a ``Job.task``).

    Raises StoreBusy for a lock, a full disk or I/O (nothing written: the
    writer retries the job); any other sqlite3.Error propagates (nothing written).
    """
    conn = store.conn
    cutoff = iso_from_ms(cutoff_ms)
    out = BatchResult(table)
    started = time.perf_counter()
    conn.execute("PRAGMA foreign_keys = OFF")  # see the module docstring; outside a transaction
    try:
        conn.execute("BEGIN IMMEDIATE")
        if table == "runs":
            _delete_runs(conn, cutoff, limit, out)
        else:
            _delete_rows(conn, table, cutoff, limit, out)
        if out.rows or out.children:
            _audit(conn, out, cutoff, limit)
        conn.execute("COMMIT")
    except BaseException as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        if is_transient(exc):
            raise StoreBusy(str(exc)) from exc
        raise
    finally:
        conn.execute("PRAGMA foreign_keys = ON")
        if table == "runs":
            store.forget_cached()  # cached ids of purged runs and steps must not be reused
    out.seconds = time.perf_counter() - started
    return out


def _audit(conn: sqlite3.Connection, out: BatchResult, cutoff: str, limit: int) -> None:
    what = f"{out.rows} {out.table} row(s)"
    if out.children:
        what += f" and {out.children} step/error row(s)"
    data = {
        "table": out.table,
        "cutoff": cutoff,
        "rows": out.rows,
        "children": out.children,
        "limit": limit,
        "runs": out.runs,
        "errors": out.errors,
    }
    conn.execute(
        "INSERT INTO audit_log (ts, level, run_id, scope, event, message, data_json)"
        " VALUES (?, 'info', NULL, 'retention', ?, ?, ?)",
        (
            iso_from_ms(now_ms()),
            PURGE_EVENT,
            f"purged {what} older than {cutoff}",
            json.dumps(data),
        ),
    )


def next_limit(limit: int, seconds: float, target_s: float = TARGET_S) -> int:
    """The next batch's row bound: scaled toward ``target_s``, growing at most 1.5x a step."""
    scale = min(1.5, target_s / max(seconds, 1e-4))
    return max(_MIN_LIMIT, min(_MAX_LIMIT, int(limit * scale)))


class RetentionTask:
    """Purges what ``days`` says is too old, once per ``interval_s``, through ``writer``.

    ``first_limit``: rows of a table's first batch; ``clock_ms``: the wall
    clock in epoch ms (tests pass their own).
    """

    def __init__(
        self,
        days: Retention,
        writer: Writer,
        *,
        interval_s: float = 3600.0,
        target_s: float = TARGET_S,
        first_limit: int = _FIRST_LIMIT,
        clock_ms: Callable[[], int] = now_ms,
    ) -> None:
        self.days = days
        self.writer = writer
        self.interval_s = interval_s
        self.target_s = target_s
        self.clock_ms = clock_ms
        self.first_limit = first_limit
        #: Rows per batch per table, as adapted so far.
        self.limits: dict[Table, int] = {}
        #: Every batch's duration, seconds (the benchmark reads it).
        self.batch_seconds: list[float] = []

    @property
    def enabled(self) -> bool:
        """Some table has a retention."""
        return any(getattr(self.days, t) is not None for t in ("runs", "audit_log", "dead_letters"))

    async def run(self) -> None:
        """Purge now, then every ``interval_s``, until cancelled."""
        if not self.enabled:
            return
        while True:
            await self.purge_once()
            await trio.sleep(self.interval_s)

    async def purge_once(self) -> dict[Table, int]:
        """One pass over every table with a retention; rows removed per table."""
        removed: dict[Table, int] = {}
        now = self.clock_ms()
        table: Table
        for table in ("runs", "dead_letters", "audit_log"):
            days = getattr(self.days, table)
            if days is not None:
                removed[table] = await self._purge(table, now - days * _DAY_MS)
        return removed

    async def _purge(self, table: Table, cutoff_ms: int) -> int:
        total = 0
        while True:
            limit = self.limits.get(table, self.first_limit)
            job = Job(
                task=functools.partial(purge_batch, table=table, cutoff_ms=cutoff_ms, limit=limit)
            )
            await self.writer.submit(job)
            await job.done.wait()
            result = job.outcome
            if not isinstance(result, BatchResult):
                logger.error("retention of %s failed: %r", table, result)
                return total
            self.batch_seconds.append(result.seconds)
            self.limits[table] = next_limit(limit, result.seconds, self.target_s)
            total += result.rows
            if not result.more:
                if total:
                    logger.info("retention: purged %d %s row(s)", total, table)
                return total
