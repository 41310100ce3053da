"""The client against the real daemon (``python -m runtally.cli daemon`` as a child process).

Promise 1 end to end: whether the daemon is up, down for the whole pipeline,
or killed half-way, every event a RunTracker emits is in dashboard.sqlite
exactly once.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

import pytest
from client_helpers import Sandbox, make_sandbox
from daemon_helpers import DaemonProcess, count, daemon_process, ro_connect, wait_until

from runtally import RunTracker
from runtally.client import Client
from runtally.client._warn import reset_after_fork

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
STEPS = 3
ERRORS = 2


@pytest.fixture
def sandbox(monkeypatch: pytest.MonkeyPatch) -> Iterator[Sandbox]:
    yield from make_sandbox(monkeypatch)


@pytest.fixture(autouse=True)
def _fresh_warnings() -> None:
    reset_after_fork()


def pipeline(t: RunTracker) -> str | None:
    """A seed-shaped pipeline: STEPS steps, ERRORS errors each."""
    run = t.start_run()
    for i in range(STEPS):
        sid = t.start_step(f"step{i}")
        errors = [{"knvb_id": f"K{i}{j}", "message": f"bad {j}"} for j in range(ERRORS)]
        t.record_errors(f"step{i}", sid, errors)
        t.end_step(sid, created=i + 1, updated=2, skipped=1, failed=ERRORS)
    t.end_run(True, {"steps": STEPS})
    return run


def run_row(db: Path, run: str) -> dict | None:
    conn = ro_connect(db)
    conn.row_factory = sqlite3.Row
    try:
        row = conn.execute("SELECT * FROM runs WHERE uid = ?", (run,)).fetchone()
        return dict(row) if row is not None else None
    finally:
        conn.close()


def assert_recorded_once(db: Path, run: str) -> None:
    row = run_row(db, run)
    assert row is not None
    assert row["outcome"] == "success"
    assert row["pipeline"] == "people"
    assert row["finished_at"] is not None
    created = sum(i + 1 for i in range(STEPS))
    totals = (row["total_created"], row["total_updated"], row["total_skipped"])
    assert totals == (created, 2 * STEPS, STEPS)
    assert row["total_failed"] == ERRORS * STEPS
    assert count(db, "runs") == 1
    assert count(db, "run_steps", "run_id = ?", [row["id"]]) == STEPS
    assert count(db, "run_steps", "outcome = 'success' AND finished_at IS NOT NULL") == STEPS
    assert count(db, "run_errors", "run_id = ?", [row["id"]]) == STEPS * ERRORS
    assert count(db, "dead_letters") == 0


def test_daemon_up_everything_acked_and_committed(sandbox: Sandbox) -> None:
    with daemon_process(sandbox.root) as d:
        t = RunTracker("people", socket=d.socket, spool=d.spool)
        run = pipeline(t)
        assert run is not None
        client = t.client
        assert client is not None
        assert client.flush(10) is True
        assert_recorded_once(d.db, run)  # an ack is sent only after COMMIT
        assert client.spooled == 0
        client.close()
    assert sandbox.spool_files() == []


def test_daemon_down_whole_pipeline_then_replayed(sandbox: Sandbox) -> None:
    t = RunTracker("people")
    run = pipeline(t)
    assert run is not None
    t.close()
    assert t.client is not None
    t.client.close()  # as when the pipeline process exits: the flock goes
    assert len(sandbox.spool_files()) == 1
    with daemon_process(sandbox.root) as d:
        wait_until(lambda: run_row(d.db, run), what="the spool to be replayed")
        wait_until(lambda: not sandbox.spool_files(), what="the replayed file to go")
        assert_recorded_once(d.db, run)


def test_daemon_back_while_process_runs_resends_own_spool(sandbox: Sandbox) -> None:
    t = RunTracker("people")
    run = pipeline(t)
    assert run is not None
    client = t.client
    assert client is not None
    (path,) = sandbox.spool_files()
    with daemon_process(sandbox.root) as d:
        wait_until(lambda: client.flush(1), what="the client to reconnect and be acked")
        assert_recorded_once(d.db, run)
        assert path.stat().st_size == 8  # all acked: back to the bare header
        client.close()
    assert sandbox.spool_files() == []


def test_daemon_killed_mid_pipeline(sandbox: Sandbox) -> None:
    d = DaemonProcess(sandbox.root).start()
    try:
        t = RunTracker("people")
        client = t.client
        assert client is not None
        run = t.start_run()
        assert run is not None
        for i in range(STEPS):
            if i == 1:
                assert client.flush(10) is True
                d.kill()  # SIGKILL: whatever was acked is committed, nothing else is promised
            sid = t.start_step(f"step{i}")
            errors = [{"knvb_id": f"K{i}{j}", "message": f"bad {j}"} for j in range(ERRORS)]
            t.record_errors(f"step{i}", sid, errors)
            t.end_step(sid, created=i + 1, updated=2, skipped=1, failed=ERRORS)
        t.end_run(True, {"steps": STEPS})
        assert client.spooled > 0  # what the dead daemon did not ack went to the spool
        d = DaemonProcess(sandbox.root).start()
        wait_until(lambda: client.flush(1), what="the client to reconnect and be acked")
        assert_recorded_once(d.db, run)
        client.close()
    finally:
        if d.proc is not None and d.proc.poll() is None:
            d.kill()


def test_forked_workers_record_into_the_parent_run(sandbox: Sandbox) -> None:
    with daemon_process(sandbox.root) as d:
        t = RunTracker("people")
        run = t.start_run()
        sid = t.start_step("workers")
        assert run is not None
        client = t.client
        assert client is not None
        children = []
        for n in range(3):
            pid = os.fork()
            if pid == 0:  # pragma: no cover - runs in the child
                code = 1
                try:
                    t.record_error("workers", sid, f"W{n}", f"worker {n} failed")
                    code = 0 if client.flush(10) else 2
                finally:
                    os._exit(code)
            children.append(pid)
        for pid in children:
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
        t.end_step(sid, failed=3)
        t.end_run(False)
        assert client.flush(10) is True
        row = run_row(d.db, run)
        assert row is not None
        assert row["outcome"] == "failure"
        assert count(d.db, "run_errors", "run_id = ?", [row["id"]]) == 3
        members = {
            m for (m,) in ro_connect(d.db).execute("SELECT member_identifier FROM run_errors")
        }
        assert members == {"W0", "W1", "W2"}
        client.close()


def test_child_process_run_is_linked_to_its_parent(sandbox: Sandbox) -> None:
    with daemon_process(sandbox.root) as d:
        t = RunTracker("all")
        run = t.start_run()
        assert run is not None
        child = (
            "from runtally import track_run\nwith track_run('discipline') as r:\n    print(r.uid)\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", child],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
            cwd=ROOT,
        )
        child_run = out.stdout.strip()
        t.end_run(True)
        assert t.client is not None
        assert t.client.flush(10) is True
        parent_row = run_row(d.db, run)
        child_row = run_row(d.db, child_run)
        assert parent_row is not None
        assert child_row is not None
        assert child_row["parent_run_id"] == parent_row["id"]
        assert child_row["pipeline"] == "discipline"
        t.client.close()


class _ForkAtLine:
    """Has SIGUSR1 fork the process at the ``at``-th line the client executes.

    A line tracer counts the lines run in ``runtally/client`` and sends the
    signal at the chosen one; the handler runs (and forks) at the next point
    the interpreter checks for signals: in the middle of a tracking call, at
    a point the test chooses.  In the child the interrupted call resumes.
    """

    def __init__(self) -> None:
        self.lines = 0
        self.at = -1
        self.fired = False
        self.child = False
        self.children: list[int] = []
        #: What the handler does in the child before it returns (it tracks too).
        self.in_child: Callable[[], object] = lambda: None

    def arm(self, at: int) -> None:
        self.lines, self.at, self.fired = 0, at, False
        sys.settrace(self._trace)

    def disarm(self) -> None:
        sys.settrace(None)

    def _trace(self, frame: FrameType, event: str, _arg: object) -> object:
        if "runtally/client" not in frame.f_code.co_filename:
            return None
        if event == "line" and not self.fired:
            self.lines += 1
            if self.lines == self.at:
                self.fired = True
                os.kill(os.getpid(), signal.SIGUSR1)
        return self._trace

    def on_signal(self, _signum: int, _frame: object) -> None:
        self.disarm()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            self.child = True
            self.in_child()
        else:
            self.children.append(pid)


def test_a_fork_in_a_signal_handler_that_interrupted_a_call(
    sandbox: Sandbox, capfd: pytest.CaptureFixture[str]
) -> None:
    """A signal handler forks while the main thread is inside an emit: in the child
    the interrupted call resumes, and the child's own runs still land, exactly once,
    without touching the parent's connection or spool file (design.md, fork).
    Tried at every line of the call, one fork each."""
    forker = _ForkAtLine()
    previous = signal.signal(signal.SIGUSR1, forker.on_signal)
    try:
        with daemon_process(sandbox.root) as d:
            client = Client(sandbox.sock, sandbox.spool)
            t = RunTracker("people", client=client)
            run = t.start_run()
            assert run is not None
            expected = []
            parent_ids: list[str] = []
            point = 0
            # Parked until the interrupted call is done, then sent from the child.
            forker.in_child = lambda: t.record_error("load", None, f"H{point}", "handler")
            while True:
                point += 1
                member = f"P{point}"
                forker.arm(point)
                event_id = t.record_error("load", None, member, "parent")
                forker.disarm()
                assert event_id is not None
                expected.append(member)
                parent_ids.append(event_id)
                if forker.child:  # pragma: no cover - runs in the child
                    code = 1
                    try:
                        # The interrupted call returns in the child too: with the
                        # parent's event id if the fork came after the id was
                        # made (one row), else with its own (two rows, both real).
                        (sandbox.root / f"{point}.id").write_text(event_id)
                        child = RunTracker("child", client=client)
                        child.start_run()
                        for j in range(3):
                            t.record_error("load", None, f"C{point}-{j}", "child")
                        child.end_run(True)
                        code = 0 if client.flush(10) else 2
                    finally:
                        os._exit(code)
                if not forker.fired:
                    break  # the call has fewer lines than that: every point was tried
            points = len(forker.children)
            assert points == point - 1 > 20
            for pid in forker.children:
                _, status = os.waitpid(pid, 0)
                assert os.waitstatus_to_exitcode(status) == 0
            for p in range(1, points + 1):
                if (sandbox.root / f"{p}.id").read_text() != parent_ids[p - 1]:
                    expected.append(f"P{p}")
            t.end_run(True)
            assert client.flush(10) is True
            assert count(d.db, "runs", "pipeline = 'child' AND outcome = 'success'") == points
            members = [
                m for (m,) in ro_connect(d.db).execute("SELECT member_identifier FROM run_errors")
            ]
            expected += [f"C{p}-{j}" for p in range(1, points + 1) for j in range(3)]
            expected += [f"H{p}" for p in range(1, points + 1)]
            assert sorted(members) == sorted(expected)
            assert count(d.db, "dead_letters") == 0
            client.close()
        assert "runtally:" not in capfd.readouterr().err  # nor a warning, in any child
    finally:
        signal.signal(signal.SIGUSR1, previous)
