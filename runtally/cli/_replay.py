"""``runtally replay``: ask the running daemon to replay its spool directory now.

The daemon is the only writer, so this only asks it (an admin message:
root and the daemon's own uid by default) and prints its answer.
"""

from __future__ import annotations

import json

import click
import msgspec

from ..config import Settings
from ..protocol import ErrorReply, Replay, Replayed
from ._ask import DaemonUnavailable, ask
from ._common import Seconds, uses_settings
from ._errors import CliError
from ._render import plural

__all__ = ["replay"]


@click.command()
@click.option(
    "--timeout",
    type=Seconds(min=0.1),
    default=60.0,
    show_default=True,
    metavar="SECONDS",
    help="How long to wait for the replay to finish.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the daemon's answer as JSON.")
@uses_settings("socket")
def replay(settings: Settings, timeout: float, as_json: bool) -> None:
    """Replay the spool now (the daemon also does so every second by itself).

    Prints what this replay did, and what the daemon replayed since it
    started (its start-up replay and every pass since, this one included).
    """
    try:
        reply = ask(settings.socket, Replay(), timeout=timeout)
    except DaemonUnavailable as exc:
        raise DaemonUnavailable(f"daemon {exc}") from None
    if isinstance(reply, ErrorReply):
        raise CliError(f"the daemon refused: {reply.error}")
    if not isinstance(reply, Replayed):
        raise CliError(f"unexpected {type(reply).__name__} reply to replay")
    if as_json:
        click.echo(json.dumps(msgspec.structs.asdict(reply)))
        return
    click.echo(
        f"replayed now: {plural(reply.files, 'file')}, {plural(reply.events, 'event')}"
        f" ({reply.quarantined:,} quarantined)"
    )
    click.echo(
        f"since the daemon started: {plural(reply.total_files, 'file')},"
        f" {plural(reply.total_events, 'event')} ({reply.total_quarantined:,} quarantined)"
    )
