"""Applying a batch of jobs to the Store in one transaction, in the writer's worker thread.

Chores (``Job.task``) run first; the jobs' events, dead letters, audit rows and
statements then go in one ``Store.apply``.  A batch that fails for any reason
but StoreBusy is split job by job, event by event (``_apply_isolated``), so one
unappliable event is dead-lettered instead of wedging everyone; when not even
a dead letter can be written, DatabaseBroken says the database is at fault.
The writer's retry and give-up policy around this lives in ``_writer``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from .._text import clean_text
from ..protocol import Event
from ._job import Job
from ._log import logger
from ._store import ApplyError, AuditEntry, DeadLetter, Origin, Store, StoreBusy, Write

__all__ = ["DatabaseBroken", "apply_jobs"]


class DatabaseBroken(Exception):
    """Not even a dead letter could be written: the database is at fault, not the events."""


def apply_jobs(store: Store, jobs: Sequence[Job]) -> bool:
    """Apply the uncommitted ``jobs`` (marking each committed, with its results).

    True when events or records were written in one transaction, so the
    parked figures may have changed.  StoreBusy propagates (nothing written:
    retry later); DatabaseBroken when not even a dead letter can be written.
    """
    for job in jobs:
        if job.task is not None:
            try:
                job.outcome = job.task(store)
            except StoreBusy:
                raise
            except Exception as exc:  # noqa: BLE001 - a failed chore never stops the writer
                job.outcome = exc
            job.committed = True
    if not (jobs := [job for job in jobs if not job.committed]):
        return False
    durable = any(job.durable for job in jobs)
    events: list[Event] = []
    frames: list[bytes] = []
    origins: list[Origin] = []
    dead: list[DeadLetter] = []
    audit: list[AuditEntry] = []
    writes: list[Write] = []
    for job in jobs:
        events += job.events
        frames += job.frames
        origins += [job.origin] * len(job.events)
        dead += job.dead_letters
        audit += job.audit
        writes += job.writes
    try:
        results = store.apply(
            events,
            frames=frames,
            origins=origins,
            dead_letters=dead,
            audit=audit,
            durable=durable,
            writes=writes,
        )
    except ApplyError:
        for job in jobs:
            _apply_isolated(store, job)
            job.committed = True
        return False
    start = 0
    for job in jobs:
        job.results = results[start : start + len(job.events)]
        job.committed = True
        start += len(job.events)
    return bool(results or dead or audit or events)


def _apply_isolated(store: Store, job: Job) -> None:
    """Slow path: find the event(s) that cannot be applied and dead-letter them."""
    try:
        job.results = store.apply(
            job.events,
            frames=job.frames,
            origins=[job.origin] * len(job.events),
            dead_letters=job.dead_letters,
            audit=job.audit,
            durable=job.durable,
            writes=job.writes,
        )
        return
    except ApplyError:
        pass
    _write_records(store, job.dead_letters, job.audit, durable=job.durable)
    job.dead_letters, job.audit = [], []  # committed: not again if a retry follows
    if job.writes:  # the daemon's own statements failed: logged, never retried forever
        logger.error("dropping %d monitor statement(s) that cannot be applied", len(job.writes))
        job.writes = []
    job.results = []
    for event, frame in zip(job.events, job.frames, strict=True):
        try:
            job.results.extend(store.apply([event], frames=[frame], origins=[job.origin]))
        except ApplyError as exc:
            reason = f"cannot be applied: {exc}"
            _write_records(store, [DeadLetter(frame, reason, event.id, job.origin)], [])
            job.results.append(reason)


def _write_records(
    store: Store, dead_letters: list[DeadLetter], audit: list[AuditEntry], *, durable: bool = False
) -> None:
    """Commit records alone; a database that refuses even these is broken (retry later).

    Unless the records themselves are at fault: an error raised before
    SQLite saw them (text ``_records`` could not make storable, data with
    no JSON form).  Retrying those would wedge the writer, hold back every
    ack and end in an exit (a restart loop): they are dropped, with a row
    saying so, and the database is broken only if that row fails too.
    """
    try:
        store.apply((), dead_letters=dead_letters, audit=audit, durable=durable)
    except ApplyError as exc:
        reason = clean_text(str(exc))
        if isinstance(exc.__cause__, sqlite3.Error):
            raise DatabaseBroken(reason) from exc
        dropped = AuditEntry(
            "records_dropped",
            f"{len(dead_letters)} dead letter(s) and {len(audit)} audit row(s) dropped:"
            f" they cannot be written: {reason}",
            level="error",
            scope="writer",
            data={"dead_letters": len(dead_letters), "audit": len(audit), "reason": reason},
        )
        try:
            store.apply((), audit=[dropped], durable=durable)
        except ApplyError:
            raise DatabaseBroken(reason) from exc
        logger.error("%s", dropped.message)
