"""Fault suite: a database the daemon cannot write, or that is swapped underneath it.

Real daemon processes, real files.  CI runs as root, and root ignores file
modes, so ``chmod 0444`` proves nothing; ``chattr +i`` (the immutable flag)
stops root too: the running daemon's writes to the database and its ``-wal``
fail (SQLITE_IOERR_WRITE), and a fresh open gets a read-only connection
(SQLITE_READONLY).  (Never on ``-shm``: SQLite maps it, and a refused page
fault is a SIGBUS.)  Skipped where the filesystem has no immutable flag.

What must hold: nothing is acked while the database refuses; ``status`` fails
with the reason; the watchdog would starve; the cause removed, the daemon
recovers by itself; the cause left, it exits non-zero within
``wedged_exit_s`` with one line; one SIGTERM ends it within
``stop_timeout_s``; a file replaced underneath (a restored backup) or a
deleted ``-wal`` is noticed before the next ack, and later events land in the
file at the path.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_helpers import RawClient, count, run_events, wait_until
from fault_helpers import FaultDaemon, status, write_config

from runtally.protocol import Ack

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]


def _chattr(flag: str, *paths: Path) -> None:
    subprocess.run(["chattr", flag, *map(str, paths)], check=True, capture_output=True)


@contextlib.contextmanager
def immutable(*paths: Path) -> Iterator[None]:
    """``chattr +i`` on ``paths`` for the block (skip the test where it cannot be set)."""
    if shutil.which("chattr") is None:
        pytest.skip("no chattr here")
    try:
        _chattr("+i", *paths)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"no immutable flag on this filesystem: {exc.stderr.strip()}")
    try:
        yield
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            _chattr("-i", *paths)


def _start(root: Path, **settings: object) -> FaultDaemon:
    config = write_config(root, **settings)
    return FaultDaemon(root, extra_env={"RUNTALLY_CONFIG": str(config)}).start()


def _acks(client: RawClient, n: int) -> list[str]:
    return [m.id for m in client.recv(n) if isinstance(m, Ack)]


def _no_reply_within(client: RawClient, seconds: float) -> bool:
    client.sock.settimeout(seconds)
    try:
        return not client.sock.recv(1)
    except TimeoutError:
        return True
    finally:
        client.sock.settimeout(10)


def test_immutable_database_acks_nothing_fails_status_and_recovers(short_root: Path) -> None:
    d = _start(short_root, status_stall_s=0.5, wedged_exit_s=60.0, checkpoint_interval_s=60.0)
    wal = d.db.with_name(d.db.name + "-wal")
    try:
        with RawClient(d.socket) as c:
            c.send(*run_events("before", steps=1, errors=0))
            assert len(_acks(c, 4)) == 4
            with immutable(d.db, wal):
                c.send(*run_events("during", steps=1, errors=0))
                assert _no_reply_within(c, 1.0)  # nothing acked while it cannot commit
                reply = wait_until(
                    lambda: [p for p in status(d.socket).problems if p.startswith("writer:")],
                    what="status to report the writer",
                )
                assert "make" in reply[0] and "writable" in reply[0], reply
                assert count(d.db, "runs", "uid = 'during'") == 0
            # The flag gone, the same process commits and acks: no restart needed.
            assert len(_acks(c, 4)) == 4
        assert d.proc is not None and d.proc.poll() is None
        assert count(d.db, "runs", "uid = 'during'") == 1
        wait_until(lambda: not status(d.socket).problems, what="status healthy again")
    finally:
        assert d.stop() == 0, d.read_log()


def test_database_left_unwritable_ends_the_daemon_non_zero_within_the_bound(
    short_root: Path,
) -> None:
    d = _start(short_root, wedged_exit_s=1.5)
    wal = d.db.with_name(d.db.name + "-wal")
    assert d.proc is not None
    with RawClient(d.socket) as c, immutable(d.db, wal):
        c.send(*run_events("lost", steps=1, errors=0))
        started = time.monotonic()
        code = d.proc.wait(timeout=30)
        took = time.monotonic() - started
        assert c.recv_until_eof() == []  # not one ack: the client keeps (spools) them all
    d.log.close()
    log = d.read_log()
    assert code == 1, log
    assert took < 15, took
    lines = [ln for ln in log.splitlines() if "has not accepted a commit" in ln]
    assert len(lines) == 1, log
    assert "Traceback" not in log, log


def test_one_sigterm_ends_a_daemon_that_cannot_commit(short_root: Path) -> None:
    d = _start(short_root, wedged_exit_s=600.0, stop_timeout_s=1.0)
    wal = d.db.with_name(d.db.name + "-wal")
    assert d.proc is not None
    with RawClient(d.socket) as c, immutable(d.db, wal):
        c.send(*run_events("stuck", steps=1, errors=0))
        wait_until(lambda: status(d.socket).failing_s is not None, what="commits failing")
        started = time.monotonic()
        d.proc.send_signal(signal.SIGTERM)
        d.proc.wait(timeout=30)
        assert time.monotonic() - started < 10
        assert [m for m in c.recv_until_eof() if isinstance(m, Ack)] == []
    d.log.close()
    assert "stopping without committing" in d.read_log()


def test_database_replaced_underneath_later_events_land_in_the_new_file(
    short_root: Path,
) -> None:
    d = _start(short_root, checkpoint_interval_s=60.0)
    backup = short_root / "backup.sqlite"
    try:
        with RawClient(d.socket) as c:
            c.send(*run_events("old", steps=1, errors=0))
            assert len(_acks(c, 4)) == 4
            src = sqlite3.connect(d.db)
            dst = sqlite3.connect(backup)
            src.backup(dst)  # what an operator restores later
            src.close()
            dst.close()
            os.replace(backup, d.db)  # restore: another inode at the path, old -wal beside it
            c.send(*run_events("new", steps=2, errors=1))
            assert len(_acks(c, 8)) == 8
        assert count(d.db, "runs", "uid = 'new'") == 1  # acked into the file at the path
        assert count(d.db, "run_errors", "run_id = (SELECT id FROM runs WHERE uid = 'new')") == 2
        assert "was replaced" in d.read_log()
    finally:
        assert d.stop() == 0, d.read_log()
    assert count(d.db, "runs", "uid IN ('old', 'new')") == 2


def test_deleted_wal_is_noticed_before_the_next_ack(short_root: Path) -> None:
    d = _start(short_root, checkpoint_interval_s=60.0)
    wal = d.db.with_name(d.db.name + "-wal")
    try:
        with RawClient(d.socket) as c:
            c.send(*run_events("one", steps=1, errors=0))
            assert len(_acks(c, 4)) == 4
            wait_until(wal.exists, what="the WAL")
            wal.unlink()
            c.send(*run_events("two", steps=1, errors=0))
            assert len(_acks(c, 4)) == 4
            # Acked means in the file at the path, readable by anyone now, and
            # still there after a kill -9 of the daemon.
            assert count(d.db, "runs", "uid = 'two'") == 1
        assert "-wal was deleted" in d.read_log()
        d.kill()
        assert count(d.db, "runs", "uid IN ('one', 'two')") == 2
    finally:
        d.stop()
