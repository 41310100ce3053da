"""Connecting to the daemon's Unix socket without blocking the pipeline."""

from __future__ import annotations

import _socket as socket  # the C module: socket.py costs a cron process ~2-3 ms of enum set-up
import errno
import os
import select
import struct

from runtally._trust import trusted_uids, untrusted_directory

from ._warn import warn_once

__all__ = [
    "connect_nowait",
    "trusted_uids",
    "untrusted_daemon",
    "untrusted_directory",
    "wait_ready",
]

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid

#: Connect failures that just mean "the daemon is not there right now".
ROUTINE_CONNECT_ERRORS = frozenset(
    {errno.ENOENT, errno.ECONNREFUSED, errno.EAGAIN, errno.ETIMEDOUT, errno.EINTR}
)


def connect_nowait(path: str, timeout_s: float) -> socket.socket | None:
    """A connected non-blocking stream socket to ``path``, or None.

    Waits at most ``timeout_s`` seconds (a listener whose backlog is full).
    Never raises: a daemon that is simply absent returns None quietly; any
    other failure (EACCES: this user is not in the socket's group) is also
    reported once per process on stderr, since an operator must fix it.
    """
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    except OSError as exc:
        warn_once("socket", f"cannot create a socket: {exc}")
        return None
    try:
        sock.setblocking(False)
        err = sock.connect_ex(path)
        if err == errno.EINPROGRESS:
            _, writable, _ = select.select([], [sock], [], timeout_s)
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) if writable else 0
            err = err or (0 if writable else errno.ETIMEDOUT)
    except OSError as exc:
        err = exc.errno or errno.EINVAL
        detail = str(exc)
    else:
        detail = os.strerror(err) if err else ""
    if not err:
        return sock
    sock.close()
    if err not in ROUTINE_CONNECT_ERRORS:
        warn_once(
            f"connect-{err}",
            f"cannot connect to {path}: {detail}; spooling events instead",
        )
    return None


def wait_ready(fd: int, write: bool, timeout_s: float) -> None:
    """Wait up to ``timeout_s`` seconds for ``fd`` to be readable (or writable, if ``write``)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN | (select.POLLOUT if write else 0))
    poller.poll(timeout_s * 1000)


def untrusted_daemon(sock: socket.socket, path: str, trusted: frozenset[int]) -> str | None:
    """Why the listener on ``sock`` is not to be sent events; None when it may be.

    Checked before anything is sent: the socket's directory must belong to a
    trusted uid and be writable by nobody else (else anyone could have put
    their socket there), and the listening process (``SO_PEERCRED``) must run
    as a trusted uid (``trusted_uids``).
    """
    directory = os.path.dirname(os.path.abspath(path))
    try:
        st = os.stat(directory)
        pid, uid, _ = _UCRED.unpack(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
        )
    except (OSError, AttributeError) as exc:
        return f"cannot check who listens on {path}: {exc}"
    if why := untrusted_directory(directory, st, trusted):
        return why
    if uid not in trusted:
        return f"the process listening on {path} (pid {pid}) runs as uid {uid}, not a daemon's"
    return None
