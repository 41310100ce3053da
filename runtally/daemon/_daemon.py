"""The daemon's shared state, and the hooks its connections call.

One ``Daemon`` per process: the settings, the Store, the one Writer, the
Replayer and the open connections.  ``serve`` (in ``_server``) runs its tasks;
this module only holds what they share and answers what a connection asks
(admission, status, replay).
"""

from __future__ import annotations

import contextlib
import os
import time

import trio

from .._text import clean_text
from .._version import __version__
from ..config import Settings
from ..protocol import ErrorReply, PipelinePaused, Replayed, StatusReply, Vacuumed, encode_frame
from . import _dbfiles as files
from ._admission import Admission
from ._alerts import Dispatcher
from ._budget import PartialBudget
from ._conn import Connection
from ._log import logger
from ._monitor import Monitor
from ._peer import is_admin, is_allowed, peer_origin
from ._replay import Replayer, spool_backlog
from ._retention import RetentionTask
from ._store import AuditEntry, Origin, Store
from ._vacuum import vacuum
from ._writer import Job, Writer

__all__ = ["Daemon"]


class Daemon:
    """State shared by the daemon's tasks; implements the connections' ``ServerHooks``."""

    #: The name and version sent in ``welcome`` replies.
    name = f"runtallyd/{__version__}"

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.writer = Writer(
            store,
            max_queue_events=settings.queue_events,
            wedged_exit_s=settings.wedged_exit_s,
            stop_timeout_s=settings.stop_timeout_s,
            checkpoint_interval_s=settings.checkpoint_interval_s,
            parked_max_age_s=settings.parked_max_age_s,
        )
        self.replayer = Replayer(
            settings.spool,
            self.writer,
            owner_allowed=lambda uid, gid: is_allowed(settings, uid, gid),
            interval_s=settings.replay_interval_s,
            stale_s=settings.spool_stale_s,
        )
        self.retention = RetentionTask(
            settings.retention_days, self.writer, interval_s=settings.retention_interval_s
        )
        #: time.monotonic() at start (for ``uptime_s``).
        self.started = time.monotonic()
        self.schema_version = store.schema_version
        #: The connections being served (admitted, not yet closed).
        self.connections: set[Connection] = set()
        #: Connection limits (global, per uid, descriptors) and the partial-frame budget.
        self.admission = Admission(settings)
        self.partials = PartialBudget(settings.max_partial_bytes)
        #: Set by the first SIGTERM/SIGINT, or by ``request_stop`` (tests, embedding).
        self.stop_requested = trio.Event()
        #: Pipeline states and alerts (``_monitor``), sending from a thread of its own.
        self.alerts = Dispatcher(settings)
        self.monitor = Monitor(settings, self.writer, self.alerts)

    def request_stop(self) -> None:
        """Begin the graceful shutdown, as a first SIGTERM does."""
        self.stop_requested.set()

    async def report_refusals(self) -> None:
        """Audit the refusals of a burst that stopped (``Admission.due``), checked every second."""
        while True:
            await trio.sleep(1.0)
            if rows := self.admission.due():
                await self.writer.submit(Job(audit=rows))

    def stop_reading(self) -> None:
        """Shutdown: every connection replies to what it has read and reads no more."""
        for conn in list(self.connections):
            conn.stop_reading()

    # -- the hooks connections call ---------------------------------------------------

    async def submit(self, job: Job) -> None:
        """Queue ``job`` for the writer (blocks while its queue is full)."""
        await self.writer.submit(job)

    def status(self) -> StatusReply:
        """What ``runtally status`` shows: counters, queue, paths, versions, problems."""
        w = self.writer
        failing = trio.current_time() - w.busy_since if w.busy_since is not None else None
        wal = files.wal_bytes(self.store.path)
        return StatusReply(
            uptime_s=round(time.monotonic() - self.started, 3),
            events_committed=self.writer.events_committed,
            queue_depth=self.writer.queued_events,
            schema_version=self.schema_version,
            db_path=clean_text(str(self.store.path)),
            connections=len(self.connections),
            spool_files=len(spool_backlog(self.settings.spool)),
            version=__version__,
            pid=os.getpid(),
            last_commit_ts=self.writer.last_commit_ms,
            spool_problem=None if (p := self.replayer.problem) is None else clean_text(p),
            wal_bytes=wal,
            parked=w.parked,
            parked_bytes=w.parked_bytes,
            parked_oldest_ts=w.parked_oldest_ms,
            parked_expired=w.parked_expired,
            failing_s=None if failing is None else round(failing, 3),
            failing_reason=clean_text(w.busy_reason),
            problems=[clean_text(p) for p in self.problems(failing, wal)],
            alert_failures=dict(self.alerts.failures) or None,
            commit_seconds=self.writer.commit_latency.snapshot(),
        )

    def problems(self, failing_s: float | None, wal_bytes: int) -> list[str]:
        """What keeps the daemon from its job, one line each with the fix (``status`` fails)."""
        s, w, out = self.settings, self.writer, []
        if failing_s is not None and failing_s > s.status_stall_s and w.queued_events:
            out.append(
                f"writer: no commit for {failing_s:.0f} s with {w.queued_events} event(s) queued"
                f" ({w.busy_reason}): make {self.store.path} writable (lock holder, read-only"
                " file or mount, disk space); clients spool meanwhile"
            )
        if w.parked_oldest_ms is not None:
            age_s = time.time() - w.parked_oldest_ms / 1000
            if age_s > s.status_parked_age_s:
                out.append(
                    f"parked: {w.parked} event(s) wait for a run or step that never started,"
                    f" the oldest for {age_s / 60:.0f} min: a run_start or step_start was"
                    " lost or refused (see dead_letters), or a pipeline named a step id"
                    " start_step never gave it (SELECT waiting_for FROM parked_events says"
                    f" which); they expire into dead_letters after {s.parked_max_age_s:g} s"
                )
        if (why := self.replayer.quarantine_problem) is not None:
            out.append(
                f"spool: bad spool files cannot be moved aside: {why}; remove"
                f" {self.replayer.corrupt_dir} (the daemon recreates it, its own, mode 0700)"
            )
        if wal_bytes > s.status_wal_bytes:
            out.append(
                f"wal: {files.wal_path(self.store.path)} is {wal_bytes} bytes (limit"
                f" {s.status_wal_bytes}): a long-running reader keeps the writer from"
                " checkpointing it; end that reader's transaction"
            )
        return out

    def status_frame(self) -> bytes:
        """The ``status`` reply, encoded."""
        return encode_frame(self.status())

    async def refuse_non_admin(self, origin: Origin, verb: str) -> bytes | None:
        """The encoded ``error`` for a non-admin ``origin`` (audited), None for an admin."""
        if is_admin(self.settings, origin.uid):
            return None
        why = f"{verb} is an admin message; uid {origin.uid} is not an admin"
        entry = AuditEntry(
            "admin_refused",
            why,
            level="warning",
            scope="socket",
            data={"message": verb, "uid": origin.uid, "pid": origin.pid},
        )
        job = Job(audit=[entry])
        await self.writer.submit(job)
        await job.done.wait()  # the refusal is on record before it is answered
        return encode_frame(ErrorReply(why))

    async def run_replay(self, origin: Origin) -> bytes:
        """Replay the spool now if ``origin`` is an admin; the encoded reply either way."""
        if (refused := await self.refuse_non_admin(origin, "replay")) is not None:
            return refused
        stats = await self.replayer.replay_once()
        if self.replayer.problem is not None:
            return encode_frame(
                ErrorReply(clean_text(f"nothing replayed: {self.replayer.problem}"))
            )
        total = self.replayer.total
        return encode_frame(
            Replayed(
                stats.files,
                stats.events,
                stats.quarantined,
                total.files,
                total.events,
                total.quarantined,
            )
        )

    async def run_pause(self, origin: Origin, pipeline: str, paused: bool) -> bytes:
        """Pause or resume ``pipeline`` if ``origin`` is an admin; the encoded reply either way."""
        verb = "pause" if paused else "resume"
        if (refused := await self.refuse_non_admin(origin, verb)) is not None:
            return refused
        if not await self.monitor.knows(pipeline):
            return encode_frame(
                ErrorReply(
                    f"no pipeline {pipeline!r}: it is not declared ([pipelines] in the"
                    " config) and has no runs; nothing to " + verb
                )
            )
        await self.monitor.set_paused(pipeline, paused)
        audit = AuditEntry(f"pipeline_{verb}d", f"{pipeline} {verb}d by uid {origin.uid}")
        job = Job(audit=[audit])
        await self.writer.submit(job)
        await job.done.wait()  # the reply says it is recorded
        return encode_frame(PipelinePaused(pipeline, paused))

    async def run_vacuum(self, origin: Origin) -> bytes:
        """Compact the database through the writer if ``origin`` is an admin; the encoded reply."""
        if (refused := await self.refuse_non_admin(origin, "vacuum")) is not None:
            return refused
        job = Job(task=vacuum)
        await self.writer.submit(job)
        await job.done.wait()
        if isinstance(job.outcome, Vacuumed):
            return encode_frame(job.outcome)
        return encode_frame(ErrorReply(f"vacuum failed: {job.outcome}"))

    def summary(self) -> str:
        """One line for systemd's STATUS: commits, connections, queue, a busy database."""
        busy = f", db busy: {self.writer.busy_reason}" if self.writer.busy_since is not None else ""
        return (
            f"{self.writer.events_committed} events committed, "
            f"{len(self.connections)} connections, queue {self.writer.queued_events}{busy}"
        )

    # -- connections --------------------------------------------------------------

    async def handle(self, stream: trio.SocketStream) -> None:
        """Serve one accepted stream: admit it (limits, allow-lists) or refuse it in one reply."""
        origin = peer_origin(stream.socket)
        refusal = None
        if (refused := self.admission.refuse(origin)) is not None:
            refusal = refused.reason
            if refused.audit is not None:
                await self.writer.submit(Job(audit=[refused.audit]))
        elif not is_allowed(self.settings, origin.uid, origin.gid):
            refusal = f"uid {origin.uid} gid {origin.gid} is not allowed to emit"
            await self.writer.submit(
                Job(
                    audit=[
                        AuditEntry(
                            "peer_refused",
                            refusal,
                            level="warning",
                            scope="socket",
                            data={"uid": origin.uid, "gid": origin.gid, "pid": origin.pid},
                        )
                    ]
                )
            )
        if refusal is not None:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                with trio.move_on_after(1.0):
                    await stream.send_all(encode_frame(ErrorReply(refusal)))
            await stream.aclose()
            return
        conn = Connection(
            stream, origin, self, idle_timeout_s=self.settings.idle_timeout_s, budget=self.partials
        )
        self.connections.add(conn)
        self.admission.opened(origin)
        if self.stop_requested.is_set():
            conn.stop_reading()  # accepted just before the stop: reply to nothing, close
        try:
            await conn.serve()
        except Exception as exc:  # noqa: BLE001 - one client's failure never stops the daemon
            logger.error("connection from pid %s failed: %r", origin.pid, exc)
        finally:
            self.connections.discard(conn)
            self.admission.closed(origin)
