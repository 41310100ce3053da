"""Retention under load: purge N old runs (default 1M) while events keep arriving.  ONE JSON object.

A database with N runs 100 days old (each with one step, every fifth with two
errors) and a retention of 90 days.  The real Writer and RetentionTask run in
trio, as in the daemon, while a producer submits one small run's events
every ``--interval-ms``.  Every transaction the writer commits is timed in its
thread (purge batches and event batches alike); the promise is that none
takes longer than 50 ms, so no event waits behind a long write lock.

    .venv/bin/python benchmarks/bench_retention.py [--runs 1000000] [--interval-ms 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio
from _bench import machine

from runtally.config import Retention
from runtally.daemon._retention import RetentionTask
from runtally.daemon._store import Store
from runtally.daemon._timefmt import iso_from_ms
from runtally.daemon._writer import Job, Writer
from runtally.protocol import ErrorEvent, RunEnd, RunStart, StepEnd, StepStart

NOW = int(time.time() * 1000)
OLD = NOW - 100 * 86_400_000


def build(path: Path, runs: int) -> None:
    """``runs`` old runs straight into the tables (the store would take an hour for 1M)."""
    store = Store.open(path, synchronous="NORMAL")
    conn = store.conn
    conn.execute("BEGIN")
    chunk = 50_000
    for start in range(0, runs, chunk):
        ids = range(start + 1, min(runs, start + chunk) + 1)
        conn.executemany(
            "INSERT INTO runs (id, uid, pipeline, club_slug, started_at, finished_at, duration_ms,"
            " outcome) VALUES (?, ?, 'people', 'rondo', ?, ?, 1000, ?)",
            [
                (i, f"r{i}", iso_from_ms(OLD + i), iso_from_ms(OLD + i + 1000),
                 "failure" if i % 5 == 0 else "success")
                for i in ids
            ],
        )  # fmt: skip
        conn.executemany(
            "INSERT INTO run_steps (id, uid, run_id, step_name, started_at, finished_at, outcome,"
            " created_count) VALUES (?, ?, ?, 'download', ?, ?, 'success', 10)",
            [(i, f"s{i}", i, iso_from_ms(OLD + i), iso_from_ms(OLD + i + 900)) for i in ids],
        )
        conn.executemany(
            "INSERT INTO run_errors (uid, run_id, run_step_id, step_name, error_message,"
            " created_at) VALUES (?, ?, ?, 'download', 'email rejected', ?)",
            [
                (f"e{i}-{k}", i, i, iso_from_ms(OLD + i + 500))
                for i in ids
                if i % 5 == 0
                for k in (0, 1)
            ],
        )
    conn.execute("COMMIT")
    store.checkpoint()
    store.close()


class TimedWriter(Writer):
    """The real Writer, with every transaction timed in its thread."""

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.apply_seconds: list[float] = []

    def _apply_all(self, jobs: Sequence[Job]) -> None:
        started = time.perf_counter()
        try:
            super()._apply_all(jobs)
        finally:
            self.apply_seconds.append(time.perf_counter() - started)


def events(n: int) -> list:
    run, step, ts = f"live{n}", f"live{n}-s", NOW + n
    return [
        RunStart(id=f"{run}-a", ts=ts, run=run, pipeline="live", club_slug="rondo"),
        StepStart(id=f"{run}-b", ts=ts, run=run, step=step, name="sync"),
        ErrorEvent(id=f"{run}-c", ts=ts, run=run, step=step, step_name="sync", message="x"),
        StepEnd(id=f"{run}-d", ts=ts, run=run, step=step, outcome="success", created=1),
        RunEnd(id=f"{run}-e", ts=ts, run=run, outcome="success"),
    ]


def pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))] if values else 0.0


async def measure(path: Path, interval_s: float) -> dict[str, Any]:
    store = Store.open(path, synchronous="FULL")
    writer = TimedWriter(store)
    task = RetentionTask(Retention(runs=90), writer)
    ack_ms: list[float] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)

        async def produce() -> None:
            n = 0
            while True:
                job = Job(events=events(n))
                sent = trio.current_time()
                await writer.submit(job)
                await job.done.wait()
                ack_ms.append((trio.current_time() - sent) * 1000)
                n += 1
                await trio.sleep(interval_s)

        nursery.start_soon(produce)
        started = time.perf_counter()
        removed = await task.purge_once()
        purge_s = time.perf_counter() - started
        nursery.cancel_scope.cancel()
    left = store.query("SELECT count(*) FROM runs WHERE uid LIKE 'r%'")[0][0]
    store.close()
    commits = writer.apply_seconds
    return {
        "runs_purged": removed["runs"],
        "runs_left": left,
        "purge_s": round(purge_s, 2),
        "batches": len(task.batch_seconds),
        "rows_per_batch_final": task.limits.get("runs"),
        "commits": len(commits),
        "commit_max_ms": round(max(commits) * 1000, 2),
        "commit_p99_ms": round(pct(commits, 0.99) * 1000, 2),
        "commit_median_ms": round(statistics.median(commits) * 1000, 2),
        "commits_over_50ms": sum(1 for s in commits if s > 0.05),
        "event_runs_committed": len(ack_ms),
        "event_ack_max_ms": round(max(ack_ms), 2) if ack_ms else None,
        "event_ack_p99_ms": round(pct(ack_ms, 0.99), 2) if ack_ms else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1_000_000, help="old runs to purge")
    parser.add_argument("--interval-ms", type=float, default=5.0, help="between live runs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-retention-") as tmp:
        path = Path(tmp) / "dashboard.sqlite"
        t0 = time.perf_counter()
        build(path, args.runs)
        built_s = time.perf_counter() - t0
        size = path.stat().st_size
        result = trio.run(measure, path, args.interval_ms / 1000)
    print(
        json.dumps(
            {
                "benchmark": "retention",
                "runs": args.runs,
                "db_bytes": size,
                "build_s": round(built_s, 1),
                **result,
                "machine": machine(),
            }
        )
    )


if __name__ == "__main__":
    main()
