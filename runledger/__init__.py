"""runledger: run tracking for cron pipelines - one daemon writes, clients never block.

Pipelines need only ``from runledger import RunTracker, track_run``; importing
this package loads the light client (stdlib + msgspec), never the daemon.
"""

from runledger._version import __version__
from runledger.client import Client, RunTracker, get_client, track_run

__all__ = ["Client", "RunTracker", "__version__", "get_client", "track_run"]
