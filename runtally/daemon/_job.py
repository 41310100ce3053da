"""A unit of the writer's work: events and records from one source, one completion signal."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from ..protocol import Event
from ._records import AuditEntry, DeadLetter, Origin, Write

if TYPE_CHECKING:
    from ._store import Store

__all__ = ["Job"]


@dataclass(eq=False, slots=True)
class Job:
    """Work for one transaction, from one source, with one completion signal."""

    events: list[Event] = field(default_factory=list)
    frames: list[bytes] = field(default_factory=list)
    origin: Origin = field(default_factory=Origin)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    audit: list[AuditEntry] = field(default_factory=list)
    results: list[str | None] = field(default_factory=list)
    #: Statements of the daemon's own (the monitor's pipeline_states), run in the
    #: same transaction as the batch: see ``Store.apply``.
    writes: list[Write] = field(default_factory=list)
    done: trio.Event = field(default_factory=trio.Event)
    nbytes: int = 0  # its frames' bytes, counted against the queue's byte budget
    queued_cost: int = 0  # its cost when queued, given back once committed
    #: Its results are final: set once committed, so a batch retried after a
    #: StoreBusy in the slow path does not write its dead letters twice.
    committed: bool = False
    #: Synced to disk when ``done`` is set, even at synchronous=NORMAL (what a
    #: replayed spool file's deletion must wait for).
    durable: bool = False
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
        return not (self.events or self.dead_letters or self.audit or self.writes)

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
        self.writes = []
