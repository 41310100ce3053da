"""Spool replay: apply the spool files of writers that are gone, then delete them.

A file is taken only if ``flock(LOCK_EX|LOCK_NB)`` succeeds — its writer is
gone — and the lock is held until the file is deleted or quarantined, so two
replays never race.  A lockless writer's file (the Node.js client's,
``...-nolock.<start>.<random>.spool``) is taken only once that writer's
process is gone as well (``_spooldir.lockless_writer_alive``).

Every complete record goes through the writer, the same idempotent path as
the socket; the file is deleted only after the COMMIT of its last record,
synced to disk.  Killed between that COMMIT and the delete, the next replay
applies the file again and the uids make that a no-op.

A torn last record is normal (the writer died mid-append).  A CRC mismatch,
a bad header or a file whose owner the socket would refuse is moved to
``corrupt/`` after its good records are applied (none, for a refused owner);
both cases are written to ``audit_log``.

Nothing in the directory is trusted (``_spooldir``): the directory is
checked and opened once per pass, every name is used relative to that fd,
only regular files are opened, and anything else (a symlink, a FIFO, a
directory named ``*.spool``) is moved to ``corrupt/`` unopened or, if it
cannot be moved, audited once and skipped.

Names are not trusted either: a name that is not UTF-8 (``\\xff.spool``) or
holds control characters is shown as ``\\xNN`` (``_text.clean_name``) in the
log, the audit rows and the origin of its events, and its file is replayed
or quarantined like any other.  A file whose events are applied but that
cannot be deleted or moved is not applied again every round: only its
removal is retried (``events_committed`` counts its events once).

``corrupt/`` is created at start, before any client can, so that a member of
the spool's group cannot create it first and so disable quarantine; when it
cannot be used, ``quarantine_problem`` says why (``status`` shows it).
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from .._text import clean_name
from ..protocol import EVENT_TYPES, Refusal, SpoolReader, decode_client_message
from ._log import logger
from ._spooldir import (
    CORRUPT,
    UnsafeSpool,
    ensure_corrupt,
    kind_of,
    lockless_writer_alive,
    open_dir,
    open_regular,
    quarantine,
    same_file,
    spool_host,
)
from ._store import AuditEntry, DeadLetter, Origin
from ._writer import Job, Writer

__all__ = ["ReplayStats", "Replayer", "spool_backlog"]

#: Bytes read from a spool file at once (~1,000 records): what a read holds
#: (the chunk, its records, their decoded events) stays small next to the
#: writer's queue; bigger reads made replay no faster and the daemon's peak
#: RSS ~2 MB larger (issue 17).
_READ_SIZE = 256 << 10
_JOB_EVENTS = 2000
#: And at this many bytes of records: ~4,000 ordinary events, but only two of
#: 1 MiB (MAX_FRAME), so a file of big events is held a few MiB at a time.
_JOB_BYTES = 2 << 20
_IN_FLIGHT = 3
_STALE_TMP_S = 60.0


@dataclass(slots=True)
class ReplayStats:
    """What replays did: files replayed (deleted), events applied, files quarantined."""

    files: int = 0
    events: int = 0
    quarantined: int = 0

    def __iadd__(self, other: ReplayStats) -> ReplayStats:
        self.files += other.files
        self.events += other.events
        self.quarantined += other.quarantined
        return self


def spool_backlog(spool_dir: Path) -> list[Path]:
    """The regular ``*.spool`` files waiting in a spool directory, oldest name first.

    Symlinks, FIFOs and other odd entries are not a backlog: the replayer
    moves them to ``corrupt/`` unopened.
    """
    try:
        with os.scandir(spool_dir) as entries:
            return sorted(
                Path(e.path)
                for e in entries
                if e.name.endswith(".spool") and e.is_file(follow_symlinks=False)
            )
    except OSError:
        return []


class Replayer:
    """Replays a spool directory through the writer, periodically and on request.

    ``problem`` is why the directory itself is refused (its owner or mode,
    see ``_spooldir.check_dir``), None while it is usable: nothing is
    replayed from a refused directory.
    """

    def __init__(
        self,
        spool_dir: Path,
        writer: Writer,
        *,
        owner_allowed: Callable[[int, int], bool],
        interval_s: float = 1.0,
        stale_s: float = 3600.0,
    ) -> None:
        self.spool_dir = spool_dir
        self.corrupt_dir = spool_dir / CORRUPT
        self.writer = writer
        self.owner_allowed = owner_allowed
        self.interval_s = interval_s
        #: Seconds unchanged after which a lockless file whose writer this
        #: daemon cannot see (another host's name) is taken as abandoned.
        self.stale_s = stale_s
        self._host = spool_host()
        self.problem: str | None = None
        self._lock = trio.Lock()
        #: File name -> the last failure reported for it (reported once per reason).
        self._failed: dict[str, str] = {}
        #: File name -> (its identity, events applied, corruption or None) for a
        #: file applied in full but not yet deleted or moved: not applied again.
        self._applied: dict[str, tuple[tuple[int, ...], int, str | None]] = {}
        #: Why bad files cannot be moved to corrupt/ (status shows it), else None.
        self.quarantine_problem: str | None = None
        #: Odd entries (name, inode) that could not be moved: audited once, then skipped.
        self._skipped: set[tuple[str, int]] = set()
        self.total = ReplayStats()
        #: Set once the start-up pass is done (the daemon is READY before it is:
        #: a big spool must not delay start-up).
        self.first_pass_done = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Replay at start, then every ``interval_s`` (a gone writer's file within seconds)."""
        await self.replay_once()
        self.first_pass_done.set()
        task_status.started()
        while True:
            await trio.sleep(self.interval_s)
            await self.replay_once()

    def prepare_corrupt(self) -> None:
        """Create ``corrupt/`` if the spool is usable; note why it cannot be used.

        The daemon calls it at start-up, before it serves anyone (see the
        module doc).  A mkdir and an open of directories: fine in the loop's
        thread, like ``open_dir`` in ``replay_once``.
        """
        try:
            dir_fd = open_dir(self.spool_dir)
        except OSError:
            return  # missing or refused: replay_once reports it
        try:
            ensure_corrupt(dir_fd)
        except OSError as exc:
            self.quarantine_problem = str(exc)
            logger.error("bad spool files cannot be quarantined: %s", clean_name(str(exc)))
        finally:
            os.close(dir_fd)

    async def replay_once(self) -> ReplayStats:
        """Replay every file whose writer is gone, now; one replay at a time.

        The directory is checked first, every time (``problem``).
        """
        async with self._lock:
            stats = ReplayStats()
            started = time.monotonic()
            try:
                # In the loop's thread: O_DIRECTORY never blocks, even on a FIFO.
                dir_fd = open_dir(self.spool_dir)
            except FileNotFoundError:
                self.problem = None
                return stats  # created by the daemon or the first client that spools
            except OSError as exc:
                await self._refuse_dir(str(exc))
                return stats
            self.problem = None
            try:
                names = sorted(os.listdir(dir_fd))
                for name in names:
                    if not name.endswith(".spool"):
                        continue
                    try:
                        stats += await self._replay_file(dir_fd, name)
                    except OSError as exc:
                        # One file we cannot read, delete or move must not stop the
                        # daemon (nor the other files): it stays, and is retried.
                        await self._report_failure(name, exc)
                    else:
                        self._failed.pop(name, None)
                for gone in self._applied.keys() - set(names):
                    del self._applied[gone]
                stats += await self._sweep_tmp(dir_fd, [n for n in names if n.endswith(".tmp")])
            finally:
                os.close(dir_fd)
            self.total += stats
            if stats.files or stats.quarantined:
                s = "" if stats.files == 1 else "s"
                logger.info(
                    "replayed %d spool file%s, %s events (%d quarantined) in %.3f s",
                    stats.files,
                    s,
                    f"{stats.events:,}",
                    stats.quarantined,
                    time.monotonic() - started,
                )
            return stats

    async def _refuse_dir(self, reason: str) -> None:
        """Replay nothing from an unsafe directory; log and audit it once per reason."""
        if self.problem == reason:
            return
        self.problem = reason
        logger.error("not replaying the spool: %s", clean_name(reason))
        await self._audit(
            "spool_dir_refused",
            f"nothing is replayed from the spool: {reason}",
            "error",
            {"dir": str(self.spool_dir), "reason": reason},
        )

    async def _audit(self, event: str, message: str, level: Any, data: Any) -> None:
        job = Job(audit=[AuditEntry(event, message, level=level, scope="replay", data=data)])
        await self.writer.submit(job)
        await job.done.wait()

    async def _report_failure(self, name: str, exc: OSError) -> None:
        """Log and audit a file's failure once (per reason), not every round."""
        reason = clean_name(f"{type(exc).__name__}: {exc}")
        if self._failed.get(name) == reason:
            return
        self._failed[name] = reason
        shown = clean_name(name)
        logger.error("cannot replay %s, will retry: %s", shown, reason)
        await self.writer.submit(
            Job(
                audit=[
                    AuditEntry(
                        "spool_replay_failed",
                        f"{shown} left in the spool, retried every round: {reason}",
                        level="error",
                        scope="replay",
                        data={"file": shown, "reason": reason},
                    )
                ]
            )
        )

    async def _odd_entry(self, dir_fd: int, name: str, st: os.stat_result) -> ReplayStats:
        """A symlink, FIFO, device, socket or directory: moved to corrupt/ unopened, or skipped.

        Either way it is audited once; it is never read.
        """
        if stat.S_ISREG(st.st_mode):
            return ReplayStats()  # a regular file swapped in meanwhile: next round
        key = (name, st.st_ino)
        if key in self._skipped:
            return ReplayStats()
        reason = f"a {kind_of(st)}, not a regular file (never opened)"
        try:
            await self._quarantine(dir_fd, name, reason, 0)
        except OSError as exc:
            self._skipped.add(key)
            shown, error = clean_name(name), clean_name(str(exc))
            logger.warning("skipping %s in the spool: %s; cannot move it: %s", shown, reason, error)
            await self._audit(
                "spool_skipped",
                f"{shown} skipped: {reason}; cannot move it to corrupt/: {error}",
                "warning",
                {"file": shown, "reason": reason, "error": error},
            )
            return ReplayStats()
        return ReplayStats(quarantined=1)

    async def _replay_file(self, dir_fd: int, name: str) -> ReplayStats:
        try:
            fd, st = await trio.to_thread.run_sync(open_regular, dir_fd, name)
        except FileNotFoundError:
            return ReplayStats()  # vanished
        if fd is None:
            return await self._odd_entry(dir_fd, name, st)
        with os.fdopen(fd, "rb", buffering=0) as fh:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return ReplayStats()  # its writer is alive
            if not _still_there(dir_fd, name, st):
                return ReplayStats()  # replayed and deleted by someone before we locked
            alive = lockless_writer_alive(
                name, st, host=self._host, stale_s=self.stale_s, now=time.time()
            )
            if alive:
                return ReplayStats()  # a lockless (Node.js) writer that is still running
            owner = st.st_uid
            if not self.owner_allowed(owner, st.st_gid):
                await self._quarantine(dir_fd, name, f"owner uid {owner} is not allowed to emit", 0)
                return ReplayStats(quarantined=1)
            # Applied on an earlier round but not removed (corrupt/ or the
            # unlink failed): only the removal is retried, so its events are
            # neither applied nor counted again every round.
            ident = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            earlier = self._applied.get(name)
            if earlier is not None and earlier[0] == ident:
                _, events, tail = earlier
                fresh = False
            else:
                events, tail = await self._apply_records(name, fh)
                self._applied[name] = (ident, events, tail)
                fresh = True
            if tail is not None:
                await self._quarantine(dir_fd, name, tail, events)
                del self._applied[name]
                return ReplayStats(files=1, events=events, quarantined=1)
            if fresh:
                await self._replayed(name, events)
            if _still_there(dir_fd, name, st):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=dir_fd)
            del self._applied[name]
            return ReplayStats(files=1, events=events)

    async def _replayed(self, name: str, events: int) -> None:
        """Commit the ``spool_replayed`` row, durably, before the file is deleted."""
        shown = clean_name(name)
        replayed = Job(
            durable=True,  # synced before the unlink, even at synchronous=NORMAL
            audit=[
                AuditEntry(
                    "spool_replayed",
                    f"replayed {events} events from {shown}",
                    scope="replay",
                    data={"file": shown, "events": events},
                )
            ],
        )
        await self.writer.submit(replayed)
        # The audit row is committed before the file goes: a kill at any
        # point after the unlink cannot lose it (a kill before it replays
        # the file again, a no-op but for a second row).  Its commit is
        # durable (fsynced, whatever ``synchronous``), and the fsync of
        # the WAL covers the file's events committed before it: a power
        # loss after the unlink cannot lose them either.
        await replayed.done.wait()

    async def _apply_records(self, name: str, fh: Any) -> tuple[int, str | None]:
        """Submit every good record; return (events, corruption reason or None).

        Memory stays bounded whatever the file's size and its records' sizes:
        a job is cut at ``_JOB_EVENTS`` records (refused ones included) or
        ``_JOB_BYTES`` of them, at most ``_IN_FLIGHT`` of them wait for their
        commit, and each is forgotten once committed.
        That is enough to keep the writer busy (one job commits while the next
        is decoded) without filling its whole queue budget with one file.
        """
        origin = Origin(f"spool:{clean_name(name)}")
        reader = SpoolReader()
        pending: collections.deque[Job] = collections.deque()
        job = Job(origin=origin)
        events = job_bytes = 0
        # Reads go to a worker thread: a big or slow file must not stall the loop.
        while chunk := await trio.to_thread.run_sync(fh.read, _READ_SIZE):
            reader.receive_data(chunk)
            for record in reader.records():
                message = decode_client_message(record)
                if isinstance(message, Refusal) or message.__struct_config__.tag not in EVENT_TYPES:
                    reason = (
                        message.reason
                        if isinstance(message, Refusal)
                        else ("not an event: control messages do not belong in a spool")
                    )
                    event_id = message.event_id if isinstance(message, Refusal) else None
                    job.dead_letters.append(DeadLetter(record, reason, event_id, origin))
                else:
                    job.events.append(message)
                    job.frames.append(record)
                    events += 1
                job_bytes += len(record)
                if job.cost >= _JOB_EVENTS or job_bytes >= _JOB_BYTES:
                    await self._submit(job, pending)
                    job = Job(origin=origin)
                    job_bytes = 0
            if reader.corrupt is not None:
                break
        if not job.empty:
            await self._submit(job, pending)
        # The file may go only after the COMMIT of its last record.
        for submitted in pending:
            await submitted.done.wait()
        tail = reader.finish()
        return events, (tail.reason if tail.state == "corrupt" else None)

    async def _submit(self, job: Job, pending: collections.deque[Job]) -> None:
        """Queue a job; keep at most ``_IN_FLIGHT`` of this file's jobs uncommitted."""
        await self.writer.submit(job)
        pending.append(job)
        while pending and (len(pending) > _IN_FLIGHT or pending[0].done.is_set()):
            await pending[0].done.wait()
            pending.popleft()

    async def _quarantine(self, dir_fd: int, name: str, reason: str, events: int) -> None:
        """Move ``name`` to corrupt/ (see ``_spooldir.quarantine``), then audit it.

        An unusable ``corrupt/`` sets ``quarantine_problem`` (a move that works clears it).
        """
        try:
            target = await trio.to_thread.run_sync(quarantine, dir_fd, name)
        except UnsafeSpool as exc:
            self.quarantine_problem = str(exc)
            raise
        self.quarantine_problem = None
        shown, target, reason = clean_name(name), clean_name(target), clean_name(reason)
        await self._audit(
            "spool_quarantined",
            f"{shown} moved to corrupt/{target}: {reason} ({events} good records applied)",
            "warning",
            {"file": shown, "reason": reason, "events": events, "moved_to": target},
        )

    async def _sweep_tmp(self, dir_fd: int, names: list[str]) -> ReplayStats:
        """Remove half-created files of writers killed before their rename; odd ones aside."""
        stats = ReplayStats()
        for name in names:
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                if not stat.S_ISREG(st.st_mode):
                    stats += await self._odd_entry(dir_fd, name, st)
                elif time.time() - st.st_mtime >= _STALE_TMP_S:
                    await trio.to_thread.run_sync(_remove_stale, dir_fd, name)
            except OSError:
                continue
        return stats


def _still_there(dir_fd: int, name: str, st: os.stat_result) -> bool:
    """``name`` still names the file we opened (not deleted, not replaced)."""
    try:
        return same_file(os.stat(name, dir_fd=dir_fd, follow_symlinks=False), st)
    except FileNotFoundError:
        return False


def _remove_stale(dir_fd: int, name: str) -> None:
    """Unlink a stale ``.tmp`` file if no writer holds its lock (blocking: a worker thread)."""
    fd, st = open_regular(dir_fd, name)
    if fd is None:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if _still_there(dir_fd, name, st):
            os.unlink(name, dir_fd=dir_fd)
    finally:
        os.close(fd)
