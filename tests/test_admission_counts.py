"""Refused connections: the audit rows add up to every refusal.

The row used to say "1 refused in the last minute" after 236 refusals: the
first was reported at once, the rest only if another came a minute later.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import trio
from daemon_helpers import wait_until
from test_replay import start

from runtally.daemon._server import Daemon
from runtally.protocol import ErrorReply, FrameDecoder, decode_server_message, encode_frame


async def _refused(path: Path) -> str:
    stream = await trio.open_unix_socket(str(path))
    decoder = FrameDecoder()
    with trio.fail_after(5):
        while True:
            data = await stream.receive_some(4096)
            assert data, "EOF before the refusal"
            decoder.receive_data(data)
            frame = decoder.next_frame()
            if frame is not None:
                break
    await stream.aclose()
    reply = decode_server_message(frame)
    assert isinstance(reply, ErrorReply), reply
    return reply.error


def _refusals(db: Path) -> list[tuple[str, dict]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT message, data_json FROM audit_log WHERE event = 'connection_refused'"
        ).fetchall()
    finally:
        conn.close()
    return [(m, json.loads(j)) for m, j in rows]


async def test_every_refusal_is_counted_in_the_audit_log(
    short_root: Path, nursery: trio.Nursery
) -> None:
    d: Daemon = await start(short_root, nursery, max_connections_per_uid=1)
    d.admission.report_interval_s = 0.5
    held = await trio.open_unix_socket(str(d.settings.socket))
    await held.send_all(encode_frame({"type": "ping"}))
    with trio.fail_after(5):
        assert await held.receive_some(100)
    refusals = 40
    for _ in range(refusals):
        assert "per uid" in await _refused(d.settings.socket)

    def all_counted() -> list | None:
        rows = _refusals(d.settings.db)
        return rows if sum(data["refused"] for _, data in rows) >= refusals else None

    rows = await trio.to_thread.run_sync(lambda: wait_until(all_counted, what="every refusal"))
    assert sum(data["refused"] for _, data in rows) == refusals
    for message, data in rows:
        assert f"{data['refused']} refused" in message, message
        assert "last minute" not in message, message
    await held.aclose()
    d.request_stop()
