"""The client's own spool file (spool format v1), written ahead of the socket.

One file per process, ``<unix-ms>-<host>-<pid>-<random>.spool`` in the spool
directory, held under ``flock(LOCK_EX)`` for as long as it is open.  The
daemon's replayer only takes ``*.spool`` files it can lock with
``LOCK_EX|LOCK_NB``, so the file is created under a name that does not end in
``.spool``, locked, given its header, and only then renamed into place: the
replayer never sees a half-created file, and never a live one.

It is a write-ahead log: the Client appends every event here *before* it
writes it to the socket, so whatever kills the process (SIGKILL, the OOM
killer), the kernel releases the flock and the replayer applies what the
daemon had not committed (duplicates are no-ops: apply is idempotent by event
id).  Whenever every record in the file is acknowledged, the Client cuts it
back to its header (``truncate``, one ``ftruncate``).  A connection so busy
that its window never empties would grow the file for ever, so past a size
the file is *retired*: kept open and locked until the events sent so far are
all answered, then removed (``retire``/``drop_retired``), while new events go
to a fresh file.

Appends are one ``os.write`` of one record on an ``O_APPEND`` descriptor, with
no fsync (~1 us; the page cache survives a killed process, which is the
failure that matters here).  The file is synced (``sync``) at flush and exit
when it still holds events, and at most once a second while spooling
(``sync_if_due``), never per call.  Any ``OSError`` - an unwritable
directory, ENOSPC - drops the event with one warning per process: tracking
never raises into a pipeline (the Client counts what is lost and reports it).

Not thread-safe on its own: the Client's lock serialises every call.
"""

from __future__ import annotations

import _socket as socket  # the C module: socket.py costs a cron process ~2-3 ms of enum set-up
import errno
import fcntl
import os
import stat  # already loaded by os: free
import time
from collections import deque
from collections.abc import Callable, Iterable

from runtally.protocol import (
    MAX_FRAME,
    SPOOL_MAGIC,
    LocalProtocolError,
    encode_record,
    read_spool,
    spool_file_host,
)

from ._process import point_at_devnull
from ._unix import trusted_uids, untrusted_directory
from ._warn import warn, warn_once

TYPE_CHECKING = False  # not typing's
if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["SpoolWriter"]

FILE_MODE = 0o640  # group-readable: the daemon runs as another user in the same group
OWN_FILE_MODE = 0o600  # in a directory of our own: the daemon is this user (or root)
DIR_MODE = 0o700  # a directory the client creates is its own: nobody else's daemon reads it
#: After the spool could not be opened, wait this long before trying again
#: rather than paying the failing syscalls on every event.
REOPEN_DELAY_S = 1.0
#: While spooling, written records are synced at least this often (seconds).
SYNC_INTERVAL_S = 1.0


def _hostname() -> str:
    try:
        return spool_file_host(socket.gethostname())
    except OSError:
        return spool_file_host("")


def _write_all(fd: int, data: bytes) -> None:
    if os.write(fd, data) != len(data):
        raise OSError(errno.ENOSPC, "short write")


def _release(fd: int, path: str | None, *, unlink: bool) -> None:
    """Unlock and close a spool file, removing it first if ``unlink`` (still locked then)."""
    if unlink and path is not None:
        try:
            os.unlink(path)  # still locked: no replayer can be looking at it
        except OSError:
            pass
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    except OSError:
        pass
    try:
        os.close(fd)
    except OSError:
        pass


class _Untrusted(OSError):
    """The spool directory is not safe to write into (``untrusted_directory`` says why)."""


class SpoolWriter:
    """Appends encoded events to this process's spool file, opened on first use.

    Paths are kept as str: pathlib costs a cron process ~7 ms of imports, so
    ``directory`` and ``path`` make their ``Path`` only when asked.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        clock: Callable[[], float] = time.monotonic,
        trusted: frozenset[int] | None = None,
    ) -> None:
        self._dir = os.fspath(directory) or "."
        #: Who may own the directory (``trusted_uids``: root, this user, the daemon's).
        self._trusted = trusted_uids(None) if trusted is None else trusted
        self._clock = clock  # monotonic seconds, for the sync interval
        self._path: str | None = None  # the open file's
        self.records = 0  # records in the open file
        self.size = 0  # bytes in the open file, header included
        self.dropped = 0  # events lost because the spool was unusable
        self._fd: int | None = None
        self._detached = False  # see detach
        self._pid = os.getpid()  # the process that opened _fd and holds its lock
        self._retry_at = 0.0
        self._full = False  # the last open failed for want of space
        self.first_record_at = 0.0  # clock() when the first record since the header went in
        self._dirty = False  # written since the last sync
        self._synced_at = 0.0  # time.monotonic() of the last sync (or the open)
        #: Retired files: (tag, fd, path), oldest first; see ``retire``.
        self._retired: deque[tuple[int, int, str | None]] = deque()

    @property
    def directory(self) -> Path:
        """The spool directory."""
        from pathlib import Path  # see the class doc

        return Path(self._dir)

    @property
    def path(self) -> Path | None:
        """The open spool file; None while none is open."""
        from pathlib import Path  # see the class doc

        return None if self._path is None else Path(self._path)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown: nothing to report to
            pass

    # -- writing ---------------------------------------------------------------

    def append(self, payload: bytes) -> bool:
        """Append one event; False (and the event is dropped) if the spool is unusable."""
        fd = self._fd
        if fd is None or not 1 <= len(payload) <= MAX_FRAME:
            return self.append_many((payload,)) == 1  # opens the file, or refuses with a warning
        # Every event's path: one record, one write, none of append_many's lists.
        record = encode_record(payload)
        try:
            written = os.write(fd, record)
        except OSError as exc:
            return self._append_failed(0, exc)
        if written != len(record):
            return self._append_failed(written, OSError(errno.ENOSPC, "short write"))
        if not self.records:
            self.first_record_at = self._clock()
        self.records += 1
        self.size += written
        self._dirty = True
        return True

    def append_unrecorded(self, payload: bytes) -> bool:
        """Append one event's record to the open file, leaving this writer's own
        figures (records, size) as they are; False if no file is open.

        For a signal handler that interrupted this writer half-way (``Client``'s
        parked emits): one ``write`` on the ``O_APPEND`` descriptor keeps the
        records whole, and the figures are the interrupted code's to update.
        The event is appended again, counted, when its parked emit runs.
        """
        fd = self._fd
        if fd is None or self._pid != os.getpid():
            return False  # opening a file (and its flock) is no work for a handler
        record = encode_record(payload)
        try:
            return os.write(fd, record) == len(record)
        except OSError:
            return False

    def append_many(self, payloads: Iterable[bytes]) -> int:
        """Append events with one ``os.write``; returns how many were kept (all or none)."""
        payloads = list(payloads)  # read twice below if one is refused
        try:
            records = [encode_record(p) for p in payloads]
        except LocalProtocolError as exc:  # empty or over 1 MiB: the replayer would call it corrupt
            warn(f"not spooling an event: {exc}")
            records = [encode_record(p) for p in payloads if 1 <= len(p) <= MAX_FRAME]
        if not records:
            return 0
        fd = self._fd if self._fd is not None else self._open()
        if fd is None:
            self.dropped += len(records)
            return 0
        data = records[0] if len(records) == 1 else b"".join(records)
        try:
            written = os.write(fd, data)
        except OSError as exc:
            written, error = 0, exc
        else:
            if written == len(data):
                if not self.records:
                    self.first_record_at = self._clock()
                self.records += len(records)
                self.size += written
                self._dirty = True
                return len(records)
            error = OSError(errno.ENOSPC, "short write")
        self.dropped += len(records)
        self._warn_write(error)
        if written:
            self._undo_partial_write()
        return 0

    def _append_failed(self, written: int, error: OSError) -> bool:
        """One record's write failed (``written`` bytes of it went in): drop it, as append_many."""
        self.dropped += 1
        self._warn_write(error)
        if written:
            self._undo_partial_write()
        return False

    def _undo_partial_write(self) -> None:
        # A torn record followed by more records would make the file corrupt,
        # so cut it off; if even that fails, give the file to the replayer.
        try:
            os.ftruncate(self._fd, self.size)  # type: ignore[arg-type]
        except OSError:
            self.close()

    def _warn_write(self, error: OSError) -> None:
        warn_once(
            "spool-write",
            f"cannot write spool file {self._path}: {error}; events are being dropped",
        )

    # -- reading back (resend on reconnect) -----------------------------------

    def read_records(self) -> list[bytes] | None:
        """Every complete record in the open file, in order; None if unreadable."""
        if self._fd is None or self.records == 0:
            return []
        try:
            data = os.pread(self._fd, self.size, 0)
        except OSError as exc:
            warn(f"cannot read back spool file {self._path}: {exc}")
            return None
        records, tail = read_spool(data)
        if tail.state != "clean":
            return None
        return records

    def truncate(self) -> bool:
        """Cut the file back to its header: its records are all acknowledged."""
        if self._fd is None or self._detached:  # (detached: /dev/null says EINVAL)
            return True
        try:
            os.ftruncate(self._fd, len(SPOOL_MAGIC))
        except OSError as exc:
            warn(f"cannot truncate spool file {self._path}: {exc}")
            return False
        self.records = 0
        self.size = len(SPOOL_MAGIC)
        self._dirty = False  # nothing left worth syncing
        return True

    # -- durability ----------------------------------------------------------

    def sync(self) -> None:
        """fdatasync the open file if it holds unsynced records (flush, exit)."""
        if self._fd is None or not self._dirty or self.records == 0 or self._detached:
            return  # (detached: /dev/null, which has nothing to sync and says EINVAL)
        try:
            os.fdatasync(self._fd)
        except OSError as exc:
            warn_once("spool-sync", f"cannot sync spool file {self._path}: {exc}")
        self._dirty = False
        self._synced_at = self._clock()

    def sync_if_due(self) -> None:
        """While spooling: sync when the last sync is over SYNC_INTERVAL_S old."""
        if self._dirty and self._clock() - self._synced_at >= SYNC_INTERVAL_S:
            self.sync()

    # -- retiring a file whose records are still in flight ---------------------

    @property
    def retired(self) -> int:
        """Retired files still waiting for their events' acks."""
        return len(self._retired)

    def retire(self, tag: int) -> None:
        """Keep the open file (locked) until ``drop_retired`` says ``tag`` is answered.

        The next append opens a fresh file.  ``tag`` is the caller's marker of
        the last event in this file (the Client's send sequence number).
        """
        if self._fd is None:
            return
        self._retired.append((tag, self._fd, self._path))
        self._reset()

    def drop_retired(self, answered: Callable[[int], bool]) -> None:
        """Remove the retired files whose last event is ``answered(tag)``, oldest first."""
        while self._retired and answered(self._retired[0][0]):
            _, fd, path = self._retired.popleft()
            _release(fd, path, unlink=True)

    def release_retired(self) -> None:
        """Hand every retired file to the replayer (its events may be unacked)."""
        while self._retired:
            _, fd, path = self._retired.popleft()
            _release(fd, path, unlink=False)

    # -- lifecycle ---------------------------------------------------------------

    def close(self) -> None:
        """Release the file to the daemon's replayer (an empty file is removed)."""
        if self._pid != os.getpid():
            self.forget()  # a forked child never unlocks or removes the parent's file
            return
        self.release_retired()
        self.sync()  # the replayer may take it from here: make it survive a power loss
        fd, path, empty = self._fd, self._path, self.records == 0
        self._reset()
        if fd is not None:
            _release(fd, path, unlink=empty)

    def forget(self) -> None:
        """In a forked child: drop the parent's file without touching it.

        The flock belongs to the open file description shared with the parent,
        so ``LOCK_UN`` here would unlock the parent's file under it; closing
        our copy of the descriptor leaves the parent's lock in place.
        """
        fds = self._descriptors()
        self._retired.clear()
        self._reset()
        self._pid = os.getpid()
        self._retry_at = 0.0
        self.dropped = 0
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass

    def detach(self) -> None:
        """In a forked child, under a call that resumes there: the parent's files'
        descriptors point at /dev/null (``point_at_devnull``); ``forget`` closes
        them once that call is done."""
        point_at_devnull(self._descriptors())
        self._detached = True
        # No path either: nothing the call does may rename or unlink the parent's files.
        self._path = None
        self._retired = deque((tag, fd, None) for tag, fd, _ in self._retired)

    def _descriptors(self) -> list[int]:
        """Every descriptor this writer holds: the retired files' and the open one's."""
        fds = [fd for _, fd, _ in self._retired]
        if self._fd is not None:
            fds.append(self._fd)
        return fds

    def _reset(self) -> None:
        self._detached = False  # see detach
        self._fd = None
        self._path = None
        self.records = 0
        self.size = 0
        self._dirty = False

    def retry_now(self) -> None:
        """Try to open the spool at the next append whatever the reopen delay (flush, close)."""
        self._retry_at = 0.0

    def _space_back(self) -> bool:
        """After ENOSPC: the directory's filesystem has room again (one ``statvfs``)."""
        if not self._full:
            return False
        try:
            return os.statvfs(self._dir).f_bavail > 0
        except OSError:
            return False

    def _open(self) -> int | None:
        now = time.monotonic()
        # A full disk is retried as soon as it has room (one cheap syscall per
        # event), not after the delay: events made once space is back must land.
        if now < self._retry_at and not self._space_back():
            return None
        try:
            fd, path = self._create()
        except _Untrusted as exc:
            self._retry_at, self._full = now + REOPEN_DELAY_S, False
            warn_once(
                "spool-untrusted",
                f"not spooling to {self._dir}: {exc}; events are being dropped "
                "while the daemon is unreachable (and counted as lost)",
            )
            return None
        except OSError as exc:
            self._retry_at = now + REOPEN_DELAY_S
            self._full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
            warn_once(
                "spool-open",
                f"cannot create a spool file in {self._dir}: {exc}; "
                "events are being dropped while the daemon is unreachable",
            )
            return None
        self._fd, self._path, self._pid = fd, path, os.getpid()
        self.records, self.size = 0, len(SPOOL_MAGIC)
        self._synced_at = self._clock()
        return fd

    def _create(self) -> tuple[int, str]:
        self._make_directory()
        name = (
            f"{time.time_ns() // 1_000_000}-{_hostname()}-{os.getpid()}-{os.urandom(4).hex()}.spool"
        )
        final = os.path.join(self._dir, name)
        tmp = os.path.join(self._dir, f".{name}.tmp")
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC
        st = os.stat(self._dir)
        if not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), self._dir)
        # Anyone who may write the directory could delete or swap our file in it.
        if why := untrusted_directory(self._dir, st, self._trusted, shared=True):
            raise _Untrusted(why)
        mode = OWN_FILE_MODE if st.st_uid == os.getuid() else FILE_MODE
        fd = os.open(tmp, flags, mode)
        try:
            os.fchmod(fd, mode)  # whatever the umask: the daemon's group must read it
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            _write_all(fd, SPOOL_MAGIC)
            self._rename(tmp, final)
        except BaseException:
            os.close(fd)
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        return fd, final

    def _rename(self, tmp: str, final: str) -> None:
        """Publish the locked, headed file under its ``.spool`` name (a seam for tests)."""
        os.rename(tmp, final)

    def _make_directory(self) -> None:
        try:
            # Parents with the default mode, as Path.mkdir(parents=True) made them.
            os.makedirs(self._dir, mode=DIR_MODE)
        except FileExistsError:
            return
        try:
            os.chmod(self._dir, DIR_MODE)  # mkdir's mode is cut by the umask
        except OSError:
            pass
