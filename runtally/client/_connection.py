"""The per-process connection to the daemon: send without waiting, spool when in doubt.

Theory of operation
-------------------

A ``Client`` has no thread of its own.  It is a small state machine driven by
the calls the pipeline makes anyway (``emit``, ``flush``, ``close``), each of
which does a bounded amount of non-blocking I/O and returns:

* ``emit`` encodes the event, writes it to a non-blocking Unix stream socket
  (what the kernel won't take waits in ``_out``), remembers it in the
  *window* of unacknowledged events, and reads whatever acks have arrived.
  It never waits for an ack.
* Whenever the connection cannot be trusted - the daemon is absent or
  refusing, the socket errs or hits EOF, ``_out`` or the window overflows, a
  flush times out - every unacknowledged event is appended to this process's
  spool file and the socket is closed.  Duplicates are harmless (the daemon
  applies by event id); a lost event is not, so when in doubt: spool.
* While spooling, new events go straight to the spool file.  Reconnecting is
  rate-limited (backoff 0.25 s doubling to 5 s), so a dead daemon costs one
  failed ``connect`` now and then, never one per event.
* On reconnect, the process's own spooled events are sent first, in order,
  then new ones; once all of them are acked the spool file is cut back to its
  header.  A spool too big to resend quickly is closed instead: that releases
  its flock and the daemon's replayer takes it within seconds.

Replies arrive in the order messages were sent, one each.  ``ack`` and
``nack`` name the event.  A ``nack`` drops the event with a warning: the
daemon keeps it in ``dead_letters`` and resending would only be refused
again.  An ``error`` reply means the daemon could not read a frame; ours are
always well-formed, so that connection is treated as broken (spool, retry).

Threads share one RLock.  A signal handler that emits while its thread is
inside a locked section does not deadlock: its event is parked and sent as
soon as the interrupted section ends (``_locked``).

States and the triggers that move between them (``_TRANSITIONS`` is the
table; ``_set_state`` refuses anything it does not list):

=========  ==========================================  =====================
state      meaning                                     trigger -> next state
=========  ==========================================  =====================
IDLE       no socket, no attempt pending: the next     CONNECTED -> CONNECTED
           emit tries to connect at once (initial      RESEND    -> RESENDING
           state, and after close() or a fork)         REFUSED   -> SPOOLING
                                                       CLOSE     -> IDLE
CONNECTED  events go to the socket; the window holds   BROKEN    -> SPOOLING
           what is not acked yet                       CLOSE     -> IDLE
RESENDING  connected, and the own spool's records      SPOOL_ACKED -> CONNECTED
           were sent first; when all are acked the     BROKEN    -> SPOOLING
           spool file is truncated                     CLOSE     -> IDLE
SPOOLING   no socket; events go to the spool file;     CONNECTED -> CONNECTED
           a connect is tried once ``_next_attempt``   RESEND    -> RESENDING
           has passed                                  REFUSED   -> SPOOLING
                                                       CLOSE     -> IDLE
=========  ==========================================  =====================

``FORK`` (in a forked child, from any state) -> IDLE: the child forgets the
parent's socket and spool file without shutting either down, and opens its
own on first use.  Never a write to the parent's.

Nothing in here raises to the caller: every public method catches, warns on
stderr, and carries on.
"""

from __future__ import annotations

import atexit
import collections
import enum
import errno
import math
import os
import select
import socket
import struct
import sys
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from runtally.config import ConfigError, Settings, default_paths, resolve
from runtally.protocol import (
    MAX_FRAME,
    Ack,
    ErrorReply,
    FrameDecoder,
    FrameError,
    Nack,
    RemoteProtocolError,
    decode_server_message,
)

from ._spool import SpoolWriter
from ._warn import reset_after_fork, warn, warn_once

__all__ = ["Client", "State", "get_client"]


class State(enum.Enum):
    IDLE = "idle"
    CONNECTED = "connected"
    RESENDING = "resending"
    SPOOLING = "spooling"


class _Trigger(enum.Enum):
    CONNECTED = "connected"  # connect succeeded, nothing of ours to resend
    RESEND = "resend"  # connect succeeded, own spool records sent first
    REFUSED = "refused"  # connect failed (absent, refused, too slow)
    SPOOL_ACKED = "spool_acked"  # every resent spool record is acked
    BROKEN = "broken"  # socket error/EOF, overflow, error reply, flush timeout
    CLOSE = "close"


IDLE, CONNECTED, RESENDING, SPOOLING = State
_T = _Trigger

_TRANSITIONS: dict[State, dict[_Trigger, State]] = {
    IDLE: {_T.CONNECTED: CONNECTED, _T.RESEND: RESENDING, _T.REFUSED: SPOOLING, _T.CLOSE: IDLE},
    CONNECTED: {_T.BROKEN: SPOOLING, _T.CLOSE: IDLE},
    RESENDING: {_T.SPOOL_ACKED: CONNECTED, _T.BROKEN: SPOOLING, _T.CLOSE: IDLE},
    SPOOLING: {
        _T.CONNECTED: CONNECTED,
        _T.RESEND: RESENDING,
        _T.REFUSED: SPOOLING,
        _T.CLOSE: IDLE,
    },
}
_LIVE = (CONNECTED, RESENDING)

#: Unacked events kept per connection; a full window that a non-blocking read
#: cannot free means the daemon is not keeping up: spool.
WINDOW = 4096
#: Bytes the kernel would not take yet; more means the daemon is not reading.
MAX_OUT = 1 << 20
#: An own spool bigger than this is handed to the replayer, not resent.
RESEND_MAX_RECORDS = 1000
RESEND_MAX_BYTES = 1 << 20
BACKOFF_INITIAL_S = 0.25
BACKOFF_MAX_S = 5.0
CONNECT_TIMEOUT_S = 0.05
RECV_SIZE = 1 << 18
#: Replies an emit handles at most (acks arrive a whole group commit at a
#: time; ~1 us each).  More than one, so the window drains faster than emits
#: fill it; a full window and flush handle every reply there is.
EMIT_REPLY_BUDGET = 32
#: And reads at most this much for them (~70 acks): copying a 256 kB burst
#: into the decoder costs an emit ~300 us by itself.
EMIT_RECV_SIZE = 4096
#: Nack warnings shown per process before they are summarised.
MAX_NACK_WARNINGS = 20

#: Connect failures that just mean "the daemon is not there right now".
_ROUTINE_CONNECT_ERRORS = frozenset(
    {errno.ENOENT, errno.ECONNREFUSED, errno.EAGAIN, errno.ETIMEDOUT, errno.EINTR}
)

_HEADER = struct.Struct(">I")
_SEND_FLAGS = getattr(socket, "MSG_NOSIGNAL", 0)  # a closed daemon must not SIGPIPE the pipeline


class _EventId(msgspec.Struct):
    id: str


_id_decoder = msgspec.msgpack.Decoder(_EventId)

_R = TypeVar("_R")


class _Entry:
    """An unacked event: its order, its encoded payload, whether the spool has it."""

    __slots__ = ("in_spool", "payload", "seq")

    def __init__(self, seq: int, payload: bytes, in_spool: bool) -> None:
        self.seq = seq
        self.payload = payload
        self.in_spool = in_spool


class Client:
    """One process's connection to the daemon, with its own spool file.

    Use ``get_client()`` rather than constructing one: it returns the
    per-process instance for a socket/spool pair.  Thread-safe (one lock);
    fork-safe (a child forgets the parent's socket and spool and opens its own).
    """

    def __init__(
        self,
        socket_path: str | os.PathLike[str],
        spool_dir: str | os.PathLike[str],
        *,
        flush_timeout: float = 2.0,
        window: int = WINDOW,
        max_out: int = MAX_OUT,
    ) -> None:
        self.socket_path = os.fspath(socket_path)
        self.spool = SpoolWriter(spool_dir)
        self.flush_timeout = flush_timeout
        self.window_size = max(1, window)
        self.max_out = max_out
        # Counters, for tests and for ``runtally status``-style introspection.
        self.connect_attempts = 0
        self.acked = 0
        self.nacked = 0
        self.spooled = 0
        self._encoder = msgspec.msgpack.Encoder()
        self._init_state()
        _all_clients.add(self)

    def _init_state(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.RLock()
        self._busy = False  # a locked section is running (see _locked)
        self._pending: collections.deque[tuple[Callable[..., Any], tuple]] = collections.deque()
        self._state = IDLE
        self._sock: socket.socket | None = None
        self._out = bytearray()
        self._decoder = FrameDecoder()
        self._window: collections.OrderedDict[str, _Entry] = collections.OrderedDict()
        self._seq = 0
        self._spooled_pending = 0  # window entries that came from the spool file
        self._got_ack = False  # this connection has been useful: reconnect promptly
        self._next_attempt = 0.0
        self._last_connect = -BACKOFF_MAX_S
        self._backoff = BACKOFF_INITIAL_S

    @property
    def state(self) -> State:
        return self._state

    @property
    def unacked(self) -> int:
        return len(self._window)

    # -- public API: never raises --------------------------------------------------

    def emit(self, event: msgspec.Struct) -> None:
        """Send one event (a protocol Struct); returns without waiting for its ack."""
        try:
            self._check_fork()
            payload = self._encoder.encode(event)
            if len(payload) > MAX_FRAME:
                warn(f"dropping a {len(payload)}-byte event: over the {MAX_FRAME}-byte limit")
                return
            event_id = event.id  # type: ignore[attr-defined]
            self._locked(self._emit, event_id, payload, park=True)
        except Exception as exc:  # noqa: BLE001 - tracking never raises into a pipeline
            warn_once(f"emit-{type(exc).__name__}", f"event not recorded: {exc!r}")

    def flush(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` s for outstanding acks; spool what is still unacked.

        Returns True when everything emitted before the call was acked, False
        when some of it had to be spooled (or dropped, if the spool failed too).
        """
        try:
            self._check_fork()
            return self._flush(self.flush_timeout if timeout is None else max(0.0, timeout))
        except Exception as exc:  # noqa: BLE001
            warn_once(f"flush-{type(exc).__name__}", f"flush failed: {exc!r}")
            return False

    def close(self, timeout: float | None = None) -> None:
        """Flush, then close the socket and release the spool file to the replayer."""
        try:
            self._check_fork()
            self.flush(timeout)
            self._locked(self._close)
        except Exception as exc:  # noqa: BLE001
            warn_once(f"close-{type(exc).__name__}", f"close failed: {exc!r}")

    def _close(self) -> None:
        self._disconnect()
        self.spool.close()
        self._set_state(_T.CLOSE)

    def _locked(self, fn: Callable[..., _R], *args: Any, park: bool = False) -> _R | None:
        """Run ``fn`` under the lock, safe against re-entry from a signal handler.

        A handler runs on a thread that may be inside this very method,
        half-way through an update.  The lock is an RLock so that thread cannot
        deadlock on itself; ``_busy`` tells the handler's call to wait its turn:
        an emit is parked and sent as soon as the interrupted call is done, any
        other call is skipped.  Parked work is checked for only after ``_busy``
        is cleared, so nothing parked can be left behind.
        """
        with self._lock:
            if self._busy:
                if park:
                    self._pending.append((fn, args))
                return None
            while True:
                self._busy = True
                try:
                    result = fn(*args)
                finally:
                    self._busy = False
                if not self._pending:
                    return result
                fn, args = self._pending.popleft()

    # -- fork ------------------------------------------------------------------------

    def _check_fork(self) -> None:
        if self._pid != os.getpid():
            self._forget_after_fork()

    def _forget_after_fork(self) -> None:
        """In a child: drop the parent's fds without shutdown or unlock, start afresh.

        Runs without the lock: another parent thread may have held it at fork
        time, and in the child it would stay held forever.
        """
        sock = self._sock
        self._sock = None
        if sock is not None:
            try:
                sock.close()  # close(2) only: shutdown() would cut the parent's connection
            except OSError:
                pass
        self.spool.forget()
        self.connect_attempts = self.acked = self.nacked = self.spooled = 0
        self._init_state()

    # -- state machine ---------------------------------------------------------------

    def _set_state(self, trigger: _Trigger) -> None:
        self._state = _TRANSITIONS[self._state][trigger]

    def _emit(self, event_id: str, payload: bytes) -> None:
        self._maybe_connect()
        if self._state in _LIVE:
            self._send_event(event_id, payload)
            if self._state is SPOOLING:
                # The connection just broke (often: the daemon dropped an idle
                # one).  If it had been useful, reconnect now and resend.
                self._maybe_connect()
            return
        self._spool(payload)

    def _maybe_connect(self) -> None:
        if self._state in _LIVE or time.monotonic() < self._next_attempt:
            return
        sock = self._connect()
        if sock is None:
            self._schedule_retry(useful=False)
            self._set_state(_T.REFUSED)
            return
        self._sock = sock
        self._out.clear()
        self._decoder = FrameDecoder()
        self._got_ack = False
        if self._resend_own_spool():
            self._set_state(_T.RESEND)
        else:
            self._set_state(_T.CONNECTED)
        self._pump()

    def _connect(self) -> socket.socket | None:
        self.connect_attempts += 1
        self._last_connect = time.monotonic()
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        except OSError as exc:
            warn_once("socket", f"cannot create a socket: {exc}")
            return None
        try:
            sock.setblocking(False)
            err = sock.connect_ex(self.socket_path)
            if err == errno.EINPROGRESS:
                _, writable, _ = select.select([], [sock], [], CONNECT_TIMEOUT_S)
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) if writable else 0
                err = err or (0 if writable else errno.ETIMEDOUT)
        except OSError as exc:
            err = exc.errno or errno.EINVAL
            detail = str(exc)
        else:
            detail = os.strerror(err) if err else ""
        if not err:
            return sock
        sock.close()
        if err not in _ROUTINE_CONNECT_ERRORS:
            # Not "daemon down" but something an operator must fix, such as
            # EACCES: this user is not in the socket's group.
            warn_once(
                f"connect-{err}",
                f"cannot connect to {self.socket_path}: {detail}; spooling events instead",
            )
        return None

    def _schedule_retry(self, *, useful: bool) -> None:
        if useful:
            # A connection that carried acks and then dropped: the daemon is
            # probably fine (idle timeout, restart).  Retry as soon as the
            # minimum spacing since the last attempt allows.
            self._backoff = BACKOFF_INITIAL_S
            self._next_attempt = self._last_connect + BACKOFF_INITIAL_S
        else:
            self._next_attempt = time.monotonic() + self._backoff
            self._backoff = min(self._backoff * 2, BACKOFF_MAX_S)

    def _resend_own_spool(self) -> bool:
        """Queue the own spool's records first; False if there is nothing to resend."""
        spool = self.spool
        if spool.records == 0:
            return False
        records = None
        if spool.records <= RESEND_MAX_RECORDS and spool.size <= RESEND_MAX_BYTES:
            records = spool.read_records()
        ids: list[str] = []
        for payload in records or ():
            try:
                ids.append(_id_decoder.decode(payload).id)
            except (msgspec.DecodeError, msgspec.ValidationError):
                records = None
                break
        if not records:
            # Too big to resend without blocking, or unreadable: the replayer
            # takes it as soon as the flock is gone.  A fresh file opens on demand.
            spool.close()
            return False
        for event_id, payload in zip(ids, records, strict=True):
            self._queue(event_id, payload, in_spool=True)
        self._spooled_pending = len(self._window)
        return self._spooled_pending > 0

    def _queue(self, event_id: str, payload: bytes, *, in_spool: bool) -> None:
        self._seq += 1
        old = self._window.pop(event_id, None)
        if old is not None and old.in_spool:
            self._spooled_pending -= 1
        self._window[event_id] = _Entry(self._seq, payload, in_spool)
        self._out += _HEADER.pack(len(payload))
        self._out += payload

    def _send_event(self, event_id: str, payload: bytes) -> None:
        if len(self._window) >= self.window_size:
            self._pump()
            if self._state not in _LIVE:
                self._spool(payload)
                return
            if len(self._window) >= self.window_size:
                self._queue(event_id, payload, in_spool=False)
                self._break("the daemon is not acknowledging (window full)", stuck=True)
                return
        self._queue(event_id, payload, in_spool=False)
        self._pump(EMIT_REPLY_BUDGET)
        if self._state in _LIVE and len(self._out) > self.max_out:
            self._break("the daemon is not reading (send buffer full)", stuck=True)

    def _pump(self, budget: float = math.inf) -> None:
        """Non-blocking: write what the kernel takes, then handle up to ``budget`` replies.

        Replies come in bursts (one ack per event of a whole group commit); an
        emit handles at most ``EMIT_REPLY_BUDGET`` of them and leaves the rest
        buffered for the next calls, so no single tracking call pays for a
        thousand acks.  Nothing is read from the socket while complete replies
        are still buffered.
        """
        sock = self._sock
        if sock is None:
            return
        if self._out:
            try:
                sent = sock.send(self._out, _SEND_FLAGS)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self._break(f"lost the daemon connection ({exc.strerror or exc})")
                return
            if sent:
                del self._out[:sent]
        budget = self._handle_replies(budget)  # what an earlier read left
        size = RECV_SIZE if budget == math.inf else EMIT_RECV_SIZE
        while budget > 0:
            try:
                data = sock.recv(size)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._break(f"lost the daemon connection ({exc.strerror or exc})")
                return
            if not data:
                self._break("the daemon closed the connection")
                return
            self._decoder.receive_data(data)
            budget = self._handle_replies(budget)
            if len(data) < size:
                return

    def _handle_replies(self, budget: float) -> float:
        """Handle up to ``budget`` buffered replies; what is left of it (0: stop reading)."""
        decoder = self._decoder
        while budget > 0:
            try:
                frame = decoder.next_frame()
            except FrameError as exc:
                self._break(f"unreadable reply from the daemon ({exc})", stuck=True)
                return 0
            if frame is None:
                return budget
            self._on_reply(frame)
            if self._state not in _LIVE:
                return 0
            budget -= 1
        return 0

    def _on_reply(self, frame: bytes) -> None:
        try:
            reply = decode_server_message(frame)
        except RemoteProtocolError:
            warn_once("bad-reply", "ignoring a reply from the daemon this client cannot read")
            return
        if isinstance(reply, Ack):
            self.acked += 1
            self._got_ack = True
            self._resolve(reply.id)
        elif isinstance(reply, Nack):
            # Invalid, never retried: the daemon keeps the raw frame in dead_letters.
            self.nacked += 1
            event_id = reply.id if reply.id in self._window else self._oldest()
            if event_id is not None:
                self._resolve(event_id)
            self._warn_refused(event_id, reply.error)
        elif isinstance(reply, ErrorReply):
            # Answers a frame the daemon could not read.  Ours are always
            # well-formed, so trust the event over the refusal: spool it with
            # everything else unacked and start over on a fresh connection.
            self._break(f"the daemon answered 'error: {reply.error}'", stuck=True)

    def _oldest(self) -> str | None:
        """The event the next reply belongs to: replies come in send order."""
        return next(iter(self._window), None)

    def _warn_refused(self, event_id: str | None, reason: str) -> None:
        if self.nacked <= MAX_NACK_WARNINGS:
            warn(f"the daemon refused event {event_id}: {reason} (kept in its dead_letters)")
        else:
            warn_once("nacks", "the daemon refused more events; further refusals not shown")

    def _resolve(self, event_id: str) -> None:
        entry = self._window.pop(event_id, None)
        if entry is None or not entry.in_spool:
            return
        self._spooled_pending -= 1
        if self._spooled_pending == 0 and self._state is RESENDING:
            self.spool.truncate()
            self._set_state(_T.SPOOL_ACKED)

    def _break(self, reason: str, *, stuck: bool = False) -> None:
        """The connection can't be trusted: spool every unacked event and drop it.

        A daemon that is simply gone is routine (that is what the spool is
        for); one that is connected but ``stuck`` deserves a line on stderr.
        """
        if stuck:
            warn_once("stuck", f"{reason}; spooling events to {self.spool.directory}")
        useful = self._got_ack
        self._disconnect()
        self._schedule_retry(useful=useful)
        self._set_state(_T.BROKEN)

    def _disconnect(self) -> None:
        unacked = [e.payload for e in self._window.values() if not e.in_spool]
        if unacked:
            self.spooled += self.spool.append_many(unacked)
        self._window.clear()
        self._spooled_pending = 0
        self._out.clear()
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    def _spool(self, payload: bytes) -> None:
        if self.spool.append(payload):
            self.spooled += 1

    def _flush(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        target = self._locked(self._flush_start)
        if target is None:
            return self.spool.records == 0
        poller = select.poll()
        while True:
            step = self._locked(self._flush_step, target, deadline, timeout)
            if step is None or isinstance(step, bool):
                return bool(step)  # None: re-entered from a signal handler, skip
            # Wait outside the lock so other threads keep emitting; short slices
            # so a state change made by one of them is noticed promptly.
            fd, mask, remaining = step
            poller.register(fd, mask)
            try:
                poller.poll(min(remaining, 0.05) * 1000)
            finally:
                try:
                    poller.unregister(fd)
                except (KeyError, ValueError, OSError):
                    pass

    def _flush_start(self) -> int | None:
        """The seq of the last event to wait for; None when nothing is in flight."""
        if self._state is SPOOLING and self.spool.records:
            # Hand the daemon the own spool now rather than at the replayer's pace.
            self._maybe_connect()
        return self._seq if self._state in _LIVE else None

    def _flush_step(self, target: int, deadline: float, timeout: float) -> bool | tuple:
        """One non-blocking round: a verdict, or (fd, poll mask, seconds left) to wait on."""
        if self._state in _LIVE:
            self._pump()
        if self._state not in _LIVE or self._sock is None:
            return False
        oldest = next(iter(self._window.values()), None)
        if oldest is None or oldest.seq > target:
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            self._break(f"no ack from the daemon within {timeout:g} s", stuck=True)
            return False
        mask = select.POLLIN | (select.POLLOUT if self._out else 0)
        return self._sock.fileno(), mask, remaining


# -- per-process registry --------------------------------------------------------------

_all_clients: weakref.WeakSet[Client] = weakref.WeakSet()
_clients: dict[tuple[str, str], Client] = {}
_registry_lock = threading.Lock()


def get_client(
    socket: str | os.PathLike[str] | None = None,
    spool: str | os.PathLike[str] | None = None,
) -> Client:
    """The per-process Client for this socket and spool (resolved settings by default)."""
    settings = _settings(socket, spool)
    key = (os.fspath(settings.socket), os.fspath(settings.spool))
    with _registry_lock:
        client = _clients.get(key)
        if client is None:
            client = Client(
                settings.socket, settings.spool, flush_timeout=settings.client_flush_timeout_s
            )
            client.default_club = settings.default_club  # RunTracker's club when given none
            _clients[key] = client
    return client


def _settings(socket: Any, spool: Any) -> Settings:
    try:
        return resolve({"socket": socket, "spool": spool})
    except (ConfigError, OSError, ValueError) as exc:
        warn_once("config", f"{exc}; using the default socket and spool paths")
        paths = default_paths()
        return Settings(
            socket=Path(socket) if socket else paths["socket"],
            db=paths["db"],
            spool=Path(spool) if spool else paths["spool"],
        )


def _after_fork_in_child() -> None:
    global _registry_lock  # noqa: PLW0603 - the parent's lock may be held forever here
    _registry_lock = threading.Lock()
    reset_after_fork()
    for client in list(_all_clients):
        client._forget_after_fork()


def _close_all_at_exit() -> None:
    """Flush and release every client: acks awaited (bounded), spool files unlocked."""
    for client in list(_all_clients):
        client.close()  # never raises


class _MultiprocessingHook:
    """Weak-referenceable key for multiprocessing's after-fork registry."""


_mp_hook = _MultiprocessingHook()
_mp_hook_registered = False


def _before_fork() -> None:
    # multiprocessing's fork-started children leave through os._exit: atexit
    # never runs there.  Its own finalizers do, so arm one in each child (its
    # registry is cleared in the child, then its after-fork hooks run).
    global _mp_hook_registered  # noqa: PLW0603
    mp_util = sys.modules.get("multiprocessing.util")
    if mp_util is None or _mp_hook_registered:
        return
    try:
        mp_util.register_after_fork(_mp_hook, _arm_multiprocessing_exit)
        _mp_hook_registered = True
    except Exception:  # noqa: BLE001 - a private-ish API: best effort, never fatal
        pass


def _arm_multiprocessing_exit(_hook: object) -> None:
    mp_util = sys.modules.get("multiprocessing.util")
    if mp_util is not None:
        mp_util.Finalize(None, _close_all_at_exit, exitpriority=0)


os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
atexit.register(_close_all_at_exit)
