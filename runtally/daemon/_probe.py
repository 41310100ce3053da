"""Is a daemon listening on this socket path?  The one probe everybody uses.

The CLI asks before writing the database itself (``db migrate``/``vacuum``)
and connects through it to ask its questions (``status``, ``replay``); the
daemon asks before it binds, to tell a stale socket file (unlink it) from a
live daemon (refuse to start).  Each reads the same ``Answer``.
"""

from __future__ import annotations

import enum
import os
import socket
from pathlib import Path

from ..errors import RuntallyError

__all__ = ["Nobody", "Silence", "connect", "probe"]


class Silence(enum.Enum):
    """Why nobody answered on a socket path."""

    ABSENT = "absent"  # no file there: nothing runs
    STALE = "stale"  # a socket file nobody listens on: its daemon died
    DENIED = "denied"  # not ours to connect to: cannot tell
    BUSY = "busy"  # the connection was not accepted in time: maybe a busy daemon
    FAILED = "failed"  # any other error


class Nobody(RuntallyError):
    """No connection to the daemon; ``silence`` says why, the message says it to a person."""

    def __init__(self, message: str, silence: Silence, error: OSError) -> None:
        super().__init__(message)
        self.silence = silence
        self.error = error


def _classify(path: Path, exc: OSError) -> Nobody:
    match exc:
        case FileNotFoundError():
            return Nobody(f"not running (no socket at {path})", Silence.ABSENT, exc)
        case ConnectionRefusedError():
            return Nobody(
                f"not running (socket {path} refuses connections: stale socket file)",
                Silence.STALE,
                exc,
            )
        case PermissionError():
            return Nobody(
                f"cannot connect to {path}: permission denied (are you in its group?)",
                Silence.DENIED,
                exc,
            )
        case TimeoutError():
            return Nobody(f"socket {path} accepts no connection (busy?)", Silence.BUSY, exc)
        case _:
            return Nobody(f"cannot connect to {path}: {exc.strerror or exc}", Silence.FAILED, exc)


def connect(path: Path, *, timeout: float) -> socket.socket:
    """A blocking Unix stream socket connected to ``path``, with ``timeout`` seconds set.

    Raises Nobody when no daemon accepts the connection.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(os.fspath(path))
    except OSError as exc:
        sock.close()
        raise _classify(path, exc) from None
    except BaseException:
        sock.close()
        raise
    return sock


def probe(path: Path, *, timeout: float = 1.0) -> Nobody | None:
    """None when something accepts connections on ``path``, else why not."""
    try:
        connect(path, timeout=timeout).close()
    except Nobody as nobody:
        return nobody
    return None
