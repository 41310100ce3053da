"""The old direct-SQLite RunTracker (seeds/2-run-tracker.plan.md), ported to Python.

Benchmark baseline only - not part of the package.  It keeps what the old
``lib/run-tracker.js`` did, statement for statement:

* the constructor opens ``dashboard.sqlite`` itself (``openDb``: journal_mode
  WAL, busy_timeout 5000, then ``initDb``: the seed schema's ``CREATE ... IF
  NOT EXISTS``) and prepares its statements; ``end_run`` closes it again;
* every call is one or more *autocommit* statements: one write transaction
  (and with ``synchronous=FULL`` one fsync of the WAL) per tracker call;
* ``end_step`` reads the step's ``started_at`` back to compute the duration,
  ``end_run`` reads the run's, sums its steps and updates the run;
* every public method is wrapped in ``_safe``: an exception (``database is
  locked`` after busy_timeout, a full disk) is reported and swallowed, and if
  ``start_run`` failed every later call is a silent no-op - the run is lost.

``synchronous`` is what the connection is left at: better-sqlite3 left SQLite's
default, FULL; NORMAL is the variant a tuned deployment would have used.
Errors go to ``on_error(method, exc)`` (default: the seed's stderr line), so a
benchmark can count them.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["LegacyRunTracker", "now_iso", "seed_schema"]

MEMBER_KEYS = ("knvb_id", "email", "dossier_id", "team_name", "commissie_name")


def seed_schema() -> str:
    """The old ``initDb`` schema, exactly as runtally adopts it."""
    # Read by path, not through ``importlib.resources``: that would import
    # runtally.daemon (and trio) into every direct pipeline of bench_shapes (c).
    migrations = Path(__file__).resolve().parent.parent / "runtally" / "daemon" / "migrations"
    return (migrations / "0001_seed_schema.sql").read_text()


_SCHEMA = seed_schema()


def now_iso() -> str:
    """JavaScript's ``new Date().toISOString()``: UTC with milliseconds and a Z."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _ms_between(start: str, end: str) -> int:
    return round((_parse_iso(end) - _parse_iso(start)).total_seconds() * 1000)


def _default_on_error(method: str, exc: BaseException) -> None:
    print(f"[run-tracker] Error in {method}: {exc}", file=sys.stderr)


def open_db(path: str | Path, synchronous: str = "FULL") -> sqlite3.Connection:
    """``openDb()``: WAL, busy_timeout 5000, the seed schema; autocommit like better-sqlite3."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA busy_timeout = 5000")
    db.execute(f"PRAGMA synchronous = {synchronous}")
    db.executescript(_SCHEMA)
    return db


class LegacyRunTracker:
    """``new RunTracker(pipeline)``: one database connection per tracker (per run)."""

    def __init__(
        self,
        pipeline: str,
        db_path: str | Path,
        *,
        synchronous: str = "FULL",
        on_error: Callable[[str, BaseException], None] = _default_on_error,
    ) -> None:
        self.pipeline = pipeline
        self.run_id: int | None = None
        self.db: sqlite3.Connection | None = None
        self._on_error = on_error
        try:
            self.db = open_db(db_path, synchronous)
        except Exception as exc:
            on_error("constructor", exc)

    def _safe(self, method: str, fn: Callable[[], Any]) -> Any:
        if self.db is None:
            return None
        try:
            return fn()
        except Exception as exc:
            self._on_error(method, exc)
            return None

    # -- the seed's prepared statements ------------------------------------------

    def _insert_run(self, started_at: str) -> int | None:
        return self.db.execute(  # type: ignore[union-attr]
            "INSERT INTO runs (pipeline, started_at, outcome) VALUES (?, ?, 'running')",
            (self.pipeline, started_at),
        ).lastrowid

    # -- API ------------------------------------------------------------------------

    def start_run(self) -> int | None:
        def run() -> int | None:
            self.run_id = self._insert_run(now_iso())
            return self.run_id

        return self._safe("startRun", run)

    def start_step(self, step_name: str) -> int | None:
        def run() -> int | None:
            if self.run_id is None:
                return None
            return self.db.execute(  # type: ignore[union-attr]
                "INSERT INTO run_steps (run_id, step_name, started_at) VALUES (?, ?, ?)",
                (self.run_id, step_name, now_iso()),
            ).lastrowid

        return self._safe("startStep", run)

    def end_step(
        self,
        step_id: int | None,
        outcome: str = "success",
        created: int = 0,
        updated: int = 0,
        skipped: int = 0,
        failed: int = 0,
        detail: Any = None,
    ) -> None:
        def run() -> None:
            if self.run_id is None or step_id is None:
                return
            db = self.db
            assert db is not None
            row = db.execute("SELECT started_at FROM run_steps WHERE id = ?", (step_id,)).fetchone()
            finished_at = now_iso()
            duration = _ms_between(row[0], finished_at) if row else None
            db.execute(
                "UPDATE run_steps SET finished_at = ?, duration_ms = ?, outcome = ?,"
                " created_count = ?, updated_count = ?, skipped_count = ?, failed_count = ?,"
                " detail_json = ? WHERE id = ?",
                (
                    finished_at,
                    duration,
                    outcome or "success",
                    created or 0,
                    updated or 0,
                    skipped or 0,
                    failed or 0,
                    json.dumps(detail) if detail is not None else None,
                    step_id,
                ),
            )

        self._safe("endStep", run)

    def record_error(
        self,
        step_name: str,
        step_id: int | None = None,
        member_identifier: str | None = None,
        error_message: str = "",
        error_stack: str | None = None,
    ) -> None:
        def run() -> None:
            if self.run_id is None:
                return
            self.db.execute(  # type: ignore[union-attr]
                "INSERT INTO run_errors (run_id, run_step_id, step_name, member_identifier,"
                " error_message, error_stack, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    self.run_id,
                    step_id,
                    step_name,
                    member_identifier,
                    str(error_message)[:2000],
                    str(error_stack)[:4000] if error_stack is not None else None,
                    now_iso(),
                ),
            )

        self._safe("recordError", run)

    def record_errors(self, step_name: str, step_id: int | None, errors: Any) -> None:
        if isinstance(errors, int | float):
            if errors > 0:
                self.record_error(step_name, step_id, None, f"Step reported {errors} error(s)")
            return
        for err in errors or ():
            member = next((err.get(k) for k in MEMBER_KEYS if err.get(k)), None)
            message = err.get("message") or err.get("error") or ""
            self.record_error(step_name, step_id, member, message, err.get("stack"))

    def end_run(self, success: bool, stats: Any = None) -> None:
        def run() -> None:
            if self.run_id is None:
                return
            db = self.db
            assert db is not None
            row = db.execute("SELECT started_at FROM runs WHERE id = ?", (self.run_id,)).fetchone()
            finished_at = now_iso()
            duration = _ms_between(row[0], finished_at) if row else None
            totals = db.execute(
                "SELECT COALESCE(SUM(created_count),0) as total_created,"
                " COALESCE(SUM(updated_count),0) as total_updated,"
                " COALESCE(SUM(skipped_count),0) as total_skipped,"
                " COALESCE(SUM(failed_count),0) as total_failed"
                " FROM run_steps WHERE run_id = ?",
                (self.run_id,),
            ).fetchone()
            db.execute(
                "UPDATE runs SET finished_at = ?, duration_ms = ?, outcome = ?,"
                " total_created = ?, total_updated = ?, total_skipped = ?, total_failed = ?,"
                " summary_json = ? WHERE id = ?",
                (
                    finished_at,
                    duration,
                    "success" if success else "failure",
                    *totals,
                    json.dumps(stats),
                    self.run_id,
                ),
            )
            self.close()

        self._safe("endRun", run)

    def close(self) -> None:
        """Safety net: close the database if still open (idempotent)."""
        db, self.db = self.db, None
        if db is not None:
            try:
                db.close()
            except Exception as exc:
                self._on_error("close", exc)
