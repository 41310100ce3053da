"""Real daemons for tests: in-process (trio) and as subprocesses we can kill -9.

Nothing here is a mock: every helper speaks protocol v1 over a real Unix
socket to the real daemon, and reads the real SQLite file read-only.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec

from runtally.config import Settings
from runtally.protocol import ErrorEvent as ErrorEventMsg
from runtally.protocol import (
    FrameDecoder,
    RunEnd,
    RunStart,
    ServerMessage,
    StepEnd,
    StepStart,
    decode_server_message,
    encode_frame,
)

REPO = Path(__file__).resolve().parent.parent


def settings_for(root: Path, **kw: object) -> Settings:
    """Settings for a daemon whose files all live under ``root`` (a short path)."""
    values: dict = {
        "socket": root / "d.sock",
        "db": root / "dashboard.sqlite",
        "spool": root / "spool",
        "replay_interval_s": 0.2,
    }
    values.update(kw)
    return Settings(**values)


def ro_connect(db: Path) -> sqlite3.Connection:
    """A separate read-only connection, as a dashboard would open it."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    conn.execute("PRAGMA busy_timeout = 5000")
    return conn


def count(db: Path, table: str, where: str = "1", params: Iterable = ()) -> int:
    conn = ro_connect(db)
    try:
        return conn.execute(
            f"SELECT count(*) FROM {table} WHERE {where}", tuple(params)
        ).fetchone()[0]
    finally:
        conn.close()


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02, what: str = "condition"):
    """Poll ``predicate`` until truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except (sqlite3.OperationalError, OSError):
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def run_events(run: str, steps: int = 2, errors: int = 1, ts: int = 1_770_000_000_000) -> list:
    """A realistic run's events, in order, ids derived from the run uid."""
    out: list = [RunStart(id=f"{run}-rs", ts=ts, run=run, pipeline="people", club_slug="rondo")]
    for i in range(steps):
        step = f"{run}-s{i}"
        out.append(
            StepStart(id=f"{step}-b", ts=ts + 10 * i + 1, run=run, step=step, name=f"step{i}")
        )
        for j in range(errors):
            out.append(
                ErrorEventMsg(
                    id=f"{step}-e{j}",
                    ts=ts + 10 * i + 2,
                    run=run,
                    step=step,
                    step_name=f"step{i}",
                    message=f"boom {j}",
                    member=f"KNVB{j}",
                )
            )
        out.append(
            StepEnd(
                id=f"{step}-e",
                ts=ts + 10 * i + 5,
                run=run,
                step=step,
                outcome="success",
                created=i + 1,
                updated=2,
                skipped=1,
                failed=errors,
            )
        )
    out.append(RunEnd(id=f"{run}-re", ts=ts + 1000, run=run, outcome="success"))
    return out


class RawClient:
    """A blocking protocol-v1 client over a real socket (test side only)."""

    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.decoder = FrameDecoder()
        self.pending: list[ServerMessage] = []

    def send(self, *messages: msgspec.Struct | dict) -> None:
        self.sock.sendall(b"".join(encode_frame(m) for m in messages))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self, n: int) -> list[ServerMessage]:
        """Exactly ``n`` replies (fails on timeout or EOF first)."""
        while len(self.pending) < n:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError(f"EOF after {len(self.pending)} of {n} replies")
            self.decoder.receive_data(data)
            self.pending += [decode_server_message(f) for f in self.decoder.frames()]
        out, self.pending = self.pending[:n], self.pending[n:]
        return out

    def recv_until_eof(self) -> list[ServerMessage]:
        out = list(self.pending)
        self.pending = []
        while True:
            try:
                data = self.sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not data:
                break
            self.decoder.receive_data(data)
            out += [decode_server_message(f) for f in self.decoder.frames()]
        return out

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class DaemonProcess:
    """``python -m runtally.cli daemon`` as a real child process."""

    root: Path
    proc: subprocess.Popen | None = None
    extra_env: dict | None = None
    extra_args: tuple[str, ...] = ()

    @property
    def socket(self) -> Path:
        return self.root / "d.sock"

    @property
    def db(self) -> Path:
        return self.root / "dashboard.sqlite"

    @property
    def spool(self) -> Path:
        return self.root / "spool"

    def argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "runtally.cli",
            "daemon",
            "--socket",
            str(self.socket),
            "--db",
            str(self.db),
            "--spool",
            str(self.spool),
            *self.extra_args,
        ]

    def env(self) -> dict:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("RUNTALLY_", "NOTIFY_", "WATCHDOG_", "LISTEN_"))
        }
        env["PYTHONPATH"] = str(REPO)
        env.update(self.extra_env or {})
        return env

    def start(self, wait: bool = True) -> DaemonProcess:
        self.log = open(self.root / "daemon.log", "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.argv(), env=self.env(), stdout=self.log, stderr=self.log, start_new_session=True
        )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 15.0) -> None:
        def answers() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}: {self.read_log()}")
            with RawClient(self.socket, timeout=2) as c:
                c.send({"type": "ping"})
                return c.recv(1)[0].__struct_config__.tag == "pong"

        wait_until(answers, timeout, what="daemon to answer ping")

    def read_log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.root / "daemon.log").read_text(errors="replace")
        return ""

    def kill(self, sig: int = signal.SIGKILL) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=30)
        self.log.close()
        return code

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        return self.kill(signal.SIGTERM)


@contextlib.contextmanager
def daemon_process(root: Path, **kw: object) -> Iterator[DaemonProcess]:
    d = DaemonProcess(root, **kw).start()
    try:
        yield d
    finally:
        if d.proc is not None and d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait(timeout=10)


def short_dir(prefix: str = "rl") -> Path:
    """A fresh short directory (AF_UNIX paths must stay under 108 bytes)."""
    import tempfile

    return Path(tempfile.mkdtemp(prefix=f"{prefix}-{uuid.uuid4().hex[:6]}-", dir="/tmp"))
