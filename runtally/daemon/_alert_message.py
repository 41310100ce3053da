"""What an alert says: the event (also the JSON an ``alert_command`` reads) and its text."""

from __future__ import annotations

from typing import Literal

import msgspec

__all__ = ["AlertEvent", "LastRun", "render"]


class LastRun(msgspec.Struct, frozen=True):
    """The pipeline's newest run, as an alert tells it (``duration_ms`` in milliseconds)."""

    id: int
    uid: str | None
    outcome: str | None
    started_at: str
    duration_ms: int | None = None
    error_count: int = 0
    first_error: str | None = None


class AlertEvent(msgspec.Struct, frozen=True):
    """One notification: a state change, a recovery, a reminder, or a test.

    ``kind``: ``state`` (entered a bad state), ``recovered`` (back to ok),
    ``reminder`` (still in it after ``alert_reminder_hours``) or ``test``;
    ``state``/``previous``: the pipeline's state now and before; ``at``: when
    (ISO 8601 UTC); ``url``: the run's page on the dashboard when ``web_url``
    is set.  Sent to ``alert_command`` as this JSON object on stdin.
    """

    kind: Literal["state", "recovered", "reminder", "test"]
    pipeline: str
    state: str
    previous: str | None
    detail: str
    at: str
    club: str | None = None
    last_run: LastRun | None = None
    url: str | None = None


def _duration(ms: int | None) -> str:
    if ms is None:
        return "unknown"
    s = ms / 1000
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def render(event: AlertEvent) -> tuple[str, str]:
    """``(title, body)``: plain text, one fact a line."""
    where = f"{event.pipeline} ({event.club})" if event.club else event.pipeline
    if event.kind == "recovered":
        title = f"runtally: {where} recovered (was {event.previous})"
    elif event.kind == "reminder":
        title = f"runtally: {where} is still {event.state}"
    elif event.kind == "test":
        title = f"runtally: test notification for {where}"
    else:
        title = f"runtally: {where} is {event.state}"
    lines = [f"{event.pipeline} is {event.state}: {event.detail}"]
    if event.club:
        lines.append(f"club: {event.club}")
    run = event.last_run
    if run is not None:
        lines.append(
            f"last run: #{run.id} {run.outcome or 'unknown'}, started {run.started_at}, "
            f"duration {_duration(run.duration_ms)}, {run.error_count} error(s)"
        )
        if run.first_error:
            lines.append(f"first error: {run.first_error}")
    else:
        lines.append("last run: none")
    if event.url:
        lines.append(event.url)
    return title, "\n".join(lines)
