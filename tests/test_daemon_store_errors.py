"""Which SQLite failures the store retries: real errors from real files, classified.

Each case makes SQLite itself fail the way the daemon could meet it (a held
lock, a full database, a failing write, a read-only or corrupt file, a missing
table, ...) and checks ``is_transient`` against it, and that ``Store.apply``
turns it into StoreBusy (retry later) or ApplyError (permanent).
"""

from __future__ import annotations

import resource
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from runtally.daemon._store import ApplyError, Store, StoreBusy, is_transient
from runtally.protocol import RunStart

RS = RunStart(id="ev-rs", ts=1_770_562_380_123, run="R", pipeline="people")


def _conn(path: Path, **kw: object) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, **kw)  # type: ignore[arg-type]
    conn.execute("CREATE TABLE IF NOT EXISTS t (x UNIQUE)")
    return conn


def busy(tmp: Path) -> None:
    holder = _conn(tmp / "db")
    holder.execute("BEGIN IMMEDIATE")
    try:
        _conn(tmp / "db", timeout=0).execute("BEGIN IMMEDIATE")
    finally:
        holder.execute("ROLLBACK")


def locked(tmp: Path) -> None:
    conn = _conn(tmp / "db")
    conn.executemany("INSERT INTO t VALUES (?)", [(1,), (2,)])
    reading = conn.execute("SELECT x FROM t")
    reading.fetchone()  # a statement still running on the table
    conn.execute("DROP TABLE t")


def full(tmp: Path) -> None:
    conn = _conn(tmp / "db")
    conn.execute("PRAGMA max_page_count = 3")
    conn.execute("INSERT INTO t VALUES (zeroblob(100000))")


def ioerr(tmp: Path) -> None:
    """A write(2) failing with EFBIG (RLIMIT_FSIZE): SQLITE_IOERR_WRITE, an extended code."""
    conn = _conn(tmp / "db")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("INSERT INTO t VALUES (0)")  # the -wal and -shm files exist from here
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1, hard))  # CPython ignores SIGXFSZ
    try:
        conn.execute("INSERT INTO t VALUES (zeroblob(10000))")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def no_such_table(tmp: Path) -> None:
    _conn(tmp / "db").execute("INSERT INTO missing VALUES (1)")


def no_such_column(tmp: Path) -> None:
    _conn(tmp / "db").execute("INSERT INTO t (y) VALUES (1)")


def readonly(tmp: Path) -> None:
    _conn(tmp / "db").close()
    conn = sqlite3.connect(f"file:{tmp / 'db'}?mode=ro", uri=True)
    conn.execute("INSERT INTO t VALUES (1)")


def query_only(tmp: Path) -> None:
    conn = _conn(tmp / "db")
    conn.execute("PRAGMA query_only = 1")
    conn.execute("INSERT INTO t VALUES (1)")


def corrupt(tmp: Path) -> None:
    conn = sqlite3.connect(tmp / "db")
    conn.execute("CREATE TABLE c (x)")
    conn.executemany("INSERT INTO c VALUES (?)", [("x" * 500,)] * 200)
    conn.commit()
    conn.close()
    with (tmp / "db").open("r+b") as fh:  # page 4 of 4 KiB: inside the table's b-tree
        fh.seek(4096 * 3)
        fh.write(b"\xff" * 4096)
    sqlite3.connect(tmp / "db").execute("SELECT count(*), sum(length(x)) FROM c").fetchall()


def not_a_database(tmp: Path) -> None:
    (tmp / "db").write_bytes(b"garbage!" * 1000)
    sqlite3.connect(tmp / "db").execute("SELECT * FROM sqlite_master")


def constraint(tmp: Path) -> None:
    conn = _conn(tmp / "db")
    conn.execute("INSERT INTO t VALUES (1)")
    conn.execute("INSERT INTO t VALUES (1)")


def closed(tmp: Path) -> None:
    conn = _conn(tmp / "db")
    conn.close()
    conn.execute("SELECT 1")


CASES: list[tuple[Callable[[Path], None], str | None, bool]] = [
    # (how, the error's sqlite_errorname or None when Python raised it, transient)
    (busy, "SQLITE_BUSY", True),
    (locked, "SQLITE_LOCKED", True),
    (full, "SQLITE_FULL", True),
    (ioerr, "SQLITE_IOERR_WRITE", True),
    (no_such_table, "SQLITE_ERROR", False),
    (no_such_column, "SQLITE_ERROR", False),
    (readonly, "SQLITE_READONLY", False),
    (query_only, "SQLITE_READONLY", False),
    (corrupt, "SQLITE_CORRUPT", False),
    (not_a_database, "SQLITE_NOTADB", False),
    (constraint, "SQLITE_CONSTRAINT_UNIQUE", False),
    (closed, None, False),
]


@pytest.mark.parametrize(("how", "name", "transient"), CASES, ids=[c[0].__name__ for c in CASES])
def test_is_transient_decides_on_the_sqlite_error_code(
    tmp_path: Path, how: Callable[[Path], None], name: str | None, transient: bool
) -> None:
    with pytest.raises(sqlite3.Error) as caught:
        how(tmp_path)
    assert getattr(caught.value, "sqlite_errorname", None) == name  # the case makes what it says
    assert is_transient(caught.value) is transient


@pytest.mark.parametrize(
    "exc",
    [ValueError("x"), OSError(28, "No space left on device"), sqlite3.OperationalError("by hand")],
)
def test_errors_that_sqlite_did_not_raise_are_permanent(exc: BaseException) -> None:
    assert not is_transient(exc)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "dashboard.sqlite", busy_timeout_ms=0)
    try:
        yield s
    finally:
        s.close()


def test_store_apply_raises_store_busy_for_a_lock(store: Store) -> None:
    holder = sqlite3.connect(store.path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreBusy, match="locked"):
            store.apply([RS])
    finally:
        holder.execute("ROLLBACK")
        holder.close()


@pytest.mark.parametrize(
    ("sql", "match"),
    [
        ("PRAGMA query_only = 1", "readonly"),
        ("DROP TABLE runs", "no such table: runs"),
    ],
)
def test_store_apply_raises_apply_error_for_a_permanent_fault(
    store: Store, sql: str, match: str
) -> None:
    """Not StoreBusy: the writer must not retry these as if they would pass by."""
    store.query("PRAGMA foreign_keys = OFF")
    store.query(sql)
    with pytest.raises(ApplyError, match=match):
        store.apply([RS])
