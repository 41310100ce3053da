"""Store.apply throughput: events/s by batch size and synchronous mode.

Realistic runs: run_start, 10 x (step_start, step_end), 5 errors, run_end
(27 events).  Each configuration gets a fresh database in a temporary
directory; events are built before the clock starts.  Prints ONE JSON object.

    .venv/bin/python benchmarks/bench_apply.py [--events N]
"""

from __future__ import annotations

import argparse
import json
import platform
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from runtally.daemon._store import Store
from runtally.protocol import ErrorEvent, Event, RunEnd, RunStart, StepEnd, StepStart

BATCH_SIZES = (1, 100, 1000)
MODES = ("NORMAL", "FULL")
EVENTS_PER_RUN = 27
T0 = 1_770_562_380_123


def run_events(n: int) -> list[Event]:
    run, ts = f"run-{n:06d}", T0 + n * 60_000
    events: list[Event] = [
        RunStart(
            id=f"{run}-start",
            ts=ts,
            run=run,
            pipeline="people",
            club_slug="rondo",
            meta={"host": "bench", "pid": 4242, "argv": ["sync-people.js", "--verbose"]},
        )
    ]
    for k in range(10):
        step = f"{run}-s{k}"
        events.append(
            StepStart(id=f"{step}-start", ts=ts + k * 100, run=run, step=step, name=f"step-{k}")
        )
        events.append(
            StepEnd(
                id=f"{step}-end",
                ts=ts + k * 100 + 90,
                run=run,
                step=step,
                outcome="success",
                created=k,
                updated=2 * k,
                skipped=1,
                failed=k % 2,
                detail={"batches": k, "source": "sportlink"},
                duration_ms=88,
            )
        )
    for e in range(5):
        events.append(
            ErrorEvent(
                id=f"{run}-err{e}",
                ts=ts + 500 + e,
                run=run,
                step=f"{run}-s{e}",
                step_name=f"step-{e}",
                member=f"KNVB{e:05d}",
                message="Request failed with status code 422: invalid email address",
                stack="Error: invalid email\n    at submit (lib/laposta.js:120:11)\n" * 3,
            )
        )
    events.append(
        RunEnd(id=f"{run}-end", ts=ts + 2000, run=run, outcome="success", summary={"ok": 1})
    )
    assert len(events) == EVENTS_PER_RUN
    return events


def _once(path: Path, mode: str, batches: list[list[Event]], runs: int) -> float:
    store = Store.open(path, synchronous=mode)  # type: ignore[arg-type]
    try:
        start = time.perf_counter()
        for chunk in batches:
            store.apply(chunk)
        elapsed = time.perf_counter() - start
        (rows,) = store.query("SELECT count(*) FROM run_steps")[0]
        assert rows == runs * 10, rows
    finally:
        store.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return elapsed


def measure(folder: Path, mode: str, batch: int, total: int, repeat: int) -> dict[str, float | int]:
    """Median of ``repeat`` runs, each on a fresh database."""
    runs = max(1, total // EVENTS_PER_RUN)
    events = [e for n in range(runs) for e in run_events(n)]
    batches = [events[i : i + batch] for i in range(0, len(events), batch)]
    path = folder / f"bench-{mode}-{batch}.sqlite"
    times = sorted(_once(path, mode, batches, runs) for _ in range(repeat))
    elapsed = times[len(times) // 2]
    return {
        "events": len(events),
        "commits": len(batches),
        "seconds": round(elapsed, 4),
        "events_per_s": round(len(events) / elapsed),
        "commits_per_s": round(len(batches) / elapsed, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--events",
        type=int,
        default=27_000,
        help="events per configuration (batch size 1 uses a tenth of them)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per configuration (median)")
    parser.add_argument("--dir", type=Path, default=None, help="where to put the databases")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-apply-", dir=args.dir) as tmp:
        folder = Path(tmp)
        measure(folder, "NORMAL", 100, 2700, 1)  # warm-up: imports, page cache, allocator
        results: dict[str, dict[str, dict[str, float | int]]] = {}
        for mode in MODES:
            results[mode] = {}
            for batch in BATCH_SIZES:
                total = args.events // 10 if batch == 1 else args.events
                results[mode][str(batch)] = measure(folder, mode, batch, total, args.repeat)
    print(
        json.dumps(
            {
                "benchmark": "apply",
                "events_per_run": EVENTS_PER_RUN,
                "run_shape": "run_start, 10 x (step_start, step_end), 5 errors, run_end",
                "events_per_s": {
                    mode: {b: r["events_per_s"] for b, r in by_batch.items()}
                    for mode, by_batch in results.items()
                },
                "detail": results,
                "repeat": args.repeat,
                "sqlite": sqlite3.sqlite_version,
                "python": platform.python_version(),
                "platform": sys.platform,
            }
        )
    )


if __name__ == "__main__":
    main()
