"""Who is on the other end of a Unix socket (SO_PEERCRED), and may they?

Membership of ``allow_gids`` is decided from the uid alone, the same way for
a socket peer and for a spool file's owner: the uid's primary and
supplementary groups from the group database (``os.getgrouplist``).  Neither
the peer's current gid nor a spool file's gid counts: a setgid spool
directory gives every file its group whoever wrote it, and a user added with
``usermod -aG`` keeps their own primary gid.
"""

from __future__ import annotations

import os
import pwd
import socket
import struct
import time

from ..config import Settings
from ._liveness import process_start
from ._store import Origin

__all__ = ["groups_of", "is_admin", "is_allowed", "peer_origin"]

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
#: Seconds a uid's groups are remembered: a group change is seen within this,
#: without an NSS lookup (a file read, or LDAP) on every connection.
GROUPS_TTL_S = 10.0
_groups_cache: dict[int, tuple[float, frozenset[int]]] = {}


def peer_origin(sock: socket.socket) -> Origin:
    """The peer's pid/uid/gid as an Origin; unknown fields are None."""
    try:
        pid, uid, gid = _UCRED.unpack(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
        )
    except (OSError, AttributeError):
        return Origin("socket")
    return Origin("socket", uid, gid, pid, process_start(pid))


def groups_of(uid: int) -> frozenset[int]:
    """The uid's primary and supplementary gids (empty for a uid not in passwd).

    Cached for ``GROUPS_TTL_S`` seconds per uid.
    """
    now = time.monotonic()
    cached = _groups_cache.get(uid)
    if cached is not None and cached[0] > now:
        return cached[1]
    try:
        entry = pwd.getpwuid(uid)
        groups = frozenset(os.getgrouplist(entry.pw_name, entry.pw_gid))
    except (KeyError, OSError):
        groups = frozenset()
    _groups_cache[uid] = (now + GROUPS_TTL_S, groups)
    return groups


def is_allowed(settings: Settings, uid: int | None, gid: int | None = None) -> bool:
    """The config's allow-lists; root and the daemon's own uid always pass.

    ``gid`` is ignored (kept for callers that have one): membership comes from
    the uid's groups, see the module docstring.
    """
    del gid
    if settings.allow_uids is None and settings.allow_gids is None:
        return True
    if uid is None:
        return False
    if uid in (0, os.getuid()):
        return True
    if settings.allow_uids is not None and uid in settings.allow_uids:
        return True
    return settings.allow_gids is not None and not groups_of(uid).isdisjoint(settings.allow_gids)


def is_admin(settings: Settings, uid: int | None) -> bool:
    """Admin messages (replay, maintenance): root and the daemon's uid by default."""
    admins = settings.admin_uids if settings.admin_uids is not None else (0, os.getuid())
    return uid is not None and uid in admins
