"""A dashboard database built through the real store, and a real ``runtally web`` process.

The database holds: several pipelines in two clubs, a failing run with
errors, a running run with a child, and names/messages carrying HTML, JS and
terminal escapes (user input that must render as text).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from daemon_helpers import REPO, wait_until

from runtally.daemon._store import Store
from runtally.protocol import ErrorEvent, RunEnd, RunStart, StepEnd, StepStart

NOW = int(time.time() * 1000)
MIN, HOUR, DAY = 60_000, 3_600_000, 86_400_000
#: Runs of the ``bulk`` pipeline (enough for several pages).
BULK_RUNS = 23

EVIL_PIPELINE = "<script>alert('pipe')</script>"
EVIL_MEMBER = '<img src=x onerror="alert(1)">'
EVIL_MESSAGE = "\x1b[31mred\x1b[0m </pre><script>alert(2)</script> \x07bell \u202egnp.exe"


def events() -> list:
    out: list = []
    # people: a success 3 days ago, a failure 2 hours ago (2 steps, 3 errors, argv in meta).
    t = NOW - 3 * DAY
    out += [
        RunStart(id="a1", ts=t, run="alpha", pipeline="people", club_slug="rondo",
                 meta={"host": "box", "argv": ["sync", "--password", "[redacted]"]}),
        StepStart(id="a2", ts=t + 10, run="alpha", step="alpha-s1", name="download"),
        StepEnd(id="a3", ts=t + 20, run="alpha", step="alpha-s1", outcome="success",
                created=5, updated=4, skipped=3, duration_ms=61_000),
        RunEnd(id="a4", ts=t + 65_000, run="alpha", outcome="success", duration_ms=65_000,
               summary={"note": "fine"}),
    ]  # fmt: skip
    t = NOW - 2 * HOUR
    out += [
        RunStart(id="b1", ts=t, run="bravo", pipeline="people", club_slug="rondo"),
        StepStart(id="b2", ts=t + 100, run="bravo", step="bravo-s1", name="download"),
        StepEnd(id="b3", ts=t + 900, run="bravo", step="bravo-s1", outcome="success", created=10),
        StepStart(id="b4", ts=t + 1000, run="bravo", step="bravo-s2", name="laposta-submit"),
        *(
            ErrorEvent(id=f"b5-{i}", ts=t + 1100 + i, run="bravo", step="bravo-s2",
                       step_name="laposta-submit", member=f"KNVB{i}", message="email rejected 100%")
            for i in range(3)
        ),
        ErrorEvent(id="b6", ts=t + 1200, run="bravo", step="bravo-s2", step_name="laposta-submit",
                   member=EVIL_MEMBER, message=EVIL_MESSAGE, stack="Traceback\n  boom"),
        StepEnd(id="b8", ts=t + 3000, run="bravo", step="bravo-s2", outcome="failure", failed=4),
        RunEnd(id="b9", ts=t + 3000, run="bravo", outcome="failure"),
    ]  # fmt: skip
    # teams (club other): running, child of bravo.
    t = NOW - 2 * HOUR + 5000
    out += [
        RunStart(id="c1", ts=t, run="child", pipeline="teams", club_slug="other", parent="bravo"),
        StepStart(id="c2", ts=t + 1, run="child", step="child-s1", name="teams-sync"),
    ]
    # The evil pipeline: one successful run.
    t = NOW - 5 * HOUR
    out += [
        RunStart(id="e1", ts=t, run="evil", pipeline=EVIL_PIPELINE, club_slug="rondo"),
        RunEnd(id="e2", ts=t + 10, run="evil", outcome="success"),
    ]
    # bulk: many runs a minute apart, every fifth a failure.
    for i in range(BULK_RUNS):
        t = NOW - 10 * DAY + i * MIN
        run = f"bulk{i}"
        out += [
            RunStart(id=f"{run}-s", ts=t, run=run, pipeline="bulk", club_slug="rondo"),
            RunEnd(id=f"{run}-e", ts=t + 1000 + i, run=run,
                   outcome="failure" if i % 5 == 0 else "success"),
        ]  # fmt: skip
    return out


def build(path: Path) -> dict[str, int]:
    """Write ``events()`` through the real store; the run ids by uid."""
    store = Store.open(path)
    try:
        evs = events()
        assert store.apply(evs) == [None] * len(evs)
        ids = dict(store.query("SELECT uid, id FROM runs"))
        store.checkpoint()
    finally:
        store.close()
    return ids


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@contextlib.contextmanager
def web_process(
    root: Path, *args: str, env: dict[str, str] | None = None
) -> Iterator[tuple[str, subprocess.Popen]]:
    """``runtally web`` as a real child process on a free loopback port; yields its base URL.

    ``env`` adds environment variables; the process's output is in ``root/web.log``.
    """
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RUNTALLY_")},
        **(env or {}),
        "PYTHONPATH": str(REPO),
    }
    argv = [sys.executable, "-m", "runtally.cli", "web", "--port", str(port), *args]
    with (root / "web.log").open("ab") as log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=log, start_new_session=True)
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"runtally web exited: {(root / 'web.log').read_text()}")
        try:
            get(base + "/api/stamp", timeout=1)  # any HTTP answer: 401 under a token too
            return True
        except OSError:
            return False

    try:
        wait_until(up, 20, 0.05, what="runtally web to answer")
        yield base, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def printed_url(root: Path) -> str:
    """The URL ``runtally web`` printed at start-up (with ``?token=`` when it made one)."""
    match = re.search(r"runtally web: (http://\S+)", (root / "web.log").read_text())
    assert match, (root / "web.log").read_text()
    return match.group(1)
