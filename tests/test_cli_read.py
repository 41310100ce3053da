"""``runtally runs|show|errors`` through CliRunner on databases built by the real store.

Every database here is made by ``Store.apply`` from protocol events, exactly
as the daemon would write it; the commands open it read-only.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from runtally.cli import main
from runtally.cli._render import fmt_ago, fmt_duration, parse_since
from runtally.daemon._store import Store
from runtally.daemon._timefmt import iso_from_ms
from runtally.protocol import ErrorEvent, RunEnd, RunStart, StepEnd, StepStart

NOW = int(time.time() * 1000)
MIN, HOUR, DAY = 60_000, 3_600_000, 86_400_000

# Start times of the runs, relative to NOW.
T_ALPHA = NOW - 3 * DAY  # people, success, 1m 05s
T_BRAVO = NOW - 2 * HOUR  # people, failure, 2 steps, 3 errors
T_CHILD = NOW - 2 * HOUR + 5000  # teams/other club, running, child of bravo
T_OLD = NOW - 10 * DAY  # nikki, success, no steps
T_ORPHAN = NOW - 30 * MIN  # people, parent uid that was never recorded
MARKUP = "[bold]not markup[/bold] [/] [red"


def ledger_events() -> list:
    """In the order the daemon receives them: runs by their start, so ids follow it too."""
    return [
        RunStart(id="d1", ts=T_OLD, run="old", pipeline="nikki"),
        RunEnd(id="d2", ts=T_OLD + 500, run="old", outcome="success"),
        RunStart(
            id="a1",
            ts=T_ALPHA,
            run="alpha",
            pipeline="people",
            club_slug="rondo",
            meta={"host": "box", "pid": 42, "argv": ["sync", "--full"]},
        ),
        StepStart(id="a2", ts=T_ALPHA + 10, run="alpha", step="alpha-s1", name="download"),
        StepEnd(
            id="a3",
            ts=T_ALPHA + 20,
            run="alpha",
            step="alpha-s1",
            outcome="success",
            created=5,
            updated=4,
            skipped=3,
            failed=0,
            detail={"rows": 12},
            duration_ms=61_000,
        ),
        RunEnd(
            id="a4",
            ts=T_ALPHA + 65_000,
            run="alpha",
            outcome="success",
            summary={"note": "fine"},
            duration_ms=65_000,
        ),
        RunStart(id="b1", ts=T_BRAVO, run="bravo", pipeline="people", club_slug="rondo"),
        StepStart(id="b2", ts=T_BRAVO + 100, run="bravo", step="bravo-s1", name="download"),
        StepEnd(
            id="b3",
            ts=T_BRAVO + 900,
            run="bravo",
            step="bravo-s1",
            outcome="success",
            created=10,
            updated=1,
        ),
        StepStart(id="b4", ts=T_BRAVO + 1000, run="bravo", step="bravo-s2", name="laposta-submit"),
        ErrorEvent(
            id="b5",
            ts=T_BRAVO + 1100,
            run="bravo",
            step="bravo-s2",
            step_name="laposta-submit",
            member="KNVB123",
            message="email rejected",
            stack="Traceback\n  line 1\nValueError",
        ),
        ErrorEvent(
            id="b6",
            ts=T_BRAVO + 1200,
            run="bravo",
            step="bravo-s2",
            step_name="laposta-submit",
            member="KNVB456",
            message=MARKUP,
        ),
        ErrorEvent(
            id="b7",
            ts=T_BRAVO + 1300,
            run="bravo",
            step_name="cleanup",
            message="no step uid",
        ),
        StepEnd(
            id="b8",
            ts=T_BRAVO + 3000,
            run="bravo",
            step="bravo-s2",
            outcome="failure",
            created=0,
            updated=2,
            skipped=1,
            failed=2,
        ),
        RunEnd(id="b9", ts=T_BRAVO + 3000, run="bravo", outcome="failure"),
        RunStart(
            id="c1", ts=T_CHILD, run="child", pipeline="teams", club_slug="other", parent="bravo"
        ),
        StepStart(id="c2", ts=T_CHILD + 1, run="child", step="child-s1", name="teams-sync"),
        RunStart(id="o1", ts=T_ORPHAN, run="orphan", pipeline="people", parent="ghost"),
        RunEnd(id="o2", ts=T_ORPHAN + 2500, run="orphan", outcome="success"),
    ]


def build(path: Path) -> dict[str, int]:
    """Apply the events through the real store; the run ids by uid."""
    store = Store.open(path)
    try:
        assert store.apply(ledger_events()) == [None] * len(ledger_events())
        ids = dict(store.query("SELECT uid, id FROM runs"))
        store.checkpoint()
    finally:
        store.close()
    return ids


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    path = tmp_path_factory.mktemp("ledger") / "dashboard.sqlite"
    return path, build(path)


@pytest.fixture
def db(ledger: tuple[Path, dict[str, int]]) -> Path:
    return ledger[0]


@pytest.fixture
def ids(ledger: tuple[Path, dict[str, int]]) -> dict[str, int]:
    return ledger[1]


def cli(*args: str) -> Result:
    env = {"RUNTALLY_CONFIG": None, "RUNTALLY_DB": None, "RUNTALLY_SOCKET": None}
    return CliRunner().invoke(main, list(args), env=env)


def ok(*args: str) -> str:
    result = cli(*args)
    assert result.exit_code == 0, result.output
    return result.output


def as_json(*args: str) -> dict:
    return json.loads(ok(*args, "--json"))


def one_line_error(result: Result, exit_code: int = 1) -> str:
    assert result.exit_code == exit_code, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: ")
    return lines[0]


def local(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S")


RUN_KEYS = [
    "id", "uid", "pipeline", "club_slug", "started_at", "finished_at", "duration_ms", "outcome",
    "total_created", "total_updated", "total_skipped", "total_failed", "error_count",
    "step_count", "parent_run_id", "parent_uid",
]  # fmt: skip
ERROR_KEYS = [
    "id", "uid", "run_id", "run_uid", "pipeline", "club_slug", "run_step_id", "step_name",
    "member_identifier", "error_message", "error_stack", "created_at",
]  # fmt: skip


# -- runs ---------------------------------------------------------------------------------


class TestRuns:
    def test_json_lists_every_run_newest_first_field_by_field(
        self, db: Path, ids: dict[str, int]
    ) -> None:
        out = as_json("runs", "--db", str(db))
        assert list(out) == ["runs"]
        assert [r["uid"] for r in out["runs"]] == ["orphan", "child", "bravo", "alpha", "old"]
        for run in out["runs"]:
            assert list(run) == RUN_KEYS
        alpha = next(r for r in out["runs"] if r["uid"] == "alpha")
        assert alpha["id"] == ids["alpha"]
        assert alpha["pipeline"] == "people"
        assert alpha["club_slug"] == "rondo"
        assert alpha["started_at"] == iso_from_ms(T_ALPHA)
        assert alpha["finished_at"] == iso_from_ms(T_ALPHA + 65_000)
        assert alpha["duration_ms"] == 65_000
        assert alpha["outcome"] == "success"
        assert (
            alpha["total_created"],
            alpha["total_updated"],
            alpha["total_skipped"],
            alpha["total_failed"],
        ) == (5, 4, 3, 0)
        assert alpha["error_count"] == 0
        assert alpha["step_count"] == 1
        assert alpha["parent_run_id"] is None
        assert alpha["parent_uid"] is None
        bravo = next(r for r in out["runs"] if r["uid"] == "bravo")
        assert (bravo["outcome"], bravo["error_count"], bravo["step_count"]) == ("failure", 3, 2)
        assert (bravo["total_created"], bravo["total_updated"], bravo["total_failed"]) == (10, 3, 2)
        assert bravo["duration_ms"] == 3000
        child = next(r for r in out["runs"] if r["uid"] == "child")
        assert child["outcome"] == "running"
        assert child["finished_at"] is None
        assert child["duration_ms"] is None
        assert child["club_slug"] == "other"
        assert child["parent_run_id"] == ids["bravo"]
        assert child["parent_uid"] == "bravo"
        orphan = next(r for r in out["runs"] if r["uid"] == "orphan")
        assert orphan["parent_run_id"] is None
        assert orphan["parent_uid"] == "ghost"

    @pytest.mark.parametrize(
        ("args", "expected"),
        [
            (["--pipeline", "people"], ["orphan", "bravo", "alpha"]),
            (["-p", "people", "--outcome", "failure"], ["bravo"]),
            (["--outcome", "running"], ["child"]),
            (["--club", "other"], ["child"]),
            (["--club", "rondo", "--pipeline", "nikki"], ["old"]),
            (["--since", "24h"], ["orphan", "child", "bravo"]),
            (["--since", "90m"], ["orphan"]),
            (["--since", "7d"], ["orphan", "child", "bravo", "alpha"]),
            (["--since", "2w"], ["orphan", "child", "bravo", "alpha", "old"]),
            (["--limit", "2"], ["orphan", "child"]),
            (["-n", "0"], ["orphan", "child", "bravo", "alpha", "old"]),
            (["--pipeline", "nobody"], []),
        ],
    )
    def test_filters(self, db: Path, args: list[str], expected: list[str]) -> None:
        out = as_json("runs", "--db", str(db), *args)
        assert [r["uid"] for r in out["runs"]] == expected

    @pytest.mark.parametrize("zone", ["local", "utc"])
    def test_since_an_iso_moment(self, db: Path, zone: str) -> None:
        # Between bravo's start and the child's (5 s later).
        moment = (T_BRAVO + 2000) / 1000
        if zone == "utc":
            since = iso_from_ms(T_BRAVO + 2000)  # ...Z
        else:
            since = datetime.fromtimestamp(moment).strftime("%Y-%m-%dT%H:%M:%S.%f")
        out = as_json("runs", "--db", str(db), "--since", since)
        assert [r["uid"] for r in out["runs"]] == ["orphan", "child"]

    def test_since_a_local_date_means_local_midnight(self, db: Path) -> None:
        old_day = datetime.fromtimestamp(T_OLD / 1000).strftime("%Y-%m-%d")
        out = as_json("runs", "--db", str(db), "--since", old_day)
        assert [r["uid"] for r in out["runs"]][-1] == "old"
        next_day = datetime.fromtimestamp((T_OLD + DAY) / 1000).strftime("%Y-%m-%d")
        out = as_json("runs", "--db", str(db), "--since", next_day)
        assert "old" not in [r["uid"] for r in out["runs"]]

    def test_human_table(self, db: Path, ids: dict[str, int]) -> None:
        out = ok("runs", "--db", str(db))
        assert "\x1b[" not in out  # not a terminal: no colour codes
        lines = out.splitlines()
        header = next(line for line in lines if "PIPELINE" in line)
        for column in ("ID", "CLUB", "STARTED", "DURATION", "OUTCOME", "ERRORS", "PARENT"):
            assert column in header
        alpha = next(line for line in lines if line.split()[0] == str(ids["alpha"]))
        assert local(T_ALPHA) in alpha
        assert "(3d ago)" in alpha
        assert "1m 05s" in alpha
        assert "success" in alpha
        assert alpha.split()[-5:] == ["5", "4", "3", "0", "0"]  # counts, then errors
        bravo = next(line for line in lines if line.split()[0] == str(ids["bravo"]))
        assert "(2h ago)" in bravo
        assert "failure" in bravo
        assert "3.0s" in bravo
        assert bravo.split()[-5:] == ["10", "3", "1", "2", "3"]
        child = next(line for line in lines if line.split()[0] == str(ids["child"]))
        assert "running" in child
        assert child.rstrip().endswith(f"#{ids['bravo']}")
        orphan = next(line for line in lines if line.split()[0] == str(ids["orphan"]))
        assert orphan.rstrip().endswith("ghost")

    def test_limit_note_and_nothing_found(self, db: Path) -> None:
        assert "--limit to see more" in ok("runs", "--db", str(db), "-n", "2")
        assert "--limit" not in ok("runs", "--db", str(db), "-n", "20")
        assert ok("runs", "--db", str(db), "--pipeline", "nobody").strip() == "no runs match"

    @pytest.mark.parametrize("since", ["yesterday", "24x", "-3h", "2026-13-45", ""])
    def test_a_bad_since_is_one_line(self, db: Path, since: str) -> None:
        line = one_line_error(cli("runs", "--db", str(db), "--since", since), exit_code=2)
        assert "--since" in line
        assert "24h" in line  # says what would have worked

    def test_a_bad_outcome_is_refused(self, db: Path) -> None:
        result = cli("runs", "--db", str(db), "--outcome", "meh")
        assert result.exit_code == 2
        assert "meh" in result.output


# -- show ----------------------------------------------------------------------------------


class TestShow:
    @pytest.mark.parametrize(
        ("ref", "extra", "uid"),
        [
            ("bravo", [], "bravo"),
            ("alpha", [], "alpha"),
            ("latest", ["--pipeline", "people"], "orphan"),
            ("latest", ["--pipeline", "teams"], "child"),
            ("latest", ["-p", "people", "--club", "rondo"], "orphan"),
            ("LATEST", [], "orphan"),
        ],
    )
    def test_finds_a_run_by_uid_or_latest(
        self, db: Path, ref: str, extra: list[str], uid: str
    ) -> None:
        assert as_json("show", ref, "--db", str(db), *extra)["run"]["uid"] == uid

    def test_finds_a_run_by_id(self, db: Path, ids: dict[str, int]) -> None:
        for uid, run_id in ids.items():
            assert as_json("show", str(run_id), "--db", str(db))["run"]["uid"] == uid

    def test_json_run_steps_errors_parent_children(self, db: Path, ids: dict[str, int]) -> None:
        out = as_json("show", "bravo", "--db", str(db))
        assert list(out) == ["run", "steps", "errors", "parent", "children"]
        run = out["run"]
        assert list(run) == [*RUN_KEYS, "summary", "meta"]
        assert run["id"] == ids["bravo"]
        assert run["started_at"] == iso_from_ms(T_BRAVO)
        assert run["finished_at"] == iso_from_ms(T_BRAVO + 3000)
        assert run["outcome"] == "failure"
        assert run["summary"] is None
        assert run["meta"] is None

        steps = out["steps"]
        assert [s["step_name"] for s in steps] == ["download", "laposta-submit"]
        first, second = steps
        assert list(first) == [
            "id", "uid", "step_name", "started_at", "finished_at", "duration_ms", "outcome",
            "created_count", "updated_count", "skipped_count", "failed_count", "error_count",
            "detail",
        ]  # fmt: skip
        assert first["uid"] == "bravo-s1"
        assert first["started_at"] == iso_from_ms(T_BRAVO + 100)
        assert first["finished_at"] == iso_from_ms(T_BRAVO + 900)
        assert first["duration_ms"] == 800
        assert first["outcome"] == "success"
        assert (first["created_count"], first["updated_count"]) == (10, 1)
        assert first["error_count"] == 0
        assert first["detail"] is None
        assert second["outcome"] == "failure"
        assert (second["updated_count"], second["skipped_count"], second["failed_count"]) == (
            2,
            1,
            2,
        )
        assert second["error_count"] == 2

        errors = out["errors"]
        assert [e["uid"] for e in errors] == ["b5", "b6", "b7"]  # in the order they happened
        for e in errors:
            assert list(e) == ERROR_KEYS
        b5 = errors[0]
        assert b5["run_id"] == ids["bravo"]
        assert b5["run_uid"] == "bravo"
        assert b5["pipeline"] == "people"
        assert b5["club_slug"] == "rondo"
        assert b5["run_step_id"] == second["id"]
        assert b5["step_name"] == "laposta-submit"
        assert b5["member_identifier"] == "KNVB123"
        assert b5["error_message"] == "email rejected"
        assert b5["error_stack"] == "Traceback\n  line 1\nValueError"
        assert b5["created_at"] == iso_from_ms(T_BRAVO + 1100)
        assert errors[2]["run_step_id"] is None
        assert errors[2]["member_identifier"] is None

        assert out["parent"] is None
        assert [c["uid"] for c in out["children"]] == ["child"]
        assert list(out["children"][0]) == RUN_KEYS
        assert out["children"][0]["outcome"] == "running"

    def test_json_child_points_to_parent_and_decodes_json_columns(
        self, db: Path, ids: dict[str, int]
    ) -> None:
        child = as_json("show", "child", "--db", str(db))
        assert child["parent"]["uid"] == "bravo"
        assert child["parent"]["id"] == ids["bravo"]
        assert list(child["parent"]) == RUN_KEYS
        assert child["children"] == []
        assert child["steps"][0]["outcome"] is None
        assert child["steps"][0]["finished_at"] is None

        alpha = as_json("show", "alpha", "--db", str(db))
        assert alpha["run"]["summary"] == {"note": "fine"}
        assert alpha["run"]["meta"] == {"host": "box", "pid": 42, "argv": ["sync", "--full"]}
        assert alpha["steps"][0]["detail"] == {"rows": 12}
        assert alpha["steps"][0]["duration_ms"] == 61_000

        orphan = as_json("show", "orphan", "--db", str(db))
        assert orphan["parent"] is None
        assert orphan["run"]["parent_uid"] == "ghost"

    def test_human(self, db: Path, ids: dict[str, int]) -> None:
        out = ok("show", "bravo", "--db", str(db))
        assert "\x1b[" not in out
        assert f"Run {ids['bravo']}  people  (club rondo)" in out
        assert f"started   {local(T_BRAVO)} (2h ago)" in out
        assert "duration  3.0s" in out
        assert "created 10, updated 3, skipped 1, failed 2" in out
        assert "Steps (2)" in out
        step_line = next(line for line in out.splitlines() if "laposta-submit" in line)
        assert step_line.split()[-6:] == ["failure", "0", "2", "1", "2", "2"]
        assert "Errors (3)" in out
        assert "email rejected" in out
        assert "KNVB123" in out
        assert MARKUP in out  # data is never rich markup
        assert "Child runs (1)" in out
        assert "teams" in out

        child = ok("show", "child", "--db", str(db))
        assert f"parent    #{ids['bravo']} people failure" in child
        orphan = ok("show", "orphan", "--db", str(db))
        assert "parent    uid ghost (not in the database)" in orphan
        alpha = ok("show", "alpha", "--db", str(db))
        assert "host=box" in alpha
        assert "argv=sync --full" in alpha
        assert "1m 05s" in alpha
        assert "no steps" in ok("show", "old", "--db", str(db))

    def test_stack_prints_stacks(self, db: Path) -> None:
        assert "ValueError" not in ok("show", "bravo", "--db", str(db))
        out = ok("show", "bravo", "--db", str(db), "--stack")
        assert "      line 1" in out
        assert "ValueError" in out

    def test_many_errors_are_cut_for_people_not_for_json(self, tmp_path: Path) -> None:
        path = tmp_path / "dashboard.sqlite"
        store = Store.open(path)
        try:
            store.apply(
                [
                    RunStart(id="m0", ts=NOW, run="many", pipeline="p"),
                    *(
                        ErrorEvent(
                            id=f"m{i}", ts=NOW + i, run="many", step_name="s", message=f"err {i}"
                        )
                        for i in range(1, 56)
                    ),
                ]
            )
        finally:
            store.close()
        out = ok("show", "many", "--db", str(path))
        assert "Errors (55)" in out
        assert "err 50" in out
        assert "err 51" not in out
        assert "the first 50 of 55 errors" in out
        assert len(as_json("show", "many", "--db", str(path))["errors"]) == 55

    @pytest.mark.parametrize(
        ("args", "says"),
        [
            (["show", "9999"], "no run with id or uid '9999'"),
            (["show", "no-such-uid"], "no run with id or uid 'no-such-uid'"),
            (["show", "latest", "--pipeline", "nobody"], "no runs for pipeline 'nobody' yet"),
            (["errors", "--run", "nope"], "no run with id or uid 'nope'"),
            (["show", "\u00b2"], "no run with id or uid '\u00b2'"),  # isdigit(), not an int
            (["errors", "--run", "\u00b2"], "no run with id or uid '\u00b2'"),
        ],
    )
    def test_an_unknown_run_is_one_line(self, db: Path, args: list[str], says: str) -> None:
        assert says in one_line_error(cli(*args, "--db", str(db)))


# -- errors --------------------------------------------------------------------------------


class TestErrors:
    def test_json_field_by_field(self, db: Path, ids: dict[str, int]) -> None:
        out = as_json("errors", "--db", str(db))
        assert list(out) == ["errors"]
        assert [e["uid"] for e in out["errors"]] == ["b7", "b6", "b5"]  # newest first
        b6 = out["errors"][1]
        assert list(b6) == ERROR_KEYS
        assert b6["run_id"] == ids["bravo"]
        assert b6["run_uid"] == "bravo"
        assert b6["pipeline"] == "people"
        assert b6["club_slug"] == "rondo"
        assert isinstance(b6["run_step_id"], int)
        assert b6["step_name"] == "laposta-submit"
        assert b6["member_identifier"] == "KNVB456"
        assert b6["error_message"] == MARKUP
        assert b6["error_stack"] is None
        assert b6["created_at"] == iso_from_ms(T_BRAVO + 1200)

    @pytest.mark.parametrize(
        ("args", "expected"),
        [
            (["--run", "bravo"], ["b7", "b6", "b5"]),
            (["--run", "alpha"], []),
            (["--run", "latest", "--pipeline", "people"], []),  # orphan: no errors
            (["--step", "laposta-submit"], ["b6", "b5"]),
            (["--step", "cleanup"], ["b7"]),
            (["--member", "KNVB123"], ["b5"]),
            (["--member", "KNVB12"], []),  # exact
            (["--pipeline", "people"], ["b7", "b6", "b5"]),
            (["--pipeline", "teams"], []),
            (["--club", "other"], []),
            (["--since", "24h"], ["b7", "b6", "b5"]),
            (["--since", "1h"], []),
            (["--limit", "1"], ["b7"]),
        ],
    )
    def test_filters(self, db: Path, args: list[str], expected: list[str]) -> None:
        out = as_json("errors", "--db", str(db), *args)
        assert [e["uid"] for e in out["errors"]] == expected

    def test_run_by_id(self, db: Path, ids: dict[str, int]) -> None:
        out = as_json("errors", "--db", str(db), "--run", str(ids["bravo"]), "--step", "cleanup")
        assert [e["uid"] for e in out["errors"]] == ["b7"]

    def test_human(self, db: Path, ids: dict[str, int]) -> None:
        out = ok("errors", "--db", str(db))
        assert "\x1b[" not in out
        line = next(line for line in out.splitlines() if "KNVB123" in line)
        assert local(T_BRAVO + 1100) in line
        assert f" {ids['bravo']} " in line
        assert "laposta-submit" in line
        assert line.rstrip().endswith("email rejected")
        assert MARKUP in out
        assert "Traceback" not in out
        full = ok("errors", "--db", str(db), "--stack", "--member", "KNVB123")
        assert "member KNVB123" in full
        assert "      Traceback" in full
        assert ok("errors", "--db", str(db), "--run", "alpha").strip() == "no errors match"


# -- read-only, missing and broken databases -------------------------------------------------


class TestDatabase:
    @pytest.mark.parametrize("command", [["runs"], ["show", "1"], ["errors"]])
    def test_a_missing_database_is_one_line_and_is_not_created(
        self, tmp_path: Path, command: list[str]
    ) -> None:
        path = tmp_path / "nowhere" / "dashboard.sqlite"
        line = one_line_error(cli(*command, "--db", str(path)))
        assert f"database {path} does not exist" in line
        assert not path.parent.exists()

    def test_not_a_database_is_one_line(self, tmp_path: Path) -> None:
        path = tmp_path / "text.sqlite"
        path.write_bytes(b"hello, not sqlite at all " * 200)
        assert "not a SQLite database" in one_line_error(cli("runs", "--db", str(path)))

    def test_an_empty_sqlite_file_says_not_initialized(self, tmp_path: Path) -> None:
        path = tmp_path / "empty.sqlite"
        sqlite3.connect(path).execute("CREATE TABLE other (x)").connection.close()
        line = one_line_error(cli("errors", "--db", str(path)))
        assert "no runtally tables" in line

    def test_the_database_comes_from_the_environment(self, db: Path) -> None:
        result = CliRunner().invoke(
            main, ["runs", "--json"], env={"RUNTALLY_DB": str(db), "RUNTALLY_CONFIG": None}
        )
        assert result.exit_code == 0, result.output
        assert len(json.loads(result.output)["runs"]) == 5

    def test_reading_writes_nothing(self, tmp_path: Path) -> None:
        path = tmp_path / "dashboard.sqlite"
        build(path)
        before = path.read_bytes()
        listing = sorted(os.listdir(tmp_path))
        for args in (["runs"], ["show", "bravo"], ["errors"], ["runs", "--json"]):
            ok(*args, "--db", str(path))
        assert path.read_bytes() == before
        assert sorted(os.listdir(tmp_path)) == listing  # no -wal, -shm or journal made

    def test_reads_while_the_writer_holds_the_database(self, tmp_path: Path) -> None:
        path = tmp_path / "dashboard.sqlite"
        store = Store.open(path)
        try:
            store.apply(ledger_events()[2:6])  # alpha
            assert [r["uid"] for r in as_json("runs", "--db", str(path))["runs"]] == ["alpha"]
            store.apply([RunStart(id="n1", ts=NOW, run="new", pipeline="people")])
            assert (path.parent / "dashboard.sqlite-wal").exists()
            runs = as_json("runs", "--db", str(path))["runs"]
            assert [r["uid"] for r in runs] == ["new", "alpha"]
        finally:
            store.close()


# -- formatting helpers ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (None, "-"),
        (0, "0ms"),
        (850, "850ms"),
        (1_234, "1.2s"),
        (12_000, "12s"),
        (65_000, "1m 05s"),
        (3_599_000, "59m 59s"),
        (2 * HOUR + 3 * MIN, "2h 03m"),
        (DAY + 2 * HOUR, "1d 02h"),
    ],
)
def test_fmt_duration(ms: int | None, text: str) -> None:
    assert fmt_duration(ms) == text


@pytest.mark.parametrize(
    ("seconds_ago", "text"),
    [(1, "just now"), (45, "45s ago"), (3 * 3600 + 50, "3h ago"), (2 * 86400, "2d ago"),
     (-600, "in 10m")],
)  # fmt: skip
def test_fmt_ago(seconds_ago: int, text: str) -> None:
    now = 1_770_000_000.0
    assert fmt_ago(iso_from_ms(int((now - seconds_ago) * 1000)), now=now) == text


def test_parse_since_formats() -> None:
    start = datetime.fromisoformat("2026-02-08T14:53:00.123+00:00")
    assert parse_since("24h", now=start) == "2026-02-07T14:53:00.123Z"
    assert parse_since("7d", now=start) == "2026-02-01T14:53:00.123Z"
    assert parse_since("30m", now=start) == "2026-02-08T14:23:00.123Z"
    assert parse_since("2026-02-08T05:00:00Z") == "2026-02-08T05:00:00.000Z"
    assert parse_since("2026-02-08T06:00:00+01:00") == "2026-02-08T05:00:00.000Z"
    with pytest.raises(ValueError, match="neither a duration"):
        parse_since("soon")
    # Found from outside: year 0 in UTC read "year 0 is out of range" (a year not typed).
    with pytest.raises(ValueError, match="edge of the calendar"):
        parse_since("0001-01-01T00:00:00+01:00")


@pytest.fixture(autouse=True)
def _no_colour_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # Colour decisions must follow the output stream, not the test runner's env.
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.delenv("TTY_COMPATIBLE", raising=False)
    yield


class TestHostileArguments:
    """Arguments as an attacker or an odd shell gives them: one line, never a traceback."""

    def test_an_id_past_sqlite_integers_is_not_found(self, db: Path) -> None:
        big = "9" * 23
        line = one_line_error(cli("show", big, "--db", str(db)))
        assert line == f"Error: no run with id or uid '{big}'"
        one_line_error(cli("errors", "--run", big, "--db", str(db)))

    def test_non_utf8_arguments_match_what_the_client_recorded(self, tmp_path: Path) -> None:
        # argv bytes that are not UTF-8 reach Python as lone surrogates (PEP 383);
        # the client records them as \xNN, and so the filter must read them.
        path = tmp_path / "d.sqlite"
        store = Store.open(path)
        try:
            store.apply([RunStart(id="e", ts=1, run="r", pipeline="report-\\xe9")])
        finally:
            store.close()
        shown = json.loads(ok("runs", "-p", "report-\udce9", "--db", str(path), "--json"))
        assert [r["pipeline"] for r in shown["runs"]] == ["report-\\xe9"]
        line = one_line_error(cli("show", "\udcff", "--db", str(path)))
        assert line == "Error: no run with id or uid '\\\\xff'"
        ok("errors", "-m", "\udcc3", "--db", str(path))

    @pytest.mark.parametrize("value", ["nan", "1e308", "-1"])
    def test_timeouts_must_be_a_sane_number_of_seconds(self, value: str, tmp_path: Path) -> None:
        result = cli("status", "--timeout", value, "--db", str(tmp_path / "d.sqlite"))
        assert result.exit_code == 2
        assert "Traceback" not in result.output
        assert "Invalid value for '--timeout'" in result.output

    def test_blobs_in_an_adopted_database_are_shown_as_text(self, tmp_path: Path) -> None:
        path = tmp_path / "d.sqlite"
        Store.open(path).close()
        conn = sqlite3.connect(path)
        conn.execute(  # what an old writer may have left: bytes in TEXT columns
            "INSERT INTO runs (pipeline, club_slug, started_at, outcome)"
            " VALUES (?, ?, '2026-01-01T00:00:00.000Z', 'running')",
            (b"blob-\xff", b"rondo"),
        )
        conn.commit()
        conn.close()
        shown = json.loads(ok("runs", "--db", str(path), "--json"))
        assert [r["pipeline"] for r in shown["runs"]] == ["blob-\\xff"]
        assert "blob-" in ok("runs", "--db", str(path))
        assert "Traceback" not in cli("status", "--db", str(path)).output


@pytest.mark.parametrize("name", [b"nu\xff\xfe", b"a?b#c", b"sp ace%20"])
def test_read_commands_open_any_file_name(tmp_path: Path, name: bytes) -> None:
    """The daemon writes a database at any path it is given (not UTF-8, ``?``, ``#``,
    ``%``); every read command opens the same file (its name percent-encoded in the
    SQLite URI), the monitor's reader too."""
    from runtally.daemon._monitor_read import open_reader

    folder = Path(os.fsdecode(os.path.join(os.fsencode(tmp_path), name)))
    folder.mkdir()
    path = folder / "dashboard.sqlite"
    build(path)
    assert as_json("runs", "--db", str(path))["runs"]
    assert "email rejected" in ok("errors", "--db", str(path))
    assert ok("db", "doctor", "--db", str(path))
    reader = open_reader(path)
    try:
        assert reader.execute("SELECT count(*) FROM runs").fetchone()[0] > 0
    finally:
        reader.close()
    # A real process, its real stdout: the name is printed, not a traceback.
    for args in (["db", "doctor"], ["status", "--socket", str(folder / "no.sock")]):
        done = subprocess.run(
            [sys.executable, "-m", "runtally.cli", *args, "--db", str(path)],
            capture_output=True,
            env={**os.environ, "RUNTALLY_CONFIG": "", "RUNTALLY_SPOOL": str(folder / "spool")},
            timeout=60,
            check=False,
        )
        assert b"Traceback" not in done.stderr, done.stderr
        assert done.returncode in (0, 1), done.stderr
        assert b"dashboard.sqlite" in done.stdout + done.stderr


@pytest.mark.parametrize(
    "zone", ["Europe/Amsterdam", "Pacific/Kiritimati", "America/Adak", "UTC+99"]
)
def test_times_at_the_ends_of_the_calendar_are_shown_not_fatal(tmp_path: Path, zone: str) -> None:
    """``ts`` is valid from 0 through 9999-12-31T23:59:59.999Z (docs/protocol.md);
    east of UTC that last hour is in year 10000.  Found from outside: ``status`` and
    ``show`` died with OverflowError in Europe/Amsterdam.  Such a time is shown as
    stored."""
    path = tmp_path / "dashboard.sqlite"
    store = Store.open(path)
    try:
        store.apply(
            [
                RunStart(id="e-s", ts=0, run="edge", pipeline="edge"),
                RunEnd(id="e-e", ts=253_402_300_799_999, run="edge", outcome="success"),
            ]
        )
    finally:
        store.close()
    for args in (["status", "--socket", str(tmp_path / "no.sock")], ["show", "latest"], ["runs"]):
        done = subprocess.run(
            [sys.executable, "-m", "runtally.cli", *args, "--db", str(path)],
            capture_output=True,
            text=True,
            env={**os.environ, "RUNTALLY_CONFIG": "", "TZ": zone, "COLUMNS": "200"},
            timeout=60,
            check=False,
        )
        assert "Traceback" not in done.stderr, (args, done.stderr)
        assert done.returncode in (0, 1), (args, done.stderr)
        if args[0] == "show":
            assert "9999-12-31T23:59:59.999Z" in done.stdout or "9999-12-31 " in done.stdout
