"""The spool directory as the daemon touches it: every operation relative to a checked fd.

The spool directory is writable by every pipeline user, so anything may be
in it: symlinks (to ``/etc/passwd``, to the database), FIFOs, sockets,
directories, a ``corrupt`` that points somewhere else.  Hence:

* the directory itself is opened ``O_NOFOLLOW|O_DIRECTORY`` and checked
  (``check_dir``) before anything in it is used: owned by the daemon's uid or
  root, never writable by every user (``o+w``);
* every name in it is looked at with ``lstat`` relative to that fd; only a
  regular file is ever opened, ``O_NONBLOCK|O_NOFOLLOW`` (no FIFO can block
  the open, no symlink is followed), and its ``fstat`` must be the file the
  ``lstat`` saw;
* quarantine renames relative to the spool fd and the fd of ``corrupt/``,
  which must be a real directory owned by the daemon and writable by nobody
  else (so only the daemon creates names in it), and never replaces a file
  already there (a free name is chosen instead).

All functions are blocking system calls: the daemon calls them from a worker
thread.  ``OSError`` (and ``UnsafeSpool``, a subclass) report what failed.

Lockless writers (the Node.js client: no ``flock`` without a native addon)
name their files ``<unix-ms>-<host>-<pid>-nolock.<start>.<random>.spool``;
``lockless_writer_alive`` is the rule that stands in for the lock
(docs/protocol.md, "Lockless writers").
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import stat
from pathlib import Path

from ..protocol import spool_file_host
from ._liveness import process_gone

__all__ = [
    "CORRUPT",
    "UnsafeSpool",
    "check_dir",
    "ensure_corrupt",
    "kind_of",
    "lockless_writer_alive",
    "open_dir",
    "open_regular",
    "quarantine",
    "same_file",
]

CORRUPT = "corrupt"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC
_KINDS = {
    stat.S_IFLNK: "symlink",
    stat.S_IFIFO: "FIFO",
    stat.S_IFSOCK: "socket",
    stat.S_IFDIR: "directory",
    stat.S_IFCHR: "character device",
    stat.S_IFBLK: "block device",
}


class UnsafeSpool(OSError):
    """The spool directory or its ``corrupt/`` may not be used; the message says why."""


def kind_of(st: os.stat_result) -> str:
    """``regular file``, ``symlink``, ``FIFO``, ... for an ``lstat`` result."""
    return _KINDS.get(stat.S_IFMT(st.st_mode), "regular file")


def check_dir(st: os.stat_result, what: str, *, others_may_write: bool = True) -> str | None:
    """Why a directory may not be used (None: it may).

    It must be a directory owned by the daemon's uid or root, and not
    writable by every user; ``others_may_write=False`` (``corrupt/``) also
    refuses a group-writable one and requires the daemon's own uid.
    """
    me = os.getuid()
    mode = stat.S_IMODE(st.st_mode)
    if not stat.S_ISDIR(st.st_mode):
        return f"{what} is a {kind_of(st)}, not a directory"
    owners = (me,) if not others_may_write else (me, 0)
    if st.st_uid not in owners:
        allowed = f"uid {me}" if not others_may_write else f"uid {me} or root"
        return f"{what} is owned by uid {st.st_uid}, not by the daemon ({allowed})"
    if mode & stat.S_IWOTH:
        return f"{what} is writable by every user (mode {mode:04o})"
    if not others_may_write and mode & stat.S_IWGRP:
        return f"{what} is writable by its group (mode {mode:04o})"
    return None


def open_dir(path: Path) -> int:
    """An fd of the spool directory itself (never through a symlink), checked.

    Raises FileNotFoundError when it does not exist, UnsafeSpool when
    ``check_dir`` refuses it.
    """
    try:
        fd = os.open(path, _DIR_FLAGS)
    except OSError as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise UnsafeSpool(f"spool directory {path} cannot be opened as a directory: {exc}") from exc
    problem = check_dir(os.fstat(fd), f"spool directory {path}")
    if problem is not None:
        os.close(fd)
        raise UnsafeSpool(problem)
    return fd


def open_regular(dir_fd: int, name: str) -> tuple[int | None, os.stat_result]:
    """Open ``name`` for reading only if it is a regular file; (fd or None, its lstat).

    Raises FileNotFoundError if it is gone.  Anything but a regular file is
    never opened: (None, lstat) tells the caller what it is.
    """
    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    if not stat.S_ISREG(st.st_mode):
        return None, st
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        # ELOOP: swapped for a symlink since the lstat; anything else: report it.
        return None, os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    opened = os.fstat(fd)
    if not stat.S_ISREG(opened.st_mode) or not same_file(opened, st):
        os.close(fd)
        return None, opened  # replaced between lstat and open: look again next round
    return fd, opened


def same_file(a: os.stat_result, b: os.stat_result) -> bool:
    """The same inode on the same device."""
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


#: A lockless writer's file name: its host, pid and start time (clock ticks, 0: unknown).
_LOCKLESS = re.compile(
    r"^[0-9]+-(?P<host>[A-Za-z0-9_.]+)-(?P<pid>[0-9]+)-nolock\.(?P<start>[0-9]+)\.[0-9A-Za-z]+\.spool$"
)


def spool_host() -> str:
    """This host's name as spool file names carry it (``protocol.spool_file_host``)."""
    try:
        return spool_file_host(socket.gethostname())
    except OSError:
        return spool_file_host("")


def lockless_writer_alive(
    name: str, st: os.stat_result, *, host: str, stale_s: float, now: float
) -> bool:
    """True while the lockless writer of spool file ``name`` may still append to it.

    False for a file of a flock writer (its lock decides).  A file named with
    this ``host`` belongs to a process this daemon can see: its writer is
    alive until its pid is gone or runs another process (``/proc`` start
    time, ``_liveness.process_gone``).  Where that cannot be seen (another
    host's name: a shared spool, a container; no ``/proc``), the writer
    counts as gone once the file's mtime is ``stale_s`` seconds old.
    """
    match = _LOCKLESS.match(name)
    if match is None:
        return False
    if match["host"] == host and os.path.isdir(f"/proc/{os.getpid()}"):
        start = int(match["start"]) or None
        return not process_gone(int(match["pid"]), start)
    return now - st.st_mtime < stale_s


def _corrupt_fd(dir_fd: int, mode: int) -> int:
    """The fd of ``corrupt/`` (created if missing), refused unless it is the daemon's own."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(CORRUPT, mode, dir_fd=dir_fd)
    try:
        fd = os.open(CORRUPT, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        raise UnsafeSpool(f"{CORRUPT}/ is not a real directory ({exc.strerror or exc})") from exc
    problem = check_dir(os.fstat(fd), f"{CORRUPT}/", others_may_write=False)
    if problem is not None:
        os.close(fd)
        raise UnsafeSpool(problem)
    return fd


def ensure_corrupt(dir_fd: int, *, mode: int = 0o700) -> None:
    """Create ``corrupt/`` (mode 0700) if missing; UnsafeSpool if it is not the daemon's own.

    Called at start-up, before any client may write to the spool: who creates
    ``corrupt/`` owns it, and a ``corrupt/`` of someone else's is refused.
    """
    os.close(_corrupt_fd(dir_fd, mode))


def quarantine(dir_fd: int, name: str, *, mode: int = 0o700) -> str:
    """Move entry ``name`` into ``corrupt/`` without following or replacing anything.

    Returns the name it got there (``name``, or ``name.1``, ``name.2`` ... when
    taken).  The rename moves the entry itself: a symlink stays a symlink, a
    FIFO is never opened.  Raises UnsafeSpool for an unusable ``corrupt/``.
    """
    corrupt = _corrupt_fd(dir_fd, mode)
    try:
        # Only the daemon can create names in corrupt/ (checked above), and it
        # quarantines one file at a time: a name found free stays free.
        for n in range(10_000):
            target = name if n == 0 else f"{name}.{n}"
            try:
                os.stat(target, dir_fd=corrupt, follow_symlinks=False)
            except FileNotFoundError:
                os.rename(name, target, src_dir_fd=dir_fd, dst_dir_fd=corrupt)
                return target
        raise UnsafeSpool(f"no free name for {name} in {CORRUPT}/")
    finally:
        os.close(corrupt)
