"""``runtally metrics``: the Prometheus exposition, on stdout or into a textfile.

For node_exporter's textfile collector, run it from a systemd timer
(``systemd/runtally-metrics.timer``) with ``--textfile`` or the
``metrics_textfile`` setting: the file is replaced atomically (temp file +
rename).  The timer, not the daemon, writes it: the daemon stays a small
writer with nothing to scan on its loop, and the file keeps being refreshed
while the daemon is down, which is when ``runtally_daemon_up 0`` matters.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..config import Settings
from ._common import Seconds, uses_settings
from ._errors import CliError
from ._text import visible

__all__ = ["metrics"]


def _a_path(_ctx: click.Context, _param: click.Parameter, value: str | None) -> Path | None:
    # click.Path takes "" (and would make it "."): found from outside, `--textfile ""`
    # answered "cannot write .: Device or resource busy".
    if value is not None and not value:
        raise click.BadParameter("an empty path; give a *.prom file's path, or - for stdout")
    return None if value is None else Path(value)


@click.command()
@click.option(
    "--textfile",
    type=click.Path(dir_okay=False),
    callback=_a_path,
    default=None,
    help="Write the metrics atomically to this file (a *.prom file in node_exporter's "
    "textfile directory) instead of stdout; '-' for stdout; default: the "
    "metrics_textfile setting.",
)
@click.option(
    "--timeout",
    type=Seconds(min=0.1, max=3600),
    default=2.0,
    show_default=True,
    metavar="SECONDS",
    help="How long to wait for the daemon's status.",
)
@uses_settings("socket", "db", "spool")
def metrics(settings: Settings, textfile: Path | None, timeout: float) -> None:
    """Print runtally's Prometheus metrics, or write them to a node_exporter textfile."""
    # Here, not at the top: every other command would pay for prometheus_client.
    from ..metrics import RuntallyCollector, render, write_textfile

    collector = RuntallyCollector.for_paths(
        settings.db, settings.socket, settings.spool, timeout=timeout, pipelines=settings.pipelines
    )
    body = render(collector)
    target = textfile or settings.metrics_textfile
    if target is None or textfile == Path("-"):
        # On a terminal, label values (pipeline names: user input) must not be
        # able to clear the screen; a pipe keeps the exposition exact (bytes
        # as they are: click.echo would strip what looks like ANSI codes).
        if sys.stdout.isatty():
            click.echo(visible(body.decode()), nl=False)
        else:
            out = sys.stdout.buffer
            out.write(body)
            out.flush()
        return
    try:
        write_textfile(target, body)
    except OSError as exc:
        raise CliError(f"cannot write {target}: {exc.strerror or exc}") from None
