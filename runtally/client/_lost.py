"""Events the client could not keep anywhere, counted per run until they can be reported.

An event is *lost* when neither the spool nor the daemon has it: the spool's
disk is full (or its directory unusable) and the daemon is not there, or
the connection it was sent on broke before its ack and the spool still can't
take it.  Tracking must not block, so the event is gone; but the run it
belonged to must not then stay ``running`` forever with no trace.  So losses
are counted per run, a warning with the count goes to stderr, and once the
spool or the daemon takes events again, one ``dropped`` marker per run says
how many were lost (the daemon closes the run as ``failure`` with an error
row "n events were lost: spool disk full").
"""

from __future__ import annotations

import functools

import msgspec

from runtally.protocol import Dropped

from ._ids import now_ms, uuid7
from ._warn import warn

__all__ = ["LostEvents"]


class _RunOf(msgspec.Struct):
    """What the accounting needs of an encoded event: its run, and a marker's count."""

    type: str = ""
    run: str | None = None
    events: int = 1


@functools.cache
def _decoder() -> msgspec.msgpack.Decoder[_RunOf]:
    """Built when an event is first lost, not at import: most processes never lose one."""
    return msgspec.msgpack.Decoder(_RunOf)


class LostEvents:
    """Per-run counts of lost events, and the markers that report them."""

    __slots__ = ("by_run", "total", "unattributed")

    def __init__(self) -> None:
        self.by_run: dict[str, int] = {}
        self.total = 0  # events lost in this process, reported or not
        self.unattributed = 0  # lost events whose run could not be read

    def __bool__(self) -> bool:
        return bool(self.by_run)

    def add(self, payloads: list[bytes]) -> None:
        """Count encoded events as lost (a lost ``dropped`` marker gives its count back)."""
        for payload in payloads:
            try:
                info = _decoder().decode(payload)
            except (msgspec.DecodeError, msgspec.ValidationError):
                self.unattributed += 1
                continue
            if info.type == "dropped" and info.run:
                self.by_run[info.run] = self.by_run.get(info.run, 0) + info.events
                continue  # the events were counted when they were lost
            self.total += 1
            if info.run:
                self.by_run[info.run] = self.by_run.get(info.run, 0) + 1
            else:
                self.unattributed += 1

    def take_markers(self) -> list[Dropped]:
        """One ``dropped`` event per run with losses; the counts are reset.

        A marker that is lost in turn is ``add``-ed back with its count.
        """
        lost, self.by_run = self.by_run, {}
        markers = []
        for run, n in lost.items():
            ts = now_ms()
            markers.append(Dropped(id=uuid7(ts), ts=ts, run=run, events=n))
        return markers

    @staticmethod
    def warn_reported(marker: Dropped) -> None:
        """The marker is on its way: say so, with the count."""
        warn(
            f"{marker.events} event(s) of run {marker.run} were lost: the spool could not "
            "be written (disk full?); the daemon will record that run as failed"
        )

    def warn_unreported(self) -> None:
        """At close: say what is lost and could not even be reported."""
        unreported, runs = sum(self.by_run.values()), len(self.by_run)
        self.by_run = {}  # said once: a second close (atexit) does not retry or repeat it
        if unreported:
            warn(
                f"{unreported} event(s) of {runs} run(s) were lost "
                "(spool disk full?) and could not be reported to the daemon"
            )
