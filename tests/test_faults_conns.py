"""Fault suite: many idle connections, the connection limit, the idle timeout.

The daemon is a real process; limits come from a TOML config file passed in
RUNTALLY_CONFIG.  Connections are real Unix sockets held open by the test.
"""

from __future__ import annotations

import contextlib
import resource
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_helpers import RawClient, count, run_events, wait_until
from fault_helpers import (
    FaultDaemon,
    Pipeline,
    assert_ledger,
    ping,
    reaped,
    spool_files,
    status,
    wait_idle,
    wait_spool_drained,
    write_config,
)

from runtally.protocol import Ack, ErrorReply, Pong, StatusReply

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

IDLE = 500


@contextlib.contextmanager
def nofile_at_least(n: int) -> Iterator[None]:
    """Raise this process's RLIMIT_NOFILE (children inherit it), restore it afterwards."""
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    soft, hard = before
    if soft < n:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (n, max(hard, n)))
        except (ValueError, OSError) as exc:
            pytest.skip(f"cannot raise RLIMIT_NOFILE to {n} (now {before}): {exc}")
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, before)


def connect(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(str(path))
    return s


def ping_on(c: RawClient) -> None:
    c.send({"type": "ping"})
    assert c.recv(1) == [Pong()]


def status_on(c: RawClient) -> StatusReply:
    """Status over a connection that already holds a slot (needs no new one)."""
    c.send({"type": "status"})
    (reply,) = c.recv(1)
    assert isinstance(reply, StatusReply), reply
    return reply


def test_500_idle_connections_do_not_starve_active_ones(short_root: Path) -> None:
    """500 connections that never send anything stay open while 4 raw clients and a
    RunTracker pipeline are served: every event acked in order and in the database
    once, pings answered promptly.  The daemon inherits the raised RLIMIT_NOFILE."""
    with nofile_at_least(2 * IDLE + 200):
        # All from this one uid: lift the per-uid cap, which is tested on its own.
        config = write_config(short_root, max_connections_per_uid=IDLE + 100)
        d = FaultDaemon(short_root, extra_env={"RUNTALLY_CONFIG": str(config)}).start()
        idle: list[socket.socket] = []
        try:
            soft, _ = resource.prlimit(d.pid, resource.RLIMIT_NOFILE)
            assert soft >= IDLE + 100, f"the daemon may open only {soft} files"
            idle = [connect(d.socket) for _ in range(IDLE)]
            wait_until(
                lambda: status(d.socket).connections >= IDLE + 1,
                timeout=20,
                what="the daemon to accept every idle connection",
            )
            pipe = Pipeline.spawn(
                short_root,
                "fault-conns",
                socket_path=d.socket,
                spool=d.spool,
                seconds=1.5,
                max_runs=100,
                seed=3,
            )
            errors: list[BaseException] = []
            rtts: list[float] = []

            def active(i: int) -> None:
                try:
                    with RawClient(d.socket) as c:
                        for batch in range(10):
                            events = [
                                e for r in range(5) for e in run_events(f"act-{i}-{batch}-{r}")
                            ]
                            t0 = time.monotonic()
                            c.send(*events)
                            assert c.recv(len(events)) == [Ack(e.id) for e in events]
                            rtts.append(time.monotonic() - t0)
                except BaseException as exc:
                    errors.append(exc)

            with reaped([pipe]):
                threads = [threading.Thread(target=active, args=(i,)) for i in range(4)]
                for t in threads:
                    t.start()
                pings = [ping(d.socket, timeout=5) for _ in range(5)]
                for t in threads:
                    t.join(timeout=30)
                assert not any(t.is_alive() for t in threads)
                assert not errors, errors
                result = pipe.wait(timeout=30)
            assert status(d.socket).connections >= IDLE + 1  # the idle ones are all still there
            # The pipeline was served over its socket, not pushed to its spool.
            assert (result["acked"], result["spooled"]) == (result["calls"], 0), result
            wait_spool_drained(d.spool)
            wait_idle(d.socket)
            assert_ledger(d.db, [result], ["fault-conns"])
            assert count(d.db, "runs", "uid LIKE 'act-%' AND outcome = 'success'") == 4 * 10 * 5
            assert count(d.db, "run_errors", "uid LIKE 'act-%'") == 4 * 10 * 5 * 2
            assert max(pings) < 1.0, pings
            assert max(rtts) < 5.0, max(rtts)
            for s in idle:
                s.close()
            wait_until(lambda: status(d.socket).connections == 1, timeout=10, what="closes")
            assert "Traceback" not in d.read_log()
        finally:
            for s in idle:
                s.close()
            d.ensure_dead()


def test_connection_limit_refuses_clearly_and_recovers(short_root: Path) -> None:
    """With max_connections = 50: the 51st connection gets one ``error`` reply naming
    the limit, then EOF; the 50 are still served; once 10 close, 10 new ones are
    accepted and the next is refused again.  A RunTracker pipeline that only ever
    meets the refusal spools everything, exits 0, and its spool is replayed."""
    config = write_config(short_root, max_connections=50, replay_interval_s=0.2)
    d = FaultDaemon(short_root, extra_env={"RUNTALLY_CONFIG": str(config)}).start()
    held: list[RawClient] = []
    try:
        for _ in range(50):
            c = RawClient(d.socket)
            held.append(c)
            ping_on(c)  # accepted and registered before the next one
        assert status_on(held[0]).connections == 50

        def refused() -> str:
            with RawClient(d.socket, timeout=5) as extra:
                replies = extra.recv_until_eof()
            assert len(replies) == 1, replies
            assert isinstance(replies[0], ErrorReply), replies
            return replies[0].error

        reason = refused()
        assert "too many connections" in reason and "50" in reason, reason
        for c in held[:5]:
            ping_on(c)  # the others are untouched

        pipe = Pipeline.spawn(
            short_root,
            "fault-limit",
            socket_path=d.socket,
            spool=d.spool,
            seconds=1.0,
            max_runs=40,
            seed=5,
        )
        with reaped([pipe]):
            result = pipe.wait(timeout=30)
        assert result["acked"] == 0  # it never got in
        wait_spool_drained(d.spool)  # the replayer needs no connection
        assert not spool_files(d.spool)

        for c in held[:10]:
            c.close()
        del held[:10]
        wait_until(lambda: status_on(held[0]).connections == 40, timeout=10, what="10 closes")
        for _ in range(10):
            c = RawClient(d.socket)
            held.append(c)
            ping_on(c)
        assert status_on(held[0]).connections == 50
        assert "limit 50" in refused()
        events = run_events("limit-ok", 1, 1)
        held[-1].send(*events)
        assert held[-1].recv(len(events)) == [Ack(e.id) for e in events]
        wait_until(lambda: status_on(held[0]).queue_depth == 0, timeout=10)
        assert_ledger(d.db, [result], ["fault-limit"])
    finally:
        for c in held:
            c.close()
        d.ensure_dead()


def test_idle_timeout_closes_idle_connections_and_clients_come_back(short_root: Path) -> None:
    """With idle_timeout_s = 0.3: a silent connection gets EOF after about that long,
    one that keeps talking stays open; a RunTracker that pauses longer than the
    timeout between runs reconnects by itself and loses nothing."""
    config = write_config(short_root, idle_timeout_s=0.3, replay_interval_s=0.2)
    d = FaultDaemon(short_root, extra_env={"RUNTALLY_CONFIG": str(config)}).start()
    try:
        pipe = Pipeline.spawn(
            short_root,
            "fault-idle",
            socket_path=d.socket,
            spool=d.spool,
            seconds=10.0,
            max_runs=3,
            pause=0.6,
            seed=9,
        )
        with reaped([pipe]):
            with RawClient(d.socket) as silent:
                t0 = time.monotonic()
                silent.sock.settimeout(5)
                assert silent.sock.recv(1) == b""  # EOF: closed by the daemon
                waited = time.monotonic() - t0
            assert 0.2 <= waited < 3.0, waited
            with RawClient(d.socket) as chatty:
                t0 = time.monotonic()
                while time.monotonic() - t0 < 1.0:  # 3 idle timeouts, never idle for one
                    ping_on(chatty)
                    time.sleep(0.1)
                ping_on(chatty)
            result = pipe.wait(timeout=30)
        assert len(result["runs"]) == 3
        assert result["connect_attempts"] >= 2  # it did have to come back
        wait_spool_drained(d.spool)
        wait_idle(d.socket)
        assert_ledger(d.db, [result], ["fault-idle"])
    finally:
        d.ensure_dead()
