"""``runtally``: the command line (click).  ``runtallyd`` is ``runtally daemon``.

Every error a user can cause ends as one line on stderr and a non-zero exit
(click.ClickException), never a traceback.

Each command's module is imported when that command runs (click's "lazily
loading subcommands" pattern), not with the group: ``runtally daemon`` is the
long-lived process, and the other commands' imports (rich, the renderers,
the web server, the health checks: ~4 MB resident, issue 17) would sit in its
memory for ever, unused.  ``runtally --help`` still lists every command.
"""

from __future__ import annotations

import contextlib
import importlib
import sys

import click

from .._version import __version__

__all__ = ["daemon_main", "main"]

#: Each command's name -> "module:attribute" of its click command, relative to this package.
_COMMANDS: dict[str, str] = {
    "daemon": "._daemon:daemon",
    "db": "._db:db",
    "runs": "._read:runs",
    "show": "._read:show",
    "errors": "._read:errors",
    "status": "._status:status",
    "replay": "._replay:replay",
    "exec": "._exec:exec_command",
    "web": "._web:web",
    "pipelines": "._pipelines:pipelines",
    "pause": "._pipelines:pause",
    "resume": "._pipelines:resume",
    "alert": "._pipelines:alert",
    "metrics": "._metrics:metrics",
}


def load_command(name: str) -> click.Command:
    """The click command called ``name`` (a key of ``_COMMANDS``), its module imported now."""
    module, attribute = _COMMANDS[name].split(":")
    command: click.Command = getattr(importlib.import_module(module, __name__), attribute)
    return command


class _LazyGroup(click.Group):
    """A group whose commands are imported by name, when one is looked up."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in _COMMANDS and cmd_name not in self.commands:
            self.add_command(load_command(cmd_name), cmd_name)
        return super().get_command(ctx, cmd_name)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="runtally")
def main() -> None:
    """Record every run, step and error of your pipelines in dashboard.sqlite."""
    _printable_streams()


def daemon_main() -> None:
    """Entry point of the ``runtallyd`` script."""
    _printable_streams()
    load_command("daemon")(prog_name="runtallyd")


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
