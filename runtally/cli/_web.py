"""``runtally web``: the read-only browser dashboard (code in ``runtally.web``)."""

from __future__ import annotations

import secrets
import stat
from pathlib import Path

import click

from ..config import Settings
from ._common import setting_option, uses_settings

__all__ = ["web"]

TOKEN_ENV = "RUNTALLY_WEB_TOKEN"


def _world_readable(db: Path) -> bool:
    """True when any local user could read ``db`` themselves (its other-read bit is set)."""
    try:
        return bool(db.stat().st_mode & stat.S_IROTH)
    except OSError:
        return False  # not there yet: it will be made 0640


def _token_of(ctx: click.Context, token: str | None, token_file: Path | None) -> str | None:
    """The token from --token-file, RUNTALLY_WEB_TOKEN or --token (with a warning for the last)."""
    if token_file is not None:
        try:
            value = token_file.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise click.ClickException(f"cannot read --token-file {token_file}: {exc}") from None
        if not value:
            raise click.ClickException(f"--token-file {token_file} is empty")
        return value
    if token and ctx.get_parameter_source("token") is click.core.ParameterSource.COMMANDLINE:
        click.echo(
            f"runtally web: warning: --token is visible to every local user (ps);"
            f" use {TOKEN_ENV} or --token-file",
            err=True,
        )
    return token or None


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
    envvar=TOKEN_ENV,
    help=f"Require this token (HTTP Basic password or Bearer) [env {TOKEN_ENV}]."
    " On the command line every local user sees it: prefer the variable or --token-file.",
)
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Read the token from this file (first line; keep it 0600).",
)
@click.option(
    "--insecure",
    "--no-auth",
    "insecure",
    is_flag=True,
    help="Serve without authentication: a non-loopback bind (behind an authenticating"
    " proxy), or loopback without the one-time token.",
)
@click.option(
    "--hash-password",
    "hash_only",
    is_flag=True,
    help="Read a password (prompt or stdin), print its web_password_hash value, exit.",
)
@uses_settings("socket", "db", "spool")
def web(
    settings: Settings,
    *,
    token: str | None,
    token_file: Path | None,
    insecure: bool,
    hash_only: bool,
) -> None:
    """Serve the read-only dashboard: overview, runs, errors, pipelines (JSON under /api).

    Binds 127.0.0.1:8390 unless told otherwise.  A non-loopback address needs
    --token or the web_password_hash setting, or --insecure.  On loopback
    without either, when the database is not world-readable, a one-time
    token is made and the URL that opens the dashboard with it printed
    (--no-auth serves without).
    """
    try:
        from ..web import WebConfig, allowed_hosts, hash_password, is_loopback, serve
        from ..web._live import LivePipelines
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
    token = _token_of(click.get_current_context(), token, token_file)
    auth = bool(token or settings.web_password_hash)
    if not is_loopback(settings.web_host) and not auth and not insecure:
        raise click.ClickException(
            f"refusing to serve {settings.web_host} (not loopback) without authentication: "
            "set web_password_hash (runtally web --hash-password), pass --token-file or "
            f"{TOKEN_ENV}, or --insecure behind an authenticating proxy"
        )
    # Serving a 0640 database to every local user would widen who may read it.
    generated = not auth and not insecure and not _world_readable(settings.db)
    if generated:
        token = secrets.token_urlsafe(24)
    config = WebConfig(
        db=settings.db,
        socket=settings.socket,
        spool=settings.spool,
        token=token,
        password_hash=settings.web_password_hash,
        pipelines=LivePipelines(settings.config_file, settings.pipelines),
        allowed_hosts=allowed_hosts(
            settings.web_host, web_url=settings.web_url, extra=settings.web_allowed_hosts
        ),
    )
    host = f"[{settings.web_host}]" if ":" in settings.web_host else settings.web_host
    url = f"http://{host}:{settings.web_port}/"
    if generated:
        note = (
            f" (one-time token: {settings.db} is not world-readable;"
            " open this URL once, or send it as Bearer; --no-auth to serve without)"
        )
        url += f"?token={token}"
    else:
        note = " (authentication required)" if auth else ""
    click.echo(f"runtally web: {url} reading {settings.db}{note}", err=True)
    serve(config, settings.web_host, settings.web_port)
