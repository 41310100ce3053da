"""The pipeline-side client: RunTracker and track_run over a Unix socket, with a spool.

Imports only the standard library, msgspec, ``runtally.protocol`` and
``runtally.config``, so a pipeline that tracks itself does not load trio,
click or sqlite3.  No call in here raises into the pipeline.

Each name is loaded on first use (PEP 562): ``from runtally import RunTracker``
loads the tracker's shell only; msgspec, the protocol, the socket and the
config resolver come with the first ``RunTracker`` (``_tracker._load``), so a
cron process pays for them once, and one that never tracks not at all.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # not typing's: importing typing costs a cron process ~3 ms
if TYPE_CHECKING:
    from typing import Any

    from ._connection import Client
    from ._ids import uuid7
    from ._options import ClientOptions
    from ._registry import get_client
    from ._spool import SpoolWriter
    from ._state import State
    from ._track import RUN_STEP_NAME, Run, Step, track_run
    from ._tracker import PARENT_ENV, RunTracker

__all__ = [
    "PARENT_ENV",
    "RUN_STEP_NAME",
    "Client",
    "ClientOptions",
    "Run",
    "RunTracker",
    "SpoolWriter",
    "State",
    "Step",
    "get_client",
    "track_run",
    "uuid7",
]

#: Where each public name lives.
_HOME = {
    "PARENT_ENV": "_tracker",
    "RUN_STEP_NAME": "_track",
    "Client": "_connection",
    "ClientOptions": "_options",
    "Run": "_track",
    "RunTracker": "_tracker",
    "SpoolWriter": "_spool",
    "State": "_state",
    "Step": "_track",
    "get_client": "_registry",
    "track_run": "_track",
    "uuid7": "_ids",
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'runtally.client' has no attribute {name!r}")
    module = f"{__name__}.{home}"
    __import__(module)  # importlib.import_module, without importing importlib (~0.25 ms)
    value = getattr(sys.modules[module], name)
    globals()[name] = value  # the next lookup is a plain module attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
