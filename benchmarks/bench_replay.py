"""Spool replay throughput: a spool of N events (default 1M) and a fresh daemon.  ONE JSON object.

The spool is written in spool format v1 (the ``RLSPOOL1`` header, then
``runtally.protocol.encode_record`` of each event's MessagePack, exactly as
a client that could not reach the daemon writes it): runs of ``start_run, 10
x (step_start, step_end), 5 errors, run_end`` with the RunTracker's uuid7 ids,
in ``--files`` files.  Then ``python -m runtally.cli daemon`` is started on
a fresh database with that spool directory, and the clock runs from its
start until every spool file is gone and a read-only poll sees every run
finished (start-up is included: the daemon replays as it starts).

    .venv/bin/python benchmarks/bench_replay.py [--events 1000000] [--files 1]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec
from _bench import (
    CALLS_PER_RUN,
    ERROR_MESSAGE,
    ERROR_STACK,
    RUN_SHAPE,
    STEPS_PER_RUN,
    db_counts,
    expected_counts,
    finished_runs,
    machine,
    open_ro,
    spawn_daemon,
)

from runtally.client._ids import uuid7
from runtally.protocol import (
    SPOOL_MAGIC,
    ErrorEvent,
    RunEnd,
    RunStart,
    StepEnd,
    StepStart,
    encode_record,
)

T0 = 1_770_562_380_123
POLL_S = 0.05


def run_events(n: int) -> list[msgspec.Struct]:
    """One run, as RunTracker emits it (uuid7 ids, meta, detail, summary)."""
    ts = T0 + n * 60_000
    run = uuid7(ts)
    events: list[msgspec.Struct] = [
        RunStart(
            id=uuid7(ts),
            ts=ts,
            run=run,
            pipeline="people",
            club_slug="rondo",
            meta={"pid": 4242, "host": "bench", "user": "sync", "argv": ["sync-people.py"]},
        )
    ]
    errors = 0
    for k in range(STEPS_PER_RUN):
        step, at = uuid7(ts), ts + k * 100
        events.append(StepStart(id=uuid7(at), ts=at, run=run, step=step, name=f"step-{k}"))
        events.append(
            StepEnd(
                id=uuid7(at),
                ts=at + 90,
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
        if k % 2 == 0:
            errors += 1
            events.append(
                ErrorEvent(
                    id=uuid7(at),
                    ts=at + 95,
                    run=run,
                    step_name=f"step-{k}",
                    message=ERROR_MESSAGE,
                    step=step,
                    member=f"KNVB{n % 100_000:05d}",
                    stack=ERROR_STACK,
                )
            )
    events.append(
        RunEnd(
            id=uuid7(ts + 2000),
            ts=ts + 2000,
            run=run,
            outcome="success",
            summary={"steps": STEPS_PER_RUN, "errors": errors},
            duration_ms=2000,
        )
    )
    assert len(events) == CALLS_PER_RUN
    return events


def write_spool(folder: Path, runs: int, files: int) -> int:
    """``runs`` runs spread over ``files`` spool files; returns their total bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    encoder = msgspec.msgpack.Encoder()
    size = 0
    per_file, extra = divmod(runs, files)
    n = 0
    for f in range(files):
        path = folder / f"{T0 + f}-benchhost-{10_000 + f}-{f:08x}.spool"
        with path.open("wb") as fh:
            fh.write(SPOOL_MAGIC)
            chunk: list[bytes] = []
            for _ in range(per_file + (1 if f < extra else 0)):
                chunk += [encode_record(encoder.encode(e)) for e in run_events(n)]
                n += 1
                if len(chunk) >= 10_000:
                    fh.write(b"".join(chunk))
                    chunk.clear()
            fh.write(b"".join(chunk))
        size += path.stat().st_size
    return size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--files", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=240.0)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    runs = max(1, round(args.events / CALLS_PER_RUN))
    events = runs * CALLS_PER_RUN
    with tempfile.TemporaryDirectory(prefix="bench-replay-", dir=args.dir) as tmp:
        folder = Path(tmp) / "d"
        began = time.perf_counter()
        size = write_spool(folder / "spool", runs, args.files)
        write_s = time.perf_counter() - began

        start = time.perf_counter()
        daemon = spawn_daemon(folder)
        done = False
        peak_rss = None
        try:
            deadline = start + args.timeout
            conn = None
            while time.perf_counter() < deadline:
                if daemon.proc.poll() is not None:
                    raise RuntimeError(f"daemon exited: {daemon.log.read_text()[-2000:]}")
                kb = daemon.peak_rss_mb()
                peak_rss = kb if kb is not None else peak_rss
                if conn is None and daemon.db.exists():
                    conn = open_ro(daemon.db)
                if (
                    conn is not None
                    and not any(daemon.spool.glob("*.spool"))
                    and finished_runs(conn) >= runs
                ):
                    done = True
                    break
                time.sleep(POLL_S)
            seconds = time.perf_counter() - start
            peak_rss = daemon.peak_rss_mb() or peak_rss
            if conn is not None:
                conn.close()
        finally:
            daemon.stop()
        counts = db_counts(daemon.db)
    result: dict[str, Any] = {
        "benchmark": "replay",
        "events": events,
        "files": args.files,
        "spool_mb": round(size / 1e6, 1),
        "run_shape": RUN_SHAPE,
        "finished": done,
        "seconds": round(seconds, 2),
        "events_per_s": round(events / seconds) if done else None,
        "includes_daemon_start": True,
        "daemon_peak_rss_mb": peak_rss,
        "rows_exact": counts == expected_counts(runs),
        "spool_write_s": round(write_s, 2),
        "machine": machine(),
    }
    if not result["rows_exact"]:
        result["rows"] = counts
    if args.events != 1_000_000:
        result["note"] = f"measured with {events} events, not the 1,000,000 of the target"
    print(json.dumps(result))


if __name__ == "__main__":
    main()
