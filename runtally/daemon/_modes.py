"""Who may read what the daemon writes: file modes for the database and its directories.

Two documented layouts (docs/operations.md, "Security model"):

* **under systemd** (started by a unit, socket-activated, or with a
  ``socket_group``): readers are the members of the daemon's group, so the
  database and its ``-wal``/``-shm`` are ``0640``, directories ``0750``;
* **started by hand**: only its user reads, so files are ``0600``,
  directories ``0700``.

The umask is set at start-up (``apply_umask``) so that everything the daemon
creates - the database, SQLite's side files (which copy the database's
mode), ``corrupt/`` - gets these modes, and the database is ``chmod``-ed at
every start (``restrict_database``), so a file created 0644 earlier is
closed too.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from ..config import Settings

__all__ = [
    "apply_umask",
    "database_mode",
    "group_access",
    "readable_by_others",
    "restrict_database",
]


def group_access(settings: Settings, *, activated: bool = False) -> bool:
    """Whether the daemon's group may read its files (the systemd layout)."""
    under_systemd = bool(os.environ.get("INVOCATION_ID"))  # set by systemd for every unit
    return activated or under_systemd or settings.socket_group is not None


def apply_umask(group: bool) -> int:
    """Add ``027`` (group) or ``077`` (owner only) to the process umask; the new umask."""
    wanted = 0o027 if group else 0o077
    old = os.umask(wanted)
    os.umask(old | wanted)
    return old | wanted


def database_mode(group: bool) -> int:
    """``0640`` under systemd, ``0600`` started by hand."""
    return 0o640 if group else 0o600


def restrict_database(db: Path, group: bool) -> None:
    """Take away what ``database_mode`` does not grant from the database and its side files."""
    allowed = database_mode(group)
    for path in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        with contextlib.suppress(OSError):  # absent, or not ours to change (root's file)
            mode = path.stat().st_mode & 0o777
            if mode & ~allowed:
                os.chmod(path, mode & allowed)


def readable_by_others(path: Path) -> bool:
    """The file's mode lets every local user read it."""
    try:
        return bool(path.stat().st_mode & 0o004)
    except OSError:
        return False
