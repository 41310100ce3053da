"""``get_client``: one Client per socket and spool pair, per process."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from runtally.config import ClientSettings, client_settings

from ._connection import Client
from ._options import ClientOptions
from ._process import shared
from ._warn import warn, warn_once

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["get_client"]

#: The Client each (socket, spool) pair *as given* resolved to.  Given paths
#: outrank the environment and the config file, and the shared key is made of
#: them alone, so a pair seen once resolves to the same Client for the rest of
#: the process: a pipeline that makes a RunTracker per run pays the resolver
#: (~70 us: the config file read and parsed, a dozen paths built) once.
_given: dict[tuple[str, str], Client] = {}
#: The Client each (socket, spool) pair of arguments (and RUNTALLY_CONFIG and
#: HOME: where the file is looked for) last resolved to while a config file
#: was read: kept while that file cannot be read or parsed.
_with_file: dict[tuple[object, ...], Client] = {}


def get_client(
    socket: str | os.PathLike[str] | None = None,
    spool: str | os.PathLike[str] | None = None,
) -> Client:
    """The per-process Client for this socket and spool (resolved settings by default).

    Never raises: a setting that cannot be used falls back to the layer below
    it, with one warning (``config.resolve_or_defaults``); a config file that
    gave this process its paths and cannot be read now keeps those paths,
    with a warning each time.
    """
    given = _given_key(socket, spool)
    if given is not None and (client := _given.get(given)) is not None:
        return client
    said: list[str] = []
    settings = _settings(socket, spool, said.append)
    # The same arguments and the same place to look for the file.
    environ = os.environ
    args = (
        _arg_key(socket),
        _arg_key(spool),
        environ.get("RUNTALLY_CONFIG"),
        environ.get("HOME"),
    )
    kept = _with_file.get(args)
    if settings.config_file is None and said and kept is not None:
        # The file that gave this process its paths is unusable now (a config
        # tool rewriting it, say): its paths still name the daemon that is
        # listening, the defaults would name a spool nobody replays.
        warn(
            f"{said[0]}; keeping the paths it gave earlier in this process"
            f" (socket {kept.socket_path}, spool {kept.spool.directory})"
        )
        return kept
    for message in said:
        warn_once("config", message)
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
    if settings.config_file is not None:
        _with_file[args] = client
    return client


def _arg_key(path: object) -> object:
    """A hashable stand-in for a socket/spool argument (None, text or a path-like)."""
    try:
        return None if path is None else os.fspath(path)  # type: ignore[call-overload]
    except TypeError:
        return repr(path)


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
    socket: str | os.PathLike[str] | None,
    spool: str | os.PathLike[str] | None,
    warn: Callable[[str], object],
) -> ClientSettings:
    return client_settings({"socket": socket, "spool": spool}, warn=warn)
