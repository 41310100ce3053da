"""Is a run's process still alive?  /proc and the spool directory, nothing else.

A run knows the pid that sent its ``run_start`` (SO_PEERCRED) and that
process's start time (``/proc/<pid>/stat`` field 22, clock ticks since boot).
The process is gone when its ``/proc`` entry is, or when the pid now belongs
to a process that started at another time (the pid was reused).  Linux only;
elsewhere nothing is ever declared gone.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["pending_spool", "process_gone", "process_start"]

_PROC = Path("/proc")
#: A spool file's 8-byte magic: a file no longer than this holds no events.
_SPOOL_HEADER = 8


def process_start(pid: int | None) -> int | None:
    """``pid``'s start time in clock ticks since boot, or None (no such process, no /proc)."""
    if pid is None or pid <= 0:
        return None
    try:
        raw = (_PROC / str(pid) / "stat").read_bytes()
    except OSError:
        return None
    # Field 2, the command name, is in parentheses and may hold spaces and ')':
    # the fields after the last ')' start with field 3 (state), so 22 is [19].
    try:
        return int(raw[raw.rindex(b")") + 2 :].split()[19])
    except (ValueError, IndexError):
        return None


def process_gone(pid: int, start: int | None) -> bool:
    """True when ``pid`` no longer runs, or runs as another process (start time differs).

    ``start`` None: only the pid's existence is known, so only its absence counts.
    False where there is no /proc to look at (not Linux): nothing is declared dead.
    """
    if not _PROC.is_dir() or not (_PROC / "self").exists():
        return False
    now = process_start(pid)
    if now is None:
        return not (_PROC / str(pid)).exists()
    return start is not None and now != start


def pending_spool(spool_dir: Path, pid: int) -> bool:
    """True when a spool file written by ``pid`` still holds events (replay comes first).

    Spool files are named ``<unix-ms>-<host>-<pid>-<random>.spool``; the host
    may itself contain dashes, so the pid is the second field from the right.
    """
    suffix = f"-{pid}-"
    try:
        entries = list(os.scandir(spool_dir))
    except OSError:
        return False
    for entry in entries:
        name = entry.name
        if not name.endswith(".spool") or suffix not in name:
            continue
        parts = name.removesuffix(".spool").rsplit("-", 2)
        if len(parts) != 3 or parts[1] != str(pid):
            continue
        try:
            if entry.stat().st_size > _SPOOL_HEADER:
                return True
        except OSError:
            continue  # replayed and deleted meanwhile
    return False
