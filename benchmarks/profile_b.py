"""Where the time goes in shape (b), by py-spy and perf.  Prints ONE JSON object.

Shape (b) (8 processes, ``close()`` after every run, the daemon at FULL) is
run once while

* ``py-spy record`` samples the daemon's event-loop thread (wall time when
  not idle: a COMMIT's fsync counts, waiting in epoll does not) and one
  pipeline process, and the samples are summed into areas (``DAEMON_AREAS``,
  ``CLIENT_AREAS``: the first pattern found in a sample's stack names it);
* ``perf record -e cpu-clock`` samples the daemon's CPU by shared object:
  the interpreter, SQLite, msgspec, the kernel (system calls, fsync, the
  socket), the C library.  This machine has no hardware counters, so perf
  counts CPU time, not cycles or instructions; Python 3.11 has no perf
  trampoline, so Python code shows as the interpreter.

Needs py-spy (``make profile`` installs it into the venv) and perf
(Debian's linux-perf); what is missing is reported as such, not guessed.

    .venv/bin/python benchmarks/profile_b.py [--runs 1920] [--procs 8]
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _bench import (
    CALLS_PER_RUN,
    PYTHON,
    commits,
    cpu_s,
    daemon_status,
    machine,
    running_daemon,
)
from bench_pipelines import _collect, _race, _spawn_workers

PYSPY_ARGS = ("record", "-r", "250", "-f", "raw", "--nonblocking")
PERF_ARGS = ("perf", "record", "-e", "cpu-clock", "-F", "999")
#: Area of a daemon sample: the first of these found in its stack (innermost
#: frames are checked first, so "Applier.apply" wins over "Store.apply").
DAEMON_AREAS = (
    ("events: the handlers' SQL statements", ("_handlers.py", "_apply.py", "Applier.")),
    ("COMMIT and BEGIN (WAL writes, fsync)", ("Store.apply",)),
    ("writer bookkeeping (batching, status figures, checkpoints)", ("Writer.", "Store.")),
    ("reading and decoding frames", ("Connection._reader", "_decode_chunk", "FrameDecoder")),
    ("rendering and sending acks", ("Connection._sender", "render_replies")),
    ("trio: scheduler, epoll, task switches", ("trio/", "trio\\", "_run.py", "outcome")),
)
CLIENT_AREAS = (
    ("imports (the first tracker loads the client)", ("importlib", "<module>")),
    ("waiting for acks in close() (poll)", ("wait_ready", "flush")),
    ("write-ahead spool append", ("SpoolWriter.", "encode_record")),
    ("socket send and reply handling", ("_send_frame", "_pump", "_handle_replies", "_write_out")),
    ("event encode and window", ("ClientConnection.", "encode", "frame_payload")),
    ("ids, timestamps, argument checks", ("uuid7", "now_ms", "_coerce", "_ids")),
    ("run meta (start_run)", ("run_meta", "_meta")),
    ("tracker methods and the client's dispatch", ("RunTracker.", "Client.", "_guard", "_tracker")),
    ("the benchmark's own loop", ("_pipeline.py",)),
)


def _areas(raw: Path, areas: tuple[tuple[str, tuple[str, ...]], ...], keep: str = "") -> dict:
    """Share (%) of ``raw`` (py-spy's collapsed stacks) per area, of samples containing ``keep``."""
    counts: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if keep not in stack or not n.isdigit():
            continue
        total += int(n)
        frames = [f for f in stack.split(";")[::-1] if f]  # innermost first
        if not frames:
            continue  # no Python frame (native code only)
        leaves[frames[0]] += int(n)
        name = "other"
        for frame in frames:
            found = next((a for a, pats in areas if any(p in frame for p in pats)), None)
            if found is not None:
                name = found
                break
        counts[name] += int(n)
    if not total:
        return {"samples": 0}
    return {
        "samples": total,
        "percent": {k: round(100 * v / total, 1) for k, v in counts.most_common()},
        "top_innermost_frames": {k: round(100 * v / total, 1) for k, v in leaves.most_common(12)},
    }


def _perf_by_dso(data: Path) -> dict[str, Any]:
    out = subprocess.run(
        ["perf", "report", "-i", str(data), "--stdio", "--sort", "dso", "-q"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    shares: dict[str, float] = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].endswith("%"):
            name = Path(" ".join(parts[1:])).name
            shares[name] = round(shares.get(name, 0.0) + float(parts[0].rstrip("%")), 1)
    return {"percent": dict(sorted(shares.items(), key=lambda kv: -kv[1])[:10])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", type=int, default=8)
    parser.add_argument("--runs", type=int, default=1920)
    args = parser.parse_args()
    pyspy = shutil.which("py-spy") or str(Path(PYTHON).parent / "py-spy")
    have_pyspy = Path(pyspy).exists()
    have_perf = shutil.which("perf") is not None
    out: dict[str, Any] = {"benchmark": "profile_b", "procs": args.procs, "runs": args.runs}
    with tempfile.TemporaryDirectory(prefix="profile-b-") as tmp:
        folder = Path(tmp)
        with running_daemon(folder / "d", synchronous="FULL") as d:
            run_args = ["--mode", "runtally", "--socket", str(d.socket), "--spool", str(d.spool)]
            workers = _spawn_workers(args.procs, args.runs, folder, [*run_args, "--close-each-run"])
            tools: list[subprocess.Popen[bytes]] = []
            if have_pyspy:
                for who, pid in (("daemon", d.pid), ("client", workers[0][0].pid)):
                    raw = folder / f"{who}.txt"
                    tools.append(
                        subprocess.Popen(
                            [pyspy, *PYSPY_ARGS, "-p", str(pid), "-o", str(raw)],
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                        )
                    )
            if have_perf:
                tools.append(
                    subprocess.Popen(
                        [*PERF_ARGS, "-o", str(folder / "perf.data"), "-p", str(d.pid)],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )
            time.sleep(1.0)  # the profilers attach before the go
            before, cpu0 = daemon_status(d.socket), cpu_s(d.pid)
            seconds = _race(workers, d.db, args.runs, timeout=120)
            after = daemon_status(d.socket)
            events = after["events_committed"] - before["events_committed"]
            result = _collect(workers, folder)
            out["b"] = {
                "events_per_s": round(args.runs * CALLS_PER_RUN / seconds),
                "end_run_close_ms": result["end_run_close_ms"],
                "daemon_cpu_us_per_event": round((cpu_s(d.pid) - cpu0) / events * 1e6, 1),
                "events_per_commit": round(events / max(1, commits(after) - commits(before)), 1),
                "client_cpu_ms_per_run": round(result["cpu_s"] / args.runs * 1e3, 2),
            }
            for tool in tools:  # both write what they sampled on SIGINT
                tool.send_signal(signal.SIGINT)
                tool.wait(120)
        if have_pyspy:
            out["daemon_loop_py_spy"] = _areas(folder / "daemon.txt", DAEMON_AREAS, "unrolled_run")
            out["client_py_spy"] = _areas(folder / "client.txt", CLIENT_AREAS)
        else:
            out["daemon_loop_py_spy"] = out["client_py_spy"] = "py-spy not installed"
        out["daemon_perf_by_dso"] = (
            _perf_by_dso(folder / "perf.data") if have_perf else "perf not installed"
        )
    out["machine"] = machine()
    print(json.dumps(out))


if __name__ == "__main__":
    sys.exit(main())
