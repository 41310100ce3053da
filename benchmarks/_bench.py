"""Shared pieces of the benchmarks: the workload, a daemon subprocess, db polling, stats.

Not a benchmark itself.  The scripts beside it import it as ``_bench`` (they
run as ``python benchmarks/<script>.py``, so this directory is on sys.path).
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PYTHON = sys.executable

STEPS_PER_RUN = 10
ERRORS_PER_RUN = 5
#: start_run, 10 x (start_step, end_step), 5 x record_error, end_run
CALLS_PER_RUN = 1 + 2 * STEPS_PER_RUN + ERRORS_PER_RUN + 1
RUN_SHAPE = "start_run, 10 x (start_step, end_step), 5 x record_error, end_run"
STALL_NS = 100_000_000  # a tracking call slower than 100 ms is a stall

ERROR_MESSAGE = "Request failed with status code 422: invalid email address"
ERROR_STACK = "Error: invalid email\n    at submit (lib/laposta.js:120:11)\n" * 3


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "mem_gb": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
    }


# -- statistics -----------------------------------------------------------------------


def percentile(sorted_values: Sequence[int], q: float) -> int:
    """Nearest-rank percentile of an ascending sequence (0 for an empty one)."""
    if not sorted_values:
        return 0
    rank = max(1, round(q / 100 * len(sorted_values) + 0.5 - 1e-9))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def latency_summary(values_ns: list[int]) -> dict[str, float | int]:
    """Median, p99, p99.9 and max in microseconds."""
    values = sorted(values_ns)
    return {
        "calls": len(values),
        "median_us": round(percentile(values, 50) / 1000, 1),
        "p99_us": round(percentile(values, 99) / 1000, 1),
        "p999_us": round(percentile(values, 99.9) / 1000, 1),
        "max_us": round((values[-1] if values else 0) / 1000, 1),
    }


# -- a pipeline's venv ---------------------------------------------------------------------

#: A venv with runtally installed the way a pipeline gets it: the wheel and its
#: dependencies, nothing else (kept between runs; ``pipeline_python`` refreshes it).
PIPELINE_VENV = HERE / ".pipeline-venv"


def pipeline_python() -> tuple[str, dict[str, Any]]:
    """The Python of a pipeline's venv, and what it holds.

    The dev venv's editable install puts an import finder in ``site`` that
    loads pathlib, re and typing into every process (~12-20 ms here) and so
    hides what the client itself imports: a pipeline's venv has the wheel.
    The wheel is built from this tree (``python -m build``) and installed into
    ``PIPELINE_VENV`` (its dependencies from the package index the first
    time; afterwards only runtally is reinstalled).  If that fails (no
    index), the dev venv is used and ``venv`` says so.
    """
    py = PIPELINE_VENV / "bin" / "python"
    with tempfile.TemporaryDirectory(prefix="bench-wheel-") as out:
        try:
            subprocess.run(
                [PYTHON, "-m", "build", "--no-isolation", "--wheel", "--outdir", out, str(ROOT)],
                check=True,
                capture_output=True,
                cwd=ROOT,
            )
            wheel = str(next(Path(out).glob("runtally-*.whl")))
            if not py.exists():
                subprocess.run([PYTHON, "-m", "venv", str(PIPELINE_VENV)], check=True)
                install = [str(py), "-m", "pip", "install", "-q", wheel]
            else:
                install = [str(py), "-m", "pip", "install", "-q", "--force-reinstall", "--no-deps"]
                install.append(wheel)
            subprocess.run(install, check=True, capture_output=True)
        except (subprocess.CalledProcessError, StopIteration) as exc:
            print(f"# pipeline venv unavailable ({exc}); using the dev venv", file=sys.stderr)
            return PYTHON, {"venv": "dev (editable install)"}
        finally:
            shutil.rmtree(ROOT / "build", ignore_errors=True)
    listed = subprocess.run(
        [str(py), "-m", "pip", "list", "--format=freeze"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    return str(py), {
        "venv": "wheel (runtally and its dependencies only)",
        "packages": len(listed),
        "typing_extensions": any(p.lower().startswith("typing_extensions==") for p in listed),
    }


# -- /proc ---------------------------------------------------------------------------------


def proc_status_kb(pid: int, field: str) -> int | None:
    """A ``kB`` field of /proc/<pid>/status (VmHWM: peak RSS, VmRSS: now)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


# -- the daemon ------------------------------------------------------------------------------


def _frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + payload


_PING = _frame(b"\x81\xa4type\xa4ping")  # {"type": "ping"}


def ping(path: Path, timeout: float = 1.0) -> bool:
    """True when a daemon answers a ping on ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
            sock.sendall(_PING)
            return len(sock.recv(64)) > 4
        except OSError:
            return False


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    socket: Path
    db: Path
    spool: Path
    log: Path
    started_s: float = 0.0  # seconds from exec to the first pong

    @property
    def pid(self) -> int:
        return self.proc.pid

    def peak_rss_mb(self) -> float | None:
        kb = proc_status_kb(self.pid, "VmHWM")
        return None if kb is None else round(kb / 1024, 1)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (graceful drain), then wait; SIGKILL if it will not go."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def spawn_daemon(folder: Path, *, synchronous: str = "NORMAL") -> Daemon:
    """``python -m runtally.cli daemon`` on fresh paths in ``folder`` (not waited for)."""
    folder.mkdir(parents=True, exist_ok=True)
    sock, db, spool = folder / "rl.sock", folder / "dashboard.sqlite", folder / "spool"
    log = folder / "daemon.log"
    config = folder / "runtally.toml"
    config.write_text("# benchmark: everything comes from the command line\n")
    env = dict(os.environ, RUNTALLY_CONFIG=str(config))
    with log.open("ab") as err:
        proc = subprocess.Popen(
            [
                PYTHON,
                "-m",
                "runtally.cli",
                "daemon",
                "--socket",
                str(sock),
                "--db",
                str(db),
                "--spool",
                str(spool),
                "--synchronous",
                synchronous,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=env,
            cwd=ROOT,
        )
    return Daemon(proc, sock, db, spool, log)


def wait_ready(daemon: Daemon, timeout: float = 30.0) -> Daemon:
    start = time.perf_counter()
    deadline = start + timeout
    while time.perf_counter() < deadline:
        if daemon.proc.poll() is not None:
            raise RuntimeError(f"daemon exited: {daemon.log.read_text()[-2000:]}")
        if daemon.socket.exists() and ping(daemon.socket, 0.5):
            daemon.started_s = round(time.perf_counter() - start, 3)
            return daemon
        time.sleep(0.005)
    daemon.stop()
    raise RuntimeError(f"daemon not ready after {timeout} s: {daemon.log.read_text()[-2000:]}")


@contextlib.contextmanager
def running_daemon(folder: Path, *, synchronous: str = "NORMAL") -> Iterator[Daemon]:
    daemon = wait_ready(spawn_daemon(folder, synchronous=synchronous))
    try:
        yield daemon
    finally:
        daemon.stop()


# -- the database, read-only -------------------------------------------------------------


def open_ro(db: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, isolation_level=None)
    conn.execute("PRAGMA query_only = ON")
    return conn


def finished_runs(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT count(*) FROM runs WHERE finished_at IS NOT NULL").fetchone()[0]


def db_counts(db: Path) -> dict[str, int]:
    """Rows the workload should have produced (and nothing twice)."""
    conn = open_ro(db)
    try:
        q = conn.execute
        return {
            "runs": q("SELECT count(*) FROM runs").fetchone()[0],
            "runs_finished": finished_runs(conn),
            "steps": q("SELECT count(*) FROM run_steps").fetchone()[0],
            "steps_finished": q(
                "SELECT count(*) FROM run_steps WHERE finished_at IS NOT NULL"
            ).fetchone()[0],
            "errors": q("SELECT count(*) FROM run_errors").fetchone()[0],
        }
    finally:
        conn.close()


def expected_counts(runs: int) -> dict[str, int]:
    return {
        "runs": runs,
        "runs_finished": runs,
        "steps": runs * STEPS_PER_RUN,
        "steps_finished": runs * STEPS_PER_RUN,
        "errors": runs * ERRORS_PER_RUN,
    }


# -- the daemon's own figures --------------------------------------------------------------


def cpu_s(pid: int) -> float:
    """utime + stime of a live process (/proc/<pid>/stat), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def daemon_status(path: Path, timeout: float = 5.0) -> dict[str, Any]:
    """The daemon's ``status`` reply as a dict (events_committed, commit_seconds, ...)."""
    import msgspec

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(_frame(msgspec.msgpack.encode({"type": "status"})))
        data = b""
        while len(data) < 4 or len(data) < 4 + int.from_bytes(data[:4], "big"):
            chunk = sock.recv(65536)
            if not chunk:
                raise RuntimeError("daemon closed the connection before its status reply")
            data += chunk
    return msgspec.msgpack.decode(data[4 : 4 + int.from_bytes(data[:4], "big")])


def commits(status: dict[str, Any]) -> int:
    """Commits the daemon made since it started (its commit histogram's count)."""
    histogram = status.get("commit_seconds") or {}
    return sum(histogram.get("counts", []))
