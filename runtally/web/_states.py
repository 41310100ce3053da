"""Each pipeline's state as the daemon's monitor last wrote it (``pipeline_states``)."""

from __future__ import annotations

import sqlite3
from typing import Any

from ..states import BAD_STATES

__all__ = ["BAD_STATES", "pipeline_states"]


def pipeline_states(conn: sqlite3.Connection) -> dict[str, dict[str, Any]]:
    """``{pipeline: {state, since, detail, next_expected_at, expected_at, bad}}``.

    Empty for a database from before the monitor (no ``pipeline_states`` table).
    """
    try:
        rows = conn.execute(
            "SELECT pipeline, state, since, detail, next_expected_at, expected_at"
            " FROM pipeline_states"
        ).fetchall()
    except sqlite3.OperationalError:
        return {}
    keys = ("state", "since", "detail", "next_expected_at", "expected_at")
    out = {}
    for row in rows:
        entry = dict(zip(keys, tuple(row)[1:], strict=True))
        entry["bad"] = entry["state"] in BAD_STATES
        out[row[0]] = entry
    return out
