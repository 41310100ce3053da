"""Who is on the other end of a Unix socket (SO_PEERCRED), and may they?"""

from __future__ import annotations

import os
import socket
import struct

from ..config import Settings
from ._liveness import process_start
from ._store import Origin

__all__ = ["is_admin", "is_allowed", "peer_origin"]

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def peer_origin(sock: socket.socket) -> Origin:
    """The peer's pid/uid/gid as an Origin; unknown fields are None."""
    try:
        pid, uid, gid = _UCRED.unpack(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
        )
    except (OSError, AttributeError):
        return Origin("socket")
    return Origin("socket", uid, gid, pid, process_start(pid))


def is_allowed(settings: Settings, uid: int | None, gid: int | None) -> bool:
    """The config's allow-lists; root and the daemon's own uid always pass."""
    if settings.allow_uids is None and settings.allow_gids is None:
        return True
    if uid in (0, os.getuid()):
        return True
    if settings.allow_uids is not None and uid in settings.allow_uids:
        return True
    return settings.allow_gids is not None and gid in settings.allow_gids


def is_admin(settings: Settings, uid: int | None) -> bool:
    """Admin messages (replay, maintenance): root and the daemon's uid by default."""
    admins = settings.admin_uids if settings.admin_uids is not None else (0, os.getuid())
    return uid is not None and uid in admins
