"""A pipeline SIGKILLed mid-run: its run becomes crashed and ``runtally status`` fails."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from daemon_helpers import (
    REPO,
    RawClient,
    count,
    daemon_process,
    ro_connect,
    run_events,
    short_dir,
    wait_until,
)

from runtally.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

PIPELINE = """
import sys, time
from runtally import RunTracker
t = RunTracker("people", club_slug="rondo", socket=sys.argv[1], spool=sys.argv[2])
t.start_run()
t.start_step("sportlink-download")
print("started", flush=True)
time.sleep(600)
"""


def test_sigkilled_pipeline_becomes_crashed_and_status_fails() -> None:
    root = short_dir("mon")
    config = root / "runtally.toml"
    config.write_text(
        "monitor_interval_s = 0.2\ncrash_grace_s = 0.5\n"
        '[pipelines.people]\nschedule = "0 3 * * *"\nclub = "rondo"\n'
    )
    with daemon_process(root, extra_args=("--config", str(config))) as d:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        proc = subprocess.Popen(
            [sys.executable, "-c", PIPELINE, str(d.socket), str(d.spool)],
            stdout=subprocess.PIPE,
            env=env,
        )
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == b"started"
            wait_until(
                lambda: count(d.db, "runs", "outcome = 'running' AND peer_pid = ?", (proc.pid,)),
                what="the run with its peer pid",
            )
            wait_until(
                lambda: count(d.db, "pipeline_states", "state = 'running'"),
                what="the monitor to see it running",
            )
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc.stdout.close()  # type: ignore[union-attr]
        wait_until(
            lambda: count(d.db, "pipeline_states", "pipeline = 'people' AND state = 'crashed'"),
            timeout=60,
            what="the run to become crashed",
        )
        conn = ro_connect(d.db)
        try:
            assert conn.execute("SELECT outcome FROM runs").fetchall() == [("failure",)]
            # Its open step ended with it: nothing is left "running" in a crashed run.
            steps = conn.execute("SELECT outcome, finished_at IS NOT NULL FROM run_steps")
            assert steps.fetchall() == [("failure", 1)]
            (message,) = conn.execute("SELECT error_message FROM run_errors").fetchone()
        finally:
            conn.close()
        assert message == f"process {proc.pid} ended without end_run (killed or crashed)"
        args = ["--socket", str(d.socket), "--db", str(d.db), "--spool", str(d.spool)]
        result = CliRunner().invoke(main, ["status", *args, "--config", str(config)])
        assert result.exit_code == 1, result.output
        assert "pipeline people is crashed" in result.output
        listed = CliRunner().invoke(
            main, ["pipelines", "--json", "--db", str(d.db), "--config", str(config)]
        )
        assert listed.exit_code == 0, listed.output
        assert '"state": "crashed"' in listed.output


def test_pause_and_resume_through_the_daemon(tmp_path: Path) -> None:
    root = short_dir("mon")
    with daemon_process(root) as d:
        with RawClient(d.socket) as c:  # people has a run
            events = run_events("r1", steps=0, errors=0)
            c.send(*events)
            assert len(c.recv(len(events))) == len(events)
        runner = CliRunner()
        # A name that is neither declared nor has runs: a typo, refused (found
        # from outside: "peple paused", listed for ever, people kept alerting).
        result = runner.invoke(main, ["pause", "peple", "--socket", str(d.socket)])
        assert result.exit_code != 0 and "no pipeline 'peple'" in result.output, result.output
        assert count(d.db, "pipeline_states", "pipeline = 'peple'") == 0
        result = runner.invoke(main, ["pause", "people", "--socket", str(d.socket)])
        assert result.exit_code == 0, result.output
        assert result.output.strip() == "people paused"
        assert count(d.db, "pipeline_states", "pipeline = 'people' AND paused = 1") == 1
        assert count(d.db, "audit_log", "event = 'pipeline_paused'") == 1
        result = runner.invoke(main, ["resume", "people", "--socket", str(d.socket)])
        assert result.output.strip() == "people resumed"
        assert count(d.db, "pipeline_states", "pipeline = 'people' AND paused = 0") == 1


def test_pause_is_refused_to_a_peer_that_is_not_an_admin() -> None:
    root = short_dir("mon")
    config = root / "runtally.toml"
    config.write_text(f"admin_uids = [{os.getuid() + 4242}]\n")
    with daemon_process(root, extra_args=("--config", str(config))) as d:
        result = CliRunner().invoke(main, ["pause", "people", "--socket", str(d.socket)])
        assert result.exit_code != 0
        assert "pause is an admin message" in result.output
        assert count(d.db, "pipeline_states") == 0
