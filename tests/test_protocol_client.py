"""Tests of ``runtally.protocol.ClientConnection``, the client's sans-IO window: bytes only.

The daemon's side is played by the protocol's own server-side codec
(``FrameDecoder`` + ``decode_client_message`` in, ``encode_frame`` out),
wired to the client object as in h11's ``ConnectionPair``; nothing here opens
a socket.
"""

from __future__ import annotations

import itertools
import struct

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtally.protocol import (
    MAX_FRAME,
    NEED_DATA,
    Ack,
    ClientConnection,
    ErrorReply,
    FrameDecoder,
    FrameError,
    LocalProtocolError,
    Nack,
    Pong,
    RemoteProtocolError,
    ServerMessage,
    StepStart,
    decode_client_message,
    encode_frame,
    encode_message,
)

HYP = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def ev(event_id: str) -> StepStart:
    return StepStart(id=event_id, ts=1_700_000_000_000, run="r1", step="s1", name="step")


def sent_ids(data: bytes) -> list[str]:
    """What the daemon would read from ``data``: the event ids, in order."""
    decoder = FrameDecoder()
    decoder.receive_data(data)
    return [decode_client_message(frame).id for frame in decoder.frames()]  # type: ignore[union-attr]


def replies(conn: ClientConnection) -> list[ServerMessage]:
    """Every reply ``conn`` has buffered, up to NEED_DATA."""
    out = []
    while (reply := conn.next_reply()) is not NEED_DATA:
        out.append(reply)
    return out


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


class TestSend:
    def test_send_is_one_frame_of_the_encoded_event(self) -> None:
        conn = ClientConnection()
        data = conn.send(ev("e1"))
        assert data == encode_frame(ev("e1"))
        assert data[:4] == struct.pack(">I", len(data) - 4)
        assert (conn.unacked, conn.sent) == (1, 1)

    def test_oversize_event_is_refused_and_not_kept(self) -> None:
        conn = ClientConnection()
        huge = StepStart(id="big", ts=1, run="r", step="s", name="n" * MAX_FRAME)
        with pytest.raises(LocalProtocolError, match="outside"):
            conn.send(huge)
        assert (conn.unacked, conn.sent) == (0, 0)

    def test_same_id_twice_is_one_window_entry(self) -> None:
        conn = ClientConnection()
        conn.send(ev("e1"))
        conn.send(ev("e1"))
        assert (conn.unacked, conn.sent) == (1, 2)
        conn.receive_data(encode_frame(Ack(id="e1")))
        assert replies(conn) == [Ack(id="e1")]
        assert conn.unacked == 0


class TestReplies:
    def test_need_data_until_a_whole_reply(self) -> None:
        conn = ClientConnection()
        conn.send(ev("e1"))
        frame = encode_frame(Ack(id="e1"))
        for i in range(len(frame) - 1):
            conn.receive_data(frame[i : i + 1])
            assert conn.next_reply() is NEED_DATA
            assert conn.unacked == 1
        conn.receive_data(frame[-1:])
        assert conn.next_reply() == Ack(id="e1")
        assert conn.unacked == 0
        assert conn.next_reply() is NEED_DATA

    @HYP
    @given(
        n=st.integers(1, 30),
        nacked=st.sets(st.integers(0, 29)),
        cuts=st.lists(st.integers(0, 10_000), max_size=40),
    )
    def test_any_split_of_the_replies_answers_every_event(
        self, n: int, nacked: set[int], cuts: list[int]
    ) -> None:
        conn = ClientConnection()
        ids = [f"e{i}" for i in range(n)]
        wire = b"".join(conn.send(ev(i)) for i in ids)
        assert sent_ids(wire) == ids
        expected: list[ServerMessage] = [
            Nack(id=i, error="bad") if k in nacked else Ack(id=i) for k, i in enumerate(ids)
        ]
        got: list[ServerMessage] = []
        for chunk in split(b"".join(encode_frame(r) for r in expected), cuts):
            conn.receive_data(chunk)
            got += replies(conn)
        assert got == expected
        assert conn.unacked == 0
        assert conn.answered_through(conn.sent)
        assert conn.connection_lost() == []

    @pytest.mark.parametrize("nack_id", [None, "not-sent"])
    def test_nack_without_a_known_id_answers_the_oldest(self, nack_id: str | None) -> None:
        conn = ClientConnection()
        for i in ("e1", "e2"):
            conn.send(ev(i))
        conn.receive_data(encode_frame(Nack(id=nack_id, error="invalid")))
        assert replies(conn) == [Nack(id="e1", error="invalid")]
        assert conn.connection_lost() == [encode_message(ev("e2"))]

    def test_nack_with_an_empty_window_names_nothing(self) -> None:
        conn = ClientConnection()
        conn.receive_data(encode_frame(Nack(id="x", error="invalid")))
        assert replies(conn) == [Nack(id=None, error="invalid")]

    def test_error_reply_and_others_leave_the_window_alone(self) -> None:
        conn = ClientConnection()
        conn.send(ev("e1"))
        conn.receive_data(encode_frame(ErrorReply(error="unreadable")) + encode_frame(Pong()))
        assert replies(conn) == [ErrorReply(error="unreadable"), Pong()]
        assert conn.unacked == 1

    @pytest.mark.parametrize(
        ("body", "reason"),
        [
            (b"\xc1", "malformed"),  # never-used MessagePack byte
            (msgspec.msgpack.encode({"type": "ack"}), "invalid"),  # no id
            (msgspec.msgpack.encode({"type": "surprise"}), "invalid"),
        ],
    )
    def test_unreadable_reply_raises_ours_and_the_stream_goes_on(
        self, body: bytes, reason: str
    ) -> None:
        conn = ClientConnection()
        conn.send(ev("e1"))
        conn.receive_data(struct.pack(">I", len(body)) + body + encode_frame(Ack(id="e1")))
        with pytest.raises(RemoteProtocolError) as info:
            conn.next_reply()
        assert info.value.reason == reason
        assert not isinstance(info.value, msgspec.MsgspecError)
        assert conn.next_reply() == Ack(id="e1")

    @pytest.mark.parametrize("length", [0, MAX_FRAME + 1])
    def test_impossible_reply_header_is_a_frame_error(self, length: int) -> None:
        conn = ClientConnection()
        conn.receive_data(struct.pack(">I", length))
        with pytest.raises(FrameError, match="outside"):
            conn.next_reply()


class TestWindow:
    def test_answered_through_follows_send_order(self) -> None:
        conn = ClientConnection()
        for i in ("e1", "e2", "e3"):
            conn.send(ev(i))
        target = conn.sent
        conn.send(ev("e4"))
        conn.receive_data(encode_frame(Ack(id="e1")) + encode_frame(Ack(id="e2")))
        replies(conn)
        assert not conn.answered_through(target)
        conn.receive_data(encode_frame(Ack(id="e3")))
        replies(conn)
        assert conn.answered_through(target)
        assert not conn.answered_through(conn.sent)

    def test_connection_lost_hands_back_unacked_events_once(self) -> None:
        conn = ClientConnection()
        for i in ("e1", "e2", "e3"):
            conn.send(ev(i))
        conn.receive_data(encode_frame(Ack(id="e2")) + encode_frame(Ack(id="e3"))[:5])
        replies(conn)
        assert conn.connection_lost() == [encode_message(ev("e1")), encode_message(ev("e3"))]
        assert conn.unacked == 0
        assert conn.connection_lost() == []
        # The half reply was dropped with the connection; counting goes on.
        before = conn.sent
        conn.send(ev("e5"))
        assert conn.sent == before + 1
        conn.receive_data(encode_frame(Ack(id="e5")))
        assert replies(conn) == [Ack(id="e5")]


class TestResend:
    def test_resent_events_are_counted_apart_and_not_handed_back(self) -> None:
        conn = ClientConnection()
        spooled = [encode_message(ev(i)) for i in ("s1", "s2")]
        data = conn.resend(spooled) + conn.send(ev("n1"))
        assert sent_ids(data) == ["s1", "s2", "n1"]
        assert (conn.unacked, conn.resent_unacked) == (3, 2)
        conn.receive_data(encode_frame(Ack(id="s1")))
        replies(conn)
        assert conn.resent_unacked == 1
        # The spool file still has s2: only n1 must be kept by the caller.
        assert conn.connection_lost() == [encode_message(ev("n1"))]
        assert conn.resent_unacked == 0

    def test_all_resent_acked(self) -> None:
        conn = ClientConnection()
        conn.resend([encode_message(ev(i)) for i in ("s1", "s2")])
        conn.receive_data(encode_frame(Nack(id="s1", error="bad")) + encode_frame(Ack(id="s2")))
        replies(conn)
        assert (conn.unacked, conn.resent_unacked) == (0, 0)

    def test_sending_a_resent_id_again_replaces_it(self) -> None:
        conn = ClientConnection()
        conn.resend([encode_message(ev("s1"))])
        conn.send(ev("s1"))
        assert (conn.unacked, conn.resent_unacked) == (1, 0)
        assert conn.connection_lost() == [encode_message(ev("s1"))]

    @pytest.mark.parametrize(
        ("payload", "reason"),
        [
            (b"\xc1", "malformed"),
            (msgspec.msgpack.encode({"type": "step_start"}), "invalid"),
            (msgspec.msgpack.encode({"id": 5}), "invalid"),
            (msgspec.msgpack.encode([1, 2]), "invalid"),
        ],
    )
    def test_unreadable_record_keeps_nothing(self, payload: bytes, reason: str) -> None:
        conn = ClientConnection()
        with pytest.raises(RemoteProtocolError) as info:
            conn.resend([encode_message(ev("s1")), payload])
        assert info.value.reason == reason
        assert isinstance(info.value.__cause__, msgspec.MsgspecError | UnicodeDecodeError)
        assert (conn.unacked, conn.sent) == (0, 0)

    def test_oversize_record_keeps_nothing(self) -> None:
        conn = ClientConnection()
        too_big = msgspec.msgpack.encode({"id": "s2", "pad": "x" * MAX_FRAME})
        with pytest.raises(LocalProtocolError, match="outside"):
            conn.resend([encode_message(ev("s1")), too_big])
        assert (conn.unacked, conn.sent) == (0, 0)
