"""The shapes pipelines really have, runtally vs. direct SQLite.  Prints ONE JSON object.

Runs of ``start_run, 10 x (start_step, end_step), 5 x record_error, end_run``
(27 tracking calls), three ways:

* (a) ``backlog``: P processes, many runs each back to back, one flush at
  the end (how fast the daemon drains a backlog);
* (b) ``close_each_run``: the same, but ``close()`` after every run, as a
  pipeline's exit does: each run waits for its own acks (end_run+close timed);
* (c) ``cron``: a fresh Python process per run (``_cron.py``), ``--concurrency``
  at a time: import, one run, exit flush, exit.  With a no-tracking baseline.

Each against the old tracker's SQL in every process (``legacy_tracker.py``)
at synchronous FULL and NORMAL; runtally's daemon runs at its default, FULL
(an ack means durable).  Daemon figures come from /proc/<pid>/stat (CPU) and
its ``status`` reply (events committed; commits from its commit histogram).
Also: the physical floor (one fsync on this disk, one round trip on a Unix
socket) and what importing the client costs.

    .venv/bin/python benchmarks/bench_shapes.py [--procs 8] [--runs 480] [--cron-runs 96]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
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
    ROOT,
    RUN_SHAPE,
    commits,
    cpu_s,
    daemon_status,
    db_counts,
    expected_counts,
    finished_runs,
    machine,
    open_ro,
    percentile,
    pipeline_python,
    running_daemon,
)
from bench_pipelines import _collect, _race, _spawn_workers
from legacy_tracker import open_db

DIRECT = {"direct_full": "FULL", "direct_normal": "NORMAL"}
#: The Python every pipeline process runs: a venv with the wheel (``main`` sets it).
PIPELINE = {"python": PYTHON}


# -- shapes (a) and (b) ------------------------------------------------------------------


def _daemon_figures(daemon: Any, before: dict[str, Any], cpu0: float) -> dict[str, Any]:
    after = daemon_status(daemon.socket)
    events = after["events_committed"] - before["events_committed"]
    n = commits(after) - commits(before)
    cpu = cpu_s(daemon.pid) - cpu0
    return {
        "daemon_cpu_s": round(cpu, 3),
        "daemon_cpu_us_per_event": round(cpu / events * 1e6, 1) if events else None,
        "commits": n,
        "events_per_commit": round(events / n, 1) if n else None,
        "daemon_peak_rss_mb": daemon.peak_rss_mb(),
    }


def run_batch(variant: str, procs: int, runs: int, close_each: bool, folder: Path) -> dict:
    """Shape (a) (close_each False) or (b): P processes sharing ``runs`` runs."""
    folder.mkdir(parents=True)
    extra = ["--close-each-run"] if close_each else []
    began = time.perf_counter()
    if variant in DIRECT:
        db = folder / "direct.sqlite"
        open_db(db, DIRECT[variant]).close()
        args = ["--mode", "direct", "--db", str(db), "--synchronous", DIRECT[variant], *extra]
        workers = _spawn_workers(procs, runs, folder, args, PIPELINE["python"])
        seconds = _race(workers, db, runs, timeout=600)
        result = _collect(workers, folder)
        daemon: dict[str, Any] = {}
    else:
        with running_daemon(folder / "d", synchronous="FULL") as d:
            args = ["--mode", "runtally", "--socket", str(d.socket), "--spool", str(d.spool)]
            workers = _spawn_workers(procs, runs, folder, [*args, *extra], PIPELINE["python"])
            before, cpu0 = daemon_status(d.socket), cpu_s(d.pid)
            seconds = _race(workers, d.db, runs, timeout=120)
            daemon = _daemon_figures(d, before, cpu0)
            result = _collect(workers, folder)
            db = d.db
    del began
    events = runs * CALLS_PER_RUN
    return {
        "events_per_s": round(events / seconds),
        "seconds": round(seconds, 3),
        "process_cpu_ms_per_run": round(result["cpu_s"] / runs * 1e3, 2),
        "latency": result["latency"],
        **({"end_run_close_ms": result["end_run_close_ms"]} if close_each else {}),
        **({"flush_at_exit_max_ms": result["flush_at_exit_max_ms"]} if daemon else {}),
        "spooled": result.get("spooled", 0),
        "lock_errors": result["lock_errors"],
        "stalls": result["stalls"],
        **daemon,
        "rows_exact": db_counts(db) == expected_counts(runs),
    }


# -- shape (c) -------------------------------------------------------------------------------


def run_cron(variant: str, runs: int, concurrency: int, folder: Path) -> dict[str, Any]:
    """Shape (c): ``runs`` fresh processes, ``concurrency`` at a time."""
    folder.mkdir(parents=True)
    script, python = str(HERE / "_cron.py"), PIPELINE["python"]
    if variant == "none":
        return _cron_race([python, script, "none"], runs, concurrency, None)
    if variant in DIRECT:
        db = folder / "direct.sqlite"
        open_db(db, DIRECT[variant]).close()
        out = _cron_race([python, script, "direct", str(db), DIRECT[variant]], runs, concurrency)
        out["rows_exact"] = db_counts(db) == expected_counts(runs)
        return out
    with running_daemon(folder / "d", synchronous="FULL") as d:
        before, cpu0 = daemon_status(d.socket), cpu_s(d.pid)
        command = [python, script, "runtally", str(d.socket), str(d.spool)]
        out = _cron_race(command, runs, concurrency, d.db)
        out.update(_daemon_figures(d, before, cpu0))
        out["rows_exact"] = db_counts(d.db) == expected_counts(runs)
    return out


def _cron_race(
    command: list[str], runs: int, concurrency: int, db: Path | None = None
) -> dict[str, Any]:
    """Start ``runs`` processes, at most ``concurrency`` alive; per-process wall and CPU."""
    env = dict(os.environ, PYTHONPATH=str(HERE))
    running: dict[int, tuple[subprocess.Popen[bytes], float]] = {}
    walls: list[float] = []
    cpus: list[float] = []
    reports: list[dict[str, Any]] = []
    started = 0
    began = time.perf_counter()
    while started < runs or running:
        while started < runs and len(running) < concurrency:
            proc = subprocess.Popen(command, stdout=subprocess.PIPE, env=env, cwd=HERE)
            running[proc.pid] = (proc, time.perf_counter())
            started += 1
        pid, status, usage = os.wait4(-1, 0)
        if pid not in running:
            continue
        proc, t0 = running.pop(pid)
        walls.append(time.perf_counter() - t0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out = proc.stdout.read() if proc.stdout else b""
        if proc.returncode:
            raise RuntimeError(f"{command[:3]} exited {proc.returncode}")
        reports.append(json.loads(out))
        cpus.append(usage.ru_utime + usage.ru_stime)
    seconds = time.perf_counter() - began
    if db is not None:  # acked means committed; spooled runs arrive by replay
        conn = open_ro(db)
        try:
            deadline = time.perf_counter() + 60
            while finished_runs(conn) < runs and time.perf_counter() < deadline:
                time.sleep(0.005)
            seconds = max(seconds, time.perf_counter() - began)
        finally:
            conn.close()
    walls.sort()
    exits = sorted(r["exit_ms"] for r in reports)
    return {
        "runs_per_s": round(runs / seconds, 1),
        "seconds": round(seconds, 3),
        "process_wall_ms": {
            "p50": round(percentile(walls, 50) * 1e3, 1),
            "p99": round(percentile(walls, 99) * 1e3, 1),
        },
        "process_cpu_ms_median": round(statistics.median(cpus) * 1e3, 1),
        "import_ms_median": round(statistics.median(r["import_ms"] for r in reports), 2),
        "calls_ms_median": round(statistics.median(r["calls_ms"] for r in reports), 2),
        "exit_flush_ms": {
            "p50": round(percentile(exits, 50), 2),
            "p99": round(percentile(exits, 99), 2),
        },
        "spooled": sum(r.get("spooled", 0) for r in reports),
    }


# -- the floor, and the import -------------------------------------------------------------


def fsync_floor(folder: Path, n: int = 200) -> dict[str, float]:
    """One small write + fsync on the disk the databases are on (ms, median and p99)."""
    path = folder / "fsync.probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    took = []
    try:
        for i in range(n):
            os.pwrite(fd, b"x" * 4096, (i % 16) * 4096)
            t0 = time.perf_counter()
            os.fsync(fd)
            took.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
        path.unlink()
    took.sort()
    return {
        "p50_ms": round(percentile(took, 50) * 1e3, 3),
        "p99_ms": round(percentile(took, 99) * 1e3, 3),
    }


def socket_round_trip(n: int = 5000) -> dict[str, float]:
    """One 16-byte request and reply between two processes on a Unix socketpair (us)."""
    import socket

    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:  # echo until EOF
        parent.close()
        while data := child.recv(64):
            child.sendall(data)
        os._exit(0)
    child.close()
    took = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        parent.sendall(b"0123456789abcdef")
        parent.recv(64)
        took.append(time.perf_counter_ns() - t0)
    parent.close()
    os.waitpid(pid, 0)
    took.sort()
    return {
        "p50_us": round(percentile(took, 50) / 1e3, 1),
        "p99_us": round(percentile(took, 99) / 1e3, 1),
    }


def wake_penalty(folder: Path, n: int = 400) -> dict[str, float]:
    """A tracking call's system calls (a 300-byte append to a file, a 300-byte
    send on a Unix socket), back to back vs. right after a 2 ms sleep (us, p50).

    A pipeline's ``start_run`` comes right after ``close()`` slept waiting for
    acks; on this VM the first microseconds after a sleep run several times
    slower (caches, the vCPU's wake-up), whatever the code does.
    """
    import socket

    fd = os.open(folder / "wake.spool", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    record = b"x" * 300
    took: dict[str, list[int]] = {"back_to_back": [], "after_sleep": []}
    try:
        for i in range(2 * n):
            case = "after_sleep" if i % 2 else "back_to_back"
            if i % 2:
                time.sleep(0.002)
            t0 = time.perf_counter_ns()
            os.write(fd, record)
            a.send(record)
            took[case].append(time.perf_counter_ns() - t0)
            b.recv(4096)
            if i % 64 == 63:
                os.ftruncate(fd, 0)
    finally:
        os.close(fd)
        a.close()
        b.close()
    return {f"{k}_p50_us": round(percentile(sorted(v), 50) / 1e3, 1) for k, v in took.items()}


_IMPORT_PROBE = """
import time, sys
t0 = time.perf_counter()
import msgspec
t1 = time.perf_counter()
from runtally import RunTracker
t2 = time.perf_counter()
t = RunTracker("probe", socket=sys.argv[1], spool=sys.argv[2])
t.start_run()
t3 = time.perf_counter()
t.end_run(); t.close()
print((t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3)
"""


def _importtime_ms(stderr: str) -> tuple[float, float]:
    """From ``-X importtime`` output: msgspec's cumulative ms, and the sum of the
    top-level modules imported after it (runtally's import and first call)."""
    msgspec_us = ours_us = 0
    seen_msgspec = False
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = line.split("|")
        if name.startswith("  ") or not cumulative.strip().isdigit():
            continue  # nested (counted in its parent's cumulative), or the header
        if name.strip() == "msgspec":
            msgspec_us, seen_msgspec = int(cumulative), True
        elif seen_msgspec:
            ours_us += int(cumulative)
    return msgspec_us / 1e3, ours_us / 1e3


def _process_cpu_ms(python: str, argv: list[str], cwd: Path) -> float:
    proc = subprocess.Popen([python, *argv], stdout=subprocess.DEVNULL, cwd=cwd)
    _, _, usage = os.wait4(proc.pid, 0)
    return (usage.ru_utime + usage.ru_stime) * 1e3


def import_cost(folder: Path, python: str, n: int = 15) -> dict[str, Any]:
    """What the client costs a fresh process before its first event is out (ms, medians).

    Run with the pipeline venv's ``python`` (the wheel, see
    ``_bench.pipeline_python``) from a directory without the source tree.
    msgspec is imported first and counted apart (``msgspec_ms``: typing, re,
    enum, datetime, uuid, decimal - and typing_extensions when installed);
    ``runtally_import_ms`` is ``from runtally import RunTracker``;
    ``first_call_ms`` the first ``RunTracker(...)`` and ``start_run()``, which
    load the rest of the client (daemon up).  ``importtime_ms``: the same two
    parts by ``python -X importtime`` (cumulative, so inflated by its own
    bookkeeping).  ``process_cpu_ms``: CPU (user+sys) of a whole process that
    does nothing, imports msgspec, or does the probe (interleaved runs).
    """
    figures: list[list[float]] = []
    stamps: list[tuple[float, float]] = []
    cpu: dict[str, list[float]] = {"python": [], "msgspec": [], "probe": []}
    with running_daemon(folder / "imp", synchronous="FULL") as d:
        probe = ["-c", _IMPORT_PROBE, str(d.socket), str(d.spool)]
        for _ in range(n):
            out = subprocess.run(
                [python, *probe], capture_output=True, text=True, check=True, cwd=folder
            ).stdout
            figures.append([float(x) for x in out.split()])
            err = subprocess.run(
                [python, "-X", "importtime", *probe],
                capture_output=True,
                text=True,
                check=True,
                cwd=folder,
            ).stderr
            stamps.append(_importtime_ms(err))
            for key, argv in (("python", ["-c", "pass"]), ("msgspec", ["-c", "import msgspec"])):
                cpu[key].append(_process_cpu_ms(python, argv, folder))
            cpu["probe"].append(_process_cpu_ms(python, probe, folder))
    msgspec_ms, import_ms, first_ms = (statistics.median(col) for col in zip(*figures, strict=True))
    return {
        "msgspec_ms": round(msgspec_ms, 2),
        "runtally_import_ms": round(import_ms, 2),
        "first_call_ms": round(first_ms, 2),
        "ours_ms": round(import_ms + first_ms, 2),
        "importtime_ms": {
            "msgspec": round(statistics.median(m for m, _ in stamps), 2),
            "runtally_and_first_call": round(statistics.median(o for _, o in stamps), 2),
        },
        "process_cpu_ms": {k: round(statistics.median(v), 1) for k, v in cpu.items()},
    }


# -- putting it together ---------------------------------------------------------------------


def _median(reps: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The repetition with the median ``key``, every repetition's figure beside it."""
    ordered = sorted(reps, key=lambda r: r[key])
    chosen = dict(ordered[len(ordered) // 2])
    if len(reps) > 1:
        chosen[f"{key}_each"] = [r[key] for r in reps]
        rss = [r["daemon_peak_rss_mb"] for r in reps if r.get("daemon_peak_rss_mb")]
        if rss:
            chosen["daemon_peak_rss_mb"] = max(rss)
        chosen["rows_exact"] = all(r.get("rows_exact", True) for r in reps)
    return chosen


def _loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--runs", type=int, default=480, help="runs per (a)/(b) configuration")
    parser.add_argument("--cron-runs", type=int, default=96, help="processes per (c) configuration")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    # Bytecode compiled, as an installed package is (PYTHONDONTWRITEBYTECODE is
    # set here, which stops Python writing .pyc files, not reading them).
    subprocess.run(
        [PYTHON, "-m", "compileall", "-q", str(ROOT / "runtally"), str(HERE)], check=True
    )
    load_before = _loadavg()
    usage0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    out: dict[str, Any] = {"benchmark": "shapes", "run_shape": RUN_SHAPE}
    with tempfile.TemporaryDirectory(prefix="bench-shapes-", dir=args.dir) as tmp:
        base = Path(tmp)
        out["floor"] = {
            "fsync": fsync_floor(base),
            "unix_socket_round_trip": socket_round_trip(),
            "wake_penalty": wake_penalty(base),
        }
        PIPELINE["python"], out["pipeline_venv"] = pipeline_python()
        out["import"] = import_cost(base, PIPELINE["python"])
        variants = ("runtally", "direct_full", "direct_normal")
        for shape, close_each in (("a", False), ("b", True)):
            by_procs: dict[str, Any] = {}
            for procs in (
                args.procs if shape == "a" else [p for p in args.procs if p > 1] or args.procs
            ):
                reps: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
                for rep in range(args.repeat):
                    for v in variants:
                        folder = base / f"{shape}-{procs}-{v}-{rep}"
                        r = run_batch(v, procs, args.runs, close_each, folder)
                        reps[v].append(r)
                        print(
                            f"# ({shape}) P={procs} {v}: {r['events_per_s']} ev/s", file=sys.stderr
                        )
                by_procs[str(procs)] = {v: _median(rs, "events_per_s") for v, rs in reps.items()}
            out[shape] = by_procs
        reps_c: dict[str, list[dict[str, Any]]] = {v: [] for v in ("none", *variants)}
        for rep in range(args.repeat):
            for v, done in reps_c.items():
                r = run_cron(v, args.cron_runs, args.concurrency, base / f"c-{v}-{rep}")
                done.append(r)
                print(f"# (c) {v}: {r['runs_per_s']} runs/s", file=sys.stderr)
        out["c"] = {v: _median(rs, "runs_per_s") for v, rs in reps_c.items()}
    usage1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    out["load"] = {
        "loadavg_before": load_before,
        "loadavg_after": _loadavg(),
        "our_cpu_s": round(
            usage1.ru_utime + usage1.ru_stime - usage0.ru_utime - usage0.ru_stime, 1
        ),
    }
    out["settings"] = vars(args) | {"dir": str(args.dir) if args.dir else None}
    out["machine"] = machine()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
