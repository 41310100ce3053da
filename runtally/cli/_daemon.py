"""``runtally daemon`` / ``runtallyd``: the daemon in the foreground."""

from __future__ import annotations

from pathlib import Path

import click

from ._common import config_option, db_option, settings_from, socket_option, spool_option


@click.command()
@socket_option
@db_option
@spool_option
@config_option
@click.option(
    "--synchronous",
    type=click.Choice(["NORMAL", "FULL"], case_sensitive=False),
    default=None,
    help="SQLite synchronous mode: NORMAL (default) or FULL (survives power loss).",
)
def daemon(
    socket: Path | None,
    db: Path | None,
    spool: Path | None,
    config_file: Path | None,
    synchronous: str | None,
) -> None:
    """Run the daemon in the foreground (systemd or `make run` keep it alive)."""
    # Imported here: `runtally runs` and friends should not pay for trio.
    from ..daemon._migrations import MigrationError
    from ..daemon._server import DaemonError, run_daemon
    from ..daemon._store import StoreBusy

    settings = settings_from(
        socket=socket,
        db=db,
        spool=spool,
        config_file=config_file,
        synchronous=synchronous.upper() if synchronous else None,
    )
    click.echo(
        f"runtallyd: db {settings.db}\n"
        f"runtallyd: socket {settings.socket}\n"
        f"runtallyd: spool {settings.spool}",
        err=True,
    )
    try:
        run_daemon(settings)
    except (DaemonError, MigrationError, StoreBusy) as exc:
        raise click.ClickException(str(exc)) from exc
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        raise click.ClickException(f"{exc.strerror or exc}{where}") from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None
