"""Migrations: a fresh database, the exact seed schema, and adopting an old database."""

from __future__ import annotations

import re
import sqlite3
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from runtally.cli import main
from runtally.daemon._doctor import doctor
from runtally.daemon._migrations import MIGRATIONS, SCHEMA_VERSION, MigrationError, migrate
from runtally.daemon._store import Store, connect
from runtally.daemon._timefmt import ms_from_iso
from runtally.protocol import ErrorEvent, RunEnd, RunStart, StepEnd, StepStart

# The old dashboard-db.js initDb(), copied verbatim from
# seeds/1-dashboard-db-schema.plan.md (Task 2).  Do not "tidy" it: the point
# is that runtally's migrated schema matches what this text creates.
OLD_DDL = """
CREATE TABLE IF NOT EXISTS runs (
  id INTEGER PRIMARY KEY,
  club_slug TEXT NOT NULL DEFAULT 'rondo',
  pipeline TEXT NOT NULL,
  started_at TEXT NOT NULL,
  finished_at TEXT,
  duration_ms INTEGER,
  outcome TEXT CHECK(outcome IN ('success', 'failure', 'running')),
  total_created INTEGER DEFAULT 0,
  total_updated INTEGER DEFAULT 0,
  total_skipped INTEGER DEFAULT 0,
  total_failed INTEGER DEFAULT 0,
  summary_json TEXT
);

CREATE INDEX IF NOT EXISTS idx_runs_club_pipeline
  ON runs (club_slug, pipeline, started_at);

CREATE TABLE IF NOT EXISTS run_steps (
  id INTEGER PRIMARY KEY,
  run_id INTEGER NOT NULL REFERENCES runs(id),
  club_slug TEXT NOT NULL DEFAULT 'rondo',
  step_name TEXT NOT NULL,
  started_at TEXT NOT NULL,
  finished_at TEXT,
  duration_ms INTEGER,
  outcome TEXT CHECK(outcome IN ('success', 'failure', 'skipped')),
  created_count INTEGER DEFAULT 0,
  updated_count INTEGER DEFAULT 0,
  skipped_count INTEGER DEFAULT 0,
  failed_count INTEGER DEFAULT 0,
  detail_json TEXT
);

CREATE INDEX IF NOT EXISTS idx_run_steps_run_id
  ON run_steps (run_id);

CREATE TABLE IF NOT EXISTS run_errors (
  id INTEGER PRIMARY KEY,
  run_id INTEGER NOT NULL REFERENCES runs(id),
  run_step_id INTEGER REFERENCES run_steps(id),
  club_slug TEXT NOT NULL DEFAULT 'rondo',
  step_name TEXT NOT NULL,
  member_identifier TEXT,
  error_message TEXT NOT NULL,
  error_stack TEXT,
  created_at TEXT NOT NULL
);

CREATE INDEX IF NOT EXISTS idx_run_errors_run_id
  ON run_errors (run_id);

CREATE INDEX IF NOT EXISTS idx_run_errors_club_step
  ON run_errors (club_slug, step_name, created_at);
"""

SEED_TABLES = ("runs", "run_steps", "run_errors")
SEED_INDEXES = (
    "idx_runs_club_pipeline",
    "idx_run_steps_run_id",
    "idx_run_errors_run_id",
    "idx_run_errors_club_step",
)
#: Columns runtally adds to the seed tables (DESIGN.md, Database).
ADDED_COLUMNS = {
    "runs": [
        "uid",
        "parent_run_id",
        "parent_uid",
        "meta_json",
        "end_key",
        "peer_pid",
        "peer_start",
        "received_at",
    ],
    "run_steps": ["uid", "end_key"],
    "run_errors": ["uid"],
}

# The old run-tracker.js prepared statements (seeds/2-run-tracker.plan.md).
OLD_INSERT_RUN = "INSERT INTO runs (pipeline, started_at, outcome) VALUES (?, ?, 'running')"
OLD_INSERT_STEP = "INSERT INTO run_steps (run_id, step_name, started_at) VALUES (?, ?, ?)"
OLD_UPDATE_STEP = (
    "UPDATE run_steps SET finished_at = ?, duration_ms = ?, outcome = ?, created_count = ?,"
    " updated_count = ?, skipped_count = ?, failed_count = ?, detail_json = ? WHERE id = ?"
)
OLD_INSERT_ERROR = (
    "INSERT INTO run_errors (run_id, run_step_id, step_name, member_identifier,"
    " error_message, error_stack, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
OLD_SUM_STEPS = (
    "SELECT COALESCE(SUM(created_count),0), COALESCE(SUM(updated_count),0),"
    " COALESCE(SUM(skipped_count),0), COALESCE(SUM(failed_count),0)"
    " FROM run_steps WHERE run_id = ?"
)
OLD_UPDATE_RUN = (
    "UPDATE runs SET finished_at = ?, duration_ms = ?, outcome = ?, total_created = ?,"
    " total_updated = ?, total_skipped = ?, total_failed = ?, summary_json = ? WHERE id = ?"
)


def _old_open(path: Path) -> sqlite3.Connection:
    """What dashboard-db.js openDb() did (better-sqlite3 enables foreign keys)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA busy_timeout = 5000")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.executescript(OLD_DDL)
    return conn


def _old_end_step(conn, step_id, started, finished, outcome, counts, detail):
    duration = ms_from_iso(finished) - ms_from_iso(started)
    conn.execute(OLD_UPDATE_STEP, (finished, duration, outcome, *counts, detail, step_id))


def _old_end_run(conn, run_id, started, finished, success, stats):
    totals = conn.execute(OLD_SUM_STEPS, (run_id,)).fetchone()
    duration = ms_from_iso(finished) - ms_from_iso(started)
    outcome = "success" if success else "failure"
    conn.execute(OLD_UPDATE_RUN, (finished, duration, outcome, *totals, stats, run_id))


def build_old_database(path: Path) -> dict[str, list[tuple]]:
    """A dashboard.sqlite as the old RunTracker left it; returns its rows by table."""
    conn = _old_open(path)
    # Run 1: people, success, two steps, one error on a step.
    r1 = conn.execute(OLD_INSERT_RUN, ("people", "2026-02-08T14:53:00.123Z")).lastrowid
    s1 = conn.execute(
        OLD_INSERT_STEP, (r1, "sportlink-download", "2026-02-08T14:53:00.200Z")
    ).lastrowid
    _old_end_step(
        conn,
        s1,
        "2026-02-08T14:53:00.200Z",
        "2026-02-08T14:53:10.250Z",
        "success",
        (120, 0, 0, 0),
        None,
    )
    s2 = conn.execute(OLD_INSERT_STEP, (r1, "laposta-submit", "2026-02-08T14:53:10.300Z")).lastrowid
    _old_end_step(
        conn,
        s2,
        "2026-02-08T14:53:10.300Z",
        "2026-02-08T14:53:20.000Z",
        "success",
        (3, 40, 77, 1),
        '{"batches":2}',
    )
    # Errors 1..6 were purged long ago: the survivors have ids 7 and 42.
    conn.execute(
        "INSERT INTO run_errors (id, run_id, run_step_id, step_name, member_identifier,"
        " error_message, error_stack, created_at) VALUES (7, ?, ?, ?, ?, ?, ?, ?)",
        (
            r1,
            s2,
            "laposta-submit",
            "KNVB123",
            "invalid email",
            "Error: invalid email\n    at submit",
            "2026-02-08T14:53:15.000Z",
        ),
    )
    _old_end_run(conn, r1, "2026-02-08T14:53:00.123Z", "2026-02-08T14:53:20.100Z", True, '{"ok":1}')
    # Run 2: nikki, failure, a step that failed, an error without a step.
    r2 = conn.execute(OLD_INSERT_RUN, ("nikki", "2026-02-09T03:00:00.000Z")).lastrowid
    s3 = conn.execute(OLD_INSERT_STEP, (r2, "nikki-download", "2026-02-09T03:00:00.010Z")).lastrowid
    _old_end_step(
        conn,
        s3,
        "2026-02-09T03:00:00.010Z",
        "2026-02-09T03:00:05.000Z",
        "failure",
        (0, 0, 0, 0),
        None,
    )
    conn.execute(
        "INSERT INTO run_errors (id, run_id, run_step_id, step_name, member_identifier,"
        " error_message, error_stack, created_at) VALUES (42, ?, NULL, ?, NULL, ?, NULL, ?)",
        (r2, "nikki-sync", "Step reported 3 error(s)", "2026-02-09T03:00:05.500Z"),
    )
    conn.execute(
        OLD_INSERT_ERROR,
        (r2, s3, "nikki-download", None, "timeout", None, "2026-02-09T03:00:05.600Z"),
    )
    _old_end_run(conn, r2, "2026-02-09T03:00:00.000Z", "2026-02-09T03:00:06.000Z", False, "{}")
    # Run 3: teams, still running (the process died), one unfinished step.
    r3 = conn.execute(OLD_INSERT_RUN, ("teams", "2026-02-10T04:00:00.000Z")).lastrowid
    conn.execute(OLD_INSERT_STEP, (r3, "team-download", "2026-02-10T04:00:00.100Z"))
    rows = {t: conn.execute(f"SELECT * FROM {t} ORDER BY id").fetchall() for t in SEED_TABLES}
    conn.close()
    return rows


def _seed_db(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(OLD_DDL)
    return conn


def _sql(conn: sqlite3.Connection, name: str) -> str:
    return conn.execute("SELECT sql FROM sqlite_master WHERE name = ?", (name,)).fetchone()[0]


# -- a fresh database --------------------------------------------------------------


def test_fresh_database_records_every_migration_in_order(tmp_path: Path) -> None:
    path = tmp_path / "new" / "dashboard.sqlite"
    store = Store.open(path)
    try:
        rows = store.query("SELECT id, applied_at FROM schema_migrations ORDER BY rowid")
        assert [r[0] for r in rows] == [m.id for m in MIGRATIONS]
        assert [r[0] for r in rows] == sorted(r[0] for r in rows)
        assert [r[1] for r in rows] == sorted(r[1] for r in rows)  # applied in order
        for _, applied_at in rows:
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", applied_at)
        meta = store.query("SELECT schema_version, app_version, created_at FROM meta")
        assert len(meta) == 1
        assert meta[0][0] == SCHEMA_VERSION == len(MIGRATIONS) == store.schema_version
        assert meta[0][1]
        assert store.query("PRAGMA journal_mode") == [("wal",)]
        assert store.query("PRAGMA foreign_keys") == [(1,)]
    finally:
        store.close()


def test_migrating_again_is_a_no_op(tmp_path: Path) -> None:
    path = tmp_path / "dashboard.sqlite"
    Store.open(path).close()
    conn = connect(path)
    before = conn.execute("SELECT * FROM schema_migrations ORDER BY id").fetchall()
    schema_before = conn.execute("SELECT * FROM sqlite_master ORDER BY name").fetchall()
    assert migrate(conn) == []
    assert conn.execute("SELECT * FROM schema_migrations ORDER BY id").fetchall() == before
    assert conn.execute("SELECT * FROM sqlite_master ORDER BY name").fetchall() == schema_before
    assert conn.execute("SELECT count(*) FROM meta").fetchone() == (1,)
    conn.close()
    Store.open(path).close()  # and through Store.open
    conn = connect(path)
    assert conn.execute("SELECT * FROM schema_migrations ORDER BY id").fetchall() == before
    conn.close()


def test_seed_tables_match_the_seed_ddl_exactly(tmp_path: Path) -> None:
    Store.open(tmp_path / "migrated.sqlite").close()
    ours = sqlite3.connect(tmp_path / "migrated.sqlite")
    seed = _seed_db(tmp_path / "seed.sqlite")
    for table in SEED_TABLES:
        seed_cols = seed.execute(f"PRAGMA table_info({table})").fetchall()
        our_cols = ours.execute(f"PRAGMA table_info({table})").fetchall()
        # (cid, name, type, notnull, dflt_value, pk): the seed's columns first,
        # identical, then only runtally's documented additions.
        assert our_cols[: len(seed_cols)] == seed_cols
        assert [c[1] for c in our_cols[len(seed_cols) :]] == ADDED_COLUMNS[table]
        assert all(c[3] == 0 and c[4] is None for c in our_cols[len(seed_cols) :])
        seed_fks = seed.execute(f"PRAGMA foreign_key_list({table})").fetchall()
        our_fks = ours.execute(f"PRAGMA foreign_key_list({table})").fetchall()
        assert {fk[2:5] for fk in seed_fks} <= {fk[2:5] for fk in our_fks}
        # CHECKs, DEFAULT 'rondo': the CREATE TABLE text is the seed's, with
        # ALTER TABLE's added columns appended before the closing parenthesis.
        seed_sql, our_sql = _sql(seed, table), _sql(ours, table)
        assert seed_sql.endswith("\n)")
        assert our_sql.startswith(seed_sql[:-1]), our_sql
        assert re.fullmatch(
            r"(, \w+ [A-Z]+( REFERENCES runs\(id\))?)+\)", our_sql[len(seed_sql) - 1 :]
        )
        assert "club_slug TEXT NOT NULL DEFAULT 'rondo'" in our_sql
    assert "CHECK(outcome IN ('success', 'failure', 'running'))" in _sql(ours, "runs")
    assert "CHECK(outcome IN ('success', 'failure', 'skipped'))" in _sql(ours, "run_steps")
    # The seed's indexes: same names, same columns, same text.
    seed_indexes = {
        r[0] for r in seed.execute("SELECT name FROM sqlite_master WHERE type = 'index'")
    }
    assert seed_indexes == set(SEED_INDEXES)
    for index in SEED_INDEXES:
        assert (
            ours.execute(f"PRAGMA index_info({index})").fetchall()
            == seed.execute(f"PRAGMA index_info({index})").fetchall()
        )
        assert _sql(ours, index) == _sql(seed, index)
        table = _sql(seed, index).split(" ON ")[1].split()[0]
        seed_list = {r[1:] for r in seed.execute(f"PRAGMA index_list({table})")}
        our_list = {r[1:] for r in ours.execute(f"PRAGMA index_list({table})")}
        assert {r for r in seed_list if r[0] == index} <= our_list
    ours.close()
    seed.close()


def test_a_database_claiming_an_unknown_migration_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "dashboard.sqlite"
    Store.open(path).close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(
        "INSERT INTO schema_migrations (id, applied_at) VALUES ('0099_from_the_future', 'x')"
    )
    conn.close()
    with pytest.raises(MigrationError, match="0099_from_the_future"):
        Store.open(path)
    report = doctor(path)
    assert report.unknown_migrations == ["0099_from_the_future"]
    assert not report.healthy
    assert any("newer" in p for p in report.problems)
    result = CliRunner().invoke(
        main, ["db", "migrate", "--db", str(path), "--socket", str(tmp_path / "no.sock")]
    )
    assert result.exit_code == 1
    assert "0099_from_the_future" in result.output
    assert result.output.count("\n") == 1
    assert not isinstance(result.exception, MigrationError)


def test_two_processes_migrating_at_once_do_not_collide(tmp_path: Path) -> None:
    """Both see every migration pending, then queue on the write lock."""
    path = tmp_path / "dashboard.sqlite"
    blocker = connect(path)
    blocker.executescript(  # bootstrap tables exist, so migrate() reads pending first
        "CREATE TABLE schema_migrations (id TEXT PRIMARY KEY, applied_at TEXT NOT NULL);"
        "CREATE TABLE meta (schema_version INTEGER NOT NULL, app_version TEXT, created_at TEXT);"
    )
    blocker.execute("BEGIN IMMEDIATE")
    results: list[object] = []

    def run() -> None:
        conn = connect(path, busy_timeout_ms=10_000)
        try:
            results.append(migrate(conn))
        except Exception as exc:
            results.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    threading.Event().wait(0.3)  # both are now waiting for BEGIN IMMEDIATE
    blocker.execute("COMMIT")
    for t in threads:
        t.join(20)
    blocker.close()
    assert not [r for r in results if isinstance(r, Exception)], results
    # Every migration applied exactly once, by one or the other.
    applied_ids = sorted(m for r in results for m in r)
    assert applied_ids == [m.id for m in MIGRATIONS]
    assert doctor(path).healthy


# -- adopting an old database --------------------------------------------------------


def test_an_old_database_is_adopted_with_its_rows_and_ids(tmp_path: Path) -> None:
    path = tmp_path / "dashboard.sqlite"
    old_rows = build_old_database(path)
    assert [r[0] for r in old_rows["runs"]] == [1, 2, 3]
    assert [r[0] for r in old_rows["run_errors"]] == [7, 42, 43]
    assert [r[6] for r in old_rows["runs"]] == ["success", "failure", "running"]
    before = doctor(path)
    assert before.initialized and not before.healthy
    assert before.schema_version is None
    assert before.pending_migrations == [m.id for m in MIGRATIONS]

    store = Store.open(path)
    try:
        assert store.schema_version == SCHEMA_VERSION
        for table, rows in old_rows.items():
            width = len(rows[0])
            now = store.query(f"SELECT * FROM {table} ORDER BY id")
            assert [r[:width] for r in now] == rows  # every row, every value, same id
            assert all(v is None for r in now for v in r[width:])  # new columns NULL
    finally:
        store.close()

    report = doctor(path)
    assert report.healthy, report.problems
    assert report.row_counts["runs"] == 3
    assert report.row_counts["run_errors"] == 3
    result = CliRunner().invoke(main, ["db", "doctor", "--db", str(path)])
    assert result.exit_code == 0, result.output
    assert "healthy" in result.output

    # New events land after the old rows and leave them alone.
    store = Store.open(path)
    try:
        t0 = 1_770_800_000_000
        results = store.apply(
            [
                RunStart(id="e1", ts=t0, run="R", pipeline="people"),
                StepStart(id="e2", ts=t0 + 1, run="R", step="S", name="download"),
                StepEnd(id="e3", ts=t0 + 9, run="R", step="S", outcome="success", created=5),
                ErrorEvent(
                    id="e4", ts=t0 + 5, run="R", step="S", step_name="download", message="x"
                ),
                RunEnd(id="e5", ts=t0 + 10, run="R", outcome="success"),
            ]
        )
        assert results == [None] * 5
        max_old = {t: max(r[0] for r in rows) for t, rows in old_rows.items()}
        (run_id,) = store.query("SELECT id FROM runs WHERE uid = 'R'")[0]
        (step_id,) = store.query("SELECT id FROM run_steps WHERE uid = 'S'")[0]
        (error_id,) = store.query("SELECT id FROM run_errors WHERE uid = 'e4'")[0]
        assert run_id > max_old["runs"]
        assert step_id > max_old["run_steps"]
        assert error_id > max_old["run_errors"] >= 42
        assert store.query("SELECT total_created FROM runs WHERE uid = 'R'") == [(5,)]
        for table, rows in old_rows.items():
            width = len(rows[0])
            kept = store.query(f"SELECT * FROM {table} WHERE uid IS NULL ORDER BY id")
            assert [r[:width] for r in kept] == rows
    finally:
        store.close()
    assert doctor(path).healthy
