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
that fails for any other reason is split job by job, event by event, so one
unappliable event is dead-lettered instead of wedging everyone.  When not even
a dead letter can be written, the fault is the database's, not the events'
(read-only, corrupt): the batch is retried as for StoreBusy but with a long
backoff and one error logged, nothing acked and nothing dead-lettered, so the
clients keep every event (in their windows, then their spools) until it is
fixed.  (A first, minimal answer: what the daemon should do then is the
reliability issue's to design.)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import trio

from ..protocol import Event
from ._latency import LatencyHistogram
from ._log import logger
from ._store import ApplyError, AuditEntry, DeadLetter, Origin, Store, StoreBusy

__all__ = ["Job", "Writer"]

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


class _DatabaseBroken(Exception):
    """Not even a dead letter could be written: the database is at fault, not the events."""


@dataclass(eq=False, slots=True)
class Job:
    """Work for one transaction, from one source, with one completion signal."""

    events: list[Event] = field(default_factory=list)
    frames: list[bytes] = field(default_factory=list)
    origin: Origin = field(default_factory=Origin)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    audit: list[AuditEntry] = field(default_factory=list)
    results: list[str | None] = field(default_factory=list)
    done: trio.Event = field(default_factory=trio.Event)
    nbytes: int = 0  # its frames' bytes, counted against the queue's byte budget
    queued_cost: int = 0  # its cost when queued, given back once committed
    #: Its results are final: set once committed, so a batch retried after a
    #: StoreBusy in the slow path does not write its dead letters twice.
    committed: bool = False
    #: A chore (retention, vacuum) the writer runs in its thread before the
    #: batch's events, in transactions of its own; its return value, or the
    #: exception it raised (StoreBusy excepted: retried), goes to ``outcome``.
    task: Callable[[Store], object] | None = None
    outcome: object = None

    @property
    def cost(self) -> int:
        """Budget units: its events, and at least one for a job of only records."""
        return max(1, len(self.events) + len(self.dead_letters))

    @property
    def empty(self) -> bool:
        """Nothing to write: no events, dead letters or audit rows."""
        return not (self.events or self.dead_letters or self.audit)

    def drop_payload(self) -> None:
        """Once committed, only ``results`` are needed: the rest is in the database.

        Connections keep a committed job until its replies are sent, which
        waits on a client reading them; without this, 32 slow readers could
        hold 8 batches of decoded events each, outside the queue budget.
        """
        self.events = []
        self.frames = []
        self.dead_letters = []
        self.audit = []


class Writer:
    """Owns the Store; everything else talks to it through ``submit``.

    ``tick_s``: the longest the loop waits for a job before refreshing its
    ``heartbeat``.  ``broken_backoff_max_s``: the longest wait between retries
    of a database that refuses even a dead letter (tests make it short).
    """

    def __init__(
        self,
        store: Store,
        *,
        max_queue_events: int = 5_000,
        max_queue_bytes: int = _MAX_QUEUE_BYTES,
        tick_s: float = 1.0,
        broken_backoff_max_s: float = _BROKEN_BACKOFF_MAX_S,
    ):
        self.store = store
        self._budget = max_queue_events
        self._max_bytes = max_queue_bytes
        self._tick_s = tick_s
        self._broken_backoff_max_s = broken_backoff_max_s
        self._send, self._recv = trio.open_memory_channel[Job](math.inf)
        self._space = trio.Event()
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
        #: trio.current_time() of the writer's last sign of life (for the watchdog).
        self.heartbeat = trio.current_time()
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

    # -- the loop -------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Commit batches until ``close`` and everything queued before it is committed."""
        task_status.started()
        while True:
            self.heartbeat = trio.current_time()
            with trio.move_on_after(self._tick_s):
                try:
                    first = await self._recv.receive()
                except trio.EndOfChannel:
                    return
                jobs = [first]
                size = len(first.events)
                while size < _MAX_BATCH_EVENTS:
                    try:
                        job = self._recv.receive_nowait()
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                    jobs.append(job)
                    size += len(job.events)
                await self._commit(jobs)

    async def _commit(self, jobs: list[Job]) -> None:
        started = time.perf_counter()
        with trio.CancelScope(shield=True):
            delay = _BACKOFF_FIRST_S
            broken_logged = False
            while True:
                self.heartbeat = trio.current_time()
                try:
                    await trio.to_thread.run_sync(self._apply_all, jobs)
                except StoreBusy as exc:
                    if self.busy_since is None:
                        self.busy_since = trio.current_time()
                        logger.warning("database busy, retrying: %s", exc)
                    self.busy_reason = str(exc)
                    await trio.sleep(delay)
                    delay = min(delay * 2, _BACKOFF_MAX_S)
                    continue
                except _DatabaseBroken as exc:
                    if not broken_logged:
                        broken_logged = True
                        logger.error(
                            "database cannot be written, nothing is acked until it can;"
                            " retrying every %g s at most: %s",
                            self._broken_backoff_max_s,
                            exc,
                        )
                    self.busy_since = self.busy_since or trio.current_time()
                    self.busy_reason = str(exc)
                    await trio.sleep(delay)
                    delay = min(delay * 2, self._broken_backoff_max_s)
                    continue
                break
            if self.busy_since is not None:
                logger.info("database writable again")
                self.busy_since = None
                self.busy_reason = ""
        self.commit_latency.observe(time.perf_counter() - started)
        self.last_commit_ms = time.time_ns() // 1_000_000
        freed = freed_bytes = 0
        for job in jobs:
            self.events_committed += sum(1 for r in job.results if r is None)
            freed += job.queued_cost  # what it took, whatever it holds now
            freed_bytes += job.nbytes
            job.drop_payload()
            job.done.set()
        self.queued_events -= freed
        self.queued_bytes -= freed_bytes
        self._space.set()
        self._space = trio.Event()

    # -- in the worker thread -----------------------------------------------------------

    def _apply_all(self, jobs: Sequence[Job]) -> None:
        jobs = [job for job in jobs if not job.committed]
        for job in jobs:
            if job.task is not None:
                try:
                    job.outcome = job.task(self.store)
                except StoreBusy:
                    raise
                except Exception as exc:  # noqa: BLE001 - a failed chore never stops the writer
                    job.outcome = exc
                job.committed = True
        if not (jobs := [job for job in jobs if not job.committed]):
            return
        events: list[Event] = []
        frames: list[bytes] = []
        origins: list[Origin] = []
        dead: list[DeadLetter] = []
        audit: list[AuditEntry] = []
        for job in jobs:
            events += job.events
            frames += job.frames
            origins += [job.origin] * len(job.events)
            dead += job.dead_letters
            audit += job.audit
        try:
            results = self.store.apply(
                events, frames=frames, origins=origins, dead_letters=dead, audit=audit
            )
        except ApplyError:
            for job in jobs:
                self._apply_isolated(job)
                job.committed = True
            return
        start = 0
        for job in jobs:
            job.results = results[start : start + len(job.events)]
            job.committed = True
            start += len(job.events)

    def _apply_isolated(self, job: Job) -> None:
        """Slow path: find the event(s) that cannot be applied and dead-letter them."""
        try:
            job.results = self.store.apply(
                job.events,
                frames=job.frames,
                origins=[job.origin] * len(job.events),
                dead_letters=job.dead_letters,
                audit=job.audit,
            )
            return
        except ApplyError:
            pass
        self._write_records(job.dead_letters, job.audit)
        job.dead_letters, job.audit = [], []  # committed: not again if a retry follows
        job.results = []
        for event, frame in zip(job.events, job.frames, strict=True):
            try:
                job.results.extend(self.store.apply([event], frames=[frame], origins=[job.origin]))
            except ApplyError as exc:
                reason = f"cannot be applied: {exc}"
                self._write_records([DeadLetter(frame, reason, event.id, job.origin)], [])
                job.results.append(reason)

    def _write_records(self, dead_letters: list[DeadLetter], audit: list[AuditEntry]) -> None:
        """Commit records alone; a database that refuses even these is broken (retry later)."""
        try:
            self.store.apply((), dead_letters=dead_letters, audit=audit)
        except ApplyError as exc:
            raise _DatabaseBroken(str(exc)) from exc
