"""Fault suite: the daemon and the pipelines killed with SIGKILL, nothing lost or doubled.

Real processes only: the daemon is ``python -m runtally.cli daemon``, the
pipelines are ``python -c`` processes using the real RunTracker; the test
kills them with SIGKILL on a seeded schedule and then compares the database,
row by row, with what every pipeline says it emitted.
"""

from __future__ import annotations

import random
import signal
import sqlite3
import time
from pathlib import Path

import pytest
from daemon_helpers import count, ro_connect, wait_until
from fault_helpers import (
    FaultDaemon,
    Pipeline,
    assert_ledger,
    reaped,
    spool_files,
    wait_idle,
    wait_spool_drained,
)

from runtally.protocol import (
    ErrorEvent,
    RunEnd,
    RunStart,
    StepEnd,
    StepStart,
    decode_client_message,
    read_spool,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

SEED = 20260208


def test_daemon_sigkilled_in_a_loop_under_multiprocess_load(short_root: Path) -> None:
    """4 pipeline processes emit while the daemon is SIGKILLed and restarted every
    0.3-0.7 s (seeded), at least 5 times and until each pipeline has finished 50
    runs.  Afterwards every run, step and error is in the database exactly once
    with the right counts, totals and outcomes; nothing is parked or
    dead-lettered; every pipeline exited 0 and never saw an exception.

    Nothing hangs on timing: the kills begin once every pipeline has had events
    acked through the socket (a loaded machine may take seconds to start four
    interpreters), and the pipelines emit until the test tells them to stop,
    so every kill hits live traffic however slow the machine.
    """
    rng = random.Random(SEED)
    d = FaultDaemon(short_root).start()
    names = [f"fault-crash-{i}" for i in range(4)]
    stop = short_root / "stop"
    pipes = [
        Pipeline.spawn(
            short_root,
            name,
            socket_path=d.socket,
            spool=d.spool,
            seconds=60.0,  # a bound; they stop when ``stop`` appears
            max_runs=100_000,
            pause=0.008,
            seed=SEED + i,
            progress=True,
            stop=stop,
        )
        for i, name in enumerate(names)
    ]
    kills = 0
    try:
        with reaped(pipes):
            wait_until(
                lambda: all(p.runs_done() and p.runs_done()[-1][1] > 0 for p in pipes),
                timeout=30,
                what="every pipeline to have events acked by the daemon",
            )
            while kills < 5 or any(len(p.runs_done()) < 50 for p in pipes):
                assert kills < 40, [len(p.runs_done()) for p in pipes]
                assert all(p.proc.poll() is None for p in pipes), "a pipeline stopped early"
                time.sleep(rng.uniform(0.3, 0.7))
                assert d.kill(signal.SIGKILL) == -signal.SIGKILL
                kills += 1
                time.sleep(rng.uniform(0.0, 0.2))  # down for a moment: clients spool
                d.start()
            stop.touch()
            results = [p.wait(timeout=30) for p in pipes]
        # One more crash and restart after the load, then the spools drain.
        d.kill(signal.SIGKILL)
        d.start()
        wait_spool_drained(d.spool)
        wait_idle(d.socket)
        rows = assert_ledger(d.db, results, names)
        assert "Traceback" not in d.read_log(), d.read_log()[-3000:]
    finally:
        d.ensure_dead()
    assert kills >= 3, "the schedule must actually kill the daemon under load"
    assert rows["runs"] >= 4 * 50, rows  # the load was real
    assert rows["errors"] > 0
    # The kills hit live traffic: some events went through the spool, most through the socket.
    assert sum(r["spooled"] for r in results) > 0
    assert sum(r["acked"] for r in results) > 0


def test_daemon_down_for_a_whole_pipeline_then_started(short_root: Path) -> None:
    """No daemon at all while a pipeline runs: its calls stay fast, it exits 0, its
    one spool file holds everything; a daemon started afterwards replays it and
    every event appears exactly once."""
    d = FaultDaemon(short_root)  # not started
    name = "fault-down"
    p = Pipeline.spawn(
        short_root,
        name,
        socket_path=d.socket,
        spool=d.spool,
        seconds=2.0,
        max_runs=150,
        pause=0.001,
        seed=SEED,
    )
    with reaped([p]):
        result = p.wait(timeout=30)
    assert len(result["runs"]) == 150
    assert result["acked"] == 0
    assert len(spool_files(d.spool)) == 1
    # Fast: a spool append per call, and the connect attempts are rate-limited,
    # not one per event (generous bounds: CI machines are noisy).
    assert result["p50_us"] < 1_000, result
    assert result["p99_us"] < 20_000, result
    assert result["connect_attempts"] <= 12, result
    assert result["close_s"] < 1.0, result
    d.start()
    try:
        wait_spool_drained(d.spool)
        wait_idle(d.socket)
        assert_ledger(d.db, [result], [name])
        assert count(d.db, "audit_log", "event = 'spool_replayed'") == 1
    finally:
        d.ensure_dead()


def test_pipeline_sigkilled_mid_run_its_torn_spool_is_replayed(short_root: Path) -> None:
    """A pipeline spooling (daemon down) is SIGKILLed mid-run; the last record of its
    spool file is torn as a writer killed mid-append leaves it.  The daemon replays
    every complete record exactly once, drops the torn one, and does not call the
    file corrupt.

    A SIGKILL cannot split the single ``os.write`` of one record to a regular file,
    so the kill itself leaves a clean tail; the test then cuts the file inside its
    last record (at a seeded offset) to produce the torn tail the format allows.
    """
    rng = random.Random(SEED)
    d = FaultDaemon(short_root)  # down: the pipeline spools
    p = Pipeline.spawn(
        short_root,
        "fault-torn",
        socket_path=d.socket,
        spool=d.spool,
        seconds=30.0,
        max_runs=100_000,
        pause=0.001,
        seed=SEED,
        progress=True,
    )
    with reaped([p]):
        wait_until(
            lambda: len(p.runs_done()) >= 20,
            timeout=20,
            what="the pipeline to finish 20 runs",
        )
        p.kill()
    assert p.proc.returncode == -signal.SIGKILL
    (path,) = spool_files(d.spool)
    data = path.read_bytes()
    records, tail = read_spool(data)
    assert tail.state in ("clean", "torn"), tail
    if tail.state == "clean":
        last = 8 + len(records[-1])  # length + crc + payload
        cut = len(data) - last + rng.randint(1, last - 1)
        with path.open("r+b") as fh:
            fh.truncate(cut)
        torn = decode_client_message(records.pop())
    else:
        torn = None
    events = [decode_client_message(r) for r in records]
    assert len(events) > 20 * 4

    d.start()
    try:
        wait_spool_drained(d.spool)
        wait_idle(d.socket)
        _assert_events_applied_once(d.db, events, torn)
        assert count(d.db, "audit_log", "event = 'spool_replayed'") == 1
        assert count(d.db, "audit_log", "event = 'spool_quarantined'") == 0
    finally:
        d.ensure_dead()


def _assert_events_applied_once(db: Path, events: list, torn: object) -> None:
    """Each event's effect is in the db, once; the torn event's effect is not."""
    conn = ro_connect(db)
    conn.row_factory = sqlite3.Row
    try:
        runs = {r["uid"]: r for r in conn.execute("SELECT * FROM runs")}
        steps = {
            r["uid"]: r
            for r in conn.execute(
                "SELECT s.*, r.uid AS run_uid FROM run_steps s JOIN runs r ON r.id = s.run_id"
            )
        }
        errors = {
            r["uid"]: r
            for r in conn.execute(
                "SELECT e.*, r.uid AS run_uid FROM run_errors e JOIN runs r ON r.id = e.run_id"
            )
        }
        parked = conn.execute("SELECT count(*) FROM parked_events").fetchone()[0]
        dead = conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
    finally:
        conn.close()
    kinds = {t: [e for e in events if isinstance(e, t)] for t in (RunStart, StepStart, ErrorEvent)}
    assert len(runs) == len(kinds[RunStart])
    assert len(steps) == len(kinds[StepStart])
    assert len(errors) == len(kinds[ErrorEvent])
    for e in events:
        if isinstance(e, RunStart):
            assert runs[e.run]["pipeline"] == e.pipeline
        elif isinstance(e, StepStart):
            assert steps[e.step]["run_uid"] == e.run
            assert steps[e.step]["step_name"] == e.name
        elif isinstance(e, ErrorEvent):
            assert errors[e.id]["run_uid"] == e.run
            assert errors[e.id]["error_message"] == e.message
        elif isinstance(e, StepEnd):
            row = steps[e.step]
            assert row["outcome"] == e.outcome
            assert (row["created_count"], row["failed_count"]) == (e.created, e.failed)
        elif isinstance(e, RunEnd):
            assert runs[e.run]["outcome"] == e.outcome
            assert runs[e.run]["finished_at"] is not None
    ended = {e.run for e in events if isinstance(e, RunEnd)}
    for uid, row in runs.items():
        mine = [s for s in steps.values() if s["run_uid"] == uid]
        assert row["total_created"] == sum(s["created_count"] for s in mine)
        assert row["total_failed"] == sum(s["failed_count"] for s in mine)
        assert (row["outcome"] == "running") == (uid not in ended)
    if isinstance(torn, RunStart):
        assert torn.run not in runs
    elif isinstance(torn, StepStart):
        assert torn.step not in steps
    elif isinstance(torn, ErrorEvent):
        assert torn.id not in errors
    elif isinstance(torn, StepEnd):
        assert steps[torn.step]["finished_at"] is None
    elif isinstance(torn, RunEnd):
        assert runs[torn.run]["outcome"] == "running"
    assert parked == 0
    assert dead == 0
