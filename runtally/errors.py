"""The root of runtally's exceptions.

Every error runtally raises on purpose derives from ``RuntallyError``, split by
layer below it (after h11's ``_util.py``): the protocol's ``ProtocolError``
family, the configuration's ``ConfigError``, the CLI's data-layer errors.
Standard library only: the client and the protocol import this.
"""

from __future__ import annotations

__all__ = ["RuntallyError"]


class RuntallyError(Exception):
    """Base class of every exception runtally raises on purpose."""
