"""Fault suite: thousands of random and mutated frames against a live daemon process.

Hypothesis (derandomized, bounded) generates whole connection streams: random
bytes, valid frames with mutated bytes (header kept or recomputed), MessagePack
maps with known types and wrongly typed fields, arbitrary MessagePack values,
zero and huge lengths, and frames cut short at EOF.  Each stream goes over its
own connection to the real daemon (a subprocess); the test then reads every
reply until the daemon closes.

The expected replies come from DESIGN.md's table, applied to the byte stream:
the framing rule (4-byte big-endian length, 1..1 MiB, else ``error`` + close)
is implemented here independently; the frame's *content* is classified with
the protocol package's ``decode_client_message`` (the decoder itself is tested
in test_protocol.py; here the subject is the daemon's behaviour around it):
broken body -> ``error`` + close, unknown type -> ``error``, invalid event ->
``nack`` with its id, invalid control -> ``error``, valid event -> ``ack`` (or a
``nack`` from the database), ping/hello/status/replay -> their replies; an
incomplete frame at EOF gets no reply.  Every refusal is one ``dead_letters``
row.  Meanwhile a raw client and a RunTracker pipeline process send valid
traffic on other connections; all of it must be acked and in the database
exactly once, and the daemon must still be alive and answering ping.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
import msgspec
import pytest
from daemon_helpers import RawClient, count, run_events
from fault_helpers import (
    FaultDaemon,
    Pipeline,
    assert_ledger,
    ping,
    reaped,
    status,
    wait_idle,
    wait_spool_drained,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtally.protocol import (
    CONTROL_TYPES,
    EVENT_TYPES,
    MAX_FRAME,
    Ack,
    ErrorEvent,
    ErrorReply,
    FrameDecoder,
    Hello,
    Nack,
    Ping,
    Pong,
    Refusal,
    Replay,
    Replayed,
    RunEnd,
    RunStart,
    Status,
    StatusReply,
    StepEnd,
    StepStart,
    Vacuum,
    Vacuumed,
    Welcome,
    decode_client_message,
    decode_server_message,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)

# -- the oracle: what DESIGN.md says the daemon must answer ------------------------------


@dataclass
class Expected:
    replies: list[tuple[str, str | None]] = field(default_factory=list)  # (kind, event id)
    dead_letters: int = 0  # refusals the protocol layer must store
    closes: bool = False  # a broken frame: the daemon hangs up after its error


def expected_for(data: bytes) -> Expected:
    out = Expected()
    pos = 0
    while len(data) - pos >= 4:
        (length,) = struct.unpack_from(">I", data, pos)
        if not 1 <= length <= MAX_FRAME:
            out.replies.append(("error", None))
            out.dead_letters += 1
            out.closes = True
            return out
        if len(data) - pos - 4 < length:
            break  # cut short at EOF: no reply for it
        frame = data[pos + 4 : pos + 4 + length]
        pos += 4 + length
        msg = decode_client_message(frame)
        if isinstance(msg, Refusal):
            out.dead_letters += 1
            if msg.kind == "invalid" and msg.is_event:
                out.replies.append(("nack", msg.event_id))
            else:
                out.replies.append(("error", None))
            if msg.closes:
                out.closes = True
                return out
        elif isinstance(msg, Ping):
            out.replies.append(("pong", None))
        elif isinstance(msg, Hello):
            out.replies.append(("welcome" if msg.protocol == 1 else "error", None))
        elif isinstance(msg, Status):
            out.replies.append(("status", None))
        elif isinstance(msg, Replay):
            out.replies.append(("replayed", None))
        elif isinstance(msg, Vacuum):
            out.replies.append(("vacuumed", None))
        else:
            out.replies.append(("event", msg.id))
    return out


_KIND = {
    Ack: "ack",
    Nack: "nack",
    ErrorReply: "error",
    Pong: "pong",
    Welcome: "welcome",
    StatusReply: "status",
    Replayed: "replayed",
    Vacuumed: "vacuumed",
}


@dataclass
class Tally:
    examples: int = 0
    dead_letters: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)


def exchange(sock_path: Path, data: bytes, tally: Tally) -> None:
    """Send one stream on a fresh connection, read to EOF, compare with the oracle."""
    want = expected_for(data)
    with RawClient(sock_path, timeout=10) as c:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            c.sock.sendall(data)  # the daemon may hang up before reading it all
        with contextlib.suppress(OSError):
            c.sock.shutdown(socket.SHUT_WR)
        decoder = FrameDecoder()
        raw = bytearray()
        while True:
            try:
                chunk = c.sock.recv(65536)
            except ConnectionResetError:  # it closed with our bytes unread: EOF for us
                break
            if not chunk:
                break
            raw += chunk
        decoder.receive_data(bytes(raw))
        got = [decode_server_message(f) for f in decoder.frames()]
        assert decoder.buffered == 0, "the daemon sent a partial frame"
    kinds = [_KIND[type(r)] for r in got]
    assert len(got) == len(want.replies), (data[:80], want, got)
    for (kind, event_id), reply, got_kind in zip(want.replies, got, kinds, strict=True):
        if kind == "event":  # valid event: committed (ack) or refused by the db (nack)
            assert got_kind in ("ack", "nack"), (data[:80], reply)
            assert reply.id == event_id, (event_id, reply)
            tally.dead_letters += got_kind == "nack"
        else:
            assert got_kind == kind, (data[:80], want, got)
            if kind == "nack":
                assert reply.id == event_id, (event_id, reply)
    tally.examples += 1
    tally.dead_letters += want.dead_letters
    for k in kinds:
        tally.by_kind[k] = tally.by_kind.get(k, 0) + 1


# -- strategies ----------------------------------------------------------------------------

_HEADER = struct.Struct(">I")
ALL_TYPES = sorted(EVENT_TYPES | CONTROL_TYPES)
FIELDS = [
    "id",
    "ts",
    "run",
    "pipeline",
    "club_slug",
    "parent",
    "meta",
    "step",
    "name",
    "outcome",
    "created",
    "updated",
    "skipped",
    "failed",
    "detail",
    "duration_ms",
    "step_name",
    "message",
    "member",
    "stack",
    "summary",
    "protocol",
    "client",
]

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=24)
    | st.binary(max_size=16)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=6) | st.integers(-3, 3), inner, max_size=3)
    ),
    max_leaves=6,
)
uids = st.text(alphabet="fz0123456789-", min_size=1, max_size=10)
names = st.text(min_size=1, max_size=12)
millis = st.integers(min_value=0, max_value=2**41)
counts = st.integers(min_value=0, max_value=1000)
details = st.none() | st.dictionaries(
    st.text(max_size=5), st.integers(-(2**63), 2**63) | st.text(max_size=5)
)

valid_events = st.one_of(
    st.builds(RunStart, id=uids, ts=millis, run=uids, pipeline=names, club_slug=names | st.none()),
    st.builds(StepStart, id=uids, ts=millis, run=uids, step=uids, name=names),
    st.builds(
        StepEnd,
        id=uids,
        ts=millis,
        run=uids,
        step=uids,
        outcome=st.sampled_from(["success", "failure", "skipped"]),
        created=counts,
        failed=counts,
        detail=details,
    ),
    st.builds(ErrorEvent, id=uids, ts=millis, run=uids, step_name=names, message=st.text()),
    st.builds(
        RunEnd, id=uids, ts=millis, run=uids, outcome=st.sampled_from(["success", "failure"])
    ),
)
controls = st.one_of(
    st.just(Ping()),
    st.just(Status()),
    st.builds(Hello, protocol=st.integers(0, 2), client=st.text(max_size=8)),
)
valid_messages = valid_events | controls
# Known (and unknown) types with fields that are right, wrong, or missing.
typed_maps = st.builds(
    lambda kind, fields: {"type": kind, **fields},
    st.sampled_from(ALL_TYPES) | st.text(max_size=8) | scalars,
    st.dictionaries(st.sampled_from(FIELDS), values | uids | millis, max_size=6),
)


def frame(body: bytes) -> bytes:
    return _HEADER.pack(len(body)) + body


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid frame with 1-4 byte-level mutations; its header kept or recomputed."""
    body = bytearray(msgspec.msgpack.encode(draw(valid_messages)))
    original = len(body)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "cut"]))
        i = draw(st.integers(0, max(0, len(body) - 1)))
        if op == "flip" and body:
            body[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and body:
            body[i] = draw(st.sampled_from([0x00, 0xC1, 0xFF, 0x80, 0x90, 0xA0, 0xD9, 0xDF]))
        elif op == "insert":
            body[i:i] = draw(st.binary(min_size=1, max_size=4))
        elif op == "delete" and len(body) > 1:
            del body[i]
        elif op == "cut" and len(body) > 1:
            del body[i + 1 :]
    keep_header = draw(st.booleans())
    header = _HEADER.pack(original if keep_header else len(body))
    return header + bytes(body)


@st.composite
def almost_valid(draw: st.DrawFn) -> bytes:
    """A valid event with one field removed or replaced by an arbitrary value."""
    event = msgspec.to_builtins(draw(valid_events))
    key = draw(st.sampled_from(sorted(event)))
    if key != "id" and draw(st.booleans()):
        del event[key]
    else:
        event[key] = draw(values)
    return frame(msgpack.packb(event, use_bin_type=True))


# Weighted towards frames that do not end the connection, so most pieces of a
# stream are answered; one in about four breaks it (an error, then EOF).
pieces = st.one_of(
    valid_messages.map(lambda m: frame(msgspec.msgpack.encode(m))),
    valid_events.map(lambda m: frame(msgspec.msgpack.encode(m))),
    almost_valid(),
    almost_valid(),
    mutated(),
    typed_maps.map(lambda m: frame(msgpack.packb(m, use_bin_type=True))),
    values.map(lambda v: frame(msgpack.packb(v, use_bin_type=True))),
    st.binary(min_size=1, max_size=40).map(frame),
)


@st.composite
def tails(draw: st.DrawFn) -> bytes:
    """How a stream ends: cleanly, with an impossible length, or cut short at EOF."""
    kind = draw(st.sampled_from(["clean", "clean", "huge", "zero", "cut", "max"]))
    if kind == "huge":
        n = draw(st.integers(MAX_FRAME + 1, 2**32 - 1))
        return _HEADER.pack(n) + draw(st.binary(max_size=8))
    if kind == "zero":
        return _HEADER.pack(0) + draw(st.binary(max_size=8))
    if kind == "cut":
        whole = draw(pieces)
        return whole[: draw(st.integers(1, len(whole) - 1))]
    if kind == "max":  # the largest legal length, never completed
        return _HEADER.pack(MAX_FRAME) + draw(st.binary(max_size=64))
    return b""


streams = st.builds(
    lambda parts, tail: b"".join(parts) + tail, st.lists(pieces, min_size=1, max_size=8), tails()
)


# -- valid traffic alongside -----------------------------------------------------------------


class ValidTraffic(threading.Thread):
    """Runs of real events on one connection, batch by batch, every reply checked."""

    def __init__(self, sock_path: Path) -> None:
        super().__init__(daemon=True)
        self.client = RawClient(sock_path, timeout=10)
        self.stop = threading.Event()
        self.runs: list[str] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for batch in range(2000):  # bounded by count as well as by the stop flag
                if self.stop.is_set():
                    break
                uids = [f"valid-{batch}-{r}" for r in range(5)]
                events = [e for u in uids for e in run_events(u, 2, 1)]
                self.client.send(*events)
                replies = self.client.recv(len(events))
                assert replies == [Ack(e.id) for e in events], replies
                self.runs += uids
                time.sleep(0.02)
        except BaseException as exc:  # reported by the test thread
            self.error = exc
        finally:
            self.client.close()


def test_fuzzed_streams_against_a_live_daemon(short_root: Path) -> None:
    d = FaultDaemon(short_root).start()
    tally = Tally()
    traffic = ValidTraffic(d.socket)
    pipe = Pipeline.spawn(
        short_root, "fault-fuzz", socket_path=d.socket, spool=d.spool, seconds=3.0, max_runs=200
    )
    try:
        with reaped([pipe]):
            traffic.start()
            t0 = time.monotonic()

            @settings(FUZZ, max_examples=1600)
            @given(streams)
            def fuzz_streams(data: bytes) -> None:
                exchange(d.socket, data, tally)

            @settings(FUZZ, max_examples=300)
            @given(st.binary(min_size=1, max_size=200))
            def fuzz_random_bytes(data: bytes) -> None:
                exchange(d.socket, data, tally)

            fuzz_streams()
            fuzz_random_bytes()
            fuzz_s = time.monotonic() - t0
            traffic.stop.set()
            traffic.join(timeout=20)
            assert not traffic.is_alive()
            assert traffic.error is None, traffic.error
            result = pipe.wait(timeout=30)
        assert d.alive(), d.read_log()
        assert ping(d.socket) < 1.0
        wait_spool_drained(d.spool)
        st_ = wait_idle(d.socket)
        assert st_.pid == d.pid  # the same daemon process all along
        # Every refusal is kept, once.  (A parked event that its run's or step's
        # late arrival shows to be wrong is dead-lettered too, as source 'parked'.)
        assert count(d.db, "dead_letters", "source != 'parked'") == tally.dead_letters
        assert count(d.db, "dead_letters", "source NOT IN ('socket', 'parked')") == 0
        # The valid traffic alongside is complete and exact.
        assert len(traffic.runs) >= 50
        marks = ",".join("?" * len(traffic.runs))
        assert count(
            d.db, "runs", f"uid IN ({marks}) AND outcome = 'success'", traffic.runs
        ) == len(traffic.runs)
        assert count(d.db, "runs", "uid LIKE 'valid-%'") == len(traffic.runs)
        assert count(
            d.db, "run_steps", "uid LIKE 'valid-%' AND finished_at IS NOT NULL"
        ) == 2 * len(traffic.runs)
        assert count(d.db, "run_errors", "uid LIKE 'valid-%'") == 2 * len(traffic.runs)
        assert count(d.db, "runs", "uid LIKE 'valid-%' AND total_created = 3") == len(traffic.runs)
        assert_ledger(d.db, [result], ["fault-fuzz"], alone=False)
        assert status(d.socket).connections == 1  # the one asking: the fuzz connections are closed
        rss_kb = int(
            next(
                line.split()[1]
                for line in Path(f"/proc/{d.pid}/status").read_text().splitlines()
                if line.startswith("VmRSS:")
            )
        )
        assert rss_kb < 256 * 1024, rss_kb  # impossible lengths were never allocated
        log = d.read_log()
        assert "Traceback" not in log and "failed" not in log, log[-3000:]
    finally:
        d.ensure_dead()
    print(f"fuzz: {tally.examples} streams, {tally} in {fuzz_s:.1f}s")
    assert tally.examples == 1900
    assert sum(tally.by_kind.values()) >= 4000  # thousands of frames answered (~5,300)
    for kind in ("ack", "nack", "error", "pong", "welcome", "status"):
        assert tally.by_kind.get(kind, 0) > 0, (kind, tally.by_kind)
