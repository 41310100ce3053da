"""``runtally web``: the read-only browser dashboard (code in ``runtally.web``)."""

from __future__ import annotations

import click

from ..config import Settings
from ._common import setting_option, uses_settings

__all__ = ["web"]


@click.command()
@setting_option(
    "--host",
    "web_host",
    default=None,
    envvar="RUNTALLY_WEB_HOST",
    help="Address to bind [env RUNTALLY_WEB_HOST; setting web_host; default 127.0.0.1].",
)
@setting_option(
    "--port",
    "web_port",
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
@uses_settings("socket", "db", "spool")
def web(settings: Settings, *, token: str | None, insecure: bool, hash_only: bool) -> None:
    """Serve the read-only dashboard: overview, runs, errors, pipelines (JSON under /api).

    Binds 127.0.0.1:8390 unless told otherwise.  A non-loopback address needs
    --token or the web_password_hash setting, or --insecure.
    """
    try:
        from ..web import WebConfig, hash_password, is_loopback, serve
    except ImportError as exc:
        raise click.ClickException(
            f"runtally web needs the web extra ({(exc.name or '?').split('.')[0]} is not"
            " installed):"
            " pip install 'runtally[web]'"
        ) from None

    if hash_only:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
        click.echo(hash_password(password))
        return
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
        pipelines=settings.pipelines,
    )
    click.echo(
        f"runtally web: http://{settings.web_host}:{settings.web_port}/ reading {settings.db}"
        f"{' (authentication required)' if auth else ''}",
        err=True,
    )
    serve(config, settings.web_host, settings.web_port)
