"""Spool replay by the daemon: torn tails, corruption, crashes, other writers' files."""

from __future__ import annotations

import fcntl
import os
import shutil
import sqlite3
import struct
import zlib
from pathlib import Path

import msgpack
import msgspec
import pytest
import trio
from daemon_helpers import DaemonProcess, count, run_events, settings_for, wait_until

from runtally.daemon._server import Daemon, serve
from runtally.protocol import (
    SPOOL_MAGIC,
    Pong,
    decode_server_message,
    encode_frame,
    encode_record,
)

EVENT_COUNT_PER_RUN = len(run_events("x", steps=2, errors=1))


def write_spool(path: Path, events: list, *, tail: bytes = b"") -> list[bytes]:
    payloads = [msgspec.msgpack.encode(e) for e in events]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(SPOOL_MAGIC + b"".join(encode_record(p) for p in payloads) + tail)
    return payloads


def spool_name(tag: str) -> str:
    return f"1770000000000-testhost-{os.getpid()}-{tag}.spool"


async def start(root: Path, nursery: trio.Nursery, **kw: object) -> Daemon:
    return await nursery.start(serve, settings_for(root, **kw))


async def wait_gone(path: Path, timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        while path.exists():
            await trio.sleep(0.02)


class TestReplayAtStart:
    async def test_clean_and_torn_spools_are_applied_and_deleted(
        self, short_root: Path, nursery: trio.Nursery
    ) -> None:
        spool = short_root / "spool"
        clean = spool / spool_name("clean")
        torn = spool / spool_name("torn")
        write_spool(clean, run_events("clean", steps=2, errors=1))
        # A writer killed mid-append: a header and half a payload at the end.
        write_spool(
            torn, run_events("torn", steps=2, errors=1), tail=struct.pack(">II", 40, 0) + b"abc"
        )
        d = await start(short_root, nursery)
        await wait_gone(clean)
        await wait_gone(torn)
        db = d.settings.db
        assert count(db, "runs", "outcome = 'success'") == 2
        assert count(db, "run_errors") == 4
        replayed = "event = 'spool_replayed'"
        await trio.to_thread.run_sync(
            lambda: wait_until(lambda: count(db, "audit_log", replayed) == 2, what="audit")
        )
        assert d.replayer.total.events == 2 * EVENT_COUNT_PER_RUN
        d.request_stop()

    async def test_corrupt_spool_is_quarantined_after_good_records(
        self, short_root: Path, nursery: trio.Nursery
    ) -> None:
        spool = short_root / "spool"
        path = spool / spool_name("bad")
        good = run_events("good", steps=2, errors=1)
        lost = run_events("after-corruption", steps=1, errors=0)
        payloads = write_spool(path, good + lost)
        data = bytearray(path.read_bytes())
        # Flip a byte inside the first record of the second run.
        offset = len(SPOOL_MAGIC) + sum(8 + len(p) for p in payloads[: len(good)]) + 10
        data[offset] ^= 0xFF
        path.write_bytes(bytes(data))
        d = await start(short_root, nursery)
        await wait_gone(path)
        assert (spool / "corrupt" / path.name).read_bytes() == bytes(data)
        db = d.settings.db
        assert count(db, "runs", "uid = 'good' AND outcome = 'success'") == 1
        assert count(db, "runs", "uid = 'after-corruption'") == 0
        row = (
            sqlite3.connect(db)
            .execute("SELECT level, message FROM audit_log WHERE event = 'spool_quarantined'")
            .fetchone()
        )
        assert row[0] == "warning" and "CRC mismatch" in row[1] and path.name in row[1]
        d.request_stop()

    async def test_spool_written_with_msgpack_by_hand_is_replayed(
        self, short_root: Path, nursery: trio.Nursery
    ) -> None:
        """Another implementation of spool format v1: msgpack + zlib + struct."""
        events = [
            {
                "type": "run_start",
                "id": "h1",
                "ts": 1770000000000,
                "run": "hand",
                "pipeline": "nikki",
                "club_slug": "other",
                "meta": {"host": "h", "pid": 1},
            },
            {
                "pipeline": "ignored-unknown-order",
                "type": "step_start",
                "id": "h2",
                "ts": 1770000000100,
                "run": "hand",
                "step": "hs",
                "name": "download",
                "some_future_key": [1, 2],
            },
            {
                "type": "step_end",
                "id": "h3",
                "ts": 1770000000900,
                "run": "hand",
                "step": "hs",
                "outcome": "failure",
                "created": 4,
                "failed": 2,
                "detail": {"x": None},
            },
            {
                "type": "error",
                "id": "h4",
                "ts": 1770000000500,
                "run": "hand",
                "step": "hs",
                "step_name": "download",
                "member": "KNVB1",
                "message": "no email",
                "stack": None,
            },
            {
                "type": "run_end",
                "id": "h5",
                "ts": 1770000001000,
                "run": "hand",
                "outcome": "failure",
                "summary": {"errors": 2},
            },
        ]
        body = b"RLSPOOL1"
        for e in events:
            p = msgpack.packb(e)
            body += struct.pack(">II", len(p), zlib.crc32(p)) + p
        path = short_root / "spool" / spool_name("hand")
        path.parent.mkdir(parents=True)
        path.write_bytes(body)
        d = await start(short_root, nursery)
        await wait_gone(path)
        conn = sqlite3.connect(d.settings.db)
        run = conn.execute(
            "SELECT club_slug, pipeline, outcome, total_created, total_failed, duration_ms,"
            " started_at FROM runs WHERE uid = 'hand'"
        ).fetchone()
        assert run == ("other", "nikki", "failure", 4, 2, 1000, "2026-02-02T02:40:00.000Z")
        err = conn.execute(
            "SELECT member_identifier, error_message, club_slug FROM run_errors"
        ).fetchone()
        assert err == ("KNVB1", "no email", "other")
        d.request_stop()

    async def test_invalid_record_goes_to_dead_letters(
        self, short_root: Path, nursery: trio.Nursery
    ) -> None:
        bad = msgpack.packb({"type": "run_end", "id": "x", "ts": 1, "run": "r", "outcome": "meh"})
        ok = msgspec.msgpack.encode(run_events("fine", steps=1, errors=0)[0])
        path = short_root / "spool" / spool_name("dl")
        path.parent.mkdir(parents=True)
        path.write_bytes(SPOOL_MAGIC + encode_record(bad) + encode_record(ok))
        d = await start(short_root, nursery)
        await wait_gone(path)
        row = (
            sqlite3.connect(d.settings.db)
            .execute("SELECT source, event_id, reason, frame FROM dead_letters")
            .fetchone()
        )
        assert row[0] == f"spool:{path.name}" and row[1] == "x" and "$.outcome" in row[2]
        assert row[3] == bad
        assert count(d.settings.db, "runs", "uid = 'fine'") == 1
        d.request_stop()


class TestLiveWriters:
    async def test_locked_file_is_left_alone_until_its_writer_is_gone(
        self, short_root: Path, nursery: trio.Nursery
    ) -> None:
        path = short_root / "spool" / spool_name("live")
        write_spool(path, run_events("live", steps=1, errors=0))
        fh = path.open("rb")
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        d = await start(short_root, nursery)
        await trio.sleep(1.0)  # five replay intervals
        assert path.exists()
        assert count(d.settings.db, "runs") == 0
        fh.close()  # the writer exits
        await wait_gone(path, timeout=5.0)
        assert count(d.settings.db, "runs", "uid = 'live'") == 1
        d.request_stop()

    @pytest.mark.skipif(os.getuid() != 0, reason="only root can make a file owned by another uid")
    async def test_file_of_a_refused_owner_is_quarantined_not_applied(
        self, short_root: Path, nursery: trio.Nursery
    ) -> None:
        path = short_root / "spool" / spool_name("foreign")
        write_spool(path, run_events("foreign", steps=1, errors=0))
        os.chown(path, 4242, 4242)
        d = await start(short_root, nursery, allow_uids=(1000,))
        await wait_gone(path)
        assert (short_root / "spool" / "corrupt" / path.name).exists()
        refused = "message LIKE '%uid 4242 is not allowed%'"
        await trio.to_thread.run_sync(
            lambda: wait_until(lambda: count(d.settings.db, "audit_log", refused), what="audit")
        )
        assert count(d.settings.db, "runs") == 0
        d.request_stop()


def test_killed_between_commit_and_delete_counts_nothing_twice(short_root: Path) -> None:
    """The file survives its replay's COMMIT (as if killed before unlink): replayed again, no-op."""
    spool = short_root / "spool"
    path = spool / spool_name("twice")
    write_spool(path, run_events("twice", steps=3, errors=2))
    keep = short_root / "copy.spool"
    shutil.copy(path, keep)
    d = DaemonProcess(short_root).start()
    wait_until(lambda: not path.exists(), what="first replay")
    snapshot = (
        sqlite3.connect(d.db)
        .execute("SELECT total_created, total_failed, outcome FROM runs")
        .fetchall()
    )
    d.kill()  # SIGKILL
    shutil.copy(keep, path)  # the state a kill between COMMIT and unlink leaves
    d2 = DaemonProcess(short_root).start()
    try:
        wait_until(lambda: not path.exists(), what="second replay")
        conn = sqlite3.connect(d2.db)
        assert conn.execute("SELECT count(*) FROM runs").fetchone()[0] == 1
        assert conn.execute("SELECT count(*) FROM run_steps").fetchone()[0] == 3
        assert conn.execute("SELECT count(*) FROM run_errors").fetchone()[0] == 6
        assert (
            conn.execute("SELECT total_created, total_failed, outcome FROM runs").fetchall()
            == snapshot
        )
        assert (
            conn.execute(
                "SELECT count(*) FROM audit_log WHERE event = 'spool_replayed'"
            ).fetchone()[0]
            == 2
        )
    finally:
        d2.stop()


async def test_a_file_that_cannot_be_quarantined_does_not_stop_the_daemon(
    short_root: Path, nursery: trio.Nursery
) -> None:
    """`corrupt` is a regular file, so moving a bad spool there fails: logged, audited
    once, retried; the daemon keeps serving and replays the other files."""
    spool = short_root / "spool"
    spool.mkdir()
    (spool / "corrupt").write_text("not a directory")
    bad = spool / spool_name("bad")
    bad.write_bytes(b"NOTSPOOL" + b"\0" * 20)
    d = await start(short_root, nursery)
    good = spool / spool_name("good")
    write_spool(good, run_events("after", steps=1, errors=0))
    await wait_gone(good)
    await trio.sleep(0.6)  # several more rounds over the bad file
    assert bad.exists()
    db = d.settings.db
    failed = "event = 'spool_replay_failed'"
    await trio.to_thread.run_sync(lambda: wait_until(lambda: count(db, "audit_log", failed)))
    assert count(db, "audit_log", failed) == 1
    assert count(db, "runs", "uid = 'after'") == 1
    stream = await trio.open_unix_socket(str(d.settings.socket))
    await stream.send_all(encode_frame({"type": "ping"}))
    with trio.fail_after(5):
        reply = await stream.receive_some(100)
    assert decode_server_message(reply[4:]) == Pong()
    await stream.aclose()
    d.request_stop()
