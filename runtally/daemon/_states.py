"""A pipeline's state from its runs, its schedule and the clock: one pure function.

Theory of operation
-------------------
The monitor reads a ``Snapshot`` of each pipeline (its newest run, how many
finished runs failed in a row) and ``evaluate`` turns it into a ``Verdict``.
The first row that matches wins:

=========  ==================================================================
state      when
=========  ==================================================================
paused     an admin paused it (``runtally pause``); nothing else is judged
stuck      its newest run is running for longer than ``max_runtime``
running    its newest run is running
missed     a scheduled slot passed with no run, and so did the slot after it
           (and the first slot's grace)
late       a scheduled slot's grace passed with no run
crashed    its newest run was closed by the daemon: its process died
           without ``run_end`` (see ``_liveness``)
failing    its newest run failed
ok         anything else (a pipeline that has not run yet and is not late)
=========  ==================================================================

The schedule counts from the newest run's start (a run up to ``_EARLY_MS``
before a slot is that slot's run: clocks drift), or, before any run, from
when the daemon first saw the pipeline.
"""

from __future__ import annotations

import msgspec

from .._pipeline_config import PipelineConfig
from ..states import BAD_STATES, STATES, State
from ._schedule import next_slot

__all__ = ["BAD_STATES", "STATES", "RunInfo", "Snapshot", "State", "Verdict", "evaluate", "span"]

#: A run that starts this much before a slot counts for that slot (clock drift).
_EARLY_MS = 30_000


class RunInfo(msgspec.Struct, frozen=True):
    """The facts about one run the states need (times in epoch ms)."""

    id: int
    uid: str | None
    club: str
    started_ms: int
    outcome: str | None  # running / success / failure
    finished_ms: int | None = None
    duration_ms: int | None = None
    crashed: bool = False  # closed by the daemon: its process died without run_end
    error_count: int = 0
    first_error: str | None = None
    #: When the daemon received its run_start (its own clock; None before schema 8).
    received_ms: int | None = None

    @property
    def counted_from_ms(self) -> int:
        """Its start for the schedule: the earlier of the client's ``started_ms`` and
        ``received_ms``, so a client clock that runs ahead cannot push the next
        expected run (and late/missed) into the future."""
        if self.received_ms is None:
            return self.started_ms
        return min(self.started_ms, self.received_ms)


class Snapshot(msgspec.Struct, frozen=True):
    """One pipeline as the monitor read it: its newest run and its failure streak."""

    pipeline: str
    last: RunInfo | None = None
    failures_in_a_row: int = 0  # newest finished runs that failed, consecutively


class Verdict(msgspec.Struct, frozen=True):
    """A pipeline's state and why (``detail``, one sentence), with its schedule's slots.

    ``detail`` holds no relative age ("11 s ago"): it is stored and shown
    later; readers show ages from ``expected_ms``/``next_expected_ms``.
    """

    state: State
    detail: str
    expected_ms: int | None = None  # the slot that is late or missed
    next_expected_ms: int | None = None  # the next slot to come


def span(ms: float) -> str:
    """A limit or grace as people read it: ``20 s``, ``5 min``, ``2 h 30 min``."""
    s = int(ms // 1000)
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    return f"{s // 3600} h {s % 3600 // 60} min"


def evaluate(
    snap: Snapshot,
    config: PipelineConfig | None,
    *,
    now_ms: int,
    first_seen_ms: int,
    paused: bool = False,
) -> Verdict:
    """The state of ``snap``'s pipeline at ``now_ms`` (see the table above)."""
    last = snap.last
    config = config or PipelineConfig()
    upcoming = next_slot(config, now_ms)
    if paused:
        return Verdict("paused", "paused by an admin", next_expected_ms=upcoming)
    if last is not None and last.outcome == "running":
        ran = now_ms - last.started_ms
        limit = config.max_runtime_s
        if limit is not None and ran > limit * 1000:
            return Verdict(
                "stuck",
                f"run #{last.id} has been running longer than max_runtime {span(limit * 1000)}",
                next_expected_ms=upcoming,
            )
        return Verdict("running", f"run #{last.id} running", None, upcoming)
    base = last.counted_from_ms + _EARLY_MS if last is not None else first_seen_ms
    # None with a schedule too: no slot before the calendar ends (a run at 9999-12-31).
    expected = next_slot(config, base)
    if expected is not None:
        grace_ms = int(config.grace_s * 1000)
        following = next_slot(config, expected)
        if following is not None and now_ms >= max(following, expected + grace_ms):
            return Verdict(
                "missed",
                "no run for its slot, nor for the one after",
                expected,
                upcoming,
            )
        if now_ms >= expected + grace_ms:
            return Verdict(
                "late",
                f"no run since its slot (grace {span(grace_ms)})",
                expected,
                upcoming,
            )
        upcoming = expected if expected > now_ms else upcoming
    if last is None:
        return Verdict("ok", "no run yet", next_expected_ms=upcoming)
    if last.outcome == "failure" and last.crashed:
        return Verdict(
            "crashed",
            f"run #{last.id}'s process ended without end_run",
            next_expected_ms=upcoming,
        )
    if last.outcome == "failure":
        streak = f" ({snap.failures_in_a_row} in a row)" if snap.failures_in_a_row > 1 else ""
        return Verdict("failing", f"run #{last.id} failed{streak}", next_expected_ms=upcoming)
    return Verdict("ok", f"run #{last.id} succeeded", next_expected_ms=upcoming)
