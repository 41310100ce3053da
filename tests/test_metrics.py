"""Prometheus metrics: ``/metrics``, ``runtally metrics`` and the textfile, on real files.

Every exposition is parsed back with ``prometheus_client.parser`` and checked
against a database built through the real store (and a real daemon where the
daemon's own figures are the subject).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
import trio
from click.testing import CliRunner
from daemon_helpers import RawClient, run_events
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from runtally._pipeline_config import PipelineConfig
from runtally.cli import main
from runtally.daemon._server import Daemon
from runtally.daemon._store import Store
from runtally.metrics import STATES, RuntallyCollector, gather, render
from runtally.protocol import Ack, ErrorEvent, RunEnd, RunStart, StatusReply
from runtally.web import WebConfig, create_app

T = 1_770_000_000_000  # epoch ms


def build(path: Path) -> None:
    """people/rondo: a success then a failure with 2 errors; teams/other: still running."""
    store = Store.open(path)
    events = [
        RunStart(id="a1", ts=T, run="a", pipeline="people", club_slug="rondo"),
        RunEnd(id="a2", ts=T + 65_000, run="a", outcome="success", duration_ms=65_000),
        RunStart(id="b1", ts=T + 100_000, run="b", pipeline="people", club_slug="rondo"),
        *(
            ErrorEvent(id=f"b2-{i}", ts=T + 100_500, run="b", step_name="x", message="no")
            for i in range(2)
        ),
        RunEnd(id="b3", ts=T + 103_000, run="b", outcome="failure", duration_ms=3_000),
        RunStart(id="c1", ts=T + 200_000, run="c", pipeline="teams", club_slug="other"),
    ]
    try:
        assert store.apply(events) == [None] * len(events)
    finally:
        store.close()


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample as (name, sorted labels) -> value; fails on text that does not parse."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name, tuple(sorted(s.labels.items()))] = s.value
    return out


def pc(pipeline: str, club: str, **more: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({"pipeline": pipeline, "club": club, **more}.items()))


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "dashboard.sqlite"
    build(path)
    return path


def web_metrics(db: Path) -> str:
    config = WebConfig(db=db, socket=db.parent / "none.sock", spool=db.parent / "spool")
    with TestClient(create_app(config)) as client:
        r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return r.text


class TestPipelines:
    def test_metrics_parse_with_the_values_of_the_database(self, db: Path) -> None:
        m = parse(web_metrics(db))
        people, teams = pc("people", "rondo"), pc("teams", "other")
        assert m["runtally_pipeline_last_success_timestamp_seconds", people] == (T + 65_000) / 1000
        assert ("runtally_pipeline_last_success_timestamp_seconds", teams) not in m
        assert m["runtally_pipeline_last_run_duration_seconds", people] == 3.0
        assert m["runtally_runs_total", pc("people", "rondo", outcome="success")] == 1
        assert m["runtally_runs_total", pc("people", "rondo", outcome="failure")] == 1
        assert m["runtally_runs_total", pc("teams", "other", outcome="success")] == 0
        assert m["runtally_errors_total", people] == 2
        assert m["runtally_errors_total", teams] == 0
        for state in STATES:
            assert m["runtally_pipeline_state", pc("people", "rondo", state=state)] == (
                state == "failing"
            )
            assert m["runtally_pipeline_state", pc("teams", "other", state=state)] == (
                state == "running"
            )
        assert m["runtally_daemon_up", ()] == 0
        assert m["runtally_database_up", ()] == 1
        assert m["runtally_parked_events", ()] == 0
        assert m["runtally_dead_letters", ()] == 0
        assert m["runtally_database_size_bytes", ()] == db.stat().st_size

    def test_states_come_from_the_monitor_table_when_there_is_one(self, db: Path) -> None:
        # The monitor's table (issue 15, schedules): its states win over the derived
        # ones; a pipeline it has not judged yet keeps the state of its newest run.
        con = sqlite3.connect(db, isolation_level=None)
        for pipeline, state in (("people", "late"), ("nikki", "missed")):
            con.execute(
                "INSERT INTO pipeline_states (pipeline, club_slug, state, since,"
                " first_seen_at, updated_at) VALUES (?, 'rondo', ?, 'x', 'x', 'x')",
                (pipeline, state),
            )
        con.close()
        m = parse(web_metrics(db))
        assert m["runtally_pipeline_state", pc("people", "rondo", state="late")] == 1
        assert m["runtally_pipeline_state", pc("people", "rondo", state="failing")] == 0
        assert m["runtally_pipeline_state", pc("nikki", "rondo", state="missed")] == 1
        assert m["runtally_pipeline_state", pc("teams", "other", state="running")] == 1

    def test_a_declared_pipeline_that_never_ran_has_its_declared_club(
        self, db: Path, tmp_path: Path
    ) -> None:
        """Found by a new user: ``club=""`` for a late pipeline declared with ``club =
        "rondo"`` (and a new series at its first run); the CLI and web agree."""
        con = sqlite3.connect(db, isolation_level=None)
        con.execute(
            "INSERT INTO pipeline_states (pipeline, club_slug, state, since,"
            " first_seen_at, updated_at) VALUES ('discipline', NULL, 'late', 'x', 'x', 'x')"
        )
        con.close()
        config = tmp_path / "runtally.toml"
        config.write_text('[pipelines.discipline]\nschedule = "0 3 * * *"\nclub = "rondo"\n')
        args = ["--db", str(db), "--socket", str(tmp_path / "none.sock")]
        args += ["--spool", str(tmp_path / "s"), "--config", str(config)]
        result = CliRunner().invoke(main, ["metrics", *args], env={"RUNTALLY_CONFIG": None})
        assert result.exit_code == 0, result.output
        m = parse(result.output)
        assert m["runtally_pipeline_state", pc("discipline", "rondo", state="late")] == 1
        assert not any(("club", "") in labels for _, labels in m)
        pipelines = {"discipline": PipelineConfig(schedule="0 3 * * *", club="rondo")}
        web = WebConfig(
            db=db, socket=tmp_path / "none.sock", spool=tmp_path / "s", pipelines=pipelines
        )
        with TestClient(create_app(web)) as client:
            m = parse(client.get("/metrics").text)
        assert m["runtally_pipeline_state", pc("discipline", "rondo", state="late")] == 1

    def test_an_unreadable_database_is_a_zero_not_an_error(self, tmp_path: Path) -> None:
        m = parse(web_metrics(tmp_path / "missing.sqlite"))
        assert m["runtally_database_up", ()] == 0
        assert not any(name.startswith("runtally_pipeline_") for name, _ in m)


class TestTextfile:
    def test_cli_writes_the_textfile_atomically(self, db: Path, tmp_path: Path) -> None:
        out = tmp_path / "textfile" / "runtally.prom"
        out.parent.mkdir()
        out.write_text("stale")
        args = ["--db", str(db), "--socket", str(tmp_path / "none.sock")]
        args += ["--spool", str(tmp_path / "spool"), "--textfile", str(out)]
        result = CliRunner().invoke(main, ["metrics", *args], env={"RUNTALLY_CONFIG": None})
        assert result.exit_code == 0, result.output
        assert result.output == ""
        assert [p.name for p in out.parent.iterdir()] == ["runtally.prom"]  # no temp left
        assert out.stat().st_mode & 0o777 == 0o644
        m = parse(out.read_text())
        assert m["runtally_errors_total", pc("people", "rondo")] == 2

    def test_cli_prints_to_stdout_without_a_textfile(self, db: Path, tmp_path: Path) -> None:
        args = ["--db", str(db), "--socket", str(tmp_path / "none.sock")]
        result = CliRunner().invoke(
            main, ["metrics", *args, "--spool", str(tmp_path / "s")], env={"RUNTALLY_CONFIG": None}
        )
        assert result.exit_code == 0, result.output
        assert parse(result.output)["runtally_runs_total", pc("people", "rondo", outcome="failure")]

    def test_a_dash_is_stdout(
        self, db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.chdir(tmp_path)
        args = ["--db", str(db), "--socket", str(tmp_path / "none.sock")]
        args += ["--spool", str(tmp_path / "s"), "--textfile", "-"]
        result = CliRunner().invoke(main, ["metrics", *args], env={"RUNTALLY_CONFIG": None})
        assert result.exit_code == 0, result.output
        assert parse(result.output)["runtally_errors_total", pc("people", "rondo")] == 2
        assert not (tmp_path / "-").exists()

    @pytest.mark.parametrize("kind", ["symlink", "fifo", "dangling symlink"])
    def test_a_target_that_is_not_a_regular_file_is_left_alone(
        self, db: Path, tmp_path: Path, kind: str
    ) -> None:
        """The atomic rename would replace the link or node itself (as root,
        ``--textfile /dev/stdout`` turned the system's /dev/stdout into a file)."""
        target = tmp_path / "runtally.prom"
        real = tmp_path / "real.prom"
        real.write_text("real")
        if kind == "symlink":
            target.symlink_to(real)
        elif kind == "dangling symlink":
            target.symlink_to(tmp_path / "nowhere.prom")
        else:
            os.mkfifo(target)
        before = os.lstat(target)
        args = ["--db", str(db), "--socket", str(tmp_path / "none.sock")]
        args += ["--spool", str(tmp_path / "s"), "--textfile", str(target)]
        result = CliRunner().invoke(main, ["metrics", *args], env={"RUNTALLY_CONFIG": None})
        assert result.exit_code != 0
        assert result.output.count("\n") == 1 and "not a regular file" in result.output
        after = os.lstat(target)
        assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino)
        assert real.read_text() == "real"
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []

    def test_an_empty_textfile_path_is_a_usage_error(self, db: Path, tmp_path: Path) -> None:
        args = ["--db", str(db), "--socket", str(tmp_path / "none.sock"), "--textfile", ""]
        result = CliRunner().invoke(main, ["metrics", *args], env={"RUNTALLY_CONFIG": None})
        assert result.exit_code == 2
        assert "an empty path" in result.output and "Traceback" not in result.output

    def test_an_unwritable_textfile_is_one_line(self, db: Path, tmp_path: Path) -> None:
        args = ["--db", str(db), "--socket", str(tmp_path / "none.sock")]
        args += ["--textfile", str(tmp_path / "no" / "such" / "dir.prom")]
        result = CliRunner().invoke(main, ["metrics", *args], env={"RUNTALLY_CONFIG": None})
        assert result.exit_code != 0
        assert "cannot write" in result.output
        assert "Traceback" not in result.output


async def test_daemon_health_comes_from_its_status_reply(daemon: Daemon) -> None:
    settings = daemon.settings
    events = run_events("m1", steps=1, errors=1)

    def emit() -> list:
        with RawClient(settings.socket) as c:
            c.send(*events)
            return c.recv(len(events))

    replies = await trio.to_thread.run_sync(emit)
    assert all(isinstance(r, Ack) for r in replies)
    snap = await trio.to_thread.run_sync(
        lambda: gather(settings.db, settings.socket, settings.spool)
    )
    assert isinstance(snap.daemon, StatusReply)
    hist = snap.daemon.commit_seconds
    assert hist is not None and sum(hist.counts) >= 1
    text = (await trio.to_thread.run_sync(render, RuntallyCollector(lambda: snap))).decode()
    m = parse(text)
    assert m["runtally_daemon_up", ()] == 1
    assert m["runtally_daemon_events_committed_total", ()] == len(events)
    assert m["runtally_daemon_queue_depth", ()] == 0
    assert m["runtally_daemon_commit_duration_seconds_count", ()] == sum(hist.counts)
    assert m["runtally_daemon_commit_duration_seconds_bucket", (("le", "+Inf"),)] == sum(
        hist.counts
    )
    assert m["runtally_daemon_commit_duration_seconds_sum", ()] == pytest.approx(hist.sum_s)
    assert m["runtally_errors_total", pc("people", "rondo")] == 1


def test_metrics_on_a_terminal_show_control_characters_escaped(tmp_path: Path) -> None:
    """A pipeline named with terminal escapes: shown as ``\\x1b`` on a terminal,
    exact in a pipe (Prometheus reads the file or pipe, people read the terminal)."""
    import os
    import subprocess
    import sys

    path = tmp_path / "d.sqlite"
    store = Store.open(path)
    try:
        store.apply([RunStart(id="e1", ts=1_770_000_000_000, run="r1", pipeline="\x1b[2Jevil\x07")])
    finally:
        store.close()
    args = [sys.executable, "-m", "runtally.cli", "metrics", "--db", str(path)]
    args += ["--socket", str(tmp_path / "none.sock"), "--spool", str(tmp_path / "spool")]
    env = {**os.environ, "RUNTALLY_CONFIG": ""}
    piped = subprocess.run(args, capture_output=True, env=env, timeout=60, check=True)
    assert b"\x1b[2Jevil\x07" in piped.stdout
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen(args, stdout=slave, stderr=subprocess.PIPE, env=env)
        os.close(slave)
        out = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the writer is gone
                break
            if not chunk:
                break
            out += chunk
        assert proc.wait(timeout=60) == 0
    finally:
        os.close(master)
    assert b"\x1b" not in out and b"\x07" not in out
    assert b"\\x1b[2Jevil\\x07" in out
