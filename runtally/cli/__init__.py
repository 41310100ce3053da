"""``runtally``: the command line (click).  ``runtallyd`` is ``runtally daemon``.

Every error a user can cause ends as one line on stderr and a non-zero exit
(click.ClickException), never a traceback.
"""

from __future__ import annotations

import contextlib
import sys

import click

from .._version import __version__
from ._daemon import daemon
from ._db import db
from ._exec import exec_command
from ._metrics import metrics
from ._pipelines import alert, pause, pipelines, resume
from ._read import errors, runs, show
from ._replay import replay
from ._status import status
from ._web import web

__all__ = ["daemon_main", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="runtally")
def main() -> None:
    """Record every run, step and error of your pipelines in dashboard.sqlite."""
    _printable_streams()


main.add_command(daemon)
main.add_command(db)
main.add_command(runs)
main.add_command(show)
main.add_command(errors)
main.add_command(status)
main.add_command(replay)
main.add_command(exec_command)
main.add_command(web)
main.add_command(pipelines)
main.add_command(pause)
main.add_command(resume)
main.add_command(alert)
main.add_command(metrics)


def daemon_main() -> None:
    """Entry point of the ``runtallyd`` script."""
    _printable_streams()
    daemon(prog_name="runtallyd")


def _printable_streams() -> None:
    """A file name that is not UTF-8 (held as surrogate escapes) prints as ``\\udcff``
    instead of ending the command with a UnicodeEncodeError traceback."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            with contextlib.suppress(ValueError, OSError):
                reconfigure(errors="backslashreplace")


if __name__ == "__main__":
    main()
