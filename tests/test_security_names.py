"""Text from outside in the daemon's own records: non-UTF-8 names and paths, counts.

Each case was found by an outside attacker; each test failed before the fix.
A spool file whose name is not UTF-8 used to make the daemon's audit row for
it unwritable, which the writer took for a broken database: nothing was acked
for anyone, and after a minute the daemon exited (and again after each
restart, the file still there).
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

from daemon_helpers import DaemonProcess, RawClient, count, run_events, wait_until
from test_replay import write_spool

from runtally.cli._health import collect

#: The attacker's names: a lone byte, a terminal escape (title, clear screen)
#: with a byte, and a byte in an otherwise ordinary name.
EMPTY = b"\xff.spool"
ESCAPES = b"9-h-9-\x1b]0;PWN\x07\x1b[2J\xff.spool"
VALID = b"9-h-9-\xfe.spool"


def audit_rows(db: Path) -> list[tuple[str, str, str | None]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT event, message, data_json FROM audit_log").fetchall()
    finally:
        conn.close()


def spool_entries(spool: Path) -> set[bytes]:
    return {n for n in os.listdir(os.fsencode(spool)) if n.endswith(b".spool")}


def test_non_utf8_spool_names_are_replayed_or_quarantined_and_nothing_stops(
    short_root: Path,
) -> None:
    spool = short_root / "spool"
    spool.mkdir(mode=0o750)
    raw = os.fsencode(spool)
    with open(os.path.join(raw, EMPTY), "wb"):
        pass
    with open(os.path.join(raw, ESCAPES), "wb") as fh:
        fh.write(b"NOTSPOOL" + b"\0" * 20)
    write_spool(Path(os.fsdecode(os.path.join(raw, VALID))), run_events("names", 1, 0))
    d = DaemonProcess(short_root).start()
    try:
        wait_until(lambda: not spool_entries(spool), what="every odd name handled")
        wait_until(lambda: count(d.db, "runs", "uid = 'names'") == 1, what="the valid file's run")
        wait_until(
            lambda: count(d.db, "audit_log", "event = 'spool_replayed'") >= 1, what="replayed row"
        )
        rows = audit_rows(d.db)
        text = " ".join(f"{m} {j}" for _, m, j in rows)
        assert "9-h-9-\\xfe.spool" in text, text  # the byte, shown as the four characters \\xfe
        assert "\x1b" not in text and "\x07" not in text  # no terminal control stored
        assert not any(e == "records_dropped" for e, _, _ in rows), rows
        sources = sqlite3.connect(f"file:{d.db}?mode=ro", uri=True).execute(
            "SELECT source FROM dead_letters"
        )
        assert all("\x1b" not in s for (s,) in sources)
        report = collect(d.socket, d.db, spool)
        assert report.problems == [], report.problems
        log = d.read_log()
        assert "database cannot be written" not in log, log
        assert "\x1b" not in log, log
        # The corrupt one is in corrupt/ under its own (byte) name.
        assert ESCAPES in os.listdir(os.path.join(raw, b"corrupt"))
    finally:
        d.stop()


def read_rows(db: Path, sql: str) -> list[tuple]:
    """Rows of ``db`` opened by its bytes (a URI cannot carry a non-UTF-8 path)."""
    conn = sqlite3.connect(os.fsencode(db), timeout=5)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def test_a_non_utf8_database_path_is_recorded_and_served(short_root: Path) -> None:
    """RUNTALLY_DB (here --db) under a directory named ``d\\xff``: the start-up
    audit row carries the path; it used to be unwritable, and the daemon stopped."""
    root = Path(os.fsdecode(os.path.join(os.fsencode(short_root), b"d\xff")))
    root.mkdir()
    d = DaemonProcess(root).start()
    try:
        started = "SELECT data_json FROM audit_log WHERE event = 'daemon_started'"
        (row,) = wait_until(lambda: read_rows(d.db, started), what="the daemon_started row")
        assert json.loads(row[0])["db"].endswith("d\\xff/dashboard.sqlite"), row
        with RawClient(d.socket, timeout=5) as c:
            c.send({"type": "status"})
            (reply,) = c.recv(1)
        assert reply.db_path.endswith("d\\xff/dashboard.sqlite"), reply
        assert reply.problems == [], reply.problems
    finally:
        d.stop()
