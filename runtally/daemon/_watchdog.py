"""The systemd watchdog: WATCHDOG=1 only while the writer shows progress.

A timer alone would keep pinging while the writer is wedged (stuck inside
SQLite, or retrying a commit that keeps failing), and systemd would never
restart us.  So each tick pings only if the writer's ``heartbeat`` is recent:
it moves on a commit or an idle queue, never on a retry; a stalled writer's tick sends a STATUS
saying so instead, and systemd kills and restarts the daemon once WATCHDOG_USEC
passes without a ping.  The ping and the status go in one datagram, so what a
tick decided can be read off the notify socket (the tests do).
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from ._systemd import Notifier
from ._writer import Writer

__all__ = ["Watchdog"]


class Watchdog:
    """Pings every ``interval_s`` seconds while the writer's heartbeat is younger than ``stall_s``.

    ``stall_s`` defaults to two intervals plus a second: the writer refreshes
    its heartbeat at least every ``tick_s`` (1 s) when idle and after every
    commit, never on a failed attempt, so a commit stuck or failing longer
    than that counts as a stall.
    ``summary`` gives the STATUS text of each tick.
    """

    def __init__(
        self,
        notifier: Notifier,
        writer: Writer,
        summary: Callable[[], str],
        *,
        interval_s: float,
        stall_s: float | None = None,
    ) -> None:
        self.notifier = notifier
        self.writer = writer
        self.summary = summary
        self.interval_s = interval_s
        self.stall_s = 2 * interval_s + 1.0 if stall_s is None else stall_s

    def stalled_for(self) -> float | None:
        """Seconds since the writer's last sign of life, if that is a stall; else None."""
        age = trio.current_time() - self.writer.heartbeat
        return age if age >= self.stall_s else None

    def tick(self) -> None:
        """One notification: WATCHDOG=1 and the status, or the status and why no ping."""
        stalled = self.stalled_for()
        if stalled is None:
            self.notifier.notify(WATCHDOG=1, STATUS=self.summary())
        else:
            self.notifier.status(
                f"{self.summary()}; writer stalled for {stalled:.1f} s, watchdog not pinged"
            )

    async def run(self) -> None:
        """Tick every ``interval_s`` until cancelled."""
        while True:
            await trio.sleep(self.interval_s)
            self.tick()
