"""Protocol errors, by fault (after h11's ``_util.py``).

``LocalProtocolError``: what *we* were about to send or write cannot be
framed (an empty or over-size payload); the fault is ours, nothing was sent.
``RemoteProtocolError``: what the *peer* sent cannot be read; ``reason`` says
how (``"malformed"`` bytes or an ``"invalid"`` message).  msgspec's own
exceptions never cross this package's boundary: they are chained as
``__cause__``.
"""

from __future__ import annotations

from typing import Literal

from runtally.errors import RuntallyError

__all__ = ["FrameError", "LocalProtocolError", "ProtocolError", "RemoteProtocolError"]


class ProtocolError(RuntallyError):
    """Base class for everything the protocol layer refuses."""


class LocalProtocolError(ProtocolError):
    """Our own message or record cannot be framed (length outside 1..MAX_FRAME)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something this side cannot read.

    ``reason`` is ``"malformed"`` (not MessagePack, bad UTF-8, too deep,
    trailing bytes, an impossible frame length) or ``"invalid"`` (well-formed
    MessagePack that is not a message of the expected shape).
    """

    def __init__(self, message: str, reason: Literal["malformed", "invalid"]) -> None:
        super().__init__(message)
        self.reason = reason


class FrameError(RemoteProtocolError):
    """A received frame header with an impossible length: the stream cannot be resynced."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "malformed")
