"""Tracking-call latency of the Node.js client, daemon up and daemon down.

Runs ``node benchmarks/node_latency.js RUNS`` (one pipeline process) against
a fresh daemon, then with no daemon at all (every event spooled), and checks
that the daemon got every event.  Prints one JSON object; target: p99 <= 50 us.

    .venv/bin/python benchmarks/bench_node.py [--runs 480]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from _bench import HERE, ROOT, db_counts, expected_counts, machine, running_daemon

SCRIPT = HERE / "node_latency.js"


def _node(runs: int, socket: Path, spool: Path) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNTALLY_")}
    env.update(RUNTALLY_SOCKET=str(socket), RUNTALLY_SPOOL=str(spool))
    node = shutil.which("node") or "node"
    argv = [node, str(SCRIPT), str(runs)]
    out = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=480, help="runs per process (26 calls each)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="rt-node-", dir="/tmp"))
    try:
        with running_daemon(folder / "up") as daemon:
            up = _node(args.runs, daemon.socket, daemon.spool)
            up["db"] = db_counts(daemon.db)
            up["complete"] = up["db"] == expected_counts(args.runs)
        down = _node(args.runs, folder / "down" / "none.sock", folder / "down" / "spool")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(json.dumps({"benchmark": "node", "machine": machine(), "up": up, "down": down}))


if __name__ == "__main__":
    main()
