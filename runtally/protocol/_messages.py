"""Protocol v1 messages as tagged msgspec Structs.

Every message is a MessagePack map with a string ``"type"`` tag; msgspec does
the type checking and the range checks declared here, so a bad event is
refused with a message that names the offending field (``at `$.run```).
Unknown keys are ignored (schema evolution: new fields get defaults and go
last).  Client-to-daemon and daemon-to-client messages are separate unions,
because ``status`` is a tag in both directions.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

__all__ = [
    "MAX_MESSAGE",
    "MAX_STACK",
    "PROTOCOL_VERSION",
    "Ack",
    "ClientMessage",
    "Control",
    "ErrorEvent",
    "ErrorReply",
    "Event",
    "Hello",
    "Nack",
    "Ping",
    "Pong",
    "Replay",
    "Replayed",
    "RunEnd",
    "RunStart",
    "ServerMessage",
    "Status",
    "StatusReply",
    "StepEnd",
    "StepStart",
    "Welcome",
]

PROTOCOL_VERSION = 1
#: Seed tracker truncation: error_message to 2000, error_stack to 4000 chars.
MAX_MESSAGE = 2000
MAX_STACK = 4000

Uid = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
#: Epoch milliseconds between 1970 and the end of year 9999.
Millis = Annotated[int, msgspec.Meta(ge=0, le=253_402_300_799_999)]
Count = Annotated[int, msgspec.Meta(ge=0, le=2**62)]
Duration = Annotated[int, msgspec.Meta(ge=0, le=2**62)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]


class _Msg(msgspec.Struct, tag_field="type", omit_defaults=True, frozen=True, gc=False):
    """Base: MessagePack map, ``type`` tag, optional fields left out when unset.

    ``gc=False``: messages are not tracked by the cyclic garbage collector.
    The daemon holds tens of thousands of decoded events in its queue, and
    every collection walked all of them (8-10% of its CPU).  Safe because a
    message never takes part in a reference cycle: its fields are decoded
    from MessagePack, or built by the client from plain copies
    (``_coerce.plain``), and nothing refers back to a message.
    """


# -- control messages (client -> daemon) ---------------------------------------


# ``protocol`` is always sent: its default is this build's version, so leaving
# it out when equal to the default would mean different things to v1 and v2.
class Hello(_Msg, tag="hello", omit_defaults=False):
    protocol: int = PROTOCOL_VERSION
    client: str = ""


class Ping(_Msg, tag="ping"):
    pass


class Status(_Msg, tag="status"):
    pass


class Replay(_Msg, tag="replay"):
    pass


# -- events (client -> daemon); ``id`` is the idempotency key -------------------


class RunStart(_Msg, tag="run_start"):
    id: Uid
    ts: Millis
    run: Uid
    pipeline: Name
    club_slug: Name | None = None
    parent: Uid | None = None
    meta: dict[str, Any] | None = None


class StepStart(_Msg, tag="step_start"):
    id: Uid
    ts: Millis
    run: Uid
    step: Uid
    name: Name


class StepEnd(_Msg, tag="step_end"):
    id: Uid
    ts: Millis
    run: Uid
    step: Uid
    outcome: Literal["success", "failure", "skipped"]
    created: Count = 0
    updated: Count = 0
    skipped: Count = 0
    failed: Count = 0
    detail: Any = None
    duration_ms: Duration | None = None


class ErrorEvent(_Msg, tag="error"):
    id: Uid
    ts: Millis
    run: Uid
    step_name: Name
    message: str
    step: Uid | None = None
    member: str | None = None
    stack: str | None = None


class RunEnd(_Msg, tag="run_end"):
    id: Uid
    ts: Millis
    run: Uid
    outcome: Literal["success", "failure"]
    summary: Any = None
    duration_ms: Duration | None = None


Event = RunStart | StepStart | StepEnd | ErrorEvent | RunEnd
Control = Hello | Ping | Status | Replay
ClientMessage = Event | Control

EVENT_TYPES: frozenset[str] = frozenset(
    t.__struct_config__.tag for t in (RunStart, StepStart, StepEnd, ErrorEvent, RunEnd)
)
CONTROL_TYPES: frozenset[str] = frozenset(
    t.__struct_config__.tag for t in (Hello, Ping, Status, Replay)
)


# -- replies (daemon -> client) -------------------------------------------------


class Welcome(_Msg, tag="welcome", omit_defaults=False):
    protocol: int = PROTOCOL_VERSION
    server: str = ""


class Pong(_Msg, tag="pong"):
    pass


class StatusReply(_Msg, tag="status"):
    uptime_s: float
    events_committed: int
    queue_depth: int
    schema_version: int
    db_path: str
    connections: int = 0
    spool_files: int = 0
    version: str = ""
    pid: int = 0
    last_commit_ts: int | None = None
    # The writer's health (issue 11): WAL size in bytes, parked events (count,
    # payload bytes, oldest parked_at in ms, expired since start), seconds the
    # commits have been failing and why, and what the daemon itself finds
    # wrong: one line each with the fix; ``runtally status`` fails on any.
    wal_bytes: int = 0
    parked: int = 0
    parked_bytes: int = 0
    parked_oldest_ts: int | None = None
    parked_expired: int = 0
    failing_s: float | None = None
    failing_reason: str = ""
    problems: list[str] = msgspec.field(default_factory=list)  # strings only: no cycles (gc=False)


class Replayed(_Msg, tag="replayed"):
    files: int
    events: int
    quarantined: int


class Ack(_Msg, tag="ack"):
    id: str


class Nack(_Msg, tag="nack"):
    id: str | None
    error: str


class ErrorReply(_Msg, tag="error"):
    error: str


ServerMessage = Welcome | Pong | StatusReply | Replayed | Ack | Nack | ErrorReply
