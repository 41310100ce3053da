"""The states a pipeline can be in, for everyone who judges or shows them.

The daemon's monitor judges them (``daemon/_states.py``, issue 15), ``runtally
status``/``pipelines``, the dashboard and the Prometheus metrics show them.
Standard library only, so the CLI and the web pages need not import the daemon.
"""

from __future__ import annotations

from typing import Literal

__all__ = ["BAD_STATES", "STATES", "State"]

State = Literal["ok", "running", "late", "missed", "failing", "stuck", "crashed", "paused"]
#: Every state, in the order people read them (one Prometheus series each).
STATES: tuple[State, ...] = (
    "ok",
    "running",
    "late",
    "missed",
    "failing",
    "stuck",
    "crashed",
    "paused",
)
#: States that alert and make ``runtally status`` fail.
BAD_STATES: frozenset[str] = frozenset({"late", "missed", "failing", "stuck", "crashed"})
