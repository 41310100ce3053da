"""``get_client``: one Client per socket and spool pair, per process."""

from __future__ import annotations

import os
from typing import Any

from runtally.config import Settings, resolve_or_defaults

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
    key = (os.fspath(settings.socket), os.fspath(settings.spool))
    options = ClientOptions(
        flush_timeout=settings.client_flush_timeout_s,
        default_club=settings.default_club,
        daemon_user=settings.daemon_user,
        capture_argv=settings.capture_argv,
    )
    return shared(key, lambda: Client(settings.socket, settings.spool, options))


def _settings(socket: Any, spool: Any) -> Settings:
    return resolve_or_defaults(
        {"socket": socket, "spool": spool}, warn=lambda message: warn_once("config", message)
    )
