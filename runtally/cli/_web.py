"""``runtally web``: the read-only browser dashboard (code in ``runtally.web``)."""

from __future__ import annotations

from pathlib import Path

import click

from ._common import config_option, db_option, settings_from, socket_option, spool_option

__all__ = ["web"]


@click.command()
@click.option(
    "--host",
    default=None,
    envvar="RUNTALLY_WEB_HOST",
    help="Address to bind [env RUNTALLY_WEB_HOST; setting web_host; default 127.0.0.1].",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=None,
    envvar="RUNTALLY_WEB_PORT",
    help="Port to bind [env RUNTALLY_WEB_PORT; setting web_port; default 8390].",
)
@click.option(
    "--token",
    default=None,
    envvar="RUNTALLY_WEB_TOKEN",
    help="Require this token (HTTP Basic password or Bearer) [env RUNTALLY_WEB_TOKEN].",
)
@click.option(
    "--insecure",
    is_flag=True,
    help="Allow a non-loopback bind without authentication (e.g. behind an authenticating proxy).",
)
@click.option(
    "--hash-password",
    "hash_only",
    is_flag=True,
    help="Read a password (prompt or stdin), print its web_password_hash value, exit.",
)
@socket_option
@db_option
@spool_option
@config_option
def web(
    *,
    host: str | None,
    port: int | None,
    token: str | None,
    insecure: bool,
    hash_only: bool,
    socket: Path | None,
    db: Path | None,
    spool: Path | None,
    config_file: Path | None,
) -> None:
    """Serve the read-only dashboard: overview, runs, errors, pipelines (JSON under /api).

    Binds 127.0.0.1:8390 unless told otherwise.  A non-loopback address needs
    --token or the web_password_hash setting, or --insecure.
    """
    from ..web import WebConfig, hash_password, is_loopback, serve

    if hash_only:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
        click.echo(hash_password(password))
        return
    settings = settings_from(
        socket=socket,
        db=db,
        spool=spool,
        config_file=config_file,
        web_host=host,
        web_port=port,
    )
    auth = bool(token or settings.web_password_hash)
    if not is_loopback(settings.web_host) and not auth and not insecure:
        raise click.ClickException(
            f"refusing to serve {settings.web_host} (not loopback) without authentication: "
            "set web_password_hash (runtally web --hash-password), pass --token, "
            "or --insecure behind an authenticating proxy"
        )
    config = WebConfig(
        db=settings.db,
        socket=settings.socket,
        spool=settings.spool,
        token=token,
        password_hash=settings.web_password_hash,
    )
    click.echo(
        f"runtally web: http://{settings.web_host}:{settings.web_port}/ reading {settings.db}"
        f"{' (authentication required)' if auth else ''}",
        err=True,
    )
    serve(config, settings.web_host, settings.web_port)
