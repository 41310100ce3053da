"""Protocol errors, by fault (after h11's ``ProtocolError`` family)."""

from __future__ import annotations

__all__ = ["FrameError", "ProtocolError", "SpoolFormatError"]


class ProtocolError(Exception):
    """Base class for everything the protocol layer refuses."""


class FrameError(ProtocolError):
    """A frame whose length is impossible: the byte stream cannot be resynced."""


class SpoolFormatError(ProtocolError):
    """A spool file that is not spool format v1 (bad magic)."""
