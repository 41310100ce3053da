"""Fault suite: what connections may cost the daemon (memory, time, slots, descriptors).

The daemon is a real process; limits come from a TOML config file passed in
RUNTALLY_CONFIG, its memory from /proc/<pid>/status, its descriptors from
/proc/<pid>/fd and RLIMIT_NOFILE (set with preexec_fn or prlimit).
Connections are real Unix sockets held by the test.
"""

from __future__ import annotations

import contextlib
import re
import resource
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from daemon_helpers import RawClient, count, wait_until
from fault_helpers import FaultDaemon, ping, write_config

from runtally.protocol import (
    MAX_FRAME,
    SPOOL_MAGIC,
    Ack,
    ErrorEvent,
    ErrorReply,
    Pong,
    RunStart,
    encode_message,
    encode_record,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

MiB = 1 << 20


def proc_status(pid: int, field: str) -> int:
    """A ``kB`` field of /proc/<pid>/status (VmRSS, VmHWM), in bytes."""
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB$", text, re.MULTILINE)
    assert match, f"no {field} in /proc/{pid}/status"
    return int(match.group(1)) * 1024


def open_fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def ping_on(c: RawClient) -> None:
    c.send({"type": "ping"})
    assert c.recv(1) == [Pong()]


def error_then_eof(c: RawClient, timeout: float = 10.0) -> str:
    """The one ``error`` reply a connection gets before the daemon closes it."""
    c.sock.settimeout(timeout)
    replies = c.recv_until_eof()
    assert len(replies) == 1 and isinstance(replies[0], ErrorReply), replies
    return replies[0].error


def test_partial_frames_stay_within_the_budget(short_root: Path) -> None:
    """256 connections each send all but the last byte of a 1 MiB frame.  Before the
    budget the daemon buffered every one of them (~256 MB); now its peak RSS stays
    within 96 MiB of where it started, the connections that waited longest are told
    why and closed, and a whole 1 MiB event sent meanwhile is acked."""
    n = 256
    config = write_config(short_root, max_connections_per_uid=1024, max_partial_bytes=16 * MiB)
    d = FaultDaemon(short_root, extra_env={"RUNTALLY_CONFIG": str(config)}).start()
    held: list[RawClient] = []
    try:
        before = proc_status(d.pid, "VmRSS")
        partial = struct.pack(">I", MAX_FRAME) + b"\x00" * (MAX_FRAME - 1)
        closed_early = 0
        for _ in range(n):
            c = RawClient(d.socket)
            held.append(c)
            try:
                c.send_raw(partial)
            except (BrokenPipeError, ConnectionResetError):
                closed_early += 1  # evicted while still sending: also within the budget
        peak = proc_status(d.pid, "VmHWM")
        assert peak - before < 96 * MiB, (
            f"daemon grew from {before / MiB:.0f} MiB to a peak of {peak / MiB:.0f} MiB"
        )
        with RawClient(d.socket) as c:  # an honest big event still gets through
            big = RunStart(
                id="big-rs", ts=1, run="big", pipeline="p", meta={"blob": "x" * (MAX_FRAME - 512)}
            )
            c.send(big)
            assert c.recv(1) == [Ack("big-rs")]
        # The oldest holders were evicted with a reason; at most a budget's worth remain.
        reasons = []
        for c in held[: n - 20]:
            with contextlib.suppress(ConnectionResetError, BrokenPipeError):
                reasons.append(error_then_eof(c))
        assert reasons and all("budget" in r and "incomplete" in r for r in reasons), reasons[:3]
        assert ping(d.socket) < 5.0
        assert proc_status(d.pid, "VmRSS") - before < 96 * MiB
    finally:
        for c in held:
            c.close()
        d.ensure_dead()


def test_slowloris_is_closed_after_the_idle_timeout(short_root: Path) -> None:
    """A client that sends a frame header and then one byte every 0.05 s never
    completes a frame: it is closed with an error once idle_timeout_s (0.5 s) has
    passed since it connected, however often bytes arrive.  (Before: every byte
    restarted the idle timer, so it stayed open as long as it trickled.)"""
    config = write_config(short_root, idle_timeout_s=0.5)
    d = FaultDaemon(short_root, extra_env={"RUNTALLY_CONFIG": str(config)}).start()
    try:
        with RawClient(d.socket) as c:
            t0 = time.monotonic()
            c.send_raw(struct.pack(">I", 10_000))  # a frame that would take 500 s at this pace
            c.sock.settimeout(0.05)
            data = b""
            while time.monotonic() - t0 < 10.0:
                try:
                    c.send_raw(b"\x00")
                except (BrokenPipeError, ConnectionResetError):
                    break
                try:
                    chunk = c.sock.recv(65536)
                except TimeoutError:
                    continue
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                data += chunk
            waited = time.monotonic() - t0
        assert waited < 10.0, "the trickling connection was never closed"
        assert waited >= 0.4, waited
        c.decoder.receive_data(data)
        assert len(c.decoder.frames()) <= 1  # the error reply, if it arrived before EOF
        # An ordinary client is served as before.
        with RawClient(d.socket) as ok:
            ping_on(ok)
        assert "Traceback" not in d.read_log()
    finally:
        d.ensure_dead()


def test_connections_per_uid_are_capped_and_audited(short_root: Path) -> None:
    """With max_connections_per_uid = 5: the 6th connection from this uid gets one
    ``error`` naming the per-uid limit, then EOF; the refusal is logged and audited
    (once, however many follow within a minute); once one closes, one more gets in."""
    config = write_config(short_root, max_connections_per_uid=5)
    d = FaultDaemon(short_root, extra_env={"RUNTALLY_CONFIG": str(config)}).start()
    held: list[RawClient] = []
    try:
        for _ in range(5):
            c = RawClient(d.socket)
            held.append(c)
            ping_on(c)
        for _ in range(3):
            with RawClient(d.socket, timeout=5) as extra:
                reason = error_then_eof(extra)
            assert "uid" in reason and "limit 5 per uid" in reason, reason
        ping_on(held[0])  # the others are untouched
        wait_until(
            lambda: count(d.db, "audit_log", "event = 'connection_refused'") == 1,
            timeout=10,
            what="the refusal's audit row",
        )
        held.pop().close()
        c = wait_until(lambda: _admitted(d.socket), timeout=10, what="a freed slot")
        held.append(c)
        assert count(d.db, "audit_log", "event = 'connection_refused'") == 1
        assert "too many connections from uid" in d.read_log()
    finally:
        for c in held:
            c.close()
        d.ensure_dead()


def _admitted(path: Path) -> RawClient | None:
    c = RawClient(path, timeout=5)
    c.send({"type": "ping"})
    try:
        if c.recv(1) == [Pong()]:
            return c
    except ConnectionError:
        pass
    c.close()
    return None


_SETRLIMIT_EXEC = (
    "import ast, os, resource, sys; "
    "resource.setrlimit(resource.RLIMIT_NOFILE, ast.literal_eval(sys.argv[1])); "
    "os.execv(sys.argv[2], sys.argv[2:])"
)


class LimitedDaemon(FaultDaemon):
    """A FaultDaemon started with RLIMIT_NOFILE set to ``nofile`` (soft, hard)."""

    nofile: tuple[int, int] = (1024, 1024)

    def argv(self) -> list[str]:
        # Set the limit, then exec the daemon (preexec_fn is unsafe with threads).
        return [sys.executable, "-c", _SETRLIMIT_EXEC, repr(self.nofile), *super().argv()]

    def start(self, wait: bool = True) -> LimitedDaemon:
        self.log = (self.root / "daemon.log").open("ab")
        self.proc = subprocess.Popen(
            self.argv(), env=self.env(), stdout=self.log, stderr=self.log, start_new_session=True
        )
        if wait:
            self.wait_ready()
        return self


def test_low_soft_nofile_is_raised_at_start_up(short_root: Path) -> None:
    """Started with systemd's default soft limit (1024) under a higher hard limit, the
    daemon raises its soft limit to max_connections (1024) plus its reserve."""
    d = LimitedDaemon(short_root)
    d.nofile = (1024, 4096)
    d.start()
    try:
        soft, hard = resource.prlimit(d.pid, resource.RLIMIT_NOFILE)
        assert (soft, hard) == (1024 + 64, 4096)
        assert "RLIMIT_NOFILE" not in d.read_log()
    finally:
        d.ensure_dead()


def test_low_hard_nofile_lowers_max_connections_with_one_warning(short_root: Path) -> None:
    """With a hard RLIMIT_NOFILE of 100 the daemon cannot serve 1024 connections: it
    says so in one line and serves 36 (100 minus its reserve of 64), refusing the
    37th clearly instead of failing accept(2) with EMFILE."""
    config = write_config(short_root, max_connections_per_uid=1024)
    d = LimitedDaemon(short_root, extra_env={"RUNTALLY_CONFIG": str(config)})
    d.nofile = (100, 100)
    d.start()
    held: list[RawClient] = []
    try:
        warnings = [line for line in d.read_log().splitlines() if "RLIMIT_NOFILE" in line]
        assert len(warnings) == 1 and "at most 36 connections" in warnings[0], warnings
        for _ in range(36):
            c = RawClient(d.socket)
            held.append(c)
            ping_on(c)
        with RawClient(d.socket, timeout=5) as extra:
            reason = error_then_eof(extra)
        assert "too many connections (limit 36)" in reason, reason
        assert "EMFILE" not in d.read_log()
    finally:
        for c in held:
            c.close()
        d.ensure_dead()


def test_out_of_descriptors_is_one_line_and_the_daemon_recovers(short_root: Path) -> None:
    """The daemon's descriptors run out while it runs (its soft limit lowered with
    prlimit to what it has open plus 8): accept(2) fails with EMFILE and is retried
    every 0.1 s.  The log gets one line for it (not a traceback per retry), and one
    line with the count once accepting works again; once the connections close, a
    ping is answered."""
    config = write_config(short_root, max_connections_per_uid=1024)
    d = FaultDaemon(short_root, extra_env={"RUNTALLY_CONFIG": str(config)}).start()
    held: list[socket.socket] = []
    try:
        _, hard = resource.prlimit(d.pid, resource.RLIMIT_NOFILE)
        resource.prlimit(d.pid, resource.RLIMIT_NOFILE, (open_fds(d.pid) + 8, hard))
        for _ in range(30):  # connect() succeeds from the listen backlog
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(5)
            s.connect(str(d.socket))
            held.append(s)
        wait_until(
            lambda: "cannot accept connections: EMFILE" in d.read_log(),
            timeout=10,
            what="the daemon to run out of descriptors",
        )
        time.sleep(0.5)  # ~5 retries at the limit: the old loop logged a traceback each
        for s in held:
            s.close()
        held.clear()
        wait_until(lambda: ping(d.socket, timeout=2) < 2.0, timeout=15, what="a ping answered")
        log = d.read_log()
        lines = [line for line in log.splitlines() if "cannot accept" in line]
        assert len(lines) == 1, log
        assert "Traceback" not in log, log
        again = re.search(r"accepting connections again after (\d+) failed accepts", log)
        assert again and int(again.group(1)) >= 2, log
        assert d.alive()
    finally:
        for s in held:
            s.close()
        d.ensure_dead()


def test_a_spool_of_big_events_replays_within_the_budget(short_root: Path) -> None:
    """A valid spool file of 1 MiB events (a pipeline that records whole response
    bodies while the daemon is down) is replayed a few MiB at a time.  Before, a
    replay job was cut only at 2,000 records, so the daemon held the whole file,
    raw and decoded (1.26 GB of RSS for a 630 MB file)."""
    n = 120
    spool = short_root / "spool"
    message = "x" * (MAX_FRAME - 512)
    events = [RunStart(id="big-rs", ts=1, run="big", pipeline="bigspool")]
    events += [
        ErrorEvent(id=f"big-{i}", ts=1, run="big", step_name="s", message=message) for i in range(n)
    ]
    staged = short_root / "big.spool"
    with staged.open("wb") as fh:
        fh.write(SPOOL_MAGIC)
        for event in events:
            fh.write(encode_record(encode_message(event)))
    d = FaultDaemon(short_root).start()
    try:
        before = proc_status(d.pid, "VmRSS")
        path = spool / "1770000000000-testhost-4242-big.spool"
        staged.rename(path)  # whole, at once: as a client's file of a writer that is gone
        wait_until(lambda: not path.exists(), timeout=60, what="the spool file to be replayed")
        assert count(d.db, "run_errors") == n
        peak = proc_status(d.pid, "VmHWM")
        assert peak - before < 32 * MiB, (
            f"daemon grew from {before / MiB:.0f} MiB to a peak of {peak / MiB:.0f} MiB"
        )
    finally:
        d.ensure_dead()
