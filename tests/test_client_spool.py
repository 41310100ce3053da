"""The client's spool file: format v1, locking, creation, write failures.

Real files throughout.  The connection's fallbacks (absent, wedged,
hanging-up, refusing peers), fork and threads are in test_client_connection.py.
"""

from __future__ import annotations

import os
import re
import struct
import subprocess
import sys
import textwrap
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from client_helpers import Sandbox, is_locked, make_sandbox, read_events

from runtally.client import Client, SpoolWriter
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
            def _rename(self, tmp: str, final: str) -> None:
                seen.update(
                    tmp=Path(tmp),
                    final=Path(final),
                    header=Path(tmp).read_bytes(),
                    locked=is_locked(Path(tmp)),
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
        # Its own directory: only this user (its own daemon, or root) reads them.
        assert final.stat().st_mode & 0o777 == 0o600
        assert sandbox.spool.stat().st_mode & 0o777 == 0o700
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
        # One line when it starts, one with the count at close (nothing could report it).
        assert err.count("runtally:") == 2, err
        assert err.count("cannot create a spool file") == 1, err
        assert "200 event(s) of 1 run(s) were lost" in err, err
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
        # One line when it starts, one with the count at close (nothing could report it).
        assert out.stderr.count("runtally:") == 2, out.stderr
        assert out.stderr.count("cannot write spool file") == 1, out.stderr
        assert f"{dropped} event(s) of 1 run(s) were lost" in out.stderr, out.stderr
        (path,) = sandbox.spool_files()
        events = read_events(path)  # a clean tail: the short write was cut off
        assert ids_of(events) == [f"e{i}" for i in range(records)]
