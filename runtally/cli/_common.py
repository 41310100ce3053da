"""Options and error handling shared by the CLI's commands."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from ..config import ConfigError, Settings, resolve

__all__ = ["config_option", "db_option", "settings_from", "socket_option", "spool_option"]

F = TypeVar("F", bound=Callable[..., Any])

_path = click.Path(dir_okay=False, path_type=Path)


def socket_option(f: F) -> F:
    return click.option(
        "--socket",
        type=_path,
        default=None,
        envvar="RUNTALLY_SOCKET",
        help="Daemon socket path [env RUNTALLY_SOCKET].",
    )(f)


def db_option(f: F) -> F:
    return click.option(
        "--db",
        type=_path,
        default=None,
        envvar="RUNTALLY_DB",
        help="dashboard.sqlite path [env RUNTALLY_DB].",
    )(f)


def spool_option(f: F) -> F:
    return click.option(
        "--spool",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        envvar="RUNTALLY_SPOOL",
        help="Spool directory [env RUNTALLY_SPOOL].",
    )(f)


def config_option(f: F) -> F:
    return click.option(
        "--config",
        "config_file",
        type=_path,
        default=None,
        envvar="RUNTALLY_CONFIG",
        help="TOML config file [env RUNTALLY_CONFIG].",
    )(f)


def settings_from(**overrides: Any) -> Settings:
    """Resolve settings from CLI flags, turning config errors into one line."""
    try:
        return resolve(overrides)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
