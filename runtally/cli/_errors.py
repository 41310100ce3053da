"""The errors of the CLI's data layer (queries, status gathering, database work).

The data layer raises these; only the click layer (``_common.command_errors``)
turns them, and every other ``RuntallyError``, into one ``click.ClickException``
line with the error's exit status.
"""

from __future__ import annotations

from typing import ClassVar

from ..errors import RuntallyError

__all__ = ["CliError", "DaemonIsWriter", "DaemonUnavailable", "DatabaseError", "RunNotFound"]


class CliError(RuntallyError):
    """A command cannot do what it was asked; the message is one sentence for the operator."""

    exit_code: ClassVar[int] = 1


class DatabaseError(CliError):
    """dashboard.sqlite is missing, unreadable, not ours, or could not be changed."""


class RunNotFound(CliError):
    """No run has the id or uid given (or no run is ``latest`` yet)."""


class DaemonUnavailable(CliError):
    """No usable answer from the daemon; the message says why."""


class DaemonIsWriter(CliError):
    """A daemon runs: it is the only writer, so the CLI does not write the database."""
