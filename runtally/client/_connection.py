"""The per-process connection to the daemon: send without waiting, spool when in doubt.

Theory of operation
-------------------

A ``Client`` has no thread of its own.  It is a small state machine
(``_state.py`` has the table) driven by the calls the pipeline makes anyway
(``emit``, ``flush``, ``close``), each of which does a bounded amount of
non-blocking I/O and returns.  The protocol's sans-IO ``ClientConnection``
keeps the window of unacked events and matches the replies; this module owns
the socket, the states, the backoff, the spool decisions and the flush (the
non-blocking reads, writes and reply handling are ``_pump.ReplyPump``):

* ``emit`` appends the event to this process's spool file (a write-ahead
  log: ``_spool.py``), then writes it to a non-blocking Unix stream socket
  (what the kernel won't take waits in ``_out``), and every few emits
  (``_pump.EMIT_READ_EVERY``) handles whatever replies have arrived.  It
  never waits for an ack.  Whenever every event sent is
  acked (the window is empty), the spool file is cut back to its header.  So
  the spool always holds every unacked event: a SIGKILL of the pipeline
  loses nothing whose call returned, because the daemon replays the file.
* Whenever the connection cannot be trusted - the daemon is absent or
  refusing, the socket errs or hits EOF, ``_out`` or the window overflows, a
  flush times out - the socket is closed; its unacknowledged events are in
  the spool already (any the spool could not take are tried again, then
  counted as lost: ``_lost.py``).  Duplicates are harmless (the daemon
  applies by event id); a lost event is not, so when in doubt: spool.
* While spooling, new events go to the spool file only; it is synced at
  most once a second, and at flush and close.  Reconnecting is
  rate-limited (backoff 0.25 s doubling to 5 s), so a dead daemon costs one
  failed ``connect`` now and then, never one per event.
* On reconnect, the process's own spooled events are sent first, in order,
  then new ones; once all of them are acked the spool file is cut back to its
  header.  A spool too big to resend quickly is closed instead: that releases
  its flock and the daemon's replayer takes it within seconds.
* A ``nack`` drops the event with a warning (the daemon keeps it in
  ``dead_letters``); an ``error`` reply breaks the connection (ours are
  always well-formed, so the event is spooled and retried).

Threads share one lock.  A signal handler that emits while its thread is
inside a locked section does not deadlock: its event is parked and sent as
soon as the interrupted section ends (``_guard.py``).  A forked child forgets
the parent's socket and spool file (``_process.py`` and ``_check_fork``).

Nothing in here raises to the caller: every public method catches, warns on
stderr, and carries on.
"""

from __future__ import annotations

import _socket as socket  # the C module: socket.py costs a cron process ~2-3 ms of enum set-up
import os
from typing import Any

import msgspec

from runtally.protocol import (
    ClientConnection,
    Event,
    LocalProtocolError,
    ProtocolError,
    encode_message,
)

from . import _coerce
from ._backoff import Backoff
from ._guard import SignalSafeLock
from ._lost import LostEvents
from ._options import ClientOptions
from ._process import adopt, point_at_devnull
from ._pump import ReplyPump
from ._spool import SpoolWriter
from ._state import LIVE, State, Trigger, next_state
from ._unix import connect_nowait, trusted_uids, untrusted_daemon, wait_ready
from ._warn import warn, warn_once

__all__ = ["Client"]

IDLE, CONNECTED, RESENDING, SPOOLING = State

#: Longest single wait of a flush, so a state change by another thread is seen.
FLUSH_POLL_S = 0.05


class Client(ReplyPump):
    """One process's connection to the daemon, with its own spool file.

    Use ``get_client()`` rather than constructing one: it returns the
    per-process instance for a socket/spool pair.  ``options`` default to
    ``ClientOptions()``; keywords override single fields of it
    (``flush_timeout=0.5``).  Thread-safe (one lock); fork-safe (a child
    forgets the parent's socket and spool and opens its own).
    """

    def __init__(
        self,
        socket_path: str | os.PathLike[str],
        spool_dir: str | os.PathLike[str],
        options: ClientOptions | None = None,
        **overrides: Any,
    ) -> None:
        options = options or ClientOptions()
        self.options = msgspec.structs.replace(options, **overrides) if overrides else options
        self.socket_path = os.fspath(socket_path)
        self._clock = self.options.clock
        self._trusted = trusted_uids(self.options.daemon_user)
        self.spool = SpoolWriter(spool_dir, self._clock, self._trusted)
        self._window_size = max(1, self.options.window)
        # Counters, for tests and for ``runtally status``-style introspection.
        self.connect_attempts = 0
        self.acked = 0
        self.nacked = 0
        self.spooled = 0
        self.lost = LostEvents()
        self._init_state()
        adopt(self)

    def _init_state(self, *, new_guard: bool = True) -> None:
        self._pid = os.getpid()
        if new_guard:
            self._guard = SignalSafeLock()
        self._detached = False  # see _forget_after_fork
        self._state = IDLE
        self._sock: socket.socket | None = None
        self._out = bytearray()
        self._conn = ClientConnection()
        self._got_ack = False  # this connection has been useful: reconnect promptly
        self._unsent_in_spool = False  # see _deliver
        self._sent_at = 0.0  # _clock() of the last send (see _deliver)
        self._unread_sends = 0
        self._recv_buf = None
        options = self.options
        self._backoff = Backoff(options.backoff_initial_s, options.backoff_max_s, self._clock)

    @property
    def state(self) -> State:
        """Where events go now (see ``_state.py``)."""
        return self._state

    @property
    def unacked(self) -> int:
        """Events sent on the current connection and not answered yet."""
        return self._conn.unacked

    # -- public API: never raises --------------------------------------------------

    def emit(self, event: Event) -> None:
        """Send one event; returns without waiting for its ack (spools it when in doubt)."""
        try:
            if self._pid != os.getpid():  # _check_fork, inline: once per event
                self._forget_after_fork()
            self._guard.run(self._emit, event, park=True, on_park=self._write_ahead_parked)
        except Exception as exc:  # noqa: BLE001 - tracking never raises into a pipeline
            warn_once(f"emit-{type(exc).__name__}", f"event not recorded: {exc!r}")

    def flush(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` s for outstanding acks; spool what is still unacked.

        Returns True when everything emitted before the call was acked, False
        when some of it had to be spooled (or dropped, if the spool failed too).
        """
        try:
            self._check_fork()
            limit = self.options.flush_timeout if timeout is None else max(0.0, timeout)
            return self._flush(limit)
        except Exception as exc:  # noqa: BLE001
            warn_once(f"flush-{type(exc).__name__}", f"flush failed: {exc!r}")
            return False

    def close(self, timeout: float | None = None) -> None:
        """Flush, then close the socket and release the spool file to the replayer."""
        try:
            self._check_fork()
            self.flush(timeout)
            self._guard.run(self._close)
        except Exception as exc:  # noqa: BLE001
            warn_once(f"close-{type(exc).__name__}", f"close failed: {exc!r}")

    def release_if_idle(self) -> None:
        """Close the socket and the spool file if nothing is unacked or spooled (never waits).

        The Client stays usable: its next event reconnects (``_process.release_idle``).
        """
        try:
            self._check_fork()
            self._guard.run(self._release_if_idle)
        except Exception as exc:  # noqa: BLE001
            warn_once(f"close-{type(exc).__name__}", f"close failed: {exc!r}")

    def _release_if_idle(self) -> None:
        if self._state in LIVE and not self._conn.unacked and not self.spool.records:
            self._close()

    def _close(self) -> None:
        if self.lost:
            self._report_lost()
        self._settle()
        self._disconnect()
        self.spool.close()
        self.lost.warn_unreported()
        self._set_state(Trigger.CLOSE)

    # -- fork ------------------------------------------------------------------------

    def _check_fork(self) -> None:
        if self._pid != os.getpid():
            self._forget_after_fork()

    def _forget_after_fork(self) -> None:
        """In a child: drop the parent's fds without shutdown or unlock, start afresh.

        Runs without the lock: another parent thread may have held it at fork
        time, and in the child it would stay held forever.  But when the fork
        came from a signal handler that interrupted one of our calls on this
        thread, that call resumes in the child after the handler: a reset
        under it leaves it half in the old state and half in the new (the
        child's later events were lost).  So it carries on in the old state,
        with the parent's socket and files pointed at /dev/null, and the
        reset runs as soon as it is done, before anything a handler parked.
        """
        guard = self._guard
        if guard.running_here():
            if not self._detached:
                self._detached = True
                sock = self._sock
                self.spool.detach()
                if sock is not None:
                    point_at_devnull([sock.fileno()])
                guard.first_when_done(self._reset_after_fork)
            return
        self._reset_after_fork(new_guard=True)

    def _reset_after_fork(self, *, new_guard: bool = False) -> None:
        sock = self._sock
        self._sock = None
        if sock is not None:
            try:
                sock.close()  # close(2) only: shutdown() would cut the parent's connection
            except OSError:
                pass
        self.spool.forget()
        self.connect_attempts = self.acked = self.nacked = self.spooled = 0
        self.lost = LostEvents()
        self._init_state(new_guard=new_guard)

    # -- connecting ------------------------------------------------------------------

    def _set_state(self, trigger: Trigger) -> None:
        self._state = next_state(self._state, trigger)

    def _write_ahead_parked(self, event: Event) -> None:
        """A signal handler's event, parked until the call it interrupted ends: its
        record goes in the spool file now, so a handler that exits (``os._exit``)
        does not take the event with it.  When the parked emit runs, the event is
        written (and sent) again: a duplicate the daemon applies once, by id."""
        self.spool.append_unrecorded(_encode(event))

    def _emit(self, event: Event) -> None:
        try:
            payload = _encode(event)
        except LocalProtocolError as exc:
            warn(f"dropping an event: {exc} (over the size limit)")
            return
        kept = self._deliver(event.id, payload)
        if self.lost and kept:
            self._report_lost()  # the spool or the daemon takes events again

    def _deliver(self, event_id: str, payload: bytes, *, marker: bool = False) -> bool:
        """Write ahead to the spool, then send if connected; False if the event is lost.

        A ``marker`` (a ``dropped`` event) that the spool refuses is not one
        more event dropped: ``LostEvents`` takes its count back.
        """
        if self._state not in LIVE:
            self._maybe_connect()
        if self._state in LIVE and self._conn.unacked:
            # Replies before the append: acks that empty the window let the
            # file be cut back before this event goes in (after its send the
            # window always holds it).
            self._replies_before_append()
        in_spool = self.spool.append(payload)
        if self._state in LIVE:
            # Until send_payload puts it in the window, the file holds a record
            # the window does not: acks that empty the window meanwhile (a full
            # window drained) must not cut the file back (``_settle``).
            self._unsent_in_spool = True
            try:
                self._send_payload(event_id, payload, in_spool)
            finally:
                self._unsent_in_spool = False
            if self._state is SPOOLING:
                # The connection just broke (often: the daemon dropped an
                # idle one).  If it had been useful, reconnect and resend.
                self._maybe_connect()
            return True
        if in_spool:
            self.spooled += 1
            self.spool.sync_if_due()
            return True
        if marker:
            self.spool.dropped -= 1
        self.lost.add([payload])
        return False

    def _report_lost(self) -> None:
        for marker in self.lost.take_markers():
            if self._deliver(marker.id, encode_message(marker), marker=True):
                self.lost.warn_reported(marker)

    def _maybe_connect(self) -> None:
        if self._state in LIVE or self._detached or not self._backoff.ready():
            return  # (detached: a forked child's resumed call; see _forget_after_fork)
        self.connect_attempts += 1
        self._backoff.attempting()
        sock = connect_nowait(self.socket_path, self.options.connect_timeout_s)
        if sock is not None and (why := untrusted_daemon(sock, self.socket_path, self._trusted)):
            sock.close()  # nothing was sent: events stay ours, in the spool
            sock = None
            warn_once("untrusted", f"not sending events to {self.socket_path}: {why}; spooling")
        if sock is None:
            self._backoff.retry_later(useful=False)
            self._set_state(Trigger.REFUSED)
            return
        self._sock = sock
        self._out.clear()
        self._got_ack = False
        self._set_state(Trigger.RESEND if self._resend_own_spool() else Trigger.CONNECTED)
        self._pump()

    def _resend_own_spool(self) -> bool:
        """Queue the own spool's records first; False if there is nothing to resend."""
        spool, options = self.spool, self.options
        if spool.records == 0:
            return False
        records = None
        if spool.records <= options.resend_max_records and spool.size <= options.resend_max_bytes:
            records = spool.read_records()
        if records:
            try:
                self._out += self._conn.resend(records)
            except ProtocolError:
                records = None
        if not records:
            # Too big to resend without blocking, or unreadable: the replayer
            # takes it as soon as the flock is gone.  A fresh file opens on demand.
            spool.close()
            return False
        return True

    # -- sending and replies ---------------------------------------------------------

    def _send_payload(self, event_id: str, payload: bytes, in_spool: bool) -> None:
        conn = self._conn
        if conn.unacked >= self._window_size:
            self._pump()
            if self._state not in LIVE:
                self._keep([] if in_spool else [payload])
                return
            if conn.unacked >= self._window_size:
                self._out += conn.send_payload(event_id, payload, spooled=in_spool)
                self._break("the daemon is not acknowledging (window full)", stuck=True)
                return
        self._send_frame(conn.send_payload(event_id, payload, spooled=in_spool))
        if self._state in LIVE and len(self._out) > self.options.max_out:
            self._break("the daemon is not reading (send buffer full)", stuck=True)
        elif self.spool.size > self.options.spool_rotate_bytes:
            # The window never emptied long enough to cut the file back.
            self.spool.retire(conn.sent)

    # -- giving up on a connection ---------------------------------------------------

    def _break(self, reason: str, *, stuck: bool = False) -> None:
        """The connection can't be trusted: spool every unacked event and drop it.

        A daemon that is simply gone is routine (that is what the spool is
        for); one that is connected but ``stuck`` deserves a line on stderr.
        """
        if stuck:
            warn_once("stuck", f"{reason}; spooling events to {self.spool.directory}")
        else:
            self._salvage_replies()  # the acks it sent before it went are acks
            if self._sock is None:
                return  # a reply in there broke it already (an error reply)
        useful = self._got_ack
        self._disconnect()
        self._backoff.retry_later(useful=useful)
        self._set_state(Trigger.BROKEN)

    def _disconnect(self) -> None:
        conn = self._conn
        in_spool = conn.unacked - conn.resent_unacked  # less those not written ahead, below
        unacked = conn.connection_lost()
        self.spooled += in_spool - len(unacked)
        self._keep(unacked)
        # Retired files hold events that may be unacked: the replayer takes them.
        self.spool.release_retired()
        self._out.clear()
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    def _keep(self, payloads: list[bytes]) -> None:
        """Spool events the spool does not hold yet; count the ones it won't take as lost."""
        if not payloads:
            return
        kept = self.spool.append_many(payloads)
        self.spooled += kept
        if not kept:
            self.lost.add(payloads)

    # -- flush -----------------------------------------------------------------------

    def _flush(self, timeout: float) -> bool:
        deadline = self._clock() + timeout
        target = self._guard.run(self._flush_start)
        if target is None:
            self._guard.run(self.spool.sync)
            return self.spool.records == 0
        while True:
            step = self._guard.run(self._flush_step, target, deadline, timeout)
            if step is None or isinstance(step, bool):
                if not step:
                    self._guard.run(self.spool.sync)  # what is left must survive a power loss
                return bool(step)  # None: re-entered from a signal handler, skip
            # Wait outside the lock so other threads keep emitting; short slices
            # so a state change made by one of them is noticed promptly.
            fd, want_write, remaining = step
            wait_ready(fd, want_write, min(remaining, FLUSH_POLL_S))

    def _flush_start(self) -> int | None:
        """The sequence number of the last event to wait for; None when nothing is in flight."""
        if self._state is SPOOLING and self.spool.records:
            # Hand the daemon the own spool now rather than at the replayer's pace.
            self._maybe_connect()
        if self.lost:
            self.spool.retry_now()  # a last attempt at flush and close, not on the timer
            self._report_lost()
        return self._conn.sent if self._state in LIVE else None

    def _flush_step(self, target: int, deadline: float, timeout: float) -> bool | tuple:
        """One non-blocking round: a verdict, or (fd, want to write, seconds left) to wait on."""
        if self._state in LIVE:
            self._pump()
        if self._state not in LIVE or self._sock is None:
            return False
        if self._conn.answered_through(target):
            self._settle()
            return True
        remaining = deadline - self._clock()
        if remaining <= 0:
            self._break(f"no ack from the daemon within {timeout:g} s", stuck=True)
            return False
        return self._sock.fileno(), bool(self._out), remaining


def _encode(event: Event) -> bytes:
    """The event's payload; text UTF-8 cannot take is repaired rather than the event dropped.

    Raises ``LocalProtocolError`` when it is empty or over MAX_FRAME bytes.
    """
    try:
        return encode_message(event)
    except UnicodeEncodeError:
        # One odd string (a lone surrogate from os.fsdecode) must not cost the
        # event: the one sanitiser, over every key and string, at any depth.
        return encode_message(_coerce.clean(msgspec.to_builtins(event)))
