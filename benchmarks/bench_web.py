"""Server time of the dashboard's pages on a big database (target: p95 <= 100 ms).

Builds, once, a database of ``--runs`` runs (default 1M) with ``--steps`` steps
each (10: 10M steps) and ``--errors`` errors (2M) by direct ``executemany``
into the migrated schema (not through the daemon: that would take hours),
caches it at ``--db`` / ``$RUNTALLY_BENCH_WEB_DB``, then migrates it (so new
indexes are built the way an upgrade builds them) and times each page
in-process through Starlette's test client (request to response, so the
figures include routing, SQL and rendering).  Prints one JSON object.

    .venv/bin/python benchmarks/bench_web.py [--runs 1000000] [--repeat 40] [--db PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from _bench import machine

from runtally.daemon._store import Store
from runtally.daemon._timefmt import iso_from_ms

TARGET_P95_MS = 100.0
PIPELINES = [f"pipeline-{i:02d}" for i in range(20)]
CLUBS = ["rondo", "other"]
STEP_NAMES = ["download", "parse", "match", "people", "teams", "laposta", "nikki", "fees",
              "photos", "cleanup"]  # fmt: skip
MESSAGES = [f"Request failed with status code 422: invalid field {i}" for i in range(40)]
#: A run has errors one time in ERROR_EVERY; those runs hold all the errors.
ERROR_EVERY = 10
RUN_SPACING_MS = 47_000  # 1M runs end now and reach back ~1.5 years
DEFAULT_DB = Path(
    os.environ.get("RUNTALLY_BENCH_WEB_DB", "/tmp/runtally-bench-web/dashboard.sqlite")
)


def _rows(n_runs: int, n_steps: int, n_errors: int, now: int) -> Iterator[tuple[str, list[tuple]]]:
    """Batches of (table, rows) in id order; ids are 1..n in every table."""
    rng = random.Random(7)
    per_error_run = max(1, (n_errors * ERROR_EVERY) // max(n_runs, 1))
    start0 = now - n_runs * RUN_SPACING_MS
    runs, steps, errors = [], [], []
    step_id = error_id = 0
    for run_id in range(1, n_runs + 1):
        pipeline = PIPELINES[run_id % len(PIPELINES)]
        club = CLUBS[(run_id // len(PIPELINES)) % len(CLUBS)]
        start = start0 + run_id * RUN_SPACING_MS
        duration = rng.randint(2_000, 300_000)
        has_errors = run_id % ERROR_EVERY == 0 and error_id < n_errors
        running = run_id > n_runs - 3
        outcome = "running" if running else ("failure" if has_errors else "success")
        runs.append((
            run_id, club, pipeline, iso_from_ms(start),
            None if running else iso_from_ms(start + duration),
            None if running else duration, outcome, 10 * n_steps, 5 * n_steps, n_steps, 0,
            f"r{run_id:09d}",
        ))  # fmt: skip
        first_step = step_id + 1
        for k in range(n_steps):
            step_id += 1
            s_start = start + k * duration // max(n_steps, 1)
            s_dur = duration // max(n_steps, 1)
            steps.append((
                step_id, run_id, club, STEP_NAMES[k % len(STEP_NAMES)], iso_from_ms(s_start),
                iso_from_ms(s_start + s_dur), s_dur, "success", 10, 5, 1, 0, f"s{step_id:010d}",
            ))  # fmt: skip
        if has_errors:
            for j in range(min(per_error_run, n_errors - error_id)):
                error_id += 1
                errors.append((
                    error_id, run_id, first_step + (j % max(n_steps, 1)) if n_steps else None,
                    club, STEP_NAMES[j % len(STEP_NAMES)], f"KNVB{rng.randint(1, 200_000):06d}",
                    MESSAGES[(run_id // ERROR_EVERY + j // 50) % len(MESSAGES)],
                    "Traceback\n  at submit", iso_from_ms(start + j), f"e{error_id:010d}",
                ))  # fmt: skip
        if len(steps) >= 200_000 or run_id == n_runs:
            yield "runs", runs
            yield "run_steps", steps
            yield "run_errors", errors
            runs, steps, errors = [], [], []


_INSERT = {
    "runs": "INSERT INTO runs (id, club_slug, pipeline, started_at, finished_at, duration_ms,"
    " outcome, total_created, total_updated, total_skipped, total_failed, uid)"
    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
    "run_steps": "INSERT INTO run_steps (id, run_id, club_slug, step_name, started_at,"
    " finished_at, duration_ms, outcome, created_count, updated_count, skipped_count,"
    " failed_count, uid) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
    "run_errors": "INSERT INTO run_errors (id, run_id, run_step_id, club_slug, step_name,"
    " member_identifier, error_message, error_stack, created_at, uid)"
    " VALUES (?,?,?,?,?,?,?,?,?,?)",
}


def build(db: Path, n_runs: int, n_steps: int, n_errors: int) -> dict[str, Any]:
    """Create (or reuse) the database; returns how it was made and how long it took."""
    marker = db.with_name(db.name + ".built.json")
    wanted = {"runs": n_runs, "steps_per_run": n_steps, "errors": n_errors}
    if db.exists() and marker.exists() and json.loads(marker.read_text())["shape"] == wanted:
        return {**json.loads(marker.read_text()), "reused": True}
    for p in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm"), marker):
        p.unlink(missing_ok=True)
    db.parent.mkdir(parents=True, exist_ok=True)
    Store.open(db).close()  # the schema, through the real migrations
    t0 = time.perf_counter()
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("PRAGMA cache_size = -400000")
    conn.execute("BEGIN")
    now = int(time.time() * 1000)
    for table, rows in _rows(n_runs, n_steps, n_errors, now):
        conn.executemany(_INSERT[table], rows)
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    info = {"shape": wanted, "build_s": round(time.perf_counter() - t0, 1), "built_at_ms": now}
    marker.write_text(json.dumps(info))
    return {**info, "reused": False}


def _stats(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"p50_ms": round(pick(0.5), 2), "p95_ms": round(pick(0.95), 2),
            "max_ms": round(ordered[-1], 2), "n": len(ordered)}  # fmt: skip


def measure(db: Path, repeat: int, n_runs: int) -> dict[str, Any]:
    from starlette.testclient import TestClient

    from runtally.web import WebConfig, create_app

    rng = random.Random(11)
    root = db.parent
    config = WebConfig(db=db, socket=root / "none.sock", spool=root / "spool", health_ttl_s=1e9)
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    error_runs = [r[0] for r in conn.execute(
        "SELECT run_id FROM run_errors WHERE id % 997 = 0 LIMIT 200")]  # fmt: skip
    members = [r[0] for r in conn.execute(
        "SELECT member_identifier FROM run_errors WHERE id % 991 = 0 LIMIT 200")]  # fmt: skip
    conn.close()

    def pick(seq: list[Any]) -> Any:
        return seq[rng.randrange(len(seq))]

    cases: dict[str, Any] = {
        "overview": lambda: "/",
        "runs": lambda: "/runs",
        "runs_pipeline": lambda: f"/runs?pipeline={pick(PIPELINES)}",
        "runs_pipeline_club_7d": lambda: (
            f"/runs?pipeline={pick(PIPELINES)}&club={pick(CLUBS)}&since=7d"
        ),
        "runs_failures": lambda: "/runs?outcome=failure",
        "runs_running": lambda: "/runs?outcome=running",
        "runs_deep_page": lambda: f"/runs?before={rng.randint(1000, n_runs)}",
        "runs_pipeline_deep_page": lambda: (
            f"/runs?pipeline={pick(PIPELINES)}&before={rng.randint(1000, n_runs)}"
        ),
        "run": lambda: f"/runs/{rng.randint(1, n_runs)}",
        "run_with_errors": lambda: f"/runs/{pick(error_runs)}",
        "errors": lambda: "/errors",
        "errors_pipeline": lambda: f"/errors?pipeline={pick(PIPELINES)}",
        "errors_pipeline_club": lambda: f"/errors?pipeline={pick(PIPELINES)}&club={pick(CLUBS)}",
        "errors_pipeline_grouped": lambda: f"/errors?pipeline={pick(PIPELINES)}&group=message",
        "errors_club_step": lambda: f"/errors?club={pick(CLUBS)}&step={pick(STEP_NAMES)}",
        "errors_step": lambda: f"/errors?step={pick(STEP_NAMES)}",
        "errors_member": lambda: f"/errors?member={pick(members)}",
        "errors_text": lambda: f"/errors?q=invalid field {rng.randrange(40)}",
        "errors_grouped_24h": lambda: "/errors?group=message&since=24h",
        "errors_grouped": lambda: "/errors?group=message",
        "pipeline": lambda: f"/pipelines/{pick(PIPELINES)}?club={pick(CLUBS)}",
        "api_runs": lambda: "/api/runs",
        "api_run": lambda: f"/api/runs/{pick(error_runs)}",
        "api_errors": lambda: "/api/errors",
    }
    out: dict[str, Any] = {}
    with TestClient(create_app(config)) as client:
        t0 = time.perf_counter()
        client.get("/")  # first request: collects the health report (row counts)
        out["health_report_first_ms"] = round((time.perf_counter() - t0) * 1000, 1)
        for name, make in cases.items():
            samples = []
            for _ in range(repeat):
                url = make()
                t = time.perf_counter()
                r = client.get(url)
                samples.append((time.perf_counter() - t) * 1000)
                if r.status_code != 200:
                    raise SystemExit(f"{url}: HTTP {r.status_code}: {r.text[:300]}")
            out[name] = _stats(samples)
        rare = []
        for _ in range(max(3, repeat // 10)):
            t = time.perf_counter()
            client.get(f"/errors?q=no-such-text-{rng.random()}")
            rare.append((time.perf_counter() - t) * 1000)
        out["errors_text_no_match_full_scan"] = _stats(rare)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--steps", type=int, default=10, help="steps per run")
    parser.add_argument("--errors", type=int, default=2_000_000)
    parser.add_argument("--repeat", type=int, default=40, help="requests per page kind")
    parser.add_argument("--db", type=Path, default=DEFAULT_DB)
    args = parser.parse_args()
    built = build(args.db, args.runs, args.steps, args.errors)
    t0 = time.perf_counter()
    Store.open(args.db).close()  # migrations not yet applied to the cached file (new indexes)
    migrate_s = round(time.perf_counter() - t0, 1)
    pages = measure(args.db, args.repeat, args.runs)
    checked = {k: v for k, v in pages.items() if isinstance(v, dict)}
    over = sorted(k for k, v in checked.items() if v["p95_ms"] > TARGET_P95_MS)
    report = {
        "bench": "web",
        "machine": machine(),
        "database": {
            **built,
            "migrate_s": migrate_s,
            "path": str(args.db),
            "size_mb": round(args.db.stat().st_size / 2**20),
        },
        "target_p95_ms": TARGET_P95_MS,
        "pages": pages,
        "over_target": over,
    }
    json.dump(report, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
