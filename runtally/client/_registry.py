"""``get_client``: one Client per socket and spool pair, per process."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from runtally.config import ConfigError, Settings, default_paths, resolve

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
        daemon_user=settings.daemon_user,
        capture_argv=settings.capture_argv,
    )
    return shared(key, lambda: Client(settings.socket, settings.spool, options))


def _settings(socket: Any, spool: Any) -> Settings:
    try:
        return resolve({"socket": socket, "spool": spool})
    except (ConfigError, OSError, ValueError) as exc:
        warn_once("config", f"{exc}; using the default socket and spool paths")
        paths = default_paths()
        return Settings(
            socket=Path(socket) if socket else paths["socket"],
            db=paths["db"],
            spool=Path(spool) if spool else paths["spool"],
        )
