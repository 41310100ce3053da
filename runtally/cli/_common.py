"""The CLI's plumbing, written once: path options, settings, errors (click ``examples/repo``).

``uses_settings("socket", "db")`` gives a command ``--socket``, ``--db`` (those
named, each with its variable) and ``--config``, resolves them with the
environment and config file into one ``Settings``, and passes it as the
command's first argument.  It is also where the data layer's errors become
one ``click.ClickException`` line: no command catches them itself.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import click

from .._compat import env_source
from ..config import Settings, resolve, resolve_or_defaults
from ..errors import RuntallyError
from ._errors import DatabaseError
from ._text import visible

if TYPE_CHECKING:  # rich is the tables' and `runtally daemon` never loads it
    from rich.console import Console

__all__ = [
    "Seconds",
    "command_errors",
    "fits",
    "given_as_options",
    "setting_option",
    "source_note",
    "uses_settings",
    "warn",
    "wide_option",
]

F = TypeVar("F", bound=Callable[..., Any])
PathName = Literal["socket", "db", "spool"]

_OVERRIDES = "runtally.overrides"  # ctx.meta key: setting name -> (value, source)


class _PathType(click.ParamType):
    """A path, unchecked here: what is wrong with it is said later, naming its source.

    (``click.Path`` would refuse a directory itself, as "Invalid value for
    '--db'" with exit status 2, even when the value came from RUNTALLY_DB.)
    """

    name = "path"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Path:
        return value if isinstance(value, Path) else Path(value)


_file = _PathType()
_dir = _PathType()

#: Each path option: its flag, type, variable and help.
_OPTIONS: dict[str, tuple[str, click.ParamType, str, str]] = {
    "socket": ("--socket", _file, "RUNTALLY_SOCKET", "Daemon socket path"),
    "db": ("--db", _file, "RUNTALLY_DB", "dashboard.sqlite path"),
    "spool": ("--spool", _dir, "RUNTALLY_SPOOL", "Spool directory"),
    "config_file": ("--config", _file, "RUNTALLY_CONFIG", "TOML config file"),
}


class Seconds(click.FloatRange):
    """A duration option in seconds: finite, from ``min`` to ``max`` (a day by
    default); ``nan`` and ``1e308`` are one clear error, not a hang or a traceback."""

    name = "seconds"

    def __init__(self, min: float = 0.0, max: float = 86400.0) -> None:
        super().__init__(min=min, max=max)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        seconds = super().convert(value, param, ctx)
        if math.isnan(seconds):  # nan compares unequal to every bound, so it passed them
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        return seconds


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    """Option callback: keep the value and where it came from for the resolver."""
    if value is None or param.name is None:
        return
    source = ctx.get_parameter_source(param.name)
    if source is click.core.ParameterSource.ENVIRONMENT and isinstance(param, click.Option):
        where = env_source(str(param.envvar))
    else:
        where = f"option {param.opts[0]}"
    ctx.meta.setdefault(_OVERRIDES, {})[param.name] = (value, where)


def setting_option(*decls: str, **attrs: Any) -> Callable[[F], F]:
    """A click option whose value is a settings override, not a command argument."""
    return click.option(*decls, expose_value=False, callback=_remember, **attrs)


def _path_option(name: str) -> Callable[[F], F]:
    flag, kind, var, what = _OPTIONS[name]
    attrs: dict[str, Any] = {"type": kind, "envvar": var, "help": f"{what} [env {var}]."}
    return setting_option(flag, name, **attrs)


@contextlib.contextmanager
def command_errors() -> Iterator[None]:
    """Turn every ``RuntallyError`` into one ClickException line with its exit status."""
    try:
        yield
    except RuntallyError as exc:
        error = click.ClickException(visible(str(exc)))
        error.exit_code = getattr(exc, "exit_code", 1)
        raise error from exc


def _settings(ctx: click.Context, *, fallback: bool) -> Settings:
    remembered: dict[str, tuple[Any, str]] = ctx.meta.get(_OVERRIDES, {})
    overrides = {name: value for name, (value, _) in remembered.items()}
    if fallback:
        return resolve_or_defaults(overrides, warn=warn)
    return resolve(overrides, sources={name: src for name, (_, src) in remembered.items()})


def given_as_options() -> dict[str, Any]:
    """The settings this command was given by a flag (``--socket``, ``--config``, ...),
    not by their variable: name -> value as given."""
    remembered: dict[str, tuple[Any, str]] = click.get_current_context().meta.get(_OVERRIDES, {})
    return {name: value for name, (value, src) in remembered.items() if src.startswith("option ")}


def source_note(settings: Settings, name: str) -> str:
    """`` (db from environment variable RUNTALLY_DB)``, or "" when it is a default."""
    source = settings.source_of(name)
    if source is None or source == "the defaults":
        return ""
    return f" ({name} from {source})"


#: ``--wide``: the read commands' tables in full, as on a pipe.
wide_option = click.option(
    "--wide",
    "-w",
    is_flag=True,
    help="Every column in full, nothing cut, even if lines wrap (as on a pipe).",
)


def fits(out: Console, wide: bool) -> bool:
    """Fit a table to the terminal: on a terminal, unless --wide."""
    return out.is_terminal and not wide


def warn(message: str) -> None:
    """One ``runtally: ...`` line on stderr; never raises."""
    try:
        click.echo(f"runtally: {visible(message)}", err=True)
    except Exception:  # noqa: BLE001 - a broken stderr must not change the command
        pass


#: Arguments passed on as given: the command ``runtally exec`` runs, byte for byte.
_VERBATIM = frozenset({"command"})


def _as_text(value: Any) -> Any:
    """An argument's text as a recorded name would be: bytes that are not UTF-8
    (a Latin-1 file name in ``$1``) written ``\\xNN``, as the client stores them,
    so ``runs -p "$name"`` finds what the pipeline recorded and SQLite and the
    socket never see a lone surrogate."""
    from .._text import clean_text

    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, tuple):
        return tuple(_as_text(v) for v in value)
    return value


def uses_settings(*paths: PathName, fallback: bool = False) -> Callable[[F], F]:
    """Add the ``paths`` options and ``--config``; pass the resolved Settings first.

    ``fallback``: a config problem is a warning and the defaults are used
    (``runtally exec``: tracking must never stop the command).  Otherwise it
    is one ``Error:`` line, as is every ``RuntallyError`` the command raises.
    """

    def decorate(f: F) -> F:
        @functools.wraps(f)
        def command(*args: Any, **kwargs: Any) -> Any:
            ctx = click.get_current_context()
            kwargs = {k: v if k in _VERBATIM else _as_text(v) for k, v in kwargs.items()}
            with command_errors():
                settings = _settings(ctx, fallback=fallback)
                try:
                    return f(settings, *args, **kwargs)
                except DatabaseError as exc:
                    raise DatabaseError(f"{exc}{source_note(settings, 'db')}") from None

        wrapped: Any = command
        for name in reversed((*paths, "config_file")):
            wrapped = _path_option(name)(wrapped)
        return wrapped

    return decorate
