"""Spool files that cannot be removed, and ``corrupt/``: counted once, created first, named.

Each case was found by an outside attacker; each test failed before the fix.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import trio
from daemon_helpers import run_events
from test_replay import EVENT_COUNT_PER_RUN, spool_name, start, write_spool

from runtally.daemon._server import Daemon


async def test_a_file_that_cannot_be_moved_is_applied_and_counted_once(
    short_root: Path, nursery: trio.Nursery
) -> None:
    """Good records then a corrupt tail, and corrupt/ is a regular file: the move
    fails every round.  Its events were applied (and counted) again each round:
    ``events_committed`` showed 71 for 2 real events."""
    spool = short_root / "spool"
    spool.mkdir()
    (spool / "corrupt").write_text("not a directory")
    bad = spool / spool_name("bad")
    write_spool(bad, run_events("stuck", steps=2, errors=1), tail=b"\xde\xad\xbe\xef" * 4)
    d: Daemon = await start(short_root, nursery, replay_interval_s=3600.0)
    await d.replayer.first_pass_done.wait()
    for _ in range(3):  # three more rounds, each failing to move the file
        await d.replayer.replay_once()
    assert bad.exists()
    assert d.writer.events_committed == EVENT_COUNT_PER_RUN
    problems = d.status().problems
    assert any("corrupt/ is not a real directory" in p for p in problems), problems
    # Once corrupt/ is usable again, the file goes, still counted once.
    (spool / "corrupt").unlink()
    stats = await d.replayer.replay_once()
    assert not bad.exists()
    assert stats.quarantined == 1 and stats.events == EVENT_COUNT_PER_RUN
    assert d.writer.events_committed == EVENT_COUNT_PER_RUN
    assert d.status().problems == []
    d.request_stop()


async def test_corrupt_is_created_at_start_before_any_client(
    short_root: Path, nursery: trio.Nursery
) -> None:
    """A hand-made group-writable spool with no corrupt/: a member could create it
    first and so disable quarantine.  The daemon creates it at start, its own, 0700."""
    spool = short_root / "spool"
    spool.mkdir()
    os.chmod(spool, 0o2770)
    d: Daemon = await start(short_root, nursery)
    await d.replayer.first_pass_done.wait()
    st = os.lstat(spool / "corrupt")
    assert stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid()
    assert stat.S_IMODE(st.st_mode) & 0o777 == 0o700  # (setgid is inherited)
    assert d.status().problems == []
    d.request_stop()


async def test_status_names_why_quarantine_is_impossible(
    short_root: Path, nursery: trio.Nursery
) -> None:
    """corrupt/ made by someone else (here: group-writable, as a member's would be):
    status used to say only "is the daemon replaying?"; it names the reason."""
    spool = short_root / "spool"
    spool.mkdir()
    (spool / "corrupt").mkdir()
    os.chmod(spool / "corrupt", 0o770)
    bad = spool / spool_name("bad")
    bad.write_bytes(b"NOTSPOOL" + b"\0" * 20)
    d: Daemon = await start(short_root, nursery)
    await d.replayer.first_pass_done.wait()
    assert bad.exists()
    problems = d.status().problems
    assert any("corrupt/ is writable by its group" in p for p in problems), problems
    d.request_stop()
