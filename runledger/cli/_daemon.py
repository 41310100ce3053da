"""``runledger daemon`` (placeholder: being written)."""

from __future__ import annotations

import click


@click.command()
def daemon() -> None:
    """Run the daemon in the foreground."""
