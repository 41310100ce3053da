"""Each kind of event's rows: the handler ``Applier.apply`` dispatches to.

One function per event type (``HANDLERS``), each given the Applier whose
connection, uid -> id caches, parking and dirty-run set it uses; the table of
what each event needs and does, and the bookkeeping around them (lookups,
parking, totals), are in ``_apply``.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any

import msgspec

from ..protocol import (
    MAX_MESSAGE,
    MAX_STACK,
    Dropped,
    ErrorEvent,
    RunEnd,
    RunStart,
    StepEnd,
    StepStart,
)
from ._timefmt import iso_from_ms

if TYPE_CHECKING:
    from ._apply import Applier

__all__ = ["HANDLERS", "LOST_MESSAGE", "LOST_STEP_NAME", "Rejected"]

_json = msgspec.json.Encoder()


class Rejected(Exception):
    """An event that is well-formed but cannot be applied (it contradicts the db)."""


class _Run(msgspec.Struct, array_like=True):
    id: int
    club_slug: str
    started_ms: int


class _Step(msgspec.Struct, array_like=True):
    id: int
    run_id: int
    started_ms: int


def _end_key(ts: int, event_id: str) -> str:
    return f"{ts:015d}:{event_id}"


def _json_or_none(value: Any) -> str | None:
    return None if value is None else _json.encode(value).decode()


def _run_start(self: Applier, e: RunStart) -> None:
    peer = self.peer
    if e.run in self._runs:
        _same_start(self, e)
        if peer is not None:
            _record_peer(self, e, peer)
        return  # a duplicate
    parent_id = None
    if e.parent is not None:
        parent = self._run(e.parent)
        parent_id = parent.id if parent is not None else None
    club = e.club_slug if e.club_slug is not None else "rondo"
    pid, start = peer if peer is not None else (None, None)
    # A new run is the rule: insert (with the peer that sent it: the monitor's
    # crash detection), and let the uid index say "already there" rather than
    # looking it up first.
    cur = self._conn.execute(
        "INSERT INTO runs (uid, club_slug, pipeline, started_at, outcome,"
        " parent_uid, parent_run_id, meta_json, peer_pid, peer_start, received_at)"
        " VALUES (?, ?, ?, ?, 'running', ?, ?, ?, ?, ?, ?) ON CONFLICT (uid) DO NOTHING",
        (
            e.run,
            club,
            e.pipeline,
            iso_from_ms(e.ts),
            e.parent,
            parent_id,
            _json_or_none(e.meta),
            pid,
            start,
            iso_from_ms(self.clock()),
        ),
    )
    if not cur.rowcount:
        _same_start(self, e)
        if peer is not None:
            _record_peer(self, e, peer)
        return  # a duplicate
    run_id = cur.lastrowid
    assert run_id is not None
    self._runs[e.run] = _Run(run_id, club, e.ts)
    orphans = self.orphan_parents()
    if e.parent is not None and parent_id is None:
        orphans.add(e.parent)  # linked when its run_start arrives
    if e.run in orphans:
        # Children that started before their parent's run_start arrived (the
        # rare case: no UPDATE for every run).
        orphans.discard(e.run)
        self._conn.execute(
            "UPDATE runs SET parent_run_id = ? WHERE parent_uid = ? AND parent_run_id IS NULL",
            (run_id, e.run),
        )
    if self.parking.waiting:  # else nothing can be waiting for it: no call
        self._release("run:" + e.run)


def _same_start(self: Applier, e: RunStart) -> None:
    """A second run_start of a run must be a copy: another pipeline or club under the
    same run uid is refused (dead_letters) rather than acked and dropped in silence
    (found from outside).  Only duplicates pay for the query."""
    row = self._conn.execute(
        "SELECT pipeline, club_slug FROM runs WHERE uid = ?", (e.run,)
    ).fetchone()
    club = e.club_slug if e.club_slug is not None else "rondo"
    if row is not None and (row[0], row[1]) != (e.pipeline, club):
        raise Rejected(
            f"run_start {e.id!r}: run {e.run!r} was started already as pipeline {row[0]!r}"
            f" of club {row[1]!r}, not {e.pipeline!r} of {club!r}"
        )


def _record_peer(self: Applier, e: RunStart, peer: tuple[int, int | None]) -> None:
    """A duplicate run_start: the peer goes on a run that has none yet (one from a spool)."""
    self._conn.execute(
        "UPDATE runs SET peer_pid = ?, peer_start = ? WHERE uid = ? AND peer_pid IS NULL",
        (*peer, e.run),
    )


def _step_start(self: Applier, e: StepStart) -> None:
    run = self._runs.get(e.run)  # the cache first: no call on the common path
    if run is None and (run := self._run(e.run)) is None:
        self._park(e, "run:" + e.run)
        return
    if e.step in self._steps:
        self._step_of(run, e.step, e)  # Rejected if it is another run's
        return  # a duplicate
    end = self._ends.get(e.step)
    if end is not None and end.run == e.run:
        cur = _insert_finished(self, e, run, end)
    else:
        end = None
        cur = self._conn.execute(
            "INSERT INTO run_steps (uid, run_id, club_slug, step_name, started_at)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (uid) DO NOTHING",
            (e.step, run.id, run.club_slug, e.name, iso_from_ms(e.ts)),
        )
    if not cur.rowcount:
        self._step_of(run, e.step, e)  # already there: Rejected if it is another run's
        return  # a duplicate
    step_id = cur.lastrowid
    assert step_id is not None
    self._steps[e.step] = _Step(step_id, run.id, e.ts)
    if end is not None:
        self._merged.add(id(end))
        self._dirty_runs.add(run.id)
    if self.parking.waiting:
        self._release("step:" + e.step)


def _insert_finished(self: Applier, e: StepStart, run: _Run, end: StepEnd) -> sqlite3.Cursor:
    """The step's row as its start and then ``end`` would leave it, in one INSERT."""
    duration = end.duration_ms if end.duration_ms is not None else max(0, end.ts - e.ts)
    return self._conn.execute(
        "INSERT INTO run_steps (uid, run_id, club_slug, step_name, started_at,"
        " finished_at, duration_ms, outcome, created_count, updated_count, skipped_count,"
        " failed_count, detail_json, end_key)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (uid) DO NOTHING",
        (
            e.step,
            run.id,
            run.club_slug,
            e.name,
            iso_from_ms(e.ts),
            iso_from_ms(end.ts),
            duration,
            end.outcome,
            end.created,
            end.updated,
            end.skipped,
            end.failed,
            _json_or_none(end.detail),
            _end_key(end.ts, end.id),
        ),
    )


def _step_end(self: Applier, e: StepEnd) -> None:
    if self._merged and id(e) in self._merged:
        self._merged.discard(id(e))
        return  # inserted with its step's start
    run = self._runs.get(e.run)  # the cache first: no call on the common path
    if run is None and (run := self._run(e.run)) is None:
        self._park(e, "run:" + e.run)
        return
    step = self._step_of(run, e.step, e)
    if step is None:
        self._park(e, "step:" + e.step)
        return
    duration = e.duration_ms if e.duration_ms is not None else max(0, e.ts - step.started_ms)
    key = _end_key(e.ts, e.id)
    cur = self._conn.execute(
        "UPDATE run_steps SET finished_at = ?, duration_ms = ?, outcome = ?,"
        " created_count = ?, updated_count = ?, skipped_count = ?, failed_count = ?,"
        " detail_json = ?, end_key = ? WHERE id = ? AND (end_key IS NULL OR end_key < ?)",
        (
            iso_from_ms(e.ts),
            duration,
            e.outcome,
            e.created,
            e.updated,
            e.skipped,
            e.failed,
            _json_or_none(e.detail),
            key,
            step.id,
            key,
        ),
    )
    if cur.rowcount:  # else a duplicate, or an older end than the one kept
        self._dirty_runs.add(run.id)


def _error(self: Applier, e: ErrorEvent) -> None:
    run = self._runs.get(e.run)  # the cache first: no call on the common path
    if run is None and (run := self._run(e.run)) is None:
        self._park(e, "run:" + e.run)
        return
    step_id = None
    if e.step is not None:
        step = self._steps.get(e.step)
        if step is None or step.run_id != run.id:
            step = self._step_of(run, e.step, e)  # Rejected if it is another run's
        if step is None:
            self._park(e, "step:" + e.step)
            return
        step_id = step.id
    stack = e.stack[:MAX_STACK] if e.stack is not None else None
    message = e.message[:MAX_MESSAGE]
    cur = self._conn.execute(  # ON CONFLICT: a duplicate changes nothing
        "INSERT INTO run_errors (uid, run_id, run_step_id, club_slug, step_name,"
        " member_identifier, error_message, error_stack, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (uid) DO NOTHING",
        (
            e.id,
            run.id,
            step_id,
            run.club_slug,
            e.step_name,
            e.member,
            message,
            stack,
            iso_from_ms(e.ts),
        ),
    )
    if not cur.rowcount:  # a duplicate: a copy, or another error under the same id
        kept = self._conn.execute(
            "SELECT run_id, error_message FROM run_errors WHERE uid = ?", (e.id,)
        ).fetchone()
        if kept is not None and (kept[0], kept[1]) != (run.id, message):
            raise Rejected(
                f"error {e.id!r}: another error was recorded under this id already;"
                " an event id names one event"
            )


def _run_end(self: Applier, e: RunEnd) -> None:
    run = self._runs.get(e.run)  # the cache first: no call on the common path
    if run is None and (run := self._run(e.run)) is None:
        self._park(e, "run:" + e.run)
        return
    duration = e.duration_ms if e.duration_ms is not None else max(0, e.ts - run.started_ms)
    key = _end_key(e.ts, e.id)
    cur = self._conn.execute(
        "UPDATE runs SET finished_at = ?, duration_ms = ?, outcome = ?, summary_json = ?,"
        " end_key = ? WHERE id = ? AND (end_key IS NULL OR end_key < ?)",
        (iso_from_ms(e.ts), duration, e.outcome, _json_or_none(e.summary), key, run.id, key),
    )
    if cur.rowcount:  # else a duplicate, or an older end than the one kept
        self._dirty_runs.add(run.id)


#: ``step_name`` and message of the error row a ``dropped`` marker adds.
LOST_STEP_NAME = "(run)"
LOST_MESSAGE = "{n} events were lost: spool disk full"
#: An end_key after any real one (ts has at most 15 digits): no run_end, however
#: late, turns a run that lost events back into a success.
_LOST_END_KEY = "9" * 15 + ":dropped"


def _dropped(self: Applier, e: Dropped) -> None:
    """A client lost ``e.events`` events of the run: an error row, and the run is a failure."""
    run = self._runs.get(e.run)  # the cache first: no call on the common path
    if run is None and (run := self._run(e.run)) is None:
        self._park(e, "run:" + e.run)
        return
    self._conn.execute(
        "INSERT INTO run_errors (uid, run_id, club_slug, step_name, error_message, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (uid) DO NOTHING",
        (
            e.id,
            run.id,
            run.club_slug,
            LOST_STEP_NAME,
            LOST_MESSAGE.format(n=e.events),
            iso_from_ms(e.ts),
        ),
    )
    # Closed as failure; a run that already ended keeps its end time and duration.
    self._conn.execute(
        "UPDATE runs SET outcome = 'failure', end_key = ?,"
        " finished_at = coalesce(finished_at, ?), duration_ms = coalesce(duration_ms, ?)"
        " WHERE id = ?",
        (_LOST_END_KEY, iso_from_ms(e.ts), max(0, e.ts - run.started_ms), run.id),
    )


#: One dict lookup per event instead of a chain of isinstance checks.
HANDLERS: dict[type, Any] = {
    RunStart: _run_start,
    StepStart: _step_start,
    StepEnd: _step_end,
    ErrorEvent: _error,
    RunEnd: _run_end,
    Dropped: _dropped,
}
