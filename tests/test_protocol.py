"""Tests of runtally.protocol: wire protocol v1 and spool format v1 (DESIGN.md).

Interop tests build and read bytes with the ``msgpack`` package, ``struct`` and
``zlib`` by hand, never with msgspec, so they check the code against the
contract rather than against itself.  ``TestDocExamples`` keeps the hex
examples in docs/protocol.md equal to what the code produces.
"""

from __future__ import annotations

import json
import re
import struct
import typing
import zlib
from pathlib import Path
from typing import Any

import msgpack
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtally.errors import RuntallyError
from runtally.protocol import (
    MAX_FRAME,
    SPOOL_MAGIC,
    Ack,
    ClientMessage,
    CommitHistogram,
    Dropped,
    ErrorEvent,
    ErrorReply,
    FrameDecoder,
    FrameError,
    Hello,
    LocalProtocolError,
    Nack,
    Pause,
    Ping,
    PipelinePaused,
    Pong,
    ProtocolError,
    Refusal,
    RemoteProtocolError,
    Replay,
    Replayed,
    Resume,
    RunEnd,
    RunStart,
    ServerMessage,
    SpoolReader,
    SpoolTail,
    Status,
    StatusReply,
    StepEnd,
    StepStart,
    Vacuum,
    Vacuumed,
    Welcome,
    decode_client_message,
    decode_client_messages,
    decode_server_message,
    encode_frame,
    encode_message,
    encode_record,
    frame_payload,
    read_spool,
)

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"

MAX_TS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
MAX_COUNT = 2**62
INT64 = (-(2**63), 2**63 - 1)

HYP = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
HYP_MANY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- strategies -------------------------------------------------------------------


def _sized_text(min_size: int, max_size: int) -> st.SearchStrategy[str]:
    """Any unicode text in range, with both boundaries drawn often."""
    return st.one_of(
        st.text(min_size=min_size, max_size=max_size),
        st.text(min_size=min_size, max_size=min_size),
        st.text(min_size=max_size, max_size=max_size),
    )


uids = _sized_text(1, 128)
names = _sized_text(1, 256)
timestamps = st.one_of(st.integers(0, MAX_TS), st.sampled_from([0, 1, MAX_TS]))
counts = st.one_of(st.integers(0, MAX_COUNT), st.sampled_from([0, 1, MAX_COUNT]))
ints64 = st.integers(*INT64)
any_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.binary(max_size=20),
)
any_values = st.recursive(
    any_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
metas = st.dictionaries(st.text(max_size=16), any_values, max_size=5)


def _struct(cls: type, required: dict, optional: dict | None = None) -> st.SearchStrategy:
    """``cls`` built from required fields plus any subset of the optional ones."""
    return st.fixed_dictionaries(required, optional=optional or {}).map(lambda kw: cls(**kw))


EVENT_BASE = {"id": uids, "ts": timestamps, "run": uids}

CLIENT_STRATEGIES: dict[type, st.SearchStrategy] = {
    Hello: _struct(Hello, {}, {"protocol": ints64, "client": st.text()}),
    Ping: st.just(Ping()),
    Status: st.just(Status()),
    Replay: st.just(Replay()),
    Pause: _struct(Pause, {"pipeline": names}),
    Resume: _struct(Resume, {"pipeline": names}),
    Vacuum: st.just(Vacuum()),
    RunStart: _struct(
        RunStart,
        {**EVENT_BASE, "pipeline": names},
        {"club_slug": names, "parent": uids, "meta": metas},
    ),
    StepStart: _struct(StepStart, {**EVENT_BASE, "step": uids, "name": names}),
    StepEnd: _struct(
        StepEnd,
        {**EVENT_BASE, "step": uids, "outcome": st.sampled_from(["success", "failure", "skipped"])},
        {
            "created": counts,
            "updated": counts,
            "skipped": counts,
            "failed": counts,
            "detail": any_values,
            "duration_ms": counts,
        },
    ),
    ErrorEvent: _struct(
        ErrorEvent,
        {**EVENT_BASE, "step_name": names, "message": st.text()},
        {"step": uids, "member": st.text(), "stack": st.text()},
    ),
    RunEnd: _struct(
        RunEnd,
        {**EVENT_BASE, "outcome": st.sampled_from(["success", "failure"])},
        {"summary": any_values, "duration_ms": counts},
    ),
    Dropped: _struct(Dropped, {**EVENT_BASE, "events": st.integers(1, 2**62)}),
}

SERVER_STRATEGIES: dict[type, st.SearchStrategy] = {
    Welcome: _struct(Welcome, {}, {"protocol": ints64, "server": st.text()}),
    Pong: st.just(Pong()),
    StatusReply: _struct(
        StatusReply,
        {
            "uptime_s": st.floats(allow_nan=False),
            "events_committed": ints64,
            "queue_depth": ints64,
            "schema_version": ints64,
            "db_path": st.text(),
        },
        {
            "connections": ints64,
            "spool_files": ints64,
            "version": st.text(),
            "pid": ints64,
            "last_commit_ts": st.none() | timestamps,
            "spool_problem": st.none() | st.text(max_size=40),
            "wal_bytes": ints64,
            "parked": ints64,
            "parked_bytes": ints64,
            "parked_oldest_ts": st.none() | timestamps,
            "parked_expired": ints64,
            "failing_s": st.none() | st.floats(allow_nan=False),
            "failing_reason": st.text(),
            "problems": st.lists(st.text(), max_size=3),
            "alert_failures": st.none() | st.dictionaries(st.text(), st.text(), max_size=3),
            "commit_seconds": st.none()
            | _struct(
                CommitHistogram,
                {"le": st.lists(st.floats(0, 60)), "counts": st.lists(ints64)},
                {"sum_s": st.floats(0, 1e9), "max_s": st.floats(0, 1e9)},
            ),
        },
    ),
    Replayed: _struct(Replayed, {"files": ints64, "events": ints64, "quarantined": ints64}),
    PipelinePaused: _struct(PipelinePaused, {"pipeline": st.text(), "paused": st.booleans()}),
    Vacuumed: _struct(
        Vacuumed,
        {
            "method": st.sampled_from(["vacuum", "incremental_vacuum"]),
            "bytes_before": ints64,
            "bytes_after": ints64,
            "seconds": st.floats(0, 1e6),
        },
        {"wal_truncated": st.booleans()},
    ),
    Ack: _struct(Ack, {"id": uids}),
    Nack: _struct(Nack, {"id": st.none() | uids, "error": st.text()}),
    ErrorReply: _struct(ErrorReply, {"error": st.text()}),
}

CLIENT_CLASSES = list(CLIENT_STRATEGIES)
SERVER_CLASSES = list(SERVER_STRATEGIES)
EVENT_CLASSES = [RunStart, StepStart, StepEnd, ErrorEvent, RunEnd, Dropped]
client_messages = st.one_of(*CLIENT_STRATEGIES.values())
events = st.one_of(*(CLIENT_STRATEGIES[c] for c in EVENT_CLASSES))

#: The wire field names of DESIGN.md "Wire protocol v1", written out by hand:
#: type tag -> (keys always present, keys that may be present).
CLIENT_FIELDS: dict[str, tuple[set[str], set[str]]] = {
    "hello": ({"protocol", "client"}, set()),
    "ping": (set(), set()),
    "status": (set(), set()),
    "replay": (set(), set()),
    "pause": ({"pipeline"}, set()),
    "resume": ({"pipeline"}, set()),
    "vacuum": (set(), set()),
    "run_start": ({"id", "ts", "run", "pipeline"}, {"club_slug", "parent", "meta"}),
    "step_start": ({"id", "ts", "run", "step", "name"}, set()),
    "step_end": (
        {"id", "ts", "run", "step", "outcome"},
        {"created", "updated", "skipped", "failed", "detail", "duration_ms"},
    ),
    "error": ({"id", "ts", "run", "step_name", "message"}, {"step", "member", "stack"}),
    "run_end": ({"id", "ts", "run", "outcome"}, {"summary", "duration_ms"}),
    "dropped": ({"id", "ts", "run", "events"}, set()),
}
SERVER_FIELDS: dict[str, tuple[set[str], set[str]]] = {
    "welcome": ({"protocol", "server"}, set()),
    "pong": (set(), set()),
    # "at least" these five; the rest are the daemon's documented extras.
    "status": (
        {"uptime_s", "events_committed", "queue_depth", "schema_version", "db_path"},
        {
            "connections",
            "spool_files",
            "version",
            "pid",
            "last_commit_ts",
            "spool_problem",
            "wal_bytes",
            "parked",
            "parked_bytes",
            "parked_oldest_ts",
            "parked_expired",
            "failing_s",
            "failing_reason",
            "problems",
            "alert_failures",
            "commit_seconds",
        },
    ),
    "replayed": (
        {"files", "events", "quarantined"},
        {"total_files", "total_events", "total_quarantined"},
    ),
    "pipeline_paused": ({"pipeline", "paused"}, set()),
    "vacuumed": ({"method", "bytes_before", "bytes_after", "seconds"}, {"wal_truncated"}),
    "ack": ({"id"}, set()),
    "nack": ({"id", "error"}, set()),
    "error": ({"error"}, set()),
}

#: One valid wire map per event type, for the refusal tests.
VALID_EVENTS: dict[str, dict[str, Any]] = {
    "run_start": {"type": "run_start", "id": "e1", "ts": 1, "run": "r1", "pipeline": "people"},
    "step_start": {
        "type": "step_start",
        "id": "e1",
        "ts": 1,
        "run": "r1",
        "step": "s1",
        "name": "download",
    },
    "step_end": {
        "type": "step_end",
        "id": "e1",
        "ts": 1,
        "run": "r1",
        "step": "s1",
        "outcome": "success",
    },
    "error": {
        "type": "error",
        "id": "e1",
        "ts": 1,
        "run": "r1",
        "step_name": "submit",
        "message": "boom",
    },
    "run_end": {"type": "run_end", "id": "e1", "ts": 1, "run": "r1", "outcome": "failure"},
}


def tag(msg: msgspec.Struct) -> str:
    return type(msg).__struct_config__.tag


def wire_dict(msg: msgspec.Struct) -> dict[str, Any]:
    """Every field of ``msg`` (defaults included, as explicit nil/0) plus "type"."""
    return {"type": tag(msg), **msgspec.structs.asdict(msg)}


def defaults_of(cls: type) -> dict[str, Any]:
    out = {}
    for f in msgspec.structs.fields(cls):
        if f.default is not msgspec.NODEFAULT:
            out[f.name] = f.default
        elif f.default_factory is not msgspec.NODEFAULT:
            out[f.name] = f.default_factory()
    return out


def msgpack_frame(obj: Any) -> bytes:
    """A frame built with the msgpack package and struct, not with our code."""
    body = msgpack.packb(obj)
    return struct.pack(">I", len(body)) + body


def decode_stream(chunks: list[bytes]) -> list[bytes]:
    dec = FrameDecoder()
    out: list[bytes] = []
    for chunk in chunks:
        dec.receive_data(chunk)
        out.extend(dec.frames())
    assert dec.buffered == 0
    return out


def split(data: bytes, sizes: list[int]) -> list[bytes]:
    """``data`` cut into chunks of the given sizes, cycling; the last takes the rest."""
    chunks, pos, i = [], 0, 0
    while pos < len(data):
        size = sizes[i % len(sizes)] if sizes else len(data)
        chunks.append(data[pos : pos + size])
        pos += size
        i += 1
    return chunks


chunk_sizes = st.one_of(st.just([1]), st.lists(st.integers(1, 64), min_size=1, max_size=8))


def nest(levels: int) -> Any:
    """A list nested ``levels`` deep (around the daemon's MAX_DEPTH of 32 for a detail)."""
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


def mutate(data: bytes, flips: list[tuple[int, int]]) -> bytes:
    """``data`` with the byte at each ``pos % len`` replaced."""
    buf = bytearray(data)
    for pos, byte in flips:
        buf[pos % len(buf)] = byte
    return bytes(buf)


def deep(n: int = 5000) -> bytes:
    """MessagePack for ``[[[...nil...]]]`` nested ``n`` deep."""
    return b"\x91" * n + b"\xc0"


# -- the message catalogue itself ------------------------------------------------


class TestCatalogue:
    def test_strategies_cover_every_message_type(self):
        assert set(typing.get_args(ClientMessage)) == set(CLIENT_CLASSES)
        assert set(typing.get_args(ServerMessage)) == set(SERVER_CLASSES)

    def test_design_field_names_match_the_structs(self):
        for classes, table in ((CLIENT_CLASSES, CLIENT_FIELDS), (SERVER_CLASSES, SERVER_FIELDS)):
            assert {c.__struct_config__.tag for c in classes} == set(table)
            for cls in classes:
                required, optional = table[cls.__struct_config__.tag]
                assert set(cls.__struct_fields__) == required | optional, cls


# -- framing -----------------------------------------------------------------------


class TestRoundTrip:
    @pytest.mark.parametrize("cls", CLIENT_CLASSES, ids=lambda c: c.__name__)
    @HYP
    @given(data=st.data())
    def test_client_message(self, cls, data):
        msg = data.draw(CLIENT_STRATEGIES[cls])
        frames = decode_stream([encode_frame(msg)])
        assert len(frames) == 1
        decoded = decode_client_message(frames[0])
        assert type(decoded) is cls
        assert decoded == msg

    @pytest.mark.parametrize("cls", SERVER_CLASSES, ids=lambda c: c.__name__)
    @HYP
    @given(data=st.data())
    def test_server_message(self, cls, data):
        msg = data.draw(SERVER_STRATEGIES[cls])
        frames = decode_stream([encode_frame(msg)])
        assert len(frames) == 1
        decoded = decode_server_message(frames[0])
        assert type(decoded) is cls
        assert decoded == msg

    def test_status_tag_means_status_request_from_clients(self):
        reply = StatusReply(1.5, 2, 3, 4, "/db")
        assert decode_client_message(encode_frame(reply)[4:]) == Status()
        assert decode_server_message(encode_frame(reply)[4:]) == reply

    @pytest.mark.parametrize(
        ("msg", "wire"),
        [
            (Hello(), {"type": "hello", "protocol": 1, "client": ""}),
            (Welcome(server="d"), {"type": "welcome", "protocol": 1, "server": "d"}),
            (Nack(None, "bad"), {"type": "nack", "id": None, "error": "bad"}),
            (
                StepEnd(id="e", ts=0, run="r", step="s", outcome="skipped"),
                {
                    "type": "step_end",
                    "id": "e",
                    "ts": 0,
                    "run": "r",
                    "step": "s",
                    "outcome": "skipped",
                },
            ),
        ],
        ids=["hello", "welcome", "nack-nil", "step_end-defaults"],
    )
    def test_defaults_on_the_wire(self, msg, wire):
        # protocol is always sent (its default changes with the version); nack id
        # nil is sent; optional event fields at their default are left out.
        assert msgpack.unpackb(encode_frame(msg)[4:]) == wire


class TestFrameDecoder:
    @HYP
    @given(msgs=st.lists(client_messages, max_size=12), sizes=chunk_sizes)
    def test_any_chunking_gives_the_same_frames(self, msgs, sizes):
        stream = b"".join(encode_frame(m) for m in msgs)
        frames = decode_stream(split(stream, sizes))
        assert frames == [encode_frame(m)[4:] for m in msgs]
        assert [decode_client_message(f) for f in frames] == msgs

    @HYP
    @given(
        msgs=st.lists(client_messages, max_size=12),
        sizes=chunk_sizes,
        kinds=st.lists(st.sampled_from([bytes, bytearray]), min_size=1),
    )
    def test_drain_gives_what_next_frame_gives(self, msgs, sizes, kinds):
        stream = b"".join(encode_frame(m) for m in msgs)
        dec, got = FrameDecoder(), []
        for i, chunk in enumerate(split(stream, sizes)):
            frames, error = dec.drain(kinds[i % len(kinds)](chunk))
            assert error is None
            assert all(type(f) is bytes for f in frames)
            got += frames
            assert dec.buffered == sum(map(len, split(stream, sizes)[: i + 1])) - sum(
                4 + len(f) for f in got
            )
        assert got == [encode_frame(m)[4:] for m in msgs]
        assert dec.buffered == 0

    @pytest.mark.parametrize("kind", [bytes, bytearray])
    @pytest.mark.parametrize("buffered", [b"", encode_frame(Ping())[:3]])
    def test_drain_stops_at_an_impossible_length(self, kind, buffered):
        dec = FrameDecoder()
        dec.receive_data(buffered)
        rest = encode_frame(Ping())[len(buffered) :]
        bad = struct.pack(">I", MAX_FRAME + 1) + b"xyz"
        frames, error = dec.drain(kind(rest + encode_frame(Status()) + bad))
        assert frames == [encode_frame(Ping())[4:], encode_frame(Status())[4:]]
        assert isinstance(error, FrameError)
        assert str(error) == f"frame length {MAX_FRAME + 1} outside 1..{MAX_FRAME}"
        assert dec.head() == bad  # what the daemon dead-letters

    def test_one_byte_chunks(self):
        msgs = [Hello(client="c"), *(Ping() for _ in range(3)), Status(), Replay()]
        stream = b"".join(encode_frame(m) for m in msgs)
        dec = FrameDecoder()
        got = []
        for i in range(len(stream)):
            dec.receive_data(stream[i : i + 1])
            got.extend(dec.frames())
            assert dec.buffered == i + 1 - sum(4 + len(f) for f in got)
        assert [decode_client_message(f) for f in got] == msgs

    @pytest.mark.parametrize("length", [0, MAX_FRAME + 1, 2**31, 2**32 - 1])
    def test_impossible_length_fails_on_the_header_alone(self, length):
        dec = FrameDecoder()
        header = struct.pack(">I", length)
        dec.receive_data(header[:3])
        assert dec.next_frame() is None
        dec.receive_data(header[3:])  # no body byte follows
        with pytest.raises(FrameError, match=rf"frame length {length} outside 1\.\.{MAX_FRAME}"):
            dec.next_frame()
        with pytest.raises(FrameError, match="outside"):
            dec.frames()

    def test_impossible_length_after_good_frames(self):
        dec = FrameDecoder()
        dec.receive_data(encode_frame(Ping()) + struct.pack(">I", 0))
        assert dec.next_frame() == encode_frame(Ping())[4:]
        with pytest.raises(FrameError, match="frame length 0"):
            dec.next_frame()

    def test_custom_max_frame(self):
        dec = FrameDecoder(max_frame=16)
        dec.receive_data(struct.pack(">I", 17))
        with pytest.raises(FrameError, match=r"frame length 17 outside 1\.\.16"):
            dec.next_frame()

    def test_length_one_and_max_are_accepted(self):
        dec = FrameDecoder()
        dec.receive_data(b"\x00\x00\x00\x01\xc0")
        assert dec.frames() == [b"\xc0"]

        overhead = len(msgpack.packb({"type": "ping", "pad": b"\0" * 70000})) - 70000
        body = msgpack.packb({"type": "ping", "pad": b"\0" * (MAX_FRAME - overhead)})
        assert len(body) == MAX_FRAME
        dec.receive_data(struct.pack(">I", MAX_FRAME))
        assert dec.next_frame() is None
        assert dec.buffered == 4
        dec.receive_data(body)
        (frame,) = dec.frames()
        assert decode_client_message(frame) == Ping()

    def test_encoder_refuses_oversize_messages(self):
        fits = {"type": "ping", "pad": "x" * (MAX_FRAME - 30)}
        fits["pad"] += "x" * (MAX_FRAME - len(msgspec.msgpack.encode(fits)))
        assert len(encode_frame(fits)) == 4 + MAX_FRAME
        too_big = {**fits, "pad": fits["pad"] + "x"}
        with pytest.raises(LocalProtocolError, match=rf"frame length {MAX_FRAME + 1} outside"):
            encode_frame(too_big)
        with pytest.raises(LocalProtocolError, match=rf"frame length {MAX_FRAME + 1} outside"):
            encode_message(too_big)
        body = encode_message(fits)
        assert frame_payload(body) == encode_frame(fits)
        with pytest.raises(LocalProtocolError, match=rf"frame length {MAX_FRAME + 1} outside"):
            frame_payload(body + b"x")
        with pytest.raises(LocalProtocolError, match="frame length 0 outside"):
            frame_payload(b"")


class TestGarbage:
    """Whatever bytes arrive, the decoder raises FrameError or returns frames,
    and ``decode_client_message`` returns a message or a Refusal, never raises."""

    @staticmethod
    def feed(chunks: list[bytes]) -> list[ClientMessage | Refusal]:
        dec = FrameDecoder()
        out = []
        try:
            for chunk in chunks:
                dec.receive_data(chunk)
                for frame in dec.frames():
                    result = decode_client_message(frame)
                    assert isinstance(result, (Refusal, *CLIENT_CLASSES))
                    out.append(result)
        except FrameError:
            pass
        return out

    @HYP_MANY
    @given(chunks=st.lists(st.binary(max_size=64), max_size=16))
    def test_random_bytes(self, chunks):
        self.feed(chunks)

    @HYP_MANY
    @given(bodies=st.lists(st.binary(min_size=1, max_size=200), min_size=1, max_size=8))
    def test_random_bodies_in_valid_frames(self, bodies):
        stream = b"".join(struct.pack(">I", len(b)) + b for b in bodies)
        assert len(self.feed([stream])) == len(bodies)

    @HYP_MANY
    @given(
        frames=st.lists(
            st.one_of(
                client_messages.map(lambda m: encode_frame(m)[4:]),
                st.tuples(
                    client_messages, st.lists(st.tuples(st.integers(0), st.integers(0, 255)))
                ).map(lambda mf: mutate(encode_frame(mf[0])[4:], mf[1])),
                st.binary(min_size=1, max_size=64),
                st.integers(30, 40).map(
                    lambda n: msgpack.packb(
                        {
                            "type": "step_end",
                            "id": "e",
                            "ts": 1,
                            "run": "r",
                            "step": "s",
                            "outcome": "success",
                            "detail": nest(n),
                        }
                    )
                ),
            ),
            max_size=12,
        )
    )
    def test_decoding_a_chunk_at_once_is_decoding_frame_by_frame(self, frames):
        assert decode_client_messages(frames) == [decode_client_message(f) for f in frames]

    @HYP_MANY
    @given(msg=client_messages, flips=st.lists(st.tuples(st.integers(0), st.integers(0, 255))))
    def test_mutated_valid_messages(self, msg, flips):
        body = mutate(encode_frame(msg)[4:], flips)
        (result,) = self.feed([struct.pack(">I", len(body)) + body])
        if isinstance(result, Refusal):
            assert result.closes == (result.kind == "broken")

    @HYP_MANY
    @given(
        obj=st.dictionaries(
            st.sampled_from(["type", "id", "ts", "run", "step", "outcome", "meta", "x"]),
            st.one_of(
                st.sampled_from(sorted(CLIENT_FIELDS)),
                any_values,
            ),
        )
    )
    def test_random_maps(self, obj):
        (result,) = self.feed([msgpack_frame(obj)])
        if isinstance(result, Refusal):
            assert result.kind != "broken"  # it is a map of MessagePack
            if result.kind == "invalid":
                assert obj["type"] in CLIENT_FIELDS
            else:
                assert not (isinstance(obj.get("type"), str) and obj["type"] in CLIENT_FIELDS)


# -- refusals ----------------------------------------------------------------------


def _with(event: str, **changes: Any) -> dict[str, Any]:
    """A valid event map with fields changed (``...`` deletes the field)."""
    out = dict(VALID_EVENTS[event])
    for key, value in changes.items():
        if value is ...:
            del out[key]
        else:
            out[key] = value
    return out


class TestRefusals:
    @pytest.mark.parametrize(
        ("frame", "reason"),
        [
            (b"\xc1", "not a MessagePack message"),
            (b"\x82\xa4type\xa4ping", "not a MessagePack message"),  # truncated map
            (msgpack.packb({"type": "ping"}) + b"\xc0", "not a MessagePack message"),  # trailing
            (msgpack.packb([1, 2]), "list, not a map"),
            (msgpack.packb("ping"), "str, not a map"),
            (msgpack.packb(7), "int, not a map"),
            (b"\xc0", "NoneType, not a map"),
            (deep(), "not a MessagePack message"),
            (b"\x82\xa4type\xa4ping\xa1x" + deep(), "not a MessagePack message"),
            (b"\x83\xa4type\xa5hello\xa8protocol\xa1x\xa1x" + deep(), "not a MessagePack"),
            (b"\x81\xa4type\xa2\xff\xfe", "not a MessagePack message"),  # bad UTF-8
            (b"\x83\xa4type\xa5hello\xa8protocol\xa1x\xa1x\xa2\xff\xfe", "not a MessagePack"),
            (b"\x81\x81\x01\x02\x03", "not a MessagePack message"),  # map as a map key
        ],
        ids=[
            "bad-opcode",
            "truncated",
            "trailing-bytes",
            "array",
            "string",
            "int",
            "nil",
            "deep-nesting",
            "deep-nesting-in-ignored-key",
            "deep-nesting-in-invalid-hello",
            "bad-utf8",
            "bad-utf8-in-invalid-hello",
            "unhashable-key",
        ],
    )
    def test_broken_frames_close_the_connection(self, frame, reason):
        refusal = decode_client_message(frame)
        assert isinstance(refusal, Refusal)
        assert refusal.kind == "broken"
        assert refusal.closes
        assert refusal.event_id is None
        assert not refusal.is_event
        assert reason in refusal.reason

    @pytest.mark.parametrize(
        ("obj", "reason"),
        [
            ({}, "no string 'type'"),
            ({"typ": "ping"}, "no string 'type'"),
            ({"type": None}, "no string 'type'"),
            ({"type": 1}, "no string 'type'"),
            ({"type": b"ping"}, "no string 'type'"),
            ({"type": "nope"}, "unknown message type 'nope'"),
            ({"type": "RUN_START", "id": "e1"}, "unknown message type 'RUN_START'"),
            ({"type": "defragment"}, "unknown message type 'defragment'"),
            ({"type": "ack", "id": "e1"}, "unknown message type 'ack'"),  # a reply, not a request
            ({"type": "z" * 1000}, "unknown message type '" + "z" * 64 + "'$"),
        ],
    )
    def test_unknown_type(self, obj, reason):
        refusal = decode_client_message(msgpack.packb(obj))
        assert isinstance(refusal, Refusal)
        assert refusal.kind == "unknown"
        assert not refusal.closes
        assert refusal.event_id is None
        assert re.search(reason, refusal.reason)

    @pytest.mark.parametrize(
        ("event", "changes", "field", "event_id"),
        [
            ("run_start", {"id": "x" * 129}, "id", None),
            ("run_start", {"id": ""}, "id", None),
            ("run_start", {"id": 5}, "id", None),
            ("run_start", {"id": ...}, "id", None),
            ("run_start", {"run": "🙂" * 129}, "run", "e1"),
            ("run_start", {"run": ""}, "run", "e1"),
            ("run_start", {"pipeline": "p" * 257}, "pipeline", "e1"),
            ("run_start", {"pipeline": ...}, "pipeline", "e1"),
            ("run_start", {"club_slug": ""}, "club_slug", "e1"),
            ("run_start", {"parent": "p" * 129}, "parent", "e1"),
            ("run_start", {"meta": [1]}, "meta", "e1"),
            ("run_start", {"meta": {1: "x"}}, "meta", "e1"),
            ("step_start", {"ts": -1}, "ts", "e1"),
            ("step_start", {"ts": MAX_TS + 1}, "ts", "e1"),
            ("step_start", {"ts": 1.5}, "ts", "e1"),
            ("step_start", {"ts": "2026-01-01T00:00:00Z"}, "ts", "e1"),
            ("step_start", {"ts": True}, "ts", "e1"),
            ("step_start", {"ts": ...}, "ts", "e1"),
            ("step_start", {"run": ...}, "run", "e1"),
            ("step_start", {"name": ""}, "name", "e1"),
            ("step_end", {"outcome": "ok"}, "outcome", "e1"),
            ("step_end", {"outcome": "SUCCESS"}, "outcome", "e1"),
            ("step_end", {"outcome": ...}, "outcome", "e1"),
            ("step_end", {"created": -1}, "created", "e1"),
            ("step_end", {"updated": -5}, "updated", "e1"),
            ("step_end", {"skipped": "3"}, "skipped", "e1"),
            ("step_end", {"failed": MAX_COUNT + 1}, "failed", "e1"),
            ("step_end", {"duration_ms": -1}, "duration_ms", "e1"),
            ("step_end", {"step": ...}, "step", "e1"),
            ("error", {"message": ...}, "message", "e1"),
            ("error", {"step_name": ...}, "step_name", "e1"),
            ("error", {"step": ""}, "step", "e1"),
            ("error", {"member": 12}, "member", "e1"),
            ("run_end", {"outcome": "skipped"}, "outcome", "e1"),
            ("run_end", {"duration_ms": 1.0}, "duration_ms", "e1"),
        ],
    )
    def test_invalid_event_is_nacked_with_the_field(self, event, changes, field, event_id):
        refusal = decode_client_message(msgpack.packb(_with(event, **changes)))
        assert isinstance(refusal, Refusal)
        assert refusal.kind == "invalid"
        assert not refusal.closes
        assert refusal.is_event
        assert refusal.event_id == event_id
        assert refusal.reason.startswith(f"invalid {event}: ")
        assert re.search(rf"`\$\.{field}`|missing required field `{field}`", refusal.reason)

    @pytest.mark.parametrize(
        ("obj", "field"),
        [
            ({"type": "hello", "protocol": "1"}, "protocol"),
            ({"type": "hello", "client": 3}, "client"),
        ],
    )
    def test_invalid_control_message(self, obj, field):
        refusal = decode_client_message(msgpack.packb(obj))
        assert isinstance(refusal, Refusal)
        assert (refusal.kind, refusal.is_event, refusal.closes) == ("invalid", False, False)
        assert f"`$.{field}`" in refusal.reason

    @pytest.mark.parametrize(
        ("event", "changes"),
        [
            ("run_start", {"id": "x"}),
            ("run_start", {"id": "🙂" * 128, "run": "r" * 128, "parent": "p" * 128}),
            ("run_start", {"pipeline": "p" * 256, "club_slug": "c", "meta": {}}),
            ("step_start", {"ts": 0}),
            ("step_start", {"ts": MAX_TS}),
            ("step_end", {"created": 0, "updated": MAX_COUNT, "duration_ms": 0}),
            ("step_end", {"detail": None, "duration_ms": None, "outcome": "skipped"}),
            ("error", {"step": None, "member": None, "stack": None, "message": ""}),
            ("run_end", {"summary": {"any": [1, "thing", None]}, "outcome": "success"}),
        ],
    )
    def test_boundary_values_are_accepted(self, event, changes):
        obj = _with(event, **changes)
        msg = decode_client_message(msgpack.packb(obj))
        assert not isinstance(msg, Refusal), msg
        assert tag(msg) == event
        for key, value in changes.items():
            assert getattr(msg, key) == value

    @pytest.mark.parametrize("obj", [*VALID_EVENTS.values(), {"type": "ping"}, {"type": "hello"}])
    def test_unknown_keys_are_ignored(self, obj):
        extra = {
            **obj,
            "zz_future": [1, {"nested": None}],
            "ключ": "✓",
            "meta_v2": b"\x00\xff",
            "n": 2**64 - 1,
        }
        plain = decode_client_message(msgpack.packb(obj))
        assert not isinstance(plain, Refusal)
        assert decode_client_message(msgpack.packb(extra)) == plain


class TestServerDecode:
    @pytest.mark.parametrize(
        "frame",
        [
            b"\xc1",
            b"\x81\xa4type\xa2\xff\xfe",
            b"\x82\xa4type\xa4pong\xa1x" + deep(),
            b"\x81\xa4type\xa4pong\x00",
        ],
        ids=["bad-opcode", "bad-utf8", "deep-nesting", "trailing"],
    )
    def test_garbage_raises_remote_protocol_error(self, frame):
        with pytest.raises(RemoteProtocolError) as info:
            decode_server_message(frame)
        assert info.value.reason == "malformed"
        assert not isinstance(info.value, msgspec.MsgspecError)

    @pytest.mark.parametrize(
        ("obj", "match"),
        [
            ({"type": "ack"}, "missing required field `id`"),
            ({"type": "nack", "id": "e1"}, "missing required field `error`"),
            ({"type": "status"}, "missing required field `uptime_s`"),
            ({"type": "ping"}, "Invalid value 'ping'"),
        ],
    )
    def test_bad_replies_raise_remote_protocol_error(self, obj, match):
        with pytest.raises(RemoteProtocolError, match=match) as info:
            decode_server_message(msgpack.packb(obj))
        assert info.value.reason == "invalid"


# -- interop with the msgpack package ---------------------------------------------


class TestMsgpackInterop:
    @HYP_MANY
    @given(data=st.data())
    def test_frames_built_with_msgpack_decode(self, data):
        msgs = data.draw(st.lists(client_messages, min_size=1, max_size=6))
        objs = []
        for msg in msgs:
            full = wire_dict(msg)  # optional fields sent explicitly as nil / 0
            keys = data.draw(st.permutations(list(full)))  # "type" need not come first
            if data.draw(st.booleans()):  # or left out when at their default
                defaults = defaults_of(type(msg))
                keys = [k for k in keys if k not in defaults or full[k] != defaults[k]]
            objs.append({k: full[k] for k in keys})
        stream = b"".join(msgpack_frame(o) for o in objs)
        frames = decode_stream(split(stream, data.draw(chunk_sizes)))
        assert [decode_client_message(f) for f in frames] == msgs

    @pytest.mark.parametrize(
        ("classes", "strategies", "table"),
        [
            (CLIENT_CLASSES, CLIENT_STRATEGIES, CLIENT_FIELDS),
            (SERVER_CLASSES, SERVER_STRATEGIES, SERVER_FIELDS),
        ],
        ids=["client", "server"],
    )
    @HYP_MANY
    @given(data=st.data())
    def test_our_frames_read_with_msgpack(self, classes, strategies, table, data):
        msg = data.draw(strategies[data.draw(st.sampled_from(classes))])
        frame = encode_frame(msg)
        (length,) = struct.unpack(">I", frame[:4])
        assert length == len(frame) - 4
        obj = msgpack.unpackb(frame[4:])
        assert type(obj) is dict
        assert obj["type"] == tag(msg)
        required, optional = table[tag(msg)]
        assert required <= set(obj) - {"type"} <= required | optional
        for key, value in obj.items():
            if key != "type":
                expected = getattr(msg, key)
                if isinstance(expected, msgspec.Struct):  # nested (commit_seconds): a map
                    expected = msgspec.structs.asdict(expected)
                assert value == expected
        defaults = defaults_of(type(msg))
        for key in optional - set(obj):
            assert getattr(msg, key) == defaults[key]


# -- spool format v1 ---------------------------------------------------------------


def spool_file(payloads: list[bytes]) -> bytes:
    return SPOOL_MAGIC + b"".join(encode_record(p) for p in payloads)


def boundaries(payloads: list[bytes]) -> list[int]:
    """File offsets where a record ends (the header end included)."""
    out = [len(SPOOL_MAGIC)]
    for p in payloads:
        out.append(out[-1] + 8 + len(p))
    return out


def read_chunked(data: bytes, sizes: list[int]) -> tuple[list[bytes], SpoolTail]:
    reader = SpoolReader()
    records: list[bytes] = []
    for chunk in split(data, sizes):
        reader.receive_data(chunk)
        records.extend(reader.records())
    return records, reader.finish()


def hand_write_spool(objs: list[dict]) -> bytes:
    """A spool file written with msgpack, zlib and struct only."""
    out = b"RLSPOOL1"
    for obj in objs:
        payload = msgpack.packb(obj)
        out += struct.pack(">II", len(payload), zlib.crc32(payload)) + payload
    return out


def hand_read_spool(data: bytes) -> list[dict]:
    """A spool reader written with msgpack, zlib and struct only (strict)."""
    assert data[:8] == b"RLSPOOL1"
    pos, out = 8, []
    while pos < len(data):
        length, crc = struct.unpack_from(">II", data, pos)
        payload = data[pos + 8 : pos + 8 + length]
        assert len(payload) == length
        assert zlib.crc32(payload) == crc
        out.append(msgpack.unpackb(payload))
        pos += 8 + length
    return out


PAYLOADS = [
    encode_frame(m)[4:]
    for m in (
        RunStart(id="e1", ts=1, run="r1", pipeline="people", meta={"host": "h", "pid": 1}),
        StepStart(id="e2", ts=2, run="r1", step="s1", name="dünn 🙂"),
        StepEnd(id="e3", ts=3, run="r1", step="s1", outcome="success", created=10, failed=1),
        ErrorEvent(id="e4", ts=4, run="r1", step_name="x", message="m" * 300, stack="s"),
        RunEnd(id="e5", ts=5, run="r1", outcome="failure"),
    )
]


class TestSpoolReader:
    def test_clean_file(self):
        data = spool_file(PAYLOADS)
        records, tail = read_spool(data)
        assert records == PAYLOADS
        assert tail == SpoolTail("clean", "", len(data))

    @pytest.mark.parametrize("data", [b"", SPOOL_MAGIC], ids=["empty", "header-only"])
    def test_no_records(self, data):
        assert read_spool(data) == ([], SpoolTail("clean", "", len(data)))

    def test_torn_at_every_offset(self):
        data = spool_file(PAYLOADS)
        ends = boundaries(PAYLOADS)
        for cut in range(len(data) + 1):
            records, tail = read_spool(data[:cut])
            complete = [e for e in ends[1:] if e <= cut]
            assert records == PAYLOADS[: len(complete)], cut
            if cut == 0 or cut in ends:
                assert tail.state == "clean", cut
            elif cut < len(SPOOL_MAGIC):
                assert tail == SpoolTail("torn", "header incomplete", 0), cut
            else:
                good = max(e for e in ends if e <= cut)
                assert tail.state == "torn", cut
                assert tail.offset == good
                assert tail.reason == f"{cut - good} bytes of an incomplete record"

    @pytest.mark.parametrize("index", range(len(PAYLOADS)))
    @pytest.mark.parametrize("where", ["crc", "payload-first", "payload-last"])
    def test_crc_mismatch(self, index, where):
        data = bytearray(spool_file(PAYLOADS))
        start = boundaries(PAYLOADS)[index]
        pos = {
            "crc": start + 4,
            "payload-first": start + 8,
            "payload-last": start + 8 + len(PAYLOADS[index]) - 1,
        }[where]
        data[pos] ^= 0x01
        records, tail = read_spool(bytes(data))
        assert records == PAYLOADS[:index]
        assert tail == SpoolTail("corrupt", "record CRC mismatch", start)

    @pytest.mark.parametrize(
        "head",
        [b"rlspool1", b"\x00" * 8, b"RLSPOOL", b"X", b"SQLite format 3\x00"],
        ids=["lowercase", "zeros", "short-but-wrong-next", "one-byte", "sqlite"],
    )
    def test_bad_magic(self, head):
        data = head + (b"" if len(head) >= 8 else b"!") + spool_file(PAYLOADS)[8:]
        records, tail = read_spool(data)
        assert records == []
        assert tail == SpoolTail("corrupt", "not a runtally spool (bad header)", 0)

    def test_another_format_version_says_so(self):
        """Found from outside: an RLSPOOL2 file was "not a runtally spool"."""
        records, tail = read_spool(b"RLSPOOL2" + spool_file(PAYLOADS)[8:])
        assert records == [] and tail.state == "corrupt" and tail.offset == 0
        assert "format '2'" in tail.reason and "RLSPOOL1" in tail.reason

    @pytest.mark.parametrize("prefix", [b"R", b"RLSP", b"RLSPOOL"])
    def test_short_header_prefix_is_torn(self, prefix):
        assert read_spool(prefix) == ([], SpoolTail("torn", "header incomplete", 0))

    @pytest.mark.parametrize("length", [0, MAX_FRAME + 1, 2**32 - 1])
    def test_impossible_record_length(self, length):
        bad_at = boundaries(PAYLOADS)[2]
        data = spool_file(PAYLOADS[:2]) + struct.pack(">II", length, 0) + b"\xc0" * 16
        records, tail = read_spool(data)
        assert records == PAYLOADS[:2]
        assert tail.state == "corrupt"
        assert tail.offset == bad_at
        assert tail.reason == f"record length {length} outside 1..{MAX_FRAME}"

    def test_impossible_length_is_seen_before_the_payload(self):
        reader = SpoolReader()
        reader.receive_data(SPOOL_MAGIC + struct.pack(">II", MAX_FRAME + 1, 0))
        assert reader.records() == []
        assert reader.corrupt is not None
        assert reader.corrupt.state == "corrupt"

    def test_nothing_after_corruption(self):
        data = bytearray(spool_file(PAYLOADS))
        data[boundaries(PAYLOADS)[1] + 8] ^= 0xFF
        reader = SpoolReader()
        reader.receive_data(bytes(data))
        assert reader.records() == PAYLOADS[:1]
        reader.receive_data(spool_file(PAYLOADS)[8:])
        assert reader.records() == []
        assert reader.finish().state == "corrupt"

    def test_one_byte_chunks(self):
        data = spool_file(PAYLOADS)
        assert read_chunked(data, [1]) == read_spool(data)

    @HYP_MANY
    @given(
        payloads=st.lists(st.binary(min_size=1, max_size=300), max_size=8),
        cut=st.integers(0),
        sizes=chunk_sizes,
    )
    def test_chunking_never_matters_for_valid_files(self, payloads, cut, sizes):
        data = spool_file(payloads)
        data = data[: cut % (len(data) + 1)]
        whole = read_spool(data)
        assert read_chunked(data, sizes) == whole
        ends = boundaries(payloads)
        assert whole[0] == payloads[: sum(1 for e in ends[1:] if e <= len(data))]

    @HYP_MANY
    @given(
        data=st.one_of(
            st.binary(max_size=200),
            st.binary(max_size=200).map(lambda b: SPOOL_MAGIC + b),
            st.builds(
                lambda payloads, flips: mutate(spool_file(payloads), flips),
                st.lists(st.binary(min_size=1, max_size=50), max_size=5),
                st.lists(st.tuples(st.integers(0), st.integers(0, 255)), max_size=3),
            ),
        ),
        sizes=chunk_sizes,
    )
    def test_chunking_never_matters_for_garbage(self, data, sizes):
        records, tail = read_spool(data)
        assert read_chunked(data, sizes) == (records, tail)
        assert tail.state in {"clean", "torn", "corrupt"}

    def test_encode_record_refuses_impossible_lengths(self):
        with pytest.raises(LocalProtocolError, match=r"frame length 0 outside"):
            encode_record(b"")
        with pytest.raises(LocalProtocolError, match=rf"frame length {MAX_FRAME + 1} outside"):
            encode_record(b"\0" * (MAX_FRAME + 1))
        assert len(encode_record(b"\0" * MAX_FRAME)) == 8 + MAX_FRAME
        assert issubclass(LocalProtocolError, ProtocolError)
        assert issubclass(FrameError, RemoteProtocolError)
        assert issubclass(ProtocolError, RuntallyError)


class TestSpoolInterop:
    @HYP
    @given(msgs=st.lists(events, max_size=6))
    def test_hand_written_spool_reads_back(self, msgs):
        objs = [wire_dict(m) for m in msgs]
        records, tail = read_spool(hand_write_spool(objs))
        assert tail.state == "clean"
        assert [decode_client_message(r) for r in records] == msgs

    @HYP
    @given(msgs=st.lists(events, max_size=6), sizes=chunk_sizes)
    def test_our_spool_reads_back_by_hand(self, msgs, sizes):
        data = SPOOL_MAGIC + b"".join(encode_record(encode_frame(m)[4:]) for m in msgs)
        objs = hand_read_spool(data)
        assert [o["type"] for o in objs] == [tag(m) for m in msgs]
        for obj, msg in zip(objs, msgs, strict=True):
            assert obj == {k: v for k, v in wire_dict(msg).items() if k in obj}
        assert read_chunked(data, sizes) == (
            [encode_frame(m)[4:] for m in msgs],
            read_spool(data)[1],
        )


# -- docs/protocol.md ----------------------------------------------------------------

_EXAMPLE = re.compile(
    r"<!-- example: (?P<name>[\w-]+) -->\s*```json\n(?P<json>.*?)```\s*```text\n(?P<hex>.*?)```",
    re.DOTALL,
)


def doc_examples() -> dict[str, tuple[str, bytes]]:
    out = {}
    for m in _EXAMPLE.finditer(DOC.read_text(encoding="utf-8")):
        hex_digits = "".join(line.split("#", 1)[0] for line in m["hex"].splitlines())
        out[m["name"]] = (m["json"], bytes.fromhex(hex_digits))
    return out


class TestDocExamples:
    def test_examples_are_there(self):
        assert set(doc_examples()) == {"frame", "reply", "spool"}

    @pytest.mark.parametrize(
        ("name", "union"),
        [("frame", ClientMessage), ("reply", ServerMessage), ("spool", ClientMessage)],
    )
    def test_example_bytes_are_what_the_code_produces(self, name, union):
        text, shown = doc_examples()[name]
        obj = json.loads(text)
        msg = msgspec.convert(obj, union)
        body = encode_frame(msg)[4:]
        # The JSON in the doc shows the keys in the order the encoder writes them.
        assert list(msgpack.unpackb(body)) == list(obj)
        assert msgpack.unpackb(body) == obj
        if name == "spool":
            assert shown == SPOOL_MAGIC + encode_record(body)
            assert read_spool(shown) == ([body], SpoolTail("clean", "", len(shown)))
        else:
            assert shown == encode_frame(msg)
            assert decode_stream([shown]) == [body]


class TestAckFrame:
    """The daemon's ack frames, built from a fixed prefix, are msgspec's bytes exactly."""

    @staticmethod
    def by_hand(event_id: str) -> bytes:
        body = msgpack.packb({"type": "ack", "id": event_id})
        return struct.pack(">I", len(body)) + body

    @given(st.text(min_size=1, max_size=300))
    def test_any_id(self, event_id):
        from runtally.daemon._conn import ack_frame

        assert ack_frame(event_id) == encode_frame(Ack(event_id)) == self.by_hand(event_id)

    # Every str header msgpack has: fixstr up to 31 bytes, str8, str16, str32;
    # "é" is 2 bytes in UTF-8, so characters and bytes differ.
    @pytest.mark.parametrize("size", [1, 31, 32, 255, 256, 65535, 65536])
    @pytest.mark.parametrize("char", ["a", "é"])
    def test_every_str_header(self, size, char):
        from runtally.daemon._conn import ack_frame

        event_id = char * (size // len(char.encode()))
        assert ack_frame(event_id) == encode_frame(Ack(event_id)) == self.by_hand(event_id)
        assert decode_server_message(ack_frame(event_id)[4:]) == Ack(event_id)

    @given(ids=st.lists(st.text(min_size=1, max_size=40), min_size=1, max_size=8), data=st.data())
    def test_a_batch_renders_as_its_frames_one_by_one(self, ids, data):
        from runtally.daemon._conn import Batch, Job, render_replies

        results = [data.draw(st.sampled_from([None, "cannot be applied: x"])) for _ in ids]
        pong = encode_frame(Pong())
        job = Job(results=results)
        entries: list[Any] = []
        for index in range(len(ids)):
            entries += [index, pong] if index % 2 else [index]
        expected = b"".join(
            encode_frame(
                (Ack(ids[e]) if results[e] is None else Nack(ids[e], results[e]))
                if isinstance(e, int)
                else Pong()
            )
            for e in entries
        )
        assert render_replies(Batch(job, entries, ids)) == expected
