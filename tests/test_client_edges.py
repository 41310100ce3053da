"""Every event lands, at the edges too (issue 11, client side).

* Text UTF-8 cannot encode (a Latin-1 byte in argv, ``os.fsdecode`` of bad
  bytes, surrogate keys deep in ``detail``) is repaired, never the event lost.
* The spool is a write-ahead log: a pipeline SIGKILLed right after its
  tracking calls returned (with or without the daemon dying too) loses none
  of them.
* The spool is synced at flush/close and at most once a second while
  spooling, never per call.

Everything is real: pipelines are ``python`` processes using the real
RunTracker, the daemon is the real one as a child process, kills are kill -9.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from client_helpers import FrozenClock, Sandbox, make_sandbox
from daemon_helpers import count, ro_connect, wait_until
from fault_helpers import FaultDaemon, clean_env, wait_spool_drained, write_config

from runtally.client import Client, RunTracker
from runtally.client._coerce import clean, clean_text, plain
from runtally.protocol import StepStart

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def sandbox(monkeypatch: pytest.MonkeyPatch) -> Iterator[Sandbox]:
    yield from make_sandbox(monkeypatch)


def _daemon(root: Path) -> FaultDaemon:
    config = write_config(root, replay_interval_s=0.2)
    return FaultDaemon(root, extra_env={"RUNTALLY_CONFIG": str(config)})


# -- the sanitiser -------------------------------------------------------------------


class TestSanitiser:
    @pytest.mark.parametrize(
        ("raw", "want"),
        [
            ("plain", "plain"),
            ("café ✓", "café ✓"),  # valid text comes back as is
            (os.fsdecode(b"report-\xe9.csv"), "report-\\xe9.csv"),  # a smuggled byte: \xNN
            ("a\ud800b", "a\ufffdb"),  # any other lone surrogate: U+FFFD
        ],
    )
    def test_clean_text(self, raw: str, want: str) -> None:
        assert clean_text(raw) == want
        clean_text(raw).encode("utf-8")  # always encodable

    def test_valid_text_is_the_same_object(self) -> None:
        text = "café" * 10
        assert clean_text(text) is text

    def test_nested_keys_and_values_at_any_depth(self) -> None:
        bad = os.fsdecode(b"\xff")
        value = {bad: [{"k": bad, bad: (1, bad)}], "ok": 1}
        assert clean(value) == {"\\xff": [{"k": "\\xff", "\\xff": [1, "\\xff"]}], "ok": 1}
        assert plain(value) == clean(value)

    @pytest.mark.parametrize(
        "value",
        [
            {"batches": 3},
            {"a": 1.5, "b": None, "c": True, "d": "x", "e": -(2**63), "f": 2**64 - 1},
            {"x": os.fsdecode(b"\xff")},  # a smuggled byte: cleaned
            {"k": "y" * 5000},
            {1: 2},
            {"nested": {"a": [1, 2]}},
        ],
    )
    def test_plain_flat_dicts_as_the_general_path(self, value: dict) -> None:
        fast = plain(value)
        assert fast == plain(collections.OrderedDict(value))  # not a dict: the general path
        assert fast is not value  # a copy: the caller may change theirs afterwards
        msgspec.msgpack.encode(fast)  # always encodable

    def test_plain_past_messagepack_ints_is_replaced(self) -> None:
        assert plain({"big": 2**64}) == {"unencodable": "{'big': 18446744073709551616}"}


# -- odd text against the real daemon ---------------------------------------------------

LATIN1_PIPELINE = r"""
import json, sys
from runtally import RunTracker
t = RunTracker("latin1", socket=sys.argv[1], spool=sys.argv[2])
run = t.start_run()
steps = []
for name in sys.argv[3:]:
    sid = t.start_step(name)  # a step named after a Latin-1 file name
    t.end_step(sid, "success", created=1)
    steps.append(sid)
t.end_run(True, {"files": sys.argv[3:]})
t.close()
print(json.dumps({"run": run, "steps": steps}))
"""


def test_latin1_argv_pipeline_lands_whole(short_root: Path) -> None:
    """A pipeline started with a non-UTF-8 byte in argv records its run and every step."""
    d = _daemon(short_root).start()
    try:
        files = [b"report-\xe9.csv", b"plain.csv", b"\xff\xfe"]
        argv = [
            os.fsencode(sys.executable),
            b"-c",
            LATIN1_PIPELINE.encode(),
            os.fsencode(str(d.socket)),
            os.fsencode(str(d.spool)),
            *files,
        ]
        done = subprocess.run(argv, env=clean_env(), capture_output=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        assert b"runtally:" not in done.stderr, done.stderr  # nothing dropped, nothing warned
        out = json.loads(done.stdout)
        wait_until(lambda: count(d.db, "runs", "uid = ? AND outcome = 'success'", [out["run"]]))
        conn = ro_connect(d.db)
        try:
            meta = json.loads(
                conn.execute("SELECT meta_json FROM runs WHERE uid = ?", [out["run"]]).fetchone()[0]
            )
            names = [
                row[0]
                for row in conn.execute(
                    "SELECT step_name FROM run_steps WHERE uid IN (?, ?, ?) ORDER BY id",
                    out["steps"],
                )
            ]
            finished = conn.execute(
                "SELECT count(*) FROM run_steps WHERE outcome = 'success' AND created_count = 1"
            ).fetchone()[0]
        finally:
            conn.close()
        assert names == ["report-\\xe9.csv", "plain.csv", "\\xff\\xfe"]
        assert finished == 3
        assert meta["argv"][-3:] == names
        assert count(d.db, "dead_letters") == 0
    finally:
        d.ensure_dead()


def test_fsdecoded_error_and_surrogate_keys_land(sandbox: Sandbox, short_root: Path) -> None:
    """An error message built with os.fsdecode and a detail with surrogate keys, deep down."""
    d = _daemon(short_root).start()
    try:
        bad = os.fsdecode(b"/data/lid-\xe9\xe8.csv")
        t = RunTracker("odd-text", socket=d.socket, spool=d.spool)
        run = t.start_run()
        sid = t.start_step(f"import {bad}")
        eid = t.record_error("import", sid, bad, f"cannot read {bad}", f"Traceback: {bad}")
        try:
            raise OSError(2, "No such file", bad)
        except OSError as exc:
            eid2 = t.record_error("import", sid, None, exc)
        detail = {"files": {bad: {"nested": [{bad: bad}]}}, "n": 1}
        t.end_step(sid, "failure", failed=2, detail=detail)
        t.end_run(False, {bad: [bad]})
        assert t.client is not None
        assert t.client.flush(10) is True
        t.client.close()
        shown = "/data/lid-\\xe9\\xe8.csv"
        conn = ro_connect(d.db)
        try:
            rows = dict(
                conn.execute(
                    "SELECT uid, error_message || '|' || coalesce(member_identifier, '')"
                    " || '|' || coalesce(error_stack, '') FROM run_errors WHERE uid IN (?, ?)",
                    [eid, eid2],
                ).fetchall()
            )
            step = conn.execute(
                "SELECT step_name, detail_json, outcome FROM run_steps WHERE uid = ?", [sid]
            ).fetchone()
            summary = conn.execute(
                "SELECT summary_json, outcome FROM runs WHERE uid = ?", [run]
            ).fetchone()
        finally:
            conn.close()
        assert rows[eid] == f"cannot read {shown}|{shown}|Traceback: {shown}"
        # The exception type leads (issue 13); str(exc) escapes the bytes itself.
        assert rows[eid2].startswith("FileNotFoundError: [Errno 2] No such file")
        assert step[0] == f"import {shown}"
        assert json.loads(step[1]) == {"files": {shown: {"nested": [{shown: shown}]}}, "n": 1}
        assert step[2] == "failure"
        assert json.loads(summary[0]) == {shown: [shown]}
        assert count(d.db, "dead_letters") == 0
    finally:
        d.ensure_dead()


def test_hand_built_event_with_surrogates_is_repaired_not_dropped(sandbox: Sandbox) -> None:
    """The Client's last resort: an event built by hand, bypassing the tracker's coercion."""
    client = sandbox.client()
    bad = os.fsdecode(b"x\xe9")
    client.emit(StepStart(id="e1", ts=1_700_000_000_000, run="r", step="s", name=bad))
    client.close()
    (event,) = sandbox.spooled()
    assert event.name == "x\\xe9"


# -- the spool as a write-ahead log: SIGKILL -------------------------------------------

# Emits a burst of tracking calls, writes what it recorded to cfg["out"] (the
# calls have all returned by then), then waits to be killed.
BURST_PIPELINE = r"""
import json, os, sys, time
cfg = json.loads(sys.argv[1])
from runtally import RunTracker
t = RunTracker("burst", socket=cfg["socket"], spool=cfg["spool"])
runs = {}
for r in range(cfg["runs"]):
    run = t.start_run()
    steps, errors = {}, []
    for s in range(cfg["steps"]):
        sid = t.start_step(f"step{s}")
        for e in range(cfg["errors"]):
            errors.append(t.record_error(f"step{s}", sid, f"m{e}", f"boom {r}.{s}.{e}"))
        t.end_step(sid, "success", s, 0, 0, cfg["errors"])
        steps[sid] = s
    t.end_run(True)
    runs[run] = {"steps": steps, "errors": errors}
with open(cfg["out"] + ".tmp", "w") as fh:
    json.dump(runs, fh)
os.rename(cfg["out"] + ".tmp", cfg["out"])
time.sleep(600)
"""


def _spawn_burst(root: Path, d: FaultDaemon, runs: int = 20) -> tuple[subprocess.Popen, Path]:
    out = root / "burst.json"
    cfg = {
        "socket": str(d.socket),
        "spool": str(d.spool),
        "out": str(out),
        "runs": runs,
        "steps": 5,
        "errors": 10,
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", BURST_PIPELINE, json.dumps(cfg)],
        env=clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    return proc, out


def _assert_burst_landed(db: Path, runs: dict) -> None:
    conn = ro_connect(db)
    try:
        for run, r in runs.items():
            row = conn.execute(
                "SELECT id, outcome, total_created, total_failed FROM runs WHERE uid = ?", [run]
            ).fetchone()
            assert row is not None, f"run {run} missing"
            assert row[1:] == ("success", sum(r["steps"].values()), 10 * len(r["steps"])), row
            steps = conn.execute(
                "SELECT uid, created_count FROM run_steps WHERE run_id = ? AND outcome = 'success'",
                [row[0]],
            ).fetchall()
            assert dict(steps) == r["steps"]
            errors = conn.execute(
                "SELECT uid FROM run_errors WHERE run_id = ?", [row[0]]
            ).fetchall()
            assert sorted(e[0] for e in errors) == sorted(r["errors"])
        total_runs = conn.execute("SELECT count(*) FROM runs WHERE pipeline = 'burst'").fetchone()
        parked = conn.execute("SELECT count(*) FROM parked_events").fetchone()[0]
        dead = conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
    finally:
        conn.close()
    assert total_runs[0] == len(runs)  # exactly once: no run twice
    assert (parked, dead) == (0, 0)


@pytest.mark.slow
@pytest.mark.parametrize("also_daemon", [False, True], ids=["pipeline", "pipeline+daemon"])
def test_sigkill_right_after_the_calls_returned_loses_nothing(
    short_root: Path, also_daemon: bool
) -> None:
    """kill -9 of the pipeline as soon as its last call returned (and of the daemon with it):
    once replayed, every event whose call returned is in the db exactly once.

    The daemon is stopped (SIGSTOP) while the pipeline emits its burst, so
    that at the kill its events are where a slow daemon leaves them: some in
    the socket's kernel buffer, the rest only in the pipeline's memory.
    """
    d = _daemon(short_root).start()
    assert d.proc is not None
    d.proc.send_signal(signal.SIGSTOP)
    proc, out = _spawn_burst(short_root, d, runs=60)
    try:
        wait_until(out.exists, timeout=60, interval=0.001, what="the pipeline's last call")
        proc.send_signal(signal.SIGKILL)
        if also_daemon:
            d.proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        assert proc.returncode == -signal.SIGKILL
        runs = json.loads(out.read_text())
        if also_daemon:
            d.ensure_dead()
            d.start()  # the daemon started clean replays the dead pipeline's spool
        else:
            d.proc.send_signal(signal.SIGCONT)
        wait_spool_drained(d.spool, timeout=30)
        wait_until(
            lambda: count(d.db, "runs", "pipeline = 'burst' AND outcome = 'success'") == len(runs),
            timeout=30,
            what="every run to land",
        )
        _assert_burst_landed(d.db, runs)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        if d.proc is not None and d.proc.poll() is None:
            d.proc.send_signal(signal.SIGCONT)
        d.ensure_dead()


# -- syncing the spool -----------------------------------------------------------------


def test_spool_synced_each_second_while_spooling_never_per_call(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fdatasync at most once a second of spooling, and at flush/close; never per call."""
    syncs: list[int] = []
    real = os.fdatasync

    def counting(fd: int) -> None:
        syncs.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", counting)
    clock = FrozenClock()
    client = Client(sandbox.sock, sandbox.spool, clock=clock)  # no daemon: spooling
    for i in range(500):
        client.emit(StepStart(id=f"e{i}", ts=1_700_000_000_000, run="r", step="s", name="n"))
    assert syncs == []  # 500 calls within one second: not one sync
    clock.advance(1.0)
    client.emit(StepStart(id="late", ts=1_700_000_000_000, run="r", step="s", name="n"))
    assert len(syncs) == 1
    for i in range(100):
        client.emit(StepStart(id=f"f{i}", ts=1_700_000_000_000, run="r", step="s", name="n"))
    assert len(syncs) == 1
    assert client.flush(0.1) is False  # nothing acked: what is spooled is synced
    assert len(syncs) == 2
    client.close()  # nothing written since: no further sync needed
    assert len(syncs) == 2
    assert len(sandbox.spooled()) == 601


# -- a full spool disk: the loss is counted and shown ------------------------------------


@pytest.mark.slow
def test_full_spool_disk_loss_is_counted_reported_and_shown(
    sandbox: Sandbox, short_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Events dropped while the spool's disk is full are counted per run; once space is
    back a ``dropped`` marker goes in, and the daemon closes the run as failure with an
    error row "n events were lost: spool disk full", which ``status`` reports."""
    from test_faults_disk import fill, small_tmpfs

    from runtally.cli._health import collect

    d = _daemon(short_root)
    with small_tmpfs(d.spool, "1m"):
        t = RunTracker("full-disk", socket=d.socket, spool=d.spool)  # daemon down: spooling
        run = t.start_run()
        sid = t.start_step("download")
        filler = fill(d.spool)
        # The spool file's last page still takes a few records; then every write fails.
        for i in range(100):
            t.record_error("download", sid, None, f"error {i}: " + "x" * 200)
        assert t.client is not None
        lost = t.client.lost.total
        assert 50 < lost < 100, lost
        err = capsys.readouterr().err
        assert err.count("cannot write spool file") == 1, err  # one line, not one per event
        filler.unlink()  # space is back
        t.end_step(sid, "failure", failed=100)
        sid2 = t.start_step("upload")
        t.end_step(sid2, "success", created=1)
        t.end_run(True)
        t.close(0.1)
        t.client.close(0.1)  # release the spool file to the replayer
        err = capsys.readouterr().err
        assert f"{lost} event(s) of run {run} were lost" in err, err
        try:
            d.start()
            wait_spool_drained(d.spool, timeout=30)
            wait_until(
                lambda: count(d.db, "run_errors", "error_message LIKE '%lost: spool disk full'"),
                what="the dropped marker to be applied",
            )
            conn = ro_connect(d.db)
            try:
                outcome, finished = conn.execute(
                    "SELECT outcome, finished_at FROM runs WHERE uid = ?", [run]
                ).fetchone()
                messages = [
                    row[0]
                    for row in conn.execute(
                        "SELECT e.error_message FROM run_errors e JOIN runs r ON r.id = e.run_id"
                        " WHERE r.uid = ?",
                        [run],
                    )
                ]
                steps = conn.execute("SELECT count(*) FROM run_steps").fetchone()[0]
            finally:
                conn.close()
            assert (outcome, finished is not None) == ("failure", True)  # run_end did not undo it
            assert f"{lost} events were lost: spool disk full" in messages
            assert len(messages) == 100 - lost + 1  # the errors that were kept, and the marker
            assert steps == 2
            report = collect(d.socket, d.db, d.spool)
            assert not report.healthy
            assert (report.database.lost_events, report.database.lost_runs) == (lost, 1)
            assert any(f"{lost} event(s) of 1 run(s) were lost" in p for p in report.problems)
        finally:
            d.ensure_dead()
