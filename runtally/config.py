"""One settings resolver for client, daemon and CLI.

Precedence: explicit overrides (CLI flags, constructor arguments) > environment
(``RUNTALLY_*``) > TOML config file > defaults.  Defaults need no configuration
for one user on one machine; when the system daemon's runtime directory
``/run/runtally`` exists, the defaults are the system paths instead, so a
pipeline run by cron finds the systemd-managed daemon without any setup.

Each value is validated on its own with ``msgspec.convert(..., strict=False)``
against its field's type, so an error names the setting and where the value
came from (the file, the variable, the flag).  The client imports this module:
it imports nothing but the standard library and msgspec, and ``tomllib`` only
when there is a file to read.

Paths are resolved as ``str`` (``os.path``) and made ``pathlib.Path`` only in
the ``Settings`` that ``resolve`` returns: pathlib costs a cron process ~7 ms
of imports (fnmatch, urllib.parse, ipaddress), and the client, which gets its
few settings from ``client_settings``, never needs a Path.
"""

from __future__ import annotations

import functools
import os
import stat
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal

import msgspec

from runtally._compat import LEGACY_CONFIG, LEGACY_SECTION, deprecated, env_source
from runtally._files import read_small_file
from runtally.errors import RuntallyError

TYPE_CHECKING = False  # not typing's: the annotations below are never evaluated at import
if TYPE_CHECKING:
    from pathlib import Path

    from runtally._pipeline_config import PipelineConfig

__all__ = [
    "ClientSettings",
    "ConfigError",
    "Retention",
    "Settings",
    "default_paths",
    "pipelines_in",
    "resolve",
    "resolve_or_defaults",
    "user_config",
]

# Paths as str (or any os.PathLike a test puts here): read with os.path, not pathlib.
SYSTEM_RUNTIME_DIR = "/run/runtally"
#: Where logind makes each user's runtime directory (``/run/user/<uid>``).
RUN_USER = "/run/user"
#: The system account the packaged daemon runs as (systemd/sysusers.d).
DAEMON_USER = "runtally"
SYSTEM_CONFIG = "/etc/runtally/runtally.toml"


class ConfigError(RuntallyError):
    """A config file or value that cannot be used; the message names it and its source."""


_Days = Annotated[int, msgspec.Meta(ge=1, le=100_000)]


class Retention(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Days each table keeps its rows (``[runtally.retention_days]``); None keeps them forever.

    ``runs``: runs by ``started_at``, with their steps and errors;
    ``audit_log``: by ``ts`` (purge records excepted: the metrics' run and
    error counters add up the runs they removed); ``dead_letters``: by
    ``received_at``.  At least 1 day, at most 100,000 (a cutoff before year 1
    cannot be computed: found from outside, a million days was accepted and
    every retention pass then failed with OverflowError; keep rows forever
    by leaving the table out).
    """

    runs: _Days | None = None
    audit_log: _Days | None = None
    dead_letters: _Days | None = None


#: Seconds a lockless writer's spool file (another host's, or without /proc)
#: stays unchanged before its writer counts as gone (docs/protocol.md).
SPOOL_STALE_S = 3600.0


#: A duration in seconds: finite and not negative (nan and inf are refused:
#: no one means a wait of nan, and inf would block an exit for ever).
_Seconds = Annotated[float, msgspec.Meta(ge=0, le=1e9)]
#: An interval or timeout in seconds that must be more than zero.
_Interval = Annotated[float, msgspec.Meta(gt=0, le=1e9)]
_Count = Annotated[int, msgspec.Meta(ge=1)]
#: The form of ``web_password_hash`` (``runtally/web/_security.hash_password``).
_PASSWORD_HASH = r"^pbkdf2_sha256\$[1-9][0-9]{0,9}\$[A-Za-z0-9+/]+=*\$[A-Za-z0-9+/]+=*$"
_Size = Annotated[int, msgspec.Meta(ge=0)]


class Settings(msgspec.Struct, frozen=True):
    """Everything the daemon, the client and the CLI may be told."""

    socket: Path  # the daemon's Unix socket
    db: Path  # dashboard.sqlite
    spool: Path  # the spool directory
    #: SQLite's synchronous pragma.  FULL: an ack survives a power loss (one
    #: fsync per group commit).  NORMAL is an opt-in: acks of the last seconds
    #: may be lost on power loss (never on a crash of the daemon alone).
    synchronous: Literal["NORMAL", "FULL"] = "FULL"
    busy_timeout_ms: _Size = 5000  # SQLite's busy_timeout, milliseconds
    socket_group: str | None = None  # group owning the socket (the right to emit)
    allow_uids: tuple[int, ...] | None = None  # peers allowed to emit (None: anyone)
    allow_gids: tuple[int, ...] | None = None
    admin_uids: tuple[int, ...] | None = None  # peers allowed admin messages
    max_connections: _Count = 1024
    idle_timeout_s: _Interval = 300.0  # seconds before an idle connection is closed
    #: The writer's queue bound, events (~1.4 kB resident each, decoded and raw):
    #: group commits stay large at 2,000, and the daemon's peak RSS under load small.
    queue_events: _Count = 2000
    replay_interval_s: _Interval = 1.0  # seconds between spool scans
    #: Seconds unchanged after which a lockless (Node.js) spool file whose
    #: writer the daemon cannot see (named with another host) is replayed.
    spool_stale_s: _Interval = SPOOL_STALE_S
    #: seconds a client waits for acks on close (at most an hour: an exit must end)
    client_flush_timeout_s: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 2.0
    web_host: str = "127.0.0.1"  # where `runtally web` binds
    web_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8390  # its TCP port
    #: HTTP basic auth for `runtally web`: what `runtally web --hash-password` prints
    #: (``pbkdf2_sha256$<iterations>$<salt>$<hash>``; anything else is refused,
    #: not served with a hash nobody could match).
    web_password_hash: Annotated[str, msgspec.Meta(pattern=_PASSWORD_HASH)] | None = None
    #: club_slug of a run started without one (``runtally exec`` without
    #: ``--club``, ``RunTracker(pipeline)``); ``rondo`` is the seed schema's default.
    default_club: Annotated[str, msgspec.Meta(min_length=1, max_length=256)] = "rondo"
    max_connections_per_uid: _Count = 64  # connections one uid may hold open at once
    #: bytes of incomplete frames buffered across all connections (at least 2 MiB)
    max_partial_bytes: _Size = 16 << 20
    daemon_user: str = DAEMON_USER  # a daemon socket may belong to it, root or oneself
    capture_argv: bool = True  # record the pipeline's argv (secrets redacted) in run meta
    config_file: Path | None = None  # the file read, if any
    #: Seconds the writer may fail to commit (read-only, replaced, broken
    #: database) before the daemon exits non-zero for systemd to restart it.
    wedged_exit_s: _Interval = 60.0
    #: Seconds a SIGTERM waits for a failing commit before exiting anyway
    #: (unacked events stay with the clients, who spool them).
    stop_timeout_s: _Seconds = 5.0
    #: Seconds between the writer's checkpoints while idle (PASSIVE, then
    #: TRUNCATE when no reader holds the WAL).
    checkpoint_interval_s: _Interval = 5.0
    #: Bytes of parked events (waiting for their run or step) kept at most,
    #: in total and per peer uid; beyond them events are refused.
    parked_max_bytes: _Size = 256 << 20
    parked_max_bytes_per_peer: _Size = 64 << 20
    #: Seconds before a parked event is moved to dead_letters ("its run never started").
    parked_max_age_s: _Interval = 7 * 86400.0
    #: ``status`` fails when the writer has not committed for this many
    #: seconds with events queued, ...
    status_stall_s: _Interval = 30.0
    #: ... when an event has been parked longer than this (seconds), ...
    status_parked_age_s: _Interval = 600.0
    #: ... or when the WAL is larger than this (bytes).
    status_wal_bytes: _Size = 64 << 20
    # -- monitoring and alerts (README "Schedules, states and alerts") --
    #: declared pipelines by name: ``[pipelines.<name>]`` tables (see PipelineConfig)
    pipelines: dict[str, PipelineConfig] = msgspec.field(default_factory=dict)
    monitor_interval_s: _Interval = 5.0  # seconds between the monitor's looks at the pipelines
    crash_grace_s: _Seconds = 30.0  # seconds a run's dead process waits for its spool's replay
    alert_urls: tuple[str, ...] = ()  # Apprise URLs every alert goes to
    alert_command: str | tuple[str, ...] | None = None  # gets each alert as JSON on stdin
    alert_after_failures: _Count = 1  # consecutive failed runs before a "failing" alert
    alert_reminder_hours: _Interval | None = None  # repeat a standing alert this often
    alert_timeout_s: _Interval = 10.0  # seconds one channel may take to send one alert
    web_url: str | None = None  # the dashboard's public URL, for links in alerts
    #: days kept per table, purged by the daemon in small batches (None: forever)
    retention_days: Retention = msgspec.field(default_factory=Retention)
    retention_interval_s: _Interval = 3600.0  # seconds between retention passes
    #: node_exporter textfile written by `runtally metrics` (None: --textfile or nothing)
    metrics_textfile: Path | None = None
    #: Where each resolved value came from, for messages: ``(("db", "environment
    #: variable RUNTALLY_DB"), ...)``; empty for settings not made by ``resolve``.
    sources: tuple[tuple[str, str], ...] = ()
    #: Host names `runtally web` answers besides its bind address (a reverse proxy's); "*": any
    web_allowed_hosts: tuple[str, ...] = ()

    def source_of(self, name: str) -> str | None:
        """Where setting ``name`` came from (``option --db``, ...); None when unknown."""
        return dict(self.sources).get(name)


_ENV = {
    "socket": "RUNTALLY_SOCKET",
    "db": "RUNTALLY_DB",
    "spool": "RUNTALLY_SPOOL",
    "capture_argv": "RUNTALLY_CAPTURE_ARGV",
}
#: The settings' names (``sources`` is the resolver's record, not a setting).
_NAMES = tuple(name for name in Settings.__struct_fields__ if name != "sources")
_ID_LISTS = frozenset({"allow_uids", "allow_gids", "admin_uids"})


class _PathArg(str):
    """What a ``Path`` field is converted to: the path as a str (``_path``).

    ``resolve`` makes it a ``Path`` in ``Settings``; ``client_settings`` a plain str.
    A str subclass because msgspec checks that ``dec_hook`` returns the type asked for.
    """

    __slots__ = ()


@functools.cache
def _field_type(name: str) -> Any:
    """Setting ``name``'s type, its annotation evaluated on first use, ``Path`` as ``_PathArg``.

    One annotation at a time, not ``typing.get_type_hints(Settings)`` (~0.6 ms
    for all of them, and ``PipelineConfig`` imported for ``pipelines``), nor
    ``msgspec.structs.fields`` (msgspec.inspect and msgspec.json: ~8 ms).
    """
    scope: dict[str, Any] = {"Path": _PathArg}
    if name == "pipelines":
        from runtally._pipeline_config import PipelineConfig  # only when declared

        scope["PipelineConfig"] = PipelineConfig
    return eval(Settings.__annotations__[name], globals(), scope)  # our own annotation, not input


def _is_path(name: str) -> bool:
    kind = _field_type(name)
    return kind is _PathArg or kind == _PathArg | None


def _normal_path(path: str) -> str:
    """``str(Path(path))`` without pathlib: ``.`` and empty parts and a trailing ``/`` dropped."""
    if path.startswith("//") and not path.startswith("///"):
        root = "//"  # POSIX leaves two leading slashes to the implementation; so does pathlib
    else:
        root = "/" if path.startswith("/") else ""
    return root + "/".join(p for p in path.split("/") if p and p != ".") or "."


def _path_str(value: str | os.PathLike[str]) -> str:
    """``str(Path(value).expanduser().absolute())``, the resolver's spelling of a path,
    without pathlib.

    Absolute, from the working directory at resolution: a relative path kept
    as such would name another file after a ``chdir`` (a forked worker's new
    spool file nobody replays), and the daemon, the CLI and the client each
    resolve from a directory of their own.
    """
    path = _normal_path(os.fspath(value))
    if path.startswith("~"):
        path = _normal_path(os.path.expanduser(path))
    if not path.startswith("/"):
        path = _normal_path(os.path.join(os.getcwd(), path))
    return path


def _home(env: Mapping[str, str]) -> str:
    return env.get("HOME") or os.path.expanduser("~")


def _system_daemon_here() -> bool:
    """The system daemon's runtime directory exists: default to the system paths."""
    return os.path.isdir(SYSTEM_RUNTIME_DIR)


def _private_dir(path: str, uid: int) -> bool:
    """``path`` is a directory of ``uid``'s that nobody else may write (not a squat)."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == uid and not st.st_mode & 0o022


def _default_paths(env: Mapping[str, str]) -> dict[str, str]:
    """``default_paths`` as str paths (see there)."""
    if _system_daemon_here():
        return {
            "socket": os.path.join(SYSTEM_RUNTIME_DIR, "runtally.sock"),
            "db": "/var/lib/runtally/dashboard.sqlite",
            "spool": "/var/spool/runtally",
        }
    # $HOME only, not $XDG_STATE_HOME: cron sets HOME but no XDG variable, so a
    # daemon started from a shell that sets one would listen where cron's
    # pipelines never look (the reason $XDG_RUNTIME_DIR is not read either).
    state_home = os.path.join(_home(env), ".local", "state")
    state = os.path.join(state_home, "runtally")
    uid = os.getuid()
    user_run = os.path.join(RUN_USER, str(uid))
    private = _private_dir(user_run, uid)
    runtime = os.path.join(user_run, "runtally") if private else os.path.join(state, "run")
    return {
        "socket": _normal_path(os.path.join(runtime, "runtally.sock")),
        "db": _normal_path(os.path.join(state, "dashboard.sqlite")),
        "spool": _normal_path(os.path.join(state, "spool")),
    }


def default_paths(env: Mapping[str, str] | None = None) -> dict[str, Path]:
    """Socket, database and spool paths when nothing is configured.

    The same for a login shell, cron and a systemd unit of one user: the
    socket goes in ``/run/user/<uid>/runtally`` when that directory is the
    user's own (logind makes it; ``$XDG_RUNTIME_DIR`` is not read, since cron
    does not set it), else in ``runtally/run`` under the user's state
    directory ``~/.local/state/runtally`` (from ``$HOME``; ``$XDG_STATE_HOME``
    is not read, for the same reason), where the database and the spool go
    too.  Never in a shared directory such as ``/tmp``, where another user
    could create it first.
    """
    from pathlib import Path  # see the module doc

    paths = _default_paths(os.environ if env is None else env)
    return {name: Path(path) for name, path in paths.items()}


def _load_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    import tomllib  # only when there is a file: most clients never read one

    try:
        raw = read_small_file(path)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    try:
        data = tomllib.loads(raw.decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    if "runtally" not in data and LEGACY_SECTION in data:
        deprecated(f"[{LEGACY_SECTION}] in {path}", "[runtally]")
        data = data[LEGACY_SECTION]
    section = data.get("runtally", data)
    if not isinstance(section, dict):
        raise ConfigError(f"config file {path}: [runtally] must be a table")
    if section is not data and "pipelines" in data:  # [pipelines.x] beside [runtally]
        section = {**section, "pipelines": data["pipelines"]}
    return section


def _unknown(name: str, source: str) -> ConfigError:
    import difflib  # only on this error path

    close = difflib.get_close_matches(name, _NAMES, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"{source}: unknown setting {name!r}{hint}")


def _path(kind: type, value: Any) -> Any:
    if kind is _PathArg and isinstance(value, str | os.PathLike):
        path = os.fspath(value)
        if isinstance(path, str):
            # msgspec makes these a ValidationError with our message.
            if not path:
                raise ValueError("expected a path, got an empty string")
            if "\0" in path:
                raise ValueError("a path cannot contain a NUL character")
            return _PathArg(_path_str(path))
    raise TypeError(f"expected a path, got {type(value).__name__}")  # msgspec: ValidationError


def _convert(name: str, value: Any, source: str) -> Any:
    """``value`` as the type of setting ``name`` (a path as a str).

    Raises ConfigError naming the setting, the value and ``source``.
    """
    if name == "synchronous" and isinstance(value, str):
        value = value.upper()  # the pragma is case-insensitive, so is the setting
    elif name in _ID_LISTS and isinstance(value, str):
        value = value.replace(",", " ").split()  # "0, 1001 1002" as well as a list
    elif name == "pipelines" and isinstance(value, dict):
        return _pipelines(value, source)
    kind = _field_type(name)
    try:
        return msgspec.convert(value, kind, strict=False, dec_hook=_path)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"setting {name!r} from {source}: {_said(exc, kind, value)}") from None


def _said(exc: msgspec.ValidationError, kind: Any, value: Any) -> str:
    """msgspec's reason in our words where it has a better one: the allowed values
    of a choice (a new user read "Invalid enum value 'FAST' (got 'FAST')")."""
    import typing  # an error path: the import is paid only here

    choices = [a for a in typing.get_args(kind) if isinstance(a, str)]
    if str(exc).startswith("Invalid enum value") and choices:
        return f"{value!r} is not one of {', '.join(choices)}"
    return f"{exc} (got {value!r})"


def _pipelines(tables: dict[str, Any], source: str) -> dict[str, PipelineConfig]:
    """Each ``[pipelines.<name>]`` table on its own, so an error names the pipeline."""
    from runtally._pipeline_config import PipelineConfig  # only when declared

    out = {}
    for name, table in tables.items():
        try:
            out[name] = msgspec.convert(table, PipelineConfig, strict=False)
        except msgspec.ValidationError as exc:
            detail = str(exc).replace(" - at `$`", "")
            if detail.startswith("Object contains unknown field `"):
                unknown = detail.split("`")[1]
                known = ", ".join(PipelineConfig.__struct_fields__)
                detail = f"unknown setting {unknown!r} (a pipeline's settings: {known})"
            raise ConfigError(f"pipeline {name!r} in {source}: {detail}") from None
    return out


def pipelines_in(path: str | os.PathLike[str]) -> dict[str, PipelineConfig]:
    """The ``[pipelines.<name>]`` tables of config file ``path`` ({} if it has none
    or is gone); ConfigError when it cannot be read or a table is wrong."""
    tables = _load_file(path).get("pipelines") or {}
    if not isinstance(tables, dict):
        raise ConfigError(f"config file {path}: [pipelines] must be a table of tables")
    return _pipelines(tables, f"config file {path}")


def _user_config(env: Mapping[str, str]) -> str:
    # $HOME only, not $XDG_CONFIG_HOME: see _default_paths.
    return _normal_path(os.path.join(_home(env), ".config", "runtally", "runtally.toml"))


def user_config(env: Mapping[str, str] | None = None) -> Path:
    """The user's own config file: ``~/.config/runtally/runtally.toml`` (from
    ``$HOME``; ``$XDG_CONFIG_HOME`` is not read: cron does not set it).  Read
    before ``/etc/runtally/runtally.toml`` when it exists, so one user without
    root configures the daemon, cron jobs and shells alike with no variable to
    export."""
    from pathlib import Path  # see the module doc

    return Path(_user_config(os.environ if env is None else env))


def _config_file(
    given: Mapping[str, Any], env: Mapping[str, str], sources: Mapping[str, str]
) -> str | os.PathLike[str] | None:
    if given.get("config_file"):
        config_path, named_by = given["config_file"], sources.get("config_file", "the caller")
    else:
        config_path, named_by = env.get("RUNTALLY_CONFIG"), "RUNTALLY_CONFIG"
    if config_path:
        config_file = _path_str(config_path)
        if not os.path.exists(config_file):
            raise ConfigError(f"config file {config_file} does not exist (set by {named_by})")
        return config_file
    mine = _user_config(env)
    if os.path.exists(mine):
        return mine
    if os.path.exists(SYSTEM_CONFIG):
        return SYSTEM_CONFIG
    if os.path.exists(LEGACY_CONFIG):
        deprecated(os.fspath(LEGACY_CONFIG), os.fspath(SYSTEM_CONFIG))
        return LEGACY_CONFIG
    return None


#: name -> (value, where it came from): the resolver's layers, merged.
_Values = dict[str, tuple[Any, str]]


def resolve(
    overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    *,
    sources: Mapping[str, str] | None = None,
) -> Settings:
    """Resolve settings: overrides > environment > config file > defaults.

    The config file: ``--config``/``RUNTALLY_CONFIG`` if given, else the
    user's own (``user_config``) if it exists, else ``/etc/runtally/runtally.toml``.
    ``None`` values in ``overrides`` mean "not given".  ``sources`` names
    where an override came from for error messages (``{"db": "option --db"}``;
    "argument <name>" otherwise).  Raises ConfigError, one sentence naming
    the setting and its source, for an unreadable config file, an unknown
    setting (with the closest known name) or an unusable value.
    """
    return _settings(*_resolve(overrides, os.environ if env is None else env, sources or {}))


def _resolve(
    overrides: Mapping[str, Any] | None, env: Mapping[str, str], sources: Mapping[str, str]
) -> tuple[dict[str, Any], _Values]:
    """``resolve``'s converted values (paths as str) and where each came from."""
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    for name in given:
        if name not in _NAMES:
            raise _unknown(name, sources.get(name, f"argument {name!r}"))
    config_file = _config_file(given, env, sources)
    file_values = (
        {} if config_file is None else _file_values(config_file, _load_file(config_file), _raise)
    )
    values = dict(_each_layer(given, env, file_values, sources))
    values["config_file"] = (config_file, "the resolver")
    return {name: _convert(name, v, src) for name, (v, src) in values.items()}, values


def _settings(converted: dict[str, Any], values: _Values) -> Settings:
    from pathlib import Path  # see the module doc

    sources = tuple(
        (name, src)
        for name, (_, src) in values.items()
        if name in converted and name != "config_file"
    )
    for name, value in converted.items():
        if value is not None and _is_path(name):
            converted[name] = Path(value)
    return Settings(**converted, sources=sources)


def resolve_or_defaults(
    overrides: Mapping[str, Any] | None = None,
    *,
    warn: Callable[[str], object],
    env: Mapping[str, str] | None = None,
) -> Settings:
    """``resolve(overrides)``, or when that fails the same setting by setting.

    For the pipeline side (client, ``runtally exec``), where a broken config
    must not stop tracking.  Each problem goes to ``warn`` as one sentence,
    and only what is broken is skipped: a config file that cannot be read or
    parsed (then overrides > environment > defaults still hold for every
    setting: ``RUNTALLY_SOCKET``/``RUNTALLY_SPOOL`` are where the daemon was
    told to listen and replay), an unknown setting in it, or a value that is
    itself unusable (``RUNTALLY_CAPTURE_ARGV=maybe``), for which the next
    layer's value is used - so a typo in one variable never costs the file's
    socket and spool.  Never raises for a config problem.
    """
    return _settings(*_resolve_or_defaults(overrides, warn, os.environ if env is None else env))


def _resolve_or_defaults(
    overrides: Mapping[str, Any] | None,
    warn: Callable[[str], object],
    env: Mapping[str, str],
) -> tuple[dict[str, Any], _Values]:
    try:
        return _resolve(overrides, env, {})
    except (ConfigError, OSError, ValueError):
        pass  # found again below, setting by setting, each with its own warning
    given = {}
    for name, value in (overrides or {}).items():
        if value is None:
            continue
        if name in _NAMES:
            given[name] = value
        else:
            warn(str(_unknown(name, f"argument {name!r}")))
    file_values, config_file = _file_layer(given, env, warn)
    converted: dict[str, Any] = {}
    values: _Values = {}
    # Lowest precedence first, each value on its own: a bad one leaves the one
    # below, so a typo in one variable never costs the config file's socket
    # and spool (where the daemon listens and replays).
    for name, (value, source) in _each_layer(given, env, file_values):
        try:
            converted[name] = _convert(name, value, source)
        except ConfigError as exc:
            warn(f"{exc}; ignored")
        else:
            values[name] = (value, source)
    converted["config_file"] = (
        None if config_file is None else _convert("config_file", config_file, "the resolver")
    )
    values["config_file"] = (config_file, "the resolver")
    return converted, values


def _file_layer(
    given: Mapping[str, Any], env: Mapping[str, str], warn: Callable[[str], object]
) -> tuple[_Values, Any]:
    """The config file's values and its path; ({}, None) with a warning when it is unusable.

    An unknown setting in the file is skipped with its own warning; the rest
    of the file still applies.
    """
    try:
        config_file = _config_file(given, env, {})
        if config_file is None:
            return {}, None
        loaded = _load_file(config_file)
    except (ConfigError, OSError, ValueError) as exc:
        warn(f"{exc}; ignoring the config file (options, environment and defaults still apply)")
        return {}, None
    return _file_values(config_file, loaded, lambda exc: warn(f"{exc}; ignored")), config_file


def _file_values(
    config_file: Any, loaded: dict[str, Any], on_unknown: Callable[[ConfigError], object]
) -> _Values:
    """The settings in ``loaded`` (``config_file``'s table), name -> (value, where);
    ``on_unknown`` gets the error of each key that is not a setting (``resolve``
    raises it, the pipeline side warns)."""
    where = f"config file {os.fspath(config_file)}"
    values: _Values = {}
    for key, value in loaded.items():
        name = key.replace("-", "_")
        if name in _NAMES:
            values[name] = (value, where)
        else:
            on_unknown(_unknown(key, where))
    return values


def _raise(exc: ConfigError) -> None:
    raise exc


def _each_layer(
    given: Mapping[str, Any],
    env: Mapping[str, str],
    file_values: _Values,
    sources: Mapping[str, str] | None = None,
) -> list[tuple[str, Any]]:
    """(name, (value, source)) of defaults, config file, environment and overrides,
    lowest first (``dict()`` of it: each setting's winner).  ``sources`` names where
    an override came from (``argument <name>`` otherwise)."""
    sources = sources or {}
    out: list[tuple[str, Any]] = [(k, (v, "the defaults")) for k, v in _default_paths(env).items()]
    out += file_values.items()
    for name, var in _ENV.items():
        if env.get(var):
            out.append((name, (env[var], env_source(var))))
    out += [
        (name, (value, sources.get(name, f"argument {name!r}")))
        for name, value in given.items()
        if name != "config_file"
    ]
    return out


#: The settings' defaults by name (msgspec keeps those of the last fields, in order).
_DEFAULTS = dict(
    zip(
        Settings.__struct_fields__[-len(Settings.__struct_defaults__) :],
        Settings.__struct_defaults__,
        strict=True,
    )
)


class ClientSettings(msgspec.Struct, frozen=True, kw_only=True):
    """The settings a pipeline's client uses, paths as str (``client_settings``).

    ``socket``/``spool``: the daemon's socket and the spool directory;
    ``flush_timeout_s``: ``client_flush_timeout_s``; ``config_file``: the
    file read (None: none, or it could not be read); the others as in
    ``Settings``.
    """

    socket: str
    spool: str
    flush_timeout_s: float
    default_club: str
    daemon_user: str
    capture_argv: bool
    config_file: str | None = None


def client_settings(
    overrides: Mapping[str, Any] | None = None,
    *,
    warn: Callable[[str], object],
    env: Mapping[str, str] | None = None,
) -> ClientSettings:
    """``resolve_or_defaults(overrides, ...)``'s values for the client, without pathlib.

    The same rules, layers and warnings (it is the same resolution); only no
    ``Settings`` is built, so a cron process never imports pathlib.  Never
    raises for a config problem.
    """
    converted, _ = _resolve_or_defaults(overrides, warn, os.environ if env is None else env)

    def get(name: str) -> Any:
        return converted[name] if name in converted else _DEFAULTS[name]

    # str(): a plain str, not the resolver's _PathArg
    return ClientSettings(
        socket=str(get("socket")),
        spool=str(get("spool")),
        flush_timeout_s=get("client_flush_timeout_s"),
        default_club=get("default_club"),
        daemon_user=get("daemon_user"),
        capture_argv=get("capture_argv"),
        config_file=None if converted["config_file"] is None else str(converted["config_file"]),
    )
