"""``get_client``: one Client per socket and spool pair, per process."""

from __future__ import annotations

import os

from runtally.config import ClientSettings, client_settings

from ._connection import Client
from ._options import ClientOptions
from ._process import shared
from ._warn import warn_once

__all__ = ["get_client"]


def get_client(
    socket: str | os.PathLike[str] | None = None,
    spool: str | os.PathLike[str] | None = None,
) -> Client:
    """The per-process Client for this socket and spool (resolved settings by default).

    Never raises: settings that cannot be read fall back to the default paths,
    with one warning.
    """
    settings = _settings(socket, spool)
    key = (settings.socket, settings.spool)
    options = ClientOptions(
        flush_timeout=settings.flush_timeout_s,
        default_club=settings.default_club,
        daemon_user=settings.daemon_user,
        capture_argv=settings.capture_argv,
    )
    return shared(key, lambda: Client(settings.socket, settings.spool, options))


def _settings(
    socket: str | os.PathLike[str] | None, spool: str | os.PathLike[str] | None
) -> ClientSettings:
    return client_settings(
        {"socket": socket, "spool": spool}, warn=lambda message: warn_once("config", message)
    )
