"""Helpers for the fault suite: pipeline processes, config files, ledger checks.

Everything is real: pipelines are ``python -c`` processes that use the real
``RunTracker`` against the real daemon's socket and a real spool directory;
the ledger is read from the real ``dashboard.sqlite`` with a read-only
connection.  Each pipeline writes what it *meant* to record (every run uid,
step uid, error id, count and outcome) to a JSON file when it finishes; the
tests compare that with the database row by row.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from daemon_helpers import REPO, DaemonProcess, RawClient, ro_connect, wait_until

from runtally.protocol import Pong, StatusReply

# A pipeline process: many small runs with steps, counts and errors, through
# the real RunTracker, until its time or run budget is spent or the file
# cfg["stop"] exists.  Every tracking call is timed.  With cfg["progress"], a
# line "<run uid> <events acked so far>" is appended after each run.  At the
# end it writes what it emitted (the expected ledger) to cfg["out"]
# atomically, then exits 0.  An exception anywhere is a bug:
# the traceback goes to stderr and the exit status is 1.
PIPELINE = r"""
import json, os, random, sys, time
cfg = json.loads(sys.argv[1])
from runtally import RunTracker

rng = random.Random(cfg["seed"])
tracker = RunTracker(cfg["pipeline"], club_slug="rondo", socket=cfg["socket"], spool=cfg["spool"])
lat = []

def timed(fn, *args):
    t0 = time.perf_counter()
    result = fn(*args)
    lat.append(time.perf_counter() - t0)
    return result

runs = {}
if cfg.get("progress"):
    progress = open(cfg["progress"], "w", buffering=1)
deadline = time.monotonic() + cfg["seconds"]
n = 0
stop = cfg.get("stop")
while n < cfg["max_runs"] and time.monotonic() < deadline:
    if stop and os.path.exists(stop):
        break
    run = timed(tracker.start_run)
    assert run is not None
    steps, errors, totals = {}, [], [0, 0, 0, 0]
    for s in range(rng.randint(1, 3)):
        name = f"step{s}"
        sid = timed(tracker.start_step, name)
        assert sid is not None
        nerr = rng.randint(0, 2)
        for e in range(nerr):
            eid = timed(tracker.record_error, name, sid, f"KNVB{e}", f"boom {n}.{s}.{e}")
            assert eid is not None
            errors.append([eid, sid])
        counts = [rng.randint(0, 20), rng.randint(0, 5), rng.randint(0, 3), nerr]
        outcome = "failure" if nerr and rng.random() < 0.5 else "success"
        timed(tracker.end_step, sid, outcome, *counts)
        steps[sid] = [outcome, *counts]
        totals = [a + b for a, b in zip(totals, counts)]
    success = rng.random() < 0.8
    timed(tracker.end_run, success, {"n": n})
    runs[run] = {
        "outcome": "success" if success else "failure",
        "totals": totals,
        "steps": steps,
        "errors": errors,
    }
    if cfg.get("progress"):
        progress.write(f"{run} {tracker.client.acked}\n")
    n += 1
    if cfg["pause"]:
        time.sleep(cfg["pause"])
t0 = time.perf_counter()
tracker.close()
close_s = time.perf_counter() - t0
lat.sort()
client = tracker.client
result = {
    "runs": runs,
    "calls": len(lat),
    "p50_us": lat[len(lat) // 2] * 1e6 if lat else 0,
    "p99_us": lat[int(len(lat) * 0.99)] * 1e6 if lat else 0,
    "max_us": lat[-1] * 1e6 if lat else 0,
    "close_s": close_s,
    "connect_attempts": client.connect_attempts,
    "acked": client.acked,
    "spooled": client.spooled,
}
with open(cfg["out"] + ".tmp", "w") as fh:
    json.dump(result, fh)
os.replace(cfg["out"] + ".tmp", cfg["out"])
"""

#: Lines on a pipeline's stderr that would mean an event was lost or a call failed.
#: (Warnings that the daemon is unreachable and events are being spooled are fine.)
FORBIDDEN_STDERR = (
    "Traceback",
    "failed (",  # RunTracker.<method> failed (...): an exception swallowed by _safe
    "flush failed",
    "close failed",
    "not recorded",
    "dropp",  # "dropping", "being dropped"
    "cannot write spool",
    "cannot create a spool",
    "refused event",
)


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any RUNTALLY_* (nothing may reach a real daemon)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNTALLY_")}
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


@dataclass
class Pipeline:
    """One pipeline process and, once it has exited, what it says it emitted."""

    name: str
    root: Path
    proc: subprocess.Popen
    out: Path
    err: Path
    progress: Path | None = None
    result: dict = field(default_factory=dict)

    @classmethod
    def spawn(
        cls,
        root: Path,
        name: str,
        *,
        socket_path: Path,
        spool: Path,
        seconds: float,
        max_runs: int,
        pause: float = 0.005,
        seed: int = 0,
        progress: bool = False,
        stop: Path | None = None,
    ) -> Pipeline:
        out = root / f"{name}.json"
        err = root / f"{name}.stderr"
        prog = root / f"{name}.progress" if progress else None
        cfg = {
            "pipeline": name,
            "socket": str(socket_path),
            "spool": str(spool),
            "seconds": seconds,
            "max_runs": max_runs,
            "pause": pause,
            "seed": seed,
            "out": str(out),
            "progress": str(prog) if prog else None,
            "stop": str(stop) if stop else None,
        }
        with err.open("wb") as errf:
            proc = subprocess.Popen(
                [sys.executable, "-c", PIPELINE, json.dumps(cfg)],
                env=clean_env(),
                stdout=subprocess.DEVNULL,
                stderr=errf,
            )
        return cls(name, root, proc, out, err, prog)

    def wait(self, timeout: float = 30.0) -> dict:
        """Wait for a clean exit; assert it never raised and never lost an event."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise AssertionError(f"pipeline {self.name} still running after {timeout}s") from None
        stderr = self.stderr()
        assert code == 0, f"pipeline {self.name} exited {code}:\n{stderr}"
        bad = [line for line in stderr.splitlines() if any(f in line for f in FORBIDDEN_STDERR)]
        assert not bad, f"pipeline {self.name} reported problems:\n" + "\n".join(bad)
        self.result = json.loads(self.out.read_text())
        return self.result

    def runs_done(self) -> list[tuple[str, int]]:
        """(run uid, events acked by then) for each run finished so far (needs ``progress``)."""
        assert self.progress is not None, "spawned without progress=True"
        try:
            text = self.progress.read_text()
        except FileNotFoundError:
            return []
        complete = text.split("\n")[:-1]  # a last line without its newline may be half-written
        return [(uid, int(acked)) for uid, _, acked in (line.partition(" ") for line in complete)]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stderr(self) -> str:
        with contextlib.suppress(OSError):
            return self.err.read_text(errors="replace")
        return ""


@contextlib.contextmanager
def reaped(pipelines: list[Pipeline]) -> Iterator[list[Pipeline]]:
    """Never leave a pipeline process behind, whatever the test does."""
    try:
        yield pipelines
    finally:
        for p in pipelines:
            if p.proc.poll() is None:
                p.proc.kill()
                p.proc.wait(timeout=10)


def write_config(root: Path, **settings: object) -> Path:
    """A TOML config file with a [runtally] table; pass it as RUNTALLY_CONFIG."""
    lines = ["[runtally]"]
    for key, value in settings.items():
        if isinstance(value, str):
            lines.append(f"{key} = {json.dumps(value)}")
        else:
            lines.append(f"{key} = {value!r}".replace("True", "true").replace("False", "false"))
    path = root / "runtally.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class FaultDaemon(DaemonProcess):
    """DaemonProcess whose database and log may live elsewhere (e.g. a small filesystem)."""

    db_path: Path | None = None
    log_path: Path | None = None

    @property
    def db(self) -> Path:  # type: ignore[override]
        return self.db_path or self.root / "dashboard.sqlite"

    def start(self, wait: bool = True) -> FaultDaemon:
        log = self.log_path or self.root / "daemon.log"
        self.log = log.open("ab")
        self.proc = subprocess.Popen(
            self.argv(), env=self.env(), stdout=self.log, stderr=self.log, start_new_session=True
        )
        if wait:
            self.wait_ready()
        return self

    def read_log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.log_path or self.root / "daemon.log").read_text(errors="replace")
        return ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ensure_dead(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(timeout=10)


def ping(sock: Path, timeout: float = 5.0) -> float:
    """Round trip of one ping on a fresh connection, in seconds (fails on no pong)."""
    t0 = time.monotonic()
    with RawClient(sock, timeout=timeout) as c:
        c.send({"type": "ping"})
        reply = c.recv(1)[0]
    assert isinstance(reply, Pong), reply
    return time.monotonic() - t0


def status(sock: Path, timeout: float = 5.0) -> StatusReply:
    with RawClient(sock, timeout=timeout) as c:
        c.send({"type": "status"})
        reply = c.recv(1)[0]
    assert isinstance(reply, StatusReply), reply
    return reply


def arrival(client: RawClient, seconds: float) -> str | None:
    """What arrives on ``client`` within ``seconds``: None (nothing), "EOF" or the reply."""
    client.sock.settimeout(seconds)
    try:
        data = client.sock.recv(65536, socket.MSG_PEEK)
    except TimeoutError:
        return None
    except OSError as exc:
        return f"error {exc!r}"
    finally:
        client.sock.settimeout(10.0)
    if not data:
        return "EOF (the daemon closed the connection)"
    return f"{len(data)} bytes: {data[:64]!r}"


def spool_files(spool: Path) -> list[Path]:
    if not spool.is_dir():
        return []
    return sorted(spool.glob("*.spool"))


def wait_spool_drained(spool: Path, timeout: float = 20.0) -> None:
    """Wait until the daemon has replayed (and so deleted) every spool file."""
    wait_until(lambda: not spool_files(spool), timeout, interval=0.05, what="spool to drain")
    corrupt = spool / "corrupt"
    assert not (corrupt.is_dir() and any(corrupt.iterdir())), list(corrupt.iterdir())


def wait_idle(sock: Path, timeout: float = 20.0) -> StatusReply:
    """Wait until the daemon has nothing queued and no spool file waiting."""

    def idle() -> StatusReply | None:
        st = status(sock)
        return st if st.queue_depth == 0 and st.spool_files == 0 else None

    return wait_until(idle, timeout, interval=0.05, what="daemon to be idle")


# -- the ledger ----------------------------------------------------------------------


def expected_ledger(results: Iterable[dict]) -> tuple[dict, dict, dict]:
    """(runs, steps, errors) the pipelines meant to record, keyed by uid."""
    runs: dict[str, tuple] = {}
    steps: dict[str, tuple] = {}
    errors: dict[str, tuple] = {}
    for result in results:
        for run, r in result["runs"].items():
            runs[run] = (r["outcome"], *r["totals"])
            for sid, s in r["steps"].items():
                steps[sid] = (run, *s)
            for eid, sid in r["errors"]:
                errors[eid] = (run, sid)
    return runs, steps, errors


def actual_ledger(db: Path, pipelines: Iterable[str]) -> tuple[dict, dict, dict, int, int, int]:
    """(runs, steps, errors, run rows, step rows, error rows) of those pipelines in the db."""
    names = list(pipelines)
    marks = ",".join("?" * len(names))
    conn = ro_connect(db)
    try:
        run_rows = conn.execute(
            "SELECT uid, outcome, total_created, total_updated, total_skipped, total_failed,"
            f" finished_at FROM runs WHERE pipeline IN ({marks})",
            names,
        ).fetchall()
        step_rows = conn.execute(
            "SELECT s.uid, r.uid, s.outcome, s.created_count, s.updated_count, s.skipped_count,"
            " s.failed_count, s.finished_at FROM run_steps s JOIN runs r ON r.id = s.run_id"
            f" WHERE r.pipeline IN ({marks})",
            names,
        ).fetchall()
        error_rows = conn.execute(
            "SELECT e.uid, r.uid, st.uid FROM run_errors e JOIN runs r ON r.id = e.run_id"
            f" LEFT JOIN run_steps st ON st.id = e.run_step_id WHERE r.pipeline IN ({marks})",
            names,
        ).fetchall()
    finally:
        conn.close()
    for rows in (run_rows, step_rows):
        assert all(row[-1] is not None for row in rows), "a run or step was never finished"
    runs = {row[0]: tuple(row[1:6]) for row in run_rows}
    steps = {row[0]: tuple(row[1:7]) for row in step_rows}
    errors = {row[0]: tuple(row[1:]) for row in error_rows}
    return runs, steps, errors, len(run_rows), len(step_rows), len(error_rows)


def _diff(kind: str, expected: dict, actual: dict) -> str:
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    wrong = [k for k in expected if k in actual and expected[k] != actual[k]]
    if not (missing or extra or wrong):
        return ""
    first = wrong[:3]
    return (
        f"{kind}: {len(missing)} missing {missing[:3]}, {len(extra)} extra {extra[:3]}, "
        f"{len(wrong)} wrong {[(k, expected[k], actual[k]) for k in first]}\n"
    )


def assert_ledger(
    db: Path, results: list[dict], pipelines: Iterable[str], *, alone: bool = True
) -> dict[str, int]:
    """Every run, step and error the pipelines emitted is in the db exactly once, and right.

    Exactly once: the row counts equal the number of distinct uids expected
    (a row with a NULL or repeated uid would show up as a count mismatch), and
    every row matches what the pipeline meant: outcome, counts, totals (run
    totals are the sums of its steps' counts), the run and step it belongs to.
    With ``alone`` (nobody else wrote this db): nothing is parked and nothing
    was dead-lettered.
    """
    want_runs, want_steps, want_errors = expected_ledger(results)
    runs, steps, errors, n_runs, n_steps, n_errors = actual_ledger(db, pipelines)
    report = (
        _diff("runs", want_runs, runs)
        + _diff("steps", want_steps, steps)
        + _diff("errors", want_errors, errors)
    )
    assert not report, report
    assert (n_runs, n_steps, n_errors) == (len(want_runs), len(want_steps), len(want_errors))
    rows = {"runs": n_runs, "steps": n_steps, "errors": n_errors}
    if not alone:
        return rows
    conn = ro_connect(db)
    try:
        parked = conn.execute("SELECT count(*) FROM parked_events").fetchone()[0]
        dead = conn.execute("SELECT count(*), group_concat(reason, '; ') FROM dead_letters")
        dead_count, reasons = dead.fetchone()
    finally:
        conn.close()
    assert parked == 0, f"{parked} events still parked"
    assert dead_count == 0, f"{dead_count} dead letters: {str(reasons)[:500]}"
    return rows
