"""How long the read commands take on a big database: human output against ``--json``.

Builds a database of 10,000 runs and 50,000 errors through the real store
(``Store.apply``, as the daemon writes it), then runs ``runtally runs -n 0``
and ``runtally errors -n 0`` as real processes, output to a pipe, both as
people read them and with ``--json``.  For the human listing it also times
the first line (the listing streams: it must start well under a second).
Prints one JSON object; ``--quick`` uses a tenth of the rows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _bench import ERROR_MESSAGE, ERROR_STACK, PYTHON, ROOT, machine

from runtally.daemon._store import Store
from runtally.protocol import ErrorEvent, RunEnd, RunStart

RUNS = 10_000
ERRORS_PER_RUN = 5
REPEAT = 3


def build(path: Path, runs: int) -> None:
    """``runs`` runs of 8 pipelines, each with ERRORS_PER_RUN errors."""
    store = Store.open(path)
    start = int(time.time() * 1000) - runs * 60_000
    try:
        batch: list[Any] = []
        for n in range(runs):
            uid, ts = f"run{n}", start + n * 60_000
            batch.append(
                RunStart(
                    id=f"{uid}-s", ts=ts, run=uid, pipeline=f"pipeline-{n % 8}", club_slug="rondo"
                )
            )
            batch += [
                ErrorEvent(
                    id=f"{uid}-e{k}",
                    ts=ts + k,
                    run=uid,
                    step_name="laposta-submit",
                    member=f"KNVB{n:05d}{k}",
                    message=ERROR_MESSAGE,
                    stack=ERROR_STACK,
                )
                for k in range(ERRORS_PER_RUN)
            ]
            batch.append(
                RunEnd(
                    id=f"{uid}-x",
                    ts=ts + 30_000,
                    run=uid,
                    outcome="failure" if n % 3 == 0 else "success",
                    duration_ms=30_000,
                )
            )
            if len(batch) >= 5000:
                store.apply(batch)
                batch = []
        if batch:
            store.apply(batch)
        store.checkpoint()
    finally:
        store.close()


def timed(args: list[str], db: Path) -> dict[str, float]:
    """Seconds to the first byte and to the end of ``runtally ARGS``, output to a pipe."""
    env = {**os.environ, "RUNTALLY_DB": str(db), "PYTHONPATH": str(ROOT)}
    env.pop("RUNTALLY_CONFIG", None)
    started = time.perf_counter()
    proc = subprocess.Popen([PYTHON, "-m", "runtally.cli", *args], stdout=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    first = proc.stdout.read(1)
    first_s = time.perf_counter() - started
    size = len(first) + len(proc.stdout.read())
    code = proc.wait()
    total_s = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"runtally {' '.join(args)} exited {code}")
    return {"first_line_s": round(first_s, 3), "total_s": round(total_s, 3), "bytes": size}


def best(args: list[str], db: Path) -> dict[str, float]:
    """The fastest of REPEAT runs (the machine is shared)."""
    return min((timed(args, db) for _ in range(REPEAT)), key=lambda r: r["total_s"])


def main() -> None:
    quick = "--quick" in sys.argv
    runs = RUNS // 10 if quick else RUNS
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        db = Path(tmp) / "dashboard.sqlite"
        t0 = time.perf_counter()
        build(db, runs)
        build_s = time.perf_counter() - t0
        result: dict[str, Any] = {
            "benchmark": "cli",
            "db_runs": runs,
            "db_errors": runs * ERRORS_PER_RUN,
            "build_s": round(build_s, 1),
            "machine": machine(),
        }
        for command in ("runs", "errors"):
            human = best([command, "-n", "0"], db)
            as_json = best([command, "-n", "0", "--json"], db)
            result[command] = {
                "human": human,
                "json": as_json,
                "human_over_json": round(human["total_s"] / as_json["total_s"], 2),
            }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
