"""Prometheus metrics for runtally: pipelines, runs, errors and the daemon's health.

``gather`` reads a ``Snapshot`` (database read-only, the daemon's status
reply, the spool); ``RuntallyCollector`` turns it into metric families for
``/metrics`` (``runtally web``) and ``runtally metrics [--textfile PATH]``.
"""

from ._expose import CONTENT_TYPE, RuntallyCollector, families, render, write_textfile
from ._gather import STATES, PipelineFacts, Snapshot, gather, pipeline_states

__all__ = [
    "CONTENT_TYPE",
    "STATES",
    "PipelineFacts",
    "RuntallyCollector",
    "Snapshot",
    "families",
    "gather",
    "pipeline_states",
    "render",
    "write_textfile",
]
