"""The spool section of ``runtally status``: what waits in the spool directory for replay.

Files, bytes, files held by a running pipeline, and the oldest waiting
event's age (``spool_section``); read without ever blocking on a FIFO or
following a symlink.  Also used by the metrics endpoint.
"""

from __future__ import annotations

import fcntl
import os
import stat
import time
from pathlib import Path

import msgspec

from ..config import SPOOL_STALE_S
from ..daemon._spooldir import lockless_writer_alive, spool_host
from ..daemon._timefmt import iso_from_ms
from ..protocol import SPOOL_MAGIC, Event, SpoolReader, decode_client_message

__all__ = ["SpoolSection", "spool_section"]

_READ_CHUNK = 64 * 1024


class SpoolSection(msgspec.Struct, kw_only=True):
    """Spool files waiting for replay; a file beyond its 8-byte header holds events.

    A file whose writer is still alive (it holds the file's flock) is the
    write-ahead log of a running pipeline, not a backlog: it counts in
    ``live_files``, never in ``pending_files`` or the oldest event's age.
    """

    path: str
    files: int = 0
    pending_files: int = 0
    live_files: int = 0  # held by a running pipeline (its write-ahead spool)
    bytes: int = 0
    oldest_at: str | None = None  # the oldest waiting event's ts
    oldest_age_s: float | None = None
    max_age_s: float  # the limit asked for, seconds
    backing_up: bool = False  # oldest_age_s > max_age_s
    corrupt_files: int = 0  # quarantined in corrupt/
    error: str | None = None


#: What ``_waiting_since_ms`` answers for a file whose writer is alive.
_LIVE = -1


def _waiting_since_ms(path: Path, st: os.stat_result) -> int | None:
    """The ``ts`` of a spool file's first record, ``_LIVE`` while its writer holds
    it, or None (no record, unreadable, replaced since the directory listing).

    The writer holds ``flock(LOCK_EX)`` for as long as it lives (DESIGN "Spool
    format v1"); a shared lock that cannot be had means it is alive.  The
    lock, when had, is let go at once, so the replayer misses at most a round.
    A lockless writer (the Node client) is judged by the replayer's own rule,
    ``_spooldir.lockless_writer_alive``: what it would not replay is no backlog.
    """
    reader = SpoolReader()
    try:
        # O_NONBLOCK|O_NOFOLLOW: swapped for a FIFO or a symlink since the stat,
        # it neither blocks nor is followed.
        flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC
        with os.fdopen(os.open(path, flags), "rb") as fh:
            now = os.fstat(fh.fileno())
            if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                return None
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return _LIVE
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
            if lockless_writer_alive(
                path.name, now, host=spool_host(), stale_s=SPOOL_STALE_S, now=time.time()
            ):
                return _LIVE
            while not (records := reader.records()) and reader.corrupt is None:
                chunk = fh.read(_READ_CHUNK)
                if not chunk:
                    return None
                reader.receive_data(chunk)
    except OSError:
        return None
    if not records:
        return None
    message = decode_client_message(records[0])
    return message.ts if isinstance(message, Event) else None


def _name_ms(path: Path) -> int | None:
    head = path.name.split("-", 1)[0]
    return int(head) if head.isdigit() else None


def spool_section(spool_dir: Path, now: float, max_age: float) -> SpoolSection:
    """What waits in the spool directory: files, bytes, the oldest event and its age (s)."""
    out = SpoolSection(path=str(spool_dir), max_age_s=max_age)
    try:
        entries = list(os.scandir(spool_dir))
    except FileNotFoundError:
        return out  # created by the daemon or the first client that spools
    except OSError as exc:
        out.error = f"cannot list {spool_dir}: {exc.strerror or exc}"
        return out
    oldest_ms: int | None = None
    for entry in entries:
        if entry.name == "corrupt" and entry.is_dir(follow_symlinks=False):
            try:
                out.corrupt_files = sum(1 for _ in os.scandir(entry.path))
            except OSError:
                pass
            continue
        if not entry.name.endswith(".spool"):
            continue
        try:
            # Never through a symlink, never a FIFO (opening one would block):
            # the daemon moves such entries aside, they are no backlog.
            st = entry.stat(follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode):
                continue
        except OSError:
            continue  # replayed and deleted meanwhile
        out.files += 1
        out.bytes += st.st_size
        if st.st_size <= len(SPOOL_MAGIC):
            continue  # only a header: a live client's empty spool
        path = Path(entry.path)
        first = _waiting_since_ms(path, st)
        if first is _LIVE:
            out.live_files += 1
            continue
        out.pending_files += 1
        ms = first or _name_ms(path) or int(st.st_mtime * 1000)
        oldest_ms = ms if oldest_ms is None else min(oldest_ms, ms)
    if oldest_ms is not None:
        out.oldest_at = iso_from_ms(oldest_ms)
        out.oldest_age_s = round(max(0.0, now - oldest_ms / 1000), 3)
        out.backing_up = out.oldest_age_s > max_age
    return out
