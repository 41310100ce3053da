"""The writer against a real database whose faults are permanent, not transient.

A fault that one event causes (its table is missing) ends in a nack and a dead
letter for that event, and the rest commits: it is not retried forever.  A
fault of the database itself (not even a dead letter can be written) is
retried, slowly, acking nothing and dead-lettering nothing, until it is fixed.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
from daemon_helpers import run_events

from runtally.daemon._store import Store
from runtally.daemon._writer import Job, Writer
from runtally.protocol import ErrorEvent

pytestmark = pytest.mark.timeout(30)


@dataclass
class Running:
    store: Store
    writer: Writer
    other: sqlite3.Connection  # another connection, as an operator's sqlite3 shell

    def schema(self, table: str) -> list[str]:
        """The CREATE statements of a table and its indexes, table first."""
        rows = self.other.execute(
            "SELECT sql FROM sqlite_master WHERE tbl_name = ? AND sql IS NOT NULL"
            " ORDER BY type = 'index'",
            (table,),
        )
        return [sql for (sql,) in rows]

    def rows(self, table: str) -> int:
        return self.other.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


@pytest.fixture
async def running(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[Running]:
    store = Store.open(tmp_path / "dashboard.sqlite")
    writer = Writer(store, broken_backoff_max_s=0.05)
    other = sqlite3.connect(store.path, isolation_level=None)
    other.execute("PRAGMA busy_timeout = 5000")
    await nursery.start(writer.run)
    try:
        yield Running(store, writer, other)
    finally:
        writer.close()
        other.close()


async def wait_for(condition: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.01)


def job_of(run: str) -> Job:
    events = run_events(run, steps=1, errors=1)
    return Job(events=events, frames=[b"frame of " + e.id.encode() for e in events])


async def test_an_event_whose_table_is_missing_is_dead_lettered_not_retried_forever(
    running: Running,
) -> None:
    running.other.execute("DROP TABLE run_errors")
    job = job_of("R1")
    await running.writer.submit(job)
    with trio.fail_after(10):
        await job.done.wait()
    refused = [i for i, reason in enumerate(job.results) if reason is not None]
    events = run_events("R1", steps=1, errors=1)
    assert [type(events[i]) for i in refused] == [ErrorEvent]
    assert "no such table: run_errors" in str(job.results[refused[0]])
    assert running.rows("dead_letters") == 1
    assert running.rows("runs") == 1 and running.rows("run_steps") == 1


async def test_a_database_that_refuses_even_dead_letters_is_retried_acking_nothing(
    running: Running, capsys: pytest.CaptureFixture[str]
) -> None:
    tables = {name: running.schema(name) for name in ("run_errors", "dead_letters")}
    for name in tables:
        running.other.execute(f"DROP TABLE {name}")
    job = job_of("R2")
    await running.writer.submit(job)
    await wait_for(lambda: running.writer.busy_since is not None, "the writer to retry")
    assert "no such table: dead_letters" in running.writer.busy_reason
    beat = running.writer.heartbeat
    first = running.writer.attempts
    await wait_for(lambda: running.writer.attempts >= first + 3, "three more attempts")
    assert not job.done.is_set()  # nothing acked while the database is broken
    assert running.writer.heartbeat == beat  # a retry is no progress: the watchdog starves
    assert running.writer.reopened >= 3  # each attempt on a fresh connection
    for statements in tables.values():
        for sql in statements:
            running.other.execute(sql)  # the operator repairs it
    with trio.fail_after(10):
        await job.done.wait()
    assert job.results == [None] * 5
    assert running.rows("dead_letters") == 0  # nothing was wrongly blamed on the events
    assert running.rows("run_errors") == 1
    assert running.writer.busy_since is None
    err = capsys.readouterr().err
    assert err.count("database cannot be written") == 1, err  # logged once, not per attempt
    assert "runtallyd: database writable again" in err


async def test_no_checkpoint_inside_a_commit_and_the_wal_is_folded_back_under_load(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """SQLite's automatic checkpoint is off (it ran inside the COMMIT a client
    waits on); under load that never leaves the queue idle, the writer folds
    the WAL back into the database between batches itself."""
    store = Store.open(tmp_path / "dashboard.sqlite")
    writer = Writer(store, tick_s=30.0, checkpoint_interval_s=3600.0)
    assert store.query("PRAGMA wal_autocheckpoint") == [(0,)]
    await nursery.start(writer.run)
    main_file = tmp_path / "dashboard.sqlite"
    size_before = main_file.stat().st_size
    try:
        with trio.fail_after(20):
            n = 0
            while main_file.stat().st_size <= size_before:
                n += 1
                job = job_of(f"R{n}")
                await writer.submit(job)
                await job.done.wait()
                await trio.sleep(0.02)  # never idle for tick_s
        store.reopen()  # the setting survives a reopen
        assert store.query("PRAGMA wal_autocheckpoint") == [(0,)]
    finally:
        writer.close()


async def test_a_lock_held_elsewhere_never_blocks_the_event_loop(running: Running) -> None:
    """Small batches commit in the event loop's thread, but never wait in SQLite's
    busy handler there (busy_timeout is 5 s): they go to a worker thread instead."""
    running.other.execute("BEGIN IMMEDIATE")  # an operator's shell holding the write lock
    job = job_of("R1")
    await running.writer.submit(job)
    longest, last = 0.0, trio.current_time()
    for _ in range(30):
        await trio.sleep(0.01)
        now = trio.current_time()
        longest, last = max(longest, now - last), now
    assert not job.done.is_set()
    assert longest < 2.5  # half the busy timeout: the loop was never held by the lock
    running.other.execute("COMMIT")
    with trio.fail_after(10):
        await job.done.wait()
    assert job.results == [None] * len(run_events("R1", steps=1, errors=1))
    assert running.rows("runs") == 1
