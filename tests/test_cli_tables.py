"""Tables people can read: fitted to 80 and 120 columns, streamed, plain on a pipe.

Tables are rendered by the same functions the commands use, on a rich
Console forced to a width, and checked line by line; one test runs the real
command on a real 80-column pseudo-terminal.  Also: long name filters, a
client clock stepped back, plurals, and configuration errors naming their source.
"""

from __future__ import annotations

import io
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.cells import cell_len
from rich.console import Console
from test_cli_read import build, cli, ok, one_line_error

from runtally.cli import _query as q
from runtally.cli import main
from runtally.cli._views import print_errors, print_runs
from runtally.daemon._store import Store
from runtally.protocol import ErrorEvent, RunEnd, RunStart

NOW = int(time.time() * 1000)
HOUR = 3_600_000
LONG = "pipeline-with-a-very-long-name-" + "x" * 269  # 300 characters
WIDE = "同期" * 30  # 120 cells of double-width characters
ESC = "evil\x1b[2J\x07name"


def _console(width: int) -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=width, force_terminal=True, color_system=None), buf


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tables") / "dashboard.sqlite"
    build(path)
    store = Store.open(path)
    try:
        events = []
        for n, name in enumerate((LONG[:256], WIDE, ESC)):
            run = f"long{n}"
            events += [
                RunStart(id=f"{run}-1", ts=NOW - HOUR, run=run, pipeline=name, club_slug="c"),
                ErrorEvent(
                    id=f"{run}-2",
                    ts=NOW - HOUR + 1,
                    run=run,
                    step_name="a-rather-long-step-name-indeed",
                    member="someone.with.a.long.address@example.org",
                    message="word " * 80,
                ),
                RunEnd(id=f"{run}-3", ts=NOW - HOUR + 2, run=run, outcome="failure"),
            ]
        store.apply(events)
        store.checkpoint()
    finally:
        store.close()
    return path


def _runs(db: Path) -> list[dict]:
    return q.read(db, q.list_runs)


def _errors(db: Path) -> list[dict]:
    return q.read(db, q.list_errors)


_SGR = re.compile(r"\x1b\[[0-9;]*m")


def _json_stdout(*args: str) -> tuple[dict, str]:
    """The JSON a command printed on stdout, and what it said on stderr."""
    result = CliRunner().invoke(
        main, list(args), env={"RUNTALLY_CONFIG": None, "RUNTALLY_DB": None}
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), result.stderr


class TestFitted:
    @pytest.mark.parametrize("width", [80, 120])
    def test_runs_one_per_line_within_the_width(self, ledger: Path, width: int) -> None:
        runs = _runs(ledger)
        out, buf = _console(width)
        assert print_runs(out, [runs], fit=True) == len(runs)
        header, *lines = buf.getvalue().splitlines()
        assert header.split()[:2] == ["ID", "PIPELINE"]
        assert "OUTCOME" in header
        assert len(lines) == len(runs)  # one run per line
        for run, line in zip(runs, lines, strict=True):
            assert cell_len(line) <= width
            assert line.split()[0] == str(run["id"])  # a line never starts mid-row
            assert (run["outcome"] or "-") in line.split()  # a whole word, never "succ"/"ess"
            cell = line.split(maxsplit=1)[1]
            pipeline = run["pipeline"].replace("\x1b", "\\x1b").replace("\x07", "\\x07")
            # The name whole, or its beginning and an ellipsis: never wrapped.
            shown = cell.split("  ")[0]
            assert shown == pipeline or (
                shown.endswith("…") and pipeline.startswith(shown[:-1].rstrip())
            )

    def test_at_80_the_least_needed_columns_go_and_ages_are_relative(self, ledger: Path) -> None:
        out, buf = _console(80)
        print_runs(out, [_runs(ledger)], fit=True)
        header = buf.getvalue().splitlines()[0].split()
        assert header[:2] == ["ID", "PIPELINE"]
        for kept in ("STARTED", "DURATION", "OUTCOME", "ERRORS"):
            assert kept in header
        for dropped in ("SKIPPED", "PARENT"):
            assert dropped not in header
        assert " 1h ago " in buf.getvalue()
        assert time.strftime("%Y-") not in buf.getvalue()  # no full timestamps

    def test_at_120_the_full_start_time_fits_when_names_are_short(self, tmp_path: Path) -> None:
        db = tmp_path / "short.sqlite"
        build(db)
        out, buf = _console(120)
        print_runs(out, [_runs(db)], fit=True)
        header, *lines = buf.getvalue().splitlines()
        assert "SKIPPED" in header
        assert "PARENT" in header
        for line in lines:
            assert cell_len(line) <= 120
            assert "ago)" in line  # "2026-02-08 15:53:00 (3h ago)" in one piece

    @pytest.mark.parametrize("width", [80, 120])
    def test_errors_one_per_line_within_the_width(self, ledger: Path, width: int) -> None:
        errs = _errors(ledger)
        out, buf = _console(width)
        print_errors(out, [errs], fit=True, with_run=True)
        header, *lines = buf.getvalue().splitlines()
        assert header.split()[0] == "TIME"
        assert header.rstrip().endswith("MESSAGE")
        assert len(lines) == len(errs)
        for error, line in zip(errs, lines, strict=True):
            assert cell_len(line) <= width
            if error["error_message"].startswith("word word"):
                assert line.endswith("word…")  # cut at the width, never wrapped

    @pytest.mark.parametrize(
        ("width", "dropped"),
        [(80, None), (72, "STEP")],  # the message is cut first; narrower, STEP goes first
    )
    def test_errors_cut_the_message_before_the_pipeline_goes(
        self, tmp_path: Path, width: int, dropped: str | None
    ) -> None:
        db = tmp_path / "errors.sqlite"
        store = Store.open(db)
        try:
            t = NOW - 10 * 24 * HOUR  # "10d ago"
            store.apply(
                [
                    RunStart(id="s", ts=t, run="r", pipeline="nightly-export", club_slug="c"),
                    ErrorEvent(id="e", ts=t + 1, run="r", step_name="sportlink-download",
                               member="someone@example.org",
                               message="the remote server refused the address " * 4),
                ]
            )  # fmt: skip
            store.checkpoint()
        finally:
            store.close()
        out, buf = _console(width)
        print_errors(out, [_errors(db)], fit=True, with_run=True)
        header, line = buf.getvalue().splitlines()
        assert "PIPELINE" in header.split() and "nightly-export" in line.split()
        assert header.split()[-1] == "MESSAGE"
        assert cell_len(line) <= width and line.endswith("…")
        assert line[header.index("MESSAGE") :].startswith("the remote")
        assert width - header.index("MESSAGE") >= 16  # its column: cut, never to nothing
        for column in ("STEP", "MEMBER"):
            assert (column in header.split()) == (column != dropped)

    def test_control_characters_are_shown_not_obeyed(self, ledger: Path) -> None:
        out, buf = _console(200)
        print_runs(out, [_runs(ledger)], fit=True)
        text = buf.getvalue()
        assert "\x1b[2J" not in text
        assert "\x07" not in text
        assert "evil\\x1b[2J\\x07name" in text


class TestPlain:
    def test_a_pipe_gets_every_column_one_row_per_line(self, ledger: Path) -> None:
        out = ok("runs", "--db", str(ledger), "-n", "0")
        header, *lines = out.splitlines()
        assert "SKIPPED" in header
        assert "PARENT" in header
        assert len(lines) == len(_runs(ledger))
        assert any(LONG[:256] in line for line in lines)  # nothing cut
        assert any(WIDE in line for line in lines)

    def test_wide_on_a_terminal_shows_everything(self, ledger: Path) -> None:
        out, buf = _console(80)
        print_runs(out, [_runs(ledger)], fit=False)
        assert LONG[:256] in buf.getvalue()
        assert "PARENT" in buf.getvalue()

    def test_the_columns_do_not_move_between_pages(self, tmp_path: Path) -> None:
        db = tmp_path / "short.sqlite"
        build(db)
        runs = _runs(db)
        out, buf = _console(80)
        print_runs(out, [runs[:2], runs[2:5], runs[5:]], fit=True)
        header, *lines = buf.getvalue().splitlines()
        outcome_at = header.index("OUTCOME")
        for run, line in zip(runs, lines, strict=True):
            assert line[outcome_at:].split()[0] == run["outcome"]


def _pty_run(args: list[str], columns: int) -> str:
    """The command's output on a real terminal of ``columns`` columns."""
    master, slave = pty.openpty()
    fcntl_size = struct.pack("HHHH", 24, columns, 0, 0)
    import fcntl

    fcntl.ioctl(slave, termios.TIOCSWINSZ, fcntl_size)
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env.update({"TERM": "xterm", "NO_COLOR": "1"})
    proc = subprocess.Popen(
        [sys.executable, "-m", "runtally.cli", *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
    )
    os.close(slave)
    seen = b""
    try:
        while True:
            ready = select.select([master], [], [], 20)[0]
            if not ready:
                break
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the terminal's other side closed
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(master)
        proc.wait(timeout=20)
    return seen.decode().replace("\r\n", "\n")


class TestRealTerminal:
    def test_runs_on_an_80_column_terminal(self, ledger: Path) -> None:
        out = _SGR.sub("", _pty_run(["runs", "--db", str(ledger)], 80))
        header, *lines = [line for line in out.splitlines() if line.strip()]
        assert header.split()[:2] == ["ID", "PIPELINE"]
        assert len(lines) == len(_runs(ledger))
        for line in lines:
            assert cell_len(line) <= 80
            assert line.split()[0].isdigit()
        wide = _pty_run(["runs", "--db", str(ledger), "--wide"], 80)
        assert "SKIPPED" in wide
        assert "PARENT" in wide


class TestStreaming:
    def test_every_page_is_printed_once_in_order(self, tmp_path: Path) -> None:
        db = tmp_path / "many.sqlite"
        store = Store.open(db)
        try:
            store.apply([RunStart(id="r0", ts=NOW, run="r", pipeline="p")])
            store.apply(
                [
                    ErrorEvent(id=f"e{i}", ts=NOW + i, run="r", step_name="s", message=f"m{i}")
                    for i in range(450)
                ]
            )
            store.checkpoint()
        finally:
            store.close()
        out = ok("errors", "--db", str(db), "-n", "0")
        lines = out.splitlines()[1:]
        assert [line.split()[-1] for line in lines] == [f"m{i}" for i in reversed(range(450))]
        as_json = json.loads(ok("errors", "--db", str(db), "-n", "0", "--json"))
        assert len(as_json["errors"]) == 450
        limited = ok("errors", "--db", str(db), "-n", "250").splitlines()
        assert len(limited) == 1 + 250 + 1  # header, rows, the "--limit" note
        assert limited[-1] == "(the newest 250 errors; --limit to see more)"


class TestLongNames:
    def test_an_over_long_filter_is_cut_as_the_name_was(self, ledger: Path) -> None:
        found, said = _json_stdout("runs", "--db", str(ledger), "--pipeline", LONG, "--json")
        assert [r["pipeline"] for r in found["runs"]] == [LONG[:256]]
        assert "cut to 256" in said
        errs, _ = _json_stdout("errors", "--db", str(ledger), "-p", LONG, "--json")
        assert len(errs["errors"]) == 1
        latest, _ = _json_stdout("show", "latest", "-p", LONG, "--db", str(ledger), "--json")
        assert latest["run"]["pipeline"] == LONG[:256]


class TestClockSteppedBack:
    @pytest.fixture
    def skewed(self, tmp_path: Path) -> Path:
        """Run "ahead" recorded with the client clock 1 h fast, then "now" after the fix.

        The clock is read here, not at import: a full suite reaches these tests
        minutes after collection, and the hour ahead would have shrunk by then.
        """
        now = int(time.time() * 1000)
        db = tmp_path / "skew.sqlite"
        store = Store.open(db)
        try:
            store.apply(
                [
                    RunStart(id="a1", ts=now + HOUR, run="ahead", pipeline="people"),
                    RunEnd(id="a2", ts=now + HOUR + 10, run="ahead", outcome="success"),
                    RunStart(id="n1", ts=now + 1000, run="now", pipeline="people"),
                    RunEnd(id="n2", ts=now + 1010, run="now", outcome="failure"),
                ]
            )
            store.checkpoint()
        finally:
            store.close()
        return db

    def test_latest_is_the_last_received(self, skewed: Path) -> None:
        latest = json.loads(ok("show", "latest", "--db", str(skewed), "--json"))
        assert latest["run"]["uid"] == "now"
        runs = json.loads(ok("runs", "--db", str(skewed), "--json"))["runs"]
        assert [r["uid"] for r in runs] == ["now", "ahead"]

    def test_status_last_run_and_the_future_flagged(self, skewed: Path, tmp_path: Path) -> None:
        args = ["--db", str(skewed), "--socket", str(tmp_path / "none.sock")]
        result = cli("status", *args, "--spool", str(tmp_path / "spool"), "--json")
        report = json.loads(result.output)
        (people,) = report["pipelines"]
        assert people["run_uid"] == "now"
        assert people["age_s"] > -5  # not -3596
        assert people["clock_ahead_s"] is None
        shown = ok("show", "ahead", "--db", str(skewed))
        line = next(line for line in shown.splitlines() if "started" in line)
        assert "client clock ahead by 59m" in line or "client clock ahead by 1h 00m" in line
        assert "client clock ahead" not in ok("show", "now", "--db", str(skewed))

    def test_status_flags_a_last_run_in_the_future(self, tmp_path: Path) -> None:
        db = tmp_path / "ahead.sqlite"
        store = Store.open(db)
        try:
            now = int(time.time() * 1000)  # not NOW: the suite may be minutes past import
            store.apply([RunStart(id="a1", ts=now + HOUR, run="ahead", pipeline="people")])
            store.checkpoint()
        finally:
            store.close()
        args = ["--db", str(db), "--socket", str(tmp_path / "none.sock")]
        report = json.loads(cli("status", *args, "--spool", str(tmp_path), "--json").output)
        (people,) = report["pipelines"]
        assert 3500 < people["clock_ahead_s"] <= 3600
        assert any("client clock ahead by 59m" in w for w in report["warnings"])


class TestWords:
    def test_plurals(self, ledger: Path) -> None:
        assert "(the newest 1 run; --limit to see more)" in ok(
            "runs", "--db", str(ledger), "-n", "1"
        )
        assert "(the newest 2 runs; --limit to see more)" in ok(
            "runs", "--db", str(ledger), "-n", "2"
        )
        assert "(the newest 1 error; --limit to see more)" in ok(
            "errors", "--db", str(ledger), "-n", "1"
        )


class TestConfigErrors:
    def test_a_bad_runtally_db_is_named_and_status_exits_1(self, tmp_path: Path) -> None:
        runner = CliRunner()
        env = {"RUNTALLY_CONFIG": None, "RUNTALLY_DB": str(tmp_path), "RUNTALLY_SOCKET": None}
        result = runner.invoke(main, ["status", "--spool", str(tmp_path / "s")], env=env)
        assert result.exit_code == 1  # unhealthy, not a usage error
        assert "Invalid value" not in result.output
        assert "(db from environment variable RUNTALLY_DB)" in result.output
        read = runner.invoke(main, ["runs"], env=env)
        line = one_line_error(read)
        assert "is a directory" in line
        assert "(db from environment variable RUNTALLY_DB)" in line

    def test_a_bad_value_in_the_config_file_names_the_file(self, tmp_path: Path) -> None:
        config = tmp_path / "runtally.toml"
        config.write_text('[runtally]\ndefault_club = ""\n')
        env = {"RUNTALLY_CONFIG": str(config), "RUNTALLY_DB": None}
        line = one_line_error(CliRunner().invoke(main, ["runs", "--db", str(tmp_path)], env=env))
        assert "default_club" in line
        assert str(config) in line
