"""The daemon over real Unix sockets: ordering, acks after commit, refusals, locks."""

from __future__ import annotations

import os
import socket
import sqlite3
import struct
import sys
import threading
from pathlib import Path

import msgpack
import msgspec
import pytest
import trio
from daemon_helpers import count, ro_connect, run_events, settings_for

from runtally.daemon._migrations import SCHEMA_VERSION
from runtally.daemon._peer import is_allowed
from runtally.daemon._server import Daemon, serve
from runtally.protocol import (
    Ack,
    ErrorReply,
    FrameDecoder,
    Nack,
    Pong,
    RunStart,
    StatusReply,
    Welcome,
    decode_server_message,
    encode_frame,
)


async def trio_connect(path: Path) -> trio.SocketStream:
    return await trio.open_unix_socket(str(path))


class TrioClient:
    """Async protocol client for in-process tests."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.decoder = FrameDecoder()
        self.pending: list = []

    @classmethod
    async def connect(cls, path: Path) -> TrioClient:
        return cls(await trio_connect(path))

    async def send(self, *messages) -> None:
        await self.stream.send_all(b"".join(encode_frame(m) for m in messages))

    async def recv(self, n: int) -> list:
        while len(self.pending) < n:
            data = await self.stream.receive_some(65536)
            if not data:
                raise ConnectionError(f"EOF after {len(self.pending)} of {n}")
            self.decoder.receive_data(data)
            self.pending += [decode_server_message(f) for f in self.decoder.frames()]
        out, self.pending = self.pending[:n], self.pending[n:]
        return out


class TestOrderingAndCommit:
    async def test_pipelined_connections_get_every_reply_in_order_after_commit(
        self, daemon: Daemon
    ) -> None:
        """Four clients pipeline 500 events each; each ack's row is already readable."""
        db = daemon.store.path
        reader = ro_connect(db)
        checked = 0

        async def one_client(n: int) -> None:
            nonlocal checked
            c = await TrioClient.connect(daemon.settings.socket)
            events = []
            for r in range(25):
                events += run_events(f"c{n}-r{r}", steps=4, errors=1)[:-1]
            messages: list = []
            for i, e in enumerate(events):
                messages.append(e)
                if i % 97 == 0:
                    messages.append({"type": "ping"})
            await c.send(*messages)
            replies = await c.recv(len(messages))
            expected = [
                ("ack", m.id) if not isinstance(m, dict) else ("pong", None) for m in messages
            ]
            got = [
                ("ack", r.id)
                if isinstance(r, Ack)
                else ("pong", None)
                if isinstance(r, Pong)
                else (type(r).__name__, None)
                for r in replies
            ]
            assert got == expected
            # Every acked error event is visible to a separate read-only connection.
            for m in messages:
                if isinstance(m, dict) or m.__struct_config__.tag != "error":
                    continue
                row = reader.execute("SELECT 1 FROM run_errors WHERE uid = ?", (m.id,)).fetchone()
                assert row is not None, f"acked {m.id} not visible"
                checked += 1

        with trio.fail_after(30):
            async with trio.open_nursery() as n:
                for i in range(4):
                    n.start_soon(one_client, i)
        assert checked == 4 * 25 * 4
        assert reader.execute("SELECT count(*) FROM runs").fetchone()[0] == 100
        assert reader.execute("SELECT count(*) FROM run_steps").fetchone()[0] == 400

    async def test_ack_is_sent_only_after_the_row_is_committed(self, daemon: Daemon) -> None:
        """Each ack, checked the moment it arrives, refers to a row a reader can see."""
        reader = ro_connect(daemon.store.path)
        c = await TrioClient.connect(daemon.settings.socket)
        with trio.fail_after(20):
            for r in range(30):
                events = run_events(f"one-{r}", steps=1, errors=0)[:1]
                await c.send(*events)
                (reply,) = await c.recv(1)
                assert reply == Ack(events[0].id)
                row = reader.execute("SELECT 1 FROM runs WHERE uid = ?", (f"one-{r}",)).fetchone()
                assert row is not None

    async def test_control_messages(self, daemon: Daemon) -> None:
        c = await TrioClient.connect(daemon.settings.socket)
        ev = run_events("ctl", steps=1, errors=0)
        await c.send({"type": "hello", "protocol": 1, "client": "t"}, *ev, {"type": "status"})
        replies = await c.recv(len(ev) + 2)
        assert isinstance(replies[0], Welcome) and replies[0].protocol == 1
        status = replies[-1]
        assert isinstance(status, StatusReply)
        # The status reply comes after the acks, so it counts them.
        assert status.events_committed == len(ev)
        assert status.schema_version == SCHEMA_VERSION
        assert status.db_path == str(daemon.store.path)
        await c.send({"type": "hello", "protocol": 2})
        (err,) = await c.recv(1)
        assert isinstance(err, ErrorReply) and "unsupported protocol version 2" in err.error


class TestIdempotencyAndOrder:
    async def test_duplicates_are_acked_and_not_applied_twice(self, daemon: Daemon) -> None:
        c = await TrioClient.connect(daemon.settings.socket)
        ev = run_events("dup", steps=3, errors=2)
        with trio.fail_after(10):
            await c.send(*ev, *ev, *ev)
            replies = await c.recv(3 * len(ev))
        assert replies == [Ack(e.id) for e in ev] * 3
        db = daemon.store.path
        assert count(db, "runs", "uid = 'dup'") == 1
        assert count(db, "run_steps") == 3
        assert count(db, "run_errors") == 6
        totals = (
            ro_connect(db)
            .execute("SELECT total_created, total_updated, total_skipped, total_failed FROM runs")
            .fetchone()
        )
        assert totals == (1 + 2 + 3, 6, 3, 6)

    async def test_out_of_order_run_is_applied(self, daemon: Daemon) -> None:
        c = await TrioClient.connect(daemon.settings.socket)
        ev = run_events("ooo", steps=2, errors=1)
        backwards = list(reversed(ev))
        with trio.fail_after(10):
            for e in backwards:  # one at a time: each commits before the next arrives
                await c.send(e)
                assert await c.recv(1) == [Ack(e.id)]
        conn = ro_connect(daemon.store.path)
        assert conn.execute("SELECT outcome, total_created FROM runs").fetchone() == ("success", 3)
        assert conn.execute("SELECT count(*) FROM run_errors").fetchone()[0] == 2
        assert conn.execute("SELECT count(*) FROM parked_events").fetchone()[0] == 0


class TestRefusals:
    async def test_invalid_event_is_nacked_dead_lettered_and_connection_stays(
        self, daemon: Daemon
    ) -> None:
        c = await TrioClient.connect(daemon.settings.socket)
        bad = {
            "type": "step_end",
            "id": "bad-1",
            "ts": 1,
            "run": "r",
            "step": "s",
            "outcome": "success",
            "created": -5,
        }
        good = RunStart(id="good-1", ts=1, run="r-good", pipeline="p")
        with trio.fail_after(10):
            await c.send(bad, good)
            nack, ack = await c.recv(2)
        assert isinstance(nack, Nack) and nack.id == "bad-1"
        assert "$.created" in nack.error
        assert ack == Ack("good-1")
        row = (
            ro_connect(daemon.store.path)
            .execute("SELECT event_id, reason, frame, peer_pid FROM dead_letters")
            .fetchone()
        )
        assert row[0] == "bad-1" and "$.created" in row[1]
        assert msgpack.unpackb(row[2]) == bad
        assert row[3] is not None  # SO_PEERCRED recorded

    async def test_an_event_the_store_cannot_apply_is_isolated_and_nacked(
        self, daemon: Daemon
    ) -> None:
        """One unapplyable event (JSON cannot hold an Ext) fails its batch; the writer
        splits it: the others are acked, it is nacked and dead-lettered once, and the
        queue budget is whole again."""
        c = await TrioClient.connect(daemon.settings.socket)
        ev = run_events("iso", steps=1, errors=0)
        poison = {
            "type": "step_end",
            "id": "poison",
            "ts": 2,
            "run": "iso",
            "step": "iso-s0",
            "outcome": "success",
            "detail": msgspec.msgpack.Ext(1, b"x"),
        }
        invalid = {"type": "run_end", "id": "bad-outcome", "ts": 3, "run": "iso", "outcome": "?"}
        with trio.fail_after(10):
            await c.send(*ev[:2], invalid, poison, *ev[2:], {"type": "status"})
            replies = await c.recv(len(ev) + 3)
        assert replies[:2] == [Ack(e.id) for e in ev[:2]]
        assert isinstance(replies[2], Nack) and replies[2].id == "bad-outcome"
        assert isinstance(replies[3], Nack) and replies[3].id == "poison"
        assert "cannot be applied" in replies[3].error
        assert replies[4:-1] == [Ack(e.id) for e in ev[2:]]
        assert replies[-1].queue_depth == 0
        assert count(daemon.store.path, "dead_letters") == 2
        assert count(daemon.store.path, "runs", "uid = 'iso' AND outcome = 'success'") == 1

    async def test_unknown_type_gets_error_and_connection_stays(self, daemon: Daemon) -> None:
        c = await TrioClient.connect(daemon.settings.socket)
        with trio.fail_after(10):
            await c.send({"type": "teleport"}, {"type": "ping"})
            err, pong = await c.recv(2)
        assert isinstance(err, ErrorReply) and "teleport" in err.error
        assert pong == Pong()

    @pytest.mark.parametrize(
        ("payload", "reason"),
        [
            (struct.pack(">I", 2 * 1024 * 1024), "frame length 2097152"),
            (struct.pack(">I", 0), "frame length 0"),
            (struct.pack(">I", 3) + b"\xc1\xc1\xc1", "not a MessagePack"),
            (struct.pack(">I", 3) + msgpack.packb([1, 2]), "not a map"),
        ],
    )
    async def test_broken_frame_gets_error_and_close_others_unaffected(
        self, daemon: Daemon, payload: bytes, reason: str
    ) -> None:
        other = await TrioClient.connect(daemon.settings.socket)
        bad = await TrioClient.connect(daemon.settings.socket)
        with trio.fail_after(10):
            await bad.stream.send_all(encode_frame({"type": "ping"}) + payload)
            pong, err = await bad.recv(2)
            assert pong == Pong()
            assert isinstance(err, ErrorReply) and reason in err.error
            assert await bad.stream.receive_some(100) == b""  # closed by the daemon
            ev = run_events("unaffected", steps=1, errors=0)
            await other.send(*ev)
            assert await other.recv(len(ev)) == [Ack(e.id) for e in ev]
        assert count(daemon.store.path, "dead_letters") == 1
        (kept,) = ro_connect(daemon.store.path).execute("SELECT frame FROM dead_letters").fetchone()
        # A bad length keeps the header that announced it; a bad body keeps the body.
        assert kept == (payload[:16] if "frame length" in reason else payload[4:])

    async def test_replay_requires_admin_and_reports(self, daemon: Daemon) -> None:
        # The test runs as the daemon's own uid: an admin by default.
        c = await TrioClient.connect(daemon.settings.socket)
        with trio.fail_after(10):
            await c.send({"type": "replay"})
            (reply,) = await c.recv(1)
        assert reply.__struct_config__.tag == "replayed"
        assert (reply.files, reply.events, reply.quarantined) == (0, 0, 0)


async def test_non_admin_replay_refused(short_root: Path, nursery: trio.Nursery) -> None:
    d: Daemon = await nursery.start(serve, settings_for(short_root, admin_uids=(65534,)))
    c = await TrioClient.connect(d.settings.socket)
    with trio.fail_after(10):
        await c.send({"type": "replay"}, {"type": "ping"})
        err, pong = await c.recv(2)
    assert isinstance(err, ErrorReply) and "admin" in err.error
    assert pong == Pong()
    # Refused, and kept: an audit row says who asked (a control message has no
    # data for dead_letters).
    assert count(d.settings.db, "audit_log", "event = 'admin_refused'") == 1
    d.request_stop()


def test_allow_list_policy(short_root: Path) -> None:
    s = settings_for(short_root, allow_uids=(12345,))
    assert not is_allowed(s, 4242, 4242)
    assert is_allowed(s, 12345, 1)
    assert is_allowed(s, 0, 0)  # root always may
    # Groups come from the uid (passwd/group), never from the gid given.
    assert not is_allowed(settings_for(short_root, allow_gids=(77,)), 4242, 77)
    assert is_allowed(settings_for(short_root, allow_gids=(65534,)), 65534, 1)  # nobody:nogroup
    assert is_allowed(settings_for(short_root), 4242, 4242)  # no list: everyone in the group


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to connect as another uid")
async def test_refused_peer_is_told_and_audited(short_root: Path, nursery: trio.Nursery) -> None:
    """A peer whose uid is not on the allow-list gets one error line, then EOF."""
    d: Daemon = await nursery.start(serve, settings_for(short_root, allow_uids=(4242,)))
    os.chmod(d.settings.socket, 0o666)
    os.chmod(short_root, 0o755)
    script = (
        "import os, socket, sys\n"
        "os.setgid(65534); os.setuid(65534)\n"
        "s = socket.socket(socket.AF_UNIX); s.settimeout(5); s.connect(sys.argv[1])\n"
        "data = b''\n"
        "while chunk := s.recv(4096): data += chunk\n"
        "sys.stdout.buffer.write(data)\n"
    )
    result = await trio.run_process(
        [sys.executable, "-c", script, str(d.settings.socket)], capture_stdout=True, check=False
    )
    assert result.returncode == 0
    decoder = FrameDecoder()
    decoder.receive_data(result.stdout)
    (reply,) = [decode_server_message(f) for f in decoder.frames()]
    assert isinstance(reply, ErrorReply) and "uid 65534" in reply.error
    with trio.fail_after(5):
        while not count(d.store.path, "audit_log", "event = 'peer_refused'"):
            await trio.sleep(0.02)
    d.request_stop()


class TestOutsideLock:
    async def test_lock_held_by_outside_process_delays_acks_loses_nothing(
        self, short_root: Path, nursery: trio.Nursery
    ) -> None:
        """BEGIN IMMEDIATE held elsewhere for 2 s: no ack until COMMIT, then all land."""
        d: Daemon = await nursery.start(serve, settings_for(short_root, busy_timeout_ms=100))
        c = await TrioClient.connect(d.settings.socket)
        warm = run_events("warm", steps=1, errors=0)
        await c.send(*warm)
        await c.recv(len(warm))

        locker = sqlite3.connect(d.store.path, isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")
        released = threading.Event()
        ev = []
        for r in range(20):
            ev += run_events(f"locked-{r}", steps=3, errors=2)
        with trio.fail_after(30):
            await c.send(*ev)
            # While the lock is held: no reply at all, and the daemon still answers pings.
            other = await TrioClient.connect(d.settings.socket)
            await other.send({"type": "ping"}, {"type": "status"})
            pong, status = await other.recv(2)
            assert pong == Pong()
            with trio.move_on_after(1.5):
                got = await c.stream.receive_some(65536)
                pytest.fail(f"reply while the database was locked: {got[:50]!r}")
            assert count(d.store.path, "runs", "uid LIKE 'locked-%'") == 0
            locker.execute("COMMIT")
            released.set()
            replies = await c.recv(len(ev))
        assert replies == [Ack(e.id) for e in ev]
        assert count(d.store.path, "runs", "uid LIKE 'locked-%'") == 20
        assert count(d.store.path, "run_errors") == 20 * 3 * 2
        assert status.queue_depth > 0
        locker.close()
        d.request_stop()


async def test_stale_socket_is_replaced_and_live_daemon_refused(
    short_root: Path, nursery: trio.Nursery
) -> None:
    from runtally.daemon._server import DaemonError

    s = settings_for(short_root)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(s.socket))
    stale.close()  # a socket file nobody listens on, as after kill -9
    d: Daemon = await nursery.start(serve, s)
    with pytest.raises(DaemonError, match="another daemon is already listening"):
        await serve(settings_for(short_root, db=short_root / "other.sqlite"))
    c = await TrioClient.connect(s.socket)
    await c.send({"type": "ping"})
    assert await c.recv(1) == [Pong()]
    d.request_stop()


async def test_regular_file_at_socket_path_is_not_deleted(short_root: Path) -> None:
    from runtally.daemon._server import DaemonError

    s = settings_for(short_root)
    s.socket.write_text("precious")
    with pytest.raises(DaemonError, match="not a socket"):
        await serve(s)
    assert s.socket.read_text() == "precious"
