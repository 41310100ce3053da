"""``runtally db migrate|doctor|vacuum`` through click's CliRunner, on real files."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result
from daemon_helpers import count, daemon_process
from test_migrations import build_old_database  # the old tracker's database

from runtally._version import __version__
from runtally.cli import main
from runtally.cli._db import db as db_group
from runtally.daemon._migrations import MIGRATIONS, SCHEMA_VERSION
from runtally.daemon._store import Store
from runtally.protocol import ErrorEvent, RunStart, StepEnd, StepStart

T = 1_770_562_380_123
IDS = [m.id for m in MIGRATIONS]


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short directory: AF_UNIX socket paths are limited to ~108 bytes."""
    with tempfile.TemporaryDirectory(prefix="rl-", dir="/tmp") as d:
        yield Path(d)


@pytest.fixture
def no_socket(short_dir: Path) -> Path:
    return short_dir / "nobody.sock"


def run(*args: str) -> Result:
    env = {"RUNTALLY_CONFIG": None, "RUNTALLY_DB": None, "RUNTALLY_SOCKET": None}
    return CliRunner().invoke(main, list(args), env=env)


def one_line_error(result: Result) -> str:
    """The failure is one line on stderr, no traceback."""
    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: ")
    return lines[0]


def populate(path: Path) -> None:
    store = Store.open(path)
    try:
        store.apply(
            [
                RunStart(id="a", ts=T, run="R", pipeline="people"),
                StepStart(id="b", ts=T, run="R", step="S", name="download"),
                StepEnd(id="c", ts=T + 5, run="R", step="S", outcome="success", created=3),
                ErrorEvent(id="d", ts=T, run="R", step="S", step_name="download", message="m"),
                ErrorEvent(id="e", ts=T, run="R", step_name="download", message="m"),
                StepEnd(id="f", ts=T, run="NOPE", step="X", outcome="success"),  # parked
            ]
        )
        store.audit("start", "daemon started")
        store.checkpoint()
    finally:
        store.close()


def side_files(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(path.name + "-"))


# -- migrate ------------------------------------------------------------------------------


def test_migrate_creates_a_new_database_then_is_a_no_op(tmp_path: Path, no_socket: Path) -> None:
    path = tmp_path / "state" / "nested" / "dashboard.sqlite"
    result = run("db", "migrate", "--db", str(path), "--socket", str(no_socket))
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        *(f"applied {m}" for m in IDS),
        f"{path}: now at schema version {SCHEMA_VERSION}",
    ]
    assert path.is_file()
    again = run("db", "migrate", "--db", str(path), "--socket", str(no_socket))
    assert again.exit_code == 0
    assert again.output == f"{path}: already at schema version {SCHEMA_VERSION}\n"


def test_migrate_takes_the_path_from_the_environment(tmp_path: Path, no_socket: Path) -> None:
    path = tmp_path / "env.sqlite"
    result = CliRunner().invoke(
        main,
        ["db", "migrate"],
        env={
            "RUNTALLY_DB": str(path),
            "RUNTALLY_SOCKET": str(no_socket),
            "RUNTALLY_CONFIG": None,
        },
    )
    assert result.exit_code == 0, result.output
    assert path.is_file()


def test_migrate_adopts_an_old_database(tmp_path: Path, no_socket: Path) -> None:
    path = tmp_path / "dashboard.sqlite"
    build_old_database(path)
    result = run("db", "migrate", "--db", str(path), "--socket", str(no_socket))
    assert result.exit_code == 0, result.output
    assert [line.split()[1] for line in result.output.splitlines()[:-1]] == IDS
    assert run("db", "doctor", "--db", str(path)).exit_code == 0


def test_migrate_errors_are_one_line(tmp_path: Path, no_socket: Path) -> None:
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"this is not a database, just some text " * 50)
    before = garbage.read_bytes()
    line = one_line_error(run("db", "migrate", "--db", str(garbage), "--socket", str(no_socket)))
    assert "not a SQLite database" in line
    assert garbage.read_bytes() == before

    a_file = tmp_path / "plain-file"
    a_file.write_text("x")
    line = one_line_error(
        run("db", "migrate", "--db", str(a_file / "sub" / "d.sqlite"), "--socket", str(no_socket))
    )
    assert "plain-file" in line


def test_migrate_leaves_pending_migrations_to_a_running_daemon(
    tmp_path: Path, short_dir: Path
) -> None:
    path = tmp_path / "dashboard.sqlite"
    build_old_database(path)
    sock_path = short_dir / "d.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(sock_path))
        server.listen(8)
        line = one_line_error(run("db", "migrate", "--db", str(path), "--socket", str(sock_path)))
        assert "daemon is running" in line
        con = sqlite3.connect(path)
        assert con.execute(
            "SELECT count(*) FROM sqlite_master WHERE name = 'schema_migrations'"
        ).fetchone() == (0,)
        con.close()
    # Once nobody answers (a stale socket file stays behind), it migrates.
    assert sock_path.exists()
    result = run("db", "migrate", "--db", str(path), "--socket", str(sock_path))
    assert result.exit_code == 0, result.output


# -- doctor --------------------------------------------------------------------------------


def test_doctor_on_a_missing_database_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "missing-dir" / "dashboard.sqlite"
    result = run("db", "doctor", "--db", str(path))
    assert result.exit_code == 2
    assert "not initialized" in result.output
    assert not path.exists()
    assert not path.parent.exists()

    result = run("db", "doctor", "--db", str(path), "--json")
    assert result.exit_code == 2
    report = json.loads(result.output)
    assert report["status"] == "not initialized"
    assert report["exists"] is False
    assert report["initialized"] is False
    assert report["healthy"] is False
    assert report["problems"]
    assert not path.parent.exists()


def test_doctor_json_reports_every_field(tmp_path: Path) -> None:
    path = tmp_path / "dashboard.sqlite"
    populate(path)
    os.chmod(path, 0o600)  # made under the test's umask; 0644 would be a warning of its own
    before = path.read_bytes()
    mtime = path.stat().st_mtime_ns
    result = run("db", "doctor", "--db", str(path), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["path"] == str(path)
    assert report["exists"] is True
    assert report["status"] == "healthy"
    assert report["initialized"] is True
    assert report["healthy"] is True
    assert report["problems"] == []
    assert len(report["warnings"]) == 1  # the parked event
    assert "parked" in report["warnings"][0]
    assert report["error"] is None
    assert report["file_size"] == os.path.getsize(path) > 0
    assert report["wal_size"] is None
    assert report["opened"] == "immutable"  # nobody has it open
    assert report["schema_version"] == SCHEMA_VERSION
    assert report["code_schema_version"] == SCHEMA_VERSION
    assert report["app_version"] == __version__
    assert report["applied_migrations"] == IDS
    assert report["pending_migrations"] == []
    assert report["unknown_migrations"] == []
    assert report["journal_mode"] == "wal"
    assert report["integrity"] == ["ok"]
    assert report["integrity_ok"] is True
    assert report["foreign_key_violations"] == []
    assert report["row_counts"] == {
        "runs": 1,
        "run_steps": 1,
        "run_errors": 2,
        "audit_log": 1,
        "dead_letters": 0,
        "parked_events": 1,
    }
    # Read-only: not a byte changed, no side file left behind.
    assert path.read_bytes() == before
    assert path.stat().st_mtime_ns == mtime
    assert side_files(path) == []


def test_doctor_reads_a_database_the_daemon_has_open(tmp_path: Path) -> None:
    path = tmp_path / "dashboard.sqlite"
    store = Store.open(path)
    try:
        store.apply([RunStart(id="a", ts=T, run="R", pipeline="people")])  # still in the WAL
        result = run("db", "doctor", "--db", str(path), "--json")
        assert result.exit_code == 0, result.output
        report = json.loads(result.output)
        assert report["opened"] == "read-only"
        assert report["row_counts"]["runs"] == 1
        assert report["wal_size"] > 0
        assert store.apply([RunStart(id="b", ts=T, run="R2", pipeline="people")]) == [None]
    finally:
        store.close()


def test_doctor_human_output(tmp_path: Path) -> None:
    path = tmp_path / "dashboard.sqlite"
    populate(path)
    result = run("db", "doctor", "--db", str(path))
    assert result.exit_code == 0, result.output
    out = result.output
    assert f"version {SCHEMA_VERSION}" in out
    assert "journal mode  wal" in out
    assert "integrity     ok" in out
    assert "runs 1, run_steps 1, run_errors 2" in out
    assert "status        healthy" in out
    assert "warning: 1 event(s) parked" in out


def test_doctor_on_a_garbage_file_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "garbage.sqlite"
    path.write_bytes(os.urandom(4096))
    line = one_line_error(run("db", "doctor", "--db", str(path)))
    assert "not a SQLite database" in line
    result = run("db", "doctor", "--db", str(path), "--json")
    assert result.exit_code == 1
    report = json.loads(result.output)
    assert report["status"] == "unreadable"
    assert "not a SQLite database" in report["error"]
    # A file that starts like SQLite but is cut short.
    truncated = tmp_path / "truncated.sqlite"
    truncated.write_bytes(b"SQLite format 3\x00" + b"\x00" * 20)
    one_line_error(run("db", "doctor", "--db", str(truncated)))
    # A directory where the file should be: one line naming where the path came from.
    line = one_line_error(run("db", "doctor", "--db", str(tmp_path)))
    assert "is a directory" in line
    assert "(db from option --db)" in line


def test_doctor_on_an_empty_file_says_not_initialized(tmp_path: Path) -> None:
    path = tmp_path / "empty.sqlite"
    path.touch()
    result = run("db", "doctor", "--db", str(path))
    assert result.exit_code == 2
    assert "not initialized" in result.output
    assert path.stat().st_size == 0


def test_doctor_on_the_adopted_old_database_is_healthy(tmp_path: Path) -> None:
    path = tmp_path / "dashboard.sqlite"
    build_old_database(path)
    result = run("db", "doctor", "--db", str(path))  # not migrated yet
    assert result.exit_code == 1
    assert "runtally db migrate" in result.output
    assert f"{len(IDS)} migration(s) pending" in result.output
    Store.open(path).close()  # what the daemon does on start
    result = run("db", "doctor", "--db", str(path), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["healthy"] is True
    assert report["row_counts"]["runs"] == 3
    assert report["row_counts"]["run_errors"] == 3


def test_doctor_reports_broken_foreign_keys_and_journal_mode(tmp_path: Path) -> None:
    path = tmp_path / "dashboard.sqlite"
    populate(path)
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA foreign_keys = OFF")
    con.execute(
        "INSERT INTO run_steps (run_id, step_name, started_at) VALUES (999, 'x', '2026-01-01')"
    )
    con.execute("PRAGMA journal_mode = DELETE")
    con.close()
    result = run("db", "doctor", "--db", str(path), "--json")
    assert result.exit_code == 1
    report = json.loads(result.output)
    assert report["status"] == "unhealthy"
    assert [v["table"] for v in report["foreign_key_violations"]] == ["run_steps"]
    assert report["foreign_key_violations"][0]["parent"] == "runs"
    assert report["journal_mode"] == "delete"
    assert any("run_steps" in p and "refer to rows" in p for p in report["problems"])
    assert any("journal mode" in p for p in report["problems"])


# -- vacuum ----------------------------------------------------------------------------------


def test_vacuum_compacts_the_database(tmp_path: Path, no_socket: Path) -> None:
    path = tmp_path / "dashboard.sqlite"
    store = Store.open(path)
    store.apply([RunStart(id=f"r{i}", ts=T, run=f"R{i}", pipeline="p" * 200) for i in range(2000)])
    store.close()
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("DELETE FROM runs")
    con.close()
    size = path.stat().st_size
    result = run("db", "vacuum", "--db", str(path), "--socket", str(no_socket))
    assert result.exit_code == 0, result.output
    assert "vacuumed" in result.output
    assert path.stat().st_size < size
    assert side_files(path) == []  # the WAL is checkpointed away
    assert run("db", "doctor", "--db", str(path)).exit_code == 0


def test_vacuum_never_writes_itself_while_a_daemon_answers(tmp_path: Path, short_dir: Path) -> None:
    path = tmp_path / "dashboard.sqlite"
    populate(path)
    before = path.read_bytes()
    sock_path = short_dir / "d.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(sock_path))
        server.listen(8)
        # Something accepts but never answers the vacuum message: asked, not done here.
        line = one_line_error(
            run("db", "vacuum", "--db", str(path), "--socket", str(sock_path), "--timeout", "0.5")
        )
        assert "no answer" in line
        assert str(sock_path) in line
    assert path.read_bytes() == before
    # The socket file of a dead daemon does not stop it.
    assert run("db", "vacuum", "--db", str(path), "--socket", str(sock_path)).exit_code == 0


def test_vacuum_errors_are_one_line(tmp_path: Path, no_socket: Path) -> None:
    missing = tmp_path / "missing.sqlite"
    line = one_line_error(run("db", "vacuum", "--db", str(missing), "--socket", str(no_socket)))
    assert "does not exist" in line
    assert not missing.exists()
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(os.urandom(8192))
    line = one_line_error(run("db", "vacuum", "--db", str(garbage), "--socket", str(no_socket)))
    assert "not a SQLite database" in line


# -- the commands themselves ------------------------------------------------------------------


def test_every_option_has_help() -> None:
    for name, command in db_group.commands.items():
        for param in command.params:
            if isinstance(param, click.Option):
                assert param.help, f"db {name} {param.opts}"
        result = run("db", name, "--help")
        assert result.exit_code == 0
    assert set(db_group.commands) == {"migrate", "doctor", "vacuum"}


# -- the one read-only opener --------------------------------------------------------------


def test_an_immutable_read_during_a_daemon_start_is_redone_read_only(tmp_path: Path) -> None:
    """Nobody had the file open, so the read starts immutable; a daemon starts and
    writes meanwhile: that read is discarded and done again, read-only."""
    from runtally.daemon._readonly import read_only

    path = tmp_path / "dashboard.sqlite"
    populate(path)
    assert side_files(path) == []
    daemon: list[Store] = []

    def count_runs(conn: sqlite3.Connection) -> int:
        n = conn.execute("SELECT count(*) FROM runs").fetchone()[0]
        if not daemon:  # the daemon starts in the middle of the first read
            daemon.append(Store.open(path))
            daemon[0].apply([RunStart(id="late", ts=T, run="R-late", pipeline="people")])
        return n

    try:
        runs, opened = read_only(path, count_runs)
    finally:
        for store in daemon:
            store.close()
    assert (runs, opened) == (2, "read-only")


def test_an_idle_database_is_read_immutable_and_left_alone(tmp_path: Path) -> None:
    from runtally.daemon._readonly import read_only

    path = tmp_path / "dashboard.sqlite"
    populate(path)
    before = path.read_bytes()
    runs, opened = read_only(path, lambda c: c.execute("SELECT count(*) FROM runs").fetchone()[0])
    assert (runs, opened) == (1, "immutable")
    assert path.read_bytes() == before
    assert side_files(path) == []


def test_db_commands_act_on_the_file_they_are_given(tmp_path: Path, short_dir: Path) -> None:
    """Found from outside: with a daemon up, ``db vacuum --db OTHER`` vacuumed the
    daemon's own database and printed its sizes as OTHER's, and ``db migrate --db
    OTHER`` was refused although that daemon does not write OTHER.  The daemon on
    the socket counts only for the file its status names; any daemon writing the
    given file holds its lock, and is named."""
    root = short_dir / "d"
    root.mkdir(mode=0o700)
    with daemon_process(root) as d:
        other = tmp_path / "other.sqlite"
        populate(other)
        result = run("db", "vacuum", "--db", str(other), "--socket", str(d.socket))
        assert result.exit_code == 0, result.output
        assert result.output.startswith(f"{other}: vacuumed, ")
        assert count(d.db, "audit_log", "event = 'vacuum'") == 0  # the daemon's file untouched
        old = tmp_path / "old.sqlite"
        build_old_database(old)
        result = run("db", "migrate", "--db", str(old), "--socket", str(d.socket))
        assert result.exit_code == 0, result.output
        assert f"now at schema version {SCHEMA_VERSION}" in result.output
        # Its own file, asked through another socket: its lock says who writes it.
        nobody = str(short_dir / "nobody.sock")
        line = one_line_error(run("db", "vacuum", "--db", str(d.db), "--socket", nobody))
        assert f"pid {d.proc.pid}" in line and str(d.db) in line
        # Through its own socket, as before: the daemon vacuums.
        result = run("db", "vacuum", "--db", str(d.db), "--socket", str(d.socket))
        assert result.exit_code == 0 and "by the daemon" in result.output, result.output
