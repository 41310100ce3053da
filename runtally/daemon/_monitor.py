"""The monitor: every few seconds, each pipeline's state, crashed and stuck runs, alerts.

One task in the daemon's intake nursery.  Each ``tick`` reads the database on
a read-only connection of its own (``_monitor_read``), closes the runs whose
process died (``_liveness``; through the writer, as events with ids of the
daemon's own, so closing twice is closing once), adds one error row to a run
over its ``max_runtime``, evaluates the states (``_states``), writes those
that changed to ``pipeline_states`` through the one writer, and hands alerts
to the Dispatcher (``_alerts``), which sends them from a thread of its own.

Alerts, once per change: entering a bad state alerts unless that state was
the last one alerted (``failing`` -> ``running`` -> ``failing`` is one
alert); ``ok`` after an alerted bad state is a recovery; ``failing`` alerts
only after ``alert_after_failures`` failed runs in a row; a bad state still
held after ``alert_reminder_hours`` is reminded.  What was alerted is stored
with the state, so a restarted daemon does not repeat itself.
"""

from __future__ import annotations

import functools
import hashlib
import socket
import sqlite3
import time
from collections.abc import Callable

import trio

from ..config import Settings
from ..protocol import MAX_UID, ErrorEvent, Event, RunEnd, StepEnd
from ._alert_message import AlertEvent, LastRun
from ._alerts import Dispatcher
from ._liveness import pending_spool, process_gone
from ._log import logger
from ._monitor_read import (
    CRASH_MARK,
    Running,
    Stored,
    open_reader,
    pipeline_names,
    read_running,
    read_snapshot,
    read_stored,
)
from ._states import BAD_STATES, Snapshot, Verdict, evaluate, span
from ._store import Origin
from ._timefmt import iso_from_ms
from ._writer import Job, Writer

__all__ = ["Monitor"]


#: Pipelines judged between two checkpoints of a tick: the event loop (acks,
#: reads) waits ~2 ms at most for the monitor, however many pipelines there are.
JUDGE_PER_STEP = 256


def derived_id(kind: str, uid: str) -> str:
    """The id of an event the monitor makes for ``uid``: the same every time (so
    closing a run twice is a no-op) and, like a client's, at most MAX_UID chars."""
    plain = f"runtally-{kind}:{uid}"
    if len(plain) <= MAX_UID:
        return plain
    return f"runtally-{kind}:#{hashlib.sha256(uid.encode()).hexdigest()}"


class Monitor:
    """Judges every pipeline each ``settings.monitor_interval_s``; ``clock`` gives epoch seconds."""

    def __init__(
        self,
        settings: Settings,
        writer: Writer,
        dispatcher: Dispatcher,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.writer = writer
        self.dispatcher = dispatcher
        self.clock = clock
        self._conn: sqlite3.Connection | None = None
        #: What pipeline_states holds, as of the last tick.
        self.stored: dict[str, Stored] = {}
        #: The last verdict per pipeline (status, tests).
        self.verdicts: dict[str, Verdict] = {}
        #: run uid -> when (epoch ms) its process was first seen gone.
        self._dead_since: dict[str, int] = {}
        self._stuck_reported: set[str] = set()
        self._host = socket.gethostname()
        self._lock = trio.Lock()  # a tick and a pause never interleave

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Tick until cancelled; a failing tick is logged and the next one tries again.

        The first tick comes one interval after start: start-up belongs to the
        writer's own work (and a restarted daemon's spool replay comes first).
        """
        task_status.started()
        try:
            while True:
                await trio.sleep(self.settings.monitor_interval_s)
                try:
                    await self.tick()
                except (sqlite3.Error, OSError) as exc:
                    logger.error("monitor tick failed: %s", exc)
                except Exception:  # noqa: BLE001 - a monitor bug must not end the daemon
                    # Found from outside: one event whose date the schedule code
                    # could not hold raised here, and the daemon exited, at every
                    # start.  Committing and acking go on; the bug is logged whole.
                    logger.exception("monitor tick failed (a bug; the daemon goes on)")
        finally:
            if self._conn is not None:
                self._conn.close()

    def _reader(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = open_reader(self.settings.db)
        return self._conn

    # -- one tick -----------------------------------------------------------------------

    async def tick(self) -> dict[str, Verdict]:
        """Look once: close crashed runs, flag stuck ones, judge, write, alert."""
        async with self._lock:
            now = int(self.clock() * 1000)
            running = await trio.to_thread.run_sync(lambda: read_running(self._reader()))
            events = self._liveness(running, now) + self._stuck(running, now)
            if events:
                await self._write(Job(events=events, origin=Origin("monitor")))
            snaps, stored = await trio.to_thread.run_sync(self._read_all)
            self.stored = stored
            writes = []
            for n, (name, snap) in enumerate(snaps.items(), 1):
                if n % JUDGE_PER_STEP == 0:
                    # Found from outside: at 30,000 pipelines (a date in a name)
                    # one tick held the event loop ~140 ms, and every ack waited.
                    await trio.lowlevel.checkpoint()
                row = stored.get(name)
                first_seen = row.first_seen_ms if row else now
                verdict = evaluate(
                    snap,
                    self.settings.pipelines.get(name),
                    now_ms=now,
                    first_seen_ms=first_seen,
                    paused=bool(row and row.paused),
                )
                self.verdicts[name] = verdict
                alerted = self._alert(snap, verdict, row, now)
                if row is None or alerted or _changed(row, verdict, snap):
                    writes.append(_upsert_for(snap, verdict, row, now, first_seen, alerted=alerted))
            if writes:
                await self._write(Job(writes=writes))
            return dict(self.verdicts)

    def _read_all(self) -> tuple[dict[str, Snapshot], dict[str, Stored]]:
        conn = self._reader()
        stored = read_stored(conn)
        names = set(self.settings.pipelines) | set(pipeline_names(conn)) | set(stored)
        limit = max(self.settings.alert_after_failures, 10)
        return {n: read_snapshot(conn, n, limit) for n in sorted(names)}, stored

    async def _write(self, job: Job) -> None:
        await self.writer.submit(job)
        await job.done.wait()

    # -- crashed and stuck runs ---------------------------------------------------------

    def _liveness(self, running: list[Running], now: int) -> list[Event]:
        """Close the runs whose process is gone, once its spool had its chance and grace."""
        events: list[Event] = []
        still = {r.uid for r in running}
        for uid in list(self._dead_since):
            if uid not in still:
                del self._dead_since[uid]
        for run in running:
            pid, start = run.pid, run.start
            # A spooled run_start (no peer): the client's own word, no start time.
            # From another host it came through a shared spool directory, whose
            # file is replayed only once its writer is gone (stale): no pid here
            # to look at, so gone once no file of that pid waits any more (found
            # from outside: such a run stayed running for ever, hiding late/missed).
            remote = False
            if pid is None and run.meta_host is not None:
                pid, remote = run.meta_pid, run.meta_host != self._host
            gone = pid is not None and (remote or process_gone(pid, start))
            if run.uid is None or pid is None or not gone:
                self._dead_since.pop(run.uid or "", None)
                continue
            if pending_spool(self.settings.spool, pid):
                self._dead_since.pop(run.uid, None)  # its events replay first; grace after
                continue
            since = self._dead_since.setdefault(run.uid, now)
            if now - since < self.settings.crash_grace_s * 1000:
                continue
            where = f" on {run.meta_host}" if remote else ""
            message = f"process {pid}{where} ended without end_run (killed or crashed)"
            logger.warning("run #%d of %s: %s", run.id, run.pipeline, message)
            # Its open steps end with it: a crashed run shows no step still running.
            events.extend(
                StepEnd(
                    id=derived_id("crash-step", step),
                    ts=now,
                    run=run.uid,
                    step=step,
                    outcome="failure",
                )
                for step in run.open_steps
            )
            events.append(
                ErrorEvent(
                    id=derived_id("crash", run.uid),
                    ts=now,
                    run=run.uid,
                    step_name="(run)",
                    message=message,
                )
            )
            events.append(
                RunEnd(
                    id=derived_id("crash-end", run.uid),
                    ts=now,
                    run=run.uid,
                    outcome="failure",
                    summary={CRASH_MARK: "crashed", "pid": pid},
                )
            )
        return events

    def _stuck(self, running: list[Running], now: int) -> list[Event]:
        """One error row for each run over its pipeline's ``max_runtime`` (nothing is killed)."""
        events: list[Event] = []
        for run in running:
            config = self.settings.pipelines.get(run.pipeline)
            limit = config.max_runtime_s if config else None
            if limit is None or run.uid is None or run.uid in self._stuck_reported:
                continue
            if now - run.started_ms <= limit * 1000:
                continue
            self._stuck_reported.add(run.uid)
            events.append(
                ErrorEvent(
                    id=derived_id("stuck", run.uid),
                    ts=now,
                    run=run.uid,
                    step_name="(run)",
                    message=f"still running after max_runtime {span(limit * 1000)};"
                    " runtally does not stop it",
                )
            )
        return events

    # -- alerts -------------------------------------------------------------------------

    def _alert(self, snap: Snapshot, verdict: Verdict, row: Stored | None, now: int) -> bool:
        """Queue the alert this verdict calls for, if any; True when one was."""
        settings = self.settings
        alerted = row.alerted_state if row else None
        state = verdict.state
        kind = None
        if state in BAD_STATES:
            held_back = (
                state == "failing" and snap.failures_in_a_row < settings.alert_after_failures
            )
            if held_back:
                return False
            if alerted != state:
                kind = "state"
            elif (
                settings.alert_reminder_hours
                and row
                and row.alerted_ms is not None
                and now - row.alerted_ms >= settings.alert_reminder_hours * 3_600_000
            ):
                kind = "reminder"
        elif state == "ok" and alerted in BAD_STATES:
            kind = "recovered"
        if kind is None:
            return False
        self.dispatcher.enqueue(self._event(kind, snap, verdict, alerted, now))
        return True

    def _event(
        self, kind: str, snap: Snapshot, verdict: Verdict, previous: str | None, now: int
    ) -> AlertEvent:
        run = snap.last
        config = self.settings.pipelines.get(snap.pipeline)
        club = config.club if config and config.club else (run.club if run else None)
        url = None
        if self.settings.web_url:
            base = self.settings.web_url.rstrip("/")
            url = f"{base}/runs/{run.id}" if run else f"{base}/pipelines/{snap.pipeline}"
        return AlertEvent(
            kind=kind,  # type: ignore[arg-type]
            pipeline=snap.pipeline,
            state=verdict.state,
            previous=previous,
            detail=verdict.detail,
            at=iso_from_ms(now),
            club=club,
            last_run=None
            if run is None
            else LastRun(
                id=run.id,
                uid=run.uid,
                outcome=run.outcome,
                started_at=iso_from_ms(run.started_ms),
                duration_ms=run.duration_ms,
                error_count=run.error_count,
                first_error=run.first_error,
            ),
            url=url,
        )

    # -- pause and resume ---------------------------------------------------------------

    async def knows(self, pipeline: str) -> bool:
        """Whether ``pipeline`` is declared, has a state row, or has a run.

        ``pause``/``resume`` of any other name is refused: found from outside,
        a typo ("peple") was paused, listed for ever, while the real one kept
        alerting.
        """
        if pipeline in self.settings.pipelines or pipeline in self.stored:
            return True

        def has_run() -> bool:
            row = (
                self._reader()
                .execute("SELECT 1 FROM runs WHERE pipeline = ? LIMIT 1", (pipeline,))
                .fetchone()
            )
            return row is not None

        async with self._lock:  # the reader is the tick's too
            return await trio.to_thread.run_sync(has_run)

    async def set_paused(self, pipeline: str, paused: bool) -> None:
        """Pause or resume ``pipeline`` (committed when this returns), then judge again."""
        now = int(self.clock() * 1000)
        async with self._lock:
            await self._write(Job(writes=[functools.partial(_set_paused, pipeline, paused, now)]))
        await self.tick()


def _changed(row: Stored, verdict: Verdict, snap: Snapshot) -> bool:
    return (
        row.state != verdict.state
        or row.expected_ms != verdict.expected_ms
        or row.next_expected_ms != verdict.next_expected_ms
        or row.last_run_id != (snap.last.id if snap.last else None)
    )


def _upsert_for(
    snap: Snapshot,
    verdict: Verdict,
    row: Stored | None,
    now: int,
    first_seen: int,
    *,
    alerted: bool,
) -> Callable[[sqlite3.Connection], object]:
    since = row.since_ms if row is not None and row.state == verdict.state else now
    if alerted:
        alerted_state: str | None = "ok" if verdict.state == "ok" else verdict.state
        alerted_ms: int | None = now
    else:
        alerted_state = row.alerted_state if row else None
        alerted_ms = row.alerted_ms if row else None
    values = (
        snap.pipeline,
        verdict.state,
        iso_from_ms(since),
        snap.last.club if snap.last else None,
        snap.last.id if snap.last else None,
        _iso(verdict.expected_ms),
        _iso(verdict.next_expected_ms),
        verdict.detail,
        alerted_state,
        _iso(alerted_ms),
        iso_from_ms(first_seen),
        iso_from_ms(now),
    )
    return functools.partial(_upsert, values)


def _iso(ms: int | None) -> str | None:
    return None if ms is None else iso_from_ms(ms)


def _upsert(values: tuple[object, ...], conn: sqlite3.Connection) -> None:
    conn.execute(
        "INSERT INTO pipeline_states (pipeline, state, since, club_slug, last_run_id,"
        " expected_at, next_expected_at, detail, alerted_state, alerted_at, first_seen_at,"
        " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (pipeline) DO UPDATE SET state = excluded.state, since = excluded.since,"
        " club_slug = excluded.club_slug, last_run_id = excluded.last_run_id,"
        " expected_at = excluded.expected_at, next_expected_at = excluded.next_expected_at,"
        " detail = excluded.detail, alerted_state = excluded.alerted_state,"
        " alerted_at = excluded.alerted_at, updated_at = excluded.updated_at",
        values,
    )


def _set_paused(pipeline: str, paused: bool, now: int, conn: sqlite3.Connection) -> None:
    stamp = iso_from_ms(now)
    conn.execute(
        "INSERT INTO pipeline_states (pipeline, state, since, paused, first_seen_at, updated_at)"
        " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (pipeline) DO UPDATE SET paused = excluded.paused,"
        " updated_at = excluded.updated_at",
        (pipeline, "paused" if paused else "ok", stamp, int(paused), stamp, stamp),
    )
