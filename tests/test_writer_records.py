"""A record that can never be written must not wedge the writer (nor every ack with it).

Before the fix, an audit row or dead letter the database refused was taken
for a broken database: retried forever, nothing acked, exit after a minute.
"""

from __future__ import annotations

from pathlib import Path

import trio
from daemon_helpers import count
from test_replay import start

from runtally.daemon._server import Daemon
from runtally.daemon._store import AuditEntry
from runtally.daemon._writer import Job


async def test_an_unwritable_audit_row_is_dropped_and_the_rest_committed(
    short_root: Path, nursery: trio.Nursery
) -> None:
    d: Daemon = await start(short_root, nursery)
    # object() has no JSON form: this row can never be written, whatever the database.
    bad = Job(audit=[AuditEntry("odd", "data without a JSON form", data=object())])
    good = Job(audit=[AuditEntry("fine", "an ordinary row")])
    await d.writer.submit(bad)
    await d.writer.submit(good)
    with trio.fail_after(10):
        await bad.done.wait()
        await good.done.wait()
    db = d.settings.db
    assert count(db, "audit_log", "event = 'fine'") == 1
    assert count(db, "audit_log", "event = 'odd'") == 0
    assert count(db, "audit_log", "event = 'records_dropped'") == 1
    assert d.writer.busy_since is None and not d.writer.gave_up
    d.request_stop()
