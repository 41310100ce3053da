"""``get_client``: one Client per socket and spool pair, per process."""

from __future__ import annotations

import os

from runtally.config import ClientSettings, client_settings

from ._connection import Client
from ._options import ClientOptions
from ._process import shared
from ._warn import warn_once

__all__ = ["get_client"]

#: The Client each (socket, spool) pair *as given* resolved to.  Given paths
#: outrank the environment and the config file, and the shared key is made of
#: them alone, so a pair seen once resolves to the same Client for the rest of
#: the process: a pipeline that makes a RunTracker per run pays the resolver
#: (~70 us: the config file read and parsed, a dozen paths built) once.
_given: dict[tuple[str, str], Client] = {}


def get_client(
    socket: str | os.PathLike[str] | None = None,
    spool: str | os.PathLike[str] | None = None,
) -> Client:
    """The per-process Client for this socket and spool (resolved settings by default).

    Never raises: settings that cannot be read fall back to the default paths,
    with one warning.
    """
    given = _given_key(socket, spool)
    if given is not None and (client := _given.get(given)) is not None:
        return client
    settings = _settings(socket, spool)
    key = (settings.socket, settings.spool)
    options = ClientOptions(
        flush_timeout=settings.flush_timeout_s,
        default_club=settings.default_club,
        daemon_user=settings.daemon_user,
        capture_argv=settings.capture_argv,
    )
    client = shared(key, lambda: Client(settings.socket, settings.spool, options))
    if given is not None:
        _given[given] = client
    return client


def _given_key(socket: object, spool: object) -> tuple[str, str] | None:
    """Both paths, when both are given as absolute text (it resolves alike in any environment).

    None otherwise: a missing one comes from the environment or the config
    file, ``~`` from $HOME and a relative one from the working directory, any
    of which may change between calls.
    """
    if socket is None or spool is None:
        return None
    try:
        pair = (os.fspath(socket), os.fspath(spool))  # type: ignore[call-overload]
    except TypeError:
        return None
    for path in pair:
        if not isinstance(path, str) or not path.startswith("/"):
            return None  # ~ reads $HOME, a relative path the working directory
    return pair  # type: ignore[return-value]


def _settings(
    socket: str | os.PathLike[str] | None, spool: str | os.PathLike[str] | None
) -> ClientSettings:
    return client_settings(
        {"socket": socket, "spool": spool}, warn=lambda message: warn_once("config", message)
    )
