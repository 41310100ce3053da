"""Once a full spool disk has room again, the very next events are kept (attack report).

Before: a spool file that could not be created was retried only after a
second, and close() made no attempt of its own, so every event made in that
second (thousands) was dropped and even the ``dropped`` marker never went in.
Real tmpfs, real files; the daemon is absent throughout.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from client_helpers import Sandbox, make_sandbox, read_events

from runtally.client import Client
from runtally.protocol import Dropped, RunStart, StepStart

pytestmark = [pytest.mark.timeout(60), pytest.mark.slow]

RUN = "0190f5c5-0000-7000-8000-000000000001"


@pytest.fixture
def sandbox(monkeypatch: pytest.MonkeyPatch) -> Iterator[Sandbox]:
    yield from make_sandbox(monkeypatch)


def _step(i: int) -> StepStart:
    uid = f"0190f5c5-0000-7000-8000-{i:012d}"
    return StepStart(id=uid, ts=1_770_000_000_000, run=RUN, step=uid, name=f"s{i}")


def test_events_after_space_is_back_are_spooled_and_the_loss_reported(
    sandbox: Sandbox, short_root: Path
) -> None:
    from test_faults_disk import fill, small_tmpfs

    spool = short_root / "spool"
    with small_tmpfs(spool, "1m"):
        filler = fill(spool)
        client = Client(short_root / "absent.sock", spool)
        client.emit(RunStart(id=RUN, ts=1_770_000_000_000, run=RUN, pipeline="p", club_slug="c"))
        for i in range(10):
            client.emit(_step(i))
        assert client.lost.total == 11  # not even a spool file could be created
        filler.unlink()  # space is back, well within the reopen delay
        for i in range(10, 3010):
            client.emit(_step(i))
        assert client.lost.total == 11  # none of those made after space came back
        client.close(0.1)
        (path,) = spool.glob("*.spool")
        events = read_events(path)
        steps = [e for e in events if isinstance(e, StepStart)]
        assert [e.name for e in steps] == [f"s{i}" for i in range(10, 3010)]
        (marker,) = [e for e in events if isinstance(e, Dropped)]
        assert (marker.run, marker.events) == (RUN, 11)


def test_close_makes_a_last_attempt_whatever_the_reopen_delay(
    sandbox: Sandbox, short_root: Path
) -> None:
    """A spool unusable for another reason than space (no statvfs shortcut): close retries."""
    blocker = short_root / "blocker"
    blocker.write_bytes(b"")  # the spool's parent is a file: ENOTDIR
    spool = blocker / "spool"
    client = Client(short_root / "absent.sock", spool)
    client.emit(_step(0))
    assert client.lost.total == 1
    blocker.unlink()  # usable again, well within the reopen delay
    client.close(0.1)
    (path,) = spool.glob("*.spool")
    (marker,) = [e for e in read_events(path) if isinstance(e, Dropped)]
    assert (marker.run, marker.events) == (RUN, 1)
