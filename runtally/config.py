"""One settings resolver for client, daemon and CLI.

Precedence: explicit overrides (CLI flags, constructor arguments) > environment
(``RUNTALLY_*``) > TOML config file > defaults.  Defaults need no configuration
for one user on one machine; when the system daemon's runtime directory
``/run/runtally`` exists, the defaults are the system paths instead, so a
pipeline run by cron finds the systemd-managed daemon without any setup.

Standard library only: the client imports this.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from runtally._compat import LEGACY_CONFIG, LEGACY_SECTION, deprecated

__all__ = ["ConfigError", "Settings", "default_paths", "resolve"]

SYSTEM_RUNTIME_DIR = Path("/run/runtally")
SYSTEM_CONFIG = Path("/etc/runtally/runtally.toml")


class ConfigError(Exception):
    """A config file or value that cannot be used; the message names it."""


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    """Everything the daemon, the client and the CLI may be told."""

    socket: Path
    db: Path
    spool: Path
    synchronous: Literal["NORMAL", "FULL"] = "NORMAL"
    busy_timeout_ms: int = 5000
    socket_group: str | None = None
    allow_uids: tuple[int, ...] | None = None
    allow_gids: tuple[int, ...] | None = None
    admin_uids: tuple[int, ...] | None = None
    max_connections: int = 1024
    idle_timeout_s: float = 300.0
    queue_events: int = 5000
    replay_interval_s: float = 1.0
    client_flush_timeout_s: float = 2.0
    web_host: str = "127.0.0.1"
    web_port: int = 8390
    web_password_hash: str | None = None
    config_file: Path | None = None


_ENV = {
    "socket": "RUNTALLY_SOCKET",
    "db": "RUNTALLY_DB",
    "spool": "RUNTALLY_SPOOL",
}


def default_paths(env: Mapping[str, str] | None = None) -> dict[str, Path]:
    """Socket, database and spool paths when nothing is configured."""
    env = os.environ if env is None else env
    if SYSTEM_RUNTIME_DIR.is_dir():
        return {
            "socket": SYSTEM_RUNTIME_DIR / "runtally.sock",
            "db": Path("/var/lib/runtally/dashboard.sqlite"),
            "spool": Path("/var/spool/runtally"),
        }
    home = Path(env.get("HOME") or Path.home())
    state = Path(env.get("XDG_STATE_HOME") or home / ".local" / "state") / "runtally"
    runtime_base = env.get("XDG_RUNTIME_DIR")
    runtime = (
        Path(runtime_base) / "runtally"
        if runtime_base and Path(runtime_base).is_dir()
        else Path(f"/tmp/runtally-{os.getuid()}")
    )
    return {
        "socket": runtime / "runtally.sock",
        "db": state / "dashboard.sqlite",
        "spool": state / "spool",
    }


def _load_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    if "runtally" not in data and LEGACY_SECTION in data:
        deprecated(f"[{LEGACY_SECTION}] in {path}", "[runtally]")
        data = data[LEGACY_SECTION]
    section = data.get("runtally", data)
    if not isinstance(section, dict):
        raise ConfigError(f"config file {path}: [runtally] must be a table")
    return section


def _coerce(name: str, value: Any) -> Any:
    field_types = {f.name: f.type for f in dataclasses.fields(Settings)}
    if name not in field_types:
        raise ConfigError(f"unknown setting {name!r}")
    kind = str(field_types[name])
    try:
        if name == "config_file" and value is None:
            return None
        if name in ("socket", "db", "spool", "config_file"):
            return Path(value).expanduser()
        if name == "synchronous":
            upper = str(value).upper()
            if upper not in ("NORMAL", "FULL"):
                raise ConfigError("synchronous must be NORMAL or FULL")
            return upper
        if name.endswith(("_uids", "_gids")):
            if value is None:
                return None
            if isinstance(value, str):
                value = [v for v in value.replace(",", " ").split() if v]
            return tuple(int(v) for v in value)
        if kind.startswith("int"):
            return int(value)
        if kind.startswith("float"):
            return float(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"setting {name!r}: {exc}") from exc
    return value


def resolve(
    overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Resolve settings: overrides > environment > config file > defaults.

    ``None`` values in ``overrides`` mean "not given".  Raises ConfigError for
    an unreadable config file or an unusable value.
    """
    env = os.environ if env is None else env
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    config_path = given.get("config_file") or env.get("RUNTALLY_CONFIG")
    if config_path:
        config_file: Path | None = Path(config_path).expanduser()
        if not config_file.exists():
            raise ConfigError(f"config file {config_file} does not exist")
    elif SYSTEM_CONFIG.exists():
        config_file = SYSTEM_CONFIG
    elif LEGACY_CONFIG.exists():
        deprecated(str(LEGACY_CONFIG), str(SYSTEM_CONFIG))
        config_file = LEGACY_CONFIG
    else:
        config_file = None

    values: dict[str, Any] = dict(default_paths(env))
    if config_file is not None:
        for key, value in _load_file(config_file).items():
            values[key.replace("-", "_")] = value
    for key, var in _ENV.items():
        if env.get(var):
            values[key] = env[var]
    values.update(given)
    values["config_file"] = config_file
    return Settings(**{k: _coerce(k, v) for k, v in values.items()})
