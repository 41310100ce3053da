"""One cron-shaped pipeline process (shape c): start, import, one run, exit.

    python benchmarks/_cron.py none
    python benchmarks/_cron.py direct DB FULL|NORMAL
    python benchmarks/_cron.py runtally SOCKET SPOOL

Does one run of ``_bench.RUN_SHAPE`` (27 tracking calls) and prints one JSON
line: milliseconds spent importing the tracker, constructing it and making
the calls, and on ``end_run`` + ``close()`` (the exit flush: for runtally the
wait for this run's acks; direct: its last statement and closing the db).
``none`` imports and calls nothing: the cost of a Python process by itself.
Imports nothing it does not need before the clock starts: the point is what a
pipeline process pays.
"""

import sys
import time

clock = time.perf_counter


def main() -> None:
    mode = sys.argv[1]
    t0 = clock()
    if mode == "none":
        print('{"import_ms": 0, "calls_ms": 0, "exit_ms": 0}')
        return
    if mode == "direct":
        from legacy_tracker import LegacyRunTracker

        t1 = clock()
        tracker = LegacyRunTracker("people", sys.argv[2], synchronous=sys.argv[3])
    else:
        from runtally import RunTracker

        t1 = clock()
        tracker = RunTracker("people", "rondo", socket=sys.argv[2], spool=sys.argv[3])
    tracker.start_run()
    for k in range(10):
        sid = tracker.start_step(f"step-{k}")
        tracker.end_step(sid, "success", k, 2 * k, 1, k % 2, {"batches": k})
        if k % 2 == 0:
            tracker.record_error(f"step-{k}", sid, f"KNVB{k:03d}", "invalid email", "at x\n" * 3)
    t2 = clock()
    tracker.end_run(True, {"steps": 10})
    tracker.close()
    t3 = clock()
    spooled = getattr(getattr(tracker, "client", None), "spooled", 0)
    print(
        f'{{"import_ms": {(t1 - t0) * 1e3:.3f}, "calls_ms": {(t2 - t1) * 1e3:.3f},'
        f' "exit_ms": {(t3 - t2) * 1e3:.3f}, "spooled": {spooled}}}'
    )


main()
