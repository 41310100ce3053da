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
    "MAX_COUNT",
    "MAX_MESSAGE",
    "MAX_NAME",
    "MAX_STACK",
    "MAX_UID",
    "PROTOCOL_VERSION",
    "Ack",
    "ClientMessage",
    "CommitHistogram",
    "Control",
    "Dropped",
    "ErrorEvent",
    "ErrorReply",
    "Event",
    "Hello",
    "Nack",
    "Pause",
    "Ping",
    "PipelinePaused",
    "Pong",
    "Replay",
    "Replayed",
    "Resume",
    "RunEnd",
    "RunStart",
    "ServerMessage",
    "Status",
    "StatusReply",
    "StepEnd",
    "StepStart",
    "Vacuum",
    "Vacuumed",
    "Welcome",
    "stack_tail",
]

#: The version a ``hello``/``welcome`` carries; v1 is the only one so far.
PROTOCOL_VERSION = 1
#: Seed tracker truncation: error_message to 2000, error_stack to 4000 chars.
MAX_MESSAGE = 2000
MAX_STACK = 4000
#: A uid (event, run, step, parent) is 1 to MAX_UID characters.
MAX_UID = 128
#: A pipeline, step or club name is 1 to MAX_NAME characters.
MAX_NAME = 256
#: Counts and durations are integers from 0 to MAX_COUNT (SQLite's INTEGER is 64-bit).
MAX_COUNT = 2**62


def stack_tail(text: str, limit: int = MAX_STACK) -> str:
    """``text`` cut to ``limit`` characters keeping the end, marked by a leading ``...``.

    A traceback's or a stderr tail's last lines (the innermost frame, the
    message, the final error) matter most, so the start is what goes.
    """
    return text if len(text) <= limit else "..." + text[-(limit - 3) :]


Uid = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_UID)]
#: Epoch milliseconds between 1970 and the end of year 9999.
Millis = Annotated[int, msgspec.Meta(ge=0, le=253_402_300_799_999)]
Count = Annotated[int, msgspec.Meta(ge=0, le=MAX_COUNT)]
Duration = Annotated[int, msgspec.Meta(ge=0, le=MAX_COUNT)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_NAME)]


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
    """Optional greeting; the daemon answers ``Welcome``.

    Fields: ``protocol``, the version the client speaks (int, always sent);
    ``client``, a free-form name and version of the client, for logs.
    """

    protocol: int = PROTOCOL_VERSION
    client: str = ""


class Ping(_Msg, tag="ping"):
    """Liveness check; the daemon answers ``Pong``."""


class Status(_Msg, tag="status"):
    """Ask for the daemon's ``StatusReply``."""


class Replay(_Msg, tag="replay"):
    """Ask the daemon to replay the spool directory now; it answers ``Replayed``."""


class Pause(_Msg, tag="pause"):
    """Admin: stop judging ``pipeline`` (state ``paused``, no alerts).

    Answered ``PipelinePaused``.
    """

    pipeline: Name


class Resume(_Msg, tag="resume"):
    """Admin: judge ``pipeline`` again after a ``Pause``; answered ``PipelinePaused``."""

    pipeline: Name


class Vacuum(_Msg, tag="vacuum"):
    """Ask the daemon (admins only) to compact the database now; it answers ``Vacuumed``."""


# -- events (client -> daemon); ``id`` is the idempotency key -------------------


class RunStart(_Msg, tag="run_start"):
    """A pipeline run began.

    Fields: ``id``, this event's uid (the idempotency key, 1-128 chars);
    ``ts``, when, in Unix epoch milliseconds on the client's clock; ``run``,
    the new run's uid; ``pipeline``, its name (1-256 chars); ``club_slug``,
    the club it ran for (1-256 chars) or None; ``parent``, the uid of the run
    that started this one, or None; ``meta``, free-form facts (pid, host,
    user, argv, git_sha) or None.
    """

    id: Uid
    ts: Millis
    run: Uid
    pipeline: Name
    club_slug: Name | None = None
    parent: Uid | None = None
    meta: dict[str, Any] | None = None


class StepStart(_Msg, tag="step_start"):
    """A step of a run began.

    Fields: ``id``, this event's uid; ``ts``, epoch milliseconds; ``run``,
    the run's uid; ``step``, the new step's uid; ``name``, the step's name
    (1-256 chars).
    """

    id: Uid
    ts: Millis
    run: Uid
    step: Uid
    name: Name


class StepEnd(_Msg, tag="step_end"):
    """A step finished.

    Fields: ``id``, this event's uid; ``ts``, epoch milliseconds; ``run``
    and ``step``, the uids it belongs to; ``outcome``; ``created``,
    ``updated``, ``skipped``, ``failed``, counts of records (0 to 2**62);
    ``detail``, free-form data for the dashboard or None; ``duration_ms``,
    the step's length in milliseconds measured on the client's monotonic
    clock, or None when the client did not see it start.
    """

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
    """One error row of a run (wire tag ``error``).

    Fields: ``id``, this event's uid; ``ts``, epoch milliseconds; ``run``,
    the run's uid; ``step_name``, the step it happened in (1-256 chars, the
    tracker uses ``(run)`` outside steps); ``message``, the text (the tracker
    cuts it to MAX_MESSAGE chars); ``step``, the step's uid or None;
    ``member``, what the error is about (a member id, an email) or None;
    ``stack``, a traceback (cut to MAX_STACK chars) or None.
    """

    id: Uid
    ts: Millis
    run: Uid
    step_name: Name
    message: str
    step: Uid | None = None
    member: str | None = None
    stack: str | None = None


class RunEnd(_Msg, tag="run_end"):
    """A pipeline run finished.

    Fields: ``id``, this event's uid; ``ts``, epoch milliseconds; ``run``,
    the run's uid; ``outcome``; ``summary``, free-form data or None;
    ``duration_ms``, the run's length in milliseconds on the client's
    monotonic clock, or None.
    """

    id: Uid
    ts: Millis
    run: Uid
    outcome: Literal["success", "failure"]
    summary: Any = None
    duration_ms: Duration | None = None


class Dropped(_Msg, tag="dropped"):
    """A client lost events of a run (its spool's disk was full); sent once space is back.

    Fields: ``id``, this event's uid; ``ts``, epoch milliseconds (when the
    loss was reported); ``run``, the run whose events were lost; ``events``,
    how many (1 to 2**62).  The daemon closes the run as ``failure`` with the
    error row "<events> events were lost: spool disk full".  A run whose
    ``run_start`` was among the lost events has no row: the marker is parked
    like any event waiting for its run.
    """

    id: Uid
    ts: Millis
    run: Uid
    events: Annotated[int, msgspec.Meta(ge=1, le=MAX_COUNT)]


#: What a pipeline records: each has an ``id`` (idempotency key) and a ``ts``.
Event = RunStart | StepStart | StepEnd | ErrorEvent | RunEnd | Dropped
#: Requests that are not events: answered, never stored.
Control = Hello | Ping | Status | Replay | Pause | Resume | Vacuum
#: Everything a client may send.
ClientMessage = Event | Control

#: The ``type`` tags of events and of control messages, for classifying raw maps.
EVENT_TYPES: frozenset[str] = frozenset(
    t.__struct_config__.tag for t in (RunStart, StepStart, StepEnd, ErrorEvent, RunEnd, Dropped)
)
CONTROL_TYPES: frozenset[str] = frozenset(
    t.__struct_config__.tag for t in (Hello, Ping, Status, Replay, Pause, Resume, Vacuum)
)


# -- replies (daemon -> client) -------------------------------------------------


class Welcome(_Msg, tag="welcome", omit_defaults=False):
    """Reply to ``Hello``: ``protocol``, the daemon's version; ``server``, its name."""

    protocol: int = PROTOCOL_VERSION
    server: str = ""


class Pong(_Msg, tag="pong"):
    """Reply to ``Ping``."""


class CommitHistogram(msgspec.Struct, frozen=True, gc=False):
    """Durations of the daemon's commits since it started, as histogram buckets.

    ``le``: the buckets' upper bounds in seconds, ascending; ``counts``: the
    commits in each bucket, not cumulative, one more than ``le`` (the last is
    +Inf); ``sum_s``: their total in seconds; ``max_s``: the longest.
    """

    le: list[float]
    counts: list[int]
    sum_s: float = 0.0
    max_s: float = 0.0


class StatusReply(_Msg, tag="status"):
    """Reply to ``Status``: the daemon's health.

    Fields: ``uptime_s``, seconds since it started; ``events_committed``,
    events the writer committed since it started (applied, parked, or found
    already there: a client's resend after a lost ack counts again; refused
    ones do not), each event of a spool file counted once however many
    passes it takes to remove the file; ``queue_depth``, events received but
    not yet committed; ``schema_version``, the database's migration level;
    ``db_path``, the database file (bytes that are not UTF-8 shown as
    ``\\xNN``, as in every string here); ``connections``, open client
    connections; ``spool_files``, spool files waiting for replay;
    ``version``, the daemon's package version; ``pid``, its process id;
    ``last_commit_ts``, the last commit in epoch milliseconds, or None;
    ``spool_problem``, why the spool directory is refused (nothing is
    replayed from it), or None.
    ``alert_failures``, alert channel -> its last delivery failure (cleared
    by its next success).
    ``commit_seconds``, the commits' durations as a histogram, or None
    from a daemon that does not send it.
    """

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
    spool_problem: str | None = None
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
    alert_failures: dict[str, str] | None = None
    commit_seconds: CommitHistogram | None = None


class Replayed(_Msg, tag="replayed"):
    """Reply to ``Replay``: ``files`` replayed, ``events`` applied, ``quarantined`` files."""

    files: int
    events: int
    quarantined: int
    # What the daemon replayed since it started, this replay included (0: an older daemon).
    total_files: int = 0
    total_events: int = 0
    total_quarantined: int = 0


class PipelinePaused(_Msg, tag="pipeline_paused", omit_defaults=False):
    """Reply to ``Pause``/``Resume``: ``pipeline`` is now ``paused`` (True) or not."""

    pipeline: str
    paused: bool


class Vacuumed(_Msg, tag="vacuumed"):
    """Reply to ``Vacuum``: what the compaction did.

    ``method``: "vacuum" or "incremental_vacuum" (when the database's
    auto_vacuum is incremental); ``bytes_before``/``bytes_after``: the
    database file plus its WAL, in bytes; ``seconds``: how long the writer
    was busy with it (events waited in the queue meanwhile);
    ``wal_truncated``: False when a reader kept the WAL from being emptied.
    """

    method: str
    bytes_before: int
    bytes_after: int
    seconds: float
    wal_truncated: bool = True


class Ack(_Msg, tag="ack"):
    """The event ``id`` is committed (or was already: duplicates are acked)."""

    id: str


class Nack(_Msg, tag="nack"):
    """The event ``id`` was refused for good (``error`` says why) and kept in dead_letters.

    ``id`` is None when the refused frame had no usable id; it answers the
    oldest unanswered event all the same (replies come in send order).
    """

    id: str | None
    error: str


class ErrorReply(_Msg, tag="error"):
    """The daemon could not read a frame or a control message; ``error`` says why."""

    error: str


#: Everything the daemon sends: exactly one reply per client message, in order.
ServerMessage = (
    Welcome | Pong | StatusReply | Replayed | PipelinePaused | Vacuumed | Ack | Nack | ErrorReply
)
