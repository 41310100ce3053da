"""Spool replay: apply the spool files of writers that are gone, then delete them.

A file is taken only if ``flock(LOCK_EX|LOCK_NB)`` succeeds — its writer is
gone — and the lock is held until the file is deleted or quarantined, so two
replays never race.  Every complete record goes through the writer, the same
idempotent path as the socket; the file is deleted only after the COMMIT of
its last record, synced to disk.  Killed between that COMMIT and the delete,
the next replay applies the file again and the uids make that a no-op.

A torn last record is normal (the writer died mid-append).  A CRC mismatch,
a bad header or a file whose owner the socket would refuse is moved to
``corrupt/`` after its good records are applied (none, for a refused owner);
both cases are written to ``audit_log``.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from ..protocol import EVENT_TYPES, Refusal, SpoolReader, decode_client_message
from ._log import logger
from ._store import AuditEntry, DeadLetter, Origin
from ._writer import Job, Writer

__all__ = ["ReplayStats", "Replayer", "spool_backlog"]

_READ_SIZE = 1 << 20
_JOB_EVENTS = 2000
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
    """The ``*.spool`` files waiting in a spool directory, oldest name first."""
    try:
        return sorted(p for p in spool_dir.iterdir() if p.name.endswith(".spool"))
    except OSError:
        return []


class Replayer:
    """Replays a spool directory through the writer, periodically and on request."""

    def __init__(
        self,
        spool_dir: Path,
        writer: Writer,
        *,
        owner_allowed: Callable[[int, int], bool],
        interval_s: float = 1.0,
    ) -> None:
        self.spool_dir = spool_dir
        self.corrupt_dir = spool_dir / "corrupt"
        self.writer = writer
        self.owner_allowed = owner_allowed
        self.interval_s = interval_s
        self._lock = trio.Lock()
        #: File name -> the last failure reported for it (reported once per reason).
        self._failed: dict[str, str] = {}
        self.total = ReplayStats()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Replay at start, then every ``interval_s`` (a gone writer's file within seconds)."""
        await self.replay_once()
        task_status.started()
        while True:
            await trio.sleep(self.interval_s)
            await self.replay_once()

    async def replay_once(self) -> ReplayStats:
        """Replay every file whose writer is gone, now; one replay at a time."""
        async with self._lock:
            stats = ReplayStats()
            for path in spool_backlog(self.spool_dir):
                try:
                    stats += await self._replay_file(path)
                except OSError as exc:
                    # One file we cannot read, delete or move must not stop the
                    # daemon (nor the other files): it stays, and is retried.
                    await self._report_failure(path, exc)
                else:
                    self._failed.pop(path.name, None)
            self._sweep_stale_tmp()
            self.total += stats
            return stats

    async def _report_failure(self, path: Path, exc: OSError) -> None:
        """Log and audit a file's failure once (per reason), not every round."""
        reason = f"{type(exc).__name__}: {exc}"
        if self._failed.get(path.name) == reason:
            return
        self._failed[path.name] = reason
        logger.error("cannot replay %s, will retry: %s", path.name, reason)
        await self.writer.submit(
            Job(
                audit=[
                    AuditEntry(
                        "spool_replay_failed",
                        f"{path.name} left in the spool, retried every round: {reason}",
                        level="error",
                        scope="replay",
                        data={"file": path.name, "reason": reason},
                    )
                ]
            )
        )

    async def _replay_file(self, path: Path) -> ReplayStats:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            return ReplayStats()  # vanished, or not ours to read
        with os.fdopen(fd, "rb", buffering=0) as fh:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return ReplayStats()  # its writer is alive
            if not path.exists():
                return ReplayStats()  # replayed and deleted by someone before we locked
            st = os.fstat(fd)
            owner = st.st_uid
            if not self.owner_allowed(owner, st.st_gid):
                await self._quarantine(path, f"owner uid {owner} is not allowed to emit", 0)
                return ReplayStats(quarantined=1)
            events, tail = await self._apply_records(path, fh)
            if tail is not None:
                await self._quarantine(path, tail, events)
                return ReplayStats(files=1, events=events, quarantined=1)
            replayed = Job(
                durable=True,  # synced before the unlink, even at synchronous=NORMAL
                audit=[
                    AuditEntry(
                        "spool_replayed",
                        f"replayed {events} events from {path.name}",
                        scope="replay",
                        data={"file": path.name, "events": events},
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
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            return ReplayStats(files=1, events=events)

    async def _apply_records(self, path: Path, fh) -> tuple[int, str | None]:
        """Submit every good record; return (events, corruption reason or None).

        Memory stays bounded whatever the file's size: a job is cut at
        ``_JOB_EVENTS`` records (refused ones included), at most ``_IN_FLIGHT``
        of them wait for their commit, and each is forgotten once committed.
        That is enough to keep the writer busy (one job commits while the next
        is decoded) without filling its whole queue budget with one file.
        """
        origin = Origin(f"spool:{path.name}")
        reader = SpoolReader()
        pending: collections.deque[Job] = collections.deque()
        job = Job(origin=origin)
        events = 0
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
                if job.cost >= _JOB_EVENTS:
                    await self._submit(job, pending)
                    job = Job(origin=origin)
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

    async def _quarantine(self, path: Path, reason: str, events: int) -> None:
        self.corrupt_dir.mkdir(mode=0o750, exist_ok=True)
        target = self.corrupt_dir / path.name
        os.replace(path, target)
        job = Job(
            audit=[
                AuditEntry(
                    "spool_quarantined",
                    f"{path.name} moved to corrupt/: {reason} ({events} good records applied)",
                    level="warning",
                    scope="replay",
                    data={"file": path.name, "reason": reason, "events": events},
                )
            ]
        )
        await self.writer.submit(job)
        await job.done.wait()

    def _sweep_stale_tmp(self) -> None:
        """Remove half-created files of writers killed before their rename."""
        now = time.time()
        try:
            candidates = [p for p in self.spool_dir.iterdir() if p.name.endswith(".tmp")]
        except OSError:
            return
        for path in candidates:
            try:
                if now - path.stat().st_mtime < _STALE_TMP_S:
                    continue
                with path.open("rb") as fh:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    path.unlink()
            except OSError:
                continue
