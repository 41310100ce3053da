"""The connection's reply pump: write what the kernel takes, read, handle acks.

A mixin of ``Client`` (``_connection.py``), which keeps the socket, the
states and the spool; this is the part that moves bytes and answers replies
without ever blocking, and cuts the write-ahead spool back once all is acked.
"""

from __future__ import annotations

import _socket as socket  # the C module: socket.py costs a cron process ~2-3 ms of enum set-up
import math
from typing import TYPE_CHECKING

from runtally.protocol import (
    NEED_DATA,
    Ack,
    ErrorReply,
    FrameError,
    Nack,
    RemoteProtocolError,
    ServerMessage,
)

from ._state import LIVE, State, Trigger
from ._warn import warn, warn_once

if TYPE_CHECKING:
    from collections.abc import Callable

    from runtally.protocol import ClientConnection

    from ._spool import SpoolWriter

__all__ = ["EMIT_READ_EVERY", "EMIT_REPLY_BUDGET", "IDLE_READ_ALL_S", "ReplyPump"]

CONNECTED, RESENDING = State.CONNECTED, State.RESENDING

RECV_SIZE = 1 << 18
#: Replies an emit handles at most (acks arrive a whole group commit at a
#: time; ~3 us each).  Two, so the window drains twice as fast as emits fill
#: it, while no single call pays for a burst: a call's p99 is what this
#: bounds.  A full window and flush handle every reply there is.
EMIT_REPLY_BUDGET = 2
#: And reads at most this much for them (~70 acks): copying a 256 kB burst
#: into the decoder costs an emit ~300 us by itself.
EMIT_RECV_SIZE = 4096
#: An emit reads the socket only once every this many sends (every one of
#: them writes): acks come a whole group commit at a time, milliseconds
#: apart, so a read per call mostly finds nothing and costs a failed ``recv``
#: (~1 us with its exception).  The emits in between handle what the last
#: read left buffered (EMIT_REPLY_BUDGET each, no system call).  A full
#: window, flush and close read at once whatever the count.
EMIT_READ_EVERY = 8
#: Seconds without a send after which an emit reads every reply there is
#: (the acks a daemon sent before it dropped an idle connection).
IDLE_READ_ALL_S = 1.0
#: Reads at most when salvaging a broken connection's last replies (of RECV_SIZE).
SALVAGE_READS = 64
#: Nack warnings shown per process before they are summarised.
MAX_NACK_WARNINGS = 20
#: An acked spool file is cut back on an ack once it is this big or its first
#: record this old (seconds); always at flush and close.
TRUNCATE_BYTES = 64 * 1024
TRUNCATE_AGE_S = 1.0
_SEND_FLAGS = getattr(socket, "MSG_NOSIGNAL", 0)  # a closed daemon must not SIGPIPE the pipeline


class ReplyPump:
    """Non-blocking I/O and reply handling for ``Client`` (see its theory of operation)."""

    if TYPE_CHECKING:  # what Client provides
        _sock: socket.socket | None
        _out: bytearray
        _conn: ClientConnection
        _state: State
        _got_ack: bool
        _sent_at: float  # _clock() of the last send
        _unsent_in_spool: bool  # an event is in the spool file and not yet in the window
        _unread_sends: int  # sends since the socket was last read
        _recv_buf: memoryview | None  # what replies are read into (RECV_SIZE), made on first use
        _clock: Callable[[], float]
        spool: SpoolWriter
        acked: int
        nacked: int

        def _break(self, reason: str, *, stuck: bool = False) -> None: ...
        def _set_state(self, trigger: Trigger) -> None: ...

    def _pump(self, budget: float = math.inf) -> None:
        """Non-blocking: write what the kernel takes, then handle up to ``budget`` replies.

        Replies come in bursts (one ack per event of a whole group commit); an
        emit handles at most ``EMIT_REPLY_BUDGET`` of them and leaves the rest
        buffered for the next calls, so no single tracking call pays for a
        thousand acks.  Nothing is read from the socket while complete replies
        are still buffered.
        """
        self._unread_sends = 0
        sock = self._sock
        if sock is None or not self._write_out():
            return
        budget = self._handle_replies(budget)  # what an earlier read left
        size = RECV_SIZE if budget == math.inf else EMIT_RECV_SIZE
        buf = self._receive_buffer()
        while budget > 0:
            try:
                received = sock.recv_into(buf, size)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._break(f"lost the daemon connection ({exc.strerror or exc})")
                return
            if not received:
                self._break("the daemon closed the connection")
                return
            self._conn.receive_data(buf[:received])
            budget = self._handle_replies(budget)
            if received < size:
                return

    def _receive_buffer(self) -> memoryview:
        """What replies are read into (RECV_SIZE), kept for the connection's life:
        ``recv(256 kB)`` would make (mmap) and free (munmap) 256 kB at every call,
        ~11 us even when nothing is there to read."""
        if self._recv_buf is None:
            self._recv_buf = memoryview(bytearray(RECV_SIZE))
        return self._recv_buf

    def _salvage_replies(self) -> None:
        """Before a connection is given up: handle every reply the daemon sent before it went.

        An emit handles only a few replies (EMIT_REPLY_BUDGET), so when the
        daemon drops a connection that went idle (``idle_timeout_s``) or
        restarts, its last acks are often still unread in the socket; without
        them every event they answer would stay in the spool and be resent.
        Non-blocking, and bounded (SALVAGE_READS reads).
        """
        sock = self._sock
        if sock is None or self._state not in LIVE:
            return
        buf = self._receive_buffer()
        for _ in range(SALVAGE_READS):
            try:
                received = sock.recv_into(buf, RECV_SIZE)
            except OSError:  # nothing more (EAGAIN), or the stream is gone
                break
            if not received:
                break
            self._conn.receive_data(buf[:received])
        self._handle_replies(math.inf)

    def _replies_before_append(self) -> None:
        """An emit's replies, handled before its event is written ahead (the
        window is not empty): read every EMIT_READ_EVERY sends, and in between
        handle up to EMIT_REPLY_BUDGET of the replies the last read left.

        Before the append, not after the send: acks that empty the window
        then let ``_settle`` cut the spool file back (after the send the
        window holds the new event).  After an idle spell (IDLE_READ_ALL_S
        without a send) every reply there is: the acks a daemon sent before
        it dropped the idle connection, which unread would be resent with it.
        """
        if self._clock() - self._sent_at >= IDLE_READ_ALL_S:
            self._pump()
        elif self._unread_sends >= EMIT_READ_EVERY:
            self._pump(EMIT_REPLY_BUDGET)
        elif self._conn.buffered:  # what the last read left: a few replies, no read
            self._handle_replies(EMIT_REPLY_BUDGET)

    def _send_frame(self, frame: bytes) -> None:
        """An emit's send: write ``frame``; what the kernel won't take waits in ``_out``.

        The event itself is never held back (the daemon must see a run start
        when it starts); only the reading of replies, which just trims the
        window and the spool, waits for a few more sends
        (``_replies_before_append``).
        """
        self._sent_at = self._clock()
        sock = self._sock
        if self._out or sock is None:
            self._out += frame  # behind what is waiting already: keep the order
            if not self._write_out():
                return
        else:
            # The usual case: nothing waiting, so the frame itself goes, not a copy in _out.
            try:
                sent = sock.send(frame, _SEND_FLAGS)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self._break(f"lost the daemon connection ({exc.strerror or exc})")
                return
            if sent < len(frame):
                self._out += frame[sent:]
        self._unread_sends += 1

    def _write_out(self) -> bool:
        """Non-blocking: write what the kernel takes of ``_out``; False if the connection broke."""
        sock = self._sock
        if sock is None:
            return False
        if self._out:
            try:
                sent = sock.send(self._out, _SEND_FLAGS)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self._break(f"lost the daemon connection ({exc.strerror or exc})")
                return False
            if sent:
                del self._out[:sent]
        return True

    def _handle_replies(self, budget: float) -> float:
        """Handle up to ``budget`` buffered replies; what is left of it (0: stop reading)."""
        conn = self._conn
        while budget > 0:
            try:
                reply = conn.next_reply()
            except FrameError as exc:
                self._break(f"unreadable reply from the daemon ({exc})", stuck=True)
                return 0
            except RemoteProtocolError:
                warn_once("bad-reply", "ignoring a reply from the daemon this client cannot read")
            else:
                if reply is NEED_DATA:
                    return budget
                if type(reply) is Ack and self._state is CONNECTED:
                    # Nearly every reply: _on_reply's Ack case, without the match.
                    self.acked += 1
                    self._got_ack = True
                    if not conn.unacked:
                        self._settle(lazy=True)
                else:
                    self._on_reply(reply)
                    if self._state not in LIVE:
                        return 0
            budget -= 1
        return 0

    def _on_reply(self, reply: ServerMessage) -> None:
        match reply:
            case Ack():
                self.acked += 1
                self._got_ack = True
            case Nack(id=event_id, error=error):
                # Invalid, never retried: the daemon keeps the raw frame in dead_letters.
                self.nacked += 1
                self._warn_refused(event_id, error)
            case ErrorReply(error=error):
                # Answers a frame the daemon could not read.  Ours are always
                # well-formed, so trust the event over the refusal: spool it with
                # everything else unacked and start over on a fresh connection.
                self._break(f"the daemon answered 'error: {error}'", stuck=True)
                return
            case _:
                return  # a reply to nothing this client sends
        if self._state is RESENDING and self._conn.resent_unacked == 0:
            self._set_state(Trigger.SPOOL_ACKED)
        if not self._conn.unacked:
            self._settle(lazy=True)

    def _truncate_due(self) -> bool:
        spool = self.spool
        return spool.records > 0 and (
            spool.size > TRUNCATE_BYTES or self._clock() - spool.first_record_at >= TRUNCATE_AGE_S
        )

    def _settle(self, *, lazy: bool = False) -> None:
        """Connected with nothing unacked: every record in the spool is acked, cut it back.

        Live, every record in the file was sent on this connection (resent at
        connect, or written ahead of its send), so an empty window means all
        of them are acked, and so are the events of every retired file.
        ``lazy`` (on an ack): only once the file is over TRUNCATE_BYTES or its
        first record is TRUNCATE_AGE_S old - an ``ftruncate`` per call would
        cost more than the write itself, and acked records left in the file
        are only duplicates to a replay.  Flush and close cut it back always.
        """
        if self._state not in LIVE or self._conn.unacked or self._unsent_in_spool:
            return  # (the last: an event written ahead is not in the window yet)
        spool = self.spool
        if spool.records and (not lazy or self._truncate_due()):
            spool.truncate()
        if spool.retired:
            spool.drop_retired(self._conn.answered_through)

    def _warn_refused(self, event_id: str | None, reason: str) -> None:
        if self.nacked <= MAX_NACK_WARNINGS:
            warn(f"the daemon refused event {event_id}: {reason} (kept in its dead_letters)")
        else:
            warn_once("nacks", "the daemon refused more events; further refusals not shown")
