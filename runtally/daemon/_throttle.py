"""Say it once a minute, with the count: for faults that repeat many times a second."""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable

__all__ = ["Throttle"]


class Throttle:
    """At most one report per key per ``interval_s``, carrying how many occurrences it covers.

    ``hit(key, n)`` counts ``n`` occurrences and returns the number of
    occurrences since the last report (these included) when a report is due
    now, else None.  The first occurrence of a key is always reported at once.
    """

    def __init__(
        self, interval_s: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.interval_s = interval_s
        self._clock = clock
        #: key -> [occurrences not yet reported, time of the last report]
        self._state: dict[Hashable, list[float]] = {}

    def hit(self, key: Hashable = None, n: int = 1) -> int | None:
        now = self._clock()
        state = self._state.get(key)
        if state is None:
            self._state[key] = [0, now]
            return n
        state[0] += n
        if now - state[1] < self.interval_s:
            return None
        count, state[0], state[1] = int(state[0]), 0, now
        return count
