"""Acked means durable: synchronous=FULL by default; NORMAL syncs before a spool file goes.

A power loss cannot be simulated here.  What is checked instead is what
makes an ack survive one: the pragma the connection really runs with, and,
at the NORMAL opt-in, that a replayed spool file is unlinked only after a
commit made at synchronous=FULL (whose fsync of the WAL covers every frame
committed before it).  The order is observed on the daemon's own connection
through SQLite's trace callback, with the file's existence sampled at each
statement.
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
import trio
from daemon_helpers import run_events, settings_for

from runtally.config import Settings
from runtally.daemon._server import Daemon, serve
from runtally.daemon._store import Store
from runtally.protocol import SPOOL_MAGIC, encode_record

pytestmark = pytest.mark.timeout(30)


def test_full_is_the_default(tmp_path: Path) -> None:
    assert Settings(socket=tmp_path / "s", db=tmp_path / "d", spool=tmp_path / "p").synchronous == (
        "FULL"
    )
    store = Store.open(tmp_path / "dashboard.sqlite")
    try:
        assert store.query("PRAGMA synchronous") == [(2,)]  # 2 = FULL
    finally:
        store.close()


def test_normal_is_an_explicit_opt_in(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "dashboard.sqlite", synchronous="NORMAL")
    try:
        assert store.query("PRAGMA synchronous") == [(1,)]
        store.apply(run_events("R", steps=1, errors=0), durable=True)
        assert store.query("PRAGMA synchronous") == [(1,)]  # back to NORMAL after it
    finally:
        store.close()


async def test_at_normal_a_replayed_spool_file_goes_only_after_a_full_sync(
    short_root: Path, nursery: trio.Nursery
) -> None:
    settings = settings_for(short_root, synchronous="NORMAL", replay_interval_s=3600.0)
    d: Daemon = await nursery.start(serve, settings)
    try:
        path = settings.spool / "1770000000000-host-1-abc.spool"
        records = [encode_record(msgspec.msgpack.encode(e)) for e in run_events("spooled")]
        path.write_bytes(SPOOL_MAGIC + b"".join(records))
        trace: list[tuple[str, bool]] = []
        conn = d.store._conn
        conn.set_trace_callback(lambda sql: trace.append((sql.strip().upper(), path.exists())))
        # Whichever replay takes it: ours, or the start-up one (started beside
        # the daemon with start_soon, it may run only now).
        with trio.fail_after(10):
            await d.replayer.replay_once()
            while path.exists():
                await trio.sleep(0.01)
        conn.set_trace_callback(None)
        assert d.replayer.total.files == 1
        mode, last_commit_mode = "NORMAL", None
        for sql, exists in trace:
            if not exists:
                break
            if sql.startswith("PRAGMA SYNCHRONOUS ="):
                mode = sql.rsplit("=", 1)[1].strip()
            elif sql == "COMMIT":
                last_commit_mode = mode
        # The last commit before the file vanished was an fsyncing (FULL) one.
        assert last_commit_mode == "FULL", trace
        assert d.store.query("PRAGMA synchronous") == [(1,)]
    finally:
        d.request_stop()
