"""``runtally daemon`` / ``runtallyd``: the daemon in the foreground."""

from __future__ import annotations

import click

from ..config import Settings
from ._common import setting_option, uses_settings


@click.command()
@setting_option(
    "--synchronous",
    type=click.Choice(["NORMAL", "FULL"], case_sensitive=False),
    default=None,
    envvar="RUNTALLY_SYNCHRONOUS",
    help="SQLite synchronous mode: FULL (default: an ack survives power loss) or NORMAL"
    " (acks may be lost on power loss)"
    " [env RUNTALLY_SYNCHRONOUS].",
)
@uses_settings("socket", "db", "spool")
def daemon(settings: Settings) -> None:
    """Run the daemon in the foreground (systemd or `make run` keep it alive)."""
    # Imported here: `runtally runs` and friends should not pay for trio.
    from ..daemon._server import DaemonError, run_daemon
    from ..daemon._store import StoreBusy

    click.echo(
        f"runtallyd: db {settings.db}\n"
        f"runtallyd: socket {settings.socket}\n"
        f"runtallyd: spool {settings.spool}",
        err=True,
    )
    try:
        run_daemon(settings)
    except (DaemonError, StoreBusy) as exc:  # MigrationError is a RuntallyError
        raise click.ClickException(str(exc)) from exc
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        raise click.ClickException(f"{exc.strerror or exc}{where}") from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None
