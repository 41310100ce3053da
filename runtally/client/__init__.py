"""The pipeline-side client: RunTracker and track_run over a Unix socket, with a spool.

Imports only the standard library, msgspec, ``runtally.protocol`` and
``runtally.config``, so a pipeline that tracks itself does not load trio,
click or sqlite3.  No call in here raises into the pipeline.
"""

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
