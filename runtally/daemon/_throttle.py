"""Say it at most once a minute, with a true count: for faults that repeat many times a second."""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

__all__ = ["Report", "Throttle"]


@dataclass(frozen=True, slots=True)
class Report:
    """``count`` occurrences over the last ``span_s`` seconds (0.0 for the first, alone)."""

    count: int
    span_s: float

    def describe(self, what: str) -> str:
        """``"1 refused"`` for the first, ``"236 refused in the last 61 s"`` after it."""
        if self.span_s <= 0:
            return f"{self.count} {what} (the first; more are reported at most once a minute)"
        return f"{self.count} {what} in the last {self.span_s:.0f} s"


class Throttle:
    """At most one report per key per ``interval_s``, carrying how many occurrences it covers.

    ``hit(key, n)`` counts ``n`` occurrences and returns a Report of the
    occurrences since the last report (these included) when a report is due
    now, else None.  The first occurrence of a key is always reported at once.
    Occurrences counted but not reported yet (a burst that stopped) are
    returned by ``due``, which a caller runs every ``interval_s`` or so: no
    occurrence is left out of every report.
    """

    def __init__(
        self, interval_s: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.interval_s = interval_s
        self._clock = clock
        #: key -> [occurrences not yet reported, time of the last report]
        self._state: dict[Hashable, list[float]] = {}

    def hit(self, key: Hashable = None, n: int = 1) -> Report | None:
        now = self._clock()
        state = self._state.get(key)
        if state is None:
            self._state[key] = [0, now]
            return Report(n, 0.0)
        state[0] += n
        if now - state[1] < self.interval_s:
            return None
        return self._report(state, now)

    def due(self) -> list[tuple[Hashable, Report]]:
        """The keys with unreported occurrences whose interval has passed, and their Reports."""
        now = self._clock()
        return [
            (key, self._report(state, now))
            for key, state in self._state.items()
            if state[0] and now - state[1] >= self.interval_s
        ]

    @staticmethod
    def _report(state: list[float], now: float) -> Report:
        report = Report(int(state[0]), now - state[1])
        state[0], state[1] = 0, now
        return report
