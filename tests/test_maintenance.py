"""Retention and vacuum through the one writer, on real SQLite files and real daemons."""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from pathlib import Path

import pytest
import trio
from click.testing import CliRunner
from daemon_helpers import DaemonProcess, RawClient, count, run_events, settings_for

from runtally.cli import main
from runtally.config import Retention
from runtally.daemon._retention import PURGE_EVENT, RetentionTask, next_limit
from runtally.daemon._server import Daemon, serve
from runtally.daemon._store import AuditEntry, DeadLetter, Store
from runtally.daemon._writer import Job, Writer
from runtally.metrics import gather
from runtally.protocol import Ack, ErrorReply, RunStart, Vacuum

NOW = 1_770_000_000_000
DAY = 86_400_000
OLD = NOW - 100 * DAY
RECENT = NOW - DAY


def old_and_new(store: Store, *, old: int = 30, new: int = 5) -> None:
    """``old`` runs 100 days ago (2 steps and 4 errors each, every third a failure),
    ``new`` runs a day ago, and a recent child of the first old run."""
    events: list = []
    for i in range(old):
        evs = run_events(f"old{i}", steps=2, errors=2, ts=OLD + i * 1000)
        if i % 3 == 0:
            evs[-1] = evs[-1].__class__(
                id=evs[-1].id, ts=evs[-1].ts, run=f"old{i}", outcome="failure"
            )
        events += evs
    for i in range(new):
        events += run_events(f"new{i}", steps=1, errors=1, ts=RECENT + i * 1000)
    events.append(RunStart(id="kid-rs", ts=RECENT, run="kid", pipeline="teams", parent="old0"))
    assert store.apply(events) == [None] * len(events)
    store.apply(
        (),
        audit=[AuditEntry("old_thing", "long ago", ts_ms=OLD), AuditEntry("new_thing", "now")],
        dead_letters=[
            DeadLetter(b"\x80", "old", received_ms=OLD),
            DeadLetter(b"\x81", "new", received_ms=RECENT),
        ],
    )


def counters(db: Path) -> dict:
    snap = gather(db, db.parent / "none.sock", db.parent / "spool")
    return {(p.pipeline, p.club): (p.runs, p.errors) for p in snap.pipelines}


class TestRetention:
    async def test_purge_removes_old_rows_in_batches_and_keeps_the_rest(
        self, tmp_path: Path, nursery: trio.Nursery
    ) -> None:
        path = tmp_path / "dashboard.sqlite"
        store = Store.open(path)
        old_and_new(store)
        before = await trio.to_thread.run_sync(counters, path)
        writer = Writer(store)
        await nursery.start(writer.run)
        task = RetentionTask(
            Retention(runs=90, audit_log=90, dead_letters=90),
            writer,
            clock_ms=lambda: NOW,
            first_limit=4,
        )
        with trio.fail_after(30):
            removed = await task.purge_once()
        assert removed == {"runs": 30, "dead_letters": 1, "audit_log": 1}
        assert len(task.batch_seconds) > 5  # small batches, not one transaction
        q = store.query
        assert q("SELECT count(*) FROM runs WHERE uid LIKE 'old%'") == [(0,)]
        assert q("SELECT count(*) FROM runs") == [(6,)]
        assert q("SELECT count(*) FROM run_steps") == [(5,)]
        assert q("SELECT count(*) FROM run_errors") == [(5,)]
        # The child outlives its parent: the link goes, the parent's uid stays.
        assert q("SELECT parent_run_id, parent_uid FROM runs WHERE uid = 'kid'") == [(None, "old0")]
        assert q("PRAGMA foreign_key_check") == []
        assert q("SELECT reason FROM dead_letters") == [("new",)]
        assert q("SELECT count(*) FROM audit_log WHERE event = 'old_thing'") == [(0,)]
        assert q("SELECT count(*) FROM audit_log WHERE event = 'new_thing'") == [(1,)]
        purges = q("SELECT count(*) FROM audit_log WHERE event = ?", (PURGE_EVENT,))[0][0]
        # One audit row per batch that removed something, carrying what it removed.
        assert 5 <= purges <= len(task.batch_seconds)
        tallies: dict[str, int] = {}
        for (data,) in q("SELECT data_json FROM audit_log WHERE event = ?", (PURGE_EVENT,)):
            for _pipeline, _club, outcome, n in json.loads(data)["runs"]:
                tallies[outcome] = tallies.get(outcome, 0) + n
        assert tallies == {"success": 20, "failure": 10}
        # The counters do not go down (Prometheus would read a reset).
        assert await trio.to_thread.run_sync(counters, path) == before
        # A second pass finds nothing and writes nothing.
        assert await task.purge_once() == {"runs": 0, "dead_letters": 0, "audit_log": 0}
        assert q("SELECT count(*) FROM audit_log WHERE event = ?", (PURGE_EVENT,)) == [(purges,)]
        # The writer still applies events, including to runs it had cached.
        job = Job(events=run_events("after", steps=1, errors=0, ts=NOW))
        await writer.submit(job)
        await job.done.wait()
        assert job.results == [None] * 4  # run_start, step_start, step_end, run_end
        writer.close()

    async def test_the_daemon_purges_on_start(
        self, short_root: Path, nursery: trio.Nursery
    ) -> None:
        settings = settings_for(short_root, retention_days=Retention(runs=1))
        store = Store.open(settings.db)
        events = run_events("ancient", ts=int(time.time() * 1000) - 3 * DAY)
        store.apply(events)
        store.close()
        d: Daemon = await nursery.start(serve, settings)
        with trio.fail_after(10):
            while await trio.to_thread.run_sync(count, settings.db, "runs"):
                await trio.sleep(0.02)
        assert await trio.to_thread.run_sync(count, settings.db, "run_errors") == 0
        d.request_stop()

    @pytest.mark.parametrize(
        ("limit", "seconds", "expected"),
        [
            (100, 0.05, 50),
            (100, 0.025, 100),
            (100, 0.001, 150),
            (10, 10.0, 10),
            (40_000, 0.001, 50_000),
        ],
    )
    def test_batches_adapt_toward_the_target(
        self, limit: int, seconds: float, expected: int
    ) -> None:
        assert next_limit(limit, seconds, target_s=0.025) == expected


class TestWriterChores:
    async def test_a_failing_chore_is_its_outcome_and_the_writer_goes_on(
        self, tmp_path: Path, nursery: trio.Nursery
    ) -> None:
        store = Store.open(tmp_path / "d.sqlite")
        writer = Writer(store)
        await nursery.start(writer.run)

        def broken(_store: Store) -> None:
            raise sqlite3.OperationalError("no such table: nope")

        chore = Job(task=broken)
        events = Job(events=run_events("r", steps=1, errors=0))
        await writer.submit(chore)
        await writer.submit(events)
        with trio.fail_after(10):
            await events.done.wait()
        assert isinstance(chore.outcome, sqlite3.OperationalError)
        assert events.results == [None] * 4
        assert sum(writer.commit_latency.counts) >= 1
        writer.close()


class TestVacuum:
    async def test_non_admin_is_refused(self, short_root: Path, nursery: trio.Nursery) -> None:
        d: Daemon = await nursery.start(serve, settings_for(short_root, admin_uids=(65534,)))

        def ask() -> list:
            with RawClient(d.settings.socket) as c:
                c.send(Vacuum())
                return c.recv(1)

        (reply,) = await trio.to_thread.run_sync(ask)
        assert isinstance(reply, ErrorReply) and "admin" in reply.error
        d.request_stop()

    @pytest.mark.slow
    def test_events_sent_during_a_vacuum_all_land(self, short_root: Path) -> None:
        d = DaemonProcess(short_root)
        store = Store.open(d.db)
        big = [
            RunStart(id=f"b{i}", ts=NOW, run=f"B{i}", pipeline="x" * 200, meta={"pad": "y" * 500})
            for i in range(20_000)
        ]
        store.apply(big)
        store.conn.execute("DELETE FROM runs WHERE id % 2 = 0")  # free pages to reclaim
        store.checkpoint()
        store.close()
        d.start()
        try:
            window: dict[str, float] = {}
            stop = threading.Event()
            sent: list[float] = []
            acked: list = []

            def emit() -> None:
                with RawClient(d.socket, timeout=60) as c:
                    i = 0
                    while not stop.is_set() or i < 10:
                        c.send(*run_events(f"live{i}", steps=1, errors=1, ts=NOW))
                        sent.append(time.monotonic())
                        i += 1
                        time.sleep(0.002)
                    acked.extend(c.recv(5 * i))

            emitter = threading.Thread(target=emit)
            emitter.start()
            while not sent:
                time.sleep(0.001)
            window["start"] = time.monotonic()
            result = CliRunner().invoke(
                main,
                ["db", "vacuum", "--db", str(d.db), "--socket", str(d.socket)],
                env={"RUNTALLY_CONFIG": None},
            )
            window["end"] = time.monotonic()
            stop.set()
            emitter.join(60)
            assert result.exit_code == 0, result.output
            assert "by the daemon" in result.output
            sizes = re.search(r"([\d,]+) -> ([\d,]+) bytes", result.output)
            assert sizes is not None
            before, after = (int(g.replace(",", "")) for g in sizes.groups())
            assert after < before * 0.6  # the deleted half is gone from the file
            during = [t for t in sent if window["start"] <= t <= window["end"]]
            assert during, "no event was sent while the vacuum ran"
            assert len(acked) == 5 * len(sent)
            assert all(isinstance(r, Ack) for r in acked)
            assert count(d.db, "runs", "uid LIKE 'live%'") == len(sent)
            assert count(d.db, "run_errors") == len(sent)
            assert count(d.db, "audit_log", "event = 'vacuum'") == 1
        finally:
            d.stop()
