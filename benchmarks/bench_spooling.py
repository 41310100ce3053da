"""Tracking calls with the daemon DOWN: every event goes to the process's spool file.

Prints ONE JSON object.  The same pipeline processes and workload as
bench_pipelines.py, but the socket path has no daemon behind it, so the
client's first connect fails and every later call appends to its spool file
(reconnects are rate-limited).  Reports the tracking call's median/p99 inside
the pipelines and checks that every event is in the spool, exactly once.

    .venv/bin/python benchmarks/bench_spooling.py [--procs 1 8] [--runs 320]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from _bench import CALLS_PER_RUN, RUN_SHAPE, machine
from bench_pipelines import _collect, _spawn_workers

from runtally.protocol import read_spool


def spool_records(spool: Path) -> tuple[int, int]:
    """(records, files) in a spool directory; raises on a torn or corrupt file."""
    records = files = 0
    for path in sorted(spool.glob("*.spool")):
        good, tail = read_spool(path.read_bytes())
        if tail.state != "clean":
            raise RuntimeError(f"{path.name}: {tail}")
        records += len(good)
        files += 1
    return records, files


def run(procs: int, runs: int, folder: Path) -> dict[str, Any]:
    folder.mkdir(parents=True)
    sock, spool = folder / "nobody-listens.sock", folder / "spool"
    workers = _spawn_workers(
        procs, runs, folder, ["--mode", "runtally", "--socket", str(sock), "--spool", str(spool)]
    )
    start = time.perf_counter()
    for proc, _ in workers:
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
    deadline = start + 120
    while not all(out.exists() for _, out in workers) and time.perf_counter() < deadline:
        if any(proc.poll() for proc, _ in workers):
            break  # a worker failed: _collect says why
        time.sleep(0.002)
    seconds = time.perf_counter() - start
    result = _collect(workers, folder)
    events = runs * CALLS_PER_RUN
    records, files = spool_records(spool)
    return {
        "events": events,
        "events_per_s": round(events / seconds),
        "latency": result["latency"],
        "stalls": result["stalls"],
        "cpu_us_per_event": round(result["cpu_s"] / events * 1e6, 1),
        "spooled_records": records,
        "spool_files": files,
        "spool_exact": records == events,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--runs", type=int, default=320, help="runs per configuration, in all")
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-spooling-", dir=args.dir) as tmp:
        results = {str(p): run(p, args.runs, Path(tmp) / str(p)) for p in args.procs}
    print(
        json.dumps(
            {
                "benchmark": "spooling",
                "daemon": "down",
                "run_shape": RUN_SHAPE,
                "runs_per_config": args.runs,
                "results": results,
                "machine": machine(),
            }
        )
    )


if __name__ == "__main__":
    main()
