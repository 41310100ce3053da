"""The output relay of ``runtally exec``: a small forked process between the command and our stderr.

Why a process and not a thread: whatever the command starts in the background
inherits its stderr.  If that were a pipe read by ``exec`` itself, the pipe
would lose its reader when ``exec`` exits, and a background worker that writes
a line later would die of SIGPIPE, which it would not do without us.  The relay
is forked before anything else (no threads, no sockets yet) and holds only the
read ends of the command's pipes and the streams it copies to, so it lives
exactly as long as somebody may still write to the command's stderr, as the
terminal or cron's pipe would: it exits at the EOF of every pipe it reads.

Theory of operation::

    relay                       exec
    copy pipe -> our fd 2,      start the command with the pipe's write end,
    keep the last bytes         close its own copy, wait for the command
                     <- "report" (a byte, or EOF if exec died)
    copy what is already in the
    pipe (at most _DRAIN_S), then
    send both tails, close  ->  read them (at most REPORT_TIMEOUT_S), exit
    copy on until EOF, exit     (the relay is reparented; nobody waits for it)

The relay ignores the terminal's SIGINT/SIGQUIT/SIGHUP (a background child
that survives Ctrl-C keeps its stderr, as without us) and SIGPIPE: when the
reader of a stream it copies to goes away (EPIPE), it closes the command's
pipe of that stream, so the command's next write fails as it would without us.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import struct
import time

__all__ = ["REPORT_TIMEOUT_S", "Relay", "start_relay"]

#: After the command exits, how long the relay copies what is already in the
#: pipe before it reports (only a background child writing non-stop reaches it).
_DRAIN_S = 0.1
#: How long ``exec`` waits for the report (a relay blocked on a stopped
#: terminal must not hold the exit status back).
REPORT_TIMEOUT_S = 2.0
_CHUNK = 65536
_LEN = struct.Struct(">I")


class _Stream:
    """One pipe the relay reads: where it copies to, and the tail it keeps."""

    def __init__(self, read_fd: int, out_fd: int, tail_bytes: int) -> None:
        self.fd = read_fd
        self.out: int | None = out_fd
        self.tail = bytearray()
        self.cap = tail_bytes
        self.cut = False  # the tail lost its beginning

    def pump(self) -> bool:
        """Copy one chunk; False at EOF (or a read error)."""
        try:
            chunk = os.read(self.fd, _CHUNK)
        except InterruptedError:
            return True
        except OSError:
            chunk = b""
        if not chunk:
            os.close(self.fd)
            return False
        self.tail += chunk
        if len(self.tail) > 2 * self.cap:
            del self.tail[: -self.cap]
            self.cut = True
        if not self._write(chunk):
            # Whoever read our stream is gone (EPIPE): close the command's pipe
            # too, so that its next write fails as it would without us (SIGPIPE:
            # `runtally exec ... | head -1` ends).  Found from outside: the relay
            # drained on, and such a command ran for ever.
            os.close(self.fd)
            return False
        return True

    def _write(self, chunk: bytes) -> bool:
        """Copy ``chunk`` out; False when the reader of our stream has gone (EPIPE)."""
        view = memoryview(chunk)
        while view and self.out is not None:
            try:
                view = view[os.write(self.out, view) :]
            except InterruptedError:
                continue
            except BrokenPipeError:
                return False
            except OSError:
                # Our stream is otherwise broken (a hung-up terminal, a full
                # disk): keep draining the command's pipe so it never blocks
                # on it because of us.
                self.out = None
        return True

    def kept(self) -> bytes:
        data = bytes(self.tail[-self.cap :])
        if self.cut or len(self.tail) > self.cap:
            # Do not start half-way through a line (or a UTF-8 character).
            newline = data.find(b"\n")
            data = data[newline + 1 :] if 0 <= newline < len(data) - 1 else data
        return data


class Relay:
    """The parent's handle: the write ends for the command, and the report."""

    def __init__(
        self, pid: int, stderr_w: int, stdout_w: int | None, ctl_w: int, res_r: int
    ) -> None:
        self.pid = pid
        self.stderr_w = stderr_w
        self.stdout_w = stdout_w
        self._ctl_w = ctl_w
        self._res_r = res_r

    def close_write_ends(self) -> None:
        """Our copies of the command's ends: only the command's family may hold them."""
        for fd in (self.stderr_w, self.stdout_w):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def report(self, timeout: float = REPORT_TIMEOUT_S) -> tuple[bytes, bytes]:
        """Ask for the tails (stderr, stdout) now that the command exited; b"" if none came."""
        with contextlib.suppress(OSError):
            os.write(self._ctl_w, b"r")
        with contextlib.suppress(OSError):
            os.close(self._ctl_w)
        data = bytearray()
        deadline = time.monotonic() + timeout
        poller = select.poll()
        poller.register(self._res_r, select.POLLIN)
        try:
            while (left := deadline - time.monotonic()) > 0:
                if not poller.poll(left * 1000):
                    continue
                chunk = os.read(self._res_r, _CHUNK)
                if not chunk:
                    break
                data += chunk
        except OSError:
            pass
        finally:
            os.close(self._res_r)
        with contextlib.suppress(OSError):
            os.waitpid(self.pid, os.WNOHANG)  # reaped now if it is done already
        return _unpack(bytes(data))


def _unpack(data: bytes) -> tuple[bytes, bytes]:
    parts: list[bytes] = []
    pos = 0
    for _ in range(2):
        if len(data) < pos + _LEN.size:
            return b"", b""
        (n,) = _LEN.unpack_from(data, pos)
        pos += _LEN.size
        parts.append(data[pos : pos + n])
        pos += n
    return parts[0], parts[1]


def start_relay(*, capture_stdout: bool, tail_bytes: int) -> Relay | None:
    """Fork the relay; None when that is impossible (the command then gets our stderr)."""
    try:
        err_r, err_w = os.pipe()
        out_r, out_w = os.pipe() if capture_stdout else (None, None)
        ctl_r, ctl_w = os.pipe()
        res_r, res_w = os.pipe()
    except OSError:
        return None
    try:
        pid = os.fork()
    except OSError:
        for fd in (err_r, err_w, out_r, out_w, ctl_r, ctl_w, res_r, res_w):
            if fd is not None:
                os.close(fd)
        return None
    if pid == 0:  # pragma: no cover - runs in the forked relay (tests see its effects)
        code = 0
        try:
            _relay_main(err_r, out_r, ctl_r, res_w, tail_bytes, {err_w, out_w, ctl_w, res_r})
        except BaseException:  # noqa: BLE001 - nothing may escape a forked child
            code = 1
        os._exit(code)
    for fd in (err_r, out_r, ctl_r, res_w):
        if fd is not None:
            os.close(fd)
    return Relay(pid, err_w, out_w, ctl_w, res_r)


def _close_others(keep: set[int]) -> None:
    """Hold nothing of exec's but what the relay needs (no socket, no spool file)."""
    try:
        open_fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        open_fds = list(range(3, 1024))
    for fd in open_fds:
        if fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)


def _relay_main(  # noqa: PLR0917 - private, called once
    err_r: int, out_r: int | None, ctl_r: int, res_w: int, tail_bytes: int, theirs: set
) -> None:
    for number in (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(number, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    for fd in theirs:
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)  # a writer to our stdin must not be kept alive by the relay
    if out_r is None:
        os.dup2(null, 1)  # nor a reader of our stdout waiting for its EOF
    os.close(null)
    keep = {0, 1, 2, err_r, ctl_r, res_w} | ({out_r} if out_r is not None else set())
    _close_others(keep)

    streams = {err_r: _Stream(err_r, 2, tail_bytes)}
    if out_r is not None:
        streams[out_r] = _Stream(out_r, 1, tail_bytes)
    order = list(streams.values())
    poller = select.poll()
    for fd in (*streams, ctl_r):
        poller.register(fd, select.POLLIN)
    reported = False
    open_streams = dict(streams)
    while open_streams or not reported:
        for fd, _ in poller.poll():
            if fd == ctl_r:
                poller.unregister(ctl_r)
                _drain(open_streams, poller)
                _send(res_w, order)
                os.close(ctl_r)
                reported = True
            elif fd in open_streams and not open_streams[fd].pump():
                poller.unregister(fd)
                del open_streams[fd]


def _drain(open_streams: dict[int, _Stream], poller: select.poll) -> None:
    """Copy what the command left in its pipes, for at most _DRAIN_S."""
    deadline = time.monotonic() + _DRAIN_S
    while open_streams and time.monotonic() < deadline:
        ready = [fd for fd, _ in poller.poll(0) if fd in open_streams]
        if not ready:
            return
        for fd in ready:
            if not open_streams[fd].pump():
                poller.unregister(fd)
                del open_streams[fd]


def _send(res_w: int, order: list[_Stream]) -> None:
    tails = [s.kept() for s in order] + [b""] * (2 - len(order))
    payload = b"".join(_LEN.pack(len(t)) + t for t in tails)
    view = memoryview(payload)
    try:
        while view:
            view = view[os.write(res_w, view) :]
    except OSError:
        pass  # exec is gone: nobody to tell
    with contextlib.suppress(OSError):
        os.close(res_w)
