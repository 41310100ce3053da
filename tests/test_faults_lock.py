"""Fault suite: an outside writer holds the database lock far longer than busy_timeout.

The daemon runs as a real process with ``busy_timeout_ms = 200`` from a TOML
config file; the test holds ``BEGIN IMMEDIATE`` on a separate connection for
~2.5 s (more than ten busy timeouts) while raw protocol clients and RunTracker
pipeline processes keep emitting.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from daemon_helpers import RawClient, count, run_events, wait_until
from fault_helpers import (
    FaultDaemon,
    Pipeline,
    arrival,
    assert_ledger,
    ping,
    reaped,
    status,
    wait_idle,
    wait_spool_drained,
    write_config,
)

from runtally.protocol import Ack

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

BUSY_TIMEOUT_MS = 200
HOLD_S = 2.5


def test_outside_lock_longer_than_busy_timeout_during_load(short_root: Path) -> None:
    """While an outside ``BEGIN IMMEDIATE`` is held: no reply to any event (nothing
    is acked before its COMMIT), nothing reaches the database, ping and status are
    answered promptly and the queue grows.  Once it is released the daemon recovers
    on its own: every raw client gets all its acks in order, and every event of the
    pipelines is in the database exactly once."""
    config = write_config(short_root, busy_timeout_ms=BUSY_TIMEOUT_MS, replay_interval_s=0.2)
    d = FaultDaemon(short_root, extra_env={"RUNTALLY_CONFIG": str(config)}).start()
    names = ["fault-lock-0", "fault-lock-1"]
    pipes = [
        Pipeline.spawn(
            short_root,
            name,
            socket_path=d.socket,
            spool=d.spool,
            seconds=4.0,
            max_runs=400,
            pause=0.01,
            seed=i,
        )
        for i, name in enumerate(names)
    ]
    clients = [RawClient(d.socket) for _ in range(3)]
    locker = sqlite3.connect(d.db, isolation_level=None, timeout=10)
    try:
        with reaped(pipes):
            wait_until(
                lambda: count(d.db, "runs", "pipeline LIKE 'fault-lock-%'") >= 10,
                timeout=20,
                what="pipeline load to reach the database",
            )
            locker.execute("BEGIN IMMEDIATE")
            held_at = time.monotonic()
            sent: list[list[str]] = []
            for i, c in enumerate(clients):
                events = [e for r in range(20) for e in run_events(f"lock-{i}-{r}", 2, 1)]
                c.send(*events)
                sent.append([e.id for e in events])
            total = sum(len(s) for s in sent)
            probes = 0
            while time.monotonic() - held_at < HOLD_S:
                assert ping(d.socket, timeout=2) < 1.0  # answered while the db is locked
                st = status(d.socket, timeout=2)
                assert st.queue_depth >= total, st
                for c in clients:
                    assert arrival(c, 0.05) is None, f"while nothing can commit: {arrival(c, 0.01)}"
                assert count(d.db, "runs", "uid LIKE 'lock-%'") == 0
                probes += 1
            assert probes >= 3
            committed_during = status(d.socket).events_committed
            locker.execute("ROLLBACK")
            released_at = time.monotonic()
            assert released_at - held_at > 10 * BUSY_TIMEOUT_MS / 1000

            for c, ids in zip(clients, sent, strict=True):
                replies = c.recv(len(ids))
                assert all(isinstance(r, Ack) for r in replies), replies[:3]
                assert [r.id for r in replies] == ids
            recovered_s = time.monotonic() - released_at
            results = [p.wait(timeout=30) for p in pipes]
        wait_spool_drained(d.spool)
        wait_idle(d.socket)
        assert_ledger(d.db, results, names)
        assert count(d.db, "runs", "uid LIKE 'lock-%' AND outcome = 'success'") == 60
        assert count(d.db, "run_steps", "uid LIKE 'lock-%' AND finished_at IS NOT NULL") == 120
        assert count(d.db, "run_errors", "uid LIKE 'lock-%'") == 120
        assert count(d.db, "runs", "uid LIKE 'lock-%' AND total_created = 3") == 60
        assert status(d.socket).events_committed >= committed_during + total
        log = d.read_log()
        assert "cannot commit now, retrying" in log and "database is locked" in log, log
        assert "writable again" in log, log
        assert "Traceback" not in log, log
    finally:
        locker.close()
        for c in clients:
            c.close()
        d.ensure_dead()
    # Recovery is the writer's own backoff (capped at 2 s), not a restart.
    assert recovered_s < 6.0, recovered_s


def test_outside_lock_with_a_full_queue_applies_backpressure(short_root: Path) -> None:
    """queue_events = 300: while the lock is held the daemon stops reading once 300
    events wait (its queue stays bounded instead of growing with the load); the
    pipelines, unacknowledged, spool what they emitted and exit 0 on time.  After
    the release everything is in the database exactly once."""
    config = write_config(
        short_root, busy_timeout_ms=BUSY_TIMEOUT_MS, queue_events=300, replay_interval_s=0.2
    )
    d = FaultDaemon(short_root, extra_env={"RUNTALLY_CONFIG": str(config)}).start()
    names = ["fault-bp-0", "fault-bp-1"]
    locker = sqlite3.connect(d.db, isolation_level=None, timeout=10)
    try:
        locker.execute("BEGIN IMMEDIATE")
        held_at = time.monotonic()
        pipes = [
            Pipeline.spawn(
                short_root,
                name,
                socket_path=d.socket,
                spool=d.spool,
                seconds=1.5,
                max_runs=300,
                pause=0.0,
                seed=10 + i,
            )
            for i, name in enumerate(names)
        ]
        with reaped(pipes):
            depths = []
            while any(p.proc.poll() is None for p in pipes) and time.monotonic() - held_at < 20:
                assert ping(d.socket, timeout=2) < 1.0
                depths.append(status(d.socket, timeout=2).queue_depth)
                time.sleep(0.1)
            results = [p.wait(timeout=10) for p in pipes]
            assert time.monotonic() - held_at < 10  # nobody waited on the daemon for long
        emitted = sum(r["calls"] for r in results)
        assert emitted > 2000
        assert 0 < max(depths) <= 1000, depths  # bounded by the budget (+ one read's worth)
        assert sum(r["acked"] for r in results) == 0
        locker.execute("ROLLBACK")
        wait_spool_drained(d.spool)
        wait_idle(d.socket)
        assert_ledger(d.db, results, names)
        assert "Traceback" not in d.read_log()
    finally:
        locker.close()
        d.ensure_dead()
