"""The client's side of a connection, sans-IO: the window of unacked events and its replies.

After h11's ``Connection``: nothing here touches a socket, a file or a
clock.  ``send(event)`` returns the bytes to write and keeps the event in the
*window* until its reply comes; ``receive_data(bytes)`` takes what was read;
``next_reply()`` returns the next reply, already matched against the window,
or ``NEED_DATA``.

Replies come one per event, in send order (protocol v1).  ``Ack`` and
``Nack`` name the event they answer and take it out of the window; a ``Nack``
without a usable id answers the oldest one.  An ``ErrorReply`` takes nothing
out: it says the daemon could not read a frame, and what to do about that is
the caller's decision.

Events read back from the caller's spool file are sent with ``resend`` and
marked as such: ``resent_unacked`` says when all of them are acked.  Events
the caller wrote to its spool before sending them (the spool as a
write-ahead log) are sent with ``send_payload(..., spooled=True)``.
``connection_lost`` hands back only the unanswered events the spool does not
hold already.

One object serves a client for its whole life.  ``connection_lost()`` makes
it ready for the next socket; sequence numbers keep counting across
connections, so ``answered_through(n)`` stays meaningful.
"""

from __future__ import annotations

import collections
import enum
from typing import Literal

import msgspec

from ._errors import RemoteProtocolError
from ._frames import (
    _MALFORMED,
    MAX_FRAME,
    FrameDecoder,
    check_length,
    decode_server_message,
    encode_message,
    frame_payload,
)
from ._messages import Ack, Event, Nack, ServerMessage

__all__ = ["NEED_DATA", "ClientConnection", "NeedData"]


class NeedData(enum.Enum):
    """The type of ``NEED_DATA``: no complete reply is buffered yet."""

    NEED_DATA = "need-data"


#: What ``next_reply`` returns when it needs more bytes (h11's ``NEED_DATA``).
NEED_DATA: Literal[NeedData.NEED_DATA] = NeedData.NEED_DATA


class _EventId(msgspec.Struct):
    id: str


_id_decoder = msgspec.msgpack.Decoder(_EventId)


class _Entry:
    """An unacked event: its sequence number, its payload, whether it is from / in the spool."""

    __slots__ = ("payload", "resent", "seq", "spooled")

    def __init__(self, seq: int, payload: bytes, resent: bool, spooled: bool) -> None:
        self.seq = seq
        self.payload = payload
        self.resent = resent
        self.spooled = spooled


class ClientConnection:
    """A client's window of sent, unanswered events, fed with bytes (see the module doc)."""

    __slots__ = ("_decoder", "_max_frame", "_resent_unacked", "_sent", "_window")

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._max_frame = max_frame
        self._decoder = FrameDecoder(max_frame)
        self._window: collections.OrderedDict[str, _Entry] = collections.OrderedDict()
        self._sent = 0
        self._resent_unacked = 0

    @property
    def unacked(self) -> int:
        """Events sent and not answered yet."""
        return len(self._window)

    @property
    def resent_unacked(self) -> int:
        """Of those, the ones sent with ``resend`` (read back from the spool)."""
        return self._resent_unacked

    @property
    def sent(self) -> int:
        """Sequence number of the last event sent (1 for the first; counts across connections)."""
        return self._sent

    def answered_through(self, seq: int) -> bool:
        """True when every event sent up to sequence number ``seq`` has had its reply."""
        oldest = next(iter(self._window.values()), None)
        return oldest is None or oldest.seq > seq

    # -- sending ---------------------------------------------------------------------

    def send(self, event: Event) -> bytes:
        """The frame to write for ``event``, which is kept in the window until answered.

        Raises ``LocalProtocolError`` (and keeps nothing) when the encoded
        event is over MAX_FRAME bytes.
        """
        return self._remember(event.id, encode_message(event), resent=False)

    def send_payload(self, event_id: str, payload: bytes, *, spooled: bool) -> bytes:
        """Like ``send``, for an event already encoded; ``spooled``: the caller's spool holds it.

        Raises ``LocalProtocolError`` (and keeps nothing) when ``payload`` is
        empty or over MAX_FRAME bytes.
        """
        return self._remember(event_id, payload, resent=False, spooled=spooled)

    def resend(self, payloads: list[bytes]) -> bytes:
        """The frames to write for encoded events read back from the spool, in order.

        All or nothing: raises ``RemoteProtocolError`` and keeps none of them
        when a payload is not an event with a string ``id`` (a damaged file,
        or one this client did not write), ``LocalProtocolError`` when one is
        empty or over MAX_FRAME bytes.
        """
        ids: list[str] = []
        for payload in payloads:
            try:
                ids.append(_id_decoder.decode(payload).id)
            except msgspec.ValidationError as exc:
                raise RemoteProtocolError(f"spooled event has no id: {exc}", "invalid") from exc
            except _MALFORMED as exc:
                raise RemoteProtocolError(f"spooled event unreadable: {exc}", "malformed") from exc
        for payload in payloads:
            check_length(len(payload))  # before anything is kept
        return b"".join(
            self._remember(event_id, payload, resent=True)
            for event_id, payload in zip(ids, payloads, strict=True)
        )

    def _remember(
        self, event_id: str, payload: bytes, *, resent: bool, spooled: bool = False
    ) -> bytes:
        frame = frame_payload(payload)
        self._sent = seq = self._sent + 1
        window = self._window
        if event_id in window:  # sent again: the newer copy's reply counts
            old = window.pop(event_id)
            if old.resent:
                self._resent_unacked -= 1
        window[event_id] = _Entry(seq, payload, resent, spooled or resent)
        if resent:
            self._resent_unacked += 1
        return frame

    # -- receiving -------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Bytes read from the daemon (any split: replies are reassembled; copied)."""
        self._decoder.receive_data(data)

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned as replies (0: ``next_reply`` needs data)."""
        return self._decoder.buffered

    def next_reply(self) -> ServerMessage | Literal[NeedData.NEED_DATA]:
        """The next reply, or ``NEED_DATA``; an ``Ack``/``Nack`` has left the window.

        A returned ``Nack`` names the event it answered: its own id when that
        is in the window, otherwise the oldest unanswered event's (None when
        there is none).  Raises ``FrameError`` for an impossible frame header
        (the stream is lost: call ``connection_lost``), and
        ``RemoteProtocolError`` for a frame that is not a reply; that frame is
        consumed and the stream stays in step, so reading may go on.
        """
        frame = self._decoder.next_frame()
        if frame is None:
            return NEED_DATA
        reply = decode_server_message(frame)
        if type(reply) is Ack:  # nearly every reply
            self._resolve(reply.id)
        elif isinstance(reply, Nack):
            event_id = reply.id if reply.id in self._window else next(iter(self._window), None)
            if event_id is not None:
                self._resolve(event_id)
            if event_id != reply.id:
                reply = msgspec.structs.replace(reply, id=event_id)
        return reply

    def _resolve(self, event_id: str) -> None:
        entry = self._window.pop(event_id, None)
        if entry is not None and entry.resent:
            self._resent_unacked -= 1

    # -- starting over ---------------------------------------------------------------

    def connection_lost(self) -> list[bytes]:
        """Forget the connection: the unanswered events the spool does not have yet.

        Returns their payloads in send order (resent and spooled events are
        left out: the spool file still holds them), and empties the window and
        the receive buffer for the next connection.
        """
        lost = [entry.payload for entry in self._window.values() if not entry.spooled]
        self._window.clear()
        self._resent_unacked = 0
        self._decoder = FrameDecoder(self._max_frame)
        return lost
