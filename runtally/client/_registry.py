"""``get_client``: one Client per socket and spool pair, per process."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from runtally.config import ClientSettings, client_settings

from ._connection import Client
from ._options import ClientOptions
from ._process import release_idle, shared
from ._warn import warn, warn_once

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["Resolved", "get_client", "resolve_tracker"]


#: Shared Clients a process keeps connected at most when it has used more
#: (socket, spool) pairs; the others that hold nothing unacked are released.
MAX_OPEN_CLIENTS = 8


class Resolved(tuple):  # (client, default_club, capture_argv)
    """What a tracker resolves to: the shared Client, and its own default club and
    argv capture (per tracker: the shared Client keeps the first tracker's options,
    and an opt-out such as RUNTALLY_CAPTURE_ARGV=0 set between runs must count)."""

    __slots__ = ()

    @property
    def client(self) -> Client:
        return self[0]  # type: ignore[no-any-return]


#: What each (socket, spool) pair *as given* resolved to, by RUNTALLY_CAPTURE_ARGV
#: too (the one other variable).  Given paths outrank the environment and the
#: config file, so a pair seen once resolves alike for the rest of the process:
#: a pipeline that makes a RunTracker per run pays the resolver (~70 us: the
#: config file read and parsed, a dozen paths built) once.
_given: dict[tuple[str, str, str | None], Resolved] = {}
#: What each (socket, spool) pair of arguments (and RUNTALLY_CONFIG and HOME:
#: where the file is looked for) last resolved to while a config file was
#: read: kept while that file cannot be read or parsed.
_with_file: dict[tuple[object, ...], Resolved] = {}


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
    return resolve_tracker(socket, spool).client


def resolve_tracker(
    socket: str | os.PathLike[str] | None = None,
    spool: str | os.PathLike[str] | None = None,
) -> Resolved:
    """``(client, default_club, capture_argv)`` for a new RunTracker (see ``get_client``)."""
    environ = os.environ
    given = _given_key(socket, spool)
    if given is not None:
        given_key = (*given, environ.get("RUNTALLY_CAPTURE_ARGV"))
        found = _given.get(given_key)
        if found is not None:
            return found
    said: list[str] = []
    settings = _settings(socket, spool, said.append)
    # The same arguments and the same place to look for the file.
    args = (_arg_key(socket), _arg_key(spool), environ.get("RUNTALLY_CONFIG"), environ.get("HOME"))
    kept = _with_file.get(args)
    if settings.config_file is None and said and kept is not None:
        # The file that gave this process its paths is unusable now (a config
        # tool rewriting it, say): its paths still name the daemon that is
        # listening, the defaults would name a spool nobody replays.
        warn(
            f"{said[0]}; keeping the paths it gave earlier in this process"
            f" (socket {kept.client.socket_path}, spool {kept.client.spool.directory})"
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
    release_idle(client, MAX_OPEN_CLIENTS)
    resolved = Resolved((client, settings.default_club, settings.capture_argv))
    if given is not None:
        _given[given_key] = resolved
    if settings.config_file is not None:
        _with_file[args] = resolved
    return resolved


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
