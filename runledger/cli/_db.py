"""``runledger db migrate|doctor|vacuum`` (placeholder: being written)."""

from __future__ import annotations

import click


@click.group()
def db() -> None:
    """Database maintenance: migrate, doctor, vacuum."""
