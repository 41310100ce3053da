"""The Client's states and the only transitions between them, as a table (h11 `_state.py`).

Theory of operation
-------------------

A Client is either talking to the daemon (``CONNECTED``, or ``RESENDING``
while its own spooled events go first) or not (``IDLE`` before the first
attempt, ``SPOOLING`` after a failure).  In every state the spool file is a
write-ahead log: each event is appended to it before it is sent, so it always
holds every unacked event (and, until it is cut back, some acked ones:
duplicates the daemon ignores).  Live, every record in it was sent on the
current connection, so whenever the window is empty it is cut back to its
header.  Whenever a connection cannot be trusted it is dropped (``BROKEN``);
its unacked events are in the spool already: the state never stays live on
a connection in doubt.  A failed attempt and a drop both schedule the next
attempt (backoff), and only an ``emit`` or a ``flush`` makes one; there is
no thread.

=========  ==========================================  =======================
state      meaning                                     trigger -> next state
=========  ==========================================  =======================
IDLE       no socket, no attempt pending: the next     CONNECTED -> CONNECTED
           emit tries to connect at once (initial      RESEND    -> RESENDING
           state, and after close() or a fork)         REFUSED   -> SPOOLING
                                                       CLOSE     -> IDLE
CONNECTED  events go to the spool, then the socket;    BROKEN    -> SPOOLING
           the window holds what is not acked yet;     CLOSE     -> IDLE
           an empty window cuts the spool back
RESENDING  connected, and the own spool's records      SPOOL_ACKED -> CONNECTED
           were sent first (then new ones, as in       BROKEN    -> SPOOLING
           CONNECTED); SPOOL_ACKED when all resent     CLOSE     -> IDLE
           ones are acked
SPOOLING   no socket; events go to the spool file      CONNECTED -> CONNECTED
           only (synced at most once a second); a      RESEND    -> RESENDING
           connect is tried once the backoff has       REFUSED   -> SPOOLING
           passed                                      CLOSE     -> IDLE
=========  ==========================================  =======================

A fork (in the child, from any state) is not a transition: the child starts
over in ``IDLE`` with a fresh Client state, and never touches the parent's
socket or spool file.

``next_state`` refuses (``KeyError``) any pair the table does not list: a
transition nobody wrote down is a bug, not a state.
"""

from __future__ import annotations

import enum

__all__ = ["LIVE", "TRANSITIONS", "State", "Trigger", "next_state"]


class State(enum.Enum):
    """Where a Client's events go now: see the table in the module doc."""

    IDLE = "idle"
    CONNECTED = "connected"
    RESENDING = "resending"
    SPOOLING = "spooling"


class Trigger(enum.Enum):
    """What happened to a Client's connection."""

    CONNECTED = "connected"  # connect succeeded, nothing of ours to resend
    RESEND = "resend"  # connect succeeded, own spool records sent first
    REFUSED = "refused"  # connect failed (absent, refused, too slow)
    SPOOL_ACKED = "spool_acked"  # every resent spool record is acked
    BROKEN = "broken"  # socket error/EOF, overflow, error reply, flush timeout
    CLOSE = "close"  # close(): flushed, socket closed, spool released


_S, _T = State, Trigger

#: state -> {trigger: next state}; the table in the module doc, as data.
TRANSITIONS: dict[State, dict[Trigger, State]] = {
    _S.IDLE: {
        _T.CONNECTED: _S.CONNECTED,
        _T.RESEND: _S.RESENDING,
        _T.REFUSED: _S.SPOOLING,
        _T.CLOSE: _S.IDLE,
    },
    _S.CONNECTED: {_T.BROKEN: _S.SPOOLING, _T.CLOSE: _S.IDLE},
    _S.RESENDING: {_T.SPOOL_ACKED: _S.CONNECTED, _T.BROKEN: _S.SPOOLING, _T.CLOSE: _S.IDLE},
    _S.SPOOLING: {
        _T.CONNECTED: _S.CONNECTED,
        _T.RESEND: _S.RESENDING,
        _T.REFUSED: _S.SPOOLING,
        _T.CLOSE: _S.IDLE,
    },
}

#: The states with a socket.
LIVE = (State.CONNECTED, State.RESENDING)


def next_state(state: State, trigger: Trigger) -> State:
    """The state after ``trigger`` in ``state``; ``KeyError`` if the table has no such move."""
    return TRANSITIONS[state][trigger]
