"""What the daemon keeps bounded or refuses: foreign databases, a second daemon,
the WAL, parked events.  Real files, real daemon processes; an injected clock
only where the bound is days long (parked events' expiry).
"""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest
from click.testing import CliRunner
from daemon_helpers import RawClient, count, ro_connect, run_events, wait_until
from fault_helpers import FaultDaemon, status, write_config

from runtally.cli import main
from runtally.daemon._migrations import SCHEMA_VERSION
from runtally.daemon._recognise import ForeignDatabase
from runtally.daemon._store import Origin, Store
from runtally.protocol import Ack, ErrorEvent, RunEnd, RunStart, StepEnd, StepStart

pytestmark = pytest.mark.timeout(60)

T = 1_770_562_380_123


def _start(root: Path, **settings: object) -> FaultDaemon:
    config = write_config(root, **settings)
    return FaultDaemon(root, extra_env={"RUNTALLY_CONFIG": str(config)}).start()


# -- foreign databases -------------------------------------------------------------------


def _other_programs_runs(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY, athlete TEXT, km REAL)")
    conn.execute("INSERT INTO runs (athlete, km) VALUES ('ann', 10.5)")
    conn.commit()
    conn.close()


def _unrelated_tables(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    conn.commit()
    conn.close()


def _someone_elses_schema_migrations(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY)")
    conn.commit()
    conn.close()


FOREIGN: list[tuple[Callable[[Path], None], str]] = [
    (_other_programs_runs, "table runs has columns id,athlete,km"),
    (_unrelated_tables, "table(s) customers, invoices"),
    (_someone_elses_schema_migrations, "table(s) schema_migrations"),
]


@pytest.mark.parametrize("tables", [["schema_migrations"], ["meta"]])
def test_a_daemon_killed_while_bootstrapping_a_fresh_file_can_start_again(
    short_root: Path, tables: list[str]
) -> None:
    """The soak found it: killed between creating schema_migrations and meta, a
    fresh file held one of our tables alone, and every later start refused it as
    "not runtally's" (nothing acked again, ever).  Our own half-made bootstrap is
    ours to finish; and the bootstrap is one transaction now."""
    from runtally.daemon._migrations import BOOTSTRAP

    d = FaultDaemon(short_root)
    conn = sqlite3.connect(d.db)
    for statement in BOOTSTRAP.split(";"):
        if any(f"EXISTS {t} " in statement for t in tables):
            conn.execute(statement)
    conn.commit()
    conn.close()
    d.start()
    try:
        assert status(d.socket).schema_version == SCHEMA_VERSION
    finally:
        d.stop()


def _fingerprint(path: Path) -> tuple[bytes, int, list[str]]:
    """The file's bytes, its mtime, and the files beside it named after it.

    ``<db>.lock`` is left out: it is the daemon's own file (taken before it
    looks at the database), not a change to the database.
    """
    siblings = sorted(
        p.name
        for p in path.parent.iterdir()
        if p.name.startswith(path.name) and not p.name.endswith(".lock")
    )
    return path.read_bytes(), path.stat().st_mtime_ns, siblings


@pytest.mark.parametrize(("make", "found"), FOREIGN, ids=[f[0].__name__ for f in FOREIGN])
class TestForeignDatabase:
    def test_store_refuses_it_untouched(
        self, tmp_path: Path, make: Callable[[Path], None], found: str
    ) -> None:
        db = tmp_path / "dashboard.sqlite"
        make(db)
        before = _fingerprint(db)
        with pytest.raises(ForeignDatabase, match=re.escape(found)):
            Store.open(db)
        assert _fingerprint(db) == before  # no WAL switch, no tables, no -wal file

    def test_db_migrate_refuses_it_in_one_line(
        self, tmp_path: Path, make: Callable[[Path], None], found: str
    ) -> None:
        db = tmp_path / "dashboard.sqlite"
        make(db)
        before = _fingerprint(db)
        env = {"RUNTALLY_CONFIG": None, "RUNTALLY_SOCKET": None}
        result = CliRunner().invoke(
            main, ["db", "migrate", "--db", str(db), "--socket", str(tmp_path / "s")], env=env
        )
        assert result.exit_code != 0
        assert "Traceback" not in result.output
        assert found in result.output, result.output
        assert _fingerprint(db) == before

    def test_daemon_refuses_it_in_one_line(
        self, short_root: Path, make: Callable[[Path], None], found: str
    ) -> None:
        d = FaultDaemon(short_root)
        make(d.db)
        before = _fingerprint(d.db)
        d.start(wait=False)
        assert d.proc is not None
        code = d.proc.wait(timeout=30)
        d.log.close()
        log = d.read_log()
        assert code != 0 and found in log, log
        assert "Traceback" not in log, log
        assert _fingerprint(d.db) == before
        assert not d.socket.exists()  # nothing left behind


# -- one daemon per database ---------------------------------------------------------------


def test_a_second_daemon_on_the_same_database_is_refused_with_the_first_ones_pid(
    short_root: Path,
) -> None:
    first = FaultDaemon(short_root).start()
    try:
        assert first.proc is not None
        second = subprocess.run(
            [
                *first.argv()[:4],
                "--socket",
                str(short_root / "second.sock"),
                "--db",
                str(first.db),
                "--spool",
                str(short_root / "spool2"),
            ],
            env=first.env(),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert second.returncode != 0
        assert f"pid {first.proc.pid}" in second.stderr, second.stderr
        assert "Traceback" not in second.stderr
        assert not (short_root / "second.sock").exists()
        with RawClient(first.socket) as c:  # the first one is unharmed
            c.send(*run_events("still", steps=1, errors=0))
            assert len(c.recv(4)) == 4
    finally:
        assert first.stop() == 0


@pytest.mark.parametrize("how", ["hard link", "symlink"])
def test_a_second_daemon_on_the_same_file_under_another_name_is_refused(
    short_root: Path, how: str
) -> None:
    """Found from outside: ``<db>.lock`` is per name, so a second daemon on a hard
    link of the database ran beside the first, each with its own WAL, and the
    acked events of one were lost.  The database's inode is locked too."""
    first = FaultDaemon(short_root).start()
    try:
        other = short_root / "other.sqlite"
        if how == "hard link":
            os.link(first.db, other)
        else:
            other.symlink_to(first.db)
        argv = [*first.argv()[:4], "--socket", str(short_root / "second.sock")]
        argv += ["--db", str(other), "--spool", str(short_root / "spool2")]
        second = subprocess.run(
            argv, env=first.env(), capture_output=True, text=True, timeout=30, check=False
        )
        assert second.returncode != 0
        assert "under another name" in second.stderr, second.stderr
        assert "Traceback" not in second.stderr
        assert not (short_root / "second.sock").exists()
        # The CLI, given that name, knows a daemon writes it.
        result = CliRunner().invoke(
            main,
            ["db", "vacuum", "--db", str(other), "--socket", str(short_root / "none.sock")],
            env={"RUNTALLY_CONFIG": None},
        )
        assert result.exit_code != 0 and "is writing" in result.output, result.output
        with RawClient(first.socket) as c:  # the first one is unharmed
            c.send(*run_events("still", steps=1, errors=0))
            assert len(c.recv(4)) == 4
    finally:
        assert first.stop() == 0


# -- the WAL -------------------------------------------------------------------------------


def test_wal_grows_under_a_long_reader_and_shrinks_after_it(short_root: Path) -> None:
    d = _start(short_root, checkpoint_interval_s=0.2)
    try:
        reader = ro_connect(d.db)
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM runs").fetchone()  # holds its snapshot
        with RawClient(d.socket) as c:
            for batch in range(10):
                events = [
                    msgspec.structs.replace(e, detail={"blob": "x" * 20_000})
                    if isinstance(e, StepEnd)
                    else e
                    for e in run_events(f"big{batch}", steps=40, errors=0)
                ]
                c.send(*events)
                assert len(c.recv(len(events))) == len(events)
        grown = status(d.socket).wal_bytes
        assert grown > 4 << 20, grown  # bigger than SQLite's auto-checkpoint could keep it
        reader.execute("COMMIT")
        reader.close()
        wait_until(lambda: status(d.socket).wal_bytes == 0, what="the WAL truncated")
        assert count(d.db, "runs", "uid LIKE 'big%'") == 10
    finally:
        assert d.stop() == 0


def test_status_fails_on_a_wal_over_its_limit(short_root: Path) -> None:
    d = _start(short_root, checkpoint_interval_s=3600.0, status_wal_bytes=1)
    try:
        with RawClient(d.socket) as c:
            c.send(*run_events("one", steps=1, errors=0))
            assert len(c.recv(4)) == 4
        problems = status(d.socket).problems
        assert [p for p in problems if p.startswith("wal:")], problems
        env = {"RUNTALLY_CONFIG": None}
        result = CliRunner().invoke(
            main,
            ["status", "--socket", str(d.socket), "--db", str(d.db), "--spool", str(d.spool)],
            env=env,
        )
        assert result.exit_code == 1, result.output
        assert "wal:" in result.output and "end that reader" in result.output
    finally:
        d.stop()


# -- parked events -----------------------------------------------------------------------


def _orphans(run: str, n: int, size: int = 0) -> list[StepStart]:
    """Step starts of a run that never starts: each one is parked."""
    return [
        StepStart(id=f"{run}-p{i}", ts=T + i, run=run, step=f"{run}-s{i}", name="x" * (size or 1))
        for i in range(n)
    ]


def test_parked_events_expire_into_dead_letters_after_their_age(tmp_path: Path) -> None:
    now = [T]
    store = Store.open(tmp_path / "dashboard.sqlite", clock=lambda: now[0])
    try:
        assert store.apply(_orphans("never", 3)) == [None] * 3
        assert store.parked == 3
        now[0] += 7 * 86400_000 - 1
        assert store.expire_parked(7 * 86400.0) == 0  # not yet
        store.apply(_orphans("later", 1))  # parked at the later time
        now[0] += 2
        assert store.expire_parked(7 * 86400.0) == 3
        assert store.parked == 1
        reasons = [r for (r,) in store.query("SELECT reason FROM dead_letters")]
        assert len(reasons) == 3 and all("its run never started" in r for r in reasons)
        assert store.query("SELECT count(*) FROM parked_events") == [(1,)]
    finally:
        store.close()


def test_events_for_a_step_that_never_started_are_settled_once_the_run_ended(
    tmp_path: Path,
) -> None:
    """Found from outside: an error or step_end naming a stale step id waited 7 days,
    out of sight; the run showed success with 0 errors.  Once its run has ended and
    orphan_age_s passed, the error is recorded on its run and the step_end goes to
    dead_letters saying why; a run still open keeps waiting for its step."""
    now = [T]
    store = Store.open(tmp_path / "dashboard.sqlite", clock=lambda: now[0])
    try:
        events = [
            RunStart(id="o-rs", ts=T, run="o", pipeline="people"),
            ErrorEvent(id="o-e", ts=T, run="o", step="stale", step_name="load", message="m"),
            StepEnd(id="o-se", ts=T, run="o", step="stale", outcome="success", created=2),
            RunEnd(id="o-re", ts=T + 5, run="o", outcome="success"),
            RunStart(id="p-rs", ts=T, run="p", pipeline="people"),  # still running
            ErrorEvent(id="p-e", ts=T, run="p", step="later", step_name="load", message="m"),
        ]
        assert store.apply(events) == [None] * len(events)
        assert store.parked == 3
        now[0] += 299_000
        store.expire_parked(7 * 86400.0, orphan_age_s=300.0)
        assert store.parked == 3  # not yet: a late step_start may still come
        now[0] += 2_000
        store.expire_parked(7 * 86400.0, orphan_age_s=300.0)
        assert store.parked == 1  # the open run's error still waits for its step
        rows = store.query(
            "SELECT r.uid, e.run_step_id, e.step_name FROM run_errors e JOIN runs r"
            " ON r.id = e.run_id"
        )
        assert rows == [("o", None, "load")]
        (reason,) = store.query("SELECT reason FROM dead_letters WHERE event_id = 'o-se'")[0]
        assert "step never started (step:stale) and its run has ended" in reason
    finally:
        store.close()


def test_parked_bytes_are_capped_per_peer_and_in_total(tmp_path: Path) -> None:
    store = Store.open(
        tmp_path / "dashboard.sqlite", parked_max_bytes_per_peer=20_000, parked_max_bytes=30_000
    )
    try:
        flood = _orphans("flood", 6, size=5_000)
        results = store.apply(flood, origins=[Origin(uid=1000)] * 6)
        assert results[:3] == [None] * 3  # ~5 kB each: three fit under 20 kB
        assert all(r and "uid 1000" in r for r in results[3:]), results
        other = store.apply(_orphans("other", 3, size=5_000), origins=[Origin(uid=1001)] * 3)
        assert other[:2] == [None, None]  # another peer has its own budget...
        assert other[2] and "in total" in other[2]  # ...under the total one
        assert store.query("SELECT count(*) FROM dead_letters") == [(4,)]
        assert store.query("SELECT count(*) FROM parked_events") == [(5,)]
    finally:
        store.close()
    reopened = Store.open(tmp_path / "dashboard.sqlite", parked_max_bytes_per_peer=20_000)
    try:
        assert reopened.parked_bytes > 25_000  # the counters come back from the table
        refused = reopened.apply(_orphans("more", 1, size=5_000), origins=[Origin(uid=1000)])
        assert refused[0] and "uid 1000" in refused[0]
    finally:
        reopened.close()


def test_status_counts_parked_events_fails_on_old_ones_and_they_expire(short_root: Path) -> None:
    d = _start(short_root, checkpoint_interval_s=0.2, status_parked_age_s=0.2, parked_max_age_s=1.5)
    try:
        with RawClient(d.socket) as c:
            c.send(*_orphans("ghost", 2))
            assert all(isinstance(m, Ack) for m in c.recv(2))
        reply = status(d.socket)
        assert reply.parked == 2 and reply.parked_oldest_ts is not None
        problems = wait_until(
            lambda: [p for p in status(d.socket).problems if p.startswith("parked:")],
            what="status to fail on old parked events",
        )
        assert "never started" in problems[0]
        wait_until(lambda: status(d.socket).parked_expired == 2, what="the parked events to expire")
        reply = status(d.socket)
        assert reply.parked == 0 and reply.parked_oldest_ts is None and not reply.problems
        assert count(d.db, "dead_letters", "reason LIKE '%its run never started%'") == 2
    finally:
        assert d.stop() == 0


def test_pid_is_written_into_the_lock_file(short_root: Path) -> None:
    d = FaultDaemon(short_root).start()
    try:
        assert d.proc is not None
        lock = d.db.with_name(d.db.name + ".lock")
        assert lock.read_text().strip() == str(d.proc.pid)
        assert os.path.exists(lock)
    finally:
        d.stop()


# -- resident memory (issue 17) --------------------------------------------------------


def test_the_daemons_connections_keep_a_small_page_cache(tmp_path: Path) -> None:
    """The writer's and the monitor's connections, at most 512 KiB of pages each
    (SQLite's default, 2 MiB each, stays resident once a long batch filled it)."""
    from runtally.daemon._dbfiles import CACHE_SIZE
    from runtally.daemon._monitor_read import open_reader

    store = Store.open(tmp_path / "d.sqlite")
    reader = open_reader(tmp_path / "d.sqlite")
    try:
        caches = [
            store.query("PRAGMA cache_size")[0][0],
            reader.execute("PRAGMA cache_size").fetchone()[0],
        ]
    finally:
        reader.close()
        store.close()
    assert caches == [CACHE_SIZE, CACHE_SIZE]
    assert -512 <= CACHE_SIZE < 0  # KiB, not pages


def test_the_writer_queue_holds_2000_events_by_default(tmp_path: Path) -> None:
    """The bound README documents, the same for the settings and a Writer built alone."""
    import inspect

    from runtally.config import Settings
    from runtally.daemon._writer import Writer

    settings = Settings(socket=tmp_path / "s", db=tmp_path / "d", spool=tmp_path / "sp")
    writer_default = inspect.signature(Writer).parameters["max_queue_events"].default
    assert (settings.queue_events, writer_default) == (2000, 2000)
