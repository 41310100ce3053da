"""``runtally exec`` must not change the command it wraps (real processes, a real daemon).

Background children keep their stderr after exec exits and are not waited
for; the duration is the command's; --timeout stops a hung command; tails of
stderr (and stdout with --capture-stdout) are kept, non-UTF-8 included; a run
without --club gets the default_club setting.  Also what an exception's
error row says (``KeyError: 'k'``).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import msgspec
import pytest
from daemon_helpers import DaemonProcess, wait_until
from test_cli_exec import PY, exec_argv, finished_run, run_exec

from runtally import track_run
from runtally.cli._exec import Outcome, _failure_message
from runtally.protocol import read_spool


class TestBackgroundChildren:
    def test_a_background_child_keeps_its_stderr_and_is_not_waited_for(
        self, daemon_proc: DaemonProcess, tmp_path: Path
    ) -> None:
        go, marker, err = tmp_path / "go", tmp_path / "marker", tmp_path / "stderr"
        # The worker waits for a file we create only after exec has returned:
        # had exec waited for it, exec would never return (the run times out).
        script = (
            f"( while [ ! -e {go} ]; do sleep 0.02; done; echo late >&2; echo ok > {marker} ) &"
            " echo early >&2; exit 0"
        )
        with err.open("wb") as stderr:
            done = subprocess.run(
                exec_argv(daemon_proc, "sh", "-c", script, pipeline="bg"),
                env=daemon_proc.env(),
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                timeout=20,
                check=False,
            )
        assert done.returncode == 0
        assert not marker.exists()
        go.touch()
        # The worker's write to stderr after exec exited succeeded (no SIGPIPE):
        # the line reached exec's stderr and the worker went on to the marker.
        wait_until(marker.exists, 10, what="the background worker's marker")
        assert marker.read_text() == "ok\n"
        wait_until(lambda: err.read_bytes() == b"early\nlate\n", 10, what="its line")
        run = finished_run(daemon_proc.db, "bg")
        assert run["outcome"] == "success"
        # The command's duration: not the worker's, nor a drain of its pipe.
        assert run["duration_ms"] < 1000
        assert run["steps"][0]["duration_ms"] < 1000


class TestClosedReader:
    """When whoever reads exec's stream goes away, the command's next write fails, as
    without runtally (found from outside: ``runtally exec ... | head -1`` ran for
    ever, the relay draining on)."""

    @pytest.mark.parametrize("stream", ["stderr", "stdout"])
    def test_the_command_gets_sigpipe(self, daemon_proc: DaemonProcess, stream: str) -> None:
        if stream == "stdout":
            argv = exec_argv(daemon_proc, "yes", pipeline="pipe", extra=("--capture-stdout",))
        else:
            argv = exec_argv(daemon_proc, "sh", "-c", "yes >&2", pipeline="pipe")
        pipes = {stream: subprocess.PIPE}
        quiet = {s: subprocess.DEVNULL for s in ("stdout", "stderr") if s != stream}
        proc = subprocess.Popen(argv, env=daemon_proc.env(), **pipes, **quiet)
        reader = getattr(proc, stream)
        assert reader.readline() == b"y\n"
        reader.close()  # as `| head -1` does
        try:
            code = proc.wait(timeout=30)
        finally:
            proc.kill()
        assert code == 141, code  # 128 + SIGPIPE, what the command itself got
        run = finished_run(daemon_proc.db, "pipe")
        assert run["outcome"] == "failure"


class TestTimeout:
    def test_a_hung_command_is_terminated_then_killed(self, daemon_proc: DaemonProcess) -> None:
        hung = (
            "import signal, sys, time\n"
            "signal.signal(signal.SIGTERM, lambda *a: print('got TERM', file=sys.stderr, "
            "flush=True))\n"
            "time.sleep(60)\n"
        )
        extra = ["--timeout", "1s", "--kill-after", "0.5s"]
        done = run_exec(daemon_proc, PY, "-c", hung, pipeline="hung", extra=extra, timeout=30)
        assert done.returncode == 124  # as timeout(1)
        assert done.stderr == b"got TERM\n"  # SIGTERM first; it ignored it, so SIGKILL
        run = finished_run(daemon_proc.db, "hung")
        assert run["outcome"] == "failure"
        (error,) = run["errors"]
        name = Path(PY).name
        assert error["error_message"] == f"{name} timed out after 1.0s: got TERM"
        assert json.loads(run["summary_json"])["timed_out_after_ms"] == 1000

    def test_the_message_reads_like_a_duration(self) -> None:
        end = Outcome(124, timed_out_ms=2 * 3_600_000)
        assert _failure_message("sync", end) == "sync timed out after 2h 00m"

    @pytest.mark.parametrize("value", ["soon", "0", "-5s", "1x"])
    def test_a_bad_duration_is_a_usage_error(self, daemon_proc: DaemonProcess, value: str) -> None:
        done = run_exec(daemon_proc, "true", pipeline="bad", extra=["--timeout", value])
        assert done.returncode == 2
        assert b"--timeout" in done.stderr
        assert b"Traceback" not in done.stderr


class TestTails:
    def test_tail_lines(self, daemon_proc: DaemonProcess) -> None:
        script = "for i in 1 2 3 4 5 6 7 8 9 10; do echo line $i >&2; done; exit 1"
        done = run_exec(daemon_proc, "sh", "-c", script, pipeline="t3", extra=["--tail-lines", "3"])
        assert done.returncode == 1
        (error,) = finished_run(daemon_proc.db, "t3")["errors"]
        assert error["error_stack"] == "line 8\nline 9\nline 10"

    def test_capture_stdout_keeps_its_tail_and_passes_it_through(
        self, daemon_proc: DaemonProcess
    ) -> None:
        script = "for i in 1 2 3; do echo out $i; done"
        extra = ["--capture-stdout", "--tail-lines", "2"]
        done = run_exec(daemon_proc, "sh", "-c", script, pipeline="cap", extra=extra)
        assert (done.returncode, done.stdout) == (0, b"out 1\nout 2\nout 3\n")
        run = finished_run(daemon_proc.db, "cap")
        assert json.loads(run["steps"][0]["detail_json"])["stdout_tail"] == "out 2\nout 3"

    def test_non_utf8_output_is_kept_with_replacement_characters(
        self, daemon_proc: DaemonProcess
    ) -> None:
        code = "import sys; sys.stderr.buffer.write(b'\\xff\\xfe bad\\n'); sys.exit(1)"
        done = run_exec(daemon_proc, PY, "-c", code, pipeline="latin")
        assert done.stderr == b"\xff\xfe bad\n"  # untouched on the way through
        (error,) = finished_run(daemon_proc.db, "latin")["errors"]
        assert error["error_stack"] == "\ufffd\ufffd bad"
        assert error["error_message"].endswith(": \ufffd\ufffd bad")


class TestDefaultClub:
    def test_a_run_without_club_gets_the_setting(
        self, daemon_proc: DaemonProcess, tmp_path: Path
    ) -> None:
        config = tmp_path / "runtally.toml"
        config.write_text('[runtally]\ndefault_club = "hq"\n')
        env = {**daemon_proc.env(), "RUNTALLY_CONFIG": str(config)}
        for pipeline, extra in (("noclub", []), ("club", ["--club", "away"])):
            done = subprocess.run(
                exec_argv(daemon_proc, "true", pipeline=pipeline, extra=extra),
                env=env,
                capture_output=True,
                timeout=20,
                check=False,
            )
            assert done.returncode == 0, done.stderr
        assert finished_run(daemon_proc.db, "noclub")["club_slug"] == "hq"
        assert finished_run(daemon_proc.db, "club")["club_slug"] == "away"

    def test_the_python_client_uses_it_too(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        config = tmp_path / "runtally.toml"
        config.write_text('[runtally]\ndefault_club = "hq"\n')
        monkeypatch.setenv("RUNTALLY_CONFIG", str(config))
        spool = tmp_path / "spool"
        with track_run("p", socket=tmp_path / "nobody.sock", spool=spool):
            pass
        starts = [e for e in _spooled(spool) if e["type"] == "run_start"]
        assert [e["club_slug"] for e in starts] == ["hq"]


def _spooled(spool: Path) -> list[dict]:
    events = []
    for path in sorted(spool.glob("*.spool")):
        records, _ = read_spool(path.read_bytes())
        events += [msgspec.msgpack.decode(r) for r in records]
    return events


class TestErrorRows:
    @pytest.mark.parametrize(
        ("exc", "message"),
        [
            (KeyError("k"), "KeyError: 'k'"),
            (
                ConnectionError("laposta API returned 503"),
                "ConnectionError: laposta API returned 503",
            ),
            (RuntimeError(), "RuntimeError"),
            (ValueError("x" * 3000), "ValueError: " + "x" * (2000 - len("ValueError: "))),
        ],
    )
    def test_an_exception_keeps_its_type(
        self, tmp_path: Path, exc: Exception, message: str
    ) -> None:
        spool = tmp_path / "spool"
        with (
            pytest.raises(type(exc)),
            track_run("p", socket=tmp_path / "nobody.sock", spool=spool) as run,
            run.step("s"),
        ):
            raise exc
        (error,) = [e for e in _spooled(spool) if e["type"] == "error"]
        assert error["message"] == message
        assert error["step_name"] == "s"


@pytest.mark.parametrize(
    ("closing", "pipeline"),
    [("1>&-", "closed-out"), ("0<&- 1>&- 2>&-", "closed-all"), ("2>&-", "closed-err")],
)
def test_closed_standard_streams_stay_closed_and_change_nothing(
    daemon_proc: DaemonProcess, closing: str, pipeline: str
) -> None:
    """A cron line run with a stream closed: the command sees it closed, as without
    exec, and neither its exit status nor the run's outcome changes (it was 141,
    SIGPIPE, when exec's own pipe took the free fd 1)."""
    command = "echo out; echo err >&2; exit 0"
    argv = " ".join(
        f"'{a}'" for a in exec_argv(daemon_proc, "bash", "-c", command, pipeline=pipeline)
    )
    plain = subprocess.run(["bash", "-c", f"bash -c '{command}' {closing}"], check=False)
    wrapped = subprocess.run(
        ["bash", "-c", f"{argv} {closing}"],
        env=daemon_proc.env(),
        capture_output=True,
        timeout=20,
        check=False,
    )
    assert wrapped.returncode == plain.returncode == 0, wrapped.stderr
    run = finished_run(daemon_proc.db, pipeline)
    assert run["outcome"] == "success"
