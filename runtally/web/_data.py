"""Reading the database off the event loop: one read-only connection per call, in a thread.

A connection per request (the CLI's ``_query.read``: ``mode=ro`` +
``query_only``) sees the newest commit and never holds a WAL snapshot between
requests, so the daemon's checkpoints are never held back by an open page.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import msgspec

from ..cli import _query as q
from ..cli._errors import DatabaseError
from ..cli._health import collect

__all__ = ["DatabaseUnavailable", "Health", "NotFound", "read", "stamp"]

T = TypeVar("T")


class DatabaseUnavailable(Exception):
    """The database cannot be read (missing, not ours, locked): the message says why."""


class NotFound(LookupError):
    """No such run (the message says which)."""


def _call(path: Path, fn: Callable[[Any], T]) -> T:
    try:
        return q.read(path, fn)
    except DatabaseError as exc:
        raise DatabaseUnavailable(str(exc)) from None


async def read(path: Path, fn: Callable[[Any], T]) -> T:
    """``fn(conn)`` on a fresh read-only connection in a worker thread.

    Raises DatabaseUnavailable, or NotFound when ``fn`` does.
    """
    return await anyio.to_thread.run_sync(_call, path, fn)


def stamp(db: Path, spool: Path) -> str:
    """Changes whenever the daemon commits (database/WAL size and mtime) or the spool changes.

    Costs a few ``stat`` calls and no SQL, so pages can poll it every 2 s.
    """
    parts = []
    for p in (db, db.with_name(db.name + "-wal"), spool):
        try:
            st = os.stat(p)
            parts.append(f"{st.st_size}.{st.st_mtime_ns}")
        except OSError:
            parts.append("-")
    return ":".join(parts)


class Health:
    """``runtally status --json`` for the overview's cards, refreshed at most every ``ttl`` s.

    Counting rows of a big database takes a while, so a stale report is served
    while a fresh one is collected in the background (``spawn`` starts it in
    the app's task group); only the first request waits.
    """

    def __init__(self, socket: Path, db: Path, spool: Path, *, ttl: float = 10.0) -> None:
        self.socket, self.db, self.spool, self.ttl = socket, db, spool, ttl
        self.report: dict[str, Any] | None = None
        self.at = 0.0
        self.generation = 0
        self._refreshing = False

    def _collect(self) -> dict[str, Any]:
        return msgspec.to_builtins(collect(self.socket, self.db, self.spool, timeout=0.5))

    async def refresh(self) -> dict[str, Any]:
        self._refreshing = True
        try:
            report = await anyio.to_thread.run_sync(self._collect)
        finally:
            self._refreshing = False
        if report != self.report:
            self.generation += 1
        self.report, self.at = report, time.monotonic()
        return report

    async def get(self, spawn: Callable[[Callable[[], Any]], None] | None) -> dict[str, Any]:
        if self.report is None or spawn is None:
            return await self.refresh()
        if time.monotonic() - self.at > self.ttl and not self._refreshing:
            self._refreshing = True
            spawn(self.refresh)
        return self.report
