"""Helpers for the client tests: short real paths, spool readers, small real socket peers.

The peers here are real Unix-socket servers speaking protocol v1 with the
real codec - stand-ins for the daemon's wire behaviour (ack everything, nack
some, never read, hang up), not mocks.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from runtally.client import Client
from runtally.protocol import (
    SPOOL_MAGIC,
    Ack,
    ErrorReply,
    FrameDecoder,
    Nack,
    Refusal,
    decode_client_message,
    encode_frame,
    read_spool,
)


@dataclass
class Sandbox:
    """A short directory under /tmp (Unix socket paths must stay < ~100 chars)."""

    root: Path

    @property
    def sock(self) -> Path:
        return self.root / "d.sock"

    @property
    def spool(self) -> Path:
        return self.root / "spool"

    def spool_files(self) -> list[Path]:
        if not self.spool.is_dir():
            return []
        return sorted(self.spool.glob("*.spool"))

    def spooled(self) -> list:
        """Every event in every spool file, decoded, file by file in name order."""
        return [event for path in self.spool_files() for event in read_events(path)]

    def client(self, **kw: object) -> Client:
        """A Client on this sandbox; ``kw`` override fields of ClientOptions (e.g. ``clock``)."""
        return Client(self.sock, self.spool, **kw)


class SteppedClock:
    """``time.monotonic()`` plus an offset the test moves on: a backoff passes without a sleep.

    Real time still flows underneath, so flush deadlines keep working.
    """

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


class FrozenClock:
    """A clock that moves only when told: the backoff counted exactly."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def read_events(path: Path) -> list:
    """Decode one spool file; asserts it is spool format v1 and ends cleanly."""
    data = path.read_bytes()
    assert data[:8] == SPOOL_MAGIC
    records, tail = read_spool(data)
    assert tail.state == "clean", tail
    events = [decode_client_message(r) for r in records]
    assert not any(isinstance(e, Refusal) for e in events), events
    return events


def make_sandbox(monkeypatch: pytest.MonkeyPatch) -> Iterator[Sandbox]:
    """Body of the ``sandbox`` fixture each client test module declares."""
    root = Path(tempfile.mkdtemp(prefix="rl", dir="/tmp"))
    # Nothing in a test may reach the user's real daemon or spool.
    monkeypatch.setenv("RUNTALLY_SOCKET", str(root / "d.sock"))
    monkeypatch.setenv("RUNTALLY_SPOOL", str(root / "spool"))
    monkeypatch.delenv("RUNTALLY_PARENT_RUN", raising=False)
    monkeypatch.delenv("RUNTALLY_CONFIG", raising=False)
    try:
        yield Sandbox(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class Peer:
    """A Unix-socket server in a thread.

    mode ``ack``: acks every event (nacks the ids in ``nack``, answers ``error``
    to those in ``error``), hangs up after
    ``hangup_after`` events if set; mode ``wedged``: accepts, never reads.
    """

    path: Path
    mode: str = "ack"
    nack: set[str] = field(default_factory=set)
    error: set[str] = field(default_factory=set)
    hangup_after: int | None = None
    received: list[str] = field(default_factory=list)
    connections: int = 0

    def __post_init__(self) -> None:
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(self.path))
        self._listener.listen(16)
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._accept_loop, daemon=True)]
        self._threads[0].start()

    def _accept_loop(self) -> None:
        self._listener.settimeout(0.02)
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            self._held.append(conn)
            if self.mode == "ack":
                t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
                self._threads.append(t)
                t.start()

    def _serve(self, conn: socket.socket) -> None:
        decoder = FrameDecoder()
        conn.settimeout(0.02)
        served = 0
        while not self._stop.is_set():
            try:
                data = conn.recv(1 << 16)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            decoder.receive_data(data)
            replies = []
            for frame in decoder.frames():
                msg = decode_client_message(frame)
                event_id = getattr(msg, "id", None)
                if self.hangup_after is not None and served >= self.hangup_after:
                    conn.close()
                    return
                served += 1
                self.received.append(event_id)
                if event_id in self.nack:
                    replies.append(Nack(id=event_id, error="refused by the test"))
                elif event_id in self.error:
                    replies.append(ErrorReply(error="unreadable (says the test)"))
                else:
                    replies.append(Ack(id=event_id))
            if replies:
                try:
                    conn.sendall(b"".join(encode_frame(r) for r in replies))
                except OSError:
                    return  # the client hung up (after an error reply, say): as the daemon does

    def hang_up(self) -> None:
        """Close every connection accepted so far (as the daemon's idle timeout does)."""
        for conn in self._held:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=2)
        self._listener.close()
        for conn in self._held:
            with contextlib.suppress(OSError):
                conn.close()
        with contextlib.suppress(OSError):
            self.path.unlink()


@contextlib.contextmanager
def peer(path: Path, **kw: object) -> Iterator[Peer]:
    p = Peer(path, **kw)  # type: ignore[arg-type]
    try:
        yield p
    finally:
        p.close()


def is_locked(path: Path) -> bool:
    """True if someone holds flock(LOCK_EX) on ``path`` (tried from a new open)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
