"""The client's connection: the daemon absent, wedged, hanging up, refusing; fork,
threads and signal handlers; the backoff on an injected clock; the state table.

Real files and real Unix sockets throughout; the peers are small real servers
(tests/client_helpers.py).
"""

from __future__ import annotations

import array
import fcntl
import multiprocessing
import os
import signal
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
from client_helpers import (
    FrozenClock,
    Sandbox,
    SteppedClock,
    is_locked,
    make_sandbox,
    peer,
    read_events,
)

from runtally.client import Client, State
from runtally.client._ids import uuid7
from runtally.client._pump import EMIT_READ_EVERY, EMIT_REPLY_BUDGET, TRUNCATE_BYTES
from runtally.client._state import TRANSITIONS, Trigger, next_state
from runtally.client._unix import wait_ready
from runtally.client._warn import reset_after_fork
from runtally.protocol import SPOOL_MAGIC, Ack, ErrorEvent, StepStart, encode_frame


@pytest.fixture
def sandbox(monkeypatch: pytest.MonkeyPatch) -> Iterator[Sandbox]:
    yield from make_sandbox(monkeypatch)


@pytest.fixture(autouse=True)
def _fresh_warnings() -> None:
    reset_after_fork()  # "once per process" would otherwise mean once per test session


def ev(event_id: str) -> StepStart:
    return StepStart(id=event_id, ts=1_700_000_000_000, run="r1", step="s1", name="step")


def _readable_bytes(fd: int) -> int:
    """Bytes waiting in a socket's receive buffer (FIONREAD)."""
    out = array.array("i", [0])
    fcntl.ioctl(fd, termios.FIONREAD, out)
    return out[0]


def _wait_readable(fd: int, nbytes: int) -> None:
    """Until at least ``nbytes`` wait in the socket (the peer acks as it reads)."""
    deadline = time.monotonic() + 10
    while _readable_bytes(fd) < nbytes:
        assert time.monotonic() < deadline, "the peer never acked"
        wait_ready(fd, False, 0.1)


def _emit_in_child(client: Client, n: int) -> None:
    for i in range(n):
        client.emit(ev(f"child{i}"))
    assert client.state is State.CONNECTED  # in flight, unacked: only a flush saves them


def ids_of(events: list) -> list[str]:
    return [e.id for e in events]


class TestDaemonAbsent:
    def test_events_go_to_one_spool_file(self, sandbox: Sandbox) -> None:
        client = sandbox.client()
        for i in range(50):
            client.emit(ev(f"e{i}"))
        assert client.state is State.SPOOLING
        assert client.flush(0.5) is False  # returns at once: nothing in flight, all spooled
        (path,) = sandbox.spool_files()
        assert is_locked(path)
        client.close()
        assert not is_locked(path)
        assert ids_of(read_events(path)) == [f"e{i}" for i in range(50)]

    def test_reconnects_are_rate_limited(self, sandbox: Sandbox) -> None:
        client = sandbox.client()
        started = time.monotonic()
        for i in range(10_000):
            client.emit(ev(f"e{i}"))
        elapsed = time.monotonic() - started
        client.close()
        assert 1 <= client.connect_attempts <= 3 + elapsed / 0.25
        assert client.connect_attempts <= 10
        assert len(sandbox.spooled()) == 10_000

    def test_threads_each_event_exactly_once(self, sandbox: Sandbox) -> None:
        client = sandbox.client()
        barrier = threading.Barrier(8)

        def work(t: int) -> None:
            barrier.wait()
            for i in range(500):
                client.emit(ev(f"t{t}-{i}"))

        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        client.close()
        assert len(sandbox.spool_files()) == 1
        got = ids_of(sandbox.spooled())
        assert len(got) == 4000
        assert set(got) == {f"t{t}-{i}" for t in range(8) for i in range(500)}
        for t in range(8):  # each thread's own events stay in its order
            mine = [x for x in got if x.startswith(f"t{t}-")]
            assert mine == [f"t{t}-{i}" for i in range(500)]

    def test_unusable_socket_path_warns_once_and_spools(
        self, sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
    ) -> None:
        client = Client(sandbox.root / ("x" * 120), sandbox.spool)  # over AF_UNIX's 108
        for i in range(10):
            client.emit(ev(f"e{i}"))
        client.close()
        err = capsys.readouterr().err
        assert err.count("runtally:") == 1, err
        assert "cannot connect" in err
        assert ids_of(sandbox.spooled()) == [f"e{i}" for i in range(10)]

    def test_emit_from_a_signal_handler_is_not_lost(self, sandbox: Sandbox) -> None:
        client = sandbox.client()
        fired: list[str] = []

        def handler(signum: int, frame: object) -> None:
            event_id = f"sig{len(fired)}"
            fired.append(event_id)
            client.emit(ev(event_id))  # may interrupt an emit holding the lock

        old = signal.signal(signal.SIGVTALRM, handler)
        signal.setitimer(signal.ITIMER_VIRTUAL, 0.0002, 0.0002)
        try:
            for i in range(20_000):
                client.emit(ev(f"m{i}"))
        finally:
            signal.setitimer(signal.ITIMER_VIRTUAL, 0)
            signal.signal(signal.SIGVTALRM, old)
        client.close()
        got = ids_of(sandbox.spooled())
        assert fired
        assert sorted(i for i in got if i.startswith("m")) == sorted(f"m{i}" for i in range(20_000))
        # Every handler's event; one parked behind an interrupted emit is written
        # ahead at once and again when it runs (a duplicate the daemon applies once).
        assert {i for i in got if i.startswith("sig")} == set(fired)

    def test_forked_child_writes_its_own_spool_file(self, sandbox: Sandbox) -> None:
        client = sandbox.client()
        for i in range(5):
            client.emit(ev(f"p{i}"))
        parent_file = client.spool.path
        assert parent_file is not None
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            code = 1
            try:
                os.close(r)
                for i in range(7):
                    client.emit(ev(f"c{i}"))
                os.write(w, str(client.spool.path).encode())
                client.close()
                code = 0
            finally:
                os._exit(code)
        os.close(w)
        with os.fdopen(r) as pipe:
            child_file = Path(pipe.read())
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert child_file != parent_file
        assert f"-{pid}-" in child_file.name
        assert ids_of(read_events(child_file)) == [f"c{i}" for i in range(7)]
        # The child neither wrote to nor unlocked the parent's file.
        assert ids_of(read_events(parent_file)) == [f"p{i}" for i in range(5)]
        assert is_locked(parent_file)
        client.emit(ev("p5"))
        assert client.spool.path == parent_file
        client.close()
        assert ids_of(read_events(parent_file)) == [f"p{i}" for i in range(6)]


class TestPeers:
    def test_acked_events_never_touch_the_spool(self, sandbox: Sandbox) -> None:
        with peer(sandbox.sock) as p:
            client = sandbox.client()
            ids = [uuid7() for _ in range(3000)]
            for i in ids:
                client.emit(ev(i))
            assert client.flush(5) is True
            assert client.unacked == 0
            assert client.acked == 3000
            assert p.received == ids
            assert client.connect_attempts == 1
            client.close()
        assert sandbox.spool_files() == []

    def test_emits_read_replies_every_few_sends(self, sandbox: Sandbox) -> None:
        """A read per emit mostly finds nothing; acks are still handled as emits go on."""
        with peer(sandbox.sock) as p:
            client = sandbox.client()
            client.emit(ev("first"))
            assert client._sock is not None
            # The ack is readable: the next emit still does not read it ...
            wait_ready(client._sock.fileno(), False, 5)
            client.emit(ev("second"))
            assert (client.acked, client.unacked) == (0, 2)
            # ... but one of the next EMIT_READ_EVERY does, without a flush.
            for i in range(EMIT_READ_EVERY):
                client.emit(ev(f"more{i}"))
            assert client.acked >= 1
            assert client.flush(5) is True
            assert client.acked == len(p.received) == EMIT_READ_EVERY + 2
            client.close()

    def test_an_emit_handles_a_few_replies_not_a_burst(self, sandbox: Sandbox) -> None:
        """A group commit's acks arrive together; no single tracking call pays for all
        of them (the call's p99): each emit handles at most EMIT_REPLY_BUDGET."""
        assert EMIT_REPLY_BUDGET == 2
        with peer(sandbox.sock) as p:
            client = sandbox.client()
            first = [f"burst{i}" for i in range(EMIT_READ_EVERY)]  # the next emit reads
            for i in first:
                client.emit(ev(i))
            assert client._sock is not None
            fd = client._sock.fileno()
            size = len(encode_frame(Ack(id=first[0])))
            _wait_readable(fd, len(first) * size)  # all their acks wait in the socket
            assert client.acked == 0
            handled = []
            for i in range(EMIT_READ_EVERY // 2):  # the first reads them all; each handles two
                before = client.acked
                client.emit(ev(f"more{i}"))
                handled.append(client.acked - before)
            assert handled == [2] * (EMIT_READ_EVERY // 2)
            assert client.flush(5) is True
            assert client.acked == len(p.received) == EMIT_READ_EVERY + EMIT_READ_EVERY // 2
            client.close()

    def test_an_emit_between_reads_leaves_the_socket_alone(self, sandbox: Sandbox) -> None:
        """Only every EMIT_READ_EVERY-th emit reads the socket, also once the spool is
        over TRUNCATE_BYTES and waits to be cut back (a failed ``recv`` per call
        was most of a call's cost when the window never emptied)."""
        stack = "x" * (TRUNCATE_BYTES // EMIT_READ_EVERY)
        with peer(sandbox.sock):
            client = sandbox.client()
            for i in range(EMIT_READ_EVERY):  # the spool file is over TRUNCATE_BYTES now
                client.emit(
                    ErrorEvent(
                        id=f"big{i}", ts=1, run="r1", step_name="s", message="m", stack=stack
                    )
                )
            assert client.spool.size > TRUNCATE_BYTES
            assert client._sock is not None
            fd = client._sock.fileno()
            size = len(encode_frame(Ack(id="big0")))
            _wait_readable(fd, EMIT_READ_EVERY * size)
            client.emit(ev("reads"))  # the read is due: it takes all there is
            assert client.acked == EMIT_REPLY_BUDGET  # (its own ack may be in the socket already)
            _wait_readable(fd, size)  # the ack of "reads"
            for i in range(EMIT_READ_EVERY - 1):
                client.emit(ev(f"between{i}"))
                assert _readable_bytes(fd) >= size, f"emit {i} read the socket"
            assert client.flush(5) is True
            assert client.spool.records == 0
            client.close()

    def test_an_event_is_in_the_spool_until_acked_when_a_full_window_drains(
        self, sandbox: Sandbox
    ) -> None:
        """The event whose send finds the window full is written ahead first; the acks
        that then empty the window must not cut the file back under it (a SIGKILL
        before its own ack would lose it)."""

        def big(event_id: str) -> ErrorEvent:  # 4 of them stay under TRUNCATE_BYTES, 5 not
            stack = "x" * (TRUNCATE_BYTES // 4 - 400)
            return ErrorEvent(id=event_id, ts=1, run="r1", step_name="s", message="m", stack=stack)

        with peer(sandbox.sock):
            client = sandbox.client(window=4)
            for i in range(4):
                client.emit(big(f"full{i}"))
            assert client.unacked == 4
            assert client.spool.size < TRUNCATE_BYTES
            assert client._sock is not None
            size = len(encode_frame(Ack(id="full0")))
            deadline = time.monotonic() + 10
            while client._conn.buffered + _readable_bytes(client._sock.fileno()) < 4 * size:
                assert time.monotonic() < deadline, "the peer never acked"
                wait_ready(client._sock.fileno(), False, 0.1)
            client.emit(big("fifth"))  # over TRUNCATE_BYTES; the full window's acks read
            assert client.unacked == 1  # the four acked, the fifth in flight ...
            assert client.spool.path is not None
            assert "fifth" in [e.id for e in read_events(client.spool.path)]  # ... and kept
            assert client.flush(5) is True
            assert client.spool.records == 0  # all acked: cut back now
            client.close(0.1)

    def test_own_spool_resent_first_then_truncated(self, sandbox: Sandbox) -> None:
        clock = SteppedClock()
        client = sandbox.client(clock=clock)
        for i in range(10):
            client.emit(ev(f"a{i}"))
        assert client.state is State.SPOOLING
        path = client.spool.path
        assert path is not None
        with peer(sandbox.sock) as p:
            clock.advance(client.options.backoff_initial_s)  # past the first backoff
            for i in range(5):
                client.emit(ev(f"b{i}"))
            assert client.flush(5) is True
            assert p.received == [f"a{i}" for i in range(10)] + [f"b{i}" for i in range(5)]
            assert client.state is State.CONNECTED
            assert path.read_bytes() == SPOOL_MAGIC  # all acked: cut back to the header
            client.close()
        assert not path.exists()

    def test_big_own_spool_is_handed_to_the_replayer(self, sandbox: Sandbox) -> None:
        clock = SteppedClock()
        client = sandbox.client(clock=clock)
        for i in range(1500):
            client.emit(ev(f"a{i}"))
        path = client.spool.path
        assert path is not None
        with peer(sandbox.sock) as p:
            clock.advance(client.options.backoff_initial_s)  # past the first backoff
            client.emit(ev("b0"))
            assert not is_locked(path)  # released: the daemon replays it itself
            assert len(read_events(path)) == 1500
            assert client.flush(5) is True
            assert p.received == ["b0"]
            client.close()

    def test_nack_drops_the_event_with_a_warning(
        self, sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
    ) -> None:
        with peer(sandbox.sock, nack={"e3"}) as p:
            client = sandbox.client()
            for i in range(6):
                client.emit(ev(f"e{i}"))
            assert client.flush(5) is True
            assert client.nacked == 1
            assert client.unacked == 0
            assert len(p.received) == 6
            client.close()
        assert sandbox.spool_files() == []
        err = capsys.readouterr().err
        assert err.count("runtally:") == 1
        assert "e3" in err
        assert "refused by the test" in err

    def test_error_reply_keeps_the_event(
        self, sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
    ) -> None:
        with peer(sandbox.sock, error={"e2"}) as p:
            client = sandbox.client()
            for i in range(5):
                client.emit(ev(f"e{i}"))
            client.flush(1)
            client.close(0.5)
            acked = set(p.received) - {"e2"}
        spooled = set(ids_of(sandbox.spooled()))
        assert "e2" in spooled
        assert acked | spooled == {f"e{i}" for i in range(5)}
        assert "error" in capsys.readouterr().err

    def test_daemon_restart_mid_run(self, sandbox: Sandbox) -> None:
        clock = SteppedClock()
        client = sandbox.client(clock=clock)
        with peer(sandbox.sock) as first:
            for i in range(100):
                client.emit(ev(f"a{i}"))
            assert client.flush(5) is True
        # The first peer hung up on us; a new one listens on the same path.
        with peer(sandbox.sock) as second:
            clock.advance(client.options.backoff_initial_s)  # past the first backoff
            for i in range(100):
                client.emit(ev(f"b{i}"))
            assert client.flush(5) is True
            assert client.connect_attempts == 2
            client.close()
        assert first.received == [f"a{i}" for i in range(100)]
        assert sorted(second.received) == sorted(f"b{i}" for i in range(100))
        assert sandbox.spool_files() == []

    def test_hangup_spools_every_unacked_event(self, sandbox: Sandbox) -> None:
        with peer(sandbox.sock, hangup_after=5) as p:
            client = sandbox.client()
            ids = [f"e{i}" for i in range(40)]
            for i in ids:
                client.emit(ev(i))
            client.flush(1)
            client.close(0.2)
            acked = set(p.received)
        spooled = set(ids_of(sandbox.spooled()))
        assert acked | spooled == set(ids)
        assert set(ids[5:]) <= spooled

    def test_acks_sent_before_an_idle_hangup_are_not_resent(self, sandbox: Sandbox) -> None:
        """A process tracks now and then without close(): the daemon acks a run, then
        drops the idle connection before the client read those acks.  The next event
        still counts them, cuts the spool back and resends none of them."""
        clock = SteppedClock()
        with peer(sandbox.sock) as p:
            client = sandbox.client(clock=clock)
            for i in range(5):
                client.emit(ev(f"h{i}"))
            assert client._sock is not None
            fd = client._sock.fileno()
            size = len(encode_frame(Ack(id="h0")))
            deadline = time.monotonic() + 10
            while client._conn.buffered + _readable_bytes(fd) < 5 * size:  # all five acked
                assert time.monotonic() < deadline, "the peer never acked"
                wait_ready(fd, False, 0.1)
            p.hang_up()  # the daemon's idle timeout
            clock.advance(600)
            assert client.acked < 5  # not all read yet: an emit handles a few
            client.emit(ev("h5"))
            assert client.acked >= 5  # (h5's own ack may come on the new connection at once)
            assert client.flush(5) is True
            assert client.acked == 6
            client.close()
        assert p.received == [f"h{i}" for i in range(6)]  # nothing sent twice
        assert sandbox.spool_files() == []

    @pytest.mark.parametrize("count", [50, 20_000])
    def test_wedged_daemon_emits_return_and_flush_spools(
        self, sandbox: Sandbox, count: int
    ) -> None:
        with peer(sandbox.sock, mode="wedged") as p:
            client = sandbox.client()
            ids = [f"e{i}" for i in range(count)]
            for i in ids:
                client.emit(ev(i))
            assert client.flush(0.2) is False
            client.close(0.2)
            assert p.connections >= 1
        spooled = ids_of(sandbox.spooled())
        assert set(spooled) == set(ids)
        if count == 50:  # one connection, one flush timeout: each exactly once
            assert sorted(spooled) == sorted(ids)

    def test_multiprocessing_child_flushes_at_exit(self, sandbox: Sandbox) -> None:
        # A fork-started multiprocessing child ends in os._exit (no atexit):
        # its events still in flight must reach the spool, not vanish.
        ctx = multiprocessing.get_context("fork")
        with peer(sandbox.sock, mode="wedged"):
            client = sandbox.client(flush_timeout=0.2)
            proc = ctx.Process(target=_emit_in_child, args=(client, 20))
            proc.start()
            proc.join(10)
            assert proc.exitcode == 0
        got = ids_of(sandbox.spooled())
        assert sorted(got) == sorted(f"child{i}" for i in range(20))

    def test_forked_child_opens_its_own_connection(self, sandbox: Sandbox) -> None:
        with peer(sandbox.sock) as p:
            client = sandbox.client()
            client.emit(ev("p0"))
            assert client.flush(5) is True
            pid = os.fork()
            if pid == 0:  # pragma: no cover - runs in the child
                code = 1
                try:
                    client.emit(ev("c0"))
                    code = 0 if client.flush(5) else 2
                finally:
                    os._exit(code)
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
            client.emit(ev("p1"))  # the parent's connection is intact
            assert client.flush(5) is True
            assert client.connect_attempts == 1
            assert p.connections == 2
            assert sorted(p.received) == ["c0", "p0", "p1"]
            client.close()
        # The parent's file is gone; the child (os._exit) left only its write-ahead
        # file, cut back to its header once c0 was acked: no event in any spool file.
        assert len(sandbox.spool_files()) <= 1
        assert sandbox.spooled() == []


class TestBackoff:
    def test_one_attempt_per_backoff_period_doubling_to_the_cap(self, sandbox: Sandbox) -> None:
        clock = FrozenClock()
        client = sandbox.client(clock=clock, backoff_initial_s=1.0, backoff_max_s=4.0)
        client.emit(ev("first"))  # the first emit tries at once
        assert client.connect_attempts == 1
        for attempts, wait in enumerate((1.0, 2.0, 4.0, 4.0), start=2):
            clock.advance(wait - 0.001)
            for i in range(100):
                client.emit(ev(f"before-{attempts}-{i}"))
            assert client.connect_attempts == attempts - 1  # not yet
            clock.advance(0.001)
            client.emit(ev(f"at-{attempts}"))
            assert client.connect_attempts == attempts
        assert client.state is State.SPOOLING
        client.close()
        assert len(sandbox.spooled()) == 1 + 4 * 101

    def test_a_useful_connection_that_drops_is_retried_after_the_minimum_spacing(
        self, sandbox: Sandbox
    ) -> None:
        clock = FrozenClock()
        client = sandbox.client(clock=clock)
        with peer(sandbox.sock):
            client.emit(ev("a0"))
            assert client.flush(5) is True
        with peer(sandbox.sock) as second:
            client.emit(ev("b0"))  # finds the first connection gone: spooled
            assert client.connect_attempts == 1
            clock.advance(client.options.backoff_initial_s)
            client.emit(ev("b1"))  # reconnects, resends b0 first
            assert client.connect_attempts == 2
            assert client.flush(5) is True
            client.close()
            assert second.received == ["b0", "b1"]


class TestSignalHandlers:
    def test_emit_from_a_handler_during_a_flush_does_not_end_the_flush(
        self, sandbox: Sandbox
    ) -> None:
        """A handler's emit parked inside a flush step must not become the step's result.

        The lock used to return the last parked call's result (an emit's
        None), so ``flush`` read the interruption as "skip" and returned False
        with everything still in flight.
        """
        seen: dict[str, bool] = {}

        def handler(signum: int, frame: object) -> None:
            seen["busy"] = client._guard.busy  # inside the locked flush step
            client.emit(ev("from-handler"))

        class Interrupted(Client):
            def _flush_step(self, *args: object) -> object:
                if "busy" not in seen:
                    signal.raise_signal(signal.SIGUSR1)
                return super()._flush_step(*args)  # type: ignore[arg-type]

        old = signal.signal(signal.SIGUSR1, handler)
        try:
            with peer(sandbox.sock) as p:
                client = Interrupted(sandbox.sock, sandbox.spool)
                for i in range(20):
                    client.emit(ev(f"e{i}"))
                assert client.flush(5) is True
                assert seen == {"busy": True}
                assert client.flush(5) is True  # the handler's event too
                assert p.received == [f"e{i}" for i in range(20)] + ["from-handler"]
                client.close()
        finally:
            signal.signal(signal.SIGUSR1, old)
        assert sandbox.spool_files() == []

    def test_a_handler_that_exits_keeps_the_event_it_emitted(self, sandbox: Sandbox) -> None:
        """The handler interrupts an emit (its event is parked until that emit ends),
        then exits with ``os._exit``: the parked event is in the spool file already."""

        class Interrupted(Client):
            def _deliver(self, event_id: str, payload: bytes, **kw: object) -> bool:
                if event_id == "e3":
                    signal.raise_signal(signal.SIGUSR1)  # inside the locked emit
                return super()._deliver(event_id, payload, **kw)  # type: ignore[arg-type]

        pid = os.fork()
        if pid == 0:  # the pipeline: dies in its handler
            try:
                reset_after_fork()
                client = Interrupted(sandbox.root / "absent.sock", sandbox.spool)

                def handler(signum: int, frame: object) -> None:
                    client.emit(ev("last-words"))
                    os._exit(7)

                signal.signal(signal.SIGUSR1, handler)
                for i in range(5):
                    client.emit(ev(f"e{i}"))
            finally:
                os._exit(1)  # not reached: the handler exits first
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 7
        got = ids_of(sandbox.spooled())
        assert "last-words" in got
        assert got[:3] == ["e0", "e1", "e2"]


class TestStateTable:
    # The table in runtally/client/_state.py's docstring, spelled out again.
    DOCUMENTED: ClassVar[dict[tuple[State, Trigger], State]] = {
        (State.IDLE, Trigger.CONNECTED): State.CONNECTED,
        (State.IDLE, Trigger.RESEND): State.RESENDING,
        (State.IDLE, Trigger.REFUSED): State.SPOOLING,
        (State.IDLE, Trigger.CLOSE): State.IDLE,
        (State.CONNECTED, Trigger.BROKEN): State.SPOOLING,
        (State.CONNECTED, Trigger.CLOSE): State.IDLE,
        (State.RESENDING, Trigger.SPOOL_ACKED): State.CONNECTED,
        (State.RESENDING, Trigger.BROKEN): State.SPOOLING,
        (State.RESENDING, Trigger.CLOSE): State.IDLE,
        (State.SPOOLING, Trigger.CONNECTED): State.CONNECTED,
        (State.SPOOLING, Trigger.RESEND): State.RESENDING,
        (State.SPOOLING, Trigger.REFUSED): State.SPOOLING,
        (State.SPOOLING, Trigger.CLOSE): State.IDLE,
    }

    @pytest.mark.parametrize("state", list(State))
    @pytest.mark.parametrize("trigger", list(Trigger))
    def test_only_documented_transitions(self, state: State, trigger: Trigger) -> None:
        expected = self.DOCUMENTED.get((state, trigger))
        if expected is None:
            with pytest.raises(KeyError):
                next_state(state, trigger)
        else:
            assert next_state(state, trigger) is expected
        assert set(TRANSITIONS) == set(State)
