"""runtally: run tracking for cron pipelines - one daemon writes, clients never block.

Pipelines need only ``from runtally import RunTracker, track_run``.  The client
is loaded on first use of one of its names (PEP 562 ``__getattr__``), so that
``import runtally.protocol`` or the daemon loads no socket, no threads and no
client hooks.
"""

from __future__ import annotations

from runtally._compat import adopt_legacy_env
from runtally._version import __version__

TYPE_CHECKING = False  # not typing's: importing typing costs a cron process ~3 ms
if TYPE_CHECKING:
    from typing import Any

    from runtally.client import Client, RunTracker, get_client, track_run

adopt_legacy_env()  # the 0.1 variables still work, with a warning

__all__ = ["Client", "RunTracker", "__version__", "get_client", "track_run"]

_CLIENT_NAMES = frozenset({"Client", "RunTracker", "get_client", "track_run"})


def __getattr__(name: str) -> Any:
    if name in _CLIENT_NAMES:
        from runtally import client

        return getattr(client, name)
    raise AttributeError(f"module 'runtally' has no attribute {name!r}")
