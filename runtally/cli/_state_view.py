"""How pipeline states are shown: by ``runtally pipelines``, ``runtally status`` and the dashboard.

The monitor stores each state with timestamps (``since``, ``expected_at``,
``next_expected_at``) and a ``detail`` sentence without ages.  Ages are
computed here, when the state is shown, so they are never frozen at the moment
the daemon wrote the row; the next expected run is ``_schedule.next_expected``,
one figure for every reader.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from rich.text import Text

from .._pipeline_config import PipelineConfig
from ..daemon._schedule import next_expected
from ..daemon._timefmt import iso_from_ms, ms_from_iso
from ..states import BAD_STATES
from ._render import fmt_ago, fmt_local, fmt_when
from ._table import Column

__all__ = [
    "BAD_STATES",
    "next_run",
    "pipeline_columns",
    "state_detail",
    "state_problem",
    "state_style",
    "state_text",
]

_STYLE = {"ok": "green", "running": "cyan", "paused": "dim", "late": "yellow"}
#: States whose ``expected_at`` is the slot that passed without a run.
_SLOT_STATES = frozenset({"late", "missed"})


def state_style(state: str | None) -> str:
    """The rich style of a state: bold red for the bad ones, dim when not judged yet."""
    if state is None:
        return "dim"
    return "bold red" if state in BAD_STATES else _STYLE.get(state, "")


def state_text(state: str | None) -> Text:
    """A state, coloured; ``-`` when the monitor has not judged the pipeline yet."""
    return Text(state or "-", style=state_style(state))


def _ms(text: str | None) -> int | None:
    try:
        return ms_from_iso(text) if text else None
    except ValueError:
        return None


def next_run(
    stored: str | None, config: PipelineConfig | None, now: float | None = None
) -> str | None:
    """The next expected run (stored-format UTC) at ``now`` (epoch s; default: the clock).

    ``stored`` is the monitor's ``next_expected_at``; see ``_schedule.next_expected``.
    """
    now_ms = int((time.time() if now is None else now) * 1000)
    found = next_expected(config, _ms(stored), now_ms)
    return None if found is None else iso_from_ms(found)


def state_detail(
    state: str | None, detail: str | None, expected_at: str | None, now: float | None = None
) -> str:
    """The monitor's sentence, with the missed slot's time and age as of ``now``.

    ``no run since its slot (grace 5 min); slot 2026-11-30 10:13:00, 11s ago``.
    """
    text = detail or ""
    if state in _SLOT_STATES and expected_at:
        ago = fmt_ago(expected_at, now)
        text += f"; slot {fmt_local(expected_at)}" + (f", {ago}" if ago else "")
    return text


def state_problem(row: Mapping[str, Any], now: float | None = None) -> str:
    """A bad state as a line of ``status``'s problems: ``pipeline P is late: ...``."""
    detail = state_detail(row["state"], row.get("detail"), row.get("expected_at"), now)
    return f"pipeline {row['pipeline']} is {row['state']}" + (f": {detail}" if detail else "")


def _last_run(p: dict[str, Any]) -> str:
    if p.get("last_run_id") is None:
        return "-"
    return f"#{p['last_run_id']} {p.get('last_outcome') or '?'}"


def pipeline_columns() -> list[Column]:
    """Columns of ``runtally pipelines``: rows are ``PipelineState`` dicts plus ``next``."""
    return [
        Column("PIPELINE", lambda p: p["pipeline"], keep=100, flex=True, min_width=10),
        Column("CLUB", lambda p: p["club"] or "-", keep=40, max_width=12),
        Column(
            "STATE", lambda p: p["state"] or "-", keep=100, style=lambda p: state_style(p["state"])
        ),
        Column(
            "SINCE",
            lambda p: fmt_when(p["since"]),
            keep=50,
            compact=lambda p: fmt_ago(p["since"]) or "-",
        ),
        Column("LAST RUN", _last_run, keep=90),
        Column(
            "NEXT RUN",
            lambda p: fmt_when(p["next"]),
            keep=85,
            compact=lambda p: fmt_ago(p["next"]) or "-",
        ),
        Column("SCHEDULE", lambda p: p["schedule"] or "-", keep=30),
    ]
