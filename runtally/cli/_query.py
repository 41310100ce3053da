"""Read-only access to dashboard.sqlite for the read commands (the CLI's data layer).

``read(path, fn)`` runs ``fn(conn)`` through ``daemon._readonly.read_only``:
never a write, never a new file, whether the daemon runs or not.  Every
failure is a ``DatabaseError`` (``RunNotFound`` for a run that is not there),
one sentence that the click layer prints.

Rows come back as plain dicts whose keys are the column names, which is also
the ``--json`` shape (see README, "Everyday commands").
"""

from __future__ import annotations

import functools
import sqlite3
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from ..daemon._readonly import CannotOpen, read_only
from ..protocol import RunStart
from ._errors import DatabaseError, RunNotFound

__all__ = [
    "ERROR_FIELDS",
    "RUN_FIELDS",
    "STEP_FIELDS",
    "children_of",
    "errors_of",
    "find_run",
    "list_errors",
    "list_runs",
    "max_name",
    "name_filter",
    "parent_of",
    "read",
    "steps_of",
]

T = TypeVar("T")

_NOT_INITIALIZED = "start the daemon or run `runtally db migrate`, or pass --db"

#: Columns of a run in every listing (and in ``--json``), in order.
RUN_FIELDS = (
    "id",
    "uid",
    "pipeline",
    "club_slug",
    "started_at",
    "finished_at",
    "duration_ms",
    "outcome",
    "total_created",
    "total_updated",
    "total_skipped",
    "total_failed",
    "error_count",
    "step_count",
    "parent_run_id",
    "parent_uid",
)

STEP_FIELDS = (
    "id",
    "uid",
    "step_name",
    "started_at",
    "finished_at",
    "duration_ms",
    "outcome",
    "created_count",
    "updated_count",
    "skipped_count",
    "failed_count",
    "error_count",
    "detail_json",
)

ERROR_FIELDS = (
    "id",
    "uid",
    "run_id",
    "run_uid",
    "pipeline",
    "club_slug",
    "run_step_id",
    "step_name",
    "member_identifier",
    "error_message",
    "error_stack",
    "created_at",
)

_RUN_SELECT = """
SELECT r.id, r.uid, r.pipeline, r.club_slug, r.started_at, r.finished_at, r.duration_ms,
       r.outcome, r.total_created, r.total_updated, r.total_skipped, r.total_failed,
       (SELECT count(*) FROM run_errors e WHERE e.run_id = r.id) AS error_count,
       (SELECT count(*) FROM run_steps s WHERE s.run_id = r.id) AS step_count,
       r.parent_run_id, r.parent_uid, r.summary_json, r.meta_json
FROM runs r
"""

_ERROR_SELECT = """
SELECT e.id, e.uid, e.run_id, r.uid AS run_uid, r.pipeline, e.club_slug, e.run_step_id,
       e.step_name, e.member_identifier, e.error_message, e.error_stack, e.created_at
FROM run_errors e JOIN runs r ON r.id = e.run_id
"""


def _explain(path: Path, exc: sqlite3.Error) -> str:
    text = str(exc)
    if "not a database" in text:
        return f"{path} is not a SQLite database ({text})"
    if "no such table" in text:
        return f"{path} has no runtally tables ({text}): {_NOT_INITIALIZED}"
    if "no such column" in text:
        return f"{path} has an older schema ({text}): run `runtally db migrate`"
    return f"{path}: {text}"


def _text_row(cursor: sqlite3.Cursor, row: tuple[Any, ...]) -> sqlite3.Row:
    """A row with any BLOB shown as text: an adopted old database may hold bytes
    where the seed schema says TEXT (SQLite types values, not columns), and no
    reader (table, JSON, web page, metric label) can take bytes."""
    if any(type(v) is bytes for v in row):
        row = tuple(v.decode("utf-8", "backslashreplace") if type(v) is bytes else v for v in row)
    return sqlite3.Row(cursor, row)


def read(path: Path, fn: Callable[[sqlite3.Connection], T]) -> T:
    """``fn(conn)`` on a read-only connection to ``path`` (rows as ``sqlite3.Row``).

    ``fn`` must only read: it may run twice (see ``daemon._readonly``).
    Raises DatabaseError, one line, for every failure to read.
    """
    try:
        st = path.stat()
    except FileNotFoundError:
        raise DatabaseError(f"database {path} does not exist: {_NOT_INITIALIZED}") from None
    except OSError as exc:
        raise DatabaseError(f"cannot read {path}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        raise DatabaseError(f"{path} is a directory, not a database file")

    def with_rows(conn: sqlite3.Connection) -> T:
        conn.row_factory = _text_row
        return fn(conn)

    try:
        return read_only(path, with_rows)[0]
    except CannotOpen as exc:
        raise DatabaseError(str(exc)) from None
    except sqlite3.Error as exc:
        raise DatabaseError(_explain(path, exc)) from None


def _dicts(rows: list[sqlite3.Row]) -> list[dict[str, Any]]:
    return [dict(row) for row in rows]


@functools.cache
def max_name() -> int:
    """The longest name the protocol accepts (pipeline, club, step): 256 characters.

    Read from the protocol's own declaration, so a filter is cut exactly as
    a name is on its way in.
    """
    import msgspec.inspect  # only here: ~8 ms, and only for a filter

    info = msgspec.inspect.type_info(RunStart)
    field = next(f for f in info.fields if f.name == "pipeline")  # type: ignore[attr-defined]
    return int(field.type.max_length)


def name_filter(value: str | None) -> str | None:
    """A name filter cut as the client cuts the name it records (256, then stripped)."""
    if value is None or len(value) <= max_name():
        return value
    return value[: max_name()].strip()


def _newest(
    conn: sqlite3.Connection,
    select: str,
    equal: dict[str, Any],
    *,
    since: tuple[str, str | None],
    key: str,
    limit: int | None,
    before: int | None,
) -> list[dict[str, Any]]:
    """``select`` filtered by ``column = value`` for each given value and
    ``column >= since``, newest first by ``key`` (the id: the order the daemon
    received them in), below ``before`` if given, at most ``limit`` rows (0/None: all)."""
    where = [f"{column} = ?" for column, value in equal.items() if value is not None]
    params: list[Any] = [value for value in equal.values() if value is not None]
    if since[1] is not None:
        where.append(f"{since[0]} >= ?")
        params.append(since[1])
    if before is not None:
        where.append(f"{key} < ?")
        params.append(before)
    sql = select + (" WHERE " + " AND ".join(where) if where else "") + f" ORDER BY {key} DESC"
    if limit:
        sql += " LIMIT ?"
        params.append(limit)
    return _dicts(conn.execute(sql, params).fetchall())


def list_runs(
    conn: sqlite3.Connection,
    *,
    pipeline: str | None = None,
    club: str | None = None,
    outcome: str | None = None,
    since: str | None = None,
    limit: int | None = None,
    before: int | None = None,
) -> list[dict[str, Any]]:
    """Runs matching every given filter, newest first.

    Newest is the order the daemon received them in (their ids), not
    ``started_at``: a client whose clock was ahead must not keep its run on
    top after the clock is corrected.  ``before``: only ids below it (the
    next page after a run of that id).
    """
    return _newest(
        conn,
        _RUN_SELECT,
        {
            "r.pipeline": name_filter(pipeline),
            "r.club_slug": name_filter(club),
            "r.outcome": outcome,
        },
        since=("r.started_at", since),
        key="r.id",
        limit=limit,
        before=before,
    )


def _run_by(conn: sqlite3.Connection, column: str, value: Any) -> dict[str, Any] | None:
    row = conn.execute(_RUN_SELECT + f" WHERE r.{column} = ?", (value,)).fetchone()
    return dict(row) if row is not None else None


def find_run(
    conn: sqlite3.Connection, ref: str, *, pipeline: str | None = None, club: str | None = None
) -> dict[str, Any]:
    """The run ``ref`` names: an id, a uid, or ``latest`` (of ``pipeline``/``club`` if given).

    Raises RunNotFound (one line) when there is no such run.
    """
    ref = ref.strip()
    if ref.lower() == "latest":
        found = list_runs(conn, pipeline=pipeline, club=club, limit=1)
        if not found:
            scope = " ".join(
                f"{k} {v!r}" for k, v in (("pipeline", pipeline), ("club", club)) if v is not None
            )
            raise RunNotFound(f"no runs{' for ' + scope if scope else ''} yet")
        return found[0]
    run = None
    # "²".isdigit() too, and int() refuses it; past 2**63-1 it is no SQLite INTEGER
    # (binding it raises OverflowError), so only a uid.
    if ref.isascii() and ref.isdigit() and len(ref) <= 19 and int(ref) < 2**63:
        run = _run_by(conn, "id", int(ref))
    if run is None:
        run = _run_by(conn, "uid", ref)
    if run is None:
        raise RunNotFound(f"no run with id or uid {ref!r}")
    return run


def parent_of(conn: sqlite3.Connection, run: dict[str, Any]) -> dict[str, Any] | None:
    """The run ``run`` was started inside, by id or (not linked yet) uid; None if none."""
    if run.get("parent_run_id") is not None:
        return _run_by(conn, "id", run["parent_run_id"])
    if run.get("parent_uid"):
        return _run_by(conn, "uid", run["parent_uid"])
    return None


def children_of(conn: sqlite3.Connection, run: dict[str, Any]) -> list[dict[str, Any]]:
    """Runs started inside ``run`` (by parent id, or by parent uid not linked yet)."""
    sql = _RUN_SELECT + " WHERE r.parent_run_id = ?"
    params: list[Any] = [run["id"]]
    if run.get("uid"):
        sql += " OR (r.parent_run_id IS NULL AND r.parent_uid = ?)"
        params.append(run["uid"])
    return _dicts(conn.execute(sql + " ORDER BY r.started_at, r.id", params).fetchall())


def steps_of(conn: sqlite3.Connection, run_id: int) -> list[dict[str, Any]]:
    """A run's steps in the order they started, each with its error count."""
    rows = conn.execute(
        "SELECT s.id, s.uid, s.step_name, s.started_at, s.finished_at, s.duration_ms, s.outcome,"
        " s.created_count, s.updated_count, s.skipped_count, s.failed_count,"
        " (SELECT count(*) FROM run_errors e WHERE e.run_step_id = s.id) AS error_count,"
        " s.detail_json"
        " FROM run_steps s WHERE s.run_id = ? ORDER BY s.started_at, s.id",
        (run_id,),
    ).fetchall()
    return _dicts(rows)


def errors_of(conn: sqlite3.Connection, run_id: int) -> list[dict[str, Any]]:
    """A run's errors in the order they happened."""
    rows = conn.execute(
        _ERROR_SELECT + " WHERE e.run_id = ? ORDER BY e.created_at, e.id", (run_id,)
    ).fetchall()
    return _dicts(rows)


def list_errors(
    conn: sqlite3.Connection,
    *,
    run_id: int | None = None,
    pipeline: str | None = None,
    club: str | None = None,
    step: str | None = None,
    member: str | None = None,
    since: str | None = None,
    limit: int | None = None,
    before: int | None = None,
) -> list[dict[str, Any]]:
    """Errors matching every given filter, newest (as received) first; see ``list_runs``."""
    return _newest(
        conn,
        _ERROR_SELECT,
        {
            "e.run_id": run_id,
            "r.pipeline": name_filter(pipeline),
            "e.club_slug": name_filter(club),
            "e.step_name": name_filter(step),
            "e.member_identifier": member,
        },
        since=("e.created_at", since),
        key="e.id",
        limit=limit,
        before=before,
    )
