"""``runtally exec`` as a real process, against a real daemon process (and without one).

What is checked is what a crontab line relies on: the command's output and
exit status pass through untouched, signals reach it once, and the run, its
step and its error row end up in the database (or in the spool).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import select
import signal
import sqlite3
import subprocess
import sys
import termios
import textwrap
import time
from pathlib import Path

import msgspec
import pytest
from click.testing import CliRunner
from daemon_helpers import DaemonProcess, ro_connect, wait_until

from runtally.cli import main
from runtally.protocol import read_spool

PY = sys.executable

#: A child that reports the signals it receives: prints "ready", waits for a
#: first signal, waits a little longer for duplicates, prints them, exits 10 + n.
SIGNAL_COUNTER = textwrap.dedent(
    """
    import signal, sys, time
    got = []
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, lambda n, f: got.append(n))
    print("ready", flush=True)
    deadline = time.monotonic() + 8
    while not got and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.4)
    print(",".join(str(n) for n in got), flush=True)
    sys.exit(10 + len(got))
    """
)


def exec_argv(d: DaemonProcess, *command: str, pipeline: str = "cron", extra=()) -> list[str]:
    return [
        PY,
        "-m",
        "runtally.cli",
        "exec",
        "--socket",
        str(d.socket),
        "--spool",
        str(d.spool),
        "--pipeline",
        pipeline,
        *extra,
        "--",
        *command,
    ]


def run_exec(
    d: DaemonProcess, *command: str, pipeline: str = "cron", extra=(), timeout: float = 8
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        exec_argv(d, *command, pipeline=pipeline, extra=extra),
        env=d.env(),
        capture_output=True,
        timeout=timeout,
        check=False,
    )


def rows(db: Path, sql: str, params=()) -> list[dict]:
    conn = ro_connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(sql, params).fetchall()]
    finally:
        conn.close()


def finished_run(db: Path, pipeline: str) -> dict:
    """The pipeline's one run, once the daemon has committed its end."""

    def done() -> list[dict]:
        return rows(
            db, "SELECT * FROM runs WHERE pipeline = ? AND outcome != 'running'", [pipeline]
        )

    (run,) = wait_until(done, 8, what=f"the {pipeline} run to end")
    run["steps"] = wait_until(
        lambda: rows(
            db,
            "SELECT * FROM run_steps WHERE run_id = ? AND finished_at IS NOT NULL",
            [run["id"]],
        ),
        8,
        what="its step to end",
    )
    run["errors"] = rows(db, "SELECT * FROM run_errors WHERE run_id = ? ORDER BY id", [run["id"]])
    return run


class TestWithDaemon:
    def test_success_passes_output_through_and_records_the_run(
        self, daemon_proc: DaemonProcess
    ) -> None:
        script = 'printf "out\\n"; printf "err\\n" >&2; echo "parent=$RUNTALLY_PARENT_RUN"'
        done = run_exec(
            daemon_proc, "sh", "-c", script, pipeline="ok", extra=["--club", "hq", "--step", "sync"]
        )
        assert done.returncode == 0, done.stderr
        out = done.stdout.decode()
        assert out.startswith("out\nparent=")
        assert done.stderr == b"err\n"  # untouched, and nothing of ours
        run = finished_run(daemon_proc.db, "ok")
        assert out == f"out\nparent={run['uid']}\n"  # the child knew its run
        assert run["outcome"] == "success"
        assert run["club_slug"] == "hq"
        assert run["duration_ms"] is not None
        assert json.loads(run["summary_json"]) == {"argv": ["sh", "-c", script], "exit_code": 0}
        (step,) = run["steps"]
        assert step["step_name"] == "sync"
        assert step["outcome"] == "success"
        assert json.loads(step["detail_json"])["exit_code"] == 0
        assert run["errors"] == []
        meta = json.loads(run["meta_json"])
        assert meta["argv"][-4:] == ["--", "sh", "-c", script]

    def test_failure_records_exit_code_and_stderr_tail(self, daemon_proc: DaemonProcess) -> None:
        script = 'for i in $(seq 1 25); do echo "line $i" >&2; done; echo partial; exit 3'
        done = run_exec(daemon_proc, "sh", "-c", script, pipeline="bad")
        assert done.returncode == 3
        assert done.stdout == b"partial\n"
        assert done.stderr == "".join(f"line {i}\n" for i in range(1, 26)).encode()
        run = finished_run(daemon_proc.db, "bad")
        assert run["outcome"] == "failure"
        (step,) = run["steps"]
        assert step["step_name"] == "sh"  # the command's name by default
        assert step["outcome"] == "failure"
        (error,) = run["errors"]
        assert error["run_step_id"] == step["id"]
        assert error["step_name"] == "sh"
        assert error["error_message"] == "sh exited with status 3: line 25"
        assert error["error_stack"] == "\n".join(f"line {i}" for i in range(6, 26))
        assert json.loads(run["summary_json"])["exit_code"] == 3

    @pytest.mark.parametrize(("sig", "code"), [("TERM", 143), ("KILL", 137), ("INT", 130)])
    def test_killed_by_a_signal_exits_128_plus_n(
        self, daemon_proc: DaemonProcess, sig: str, code: int
    ) -> None:
        done = run_exec(daemon_proc, "sh", "-c", f"kill -{sig} $$", pipeline=f"sig{sig}")
        assert done.returncode == code
        run = finished_run(daemon_proc.db, f"sig{sig}")
        assert run["outcome"] == "failure"
        (error,) = run["errors"]
        assert error["error_message"] == f"sh was killed by SIG{sig} (exit status {code})"
        assert error["error_stack"] is None
        assert json.loads(run["summary_json"])["signal"] == f"SIG{sig}"

    @pytest.mark.parametrize("code", [127, 126, 143])
    def test_a_command_exiting_with_a_special_status_is_not_dressed_up(
        self, daemon_proc: DaemonProcess, code: int
    ) -> None:
        done = run_exec(daemon_proc, "sh", "-c", f"exit {code}", pipeline=f"own{code}")
        assert (done.returncode, done.stdout, done.stderr) == (code, b"", b"")
        run = finished_run(daemon_proc.db, f"own{code}")
        assert run["errors"][0]["error_message"] == f"sh exited with status {code}"
        assert json.loads(run["summary_json"]) == {
            "argv": ["sh", "-c", f"exit {code}"],
            "exit_code": code,
        }

    def test_bytes_pass_through_untouched(self, daemon_proc: DaemonProcess) -> None:
        code = (
            "import sys; sys.stdout.buffer.write(bytes(range(256)));"
            "sys.stderr.buffer.write(b'\\xff\\xfe no newline at the end')"
        )
        done = run_exec(daemon_proc, PY, "-c", code, pipeline="bytes")
        assert done.returncode == 0
        assert done.stdout == bytes(range(256))
        assert done.stderr == b"\xff\xfe no newline at the end"

    def test_stdin_is_inherited(self, daemon_proc: DaemonProcess) -> None:
        done = subprocess.run(
            exec_argv(daemon_proc, "tr", "a-z", "A-Z", pipeline="stdin"),
            env=daemon_proc.env(),
            input=b"hello\n",
            capture_output=True,
            timeout=8,
            check=False,
        )
        assert (done.returncode, done.stdout) == (0, b"HELLO\n")

    @pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
    def test_signals_are_forwarded_once(
        self, daemon_proc: DaemonProcess, sig: signal.Signals
    ) -> None:
        proc = subprocess.Popen(
            exec_argv(daemon_proc, PY, "-c", SIGNAL_COUNTER, pipeline="fwd"),
            env=daemon_proc.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline() == b"ready\n"
            proc.send_signal(sig)
            out, err = proc.communicate(timeout=8)
        finally:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        assert out == f"{int(sig)}\n".encode(), err
        assert proc.returncode == 11  # the child's own exit status: it got exactly one
        run = finished_run(daemon_proc.db, "fwd")
        assert run["outcome"] == "failure"
        assert run["errors"][0]["error_message"].endswith("exited with status 11")

    def test_ctrl_c_on_a_terminal_reaches_the_command_once(
        self, daemon_proc: DaemonProcess
    ) -> None:
        # The terminal sends SIGINT to the whole foreground process group: the
        # command has it already, exec must not send it a second one.
        master, slave = pty.openpty()

        def take_terminal() -> None:
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        proc = subprocess.Popen(
            exec_argv(daemon_proc, PY, "-c", SIGNAL_COUNTER, pipeline="tty"),
            env=daemon_proc.env(),
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
            preexec_fn=take_terminal,  # noqa: PLW1509 - test process, no threads
        )
        os.close(slave)
        try:
            seen = b""
            deadline = time.monotonic() + 8
            while b"ready" not in seen and time.monotonic() < deadline:
                if select.select([master], [], [], 0.1)[0]:
                    seen += os.read(master, 1024)
            assert b"ready" in seen
            os.write(master, b"\x03")  # Ctrl-C
            assert proc.wait(timeout=8) == 11
            while select.select([master], [], [], 0.2)[0]:
                try:
                    chunk = os.read(master, 1024)
                except OSError:
                    break
                if not chunk:
                    break
                seen += chunk
        finally:
            os.close(master)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        lines = seen.replace(b"^C", b"").split(b"\r\n")  # the terminal echoes ^C
        assert lines[:2] == [b"ready", str(int(signal.SIGINT)).encode()]

    def test_a_missing_command_exits_127_and_is_recorded(self, daemon_proc: DaemonProcess) -> None:
        done = run_exec(daemon_proc, "no-such-command-xyz", "arg", pipeline="missing")
        assert done.returncode == 127
        assert done.stdout == b""
        assert done.stderr == b"Error: cannot run 'no-such-command-xyz': command not found\n"
        run = finished_run(daemon_proc.db, "missing")
        assert run["outcome"] == "failure"
        (error,) = run["errors"]
        assert error["error_message"] == "cannot run 'no-such-command-xyz': command not found"
        assert json.loads(run["summary_json"])["exit_code"] == 127

    def test_a_command_that_cannot_be_executed_exits_126(self, daemon_proc: DaemonProcess) -> None:
        script = daemon_proc.root / "not-executable.sh"
        script.write_text("#!/bin/sh\necho hi\n")
        script.chmod(0o644)
        done = run_exec(daemon_proc, str(script), pipeline="noexec")
        assert done.returncode == 126
        assert b"permission denied" in done.stderr
        assert finished_run(daemon_proc.db, "noexec")["outcome"] == "failure"

    def test_nested_exec_records_a_child_run(self, daemon_proc: DaemonProcess) -> None:
        inner = exec_argv(daemon_proc, "true", pipeline="inner")
        done = run_exec(daemon_proc, *inner, pipeline="outer")
        assert done.returncode == 0, done.stderr
        outer_run = finished_run(daemon_proc.db, "outer")
        inner_run = finished_run(daemon_proc.db, "inner")
        assert inner_run["parent_uid"] == outer_run["uid"]
        assert inner_run["parent_run_id"] == outer_run["id"]


#: A command that tracks a run of its own (pipeline argv[1]) from another
#: directory, with no path given: it relies on what `runtally exec` exported.
TRACKING_CHILD = textwrap.dedent(
    """
    import os, sys
    os.chdir("/")
    from runtally import RunTracker
    t = RunTracker(sys.argv[1])
    t.start_run()
    t.end_run(True)
    t.close()
    """
)


class TestCommandTracksToTheSameDaemon:
    """The command's own runs reach the daemon and spool exec was told to use (F10)."""

    def run_child(
        self, d: DaemonProcess, exec_options: list[str], pipeline: str, cwd: Path | None = None
    ) -> None:
        env = d.env()
        env["HOME"] = str(d.root / "home")  # the defaults: a spool nobody replays
        argv = [PY, "-m", "runtally.cli", "exec", *exec_options, "-p", f"{pipeline}-exec"]
        argv += ["--", PY, "-c", TRACKING_CHILD, pipeline]
        done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, timeout=30, check=False)
        assert done.returncode == 0, done.stderr
        assert b"runtally:" not in done.stderr
        outer = finished_run(d.db, f"{pipeline}-exec")
        (inner,) = wait_until(
            lambda: rows(
                d.db, "SELECT * FROM runs WHERE pipeline = ? AND outcome = 'success'", [pipeline]
            ),
            8,
            what=f"the command's own run ({pipeline}) to land",
        )
        assert inner["parent_uid"] == outer["uid"]

    def test_socket_and_spool_options(self, daemon_proc: DaemonProcess) -> None:
        d = daemon_proc
        self.run_child(d, ["--socket", str(d.socket), "--spool", str(d.spool)], "opts")

    def test_relative_options_hold_after_the_command_changes_directory(
        self, daemon_proc: DaemonProcess
    ) -> None:
        d = daemon_proc
        self.run_child(d, ["--socket", "d.sock", "--spool", "spool"], "relative", cwd=d.root)

    def test_config_option(self, daemon_proc: DaemonProcess) -> None:
        d = daemon_proc
        config = d.root / "exec.toml"
        config.write_text(f'socket = "{d.socket}"\nspool = "{d.spool}"\n')
        self.run_child(d, ["--config", str(config)], "config")


class TestWithoutDaemon:
    def test_same_behaviour_and_the_events_land_in_the_spool(self, short_root: Path) -> None:
        d = DaemonProcess(short_root)  # not started: nobody listens on its socket
        cases = [
            ("up", ["sh", "-c", "echo fine"], 0, b"fine\n"),
            ("three", ["sh", "-c", "echo oops >&2; exit 3"], 3, b""),
            ("term", ["sh", "-c", "kill -TERM $$"], 143, b""),
        ]
        for pipeline, command, code, stdout in cases:
            started = time.monotonic()
            done = run_exec(d, *command, pipeline=pipeline)
            assert time.monotonic() - started < 5  # no waiting on a daemon that is not there
            assert done.returncode == code
            assert done.stdout == stdout
            assert b"Traceback" not in done.stderr
        assert not d.db.exists()
        events = []
        for path in sorted(d.spool.glob("*.spool")):
            records, tail = read_spool(path.read_bytes())
            assert tail.state == "clean"
            events += [msgspec.msgpack.decode(r) for r in records]
        by_run: dict[str, list[str]] = {}
        for e in events:
            by_run.setdefault(e["run"], []).append(e["type"])
        assert sorted(by_run.values()) == sorted(
            [
                ["run_start", "step_start", "step_end", "run_end"],
                ["run_start", "step_start", "error", "step_end", "run_end"],
                ["run_start", "step_start", "error", "step_end", "run_end"],
            ]
        )
        # When the daemon comes back, the spool is replayed into the database.
        d.start()
        try:
            assert finished_run(d.db, "up")["outcome"] == "success"
            three = finished_run(d.db, "three")
            assert three["errors"][0]["error_message"] == "sh exited with status 3: oops"
            assert three["errors"][0]["error_stack"] == "oops"
            assert finished_run(d.db, "term")["outcome"] == "failure"
        finally:
            d.stop()


class TestArguments:
    @pytest.mark.parametrize(
        ("args", "says"),
        [
            (["exec", "--", "true"], "Missing option '--pipeline'"),
            (["exec", "--pipeline", "p"], "Missing argument 'COMMAND...'"),
        ],
    )
    def test_usage_errors(self, args: list[str], says: str) -> None:
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2
        assert says in result.output

    def test_options_after_the_command_belong_to_the_command(self, short_root: Path) -> None:
        d = DaemonProcess(short_root)
        done = run_exec(d, "sh", "-c", 'echo "$@"', "sh", "--pipeline", "-x", pipeline="opts")
        assert (done.returncode, done.stdout) == (0, b"--pipeline -x\n")
