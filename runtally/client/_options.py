"""What a Client may be told: its limits, its backoff and its clock.

Injected rather than read from module constants so that a test can pass its
own (supervisor's ``DummyOptions`` pattern): a clock it moves forward instead
of sleeping past a backoff, a window small enough to fill.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import msgspec

__all__ = ["ClientOptions"]


class ClientOptions(msgspec.Struct, frozen=True, kw_only=True):
    """A Client's tunables; the defaults are the production values.

    ``flush_timeout``: seconds ``flush()``/``close()`` wait for acks by default.
    ``window``: unacked events kept per connection; a full window that a
    non-blocking read cannot free means the daemon is not keeping up: spool.
    ``max_out``: bytes the kernel has not taken yet; more means the daemon
    is not reading: spool.
    ``backoff_initial_s``/``backoff_max_s``: the wait before reconnecting
    after a failed attempt, doubling from the first to the second (seconds).
    ``connect_timeout_s``: the longest a connect may take (seconds).
    ``resend_max_records``/``resend_max_bytes``: an own spool bigger than
    this is handed to the daemon's replayer instead of resent on reconnect.
    ``spool_rotate_bytes``: a spool file this big while connected is retired
    (removed once its events are acked) and a fresh one started, should the
    window never empty long enough to cut it back.
    ``clock``: monotonic seconds, for the backoff and the flush deadline.
    ``default_club``: the ``club_slug`` of a run whose RunTracker names none
    (the ``default_club`` setting); None leaves it to the daemon (seed ``rondo``).
    ``daemon_user``: besides root and this process's uid, the account a
    daemon may run as; a listener running as anyone else gets no events.
    ``capture_argv``: put the (redacted) argv in each run's meta.
    """

    flush_timeout: float = 2.0
    window: int = 4096
    max_out: int = 1 << 20
    backoff_initial_s: float = 0.25
    backoff_max_s: float = 5.0
    connect_timeout_s: float = 0.05
    resend_max_records: int = 1000
    resend_max_bytes: int = 1 << 20
    spool_rotate_bytes: int = 1 << 22
    clock: Callable[[], float] = time.monotonic
    default_club: str | None = None
    daemon_user: str | None = "runtally"
    capture_argv: bool = True
