"""Compatibility with runtally's first name, runledger (0.1), deprecated.

Whoever tried 0.1 has ``RUNLEDGER_*`` variables in crontabs and units, and
perhaps ``/etc/runledger/runledger.toml``.  They keep working, each with one
deprecation line on stderr per process; the new name wins where both are set.
Standard library only, and cheap: ``runtally/__init__`` runs it on import.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping

__all__ = ["LEGACY_CONFIG", "LEGACY_SECTION", "adopt_legacy_env", "deprecated", "env_source"]

LEGACY_PREFIX = "RUNLEDGER_"
#: A str, not a Path: pathlib costs a cron process a few ms (config makes it one).
LEGACY_CONFIG = "/etc/runledger/runledger.toml"
LEGACY_SECTION = "runledger"

_said: set[str] = set()


def deprecated(old: str, new: str) -> None:
    """One line on stderr, once per ``old`` per process; never raises."""
    if old in _said:
        return
    _said.add(old)
    try:
        sys.stderr.write(f"runtally: {old} is deprecated (runledger was renamed), use {new}\n")
        sys.stderr.flush()
    except Exception:  # noqa: BLE001 - a closed stderr must not break a pipeline
        pass


def adopt_legacy_env(env: MutableMapping[str, str] | None = None) -> None:
    """Copy each ``RUNLEDGER_X`` to ``RUNTALLY_X`` where the latter is unset.

    Mutates ``env`` (``os.environ`` by default) so that click's ``envvar=``,
    the resolver and child processes all see the new names.
    """
    env = os.environ if env is None else env
    for old in [k for k in env if k.startswith(LEGACY_PREFIX)]:
        new = "RUNTALLY_" + old[len(LEGACY_PREFIX) :]
        if not env.get(new):
            env[new] = env[old]
            _adopted[new] = old
        deprecated(old, new)


#: RUNTALLY_X -> the RUNLEDGER_X its value was copied from (``adopt_legacy_env``).
_adopted: dict[str, str] = {}


def env_source(var: str) -> str:
    """Where the value of ``var`` came from, for a message: ``environment variable
    RUNLEDGER_DB`` when it was copied from there (a new user was told RUNTALLY_DB,
    which they had not set)."""
    return f"environment variable {_adopted.get(var, var)}"
