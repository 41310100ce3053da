"""Fault suite: the disk under the database is full, then space comes back.

Two ways to fill it, the same scenario and assertions for both:

``tmpfs``
    The real thing: the database and the daemon's log (its stderr, as with
    ``runtallyd 2>>/var/lib/runtally/log``) live on a small tmpfs mounted for
    the test, which a filler file then fills to the last page; the log ends on a
    page boundary, so the daemon's next line on stderr fails with ENOSPC too.  The
    daemon's commits fail with SQLITE_FULL ("database or disk is full").  Space
    comes back when the filler is deleted, as an operator would free space.
    Needs ``mount`` (root in a container that allows it); skipped otherwise.

``fsize``
    The closest honest stand-in where no filesystem can be mounted: the running
    daemon's RLIMIT_FSIZE is lowered to 1 byte with ``prlimit(2)``, so every
    write(2) that would put a byte past offset 0 in any file fails with EFBIG
    (Python ignores SIGXFSZ).  SQLite reports that as SQLITE_IOERR_WRITE ("disk
    I/O error") rather than SQLITE_FULL, the daemon's log file (a regular file)
    fails the same way, and raising the limit again is "space is back".  It
    always runs, so the disk-full path is covered on every machine.

Before filling, the WAL is checkpointed and truncated to 0 bytes from outside
(the daemon is idle then), so the daemon's very next commit needs new space:
the failure is deterministic, not a matter of how much WAL was preallocated.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
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
    spool_files,
    status,
    wait_idle,
    wait_spool_drained,
    write_config,
)

from runtally.protocol import Ack, decode_client_message, read_spool

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

FULL_FOR_S = 2.5


@contextlib.contextmanager
def small_tmpfs(where: Path, size: str) -> Iterator[Path]:
    where.mkdir()
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where)],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except OSError as exc:
        pytest.skip(f"cannot run mount ({exc}); the fsize variant covers disk full")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}; fsize variant covers it")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=10, check=False)


def fill(directory: Path) -> Path:
    """Write a filler file until the filesystem has not one free page left."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        for chunk in (1 << 16, 1 << 12):
            block = b"\0" * chunk
            for _ in range(1 << 16):  # bounded: 64 Ki chunks at most
                try:
                    os.write(fd, block)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break
    finally:
        os.close(fd)
    with pytest.raises(OSError, match="No space left"), (directory / "probe").open("wb") as fh:
        fh.write(b"\0" * 4096)
        fh.flush()
    return filler


def truncate_wal(db: Path) -> None:
    """Checkpoint and cut the WAL to 0 bytes (the daemon is idle; no reader holds it)."""
    conn = sqlite3.connect(db, isolation_level=None, timeout=5)
    try:
        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        conn.close()
    assert busy == 0
    assert Path(f"{db}-wal").stat().st_size == 0


@pytest.mark.parametrize("how", ["tmpfs", "fsize"])
def test_disk_full_under_the_database(short_root: Path, how: str) -> None:
    """While the database's disk is full: no event is acked (none is committed), the
    daemon stays up and answers ping and status, a RunTracker pipeline exits 0 with
    all its events in its spool file.  Once space is back: every raw client gets all
    its acks in order, the spool is replayed, everything is in the db exactly once."""
    config = write_config(short_root, replay_interval_s=0.2)
    env = {"RUNTALLY_CONFIG": str(config)}
    with contextlib.ExitStack() as stack:
        if how == "tmpfs":
            fs = stack.enter_context(small_tmpfs(short_root / "fs", "8m"))
            d = FaultDaemon(
                short_root, extra_env=env, db_path=fs / "dashboard.sqlite", log_path=fs / "log"
            )
        else:
            d = FaultDaemon(short_root, extra_env=env)
        d.start()
        stack.callback(d.ensure_dead)
        fill_disk, free_disk = _disk_controls(how, d)
        _scenario(short_root, d, fill_disk, free_disk)
        log = d.read_log()
        assert "Traceback" not in log, log
        if how == "tmpfs":  # the log's own disk was full too: only the recovery got written
            assert "database writable again" in log, log


def _disk_controls(how: str, d: FaultDaemon) -> tuple[Callable[[], None], Callable[[], None]]:
    if how == "tmpfs":
        filler: list[Path] = []

        def fill_disk() -> None:
            assert d.log_path is not None
            with d.log_path.open("ab") as log:  # end the log on a page boundary
                pad = -d.log_path.stat().st_size % 4096
                log.write(b"#" * (pad - 1) + b"\n" if pad else b"")
            filler.append(fill(d.db.parent))

        def free_disk() -> None:
            filler.pop().unlink()

        return fill_disk, free_disk

    def limit_fsize() -> None:
        resource.prlimit(d.pid, resource.RLIMIT_FSIZE, (1, resource.RLIM_INFINITY))

    def unlimit_fsize() -> None:
        resource.prlimit(d.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)

    return limit_fsize, unlimit_fsize


def _scenario(
    root: Path, d: FaultDaemon, fill_disk: Callable[[], None], free_disk: Callable[[], None]
) -> None:
    name = "fault-disk"
    with RawClient(d.socket) as c:  # writable before
        base = run_events("disk-base", 2, 1)
        c.send(*base)
        assert all(isinstance(r, Ack) for r in c.recv(len(base)))
    truncate_wal(d.db)
    fill_disk()
    full_at = time.monotonic()
    clients = [RawClient(d.socket) for _ in range(2)]
    pipe = Pipeline.spawn(
        root, name, socket_path=d.socket, spool=d.spool, seconds=1.0, max_runs=60, seed=7
    )
    try:
        with reaped([pipe]):
            sent: list[list[str]] = []
            for i, c in enumerate(clients):
                events = [e for r in range(15) for e in run_events(f"disk-{i}-{r}", 2, 1)]
                c.send(*events)
                sent.append([e.id for e in events])
            total = sum(len(ids) for ids in sent)
            probes = 0
            while time.monotonic() - full_at < FULL_FOR_S or probes < 3:
                assert d.alive(), d.read_log()
                assert ping(d.socket, timeout=2) < 1.0
                st = status(d.socket, timeout=2)
                assert st.queue_depth >= total, st
                for c in clients:
                    assert arrival(c, 0.05) is None, f"while nothing can commit: {arrival(c, 0.01)}"
                assert count(d.db, "runs", "uid LIKE 'disk-%' AND uid != 'disk-base'") == 0
                probes += 1
            # The pipeline gave up waiting for acks and spooled every event it emitted.
            result = pipe.wait(timeout=30)
            assert result["acked"] == 0
            spooled = {
                decode_client_message(r).id
                for path in spool_files(d.spool)
                for r in read_spool(path.read_bytes())[0]
            }
            assert len(spooled) == result["calls"], (len(spooled), result["calls"])
            assert count(d.db, "runs", "pipeline = ?", [name]) == 0
            assert d.alive(), d.read_log()

            free_disk()
            for c, ids in zip(clients, sent, strict=True):
                replies = c.recv(len(ids))
                assert all(isinstance(r, Ack) for r in replies), replies[:3]
                assert [r.id for r in replies] == ids
        wait_spool_drained(d.spool)
        wait_idle(d.socket)
        assert_ledger(d.db, [result], [name])
        assert count(d.db, "runs", "uid LIKE 'disk-%' AND outcome = 'success'") == 31
        assert count(d.db, "run_errors", "uid LIKE 'disk-%'") == 62
        assert count(d.db, "runs", "uid LIKE 'disk-%' AND total_created = 3") == 31
        with RawClient(d.socket) as c:  # and writable after, as if nothing happened
            after = run_events("disk-after", 1, 0)
            c.send(*after)
            assert all(isinstance(r, Ack) for r in c.recv(len(after)))
        wait_until(lambda: count(d.db, "runs", "uid = 'disk-after'") == 1, timeout=5)
        assert d.alive()
    finally:
        for c in clients:
            c.close()
