"""The nesting limit of free-form values (``detail``, ``summary``, ``meta``), shared by all.

Both ends used to have only the interpreter's recursion limit: a ``detail``
nested ~990 deep was encoded by the client (shallow stack) and then refused by
the daemon (deeper stack), so the step stayed ``running``.  Now there is one
limit, far below either recursion limit: the daemon refuses a deeper value
(``nack``, see ``decode_client_message``) and the client cuts it with
``limit_depth`` before sending, so its events are never refused for depth.

Depth counts containers (maps and arrays): a scalar is 0 deep, ``[1]`` is 1,
``{"a": [1]}`` is 2.  Neither function recurses deeper than the limit, so a
value nested 10,000 deep (or one that contains itself) is handled.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DEPTH_MARKER", "MAX_DEPTH", "depth_exceeds", "limit_depth"]

#: The deepest a free-form value may nest (containers), with a wide margin under
#: msgspec's and Python's recursion limits (~1000 frames).
MAX_DEPTH = 32

#: What replaces a container that would nest deeper than MAX_DEPTH.
DEPTH_MARKER = f"<nested deeper than {MAX_DEPTH} levels>"

_CONTAINERS = (dict, list, tuple)


def depth_exceeds(value: Any, limit: int = MAX_DEPTH) -> bool:
    """True when ``value`` nests maps/arrays more than ``limit`` deep (stops at the limit)."""
    # On the daemon's hot path (every meta/detail/summary): plain loops, no generators,
    # and no call at all for a scalar child.
    if isinstance(value, dict):
        children: Any = value.values()
    elif isinstance(value, list | tuple):
        children = value
    else:
        return False
    if limit <= 0:
        return True
    for child in children:
        if isinstance(child, _CONTAINERS) and depth_exceeds(child, limit - 1):
            return True
    return False


def limit_depth(value: Any, limit: int = MAX_DEPTH) -> Any:
    """``value`` with every container nested deeper than ``limit`` replaced by a marker.

    The marker is the string ``"<nested deeper than 32 levels>"``; the levels
    above it are kept as they are.  Returns ``value`` itself (not a copy) when
    nothing is too deep, which is the common case.  Only dicts, lists and
    tuples are walked (other objects are leaves); tuples stay tuples.
    """
    if not depth_exceeds(value, limit):
        return value
    return _cut(value, limit)


def _cut(value: Any, room: int) -> Any:
    if not isinstance(value, _CONTAINERS):
        return value
    if room <= 0:
        return DEPTH_MARKER
    if isinstance(value, dict):
        return {k: _cut(v, room - 1) for k, v in value.items()}
    items = [_cut(v, room - 1) for v in value]
    return tuple(items) if isinstance(value, tuple) else items
