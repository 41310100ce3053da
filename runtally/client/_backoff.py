"""When a Client may try to connect again: a dead daemon costs a connect now and then."""

from __future__ import annotations

import math
from collections.abc import Callable

__all__ = ["Backoff"]


class Backoff:
    """Connect attempts spaced out: at once at first, then ``initial`` s doubling to ``maximum``.

    ``clock`` is monotonic seconds (``ClientOptions.clock``).
    """

    __slots__ = ("_clock", "_delay", "_initial", "_last_attempt", "_maximum", "_next_attempt")

    def __init__(self, initial: float, maximum: float, clock: Callable[[], float]) -> None:
        self._initial = initial
        self._maximum = maximum
        self._clock = clock
        self._delay = initial
        self._next_attempt = -math.inf
        self._last_attempt = -math.inf

    def ready(self) -> bool:
        """Whether an attempt may be made now."""
        return self._clock() >= self._next_attempt

    def attempting(self) -> None:
        """An attempt starts now."""
        self._last_attempt = self._clock()

    def retry_later(self, *, useful: bool) -> None:
        """The attempt failed, or its connection broke: schedule the next one.

        A connection that carried acks and then dropped (``useful``) means the
        daemon is probably fine (idle timeout, restart): retry as soon as the
        minimum spacing since the last attempt allows, and start the doubling
        afresh.  Otherwise wait the current delay, and double it.
        """
        if useful:
            self._delay = self._initial
            self._next_attempt = self._last_attempt + self._initial
        else:
            self._next_attempt = self._clock() + self._delay
            self._delay = min(self._delay * 2, self._maximum)
