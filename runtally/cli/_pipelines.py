"""``runtally pipelines``, ``pause``, ``resume`` and ``alert test``.

``pipelines`` reads the states the daemon's monitor wrote (``pipeline_states``)
beside the declared pipelines of the config; ``pause``/``resume`` are admin
messages to the daemon; ``alert test`` sends a test notification from this
process through every channel configured for a pipeline and reports each.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from collections.abc import Mapping

import click
import msgspec
from rich.console import Console

from .._pipeline_config import PipelineConfig
from ..config import Settings
from ..daemon._timefmt import now_iso
from ..protocol import ErrorReply, Pause, PipelinePaused, Resume
from . import _query as q
from ._ask import DaemonUnavailable, ask
from ._common import fits, uses_settings, wide_option
from ._errors import CliError
from ._render import console
from ._state_view import next_run, pipeline_columns
from ._table import StreamTable

__all__ = [
    "PipelineState",
    "alert",
    "pause",
    "pipeline_states",
    "pipelines",
    "print_pipelines",
    "read_pipeline_states",
    "resume",
]


class PipelineState(msgspec.Struct, kw_only=True):
    """One pipeline as the monitor last judged it (``state`` None: not judged yet)."""

    pipeline: str
    declared: bool
    schedule: str | None = None
    timezone: str | None = None
    club: str | None = None
    state: str | None = None
    since: str | None = None
    detail: str | None = None
    last_run_id: int | None = None
    last_outcome: str | None = None
    last_started_at: str | None = None
    next_expected_at: str | None = None
    expected_at: str | None = None
    updated_at: str | None = None


def read_pipeline_states(
    conn: sqlite3.Connection, declared: Mapping[str, PipelineConfig]
) -> list[PipelineState]:
    """Declared and judged pipelines, by name, from a read-only connection.

    ``declared``: the ``[pipelines.<name>]`` tables of the config.  The rows of
    ``runtally pipelines --json`` and the dashboard's ``/api/pipelines``.
    """
    try:
        found = [
            dict(r)
            for r in conn.execute(
                "SELECT s.pipeline, s.state, s.since, s.detail, s.club_slug,"
                " s.last_run_id, r.outcome AS last_outcome, r.started_at AS last_started_at,"
                " s.next_expected_at, s.expected_at, s.updated_at"
                " FROM pipeline_states s LEFT JOIN runs r ON r.id = s.last_run_id"
            )
        ]
    except sqlite3.OperationalError:
        found = []  # a database from before the monitor (schema < 5)
    rows = {r["pipeline"]: r for r in found}
    out = []
    for name in sorted(set(rows) | set(declared)):
        row = rows.get(name, {})
        config = declared.get(name)
        out.append(
            PipelineState(
                pipeline=name,
                declared=config is not None,
                schedule=config.schedule if config else None,
                timezone=config.timezone if config else None,
                club=(config.club if config and config.club else None) or row.get("club_slug"),
                state=row.get("state"),
                since=row.get("since"),
                detail=row.get("detail"),
                last_run_id=row.get("last_run_id"),
                last_outcome=row.get("last_outcome"),
                last_started_at=row.get("last_started_at"),
                next_expected_at=row.get("next_expected_at"),
                expected_at=row.get("expected_at"),
                updated_at=row.get("updated_at"),
            )
        )
    return out


def pipeline_states(settings: Settings) -> list[PipelineState]:
    """Declared and judged pipelines, by name; raises DatabaseError when unreadable."""
    return q.read(settings.db, lambda conn: read_pipeline_states(conn, settings.pipelines))


@click.command()
@wide_option
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@uses_settings("db")
def pipelines(settings: Settings, wide: bool, as_json: bool) -> None:
    """Each pipeline's state, last run and next expected run, as the daemon judged them.

    On a terminal the table fits its width, one pipeline per line; --wide or
    a pipe shows every column in full.
    """
    found = pipeline_states(settings)
    if as_json:
        click.echo(json.dumps(msgspec.to_builtins(found), indent=2, ensure_ascii=False))
        return
    if not found:
        click.echo("no pipelines declared or seen yet")
        return
    out = console()
    print_pipelines(out, found, settings.pipelines, fit=fits(out, wide))


def print_pipelines(
    out: Console,
    found: list[PipelineState],
    declared: Mapping[str, PipelineConfig],
    *,
    fit: bool,
    now: float | None = None,
) -> int:
    """One pipeline a line (``fit``: to ``out``'s width); next runs as of ``now`` (epoch s)."""
    rows = [
        {
            **msgspec.structs.asdict(p),
            "next": next_run(p.next_expected_at, declared.get(p.pipeline), now),
        }
        for p in found
    ]
    return StreamTable(out, pipeline_columns(), fit=fit).print_rows([rows])


def _toggle(settings: Settings, pipeline: str, *, paused: bool) -> None:
    message = Pause(pipeline) if paused else Resume(pipeline)
    try:
        reply = ask(settings.socket, message, timeout=10.0)
    except DaemonUnavailable as exc:
        raise DaemonUnavailable(f"daemon {exc}") from None
    if isinstance(reply, ErrorReply):
        raise CliError(f"the daemon refused: {reply.error}")
    if not isinstance(reply, PipelinePaused):
        raise CliError(f"unexpected {type(reply).__name__} reply")
    click.echo(f"{reply.pipeline} {'paused' if reply.paused else 'resumed'}")


@click.command()
@click.argument("pipeline")
@uses_settings("socket")
def pause(settings: Settings, pipeline: str) -> None:
    """Pause PIPELINE: state `paused`, no alerts until `runtally resume` (admin)."""
    _toggle(settings, pipeline, paused=True)


@click.command()
@click.argument("pipeline")
@uses_settings("socket")
def resume(settings: Settings, pipeline: str) -> None:
    """Judge PIPELINE again after `runtally pause` (admin)."""
    _toggle(settings, pipeline, paused=False)


@click.group()
def alert() -> None:
    """Alert channels (settings alert_urls, alert_command)."""


@alert.command("test")
@click.option("--pipeline", "-p", default=None, help="Use this pipeline's channels and club.")
@uses_settings()
def alert_test(settings: Settings, pipeline: str | None) -> None:
    """Send a test notification through every configured channel; exit 1 if one fails."""
    from ..daemon._alert_message import AlertEvent
    from ..daemon._alerts import channels_for, send_test

    if not channels_for(settings, pipeline):
        raise CliError("no alert channels configured (alert_urls, alert_command)")
    config = settings.pipelines.get(pipeline) if pipeline else None
    event = AlertEvent(
        kind="test",
        pipeline=pipeline or "(test)",
        state="ok",
        previous=None,
        detail="a test notification from `runtally alert test`",
        at=now_iso(),
        club=config.club if config else None,
        url=settings.web_url,
    )
    failed = False
    for name, error in send_test(settings, event):
        failed = failed or error is not None
        click.echo(f"{name}: {'ok' if error is None else 'FAILED: ' + error}")
    if failed:
        sys.exit(1)
