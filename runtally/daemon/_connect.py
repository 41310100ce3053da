"""Opening the write connection: runtally's pragmas, and a recognised, migrated database."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Literal

from .._text import db_text
from . import _dbfiles as files
from ._migrations import migrate
from ._recognise import recognise

__all__ = ["connect", "open_migrated"]


def open_migrated(
    path: Path, synchronous: Literal["NORMAL", "FULL"], busy_timeout_ms: int
) -> sqlite3.Connection:
    """``connect`` to ``path`` and migrate it; ForeignDatabase (``_recognise``) before any write."""
    recognise(path)  # before anything writes: a foreign file stays untouched
    conn = connect(path, synchronous=synchronous, busy_timeout_ms=busy_timeout_ms)
    try:
        migrate(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def connect(
    path: Path,
    *,
    synchronous: Literal["NORMAL", "FULL"] = "FULL",
    busy_timeout_ms: int = 5000,
) -> sqlite3.Connection:
    """A write connection with runtally's pragmas, in autocommit mode.

    ``check_same_thread=False``: the writer task runs it from trio worker
    threads, one call at a time.
    """
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.text_factory = db_text
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if mode.lower() != "wal":
        conn.close()
        raise sqlite3.OperationalError(f"cannot switch {path} to WAL (journal_mode={mode})")
    conn.execute("PRAGMA foreign_keys = ON")
    if synchronous not in ("NORMAL", "FULL"):
        raise ValueError("synchronous must be NORMAL or FULL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    # What a checkpoint that resets the WAL leaves of it at most (SQLite's default
    # is no limit: a WAL grown under a long reader kept its size for ever).
    conn.execute(f"PRAGMA journal_size_limit = {files.JOURNAL_SIZE_LIMIT}")
    conn.execute(f"PRAGMA cache_size = {files.CACHE_SIZE}")
    return conn
