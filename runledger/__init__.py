"""runledger: run tracking for cron pipelines - one daemon writes, clients never block.

Pipelines need only ``from runledger import RunTracker, track_run``; importing
this package loads the light client (stdlib + msgspec), never the daemon.
"""

from runledger.client import Client, RunTracker, get_client, track_run

__version__ = "0.1.0"  # keep in step with pyproject.toml

__all__ = ["Client", "RunTracker", "__version__", "get_client", "track_run"]
