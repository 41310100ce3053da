"""Lockless spool files (the Node.js client's): replayed only once their writer is gone.

docs/protocol.md, "Lockless writers": a file named
``<ms>-<host>-<pid>-nolock.<start>.<random>.spool`` is its writer's for as
long as that process runs on this host (pid and /proc start time), or, for a
host this daemon cannot see, until it has been unchanged for ``spool_stale_s``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from daemon_helpers import DaemonProcess, RawClient, count, run_events, wait_until
from node_helpers import needs_node, node_pipeline

from runtally.daemon._liveness import process_start
from runtally.daemon._spooldir import lockless_writer_alive, spool_host
from runtally.protocol import SPOOL_MAGIC, encode_message, encode_record


def _replay(d: DaemonProcess) -> int:
    """Ask the daemon to replay now; the number of files it replayed."""
    with RawClient(d.socket) as c:
        c.send({"type": "replay"})
        reply = c.recv(1)[0]
    return reply.files  # type: ignore[union-attr]


def _write_spool(directory: Path, name: str, run: str) -> Path:
    directory.mkdir(mode=0o700, exist_ok=True)
    path = directory / name
    path.write_bytes(
        SPOOL_MAGIC + b"".join(encode_record(encode_message(e)) for e in run_events(run))
    )
    return path


def _name(host: str, pid: int, start: int) -> str:
    return f"{int(time.time() * 1000)}-{host}-{pid}-nolock.{start}.ab12cd34.spool"


class TestRule:
    """``lockless_writer_alive``, the rule standing in for the flock."""

    def _alive(self, tmp_path: Path, name: str, *, age_s: float = 0.0, stale_s: float = 60.0):
        path = tmp_path / name
        path.write_bytes(SPOOL_MAGIC)
        st = path.stat()
        return lockless_writer_alive(
            name, st, host="thishost", stale_s=stale_s, now=st.st_mtime + age_s
        )

    def test_own_pid_and_start_time_is_alive(self, tmp_path: Path) -> None:
        start = process_start(os.getpid())
        assert start is not None
        assert self._alive(tmp_path, _name("thishost", os.getpid(), start), age_s=1e9)

    def test_unknown_start_time_counts_the_pid_alone(self, tmp_path: Path) -> None:
        assert self._alive(tmp_path, _name("thishost", os.getpid(), 0), age_s=1e9)

    def test_a_reused_pid_is_not_the_writer(self, tmp_path: Path) -> None:
        start = process_start(os.getpid())
        assert start is not None
        assert not self._alive(tmp_path, _name("thishost", os.getpid(), start + 1))

    def test_a_gone_pid_is_not_alive(self, tmp_path: Path) -> None:
        pid = 2**22 + 12345  # above pid_max's default: never a live process
        assert not self._alive(tmp_path, _name("thishost", pid, 0))

    @pytest.mark.parametrize(("age_s", "alive"), [(59.0, True), (61.0, False)])
    def test_another_host_is_judged_by_age(self, tmp_path: Path, age_s: float, alive: bool):
        name = _name("otherhost", os.getpid(), 0)
        assert self._alive(tmp_path, name, age_s=age_s) is alive

    def test_a_flock_writer_is_left_to_its_lock(self, tmp_path: Path) -> None:
        assert not self._alive(tmp_path, f"1-thishost-{os.getpid()}-ab12cd34.spool")


class TestReplay:
    """The daemon's replayer follows the rule (a real daemon process)."""

    def test_files_by_rule(self, short_root: Path) -> None:
        spool = short_root / "spool"
        start = process_start(os.getpid())
        assert start is not None
        host = spool_host()
        mine = _write_spool(spool, _name(host, os.getpid(), start), "r-alive")
        reused = _write_spool(spool, _name(host, os.getpid(), start + 1), "r-reused")
        fresh = _write_spool(spool, _name("otherhost", 1, 0), "r-fresh")
        old = _write_spool(spool, _name("otherhost", 2, 0), "r-old")
        os.utime(old, (time.time() - 7200, time.time() - 7200))  # spool_stale_s: 3600
        d = DaemonProcess(short_root).start()
        try:
            wait_until(lambda: not reused.exists() and not old.exists(), what="the replays")
            assert _replay(d) == 0
            assert mine.exists() and fresh.exists()
            assert count(d.db, "runs", "uid IN ('r-reused', 'r-old')") == 2
            assert count(d.db, "runs", "uid IN ('r-alive', 'r-fresh')") == 0
        finally:
            d.stop()

    @needs_node
    def test_a_live_node_writer_is_never_replayed_under_it(self, short_root: Path) -> None:
        spool = short_root / "spool"
        # No daemon at this socket: the pipeline's events stay in its spool file.
        node = node_pipeline("people-hang", short_root / "none" / "d.sock", spool)
        try:
            assert node.stdout is not None
            assert node.stdout.readline() == b"ready\n"
            [path] = list(spool.glob("*.spool"))
            assert f"-{node.pid}-nolock." in path.name
            size = path.stat().st_size
            assert size > len(SPOOL_MAGIC)
            d = DaemonProcess(short_root).start()
            try:
                for _ in range(3):  # the periodic replays run meanwhile too
                    assert _replay(d) == 0
                    time.sleep(0.3)
                assert path.stat().st_size == size
                assert count(d.db, "runs") == 0
                node.kill()
                node.wait(timeout=10)
                wait_until(lambda: not path.exists(), what="the dead writer's replay")
                assert count(d.db, "runs", "pipeline = 'people' AND outcome = 'running'") == 1
                assert count(d.db, "run_steps", "created_count = 120") == 1
                assert count(d.db, "run_errors", "error_message = 'Step reported 2 error(s)'") == 1
            finally:
                d.stop()
        finally:
            if node.poll() is None:
                node.kill()
                node.wait(timeout=10)
            if node.stdout is not None:
                node.stdout.close()
