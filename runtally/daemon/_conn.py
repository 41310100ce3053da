"""One client connection: read big chunks, decode every frame, reply in order.

Theory of operation
-------------------
Two tasks per connection.  The *reader* reads up to 16 KiB at a time, decodes
every complete frame in it with the sans-IO decoder, puts the chunk's events
into one writer Job and queues a ``Batch``: the chunk's replies in order
(events by index into the job, ready-made replies as bytes, slow ones as
callables).  The *sender* takes batches in order, waits for the job's COMMIT,
renders every reply of the batch and writes them with one ``send_all``.  So a
``ping`` sent after 1,000 events is answered after their 1,000 acks, and no
ack leaves before its commit.

====================  ==============================================
reader sees           reply (after the batch's commit)
====================  ==============================================
valid event           ack (or nack if the db refuses it)
invalid event         nack with the reason; frame to dead_letters
unknown/invalid type  error; frame to dead_letters
hello/ping/status     welcome/pong/status
replay                replayed (admins only, else error)
pause/resume          pipeline_paused (admins only, else error)
vacuum                vacuumed (admins only, else error)
broken frame          error; frame to dead_letters; connection closed
EOF                   remaining replies sent, connection closed
no complete frame     idle: closed; mid-frame: error, then closed
  for idle_timeout_s
evicted (budget)      error, then closed
====================  ==============================================

Backpressure: the batch queue per connection is small, and the writer's
``submit`` blocks when its budget is spent, so a client that floods or never
reads its replies stops being read.

Memory: what the decoder buffers of an incomplete frame counts against the
daemon's ``PartialBudget`` after every read; over it, the connections that
have gone longest without completing a frame are evicted.  The idle timeout
runs from the last *complete* frame (or from the end of the daemon's own wait
on the writer), not from the last byte: a client trickling a byte a second
never completes one and is closed like an idle one (slowloris).
"""

from __future__ import annotations

import functools
import math
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import msgspec
import trio

from ..protocol import (
    PROTOCOL_VERSION,
    Ack,
    Dropped,
    ErrorReply,
    FrameDecoder,
    Hello,
    Nack,
    Pause,
    Ping,
    Pong,
    Refusal,
    Replay,
    Resume,
    RunEnd,
    RunStart,
    Status,
    StepEnd,
    StepStart,
    Vacuum,
    Welcome,
    decode_client_messages,
    encode_frame,
    encode_message,
)
from ..protocol import ErrorEvent as ErrorEventMsg
from ._budget import PartialBudget
from ._store import DeadLetter, Origin
from ._timefmt import now_ms
from ._writer import Job

__all__ = ["Batch", "Connection", "ServerHooks", "ack_frame", "render_replies"]

#: Bytes per read.  A reader that waits for room in the writer's queue holds
#: its last read's decoded events meanwhile, outside the queue's budget: with
#: 32 connections at 64 KiB that was ~8,000 events and the daemon's peak RSS
#: over 48 MB under sustained load.  A pipeline's events come a few at a time
#: (~25 per read in shape b), so the smaller read costs them nothing.
_READ_SIZE = 16384
_MAX_PENDING_BATCHES = 8
_EVENT_TYPES = (RunStart, StepStart, StepEnd, ErrorEventMsg, RunEnd, Dropped)
_PONG = encode_frame(Pong())
#: An ``Ack`` body up to its id: ``{"type": "ack", "id": `` as msgspec encodes it
#: (the tag first, then the one field).  What follows is the id as MessagePack.
_ACK_HEAD = encode_message(Ack(""))[:-1]
_encode = msgspec.msgpack.Encoder().encode
_pack_length = struct.Struct(">I").pack


def ack_frame(event_id: str) -> bytes:
    """``encode_frame(Ack(event_id))``, byte for byte, without building the Struct.

    One per event committed, so it is worth the fixed prefix: the id is
    encoded by msgspec itself (the same str header it would choose).
    """
    body = _ACK_HEAD + _encode(event_id)
    return _pack_length(len(body)) + body


#: A reply rendered when its turn comes (after the commit of the events before it).
Render = Callable[[], Awaitable[bytes]]


@dataclass(slots=True)
class Batch:
    """The replies owed for one chunk read, in order, and the job they wait on."""

    job: Job
    #: Per reply: an index into the job's events (ack/nack), ready bytes, or a Render.
    entries: list[int | bytes | Render] = field(default_factory=list)
    #: The id of each of the job's events (the job drops its events once committed).
    ids: list[str] = field(default_factory=list)
    #: Close the connection once these replies are sent (a broken frame).
    close: bool = False
    #: Some entries are Renders, to be awaited before ``render_replies``.
    renders: bool = False


def render_replies(batch: Batch) -> bytes:
    """Every reply of a committed ``batch``, in order, as the bytes to send.

    Its Renders must have been replaced by their bytes already (``_sender``).
    """
    ids, results = batch.ids, batch.job.results
    out: list[bytes] = []
    for entry in batch.entries:
        if type(entry) is int:
            if results[entry] is None:
                out.append(ack_frame(ids[entry]))
            else:
                out.append(encode_frame(Nack(ids[entry], results[entry])))
        else:
            out.append(entry)  # type: ignore[arg-type]  # bytes: Renders are gone
    return b"".join(out)


class ServerHooks(Protocol):
    """What a connection needs from the daemon (kept narrow for testing)."""

    #: The server's name and version in ``welcome`` replies ("runtallyd/1.2.3").
    name: str

    async def submit(self, job: Job) -> None:
        """Queue ``job`` for the writer; blocks while its queue is full (backpressure)."""
        ...

    def status_frame(self) -> bytes:
        """The encoded ``status`` reply, as of now."""
        ...

    async def run_replay(self, origin: Origin) -> bytes:
        """Replay the spool for ``origin`` (admins only); the encoded reply."""
        ...

    async def run_pause(self, origin: Origin, pipeline: str, paused: bool) -> bytes:
        """Pause or resume ``pipeline`` for ``origin`` (admins only); the encoded reply."""

    async def run_vacuum(self, origin: Origin) -> bytes:
        """Compact the database for ``origin`` (admins only); the encoded reply."""
        ...


class Connection:
    """Serves one accepted stream until EOF, a broken frame, idle time, eviction or shutdown.

    ``idle_timeout_s``: the longest the client may go without completing a
    frame.  ``budget``: the daemon-wide budget for incomplete frames (None:
    unbounded, for tests of other things).
    """

    def __init__(
        self,
        stream: trio.SocketStream,
        origin: Origin,
        hooks: ServerHooks,
        *,
        idle_timeout_s: float = math.inf,
        budget: PartialBudget | None = None,
    ) -> None:
        self.stream = stream
        self.origin = origin
        self.hooks = hooks
        self.idle_timeout_s = idle_timeout_s
        self.budget = budget
        #: Bytes of an incomplete frame buffered, as last told to the budget.
        self.partial_bytes = 0
        self._stopping = False
        #: Why the budget evicted this connection (its buffer is already dropped).
        self._evicted: str | None = None
        self._read_scope: trio.CancelScope | None = None
        self._decoder = FrameDecoder()
        #: trio time of the last complete frame (or of the end of our own wait).
        self._progress_at = trio.current_time()

    def stop_reading(self) -> None:
        """Shutdown: finish replies for what was read, read nothing more."""
        self._stopping = True
        if self._read_scope is not None:
            self._read_scope.cancel()

    def evict(self, reason: str) -> None:
        """Over the partial-frame budget: drop the buffer now, reply ``reason``, close.

        Called by the budget (already released); the replies owed for what
        was read before are still sent first.
        """
        self._evicted = reason
        self._decoder = FrameDecoder()  # the bytes go now, not when the reader wakes
        if self._read_scope is not None:
            self._read_scope.cancel()

    async def serve(self) -> None:
        """Read, commit and reply until EOF, a broken frame, idle time or ``stop_reading``."""
        send, receive = trio.open_memory_channel[Batch](_MAX_PENDING_BATCHES)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._sender, receive)
                async with send:
                    await self._reader(send)
        finally:
            if self.budget is not None:
                self.budget.release(self)
            with trio.CancelScope(shield=True):
                await self.stream.aclose()

    # -- reading --------------------------------------------------------------------

    async def _reader(self, batches: trio.MemorySendChannel[Batch]) -> None:
        while not self._stopping:
            data = b"" if self._evicted is not None else await self._receive()
            if self._evicted is not None:
                await batches.send(self._goodbye(self._evicted))
                return
            if not data:
                if self._decoder.buffered and self._timed_out():
                    # Timed out mid-frame: say so (a silent idle client just gets EOF).
                    reason = f"no complete frame for {self.idle_timeout_s:g} s; closing"
                    await batches.send(self._goodbye(reason))
                return  # EOF, idle, or shutdown
            batch = self._decode_chunk(data)
            if self.budget is not None:
                self.budget.update(self, self._decoder.buffered, progressed=bool(batch.entries))
            if not batch.entries:
                continue  # part of a frame: nothing to reply yet, no progress
            if not batch.job.empty:
                await self.hooks.submit(batch.job)
            else:
                batch.job.done.set()
            try:
                # No trip through the scheduler when there is room (the rule):
                # the next receive_some is this loop's checkpoint.
                batches.send_nowait(batch)
            except trio.WouldBlock:
                await batches.send(batch)
            # A frame completed; and time spent waiting on the writer or on our
            # own send queue is ours, not the client's.
            self._progress_at = trio.current_time()
            if batch.close:
                return

    async def _receive(self) -> bytes:
        """The next chunk; b"" on EOF, a broken stream, idle timeout or cancellation."""
        deadline = self._progress_at + self.idle_timeout_s
        try:
            with trio.CancelScope(deadline=deadline) as self._read_scope:
                return await self.stream.receive_some(_READ_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self._read_scope = None
        return b""

    def _timed_out(self) -> bool:
        return trio.current_time() >= self._progress_at + self.idle_timeout_s

    def _goodbye(self, reason: str) -> Batch:
        """A batch of one ``error`` reply that closes the connection once sent."""
        batch = Batch(Job(origin=self.origin), [encode_frame(ErrorReply(reason))], close=True)
        batch.job.done.set()
        return batch

    def _decode_chunk(self, data: bytes) -> Batch:
        job = Job(origin=self.origin)
        batch = Batch(job)
        events, frames, entries, ids = job.events, job.frames, batch.entries, batch.ids
        decoder = self._decoder
        frames_in, error = decoder.drain(data)
        for frame, message in zip(frames_in, decode_client_messages(frames_in), strict=True):
            if isinstance(message, _EVENT_TYPES):
                entries.append(len(events))
                events.append(message)
                frames.append(frame)
                ids.append(message.id)
            elif isinstance(message, Refusal):
                self._refuse(
                    batch,
                    frame,
                    message.reason,
                    message.event_id,
                    nack=message.is_event,
                    close=message.closes,
                )
                if message.closes:
                    break
            elif isinstance(message, Ping):
                entries.append(_PONG)
            elif isinstance(message, Hello):
                entries.append(self._welcome(message))
            elif isinstance(message, Status):
                entries.append(self._status)  # rendered after the events before it commit
                batch.renders = True
            elif isinstance(message, Replay):
                entries.append(functools.partial(self.hooks.run_replay, self.origin))
                batch.renders = True
            elif isinstance(message, Pause | Resume):
                paused = isinstance(message, Pause)
                run = self.hooks.run_pause
                entries.append(functools.partial(run, self.origin, message.pipeline, paused))
                batch.renders = True
            elif isinstance(message, Vacuum):
                entries.append(functools.partial(self.hooks.run_vacuum, self.origin))
                batch.renders = True
        else:
            if error is not None:
                self._refuse(batch, decoder.head(), str(error), close=True)
        return batch

    async def _status(self) -> bytes:
        return self.hooks.status_frame()

    def _welcome(self, hello: Hello) -> bytes:
        if hello.protocol != PROTOCOL_VERSION:
            return encode_frame(
                ErrorReply(
                    f"unsupported protocol version {hello.protocol}; "
                    f"this daemon speaks {PROTOCOL_VERSION}"
                )
            )
        return encode_frame(Welcome(PROTOCOL_VERSION, self.hooks.name))

    def _refuse(
        self,
        batch: Batch,
        frame: bytes,
        reason: str,
        event_id: str | None = None,
        *,
        nack: bool = False,
        close: bool = False,
    ) -> None:
        batch.job.dead_letters.append(DeadLetter(frame, reason, event_id, self.origin, now_ms()))
        reply = Nack(event_id, reason) if nack else ErrorReply(reason)
        batch.entries.append(encode_frame(reply))
        batch.close = batch.close or close

    # -- replying ---------------------------------------------------------------------

    async def _sender(self, batches: trio.MemoryReceiveChannel[Batch]) -> None:
        async with batches:
            async for batch in batches:
                if not batch.job.done.is_set():  # else no trip through the scheduler
                    await batch.job.done.wait()  # (send_all below is the checkpoint)
                if batch.renders:
                    # In order, each after the replies before it are due (a status
                    # after the commit of the events sent before it).
                    entries = batch.entries
                    for index, entry in enumerate(entries):
                        if not isinstance(entry, int | bytes):
                            entries[index] = await entry()
                out = render_replies(batch)
                try:
                    await self.stream.send_all(out)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    # The client left; what it sent is committed regardless, and
                    # it spools whatever it saw no ack for.  Keep draining so the
                    # reader is never blocked on a full queue.
                    continue
                if batch.close:
                    return
