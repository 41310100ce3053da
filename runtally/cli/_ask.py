"""Ask the running daemon one control question over its socket (status, replay).

A plain blocking Unix-socket client: one frame out, one reply back, within a
deadline.  Every way of not getting an answer is a ``DaemonUnavailable`` whose
message is a sentence for the operator.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import msgspec

from ..daemon._probe import Nobody, connect
from ..protocol import (
    FrameDecoder,
    FrameError,
    RemoteProtocolError,
    ServerMessage,
    decode_server_message,
    encode_frame,
)
from ._errors import DaemonUnavailable

__all__ = ["DaemonUnavailable", "ask"]


def ask(path: Path, message: msgspec.Struct | dict, *, timeout: float) -> ServerMessage:
    """Send ``message`` to the daemon on ``path``; its one reply within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    try:
        sock = connect(path, timeout=timeout)
    except Nobody as nobody:
        raise DaemonUnavailable(str(nobody)) from None
    try:
        sock.sendall(encode_frame(message))
        return _one_reply(sock, deadline)
    except TimeoutError:
        raise DaemonUnavailable(f"no answer from {path} within {timeout:g} s") from None
    except OSError as exc:
        raise DaemonUnavailable(f"connection to {path} broke: {exc.strerror or exc}") from None
    finally:
        sock.close()


def _one_reply(sock: socket.socket, deadline: float) -> ServerMessage:
    decoder = FrameDecoder()
    while True:
        try:
            frame = decoder.next_frame()
        except FrameError as exc:
            raise DaemonUnavailable(f"garbled reply from the daemon: {exc}") from None
        if frame is not None:
            try:
                return decode_server_message(frame)
            except RemoteProtocolError as exc:
                raise DaemonUnavailable(f"unreadable reply from the daemon: {exc}") from None
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        sock.settimeout(left)
        data = sock.recv(65536)
        if not data:
            raise DaemonUnavailable("the daemon closed the connection without answering")
        decoder.receive_data(data)
