"""The one writer: takes whatever is queued, commits it in one transaction, then acks.

Connections and the spool replayer hand the writer ``Job``s; the writer is the
only task that touches the Store.  Each loop it takes every job queued (one
event or thousands), applies them in one transaction in a worker thread, and
only after COMMIT sets each job's ``done`` — so an ack can never precede its
commit.  The queue is bounded by a budget of events and one of frame bytes
(events may be up to 1 MiB each): when either is spent, ``submit`` blocks,
the connection stops reading its socket, and the clients' own timeouts push
them to their spools (backpressure; memory stays flat).

A commit that fails because the database is locked, the disk is full or I/O
failed (StoreBusy) is retried with backoff, nothing acked meanwhile.  A batch
that fails for any other reason is split job by job, event by event (``_batch``),
so one unappliable event is dead-lettered instead of wedging everyone.  When not even
a dead letter can be written, the fault is the database's, not the events'
(read-only, corrupt): the connection is reopened (which also follows a file
replaced underneath) and the batch retried, nothing acked and nothing
dead-lettered, so the clients keep every event (in their windows, then their
spools).  Before every commit the store checks that the file at its path is
still the one it opened (a restored backup, a deleted ``-wal``) and reopens
it if not, so no ack goes into an orphaned inode.

Bounds, so that the daemon never stops serving without saying so:

* ``heartbeat`` (what the systemd watchdog feeds on) moves only on a commit or
  an idle queue, never on a retry: a writer that cannot commit stops the pings;
* failing for ``wedged_exit_s`` in a row, the writer gives up: ``wedged`` says
  why and the daemon exits non-zero, for systemd to restart it;
* after ``request_stop`` (SIGTERM) a failing commit is retried for at most
  ``stop_timeout_s``, then given up: unacked events stay with the clients.

Between batches (``_upkeep``), at most every ``checkpoint_interval_s``: the
WAL is checkpointed (PASSIVE, then TRUNCATE when nothing pins it), parked
events older than ``parked_max_age_s`` go to ``dead_letters``, and the figures
``status`` reports are refreshed.  SQLite's own automatic checkpoint is off:
it would run inside the COMMIT a client waits on (the p99 of its flush).
Under continuous load, where the queue is never idle, the writer runs a
PASSIVE checkpoint after a batch's acks are released, at most every
``_BUSY_CHECKPOINT_S``.
"""

from __future__ import annotations

import math
import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import trio

from ..errors import RuntallyError
from ._batch import DatabaseBroken as _DatabaseBroken
from ._batch import apply_jobs
from ._job import Job
from ._latency import LatencyHistogram
from ._log import logger
from ._store import ApplyError, Store, StoreBusy

__all__ = ["Job", "Writer"]

_T = TypeVar("_T")

#: Raw frame bytes queued at most, whatever the event budget: events can be
#: up to 1 MiB each, so 5,000 of them could otherwise hold gigabytes.  Typical
#: events (~300 B) reach the event budget long before this.
_MAX_QUEUE_BYTES = 8 << 20
#: Events per transaction at most: a bigger batch commits no faster, but holds
#: its decoded events (~0.9 kB each) in memory longer and delays its acks.
_MAX_BATCH_EVENTS = 5_000
_BACKOFF_FIRST_S = 0.05
_BACKOFF_MAX_S = 2.0
#: Between retries of a database that refuses even a dead letter (read-only,
#: corrupt): an operator has to act, so hammering it buys nothing.
_BROKEN_BACKOFF_MAX_S = 30.0
#: Under continuous load the queue is never idle: upkeep without the
#: checkpoint (expiry, figures) still runs this often.
_BUSY_UPKEEP_S = 60.0
#: Under continuous load: a PASSIVE checkpoint between batches at most this
#: often (seconds), so that the WAL stays small without the automatic one.
_BUSY_CHECKPOINT_S = 1.0
#: A batch this small is committed in the event loop's thread (``_commit_inline``).
_INLINE_MAX_EVENTS = 256


class _GiveUp(Exception):
    """Stop retrying: wedged too long, or a stop was requested while failing."""


class Writer:
    """Owns the Store; everything else talks to it through ``submit``.

    ``tick_s``: the longest the loop waits for a job before counting the queue
    idle.  ``broken_backoff_max_s``: the longest wait between retries of a
    database that refuses even a dead letter (tests make it short).  The other
    bounds are described in the module docstring (seconds, all of them).
    """

    def __init__(
        self,
        store: Store,
        *,
        max_queue_events: int = 2_000,
        max_queue_bytes: int = _MAX_QUEUE_BYTES,
        tick_s: float = 1.0,
        broken_backoff_max_s: float = _BROKEN_BACKOFF_MAX_S,
        wedged_exit_s: float = 60.0,
        stop_timeout_s: float = 5.0,
        checkpoint_interval_s: float = 5.0,
        parked_max_age_s: float = 7 * 86400.0,
    ):
        self.store = store
        store.set_autocheckpoint(0)  # never inside a commit: see the module docstring
        self._last_checkpoint = -math.inf
        self._budget = max_queue_events
        self._max_bytes = max_queue_bytes
        self._tick_s = tick_s
        self._broken_backoff_max_s = broken_backoff_max_s
        self._wedged_exit_s = wedged_exit_s
        self._stop_timeout_s = stop_timeout_s
        self._checkpoint_interval_s = checkpoint_interval_s
        self._parked_max_age_s = parked_max_age_s
        self._send, self._recv = trio.open_memory_channel[Job](math.inf)
        self._space = trio.Event()
        self._stop = trio.Event()
        self._stop_at: float | None = None
        self._last_upkeep = -math.inf
        #: Budget units queued and not yet committed (see ``Job.cost``).
        self.queued_events = 0
        self.queued_bytes = 0  # raw frames of the queued events
        #: Events in the database since start (refused ones not counted).
        self.events_committed = 0
        #: Wall clock of the last COMMIT, in ms since the epoch (None before the first).
        self.last_commit_ms: int | None = None
        #: trio.current_time() when commits began to fail and be retried, else None.
        self.busy_since: float | None = None
        #: Why they fail (the sqlite message), while ``busy_since`` is set.
        self.busy_reason = ""
        #: trio.current_time() of the writer's last progress: a commit, or an idle
        #: queue (for the watchdog; a retry is no progress).
        self.heartbeat = trio.current_time()
        #: Commit attempts so far (successful or not).
        self.attempts = 0
        #: Times the connection was reopened (permanent error, file replaced).
        self.reopened = 0
        #: Why the writer gave up for good (the daemon exits non-zero), else None.
        self.wedged: str | None = None
        #: True once the writer stopped retrying (wedged, or stopped while failing).
        self.gave_up = False
        #: Parked events now, their bytes, the oldest's parked_at (ms), and how
        #: many expired into dead_letters since start.
        self.parked = store.parked
        self.parked_bytes = store.parked_bytes
        self.parked_oldest_ms: int | None = store.parked_oldest_ms()
        self.parked_expired = 0
        #: Seconds each ``_commit`` took, retries included (the status reply's histogram).
        self.commit_latency = LatencyHistogram()

    # -- producers ------------------------------------------------------------------

    async def submit(self, job: Job) -> None:
        """Queue a job, waiting while the event or byte budget is spent (backpressure)."""
        job.queued_cost = cost = job.cost
        job.nbytes = size = sum(map(len, job.frames))
        while self.queued_events and (
            self.queued_events + cost > self._budget or self.queued_bytes + size > self._max_bytes
        ):
            await self._space.wait()
        self.queued_events += cost
        self.queued_bytes += size
        self._send.send_nowait(job)

    def close(self) -> None:
        """No more jobs: ``run`` returns once everything queued is committed."""
        self._send.close()

    def request_stop(self) -> None:
        """A stop is under way: a failing commit is retried ``stop_timeout_s`` more at most."""
        if not self._stop.is_set():
            self._stop_at = trio.current_time()
            self._stop.set()

    # -- the loop -------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Commit batches until ``close`` and everything queued before it is committed.

        Returns early, with ``gave_up`` set, when it stops retrying (see the
        module docstring); what it had not committed is never acked.
        """
        task_status.started()
        while True:
            first: Job | None = None
            with trio.move_on_after(self._tick_s):
                try:
                    first = await self._recv.receive()
                except trio.EndOfChannel:
                    return
            if first is None:
                self.heartbeat = trio.current_time()  # an idle queue is a healthy one
                await self._upkeep(idle=True)
                continue
            jobs = [first]
            size = len(first.events)
            while size < _MAX_BATCH_EVENTS:
                try:
                    job = self._recv.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                jobs.append(job)
                size += len(job.events)
            try:
                await self._commit(jobs)
            except _GiveUp:
                self.gave_up = True
                return
            self.heartbeat = now = trio.current_time()
            if now - self._last_checkpoint >= _BUSY_CHECKPOINT_S:
                # The batch's acks are on their way (``done`` is set); the next
                # batch gathers meanwhile.
                self._last_checkpoint = now
                await trio.to_thread.run_sync(self.store.checkpoint_passive)
            if now - self._last_upkeep >= _BUSY_UPKEEP_S:
                await self._upkeep(idle=False)

    def _commit_inline(self, jobs: list[Job]) -> bool:
        """Try a small batch right here in the event loop's thread; True if committed.

        A worker thread costs a handoff each way (two wake-ups, ~0.1-0.2 ms on
        a busy 2-core machine, more than applying a few dozen events), so a
        batch of at most ``_INLINE_MAX_EVENTS`` events, with no chore, is
        applied and committed here, with the busy timeout at 0: a lock held by
        another process fails it at once instead of blocking the loop, and
        then (or on any other failure) ``_commit`` retries it in a worker
        thread as before.  The COMMIT's fsync (synchronous=FULL) is the one
        wait left in the loop: ~0.05-0.2 ms on this disk.
        """
        if sum(len(job.events) for job in jobs) > _INLINE_MAX_EVENTS or any(
            job.task is not None for job in jobs
        ):
            return False
        self.attempts += 1
        self.store.busy_wait(False)  # back on in ``_in_thread`` (a PRAGMA only on a change)
        try:
            self._apply_all(jobs)
        except (StoreBusy, _DatabaseBroken, sqlite3.Error, RuntallyError):
            return False
        return True

    async def _commit(self, jobs: list[Job]) -> None:
        started = time.perf_counter()
        if self.busy_since is None and self._commit_inline(jobs):
            self._committed(jobs, started)
            return
        with trio.CancelScope(shield=True):
            delay = _BACKOFF_FIRST_S
            broken_logged = False
            first = self.attempts + 1
            while True:
                self.attempts += 1
                try:
                    await trio.to_thread.run_sync(self._in_thread, self._apply_all, jobs)
                except StoreBusy as exc:
                    if self.busy_since is None:
                        # (not "busy": a full disk is transient too)
                        logger.warning("cannot commit now, retrying: %s", exc)
                    self._failing(exc)
                    await self._pause(delay)
                    delay = min(delay * 2, _BACKOFF_MAX_S)
                    continue
                except _DatabaseBroken as exc:
                    if not broken_logged:
                        broken_logged = True
                        logger.error(
                            "database cannot be written, nothing is acked until it can;"
                            " reopening it and retrying every %g s at most: %s",
                            self._broken_backoff_max_s,
                            exc,
                        )
                    self._failing(exc)
                    await self._pause(delay)
                    delay = min(delay * 2, self._broken_backoff_max_s)
                    # Logged once per streak, like the error above.
                    await trio.to_thread.run_sync(
                        self._in_thread, self._reopen, str(exc), self.attempts == first
                    )
                    continue
                break
            if self.busy_since is not None:
                logger.info("database writable again")
                self.busy_since = None
                self.busy_reason = ""
        self._committed(jobs, started)

    def _committed(self, jobs: list[Job], started: float) -> None:
        """After COMMIT: count, give the budget back, and let the connections ack."""
        self.commit_latency.observe(time.perf_counter() - started)
        self.last_commit_ms = time.time_ns() // 1_000_000
        freed = freed_bytes = 0
        for job in jobs:
            self.events_committed += job.results.count(None)
            freed += job.queued_cost  # what it took, whatever it holds now
            freed_bytes += job.nbytes
            job.drop_payload()
            job.done.set()
        self.queued_events -= freed
        self.queued_bytes -= freed_bytes
        self._space.set()
        self._space = trio.Event()
        self.parked = self.store.parked
        self.parked_bytes = self.store.parked_bytes

    def _failing(self, exc: Exception) -> None:
        """Note a failed attempt; _GiveUp when failing too long or when stopping."""
        now = trio.current_time()
        if self.busy_since is None:
            self.busy_since = now
        self.busy_reason = str(exc)
        if now - self.busy_since >= self._wedged_exit_s:
            self.wedged = (
                f"the database has not accepted a commit for {now - self.busy_since:.0f} s"
                f" ({self.store.path}: {exc}); exiting so that the service manager restarts"
                " the daemon (clients spool meanwhile)"
            )
            raise _GiveUp
        if self._stop_at is not None and now - self._stop_at >= self._stop_timeout_s:
            logger.warning(
                "stopping without committing %d queued event(s): %s (the clients keep them)",
                self.queued_events,
                exc,
            )
            raise _GiveUp

    async def _pause(self, delay: float) -> None:
        """Sleep ``delay`` before a retry, cut short by a stop (then bounded by its timeout)."""
        with trio.move_on_after(delay):
            await self._stop.wait()
        if self._stop.is_set():
            assert self._stop_at is not None
            left = self._stop_at + self._stop_timeout_s - trio.current_time()
            await trio.sleep(max(0.0, min(delay, left)))

    async def _upkeep(self, *, idle: bool) -> None:
        """Between batches: follow a replaced file, expire parked events, checkpoint."""
        now = trio.current_time()
        if idle and now - self._last_upkeep < self._checkpoint_interval_s:
            return
        self._last_upkeep = now
        expired = await trio.to_thread.run_sync(self._in_thread, self._upkeep_sync, idle)
        # The figures change together, here in the trio thread: ``status`` never
        # sees the expired counted before the parked ones are gone.
        self.parked_expired += expired
        self.parked = self.store.parked
        self.parked_bytes = self.store.parked_bytes

    # -- in the worker thread -----------------------------------------------------------

    def _in_thread(self, fn: Callable[..., _T], *args: object) -> _T:
        """Run ``fn`` in a worker thread, where waiting for a lock is allowed again."""
        self.store.busy_wait(True)
        return fn(*args)

    def _upkeep_sync(self, idle: bool) -> int:
        """Follow a replaced file, expire parked events, checkpoint; how many expired."""
        store = self.store
        why = store.changed_underneath()
        if why is not None:
            self._reopen(why)
        expired = 0
        try:
            expired = store.expire_parked(self._parked_max_age_s)
            self.parked_oldest_ms = store.parked_oldest_ms()
        except (StoreBusy, ApplyError, sqlite3.Error) as exc:
            logger.warning("cannot expire parked events now, will retry: %s", exc)
        if idle:
            store.checkpoint_idle()
        return expired

    def _reopen(self, why: str, log: bool = True) -> None:
        """Open the database afresh (``why``: what made it necessary, logged if ``log``)."""
        if log:
            logger.warning("reopening the database: %s", why)
        try:
            self.store.reopen()
        except (sqlite3.Error, OSError, RuntallyError) as exc:
            if log:
                logger.error("cannot reopen the database, will retry: %s", exc)
            return
        self.reopened += 1
        self.parked_oldest_ms = self.store.parked_oldest_ms()

    def _apply_all(self, jobs: Sequence[Job]) -> None:
        jobs = [job for job in jobs if not job.committed]
        why = self.store.changed_underneath()
        if why is not None:  # never ack into a file nobody will read again
            self._reopen(why)
            if self.store.changed_underneath() is not None:
                raise _DatabaseBroken(why)
        if apply_jobs(self.store, jobs):
            self.parked_oldest_ms = self.store.parked_oldest_ms()
