"""Pipelines writing dashboard.sqlite directly vs. through runtallyd.  Prints ONE JSON object.

The same workload each way: P pipeline processes (default 1, 8, 32), each
doing its share of ``--runs`` runs of ``start_run, 10 x (start_step,
end_step), 5 x record_error, end_run`` (27 tracking calls), back to back.

* ``direct_full`` / ``direct_normal``: every process opens the database itself
  (WAL, busy_timeout 5000) with the old tracker's SQL, one autocommit statement
  per call (benchmarks/legacy_tracker.py), synchronous FULL or NORMAL;
* ``runtally``: ``runtally.RunTracker`` and a real daemon subprocess
  (``python -m runtally.cli daemon``, its default synchronous=FULL: one
  fsync per group commit, like for like with ``direct_full``);
* ``runtally_normal``: the same with ``--synchronous NORMAL`` (the opt-in).

Every process is started and has imported everything before the clock starts;
all get the go signal at once.  The clock stops when a read-only poll of the
database (every 5 ms) sees every run finished - for runtally that is after
group commit, not when the calls return.  Latencies are ``perf_counter_ns``
around each tracking call inside the pipeline processes, merged.

Then, ``--sustained 32 2400``: runtally alone, 32 processes x 75 runs (64,800
events), long enough to keep the daemon's queue full: its peak RSS at full load.

    .venv/bin/python benchmarks/bench_pipelines.py [--procs 1 8 32] [--runs 320]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _bench import (
    CALLS_PER_RUN,
    HERE,
    PYTHON,
    RUN_SHAPE,
    db_counts,
    expected_counts,
    finished_runs,
    latency_summary,
    machine,
    open_ro,
    percentile,
    running_daemon,
)
from legacy_tracker import open_db

POLL_S = 0.005
VARIANTS = ("direct_full", "direct_normal", "runtally", "runtally_normal")


def _cpu_s(pid: int) -> float:
    """utime + stime of a live process, in seconds."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _spawn_workers(
    procs: int, runs: int, folder: Path, args: list[str], python: str = PYTHON
) -> list[Any]:
    base, extra = divmod(runs, procs)
    workers = []
    for i in range(procs):
        share = base + (1 if i < extra else 0)
        out = folder / f"worker-{i}.json"
        command = [python, str(HERE / "_pipeline.py"), *args, "--runs", str(share)]
        command += ["--index", str(i), "--out", str(out)]
        proc = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=(folder / f"worker-{i}.err").open("wb"),
        )
        workers.append((proc, out))
    for proc, _ in workers:
        line = proc.stdout.readline()
        if line.strip() != b"ready":
            raise RuntimeError(f"worker did not start: {line!r}")
    return workers


def _release(workers: list[Any]) -> None:
    """Let the workers exit (each waits for a second line once its result is written)."""
    for proc, _ in workers:
        if not proc.stdin.closed:
            with contextlib.suppress(OSError):
                proc.stdin.write(b"exit\n")
                proc.stdin.close()


def _race(workers: list[Any], db: Path, runs: int, timeout: float) -> float:
    """Go! Seconds until every run is finished in the db (or every worker gave up)."""
    conn = open_ro(db)
    try:
        start = time.perf_counter()
        for proc, _ in workers:
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
        while True:
            if finished_runs(conn) >= runs:
                return time.perf_counter() - start
            if all(out.exists() or proc.poll() is not None for proc, out in workers):
                # Direct writers are synchronous: what is not there when they are
                # all done never will be.  runtally: what a pipeline spooled (its
                # window of unacked events was full, or a flush timed out) is
                # replayed once the pipeline has exited, as in real life; the
                # clock runs on until it is committed, up to ``timeout``.
                if db.name == "direct.sqlite" or time.perf_counter() - start > timeout:
                    return time.perf_counter() - start
                _release(workers)
            time.sleep(POLL_S)
    finally:
        conn.close()


def _collect(workers: list[Any], folder: Path) -> dict[str, Any]:
    lat: list[int] = []
    merged: dict[str, Any] = {"lock_errors": 0, "stalls": 0, "other_errors": {}, "cpu_s": 0.0}
    flush: list[float] = []
    exits: list[int] = []
    _release(workers)
    for proc, out in workers:
        proc.wait(120)
        if proc.returncode:
            err = (folder / out.name.replace(".json", ".err")).read_text()[-1500:]
            raise RuntimeError(f"worker failed ({proc.returncode}): {err}")
        r = json.loads(out.read_text())
        lat += r["latencies_ns"]
        exits += r.get("exit_ns", [])
        merged["lock_errors"] += r["lock_errors"]
        merged["stalls"] += r["stalls"]
        merged["cpu_s"] += r["cpu_s"]
        for key, n in r["other_errors"].items():
            merged["other_errors"][key] = merged["other_errors"].get(key, 0) + n
        if "flush_s" in r:
            flush.append(r["flush_s"])
            merged["spooled"] = merged.get("spooled", 0) + r["spooled"]
    merged["latency"] = latency_summary(lat)
    if exits:
        exits.sort()
        merged["end_run_close_ms"] = {
            "p50": round(percentile(exits, 50) / 1e6, 2),
            "p99": round(percentile(exits, 99) / 1e6, 2),
            "max": round(exits[-1] / 1e6, 2),
        }
    if flush:
        merged["flush_at_exit_max_ms"] = round(max(flush) * 1000, 1)
    return merged


def run_variant(variant: str, procs: int, runs: int, folder: Path) -> dict[str, Any]:
    folder.mkdir(parents=True)
    if variant.startswith("direct"):
        sync = "FULL" if variant == "direct_full" else "NORMAL"
        db = folder / "direct.sqlite"
        open_db(db, sync).close()  # schema in place before the clock starts
        workers = _spawn_workers(
            procs, runs, folder, ["--mode", "direct", "--db", str(db), "--synchronous", sync]
        )
        seconds = _race(workers, db, runs, timeout=600)
        result = _collect(workers, folder)
        daemon_info: dict[str, Any] = {}
    else:
        sync = "NORMAL" if variant == "runtally_normal" else "FULL"
        with running_daemon(folder / "d", synchronous=sync) as daemon:
            workers = _spawn_workers(
                procs,
                runs,
                folder,
                [
                    "--mode",
                    "runtally",
                    "--socket",
                    str(daemon.socket),
                    "--spool",
                    str(daemon.spool),
                ],
            )
            cpu0 = _cpu_s(daemon.pid)
            seconds = _race(workers, daemon.db, runs, timeout=60)
            daemon_info = {
                "daemon_cpu_s": round(_cpu_s(daemon.pid) - cpu0, 3),
                "daemon_peak_rss_mb": daemon.peak_rss_mb(),
            }
            result = _collect(workers, folder)
            db = daemon.db
    counts = db_counts(db)
    events = runs * CALLS_PER_RUN
    result = {
        "events": events,
        "seconds": round(seconds, 3),
        "events_per_s": round(events / seconds),
        **result,
        **daemon_info,
        "cpu_us_per_event": round(
            (result["cpu_s"] + daemon_info.get("daemon_cpu_s", 0)) / events * 1e6, 1
        ),
        "lost_runs": runs - counts["runs_finished"],
        "rows_exact": counts == expected_counts(runs),
    }
    result["cpu_s"] = round(result["cpu_s"], 3)
    if not result["rows_exact"]:
        result["rows"] = counts
    return result


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The repetition with the median events/s, with every repetition's figure beside it."""
    ordered = sorted(runs, key=lambda r: r["events_per_s"])
    chosen = dict(ordered[len(ordered) // 2])
    if len(runs) > 1:
        chosen["events_per_s_each"] = [r["events_per_s"] for r in runs]
        rss = [r["daemon_peak_rss_mb"] for r in runs if r.get("daemon_peak_rss_mb") is not None]
        if rss:
            chosen["daemon_peak_rss_mb"] = max(rss)
        chosen["lock_errors"] = sum(r["lock_errors"] for r in runs)
        chosen["stalls"] = sum(r["stalls"] for r in runs)
        chosen["lost_runs"] = sum(r["lost_runs"] for r in runs)
        chosen["rows_exact"] = all(r["rows_exact"] for r in runs)
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--runs", type=int, default=320, help="runs per configuration, in all")
    parser.add_argument("--repeat", type=int, default=1, help="repetitions (median events/s)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--dir", type=Path, default=None, help="where the databases go")
    parser.add_argument(
        "--sustained",
        type=int,
        nargs=2,
        default=[32, 2400],
        metavar=("PROCS", "RUNS"),
        help="then runtally alone under a longer full load (RUNS 0: skip)",
    )
    args = parser.parse_args()
    results: dict[str, dict[str, Any]] = {}
    sustained: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory(prefix="bench-pipelines-", dir=args.dir) as tmp:
        for procs in args.procs:
            runs: dict[str, list[dict[str, Any]]] = {v: [] for v in args.variants}
            for rep in range(args.repeat):
                for variant in args.variants:
                    folder = Path(tmp) / f"{procs}-{variant}-{rep}"
                    r = run_variant(variant, procs, args.runs, folder)
                    runs[variant].append(r)
                    print(f"# P={procs} {variant}: {r['events_per_s']} ev/s", file=sys.stderr)
            by_variant = {v: _median_run(rs) for v, rs in runs.items()}
            for mine in ("runtally", "runtally_normal"):
                rl = by_variant.get(mine)
                for variant in ("direct_full", "direct_normal"):
                    if rl and variant in by_variant:
                        ratio = rl["events_per_s"] / by_variant[variant]["events_per_s"]
                        rl[f"x_{variant}"] = round(ratio, 2)
            results[str(procs)] = by_variant
        procs, runs = args.sustained
        if runs:
            # The workload above (12,960 events at 480 runs) is smaller than the
            # daemon's queue budget; this one keeps the queue full for a while.
            sustained = {"procs": procs, "runs": runs}
            sustained |= run_variant("runtally", procs, runs, Path(tmp) / "sustained")
            print(f"# sustained P={procs}: {sustained['events_per_s']} ev/s", file=sys.stderr)
    rss = [v["runtally"]["daemon_peak_rss_mb"] for v in results.values() if "runtally" in v]
    print(
        json.dumps(
            {
                "benchmark": "pipelines",
                "run_shape": RUN_SHAPE,
                "calls_per_run": CALLS_PER_RUN,
                "runs_per_config": args.runs,
                "repeat": args.repeat,
                "results": results,
                "daemon_peak_rss_mb": max(rss) if rss else None,
                "sustained": sustained,
                "machine": machine(),
            }
        )
    )


if __name__ == "__main__":
    main()
