"""``runtally status`` and ``runtally replay`` against a real daemon process, up and down."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from click.testing import CliRunner, Result
from daemon_helpers import DaemonProcess, RawClient, count, run_events, wait_until

from runtally.cli import main
from runtally.daemon._migrations import SCHEMA_VERSION
from runtally.daemon._store import Store
from runtally.daemon._timefmt import iso_from_ms
from runtally.protocol import SPOOL_MAGIC, RunEnd, RunStart, encode_record


def cli(*args: str) -> Result:
    env = {
        "RUNTALLY_CONFIG": None,
        "RUNTALLY_DB": None,
        "RUNTALLY_SOCKET": None,
        "RUNTALLY_SPOOL": None,
    }
    return CliRunner().invoke(main, list(args), env=env)


def paths(root: Path) -> list[str]:
    return [
        "--socket",
        str(root / "d.sock"),
        "--db",
        str(root / "dashboard.sqlite"),
        "--spool",
        str(root / "spool"),
    ]


def status_json(root: Path, *extra: str) -> tuple[int, dict]:
    result = cli("status", *paths(root), "--json", *extra)
    assert "Traceback" not in result.output
    return result.exit_code, json.loads(result.output)


def write_spool(spool: Path, events: list, name: str | None = None) -> Path:
    """A spool file exactly as a client writes it (spool format v1)."""
    spool.mkdir(parents=True, exist_ok=True)
    path = spool / (name or f"{int(time.time() * 1000)}-testhost-{os.getpid()}-abcd.spool")
    data = SPOOL_MAGIC + b"".join(encode_record(msgspec.msgpack.encode(e)) for e in events)
    path.write_bytes(data)
    return path


def send_events(sock: Path, events: list) -> None:
    with RawClient(sock) as c:
        c.send(*events)
        replies = c.recv(len(events))
    assert [r.__struct_config__.tag for r in replies] == ["ack"] * len(events)


def build_db(root: Path, ts: int) -> None:
    store = Store.open(root / "dashboard.sqlite")
    try:
        store.apply(run_events("gone", ts=ts))
        store.checkpoint()
    finally:
        store.close()


@pytest.fixture
def held_spool_file(short_root: Path) -> Iterator[Path]:
    """A spool file with a 2-minute-old event whose writer is alive (flock held)."""
    old = int(time.time() * 1000) - 120_000
    path = write_spool(
        short_root / "spool",
        [RunStart(id="w1", ts=old, run="waiting", pipeline="people")],
        name=f"{old}-testhost-1-held.spool",
    )
    with path.open("rb") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        yield path


class TestDaemonUp:
    def test_json_report(self, daemon_proc: DaemonProcess) -> None:
        root = daemon_proc.root
        ts = int(time.time() * 1000) - 3_600_000
        events = run_events("r1", ts=ts)
        send_events(daemon_proc.socket, events)
        code, report = status_json(root)
        assert code == 0, report
        assert list(report) == [
            "healthy",
            "problems",
            "warnings",
            "daemon",
            "database",
            "spool",
            "pipelines",
            "default_club",
            "states",
        ]
        assert report["default_club"] == "rondo"
        assert report["healthy"] is True
        assert report["problems"] == []
        assert report["warnings"] == []

        daemon = report["daemon"]
        assert daemon["up"] is True
        assert daemon["socket"] == str(daemon_proc.socket)
        assert daemon["error"] is None
        s = daemon["status"]
        assert s["pid"] == daemon_proc.proc.pid
        assert s["schema_version"] == SCHEMA_VERSION
        assert s["db_path"] == str(daemon_proc.db)
        assert s["events_committed"] >= len(events)
        assert s["queue_depth"] == 0
        assert s["uptime_s"] > 0
        assert s["version"]
        assert isinstance(s["last_commit_ts"], int)

        db = report["database"]
        assert db["path"] == str(daemon_proc.db)
        assert db["exists"] is True
        assert db["error"] is None
        assert db["schema_version"] == SCHEMA_VERSION
        assert db["size_bytes"] == daemon_proc.db.stat().st_size
        assert db["wal_bytes"] is not None  # the daemon holds it open in WAL mode
        assert db["row_counts"]["runs"] == 1
        assert db["row_counts"]["run_steps"] == 2
        assert db["row_counts"]["run_errors"] == 2
        assert db["row_counts"]["dead_letters"] == 0
        assert db["row_counts"]["parked_events"] == 0
        assert db["last_write"] == iso_from_ms(max(e.ts for e in events))
        assert db["file_modified_at"].endswith("Z")

        spool = report["spool"]
        assert spool["path"] == str(daemon_proc.spool)
        assert (spool["pending_files"], spool["bytes"], spool["oldest_at"]) == (0, 0, None)
        assert spool["backing_up"] is False
        assert spool["max_age_s"] == 60

        (people,) = report["pipelines"]
        assert people["pipeline"] == "people"
        assert people["club_slug"] == "rondo"
        assert people["run_uid"] == "r1"
        assert people["outcome"] == "success"
        assert people["started_at"] == iso_from_ms(ts)
        assert people["error_count"] == 2
        assert 3590 < people["age_s"] < 3700

    def test_human_report(self, daemon_proc: DaemonProcess) -> None:
        send_events(daemon_proc.socket, run_events("r1"))
        result = cli("status", *paths(daemon_proc.root))
        assert result.exit_code == 0, result.output
        out = result.output
        assert f"daemon     up, pid {daemon_proc.proc.pid}" in out
        assert f"schema {SCHEMA_VERSION}" in out
        assert "runs 1  run_steps 2  run_errors 2" in out
        assert "nothing waiting" in out
        assert "people" in out
        assert out.rstrip().endswith("healthy")
        assert "\x1b[" not in out

    def test_a_backed_up_spool_fails_the_check(self, short_root: Path) -> None:
        """A spool whose writer is gone and that the daemon has not replayed is a backlog."""
        config = short_root / "runtally.toml"
        config.write_text("[runtally]\nreplay_interval_s = 3600\n")  # only at start
        d = DaemonProcess(short_root, extra_env={"RUNTALLY_CONFIG": str(config)}).start()
        try:
            old = int(time.time() * 1000) - 120_000
            waiting = write_spool(
                d.spool,
                [RunStart(id="w1", ts=old, run="waiting", pipeline="people")],
                name=f"{old}-testhost-1-gone.spool",
            )
            header_only = d.spool / "1-testhost-2-idle.spool"
            header_only.write_bytes(SPOOL_MAGIC)  # a live client with nothing spooled
            with header_only.open("rb") as idle:
                fcntl.flock(idle.fileno(), fcntl.LOCK_EX)  # alive: the daemon leaves it be
                self._check_backed_up(short_root, waiting)
        finally:
            d.stop()

    def _check_backed_up(self, root: Path, waiting: Path) -> None:
        code, report = status_json(root)
        assert code == 1
        assert report["healthy"] is False
        assert report["daemon"]["up"] is True
        spool = report["spool"]
        assert spool["files"] == 2
        assert spool["pending_files"] == 1
        assert spool["live_files"] == 0  # header-only files hold nothing either way
        assert spool["bytes"] == waiting.stat().st_size + len(SPOOL_MAGIC)
        assert 115 < spool["oldest_age_s"] < 200
        assert spool["backing_up"] is True
        (problem,) = report["problems"]
        assert problem.startswith("spool: an event has waited 2m")

        code, report = status_json(root, "--max-spool-age", "600")
        assert code == 0
        assert report["spool"]["backing_up"] is False
        assert report["spool"]["pending_files"] == 1

        human = cli("status", *paths(root))
        assert human.exit_code == 1
        assert "BACKING UP (limit 60 s)" in human.output
        assert "problem: spool:" in human.output

    def test_a_running_pipelines_write_ahead_spool_is_no_backlog(
        self, daemon_proc: DaemonProcess, held_spool_file: Path
    ) -> None:
        """A file whose writer holds its flock is a live pipeline's write-ahead log
        (events it has not yet seen acked, e.g. during a long step): not a backlog,
        whatever the age of its first event."""
        code, report = status_json(daemon_proc.root, "--max-spool-age", "1")
        assert code == 0, report
        spool = report["spool"]
        assert (spool["files"], spool["pending_files"], spool["live_files"]) == (1, 0, 1)
        assert spool["backing_up"] is False
        assert spool["oldest_age_s"] is None
        assert held_spool_file.exists()  # the daemon left it to its writer

    def test_replay_now(self, short_root: Path) -> None:
        config = short_root / "runtally.toml"
        config.write_text("[runtally]\nreplay_interval_s = 3600\n")  # only on request
        d = DaemonProcess(short_root, extra_env={"RUNTALLY_CONFIG": str(config)}).start()
        try:
            ts = int(time.time() * 1000)
            write_spool(
                d.spool,
                [
                    RunStart(id="s1", ts=ts, run="spooled", pipeline="people"),
                    RunEnd(id="s2", ts=ts + 5, run="spooled", outcome="success"),
                ],
            )
            time.sleep(0.3)
            assert count(d.db, "runs") == 0  # not replayed by itself
            result = cli("replay", "--socket", str(d.socket))
            assert result.exit_code == 0, result.output
            assert result.output == (
                "replayed now: 1 file, 2 events (0 quarantined)\n"
                "since the daemon started: 1 file, 2 events (0 quarantined)\n"
            )
            assert count(d.db, "runs", "uid = ? AND outcome = 'success'", ["spooled"]) == 1
            assert list(d.spool.glob("*.spool")) == []
            again = cli("replay", "--socket", str(d.socket), "--json")
            assert json.loads(again.output) == {
                "files": 0,
                "events": 0,
                "quarantined": 0,
                "total_files": 1,
                "total_events": 2,
                "total_quarantined": 0,
            }
        finally:
            d.stop()


class TestDaemonDown:
    def test_no_socket(self, short_root: Path) -> None:
        build_db(short_root, int(time.time() * 1000) - 60_000)
        code, report = status_json(short_root)
        assert code == 1
        assert report["healthy"] is False
        assert report["daemon"]["up"] is False
        assert report["daemon"]["status"] is None
        assert "not running (no socket at" in report["daemon"]["error"]
        assert report["problems"] == [f"daemon: {report['daemon']['error']}"]
        # Everything else is still reported, read-only.
        assert report["database"]["error"] is None
        assert report["database"]["row_counts"]["runs"] == 1
        assert [p["run_uid"] for p in report["pipelines"]] == ["gone"]
        assert report["spool"]["pending_files"] == 0

        human = cli("status", *paths(short_root))
        assert human.exit_code == 1
        assert "daemon     DOWN: not running" in human.output
        assert "problem: daemon:" in human.output

    def test_stale_socket_file(self, short_root: Path) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(short_root / "d.sock"))
        sock.close()  # the file stays, nobody listens: a daemon killed by -9
        code, report = status_json(short_root)
        assert code == 1
        assert "refuses connections" in report["daemon"]["error"]

    def test_a_daemon_that_does_not_answer_is_down_within_the_timeout(
        self, short_root: Path
    ) -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as wedged:
            wedged.bind(str(short_root / "d.sock"))
            wedged.listen(1)
            started = time.monotonic()
            code, report = status_json(short_root, "--timeout", "0.3")
            assert time.monotonic() - started < 2
        assert code == 1
        assert report["daemon"]["error"].startswith("no answer from")

    def test_missing_database_and_spool_are_reported_not_raised(self, short_root: Path) -> None:
        code, report = status_json(short_root)
        assert code == 1
        assert report["database"]["exists"] is False
        assert "does not exist" in report["database"]["error"]
        assert any(p.startswith("database: ") for p in report["problems"])
        assert report["pipelines"] == []
        assert not (short_root / "dashboard.sqlite").exists()
        assert not (short_root / "spool").exists()

    def test_spool_backlog_while_down(self, short_root: Path) -> None:
        old = int(time.time() * 1000) - 90_000
        write_spool(short_root / "spool", [RunStart(id="x", ts=old, run="x", pipeline="p")])
        code, report = status_json(short_root)
        assert code == 1
        assert report["spool"]["backing_up"] is True
        assert report["spool"]["oldest_at"] == iso_from_ms(old)
        assert len(report["problems"]) == 3  # daemon, database, spool

    def test_replay_with_the_daemon_down_is_one_line(self, short_root: Path) -> None:
        result = cli("replay", "--socket", str(short_root / "d.sock"))
        assert result.exit_code == 1
        assert result.output.strip().splitlines() == [
            f"Error: daemon not running (no socket at {short_root / 'd.sock'})"
        ]


def test_status_waits_for_a_replay_to_land(daemon_proc: DaemonProcess) -> None:
    """A spool whose writer is gone is replayed by the daemon; status then shows it gone."""
    ts = int(time.time() * 1000) - 120_000
    spooled = write_spool(daemon_proc.spool, [RunStart(id="g1", ts=ts, run="g", pipeline="late")])
    # The replay commits, then deletes the file: wait for both.
    wait_until(
        lambda: count(daemon_proc.db, "runs", "uid = 'g'") == 1 and not spooled.exists(),
        10,
        what="replay",
    )
    code, report = status_json(daemon_proc.root)
    assert code == 0, report
    assert report["spool"]["pending_files"] == 0
    assert [p["pipeline"] for p in report["pipelines"]] == ["late"]


def test_a_long_step_of_a_real_pipeline_keeps_status_healthy(daemon_proc: DaemonProcess) -> None:
    """The user's case: a pipeline sits in one step (no tracking calls) longer than
    --max-spool-age; its spool still holds events it has not read the acks of."""
    ready, go = daemon_proc.root / "ready", daemon_proc.root / "go"
    script = f"""
import pathlib, time
from runtally import RunTracker
t = RunTracker("longstep", socket={str(daemon_proc.socket)!r}, spool={str(daemon_proc.spool)!r})
t.start_run()
sid = t.start_step("download")
pathlib.Path({str(ready)!r}).touch()
while not pathlib.Path({str(go)!r}).exists():
    time.sleep(0.05)
t.end_step(sid, "success", created=1)
t.end_run(True)
t.close()
"""
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        wait_until(ready.exists, 20, what="the pipeline inside its step")
        wait_until(lambda: count(daemon_proc.db, "run_steps", "step_name = 'download'"), 10)
        started = time.monotonic()
        wait_until(lambda: time.monotonic() - started > 1.5, 5)  # older than the limit
        code, report = status_json(daemon_proc.root, "--max-spool-age", "1")
        assert code == 0, report["problems"]
        assert report["spool"]["live_files"] == 1
        assert report["spool"]["pending_files"] == 0
    finally:
        go.touch()
        assert proc.wait(timeout=20) == 0


def test_a_live_lockless_writers_spool_is_no_backlog(short_root: Path) -> None:
    """A Node pipeline's write-ahead spool has no flock: status judges it by the
    replayer's own rule (its pid and start time on this host), so a long step of
    a live Node pipeline does not fail the health check; once its writer is gone,
    the same file is a backlog."""
    from runtally.daemon._liveness import process_start
    from runtally.daemon._spooldir import spool_host

    old = int(time.time() * 1000) - 120_000
    events = [RunStart(id="n1", ts=old, run="node", pipeline="people")]
    pid = os.getpid()
    alive = f"{old}-{spool_host()}-{pid}-nolock.{process_start(pid) or 0}.ab12.spool"
    write_spool(short_root / "spool", events, name=alive)
    _, report = status_json(short_root, "--max-spool-age", "1")
    spool = report["spool"]
    assert (spool["pending_files"], spool["live_files"], spool["backing_up"]) == (0, 1, False)
    gone = f"{old}-{spool_host()}-999999999-nolock.1.cd34.spool"  # no such pid
    (short_root / "spool" / alive).rename(short_root / "spool" / gone)
    code, report = status_json(short_root, "--max-spool-age", "1")
    assert code == 1
    assert report["spool"]["pending_files"] == 1
    assert report["spool"]["backing_up"] is True
