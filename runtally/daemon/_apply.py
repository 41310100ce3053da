"""How each event changes the dashboard tables: idempotent and order-independent.

Theory of operation
-------------------
Every event names its rows by client-generated uids, so applying it twice
finds the row it made the first time:

==========  ======================================  ==================================
event       needs                                   effect (a duplicate changes nothing)
==========  ======================================  ==================================
run_start   -                                       INSERT runs (uid unique); links
                                                    children that named it as parent
step_start  its run                                 INSERT run_steps (uid unique)
step_end    its run and step                        UPDATE run_steps if its end_key
                                                    is newer; run totals := sums
error       its run (and step, if it names one)     INSERT run_errors (uid unique)
run_end     its run                                 UPDATE runs if its end_key is
                                                    newer; run totals := sums
dropped     its run                                 INSERT run_errors (uid unique) "n
                                                    events were lost"; the run is
                                                    closed as failure for good
==========  ======================================  ==================================

An event whose run or step does not exist yet is *parked*: stored in
``parked_events`` (keyed by event id, so parking twice is parking once) in the
same transaction as its ack.  When the run or step appears, the parked events
waiting for it are applied in that same transaction; one that turns out to
contradict the db then (its step belongs to another run) is handed back in
``refused`` for the Store to dead-letter, without failing the event that
released it.  Totals are always recomputed as sums of the steps (TOTAL, which
saturates instead of overflowing), never incremented, so late, repeated or
parked step ends cannot double-count.  ``end_key`` (``ts:id``) makes two
different ends of the same step or run resolve to the same winner whatever
order they arrive in.

Within one batch, a step whose ``step_end`` follows its ``step_start`` (the
common case: a short step) is inserted finished, in one INSERT, and that
``step_end`` is then skipped (``plan``): the row is the one the UPDATE would
have left, and any other end of the step in the batch is still compared by
``end_key`` as usual.

The handler of each event type is in ``_handlers``; the Applier dispatches to
it and keeps the bookkeeping: lookups, parking, the totals of a batch's runs.
It keeps uid -> id caches, and the parent uids that children wait for (so
that a run_start looks for children to link only when some wait); they are
only valid because the daemon is the one writer.  ``forget()`` must be
called whenever a transaction rolls back.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence

import msgspec

from ..protocol import Event, RunEnd, StepEnd, StepStart
from ._handlers import HANDLERS, Rejected, _json_or_none, _Run, _Step
from ._parking import OverBudget, Parking
from ._timefmt import iso_from_ms, ms_from_iso, now_ms

__all__ = ["Applier", "Rejected"]

_CACHE_LIMIT = 10_000
_event_encoder = msgspec.msgpack.Encoder()
_event_decoder = msgspec.msgpack.Decoder(Event)


def decode_parked(payload: bytes) -> Event:
    """A parked event, as ``Applier._park`` stored it."""
    return _event_decoder.decode(payload)


class Applier:
    """Applies validated events on one connection, inside the caller's transaction."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        *,
        parking: Parking | None = None,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self._conn = conn
        self._runs: dict[str, _Run] = {}
        self._steps: dict[str, _Step] = {}
        self._dirty_runs: set[int] = set()
        #: Parked events refused when released (Rejected): the Store dead-letters them.
        self.refused: list[tuple[Event, str]] = []
        #: Parked events, their counters and bounds (see ``_parking``).
        self.parking = Parking(conn) if parking is None else parking
        #: The uid of the peer whose event is being applied (parked bytes are counted per uid).
        self.peer_uid: int | None = None
        #: For a run_start from a socket: the peer's (pid, start time) its run records
        #: (``Store.apply`` sets it; None for a spool's or a parked event).
        self.peer: tuple[int, int | None] | None = None
        #: Milliseconds since the epoch, for ``parked_at`` (tests inject their own).
        self.clock = clock
        #: This batch's first step_end per step uid, where it follows the step's
        #: start in the batch (``plan``); and those already merged into an INSERT.
        self._ends: dict[str, StepEnd] = {}
        self._merged: set[int] = set()
        #: Uids named as parent by runs not linked to it yet (their parent's run_start
        #: has not arrived): only a run_start of one of these has children to link.
        #: None: not read yet (``orphan_parents``); dropped with the other caches.
        self._orphans: set[str] | None = None

    def forget(self) -> None:
        """Drop cached ids and pending work (after a rollback)."""
        self._runs.clear()
        self._steps.clear()
        self._dirty_runs.clear()
        self.refused.clear()
        self._ends.clear()
        self._merged.clear()
        self._orphans = None
        self.parking.load()

    @property
    def parked_count(self) -> int:
        """Events parked until their run or step appears."""
        return self.parking.count

    # -- public ---------------------------------------------------------------

    def plan(self, events: Sequence[Event]) -> None:
        """Before a batch: note each step_end that follows its step's start in ``events``."""
        ends, started = self._ends, set()
        for event in events:
            kind = type(event)
            if kind is StepStart:
                started.add(event.step)
            elif kind is StepEnd and event.step in started and event.step not in ends:
                ends[event.step] = event

    def apply(self, event: Event) -> None:
        """Apply one event: insert or update its rows, park it, or (a duplicate) nothing.

        Raises Rejected when it contradicts the database.
        """
        handler = HANDLERS.get(type(event))
        if handler is None:  # pragma: no cover - the Event union is closed
            raise Rejected(f"not an event: {type(event).__name__}")
        handler(self, event)

    def finish(self) -> None:
        """End of a batch: recompute the totals of every run whose steps changed."""
        if not self._dirty_runs:
            return
        self._conn.executemany(
            # TOTAL, not SUM: SUM raises "integer overflow" on huge counts, which
            # would fail every later batch; CAST saturates at the int64 maximum.
            "UPDATE runs SET (total_created, total_updated, total_skipped, total_failed) = ("
            " SELECT CAST(TOTAL(created_count) AS INTEGER), CAST(TOTAL(updated_count) AS INTEGER),"
            " CAST(TOTAL(skipped_count) AS INTEGER), CAST(TOTAL(failed_count) AS INTEGER)"
            " FROM run_steps WHERE run_id = ?1) WHERE id = ?1",
            [(run_id,) for run_id in self._dirty_runs],
        )
        self._dirty_runs.clear()
        self._ends.clear()
        self._merged.clear()
        if len(self._runs) > _CACHE_LIMIT or len(self._steps) > _CACHE_LIMIT:
            self._runs.clear()
            self._steps.clear()

    # -- lookups ----------------------------------------------------------------

    def orphan_parents(self) -> set[str]:
        """Parent uids that runs name but are not linked to yet (read once, then kept).

        One query over the runs that name a parent, when first needed after a
        start or a ``forget``; kept up to date by ``_run_start`` from then on.
        """
        if self._orphans is None:
            self._orphans = {
                uid
                for (uid,) in self._conn.execute(
                    "SELECT DISTINCT parent_uid FROM runs"
                    " WHERE parent_uid IS NOT NULL AND parent_run_id IS NULL"
                )
            }
        return self._orphans

    def _run(self, uid: str) -> _Run | None:
        run = self._runs.get(uid)
        if run is None:
            row = self._conn.execute(
                "SELECT id, club_slug, started_at FROM runs WHERE uid = ?", (uid,)
            ).fetchone()
            if row is None:
                return None
            run = self._runs[uid] = _Run(row[0], row[1], ms_from_iso(row[2]))
        return run

    def _step(self, uid: str) -> _Step | None:
        step = self._steps.get(uid)
        if step is None:
            row = self._conn.execute(
                "SELECT id, run_id, started_at FROM run_steps WHERE uid = ?", (uid,)
            ).fetchone()
            if row is None:
                return None
            step = self._steps[uid] = _Step(row[0], row[1], ms_from_iso(row[2]))
        return step

    def _step_of(self, run: _Run, step_uid: str, event: Event) -> _Step | None:
        step = self._step(step_uid)
        if step is not None and step.run_id != run.id:
            raise Rejected(
                f"{type(event).__struct_config__.tag} {event.id!r}: step {step_uid!r} "
                f"belongs to another run than {event.run!r}"
            )
        return step

    # -- parking ----------------------------------------------------------------

    def _park(self, event: Event, waiting_for: str) -> None:
        # Fail now, like the in-order path would, rather than when released:
        # a parked event that cannot be encoded would roll back its run's start.
        if isinstance(event, StepEnd):
            _json_or_none(event.detail)
        elif isinstance(event, RunEnd):
            _json_or_none(event.summary)
        try:
            self.parking.park(
                event.id,
                waiting_for,
                _event_encoder.encode(event),
                self.peer_uid,
                iso_from_ms(self.clock()),
            )
        except OverBudget as exc:
            raise Rejected(str(exc)) from None

    def _release(self, waiting_for: str) -> None:
        for payload in self.parking.release(waiting_for):
            event = decode_parked(payload)
            # A parked event that contradicts the db is refused on its own: it
            # must not fail the event that released it (nor the ones after it).
            try:
                self.apply(event)
            except Rejected as exc:
                self.refused.append((event, str(exc)))
