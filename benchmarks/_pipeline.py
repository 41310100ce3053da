"""One benchmark pipeline process: tracker calls in a loop, each one timed.

    python benchmarks/_pipeline.py --mode direct --db D --synchronous FULL --runs N --out F
    python benchmarks/_pipeline.py --mode runtally --socket S --spool P --runs N --out F
    ... --close-each-run     shape (b): ``close()`` after every run, as a pipeline's exit does

Imports and connects nothing until told: it prints ``ready``, waits for a line
on stdin (the go signal, sent to every process at once), then does ``--runs``
runs of the workload in ``_bench.RUN_SHAPE``, one tracker per run as a
pipeline does, with ``time.perf_counter_ns()`` around every tracking call.  It
writes what it saw to ``--out`` as JSON (runtally: after flushing, i.e. once
every event is acked or spooled), then waits for a second line before it
exits, so that no process's exit competes with the others' measurement.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

from _bench import ERROR_MESSAGE, ERROR_STACK, STALL_NS, STEPS_PER_RUN


class Counters:
    def __init__(self) -> None:
        self.lock_errors = 0
        self.other_errors: dict[str, int] = {}

    def on_error(self, method: str, exc: BaseException) -> None:
        if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
            self.lock_errors += 1
        else:
            key = f"{method}: {type(exc).__name__}: {exc}"[:120]
            self.other_errors[key] = self.other_errors.get(key, 0) + 1


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=("direct", "runtally"), required=True)
    parser.add_argument("--db", type=Path)
    parser.add_argument("--synchronous", default="FULL")
    parser.add_argument("--socket", type=Path)
    parser.add_argument("--spool", type=Path)
    parser.add_argument("--runs", type=int, required=True)
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--close-each-run",
        action="store_true",
        help="close() after each run's end_run (shape b); end_run+close timed apart",
    )
    args = parser.parse_args()

    counters = Counters()
    if args.mode == "direct":
        from legacy_tracker import LegacyRunTracker

        def make() -> Any:
            return LegacyRunTracker(
                "people", args.db, synchronous=args.synchronous, on_error=counters.on_error
            )
    else:
        from runtally import RunTracker

        def make() -> Any:
            return RunTracker("people", "rondo", socket=args.socket, spool=args.spool)

    clock = time.perf_counter_ns
    lat: list[int] = []
    exits: list[int] = []  # end_run + close, per run (shape b)
    add = lat.append
    detail_of = [{"batches": k, "source": "sportlink"} for k in range(STEPS_PER_RUN)]
    members = [f"KNVB{args.index:03d}{k:03d}" for k in range(STEPS_PER_RUN)]
    names = [f"step-{k}" for k in range(STEPS_PER_RUN)]

    print("ready", flush=True)
    sys.stdin.readline()
    began = clock()
    cpu0 = time.process_time()
    tracker = None
    for _ in range(args.runs):
        tracker = make()
        t0 = clock()
        tracker.start_run()
        add(clock() - t0)
        for k in range(STEPS_PER_RUN):
            name = names[k]
            t0 = clock()
            sid = tracker.start_step(name)
            add(clock() - t0)
            t0 = clock()
            tracker.end_step(sid, "success", k, 2 * k, 1, k % 2, detail_of[k])
            add(clock() - t0)
            if k % 2 == 0:
                t0 = clock()
                tracker.record_error(name, sid, members[k], ERROR_MESSAGE, ERROR_STACK)
                add(clock() - t0)
        t0 = clock()
        tracker.end_run(True, {"steps": STEPS_PER_RUN, "errors": STEPS_PER_RUN // 2})
        t1 = clock()
        add(t1 - t0)
        if args.close_each_run:
            tracker.close()  # runtally: wait for this run's acks; direct: close the db
            exits.append(clock() - t0)
    calls_done = clock()
    result: dict[str, Any] = {
        "latencies_ns": lat,
        "lock_errors": counters.lock_errors,
        "other_errors": counters.other_errors,
        "stalls": sum(1 for v in lat if v > STALL_NS),
        "calls_s": (calls_done - began) / 1e9,
        "exit_ns": exits,
    }
    if args.mode == "runtally" and tracker is not None:
        t0 = clock()
        tracker.close()  # flush: wait for the acks (what atexit does in a pipeline)
        result["flush_s"] = (clock() - t0) / 1e9
        client = tracker.client
        result["acked"] = client.acked
        result["spooled"] = client.spooled
        result["state"] = client.state.value
    result["cpu_s"] = time.process_time() - cpu0
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    tmp.rename(args.out)  # "done"
    # Exit only when told: interpreter teardown is the pipeline's cost, not the
    # tracker's, and must not compete for the CPU with the measurement.
    sys.stdin.readline()


if __name__ == "__main__":
    main()
