"""Sans-IO framing: 4-byte big-endian length, then that many bytes of MessagePack.

Nothing here touches a socket.  ``FrameDecoder`` is fed bytes with
``receive_data`` and hands back complete frames; it checks a frame's length as
soon as its 4-byte header is buffered, so a hostile length never makes anyone
allocate it.  ``decode_client_message`` turns one frame into a typed message
or a ``Refusal`` that says what to answer and whether to hang up.
"""

from __future__ import annotations

import functools
import struct
from typing import Literal

import msgspec

from ._errors import FrameError, LocalProtocolError, RemoteProtocolError
from ._limits import MAX_DEPTH, depth_exceeds
from ._messages import (
    CONTROL_TYPES,
    EVENT_TYPES,
    MAX_UID,
    ClientMessage,
    RunEnd,
    RunStart,
    ServerMessage,
    StepEnd,
)

__all__ = [
    "MAX_FRAME",
    "FrameDecoder",
    "Refusal",
    "decode_client_message",
    "decode_client_messages",
    "decode_server_message",
    "encode_frame",
    "encode_message",
    "frame_payload",
]

#: The largest frame body (and spool record payload) in bytes: 1 MiB.
MAX_FRAME = 1 << 20
_HEADER = struct.Struct(">I")
_encoder = msgspec.msgpack.Encoder()
_any_decoder = msgspec.msgpack.Decoder()


# Built on first use: a typed decoder costs ~1-3 ms to build (msgspec walks
# every Struct's annotations), and a pipeline's client needs only the server's.
@functools.cache
def _client_decoder() -> msgspec.msgpack.Decoder[ClientMessage]:
    return msgspec.msgpack.Decoder(ClientMessage)


@functools.cache
def _server_decoder() -> msgspec.msgpack.Decoder[ServerMessage]:
    return msgspec.msgpack.Decoder(ServerMessage)


# What decoding garbage can raise: msgspec raises UnicodeDecodeError (not
# DecodeError) for invalid UTF-8 in a str, and RecursionError for nesting deeper
# than the interpreter's recursion limit (a few kB of 0x91 bytes suffice).
_MALFORMED = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)


def check_length(
    length: int,
    max_frame: int = MAX_FRAME,
    error: type[LocalProtocolError] | type[FrameError] = LocalProtocolError,
) -> None:
    """Raise ``error`` unless ``1 <= length <= max_frame``.

    Encoders pass nothing (our own payload: ``LocalProtocolError``); the
    decoder passes ``FrameError`` (the peer's header).
    """
    if not 1 <= length <= max_frame:
        raise error(f"frame length {length} outside 1..{max_frame}")


def encode_message(message: msgspec.Struct | dict) -> bytes:
    """One message's MessagePack body (a frame's payload, a spool record's payload).

    Raises ``LocalProtocolError`` when it is over MAX_FRAME bytes.
    """
    body = _encoder.encode(message)
    if not 1 <= len(body) <= MAX_FRAME:  # check_length's test, inline: once per event
        check_length(len(body))
    return body


def frame_payload(payload: bytes) -> bytes:
    """An already encoded message as one frame: its 4-byte length, then itself.

    Raises ``LocalProtocolError`` unless ``1 <= len(payload) <= MAX_FRAME``.
    """
    size = len(payload)
    if not 1 <= size <= MAX_FRAME:
        check_length(size)
    return _HEADER.pack(size) + payload


def encode_frame(message: msgspec.Struct | dict) -> bytes:
    """One message as one frame (raises ``LocalProtocolError`` when too big)."""
    body = encode_message(message)
    return _HEADER.pack(len(body)) + body


class FrameDecoder:
    """Incremental frame splitter: ``receive_data(bytes)``, then ``next_frame()``.

    ``next_frame`` returns a complete frame body, ``None`` when more bytes are
    needed, or raises FrameError for an impossible length.  After a FrameError
    the stream is out of sync and the decoder must be discarded.
    """

    __slots__ = ("_buf", "_max_frame", "_pos")

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._max_frame = max_frame

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames."""
        return len(self._buf) - self._pos

    def head(self, n: int = 16) -> bytes:
        """The first bytes not yet returned (after a FrameError: the bad header)."""
        return bytes(self._buf[self._pos : self._pos + n])

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes read from the peer (copied: ``data`` may be reused after)."""
        self._buf += data

    def next_frame(self) -> bytes | None:
        """The next complete frame body; None for more bytes; FrameError for a bad length."""
        buf, pos = self._buf, self._pos
        size = len(buf)
        if size - pos < 4:
            self._compact()
            return None
        (length,) = _HEADER.unpack_from(buf, pos)
        if not 1 <= length <= self._max_frame:  # check_length's test, inline: once per reply
            check_length(length, self._max_frame, FrameError)
        end = pos + 4 + length
        if size < end:
            self._compact()
            return None
        self._pos = end
        return bytes(buf[pos + 4 : end])

    def drain(self, data: bytes) -> tuple[list[bytes], FrameError | None]:
        """``receive_data(data)``, then every complete frame: what ``next_frame`` would give.

        The frames in order, and the FrameError that stopped them (None when
        the rest is an incomplete frame, kept for the next call).  One call
        per chunk read: the daemon's reader gets ~25 frames from each.  When
        nothing is buffered, the frames are sliced from ``data`` itself (one
        copy each instead of two) and only an incomplete tail is kept.
        """
        if self._pos == len(self._buf) and type(data) is bytes:
            buf, pos = data, 0
        else:
            self._buf += data
            buf, pos = self._buf, self._pos
        frames: list[bytes] = []
        error = None
        unpack, max_frame, size = _HEADER.unpack_from, self._max_frame, len(buf)
        while size - pos >= 4:
            (length,) = unpack(buf, pos)
            if not 1 <= length <= max_frame:
                try:
                    check_length(length, max_frame, FrameError)  # its message
                except FrameError as exc:
                    error = exc
                break
            end = pos + 4 + length
            if size < end:
                break
            frames.append(buf[pos + 4 : end] if buf is data else bytes(buf[pos + 4 : end]))
            pos = end
        if buf is data:
            # A fresh buffer with only the rest (none, usually); on an error, the
            # bytes from the bad header on, as ``head`` shows them.
            self._buf, self._pos = bytearray(data[pos:]), 0
        elif error is None:
            self._pos = pos
            self._compact()
        else:
            self._pos = pos
        return frames, error

    def _compact(self) -> None:
        # Once per chunk (when the frames in it are used up), not once per frame.
        # A fresh buffer holding only the rest: the frames returned must not stay
        # allocated while a connection is idle (a 1 MiB frame, then silence, would
        # keep 1 MiB per connection; ``del buf[:pos]`` keeps the allocation).
        if self._pos:
            self._buf = self._buf[self._pos :]
            self._pos = 0

    def frames(self) -> list[bytes]:
        """Every complete frame buffered now (raises FrameError like ``next_frame``)."""
        out: list[bytes] = []
        while (frame := self.next_frame()) is not None:
            out.append(frame)
        return out


class Refusal(msgspec.Struct, frozen=True):
    """Why a frame was not accepted, and how to answer it.

    ``kind``: ``broken`` (not MessagePack or not a map: answer ``error`` and
    close), ``unknown`` (no or unknown ``type``: answer ``error``), ``invalid``
    (a known type with bad fields: answer ``nack`` for events, ``error`` for
    control messages).
    """

    kind: Literal["broken", "unknown", "invalid"]
    reason: str
    event_id: str | None = None
    is_event: bool = False

    @property
    def closes(self) -> bool:
        """Whether the daemon hangs up after answering (the stream cannot be trusted)."""
        return self.kind == "broken"


#: The free-form field of each event type that has one (nesting limited to MAX_DEPTH).
_FREE_FORM = {RunStart: "meta", StepEnd: "detail", RunEnd: "summary"}


def decode_client_message(frame: bytes) -> ClientMessage | Refusal:
    """Decode one frame from a client into a typed message or a Refusal.

    An event whose ``meta``/``detail``/``summary`` nests deeper than
    ``MAX_DEPTH`` is ``invalid`` (a nack naming the field and the limit).
    """
    try:
        message = _client_decoder().decode(frame)
    except msgspec.ValidationError as exc:
        return _classify(frame, exc)
    except _MALFORMED as exc:
        return Refusal("broken", f"not a MessagePack message: {exc}")
    field = _FREE_FORM.get(type(message))
    if field is not None and depth_exceeds(getattr(message, field)):
        tag = message.__struct_config__.tag
        reason = f"invalid {tag}: {field} nested deeper than {MAX_DEPTH} levels"
        return Refusal("invalid", reason, message.id, is_event=True)  # type: ignore[union-attr]
    return message


def decode_client_messages(frames: list[bytes]) -> list[ClientMessage | Refusal]:
    """``[decode_client_message(f) for f in frames]``, with less work per frame.

    For the daemon's reader (~25 frames per chunk read): one decoder lookup per
    call; a frame that is refused goes through ``decode_client_message``
    again, the one place that words refusals.
    """
    decode, free_form = _client_decoder().decode, _FREE_FORM
    out: list[ClientMessage | Refusal] = []
    for frame in frames:
        try:
            message = decode(frame)
        except _MALFORMED:  # ValidationError is a DecodeError
            out.append(decode_client_message(frame))
            continue
        field = free_form.get(type(message))
        if field is not None and depth_exceeds(getattr(message, field)):
            out.append(decode_client_message(frame))
            continue
        out.append(message)
    return out


def _classify(frame: bytes, error: Exception) -> Refusal:
    # Slow path only: work out what kind of wrong the frame is.
    try:
        raw = _any_decoder.decode(frame)
    except _MALFORMED as exc:
        # The typed decode skips unknown keys unparsed; the untyped one does not.
        return Refusal("broken", f"not a MessagePack message: {exc}")
    if not isinstance(raw, dict):
        return Refusal("broken", f"message is a {type(raw).__name__}, not a map")
    kind = raw.get("type")
    if not isinstance(kind, str):
        return Refusal("unknown", "message has no string 'type' field")
    if kind not in EVENT_TYPES and kind not in CONTROL_TYPES:
        return Refusal("unknown", f"unknown message type {kind[:64]!r}")
    raw_id = raw.get("id")
    event_id = raw_id if isinstance(raw_id, str) and 0 < len(raw_id) <= MAX_UID else None
    is_event = kind in EVENT_TYPES
    return Refusal("invalid", f"invalid {kind}: {error}", event_id, is_event)


def decode_server_message(frame: bytes) -> ServerMessage:
    """Decode a daemon reply (client side).

    Raises ``RemoteProtocolError`` and nothing else: ``reason`` is
    ``"invalid"`` for a well-formed reply with bad fields, ``"malformed"`` for
    any other garbage (msgspec's exception is the ``__cause__``).
    """
    try:
        return _server_decoder().decode(frame)
    except msgspec.ValidationError as exc:
        raise RemoteProtocolError(f"invalid reply: {exc}", "invalid") from exc
    except _MALFORMED as exc:
        raise RemoteProtocolError(f"reply is not MessagePack: {exc}", "malformed") from exc
