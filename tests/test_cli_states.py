"""``runtally pipelines`` and ``runtally status`` as people read them, at 80 columns.

Tables and reports are rendered by the functions the commands use, on a rich
Console forced to a width, and checked line by line (as test_cli_tables.py
does); the databases are built by the real store, the states by the real
monitor.  Also: one next-run figure for both commands, ages computed when
shown (never frozen in the stored sentence), help text without reST markup.
"""

from __future__ import annotations

import io
import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import click
import pytest
import trio
from click.testing import CliRunner
from daemon_helpers import DaemonProcess, RawClient, run_events
from monitor_helpers import make_rig, ms
from rich.cells import cell_len
from rich.console import Console

from runtally._pipeline_config import PipelineConfig
from runtally.cli import _query as q
from runtally.cli import main
from runtally.cli._health import collect
from runtally.cli._pipelines import print_pipelines, read_pipeline_states
from runtally.cli._render import fmt_local
from runtally.cli._state_view import state_problem
from runtally.cli._status import print_report
from runtally.daemon._schedule import next_slot
from runtally.daemon._store import Store
from runtally.daemon._timefmt import iso_from_ms
from runtally.daemon._writer import Writer
from runtally.protocol import RunEnd, RunStart

NOW = int(time.time() * 1000)
MIN, HOUR, DAY = 60_000, 3_600_000, 86_400_000
LONG = "a-pipeline-with-a-name-far-too-long-for-any-terminal-" + "x" * 60
#: A daily slot that cannot pass during a test run (03:00 UTC).
DAILY = PipelineConfig(schedule="0 3 * * *", timezone="UTC", grace="5m", club="rondo")
DECLARED = {
    "nightly-export": DAILY,
    "people": PipelineConfig(schedule="0 */4 * * *", timezone="UTC", club="rondo"),
    "discipline": PipelineConfig(schedule="0 23 * * 0", timezone="UTC", club="rondo"),
    "functions": PipelineConfig(schedule="15 6 * * 1", timezone="UTC", club="rondo"),
}
#: The late pipeline's slot, and its next run as the monitor stored it, 10 s ago.
SLOT = NOW - 90_000
STALE_NEXT = NOW - 10_000


def _console(width: int) -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=width, force_terminal=True, color_system=None), buf


def _state(conn, pipeline, state, detail, *, last=None, expected=None, nxt=None) -> None:
    stamp = iso_from_ms(NOW - HOUR)
    conn.execute(
        "INSERT INTO pipeline_states (pipeline, state, since, detail, club_slug, last_run_id,"
        " expected_at, next_expected_at, first_seen_at, updated_at)"
        " VALUES (?, ?, ?, ?, 'rondo', ?, ?, ?, ?, ?)",
        (pipeline, state, stamp, detail, last, expected, nxt, stamp, stamp),
    )


def _build(db: Path) -> None:
    """Runs of nightly-export (ok, then late), people (failed) and a long name; states."""
    store = Store.open(db)
    try:
        events = []
        for n, (name, outcome, ago) in enumerate(
            [("nightly-export", "success", 26 * HOUR), ("people", "failure", 2 * HOUR),
             (LONG, "success", 3 * HOUR)]
        ):  # fmt: skip
            run, t = f"r{n}", NOW - ago
            events += [
                RunStart(id=f"{run}s", ts=t, run=run, pipeline=name, club_slug="rondo"),
                RunEnd(id=f"{run}e", ts=t + 2000, run=run, outcome=outcome),  # type: ignore[arg-type]
            ]
        store.apply(events)
        ids = dict(store.query("SELECT pipeline, id FROM runs"))

        def states(conn) -> None:
            _state(conn, "nightly-export", "late", "no run since its slot (grace 5 min)",
                   last=ids["nightly-export"], expected=iso_from_ms(SLOT),
                   nxt=iso_from_ms(STALE_NEXT))  # fmt: skip
            _state(conn, "people", "failing", f"run #{ids['people']} failed",
                   last=ids["people"], nxt=iso_from_ms(NOW + HOUR))  # fmt: skip
            _state(conn, "functions", "ok", "no run yet", nxt=iso_from_ms(NOW + DAY))
            _state(conn, LONG, "ok", "run #3 succeeded", last=ids[LONG])

        store.apply((), writes=[states])
        store.checkpoint()
    finally:
        store.close()


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("states") / "dashboard.sqlite"
    _build(path)
    return path


@pytest.fixture(scope="module")
def config(db: Path) -> Path:
    path = db.parent / "runtally.toml"
    tables = "".join(
        f'[pipelines.{name}]\nschedule = "{c.schedule}"\ntimezone = "UTC"\nclub = "rondo"\n'
        for name, c in DECLARED.items()
    )
    grace = '[pipelines.nightly-export]\ngrace = "5m"\n'
    path.write_text(tables.replace("[pipelines.nightly-export]\n", grace))
    return path


def _cli(*args: str) -> str:
    env = {"RUNTALLY_CONFIG": None, "RUNTALLY_DB": None, "RUNTALLY_SOCKET": None}
    result = CliRunner().invoke(main, list(args), env=env)
    assert result.exit_code in (0, 1), result.output
    return result.output


def _status_args(db: Path, config: Path) -> list[str]:
    return ["--db", str(db), "--socket", str(db.parent / "none.sock"),
            "--spool", str(db.parent / "spool"), "--config", str(config)]  # fmt: skip


def _plain_lines(text: str) -> list[str]:
    lines = text.splitlines()
    for line in lines:
        assert line == line.rstrip(), f"trailing spaces: {line!r}"
        assert "─" not in line  # no drawn rules
    return lines


class TestPipelinesTable:
    def test_at_80_one_pipeline_per_line_names_whole_or_cut(self, db: Path) -> None:
        found = q.read(db, lambda c: read_pipeline_states(c, DECLARED))
        out, buf = _console(80)
        assert print_pipelines(out, found, DECLARED, fit=True) == len(found)
        header, *lines = _plain_lines(buf.getvalue())
        assert header.split()[:3] == ["PIPELINE", "CLUB", "STATE"]
        assert "NEXT RUN" in header
        assert len(lines) == len(found) == 5  # discipline never judged, still listed
        for p, line in zip(found, lines, strict=True):
            assert cell_len(line) <= 80
            shown = line.split("  ")[0]
            assert shown == p.pipeline or (
                shown.endswith("…") and p.pipeline.startswith(shown[:-1])
            )
            assert (p.state or "-") in line.split()
        assert time.strftime("%Y-") not in buf.getvalue()  # narrow: ages, not timestamps
        row = next(line for line in lines if line.startswith("nightly-export "))
        assert " late " in row and " in " in row  # its next run ahead, as an age

    def test_wide_and_a_pipe_show_every_column_in_full(self, db: Path, config: Path) -> None:
        found = q.read(db, lambda c: read_pipeline_states(c, DECLARED))
        out, buf = _console(80)
        print_pipelines(out, found, DECLARED, fit=False)
        assert LONG in buf.getvalue()
        piped = _plain_lines(_cli("pipelines", "--db", str(db), "--config", str(config)))
        assert piped[0].split() == [
            "PIPELINE", "CLUB", "STATE", "SINCE", "LAST", "RUN", "NEXT", "RUN", "SCHEDULE"
        ]  # fmt: skip
        assert len(piped) == 1 + len(found)
        assert any(line.startswith(LONG + " ") for line in piped)
        assert all("ago)" in line or "in " in line for line in piped[1:] if "late" in line)


class TestOneNextRun:
    def test_pipelines_and_status_show_the_same_next_run_never_a_past_one(
        self, db: Path, config: Path
    ) -> None:
        # The stored next run passed 10 s ago (the monitor has not ticked since):
        # both commands show the schedule's next slot instead.
        expected = fmt_local(iso_from_ms(next_slot(DAILY, int(time.time() * 1000))))
        stale = fmt_local(iso_from_ms(STALE_NEXT))
        listed = _cli("pipelines", "--db", str(db), "--config", str(config))
        status = _cli("status", *_status_args(db, config))
        for text in (listed, status):
            (row,) = [line for line in text.splitlines() if line.startswith("nightly-export ")]
            assert expected in row
            assert stale not in text


class TestStatusAt80:
    def _report(self, db: Path, width: int = 80) -> list[str]:
        report = collect(db.parent / "none.sock", db, db.parent / "spool")
        out, buf = _console(width)
        print_report(out, report, DECLARED, fit=True)
        return _plain_lines(buf.getvalue())

    def test_lines_fit_and_wrapped_lines_are_indented(self, db: Path) -> None:
        lines = self._report(db)
        title = lines.index("Pipelines")
        header = lines[title + 1]
        for line in lines[:title] + lines[title + 2 + 6 :]:
            assert cell_len(line) <= 80
            label = line.split(" ", 1)[0]
            # A line starts with its label, or continues the one above under it.
            assert label in ("daemon", "socket", "database", "spool", "club", "problem:", "") or (
                line.startswith(" " * 9)
            ), line
            if line.startswith(" "):
                assert line.startswith(" " * 9) and not line.startswith(" " * 12), line
        assert "STATE" in header and "NEXT RUN" in header

    def test_declared_pipelines_that_never_ran_are_rows_and_bad_states_show_once(
        self, db: Path
    ) -> None:
        lines = self._report(db)
        title = lines.index("Pipelines")
        rows = {line.split()[0]: line for line in lines[title + 2 : title + 2 + 6]}
        assert set(rows) >= {"discipline", "functions", "nightly-export", "people"}
        assert rows["functions"].split()[1] == "ok"  # judged, never ran
        assert rows["discipline"].split()[1] == "-"  # declared, not judged yet
        assert rows["nightly-export"].split()[1] == "late"
        rest = "\n".join(lines[title + 2 + 6 :])
        assert rest.count("nightly-export") == 1  # the problem line, no second "state" line
        assert rest.count("people is failing") == 1
        assert "state " not in rest

    def test_the_slots_age_is_computed_when_shown(self, db: Path) -> None:
        text = " ".join(line.strip() for line in self._report(db, width=200))
        assert "pipeline nightly-export is late: no run since its slot (grace 5 min);" in text
        # The age as of now (the module was built >= 90 s after the slot was stored).
        age = re.search(rf"slot {fmt_local(iso_from_ms(SLOT))}, (\d+)m ago", text)
        assert age is not None, text
        assert int(age.group(1)) >= (time.time() * 1000 - SLOT) // 60_000 - 1


def test_the_last_commit_and_write_are_one_piece_at_80(daemon_proc: DaemonProcess) -> None:
    events = run_events("r1")
    with RawClient(daemon_proc.socket) as client:
        client.send(*events)
        assert len(client.recv(len(events))) == len(events)
    report = collect(daemon_proc.socket, daemon_proc.db, daemon_proc.spool)
    assert report.daemon.up
    out, buf = _console(80)
    print_report(out, report, {}, fit=True)
    lines = _plain_lines(buf.getvalue())
    for what in ("last commit", "last write"):
        (last,) = [line for line in lines if what in line]
        assert re.fullmatch(rf" {{11}}{what} \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d \(.+\)", last), last
    assert all(cell_len(line) <= 80 for line in lines)


@pytest.fixture
async def parts(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[tuple]:
    store = Store.open(tmp_path / "dashboard.sqlite")
    writer = Writer(store)
    await nursery.start(writer.run)
    try:
        yield tmp_path, store, writer
    finally:
        writer.close()


class TestStoredSentences:
    async def test_the_stored_detail_has_no_age_and_the_shown_one_is_current(self, parts):
        cfg = PipelineConfig(schedule="0 3 * * *", timezone="UTC", grace="1h")
        r = make_rig(*parts, "2026-05-01T00:00:00", pipelines={"people": cfg})
        assert await r.state_at("2026-05-01T00:00:00", "people") == "ok"  # first seen
        assert await r.state_at("2026-05-01T04:00:00", "people") == "late"
        assert await r.state_at("2026-05-01T05:30:00", "people") == "late"
        (row,) = r.store.query("SELECT pipeline, state, detail, expected_at FROM pipeline_states")
        row = dict(zip(("pipeline", "state", "detail", "expected_at"), row, strict=True))
        assert row["detail"] == "no run since its slot (grace 60 min)"
        assert row["expected_at"] == iso_from_ms(ms("2026-05-01T03:00:00"))
        later = ms("2026-05-01T05:30:00") / 1000
        assert state_problem(row, later).endswith(", 2h ago")

    async def test_running_and_missed_say_no_age_either(self, parts):
        cfg = PipelineConfig(schedule="0 3 * * *", timezone="UTC", grace="1h")
        r = make_rig(*parts, "2026-05-01T00:00:00", pipelines={"people": cfg})
        assert await r.state_at("2026-05-01T00:00:00", "people") == "ok"  # first seen
        assert await r.state_at("2026-05-02T04:00:00", "people") == "missed"
        await r.start("r1", "people", "2026-05-02T04:00:00")
        assert await r.state_at("2026-05-02T04:10:00", "people") == "running"
        assert r.monitor.verdicts["people"].detail == "run #1 running"
        assert not any(ch.isdigit() for ch in r.alerts()[0].detail)  # the missed alert


def _commands(cmd: click.Command, path: list[str]) -> Iterator[list[str]]:
    yield path
    if isinstance(cmd, click.Group):
        for name, sub in cmd.commands.items():
            yield from _commands(sub, [*path, name])


@pytest.mark.parametrize("path", list(_commands(main, [])), ids=" ".join)
def test_help_has_no_rest_markup(path: list[str]) -> None:
    result = CliRunner().invoke(main, [*path, "--help"], terminal_width=80)
    assert result.exit_code == 0, result.output
    assert "``" not in result.output
    assert ":func:" not in result.output and ":class:" not in result.output
