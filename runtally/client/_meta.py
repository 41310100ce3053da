"""Where a run ran: the ``meta`` of its ``run_start`` event."""

from __future__ import annotations

import _socket as socket  # the C module: socket.py costs a cron process ~2-3 ms of enum set-up
import functools
import os
import pwd
import sys
from typing import Any

from . import _coerce
from ._redact import redact_argv

__all__ = ["GIT_SHA_ENV", "run_meta"]

#: Set by a deploy to the commit the pipeline runs; recorded as ``git_sha``.
GIT_SHA_ENV = "RUNTALLY_GIT_SHA"
MAX_ARGV = 64


def run_meta(*, capture_argv: bool = True) -> dict[str, Any]:
    """The facts a ``run_start`` carries in ``meta``: pid, host, user, argv, git_sha.

    ``argv`` has secret values redacted (``_redact``), and is left out when
    ``capture_argv`` is False (the ``capture_argv`` setting).
    """
    meta: dict[str, Any] = {"pid": os.getpid()}
    try:
        meta["host"] = socket.gethostname()
    except OSError:
        pass
    user = _user()
    if user:
        meta["user"] = user
    if capture_argv:
        meta["argv"] = _argv(tuple(sys.argv[:MAX_ARGV]))
    git_sha = os.environ.get(GIT_SHA_ENV)
    if git_sha:
        meta["git_sha"] = git_sha[:128]
    return meta


def _argv(argv: tuple[str, ...]) -> list[str]:
    """``argv`` cleaned and redacted: the same for every run of a process, so made once.

    Keyed by the arguments themselves, so a program that changes ``sys.argv``
    gets its new ones; a fresh list each time, the caller's to keep.
    """
    global _argv_made  # noqa: PLW0603
    made = _argv_made  # one read: another thread may replace it meanwhile
    if made is None or made[0] != argv:
        made = _argv_made = (argv, redact_argv(_coerce.text(a, 1000) for a in argv))
    return list(made[1])


_argv_made: tuple[tuple[str, ...], list[str]] | None = None


def _user() -> str | None:
    """The user a run ran as: $LOGNAME, $USER, $LNAME or $USERNAME, else the passwd name.

    Read once per uid, not at every run: each environment lookup costs ~1 us
    (an encode, a KeyError) and a run start did four.  A program that changes
    those variables after its first run keeps the first answer.
    """
    return _user_of(os.getuid())


@functools.lru_cache(maxsize=4)
def _user_of(uid: int) -> str:
    environ = os.environ
    for var in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        value = environ.get(var)
        if value:
            return value
    try:  # an NSS lookup (~30 us)
        return pwd.getpwuid(uid).pw_name
    except (KeyError, OSError):
        return str(uid)
