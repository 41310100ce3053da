"""The daemon as a real process: signals, systemd notify/watchdog, socket activation."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from daemon_helpers import (
    REPO,
    DaemonProcess,
    RawClient,
    count,
    daemon_process,
    run_events,
    wait_until,
)

from runtally.protocol import Ack, Pong


def test_sigterm_under_load_commits_and_acks_everything_received(short_root: Path) -> None:
    """Everything the daemon read before SIGTERM is committed AND acked; exit 0; socket gone."""
    d = DaemonProcess(short_root).start()
    clients = [RawClient(d.socket) for _ in range(4)]
    sent: list[list[str]] = [[] for _ in clients]
    stop = threading.Event()

    def pump(i: int) -> None:
        c = clients[i]
        r = 0
        while not stop.is_set():
            ev = run_events(f"t{i}-{r}", steps=3, errors=1)
            try:
                c.send(*ev)
            except OSError:
                return
            sent[i] += [e.id for e in ev]
            r += 1

    threads = [threading.Thread(target=pump, args=(i,)) for i in range(len(clients))]
    for t in threads:
        t.start()
    wait_until(lambda: count(d.db, "runs") > 20, what="load to reach the database")
    assert d.kill(signal.SIGTERM) == 0
    stop.set()
    for t in threads:
        t.join(timeout=10)
    acked: set[str] = set()
    for i, c in enumerate(clients):
        replies = c.recv_until_eof()
        ids = [r.id for r in replies]
        assert all(isinstance(r, Ack) for r in replies)
        assert ids == sent[i][: len(ids)]  # in order, a prefix of what was sent
        acked.update(ids)
        c.close()
    assert not d.socket.exists()
    conn = sqlite3.connect(d.db)
    committed = {
        row[0] for row in conn.execute("SELECT uid FROM runs UNION ALL SELECT uid FROM run_errors")
    }
    run_start_ids = {i.removesuffix("-rs") for i in acked if i.endswith("-rs")}
    error_ids = {i for i in acked if "-e0" in i and i.count("-") == 3}
    # Acked => committed, and committed => acked (nothing received was left unanswered).
    assert run_start_ids | error_ids == committed
    assert len(acked) > 100


def test_second_signal_exits_at_once(short_root: Path) -> None:
    d = DaemonProcess(short_root).start()
    locker = sqlite3.connect(d.db, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")  # the drain can't finish while this is held
    with RawClient(d.socket) as c:
        c.send(*run_events("stuck", steps=1, errors=0))
        time.sleep(0.3)
        assert d.proc is not None
        d.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        assert d.proc.poll() is None  # still draining
        d.proc.send_signal(signal.SIGTERM)
        assert d.proc.wait(timeout=5) == 1
    locker.execute("ROLLBACK")
    assert "again; exiting now" in d.read_log()


def test_kill9_then_restart_replaces_stale_socket(short_root: Path) -> None:
    d = DaemonProcess(short_root).start()
    with RawClient(d.socket) as c:
        ev = run_events("before", steps=1, errors=0)
        c.send(*ev)
        assert c.recv(len(ev)) == [Ack(e.id) for e in ev]
    d.kill(signal.SIGKILL)
    assert d.socket.exists()  # stale
    d2 = DaemonProcess(short_root).start()
    try:
        with RawClient(d2.socket) as c:
            c.send({"type": "ping"})
            assert c.recv(1) == [Pong()]
        assert count(d2.db, "runs", "uid = 'before'") == 1
    finally:
        d2.stop()


def test_second_daemon_refuses_to_start(daemon_proc: DaemonProcess) -> None:
    result = subprocess.run(
        daemon_proc.argv(),
        env=daemon_proc.env(),
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert result.returncode == 1
    assert "another daemon is already listening" in result.stderr
    assert "Traceback" not in result.stderr


class NotifyListener:
    """A datagram socket bound where systemd's NOTIFY_SOCKET would be."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[tuple[float, str]] = []
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode()))

    def lines(self, key: str) -> list[float]:
        return [t for t, m in self.messages if f"{key}\n" in m + "\n"]

    def close(self) -> None:
        self._stop = True
        self._thread.join(timeout=2)
        self.sock.close()


def test_sd_notify_ready_watchdog_stopping(short_root: Path) -> None:
    listener = NotifyListener(short_root / "notify")
    d = DaemonProcess(
        short_root,
        extra_env={"NOTIFY_SOCKET": str(listener.path), "WATCHDOG_USEC": "400000"},
    ).start()
    try:
        wait_until(lambda: listener.lines("READY=1"), what="READY=1")
        wait_until(lambda: len(listener.lines("WATCHDOG=1")) >= 3, what="watchdog pings")
        status = [m for _, m in listener.messages if "STATUS=" in m]
        assert any("events committed" in m for m in status)
        assert d.kill(signal.SIGTERM) == 0
        wait_until(lambda: listener.lines("STOPPING=1"), what="STOPPING=1")
    finally:
        listener.close()


def test_watchdog_stops_while_the_writer_is_wedged(short_root: Path) -> None:
    """A writer stuck inside SQLite (busy handler, 10 s) must stop the WATCHDOG=1 pings.

    No sleeps: every watchdog tick sends one datagram, "WATCHDOG=1" with the
    status while the writer lives, the status saying "writer stalled" when it
    does not; the test reads the ticks as they come.
    """
    config = short_root / "rl.toml"
    config.write_text("[runtally]\nbusy_timeout_ms = 10000\n")
    listener = NotifyListener(short_root / "notify")
    d = DaemonProcess(
        short_root,
        extra_env={
            "NOTIFY_SOCKET": str(listener.path),
            "WATCHDOG_USEC": "400000",
            "RUNTALLY_CONFIG": str(config),
        },
    ).start()

    def ticks() -> list[str]:
        return [m for _, m in listener.messages if "STATUS=" in m and "READY=1" not in m]

    try:
        wait_until(lambda: len(listener.lines("WATCHDOG=1")) >= 2, what="watchdog pings")
        locker = sqlite3.connect(d.db, isolation_level=None, timeout=10)
        locker.execute("BEGIN IMMEDIATE")
        with RawClient(d.socket) as c:
            before = len(ticks())
            c.send(*run_events("wedge", steps=1, errors=0))
            # The writer is inside sqlite's busy handler; the watchdog notices.
            (stalled_at,) = wait_until(
                lambda: [i for i, m in enumerate(ticks()) if i >= before and "stalled" in m][:1],
                what="the watchdog to see the writer stalled",
            )
            # Three more ticks while it stays wedged (10 s busy timeout): none pings.
            wait_until(lambda: len(ticks()) >= stalled_at + 4, what="three more ticks")
            wedged = ticks()[stalled_at : stalled_at + 4]
            assert not [m for m in wedged if "WATCHDOG=1" in m], wedged
            assert all("writer stalled" in m for m in wedged), wedged
            locker.execute("ROLLBACK")
            c.recv(4)
        resumed = len(listener.messages)
        wait_until(
            lambda: any("WATCHDOG=1" in m for _, m in listener.messages[resumed:]),
            what="watchdog to resume",
        )
    finally:
        listener.close()
        d.stop()


def test_socket_activation(short_root: Path) -> None:
    """Under systemd-socket-activate the daemon uses fd 3 and never unlinks the socket."""
    tool = shutil.which("systemd-socket-activate")
    assert tool, "systemd-socket-activate missing: run `make system-deps`"
    sock = short_root / "act.sock"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNTALLY_")}
    env["PYTHONPATH"] = str(REPO)
    log = (short_root / "act.log").open("wb")
    proc = subprocess.Popen(
        [
            tool,
            "-l",
            str(sock),
            "--setenv=PYTHONPATH",
            sys.executable,
            "-m",
            "runtally.cli",
            "daemon",
            "--socket",
            str(sock),
            "--db",
            str(short_root / "a.sqlite"),
            "--spool",
            str(short_root / "spool"),
        ],
        env=env,
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    try:
        # The path exists from bind(); connections are refused until listen().
        client = wait_until(lambda: RawClient(sock, timeout=15), what="activation socket")
        with client as c:
            ev = run_events("activated", steps=2, errors=1)
            c.send(*ev)
            assert c.recv(len(ev)) == [Ack(e.id) for e in ev]
        assert count(short_root / "a.sqlite", "runs", "uid = 'activated'") == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert sock.exists()  # the socket belongs to the activator, not the daemon
        audit = (
            sqlite3.connect(short_root / "a.sqlite")
            .execute("SELECT data_json FROM audit_log WHERE event = 'daemon_started'")
            .fetchone()[0]
        )
        assert '"socket_activated":true' in audit
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_clean_exit_codes(short_root: Path, sig: int) -> None:
    with daemon_process(short_root) as d:
        assert d.kill(sig) == 0
        assert not d.socket.exists()
