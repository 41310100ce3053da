"""The database's files on disk: which inodes the open connection writes, WAL size.

A connection keeps writing the inodes it opened.  When the file at the path is
replaced (a backup restored with ``mv``/``os.replace``) or its ``-wal`` is
deleted, commits still succeed — into an orphan that no reader sees and that
the next close loses.  So the store remembers (st_dev, st_ino) of both files
when it opens them, and compares before each commit.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

__all__ = [
    "CACHE_SIZE",
    "JOURNAL_SIZE_LIMIT",
    "Identity",
    "changed",
    "identity",
    "lock_holder",
    "lock_path",
    "same_file",
    "sqlite_uri",
    "wal_bytes",
    "wal_path",
]

#: PRAGMA journal_size_limit: bytes of WAL kept after a checkpoint resets it.
JOURNAL_SIZE_LIMIT = 8 << 20

#: PRAGMA cache_size of the daemon's connections (negative: KiB).  SQLite's default
#: (2 MiB each) is resident memory for ever once a long batch has filled it; the
#: pages a batch of appends touches (the tables' and indexes' right edges) fit in
#: far less, and the OS page cache keeps the rest a read away (issue 17: RSS).
CACHE_SIZE = -512

#: (st_dev, st_ino) of the database file, and of its WAL (None if it has none).
Identity = tuple[tuple[int, int] | None, tuple[int, int] | None]


def sqlite_uri(path: str | os.PathLike[str], query: str) -> str:
    """``file:<absolute path>?<query>`` for ``sqlite3.connect(uri=True)``.

    The path's bytes (``os.fsencode``: a name that is not UTF-8 too) are
    percent-encoded, so any file name survives, ``?`` and ``#`` included
    (SQLite's URI rules: https://www.sqlite.org/uri.html).
    """
    from urllib.parse import quote  # only where a read-only connection is opened

    return f"file:{quote(os.fsencode(os.path.abspath(path)))}?{query}"


def wal_path(db: Path) -> Path:
    """``<db>-wal``."""
    return db.with_name(db.name + "-wal")


def _id(path: str | Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino)


def identity(db: Path) -> Identity:
    """The inodes of ``db`` and its ``-wal`` now (right after opening them)."""
    return (_id(db), _id(wal_path(db)))


def changed(db: Path | str, opened: Identity) -> str | None:
    """Why the files at ``db`` are no longer the ones ``opened``, or None if they are.

    Called before every commit: plain strings and two stat calls, no pathlib
    object built (``<db>-wal`` is the same text as ``wal_path``).
    """
    db = os.fspath(db)
    wal = db + "-wal"
    now_db = _id(db)
    was_db, was_wal = opened
    if now_db is None:
        return f"{db} was deleted"
    if now_db != was_db:
        return f"{db} was replaced (another file is at its path now)"
    if was_wal is not None:
        now_wal = _id(wal)
        if now_wal is None:
            return f"{wal} was deleted"
        if now_wal != was_wal:
            return f"{wal} was replaced"
    return None


def wal_bytes(db: Path) -> int:
    """Size of ``<db>-wal`` in bytes, 0 when there is none."""
    try:
        return os.stat(wal_path(db)).st_size
    except OSError:
        return 0


def lock_path(db: Path) -> Path:
    """``<db>.lock``: held (flock) by the one daemon writing ``db``, with its pid inside."""
    return db.with_name(db.name + ".lock")


def lock_holder(db: Path) -> str | None:
    """Who holds the daemon's locks on ``db``: the pid written in ``<db>.lock``,
    ``"unknown"`` when only the database file itself is locked (a daemon that
    opened it under another name); None when nobody does.

    Tried with shared, non-blocking flocks, released at once: a daemon holds
    them exclusively for its whole life (``_server._lock_database``).  A file
    that cannot be opened (none yet, no permission) says nobody.
    """
    for path, pid_inside in ((lock_path(db), True), (db, False)):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode("ascii", "replace").strip() if pid_inside else ""
            return text or "unknown"
        except OSError:
            continue
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
    return None


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether two paths name one file (the same inode; else the same resolved path)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()
