"""Every benchmark, merged into ONE JSON object with the targets checked (`make bench`).

Parts, each also runnable alone (each prints one JSON object):

* ``pipelines`` (bench_pipelines.py): P = 1, 8, 32 pipeline processes, direct
  SQLite (synchronous FULL and NORMAL) vs. RunTracker + runtallyd;
* ``spooling`` (bench_spooling.py): tracking calls with the daemon down;
* ``replay`` (bench_replay.py): a 1M-event spool replayed by a fresh daemon;
* ``apply`` (bench_apply.py): Store.apply alone, by batch size;
* ``node`` (bench_node.py): the Node.js client's call latency, daemon up and down.

Targets (2 cores): >= 5x direct FULL and >= 1.5x direct NORMAL at 8
processes; tracking call p99 <= 100 us with the daemon up and down; daemon
peak RSS <= 64 MB at full load; replay >= 50k events/s; Node.js client call
p99 <= 50 us with the daemon up and down.

    .venv/bin/python benchmarks/run_all.py [--quick] [--only pipelines replay ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Any

from _bench import HERE, PYTHON, machine

PARTS: dict[str, tuple[list[str], list[str]]] = {
    # name: (full arguments, --quick arguments)
    "pipelines": (
        ["--runs", "480", "--repeat", "3"],
        ["--runs", "160", "--repeat", "1", "--sustained", "32", "640"],
    ),
    "spooling": (["--runs", "480"], ["--runs", "160"]),
    "replay": (["--events", "1000000"], ["--events", "100000"]),
    "apply": (["--events", "27000", "--repeat", "3"], ["--events", "5400", "--repeat", "1"]),
    "node": (["--runs", "480"], ["--runs", "160"]),
}
TARGET_PROCS = "8"


def run_part(name: str, quick: bool) -> dict[str, Any]:
    full, short = PARTS[name]
    script = HERE / f"bench_{name}.py"
    began = time.perf_counter()
    proc = subprocess.run(
        [PYTHON, str(script), *(short if quick else full)],
        stdout=subprocess.PIPE,
        text=True,
        check=False,
    )
    if proc.returncode:
        return {"failed": f"{script.name} exited {proc.returncode}"}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result.pop("machine", None)
    result["wall_s"] = round(time.perf_counter() - began, 1)
    print(f"# {name}: {result['wall_s']} s", file=sys.stderr)
    return result


def _check(value: float | None, op: str, limit: float) -> dict[str, Any]:
    if value is None:
        return {"value": None, "target": f"{op} {limit}", "holds": False}
    holds = value >= limit if op == ">=" else value <= limit
    return {"value": value, "target": f"{op} {limit}", "holds": holds}


def targets(parts: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    pipelines = parts.get("pipelines", {}).get("results", {})
    rl8 = pipelines.get(TARGET_PROCS, {}).get("runtally", {})
    if rl8:
        out["x_direct_full_at_8"] = _check(rl8.get("x_direct_full"), ">=", 5)
        out["x_direct_normal_at_8"] = _check(rl8.get("x_direct_normal"), ">=", 1.5)
    for procs, by_variant in pipelines.items():
        rl = by_variant.get("runtally")
        if rl:
            out[f"p99_us_daemon_up_P{procs}"] = _check(rl["latency"]["p99_us"], "<=", 100)
    for procs, r in parts.get("spooling", {}).get("results", {}).items():
        out[f"p99_us_daemon_down_P{procs}"] = _check(r["latency"]["p99_us"], "<=", 100)
    rss = [
        v["runtally"]["daemon_peak_rss_mb"]
        for v in pipelines.values()
        if v.get("runtally", {}).get("daemon_peak_rss_mb") is not None
    ]
    if rss:
        out["daemon_peak_rss_mb_pipelines"] = _check(max(rss), "<=", 64)
    sustained = parts.get("pipelines", {}).get("sustained")
    if sustained:
        p = sustained["procs"]
        out[f"daemon_peak_rss_mb_sustained_P{p}"] = _check(
            sustained.get("daemon_peak_rss_mb"), "<=", 64
        )
        out[f"p99_us_daemon_up_sustained_P{p}"] = _check(sustained["latency"]["p99_us"], "<=", 100)
    replay = parts.get("replay", {})
    if "events_per_s" in replay:
        out["daemon_peak_rss_mb_replay"] = _check(replay.get("daemon_peak_rss_mb"), "<=", 64)
        out["replay_events_per_s"] = _check(replay.get("events_per_s"), ">=", 50_000)
    node = parts.get("node", {})
    for where in ("up", "down"):
        if where in node:
            out[f"node_p99_us_daemon_{where}"] = _check(node[where]["latency"]["p99_us"], "<=", 50)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller workloads (a smoke test)")
    parser.add_argument("--only", nargs="+", choices=list(PARTS), default=list(PARTS))
    args = parser.parse_args()
    began = time.perf_counter()
    parts = {name: run_part(name, args.quick) for name in args.only}
    checked = targets(parts)
    print(
        json.dumps(
            {
                "benchmark": "runtally",
                "quick": args.quick,
                "machine": machine(),
                "targets": checked,
                "all_targets_hold": all(t["holds"] for t in checked.values()),
                **parts,
                "wall_s": round(time.perf_counter() - began, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
