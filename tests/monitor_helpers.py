"""A monitor on a real Store and Writer, with a clock the test moves."""

from __future__ import annotations

import queue
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from daemon_helpers import settings_for

from runtally.daemon._alert_message import AlertEvent
from runtally.daemon._alerts import Dispatcher
from runtally.daemon._monitor import Monitor
from runtally.daemon._store import Origin, Store
from runtally.daemon._writer import Job, Writer
from runtally.protocol import ErrorEvent, Event, RunEnd, RunStart


def ms(text: str) -> int:
    """Epoch ms of an ISO 8601 UTC instant ("2026-03-29T01:00:00")."""
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@dataclass
class Clock:
    now_ms: int

    def __call__(self) -> float:
        return self.now_ms / 1000

    def at(self, text: str) -> None:
        self.now_ms = ms(text)


@dataclass
class Rig:
    store: Store
    writer: Writer
    monitor: Monitor
    dispatcher: Dispatcher
    clock: Clock
    sent: list[AlertEvent] = field(default_factory=list)
    n: int = 0

    async def emit(self, *events: Event, origin: Origin | None = None) -> None:
        job = Job(events=list(events), origin=origin or Origin("socket"))
        await self.writer.submit(job)
        await job.done.wait()
        assert job.results == [None] * len(events)

    def _id(self) -> str:
        self.n += 1
        return f"e{self.n}"

    async def start(self, run: str, pipeline: str, at: str, origin: Origin | None = None) -> None:
        await self.emit(
            RunStart(id=self._id(), ts=ms(at), run=run, pipeline=pipeline), origin=origin
        )

    async def end(
        self, run: str, at: str, outcome: str = "success", error: str | None = None
    ) -> None:
        if error:
            await self.emit(
                ErrorEvent(id=self._id(), ts=ms(at), run=run, step_name="s", message=error)
            )
        await self.emit(RunEnd(id=self._id(), ts=ms(at), run=run, outcome=outcome))  # type: ignore[arg-type]

    async def state_at(self, when: str, pipeline: str) -> str:
        self.clock.at(when)
        verdicts = await self.monitor.tick()
        return verdicts[pipeline].state

    def alerts(self) -> list[AlertEvent]:
        """Alerts queued since the last call (the dispatcher's thread is not started)."""
        q = self.dispatcher._queue
        while True:
            try:
                event = q.get_nowait()
            except queue.Empty:
                return self.sent
            if event is not None:
                self.sent.append(event)


def make_rig(root: Path, store: Store, writer: Writer, start: str, **settings: object) -> Rig:
    s = settings_for(root, **settings)
    clock = Clock(ms(start))
    dispatcher = Dispatcher(s)
    return Rig(store, writer, Monitor(s, writer, dispatcher, clock=clock), dispatcher, clock)
