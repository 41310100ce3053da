"""Soak: pipelines and the daemon SIGKILLed at random; every returned call still lands once.

Eight pipeline slots run real RunTracker pipelines for ``--minutes`` (default
10).  Each pipeline is SIGKILLed at a random moment mid-run (some finish on
their own), and its slot starts a new one.  Meanwhile the daemon is
SIGKILLed every 50-500 ms and started again at once.  At the end the
pipelines are killed, the daemon is started clean, and once it has replayed
every spool file the database is compared with what the pipelines logged:

* after each tracking call *returns*, the pipeline appends one line
  describing it to a side file with one ``os.write`` on an ``O_APPEND``
  descriptor (a kill can only cut the line being written, never lose one
  written before), then carries on;
* every logged call must be in the database exactly once: each run, step and
  error row exists once with the right parent; each logged step end has its
  outcome and counts; each logged run end its outcome; run totals equal the
  sums of their steps' counts;
* the spool directory is empty, nothing is parked, nothing dead-lettered.

Rows beyond the log are allowed (a call the kill interrupted after its event
was written ahead) and reported as ``extra``.  Prints one JSON object; exits
1 if anything was missing, duplicated or wrong.  Not part of ``make test``.

    .venv/bin/python benchmarks/soak.py --minutes 2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SLOTS = 8

# One pipeline process: runs until killed (or its run budget is spent).  Lines:
# R run | S step run | E step outcome created updated skipped failed |
# X error run step | F run outcome
PIPELINE = r"""
import os, random, sys
from runtally import RunTracker
sock, spool, log, seed, budget = sys.argv[1:6]
rng = random.Random(int(seed))
fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
def note(*parts):
    os.write(fd, (" ".join(str(p) for p in parts) + "\n").encode())
t = RunTracker("soak", club_slug="rondo", socket=sock, spool=spool)
for n in range(int(budget)):
    run = t.start_run()
    note("R", run)
    ok = True
    for s in range(rng.randint(1, 4)):
        sid = t.start_step(f"step{s}")
        note("S", sid, run)
        nerr = rng.randint(0, 3)
        for e in range(nerr):
            eid = t.record_error(f"step{s}", sid, f"KNVB{e}", f"boom {n}.{s}.{e}")
            note("X", eid, run, sid)
        counts = [rng.randint(0, 50), rng.randint(0, 9), rng.randint(0, 3), nerr]
        outcome = "failure" if nerr and rng.random() < 0.5 else "success"
        ok = ok and outcome == "success"
        t.end_step(sid, outcome, *counts)
        note("E", sid, outcome, *counts)
    t.end_run(ok)
    note("F", run, "success" if ok else "failure")
t.close()
"""


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNTALLY_")}
    env["PYTHONPATH"] = str(REPO)
    return env


class Daemon:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.sock, self.db, self.spool = root / "d.sock", root / "dashboard.sqlite", root / "spool"
        config = root / "runtally.toml"
        config.write_text("[runtally]\nreplay_interval_s = 0.2\n")
        self.env = {**_env(), "RUNTALLY_CONFIG": str(config)}
        self.proc: subprocess.Popen | None = None
        self.log = (root / "daemon.log").open("ab")

    def start(self) -> None:
        argv = [sys.executable, "-m", "runtally.cli", "daemon", "--socket", str(self.sock)]
        argv += ["--db", str(self.db), "--spool", str(self.spool)]
        self.proc = subprocess.Popen(
            argv, env=self.env, stdout=self.log, stderr=self.log, start_new_session=True
        )

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def ask(self, message: dict, timeout: float = 2.0) -> dict | None:
        import msgspec

        body = msgspec.msgpack.encode(message)
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(timeout)
                s.connect(str(self.sock))
                s.sendall(len(body).to_bytes(4, "big") + body)
                head = s.recv(4, socket.MSG_WAITALL)
                data = s.recv(int.from_bytes(head, "big"), socket.MSG_WAITALL)
        except OSError:
            return None
        return msgspec.msgpack.decode(data)

    def wait_drained(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.ask({"type": "status"})
            files = list(self.spool.glob("*.spool")) if self.spool.is_dir() else []
            if st and st.get("queue_depth") == 0 and not files:
                return True
            time.sleep(0.2)
        return False


def _parse_logs(logs: list[Path]) -> dict:
    runs: dict[str, str | None] = {}  # run -> logged outcome (None: no run end logged)
    steps: dict[str, str] = {}  # step -> run
    ends: dict[str, tuple] = {}  # step -> (outcome, created, updated, skipped, failed)
    errors: dict[str, tuple[str, str]] = {}  # error -> (run, step)
    lines = 0
    for log in logs:
        try:
            text = log.read_text()
        except FileNotFoundError:
            continue  # killed before its first call returned
        for line in text.split("\n")[:-1]:  # a cut last line has no newline
            lines += 1
            kind, *rest = line.split(" ")
            if kind == "R":
                runs[rest[0]] = None
            elif kind == "S":
                steps[rest[0]] = rest[1]
            elif kind == "E":
                ends[rest[0]] = (rest[1], *map(int, rest[2:6]))
            elif kind == "X":
                errors[rest[0]] = (rest[1], rest[2])
            elif kind == "F":
                runs[rest[0]] = rest[1]
    return {"runs": runs, "steps": steps, "ends": ends, "errors": errors, "calls": lines}


def _check(db: Path, logged: dict) -> dict:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        run_rows = conn.execute(
            "SELECT uid, id, outcome FROM runs WHERE pipeline = 'soak'"
        ).fetchall()
        step_rows = conn.execute(
            "SELECT s.uid, r.uid, s.outcome, s.created_count, s.updated_count, s.skipped_count,"
            " s.failed_count, s.finished_at FROM run_steps s JOIN runs r ON r.id = s.run_id"
            " WHERE r.pipeline = 'soak'"
        ).fetchall()
        error_rows = conn.execute(
            "SELECT e.uid, r.uid, st.uid FROM run_errors e JOIN runs r ON r.id = e.run_id"
            " LEFT JOIN run_steps st ON st.id = e.run_step_id WHERE r.pipeline = 'soak'"
        ).fetchall()
        bad_totals = conn.execute(
            "SELECT count(*) FROM runs r WHERE r.pipeline = 'soak' AND"
            " (r.total_created, r.total_updated, r.total_skipped, r.total_failed) IS NOT"
            " (SELECT coalesce(sum(created_count), 0), coalesce(sum(updated_count), 0),"
            "  coalesce(sum(skipped_count), 0), coalesce(sum(failed_count), 0)"
            "  FROM run_steps s WHERE s.run_id = r.id)"
        ).fetchone()[0]
        parked = conn.execute("SELECT count(*) FROM parked_events").fetchone()[0]
        dead = conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
    finally:
        conn.close()
    dup = {
        "runs": sum(n - 1 for n in Counter(r[0] for r in run_rows).values()),
        "steps": sum(n - 1 for n in Counter(r[0] for r in step_rows).values()),
        "errors": sum(n - 1 for n in Counter(r[0] for r in error_rows).values()),
    }
    runs = {r[0]: r[2] for r in run_rows}
    steps = {r[0]: r[1:] for r in step_rows}
    errors = {r[0]: r[1:] for r in error_rows}
    missing = Counter()
    wrong = Counter()
    for run, outcome in logged["runs"].items():
        if run not in runs:
            missing["runs"] += 1
        elif outcome is not None and runs[run] != outcome:
            wrong["run_outcome"] += 1
    for step, run in logged["steps"].items():
        if step not in steps:
            missing["steps"] += 1
        elif steps[step][0] != run:
            wrong["step_run"] += 1
    for step, end in logged["ends"].items():
        row = steps.get(step)
        if row is None or row[6] is None:
            missing["step_ends"] += 1
        elif tuple(row[1:6]) != end:
            wrong["step_counts"] += 1
    for error, where in logged["errors"].items():
        if error not in errors:
            missing["errors"] += 1
        elif tuple(errors[error]) != where:
            wrong["error_parent"] += 1
    return {
        "rows": {"runs": len(run_rows), "steps": len(step_rows), "errors": len(error_rows)},
        "extra": {
            "runs": len(set(runs) - set(logged["runs"])),
            "steps": len(set(steps) - set(logged["steps"])),
            "errors": len(set(errors) - set(logged["errors"])),
        },
        "missing": dict(missing),
        "duplicated": dup,
        "wrong": dict(wrong),
        "runs_total_not_sum": bad_totals,
        "parked": parked,
        "dead_letters": dead,
    }


def soak(minutes: float, seed: int) -> dict:
    rng = random.Random(seed)
    root = Path(tempfile.mkdtemp(prefix="rl-soak-", dir="/tmp"))
    daemon = Daemon(root)
    daemon.start()
    slots: list[subprocess.Popen | None] = [None] * SLOTS
    deaths: list[float] = [0.0] * SLOTS
    logs: list[Path] = []
    stats = Counter()
    end = time.monotonic() + minutes * 60
    next_daemon_kill = time.monotonic() + rng.uniform(0.05, 0.5)
    try:
        while time.monotonic() < end:
            now = time.monotonic()
            for i in range(SLOTS):
                proc = slots[i]
                if proc is not None and proc.poll() is not None:
                    stats["pipelines_finished"] += 1
                    slots[i] = None
                elif proc is not None and now >= deaths[i]:
                    proc.kill()
                    proc.wait(timeout=30)
                    stats["pipelines_killed"] += 1
                    slots[i] = None
                if slots[i] is None:
                    log = root / f"p{len(logs)}.log"
                    logs.append(log)
                    argv = [sys.executable, "-c", PIPELINE, str(daemon.sock), str(daemon.spool)]
                    argv += [str(log), str(rng.randrange(1 << 30)), str(rng.randint(5, 60))]
                    slots[i] = subprocess.Popen(
                        argv, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                    )
                    stats["pipelines_started"] += 1
                    deaths[i] = now + rng.uniform(0.3, 4.0)  # mid-run, as a rule
            if now >= next_daemon_kill:
                daemon.kill()
                stats["daemon_kills"] += 1
                daemon.start()
                next_daemon_kill = now + rng.uniform(0.05, 0.5)
            time.sleep(0.01)
        for proc in slots:
            if proc is not None:
                proc.kill()
                proc.wait(timeout=30)
                stats["pipelines_killed"] += 1
        daemon.kill()
        daemon.start()  # started clean: it replays every spool file left behind
        drained = daemon.wait_drained(timeout=300)
        logged = _parse_logs(logs)
        check = _check(daemon.db, logged)
        spool_left = len(list(daemon.spool.glob("*.spool"))) if daemon.spool.is_dir() else 0
        corrupt = daemon.spool / "corrupt"
        quarantined = len(list(corrupt.iterdir())) if corrupt.is_dir() else 0
    finally:
        for proc in slots:
            if proc is not None and proc.poll() is None:
                proc.kill()
        daemon.kill()
    ok = (
        drained
        and not check["missing"]
        and not any(check["duplicated"].values())
        and not check["wrong"]
        and check["runs_total_not_sum"] == 0
        and check["parked"] == 0
        and check["dead_letters"] == 0
        and spool_left == 0
        and quarantined == 0
    )
    result = {
        "ok": ok,
        "minutes": minutes,
        "seed": seed,
        **stats,
        "calls_returned": logged["calls"],
        "logged": {k: len(logged[k]) for k in ("runs", "steps", "ends", "errors")},
        **check,
        "spool_files_left": spool_left,
        "quarantined": quarantined,
        "drained": drained,
    }
    if ok:
        shutil.rmtree(root, ignore_errors=True)
    else:
        result["kept"] = str(root)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long to soak")
    parser.add_argument("--seed", type=int, default=11, help="random seed")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        result = soak(args.minutes, args.seed)
        print(json.dumps(result, indent=2))
        return 0 if result["ok"] else 1
    return 130


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    sys.exit(main())
