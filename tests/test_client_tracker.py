"""RunTracker and track_run: the events a pipeline's calls become, with no daemon running.

Every test reads back what reached the spool (format v1) and decodes it with
the daemon's own decoder: an event the daemon would refuse is a lost row, so
"never raises" is checked together with "still a valid event".
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from client_helpers import Sandbox, make_sandbox, peer

from runtally import RunTracker, track_run
from runtally.client import PARENT_ENV, RUN_STEP_NAME, uuid7
from runtally.client._ids import now_ms
from runtally.client._warn import reset_after_fork
from runtally.protocol import (
    MAX_MESSAGE,
    MAX_STACK,
    ErrorEvent,
    RunEnd,
    RunStart,
    StepEnd,
    StepStart,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def sandbox(monkeypatch: pytest.MonkeyPatch) -> Iterator[Sandbox]:
    yield from make_sandbox(monkeypatch)


@pytest.fixture(autouse=True)
def _fresh_warnings() -> None:
    reset_after_fork()


@pytest.fixture
def tracker(sandbox: Sandbox) -> Iterator[RunTracker]:
    t = RunTracker("people", socket=sandbox.sock, spool=sandbox.spool)
    yield t
    if t.client is not None:
        t.client.close()


def events(sandbox: Sandbox, tracker: RunTracker | None = None) -> list[Any]:
    """Everything spooled, after releasing the client's spool file."""
    if tracker is not None and tracker.client is not None:
        tracker.client.close()
    return sandbox.spooled()


def of(kind: type, evs: list[Any]) -> list[Any]:
    return [e for e in evs if isinstance(e, kind)]


class TestPipelineWithoutDaemon:
    def test_whole_pipeline_lands_in_one_spool_file(self, sandbox: Sandbox) -> None:
        before = now_ms()
        t = RunTracker("people", club_slug="rondo")  # paths from RUNTALLY_SOCKET/SPOOL
        run = t.start_run()
        sid = t.start_step("sportlink-download")
        t.end_step(sid, created=10, failed=1, detail={"files": 3})
        sid2 = t.start_step("laposta-submit")
        t.record_error("laposta-submit", sid2, "KNVB123", "bad email", "stack here")
        t.record_errors("laposta-submit", sid2, [{"email": "a@b.c", "message": "m1"}])
        t.record_errors("laposta-submit", sid2, 2)
        t.end_step(sid2, outcome="failure", updated=4, failed=3)
        t.end_run(success=False, stats={"people": 10})
        t.close()
        assert len(sandbox.spool_files()) == 1
        evs = events(sandbox, t)

        kinds = [type(e) for e in evs]
        assert kinds == [
            RunStart,
            StepStart,
            StepEnd,
            StepStart,
            ErrorEvent,
            ErrorEvent,
            ErrorEvent,
            StepEnd,
            RunEnd,
        ]
        assert all(e.run == run for e in evs)
        assert len({e.id for e in evs}) == len(evs)
        assert all(before <= e.ts <= now_ms() for e in evs)

        start = evs[0]
        assert start.pipeline == "people"
        assert start.club_slug == "rondo"
        assert start.parent is None
        assert start.meta["pid"] == os.getpid()
        assert {"host", "user", "argv"} <= set(start.meta)

        first_end, second_end = of(StepEnd, evs)
        assert (first_end.step, first_end.outcome, first_end.created) == (sid, "success", 10)
        assert (first_end.failed, first_end.detail) == (1, {"files": 3})
        assert (second_end.step, second_end.outcome) == (sid2, "failure")
        assert (second_end.updated, second_end.failed) == (4, 3)
        assert all(isinstance(e.duration_ms, int) and e.duration_ms >= 0 for e in of(StepEnd, evs))

        errors = of(ErrorEvent, evs)
        assert [(e.member, e.message) for e in errors] == [
            ("KNVB123", "bad email"),
            ("a@b.c", "m1"),
            (None, "Step reported 2 error(s)"),
        ]
        assert errors[0].stack == "stack here"
        assert all(e.step == sid2 and e.step_name == "laposta-submit" for e in errors)

        end = evs[-1]
        assert (end.outcome, end.summary) == ("failure", {"people": 10})
        assert end.duration_ms is not None

    def test_durations_are_measured_on_the_client(
        self, sandbox: Sandbox, tracker: RunTracker
    ) -> None:
        tracker.start_run()
        sid = tracker.start_step("slow")
        time.sleep(0.03)
        tracker.end_step(sid)
        tracker.end_run()
        evs = events(sandbox, tracker)
        (step_end,) = of(StepEnd, evs)
        (run_end,) = of(RunEnd, evs)
        assert step_end.duration_ms >= 30
        assert run_end.duration_ms >= step_end.duration_ms

    def test_git_sha_from_the_environment(
        self, sandbox: Sandbox, tracker: RunTracker, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("RUNTALLY_GIT_SHA", "abc123")
        tracker.start_run()
        tracker.end_run()
        (start,) = of(RunStart, events(sandbox, tracker))
        assert start.meta["git_sha"] == "abc123"

    def test_seed_call_shapes_are_accepted(self, sandbox: Sandbox, tracker: RunTracker) -> None:
        tracker.start_run()
        sid = tracker.start_step("s")
        tracker.record_error(
            {"stepName": "s", "stepId": sid, "memberIdentifier": "K1", "errorMessage": "m"}
        )
        tracker.end_step(sid, {"outcome": "failure", "created": 2, "failed": 1})
        tracker.end_run(True, {"ok": 1})
        evs = events(sandbox, tracker)
        (err,) = of(ErrorEvent, evs)
        assert (err.step_name, err.step, err.member, err.message) == ("s", sid, "K1", "m")
        (end,) = of(StepEnd, evs)
        assert (end.outcome, end.created, end.failed) == ("failure", 2, 1)

    @pytest.mark.parametrize("slip", [[], {"id": "x"}, 42, set(), bytearray(b"x")])
    def test_a_step_id_that_is_not_a_str_is_said_not_sent(
        self, sandbox: Sandbox, tracker: RunTracker, capsys: pytest.CaptureFixture[str], slip: Any
    ) -> None:
        """Found from outside: ``str()`` of whatever was passed went out as the step
        id, named a step that never started, and the daemon parked the events for
        days, out of sight.  Now one line on stderr; the error lands on its run."""
        run = tracker.start_run()
        tracker.end_step(slip, created=2)
        tracker.record_error("load", slip, "M1", "a slip")
        tracker.end_run(True)
        err = capsys.readouterr().err
        assert "ignoring step_id of type" in err
        evs = events(sandbox, tracker)
        assert of(StepEnd, evs) == []
        (error,) = of(ErrorEvent, evs)
        assert (error.run, error.step, error.member) == (run, None, "M1")

    def test_calls_without_an_open_run_are_noops(
        self, sandbox: Sandbox, tracker: RunTracker, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert tracker.start_step("early") is None
        assert tracker.end_step("x") is None
        assert tracker.record_error("s", error_message="m") is None
        assert tracker.record_errors("s", None, [{"message": "m"}]) is None
        assert tracker.end_run() is None
        assert capsys.readouterr().err.count("runtally:") == 1
        tracker.start_run()
        tracker.end_run()
        assert tracker.start_step("late") is None
        assert tracker.end_run() is None
        assert capsys.readouterr().err.count("runtally:") == 1
        assert [type(e) for e in events(sandbox, tracker)] == [RunStart, RunEnd]

    def test_close_ends_an_open_run_as_failure(self, sandbox: Sandbox, tracker: RunTracker) -> None:
        run = tracker.start_run()
        tracker.close()
        tracker.close()  # idempotent
        assert PARENT_ENV not in os.environ
        (end,) = of(RunEnd, events(sandbox, tracker))
        assert (end.run, end.outcome) == (run, "failure")


class TestBadArguments:
    """Nothing a pipeline passes may raise, and every event must stay valid."""

    CALLS: tuple[tuple[str, Any], ...] = (
        ("non-string step name", lambda t, s: t.start_step(42)),
        ("empty step name", lambda t, s: t.start_step("")),
        ("None step name", lambda t, s: t.start_step(None)),
        ("huge step name", lambda t, s: t.start_step("n" * 5000)),
        ("negative count", lambda t, s: t.end_step(s, created=-5)),
        ("string counts", lambda t, s: t.end_step(s, created="12", updated="x")),
        ("float counts", lambda t, s: t.end_step(s, created=3.7, skipped=float("nan"))),
        ("object count", lambda t, s: t.end_step(s, failed=object())),
        ("list as count", lambda t, s: t.end_step(s, failed=[1, 2, 3])),
        ("huge count", lambda t, s: t.end_step(s, created=10**30)),
        ("odd outcome", lambda t, s: t.end_step(s, outcome="weird")),
        ("bool outcome", lambda t, s: t.end_step(s, outcome=False)),
        ("object outcome", lambda t, s: t.end_step(s, outcome=object())),
        ("unencodable detail", lambda t, s: t.end_step(s, detail={1: {object()}})),
        ("huge detail", lambda t, s: t.end_step(s, detail="d" * 2_000_000)),
        ("None step id", lambda t, s: t.end_step(None)),
        ("int step id", lambda t, s: t.end_step(12345)),
        ("huge step id", lambda t, s: t.end_step("i" * 500)),
        ("None error message", lambda t, s: t.record_error("s", s, None, None)),
        ("object step name", lambda t, s: t.record_error(object(), s, 123, b"bytes", 5)),
        ("exception message", lambda t, s: t.record_error("s", s, None, ValueError("v"))),
        ("string errors", lambda t, s: t.record_errors("s", s, "just text")),
        ("object errors", lambda t, s: t.record_errors("s", s, object())),
        ("negative errors", lambda t, s: t.record_errors("s", s, -3)),
        ("inf errors", lambda t, s: t.record_errors("s", s, float("inf"))),
        ("junk in errors", lambda t, s: t.record_errors("s", s, [None, 1, {"error": {"x": 1}}])),
        ("bad parent", lambda t, s: t.start_run(parent="p" * 500)),
        ("odd success", lambda t, s: t.end_run("maybe", stats=object())),
    )

    @pytest.mark.parametrize(("label", "call"), CALLS, ids=[c[0] for c in CALLS])
    def test_never_raises_and_stays_valid(
        self, sandbox: Sandbox, tracker: RunTracker, label: str, call: Any
    ) -> None:
        tracker.start_run()
        sid = tracker.start_step("step")
        call(tracker, sid)
        tracker.end_run()
        evs = events(sandbox, tracker)  # asserts every record decodes as a valid event
        assert isinstance(evs[0], RunStart)

    def test_recursive_stats_do_not_raise(self, sandbox: Sandbox, tracker: RunTracker) -> None:
        stats: dict[str, Any] = {}
        stats["self"] = stats
        tracker.start_run()
        tracker.end_run(True, stats)
        (end,) = of(RunEnd, events(sandbox, tracker))
        assert end.outcome == "success"

    def test_repairs_are_what_the_pipeline_meant(
        self, sandbox: Sandbox, tracker: RunTracker, capsys: pytest.CaptureFixture[str]
    ) -> None:
        tracker.start_run()
        sid = tracker.start_step(42)
        tracker.end_step(sid, outcome="weird", created=-5, updated="12", skipped=2.9)
        tracker.end_run("failed")
        evs = events(sandbox, tracker)
        (start,) = of(StepStart, evs)
        assert start.name == "42"
        (end,) = of(StepEnd, evs)
        assert (end.outcome, end.created, end.updated, end.skipped) == ("failure", 0, 12, 2)
        assert of(RunEnd, evs)[0].outcome == "failure"
        err = capsys.readouterr().err
        assert "negative" in err
        assert "weird" in err

    def test_broken_client_never_raises(self, capsys: pytest.CaptureFixture[str]) -> None:
        t = RunTracker("p", client="not a client")  # type: ignore[arg-type]
        assert t.start_run() is None
        assert t.start_step("s") is None
        t.end_run()
        t.close()
        assert "RunTracker.start_run failed" in capsys.readouterr().err


class TestRecordErrors:
    def _errors(self, sandbox: Sandbox, tracker: RunTracker, errors: Any) -> list[ErrorEvent]:
        tracker.start_run()
        sid = tracker.start_step("s")
        tracker.record_errors("s", sid, errors)
        tracker.end_run()
        return of(ErrorEvent, events(sandbox, tracker))

    def test_member_identifier_precedence(self, sandbox: Sandbox, tracker: RunTracker) -> None:
        errs = self._errors(
            sandbox,
            tracker,
            [
                {"email": "e@x", "knvb_id": "K1", "message": "a"},
                {"commissie_name": "C", "team_name": "T", "message": "b"},
                {"knvb_id": None, "email": "", "dossier_id": "D7", "error": "c"},
                {"commissie_name": "C2", "error": "d"},
                types.SimpleNamespace(email="obj@x", error="e"),
                {"message": "no member"},
            ],
        )
        assert [(e.member, e.message) for e in errs] == [
            ("K1", "a"),
            ("T", "b"),
            ("D7", "c"),
            ("C2", "d"),
            ("obj@x", "e"),
            (None, "no member"),
        ]

    def test_member_keys_are_configurable(self, sandbox: Sandbox) -> None:
        t = RunTracker("p", member_keys=("relatiecode", "email"))
        errs = self._errors(sandbox, t, [{"email": "e@x", "relatiecode": "R1", "message": "m"}])
        assert errs[0].member == "R1"

    @pytest.mark.parametrize(
        ("count", "expected"),
        [(3, ["Step reported 3 error(s)"]), (1, ["Step reported 1 error(s)"]), (0, [])],
    )
    def test_numeric_counts(
        self, sandbox: Sandbox, tracker: RunTracker, count: int, expected: list[str]
    ) -> None:
        assert [e.message for e in self._errors(sandbox, tracker, count)] == expected

    def test_message_and_stack_are_truncated(self, sandbox: Sandbox, tracker: RunTracker) -> None:
        errs = self._errors(sandbox, tracker, [{"message": "m" * 5000, "stack": "s" * 9000}])
        assert len(errs[0].message) == MAX_MESSAGE == 2000
        assert len(errs[0].stack) == MAX_STACK == 4000

    def test_exceptions_give_text_and_traceback(
        self, sandbox: Sandbox, tracker: RunTracker
    ) -> None:
        def failing_upload() -> None:
            raise ConnectionError("laposta said no")

        try:
            failing_upload()
        except ConnectionError as exc:
            caught = exc
        errs = self._errors(sandbox, tracker, [caught, {"error": caught, "email": "e@x"}])
        for err in errs:
            assert err.message == "ConnectionError: laposta said no"  # as a traceback says
            assert "Traceback" in err.stack
            assert "failing_upload" in err.stack
        assert errs[1].member == "e@x"


class TestTrackRun:
    def test_success(self, sandbox: Sandbox) -> None:
        with track_run("people", club_slug="rondo") as run:
            with run.step("download") as step:
                step.created += 10
                step.failed += 1
                step.detail = {"n": 10}
                step.error("no email", member="KNVB123")
            run.summary = {"total": 10}
        evs = events(sandbox, run.tracker)
        assert [type(e) for e in evs] == [RunStart, StepStart, ErrorEvent, StepEnd, RunEnd]
        assert evs[0].run == run.uid
        assert evs[2].member == "KNVB123"
        assert evs[2].step == step.uid
        assert (evs[3].outcome, evs[3].created, evs[3].failed, evs[3].detail) == (
            "success",
            10,
            1,
            {"n": 10},
        )
        assert (evs[4].outcome, evs[4].summary) == ("success", {"total": 10})

    def test_failure_without_exception(self, sandbox: Sandbox) -> None:
        with track_run("people") as run:
            with run.step("x") as step:
                step.outcome = "skipped"
            run.fail()
        evs = events(sandbox, run.tracker)
        assert of(StepEnd, evs)[0].outcome == "skipped"
        assert of(RunEnd, evs)[0].outcome == "failure"

    def test_exception_in_a_step_is_recorded_and_reraised(self, sandbox: Sandbox) -> None:
        def sync_members() -> None:
            raise RuntimeError("sportlink is down")

        with pytest.raises(RuntimeError, match="sportlink is down"), track_run("people") as run:
            with run.step("ok") as ok:
                ok.created = 1
            with run.step("download") as step:
                step.created = 5
                sync_members()
        evs = events(sandbox, run.tracker)
        ends = of(StepEnd, evs)
        assert [(e.outcome, e.created) for e in ends] == [("success", 1), ("failure", 5)]
        (err,) = of(ErrorEvent, evs)  # one row: the run does not record it again
        assert (err.step, err.step_name, err.message) == (
            step.uid,
            "download",
            "RuntimeError: sportlink is down",
        )
        assert "sync_members" in err.stack
        assert of(RunEnd, evs)[0].outcome == "failure"

    def test_exception_in_nested_steps_is_one_error_row(self, sandbox: Sandbox) -> None:
        with (
            pytest.raises(ValueError, match="inner boom"),
            track_run("people") as run,
            run.step("outer") as outer,
            run.step("inner") as inner,
        ):
            raise ValueError("inner boom")
        evs = events(sandbox, run.tracker)
        (err,) = of(ErrorEvent, evs)  # recorded by the innermost step only
        assert (err.step, err.step_name) == (inner.uid, "inner")
        ends = {e.step: e.outcome for e in of(StepEnd, evs)}
        assert ends == {inner.uid: "failure", outer.uid: "failure"}
        assert of(RunEnd, evs)[0].outcome == "failure"

    def test_exception_outside_steps(self, sandbox: Sandbox) -> None:
        with pytest.raises(KeyError), track_run("people") as run:
            raise KeyError("config")
        evs = events(sandbox, run.tracker)
        (err,) = of(ErrorEvent, evs)
        assert (err.step, err.step_name) == (None, RUN_STEP_NAME)
        assert of(RunEnd, evs)[0].outcome == "failure"

    def test_sys_exit_zero_is_success(self, sandbox: Sandbox) -> None:
        with pytest.raises(SystemExit), track_run("people") as run:
            sys.exit(0)
        evs = events(sandbox, run.tracker)
        assert of(ErrorEvent, evs) == []
        assert of(RunEnd, evs)[0].outcome == "success"


class TestNesting:
    def test_child_process_run_nests_under_the_open_run(
        self, sandbox: Sandbox, tracker: RunTracker
    ) -> None:
        run = tracker.start_run()
        assert os.environ[PARENT_ENV] == run
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
        tracker.end_run()
        assert PARENT_ENV not in os.environ
        starts = {e.run: e for e in of(RunStart, events(sandbox, tracker))}
        assert starts[child_run].parent == run
        assert starts[child_run].pipeline == "discipline"
        assert starts[run].parent is None
        assert len(sandbox.spool_files()) == 2  # one per process

    def test_previous_parent_is_linked_and_restored(
        self, sandbox: Sandbox, tracker: RunTracker, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        outer = uuid7()
        monkeypatch.setenv(PARENT_ENV, outer)
        run = tracker.start_run()
        assert os.environ[PARENT_ENV] == run
        tracker.end_run()
        assert os.environ[PARENT_ENV] == outer
        (start,) = of(RunStart, events(sandbox, tracker))
        assert start.parent == outer

    def test_explicit_parent_wins(self, sandbox: Sandbox, tracker: RunTracker) -> None:
        parent = uuid7()
        tracker.start_run(parent=parent)
        tracker.end_run()
        assert of(RunStart, events(sandbox, tracker))[0].parent == parent

    def test_same_thread_run_nests_under_the_open_one(
        self, sandbox: Sandbox, tracker: RunTracker
    ) -> None:
        outer = tracker.start_run()
        inner_tracker = RunTracker("inner", client=tracker.client)
        inner = inner_tracker.start_run()
        inner_tracker.end_run()
        assert os.environ[PARENT_ENV] == outer
        tracker.end_run()
        starts = {e.run: e for e in of(RunStart, events(sandbox, tracker))}
        assert starts[inner].parent == outer

    def test_runs_of_other_threads_are_not_parents(
        self, sandbox: Sandbox, tracker: RunTracker, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # Thread A's run is open while thread B starts and ends its own, and a
        # tracker abandoned in a third thread is left open: B's run (and A's)
        # keep the parent the process inherited.
        inherited = uuid7()
        monkeypatch.setenv(PARENT_ENV, inherited)
        a_open, b_done = threading.Event(), threading.Event()
        ids: dict[str, str | None] = {}

        def abandon() -> None:
            ids["abandoned"] = RunTracker("gone", client=tracker.client).start_run()

        def a() -> None:
            t = RunTracker("a", client=tracker.client)
            ids["a"] = t.start_run()
            a_open.set()
            b_done.wait(30)
            t.end_run()

        def b() -> None:
            a_open.wait(30)
            t = RunTracker("b", client=tracker.client)
            ids["b"] = t.start_run()
            t.end_run()
            b_done.set()

        _in_threads(abandon)
        _in_threads(a, b)
        later = tracker.start_run()
        tracker.end_run()
        starts = {e.run: e for e in of(RunStart, events(sandbox, tracker))}
        assert {name: starts[run].parent for name, run in ids.items() if run} == {
            "abandoned": inherited,
            "a": inherited,
            "b": inherited,
        }
        assert starts[later].parent == inherited

    def test_concurrent_runs_keep_the_inherited_parent(
        self, sandbox: Sandbox, tracker: RunTracker, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        inherited = uuid7()
        monkeypatch.setenv(PARENT_ENV, inherited)
        start = threading.Barrier(8)
        runs: list[str | None] = []

        def worker() -> None:
            start.wait(30)
            for _ in range(40):
                t = RunTracker("worker", client=tracker.client)
                runs.append(t.start_run())
                t.start_step("s")
                t.end_run()

        _in_threads(*[worker] * 8)
        starts = {e.run: e for e in of(RunStart, events(sandbox, tracker))}
        assert len(runs) == 320
        assert [starts[run].parent for run in runs if run] == [inherited] * 320
        # Nothing of ours is left in the variable: later child processes get the inherited one.
        assert os.environ[PARENT_ENV] == inherited

    def test_forked_child_nests_under_its_thread_run(
        self, sandbox: Sandbox, tracker: RunTracker
    ) -> None:
        run = tracker.start_run()

        def child() -> None:
            t = RunTracker("forked", socket=sandbox.sock, spool=sandbox.spool)
            t.start_run()
            t.end_run()
            t.close()

        _in_forked_child(child)
        tracker.end_run()
        starts = [e for e in of(RunStart, events(sandbox, tracker)) if e.pipeline == "forked"]
        assert [e.parent for e in starts] == [run]

    def test_a_forked_child_closing_its_copy_does_not_end_the_parents_run(
        self, sandbox: Sandbox, tracker: RunTracker
    ) -> None:
        """A worker tidying up the tracker it inherited: its close() flushes its own
        events but sends no run_end for the parent's run (which, being later than
        the parent's end_run, made a success a failure)."""
        run = tracker.start_run()

        def child() -> None:
            tracker.record_error("work", None, "W1", "a worker's error")
            tracker.close()

        _in_forked_child(child)
        tracker.end_run(True)
        evs = events(sandbox, tracker)
        assert [(e.run, e.outcome) for e in of(RunEnd, evs)] == [(run, "success")]
        assert [e.member for e in of(ErrorEvent, evs)] == ["W1"]  # the child's own, landed


def _in_forked_child(body: Callable[[], object]) -> None:
    """Run ``body`` in a forked child (exit 0 if it returned) and wait for it."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            body()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def _in_threads(*targets: Any) -> None:
    """Run each target in its own thread, all at once; wait for them all."""
    threads = [threading.Thread(target=target) for target in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
        assert not thread.is_alive()


class TestUuid7:
    def test_layout(self) -> None:
        ms = now_ms()
        u = uuid7(ms)
        assert len(u) == 36
        assert u[14] == "7"  # version
        assert u[19] in "89ab"  # RFC variant
        assert int(u.replace("-", "")[:12], 16) == ms

    def test_time_ordered_and_unique(self) -> None:
        ids = [uuid7(1_700_000_000_000 + i) for i in range(1000)]
        assert ids == sorted(ids)
        assert len({uuid7() for _ in range(10_000)}) == 10_000

    def test_layout_of_every_id_in_a_batch(self) -> None:
        import uuid

        from runtally.client._ids import BATCH

        for u in [uuid7() for _ in range(2 * BATCH + 1)]:
            parsed = uuid.UUID(u)
            assert (parsed.version, parsed.variant, str(parsed)) == (7, uuid.RFC_4122, u)

    def test_unique_across_threads(self) -> None:
        import threading

        made: list[list[str]] = [[] for _ in range(4)]

        def make(out: list[str]) -> None:
            out.extend(uuid7() for _ in range(5000))

        threads = [threading.Thread(target=make, args=(out,)) for out in made]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len({u for out in made for u in out}) == 20_000

    def test_a_forked_child_never_repeats_the_parents_ids(self) -> None:
        ms = now_ms()  # both in the same millisecond: only the random part tells them apart
        uuid7(ms)  # the parent has ready-made ids the child would inherit
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: its next ids, then out without any cleanup
            try:
                os.write(write_fd, " ".join(uuid7(ms) for _ in range(50)).encode())
            finally:
                os._exit(0)
        os.close(write_fd)
        parent = {uuid7(ms) for _ in range(50)}
        with os.fdopen(read_fd, "rb") as pipe:
            child = set(pipe.read().decode().split())
        os.waitpid(pid, 0)
        assert len(child) == 50
        assert not parent & child


def _open_spool_files() -> list[str]:
    """The spool files this process holds open (/proc/self/fd)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # the listing's own descriptor, gone already
        if target.endswith(".spool"):
            found.append(target)
    return found


class TestSharedClient:
    """A tracker per run (as pipelines make them) shares the process's one Client."""

    def test_given_paths_resolve_settings_once(
        self, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from runtally.client import _registry

        resolved: list[tuple[Any, ...]] = []
        real = _registry._settings
        monkeypatch.setattr(_registry, "_settings", lambda *a: resolved.append(a) or real(*a))
        first = RunTracker("people", socket=sandbox.sock, spool=sandbox.spool)
        again = RunTracker("people", socket=str(sandbox.sock), spool=str(sandbox.spool))
        try:
            assert first.client is not None
            assert again.client is first.client
            assert len(resolved) == 1  # the second found its Client without the resolver
        finally:
            first.client.close()  # type: ignore[union-attr]

    def test_paths_from_the_environment_are_resolved_each_time(
        self, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("RUNTALLY_SOCKET", str(sandbox.root / "a.sock"))
        first = RunTracker("people", spool=sandbox.spool)
        monkeypatch.setenv("RUNTALLY_SOCKET", str(sandbox.root / "b.sock"))
        second = RunTracker("people", spool=sandbox.spool)
        assert first.client is not None and second.client is not None
        assert first.client.socket_path.endswith("a.sock")
        assert second.client.socket_path.endswith("b.sock")

    def test_relative_paths_name_the_same_files_after_a_chdir(
        self, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Resolved to absolute paths once: a worker that chdirs (and its forked
        children, which open spool files of their own) still spools where the
        daemon replays, not in a new directory under the new working directory."""
        monkeypatch.chdir(sandbox.root)
        spool = sandbox.spool.relative_to(sandbox.root)
        tracker = RunTracker("people", socket="absent.sock", spool=spool)
        assert tracker.client is not None
        assert tracker.client.socket_path == str(sandbox.root / "absent.sock")
        elsewhere = sandbox.root / "elsewhere"
        elsewhere.mkdir()
        monkeypatch.chdir(elsewhere)
        pid = os.fork()
        if pid == 0:  # a forked worker tracks a run: its own spool file
            try:
                tracker.start_run()
                tracker.end_run()
                tracker.close(timeout=0.5)
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        again = RunTracker("people", socket="absent.sock", spool=spool)
        assert again.client is not None  # relative text after the chdir: resolved afresh
        assert again.client.socket_path == str(elsewhere / "absent.sock")
        assert list(elsewhere.iterdir()) == []  # the child spooled in the daemon's spool
        assert any(sandbox.spool.glob("*.spool"))
        tracker.client.close()

    def test_a_config_file_broken_mid_process_keeps_its_earlier_paths(
        self, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A tracker per run, the config file rewritten non-atomically between two runs:
        the run in between still goes to the file's socket and spool (where the daemon
        listens and replays), not to the defaults, and says so every time."""
        config = sandbox.root / "c.toml"
        good = f"socket = '{sandbox.root / 'f.sock'}'\nspool = '{sandbox.spool}'\n"
        config.write_text(good)
        monkeypatch.setenv("RUNTALLY_CONFIG", str(config))
        monkeypatch.setenv("HOME", str(sandbox.root / "home"))
        first = RunTracker("people")
        for _ in range(2):
            config.write_text("socket = '")  # half written
            during = RunTracker("people")
            assert during.client is first.client is not None
            assert "keeping the paths it gave earlier" in capsys.readouterr().err
            config.write_text(good)
        assert RunTracker("people").client is first.client
        assert not (sandbox.root / "home").exists()  # no default spool was made
        first.client.close()  # type: ignore[union-attr]

    def test_an_argv_opt_out_between_runs_counts(
        self, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The Client is shared per (socket, spool); a tracker's own settings are its own:
        RUNTALLY_CAPTURE_ARGV=0 set before the second run keeps its argv out."""
        monkeypatch.setattr(sys, "argv", ["sync.py", "secret-arg"])
        # Paths from the environment (resolved per tracker), then given (memoised).
        for paths in ({}, {"socket": sandbox.sock}):
            monkeypatch.setenv("RUNTALLY_CAPTURE_ARGV", "1")
            tracker = RunTracker("people", spool=sandbox.spool, **paths)
            tracker.start_run()
            tracker.end_run()
            monkeypatch.setenv("RUNTALLY_CAPTURE_ARGV", "0")
            tracker = RunTracker("people", spool=sandbox.spool, **paths)
            tracker.start_run()
            tracker.end_run()
            assert tracker.client is not None
            events_now = of(RunStart, events(sandbox, tracker))
            assert "argv" in events_now[-2].meta
            assert "argv" not in events_now[-1].meta
            tracker.client.close()

    def test_many_socket_spool_pairs_keep_few_connections_open(
        self, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A long-running process that tracks to a new spool per run: the Clients it
        no longer uses give their connection and spool file back (a file descriptor
        and a daemon connection per pair ever used ran into both limits)."""
        from runtally.client._registry import MAX_OPEN_CLIENTS

        with peer(sandbox.sock) as p:
            trackers = []
            for i in range(3 * MAX_OPEN_CLIENTS):
                tracker = RunTracker("people", socket=sandbox.sock, spool=sandbox.root / f"sp{i}")
                tracker.start_run()
                tracker.end_run()
                tracker.close()
                trackers.append(tracker)
            clients = [t.client for t in trackers]
            connected = sum(1 for c in clients if c is not None and c._sock is not None)
            assert connected <= MAX_OPEN_CLIENTS + 1
            assert len(_open_spool_files()) <= MAX_OPEN_CLIENTS + 1
            first = trackers[0]  # released, still usable: it reconnects
            first.start_run()
            first.end_run()
            first.close()
            assert len(p.received) == 2 * (3 * MAX_OPEN_CLIENTS + 1)
            for tracker in trackers:
                tracker.client.close()  # type: ignore[union-attr]


class TestRunMeta:
    def test_argv_follows_sys_argv_from_run_to_run(
        self, sandbox: Sandbox, tracker: RunTracker, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(sys, "argv", ["sync.py", "--token=abc"])
        tracker.start_run()
        tracker.end_run()
        monkeypatch.setattr(sys, "argv", ["sync.py", "--full", "--password", "x"])
        tracker.start_run()
        tracker.end_run()
        first, second = (e.meta["argv"] for e in of(RunStart, events(sandbox, tracker)))
        assert first == ["sync.py", "--token=***"]
        assert second == ["sync.py", "--full", "--password", "***"]
