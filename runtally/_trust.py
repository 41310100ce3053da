"""Who may own the daemon's socket directory and the spool: one rule for the client and the daemon.

The client checks it before it sends anything or writes a spool file; the
daemon before it listens, so that it never serves on a path every client
refuses (docs/operations.md "Security model").
"""

from __future__ import annotations

import os
import pwd
import stat

__all__ = ["trusted_uids", "untrusted_directory"]


def trusted_uids(daemon_user: str | None) -> frozenset[int]:
    """The uids a daemon may run as: root, this process's uid, and ``daemon_user``'s."""
    uids = {0, os.getuid()}
    if daemon_user:
        try:
            uids.add(pwd.getpwnam(daemon_user).pw_uid)
        except (KeyError, OSError):
            pass  # no such account here: nobody can be it
    return frozenset(uids)


def untrusted_directory(
    directory: str, st: os.stat_result, trusted: frozenset[int], *, shared: bool = False
) -> str | None:
    """Why ``directory`` (``st``: its stat) may have been planted or tampered with; None if not.

    It must belong to a trusted uid (``trusted_uids``) and be writable by
    nobody else, or else anyone could have put a socket there, or delete and
    swap our files in it.  ``shared``: the packaged spool directory is mode
    ``3770`` group runtally (docs/operations.md "Security model"), so a
    group-writable directory is accepted when it is sticky (no member can
    remove another's file); world-writable never is.
    """
    mode = st.st_mode
    if not stat.S_ISDIR(mode):
        return f"{directory} is not a directory"
    if st.st_uid not in trusted:
        return f"{directory} belongs to uid {st.st_uid}, not to this user, root or the daemon's"
    writable_by_others = mode & 0o002 or (mode & 0o020 and not (shared and mode & stat.S_ISVTX))
    if writable_by_others:
        return f"{directory} is writable by others (mode {mode & 0o7777:04o})"
    return None
