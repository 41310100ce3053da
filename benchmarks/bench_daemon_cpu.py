"""The daemon's own work per event, in one process: decode, apply, commit, render acks.

What one connection's reader, the writer and the sender do for shape (b)
(``bench_shapes.py``), without the socket and the event loop: every run's 27
frames are one read chunk (``Connection._decode_chunk``), ``--chunks`` chunks
are committed together (``apply_jobs``, FULL, as the writer's inline commit
does), and every event's reply is rendered as the sender renders it.  Made
for ``valgrind --tool=callgrind``, whose instruction counts do not depend on
the machine's load: run it for N and 2N runs and divide the difference by
27 N for instructions per event, free of start-up costs.  Prints ONE JSON
object (CPU seconds per event, for a quick look without valgrind).

    .venv/bin/python benchmarks/bench_daemon_cpu.py [--runs 200] [--chunks 3]
    valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.%p \\
        .venv/bin/python benchmarks/bench_daemon_cpu.py --runs 200
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio
from bench_apply import EVENTS_PER_RUN, run_events

from runtally.daemon._batch import apply_jobs
from runtally.daemon._conn import Connection
from runtally.daemon._store import Origin, Store
from runtally.daemon._writer import Job, Writer
from runtally.protocol import Ack, Nack, encode_frame

try:
    from runtally.daemon._conn import render_replies
except ImportError:  # a tree from before render_replies: what its sender did, inline

    def render_replies(batch: Any) -> bytearray:
        out = bytearray()
        ids, results = batch.ids, batch.job.results
        for entry in batch.entries:
            if type(entry) is int:
                reason, event_id = results[entry], ids[entry]
                out += encode_frame(Ack(event_id) if reason is None else Nack(event_id, reason))
            else:
                out += entry
        return out


def chunks(runs: int) -> list[bytes]:
    """One chunk of frames per run, as a client's socket delivers it in shape (b)."""
    return [b"".join(encode_frame(e) for e in run_events(n)) for n in range(runs)]


def drive(store: Store, data: list[bytes], per_commit: int) -> int:
    """Decode, commit and render every chunk; the reply bytes rendered."""
    conn = Connection(None, Origin(pid=4242, uid=1000, start=1), None)  # type: ignore[arg-type]
    out = 0
    for first in range(0, len(data), per_commit):
        batches = [conn._decode_chunk(chunk) for chunk in data[first : first + per_commit]]
        store.changed_underneath()  # as the writer does before every commit
        apply_jobs(store, [batch.job for batch in batches])
        for batch in batches:
            batch.job.drop_payload()
            out += len(render_replies(batch))
    return out


class _Hooks:
    """A daemon's hooks as far as events need them: the real Writer."""

    name = "bench"

    def __init__(self, writer: Writer) -> None:
        self.writer = writer

    async def submit(self, job: Job) -> None:
        await self.writer.submit(job)


async def through_trio(store: Store, data: list[bytes], clients: int) -> int:
    """The daemon's path with its event loop: ``clients`` Connections on socket pairs,
    each client sending one run's chunk and reading its 27 replies before the next
    (as ``close()`` waits in shape (b)), into the real Writer.  The reply bytes read."""
    writer = Writer(store)
    hooks = _Hooks(writer)
    received = 0

    async def client(stream: trio.SocketStream, chunks: list[bytes]) -> None:
        nonlocal received
        for chunk in chunks:
            await stream.send_all(chunk)
            got = 0
            while got < EVENTS_PER_RUN:  # every ack is one 4-byte header + body
                piece = await stream.receive_some(65536)
                received += len(piece)
                got += piece.count(b"\x82\xa4type\xa3ack")
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        async with trio.open_nursery() as conns:
            for index in range(clients):
                a, b = trio.socket.socketpair()
                server = Connection(trio.SocketStream(a), Origin(pid=4242, uid=1000), hooks)  # type: ignore[arg-type]
                conns.start_soon(server.serve)
                conns.start_soon(client, trio.SocketStream(b), data[index::clients])
        writer.close()
    return received


async def _in_trio(fn: Callable[..., int], *args: Any) -> int:
    # A Connection reads trio's clock when made: the work itself awaits nothing.
    return fn(*args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--chunks", type=int, default=3, help="chunks (runs) per commit")
    parser.add_argument(
        "--trio",
        type=int,
        default=0,
        metavar="CLIENTS",
        help="through Connections and the Writer on socket pairs, this many clients at once",
    )
    args = parser.parse_args()
    data = chunks(args.runs)
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(Path(tmp) / "db.sqlite", synchronous="FULL")
        store.set_autocheckpoint(0)
        began = time.process_time()
        if args.trio:
            replied = trio.run(through_trio, store, data, args.trio)
        else:
            replied = trio.run(_in_trio, drive, store, data, args.chunks)
        cpu = time.process_time() - began
        store.close()
    events = args.runs * EVENTS_PER_RUN
    json.dump(
        {
            "runs": args.runs,
            "events": events,
            "mode": f"trio, {args.trio} clients" if args.trio else "in line",
            **({} if args.trio else {"events_per_commit": args.chunks * EVENTS_PER_RUN}),
            "reply_bytes": replied,
            "cpu_us_per_event": round(cpu / events * 1e6, 2),
        },
        sys.stdout,
    )
    print()


if __name__ == "__main__":
    main()
