"""Client transport: the spool file (format v1, locking, creation, failures), the
connection's fallbacks (absent, wedged, hanging-up, refusing peers), fork and threads.

Real files and real Unix sockets throughout; the peers are small real servers
(tests/client_helpers.py).
"""

from __future__ import annotations

import multiprocessing
import os
import re
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from client_helpers import Sandbox, is_locked, make_sandbox, peer, read_events

from runtally.client import Client, SpoolWriter, State
from runtally.client._ids import uuid7
from runtally.client._warn import reset_after_fork
from runtally.protocol import SPOOL_MAGIC, StepStart

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def sandbox(monkeypatch: pytest.MonkeyPatch) -> Iterator[Sandbox]:
    yield from make_sandbox(monkeypatch)


@pytest.fixture(autouse=True)
def _fresh_warnings() -> None:
    reset_after_fork()  # "once per process" would otherwise mean once per test session


def ev(event_id: str) -> StepStart:
    return StepStart(id=event_id, ts=1_700_000_000_000, run="r1", step="s1", name="step")


def _emit_in_child(client: Client, n: int) -> None:
    for i in range(n):
        client.emit(ev(f"child{i}"))
    assert client.state is State.CONNECTED  # in flight, unacked: only a flush saves them


def ids_of(events: list) -> list[str]:
    return [e.id for e in events]


class TestImport:
    def test_client_import_loads_no_daemon_dependencies(self) -> None:
        code = (
            "import sys, runtally, runtally.client\n"
            "from runtally import RunTracker, track_run\n"
            "heavy = {'trio', 'click', 'rich', 'sqlite3', '_sqlite3'}\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy\n"
            "             or m.split('.')[:2] in (['runtally', 'daemon'],\n"
            "                                     ['runtally', 'cli'])))\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
        )
        assert out.stdout.strip() == "[]"


class TestSpoolWriter:
    def test_created_locked_under_a_tmp_name_then_renamed(self, sandbox: Sandbox) -> None:
        seen: dict = {}

        class Watching(SpoolWriter):
            def _rename(self, tmp: Path, final: Path) -> None:
                seen.update(
                    tmp=tmp,
                    final=final,
                    header=tmp.read_bytes(),
                    locked=is_locked(tmp),
                    visible=list(self.directory.glob("*.spool")),
                )
                super()._rename(tmp, final)

        writer = Watching(sandbox.spool)
        assert writer.append(b"\x81\xa1a\x01")
        tmp, final = seen["tmp"], seen["final"]
        # Before the rename: headed, locked, and invisible to the replayer.
        assert tmp.name == f".{final.name}.tmp"
        assert not tmp.name.endswith(".spool")
        assert seen["header"] == SPOOL_MAGIC
        assert seen["locked"]
        assert seen["visible"] == []
        # After: only the final name exists, and it is ours.
        assert writer.path == final
        assert final.exists()
        assert not tmp.exists()
        assert re.fullmatch(rf"\d{{13}}-[\w.]+-{os.getpid()}-[0-9a-f]{{8}}\.spool", final.name)
        assert final.stat().st_mode & 0o777 == 0o640
        assert sandbox.spool.stat().st_mode & 0o777 == 0o770
        writer.close()

    def test_locked_while_open_released_by_close(self, sandbox: Sandbox) -> None:
        writer = SpoolWriter(sandbox.spool)
        writer.append(b"\x81\xa1a\x01")
        path = writer.path
        assert path is not None
        assert is_locked(path)
        writer.close()
        assert not is_locked(path)
        # Spool format v1, byte for byte: magic, then length, crc32, payload.
        payload = b"\x81\xa1a\x01"
        header = struct.pack(">II", len(payload), zlib.crc32(payload))
        assert path.read_bytes() == SPOOL_MAGIC + header + payload

    def test_read_back_truncate_and_empty_close(self, sandbox: Sandbox) -> None:
        writer = SpoolWriter(sandbox.spool)
        payloads = [bytes([0x81, 0xA1, 0x61, i]) for i in range(5)]
        for p in payloads:
            assert writer.append(p)
        assert writer.read_records() == payloads
        path = writer.path
        assert path is not None
        assert writer.truncate()
        assert path.read_bytes() == SPOOL_MAGIC
        assert writer.read_records() == []
        writer.append(payloads[0])
        assert writer.read_records() == payloads[:1]
        writer.truncate()
        writer.close()
        assert not path.exists()  # nothing left to replay: removed, not left for the daemon

    @pytest.mark.parametrize("where", ["file", "under-file"])
    def test_unwritable_spool_one_warning_no_exception(
        self, sandbox: Sandbox, capsys: pytest.CaptureFixture[str], where: str
    ) -> None:
        blocker = sandbox.root / "blocker"
        blocker.write_text("not a directory")
        spool = blocker if where == "file" else blocker / "spool"
        client = Client(sandbox.sock, spool)
        for i in range(200):
            client.emit(ev(f"e{i}"))
        client.flush(0.1)
        client.close()
        err = capsys.readouterr().err
        assert err.count("runtally:") == 1, err
        assert "spool" in err
        assert client.spool.dropped == 200

    def test_write_failure_drops_cleanly_and_warns_once(self, sandbox: Sandbox) -> None:
        # RLIMIT_FSIZE makes the kernel cut a write short, then refuse (EFBIG):
        # a real full disk, for one process.
        code = textwrap.dedent(
            f"""
            import resource, signal
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            from runtally.client import Client
            from runtally.protocol import StepStart
            c = Client({str(sandbox.sock)!r}, {str(sandbox.spool)!r})
            ev = lambda i: StepStart(id=f"e{{i}}", ts=1, run="r", step="s", name="n")
            c.emit(ev(0))
            resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))
            for i in range(1, 200):
                c.emit(ev(i))
            print(c.spool.records, c.spool.dropped)
            c.close()
            """
        )
        out = subprocess.run(
            [sys.executable, "-c", code],
            check=False,
            capture_output=True,
            text=True,
            timeout=30,
            cwd=ROOT,
        )
        assert out.returncode == 0, out.stderr
        records, dropped = map(int, out.stdout.split())
        assert records + dropped == 200
        assert 0 < records < 200
        assert out.stderr.count("runtally:") == 1, out.stderr
        (path,) = sandbox.spool_files()
        events = read_events(path)  # a clean tail: the short write was cut off
        assert ids_of(events) == [f"e{i}" for i in range(records)]


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
        assert sorted(got) == sorted([f"m{i}" for i in range(20_000)] + fired)

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

    def test_own_spool_resent_first_then_truncated(self, sandbox: Sandbox) -> None:
        client = sandbox.client()
        for i in range(10):
            client.emit(ev(f"a{i}"))
        assert client.state is State.SPOOLING
        path = client.spool.path
        assert path is not None
        with peer(sandbox.sock) as p:
            time.sleep(0.3)  # past the first backoff
            for i in range(5):
                client.emit(ev(f"b{i}"))
            assert client.flush(5) is True
            assert p.received == [f"a{i}" for i in range(10)] + [f"b{i}" for i in range(5)]
            assert client.state is State.CONNECTED
            assert path.read_bytes() == SPOOL_MAGIC  # all acked: cut back to the header
            client.close()
        assert not path.exists()

    def test_big_own_spool_is_handed_to_the_replayer(self, sandbox: Sandbox) -> None:
        client = sandbox.client()
        for i in range(1500):
            client.emit(ev(f"a{i}"))
        path = client.spool.path
        assert path is not None
        with peer(sandbox.sock) as p:
            time.sleep(0.3)
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
        client = sandbox.client()
        with peer(sandbox.sock) as first:
            for i in range(100):
                client.emit(ev(f"a{i}"))
            assert client.flush(5) is True
        # The first peer hung up on us; a new one listens on the same path.
        with peer(sandbox.sock) as second:
            time.sleep(0.3)
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
        assert sandbox.spool_files() == []
