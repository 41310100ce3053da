"""One nesting limit for free-form values, shared by the client and the daemon.

The protocol's ``MAX_DEPTH`` (32): the daemon refuses a deeper ``meta`` /
``detail`` / ``summary`` with a nack naming it, and the client cuts a deeper
value with ``limit_depth`` before sending, so its events always land.  The
end-to-end test runs a real pipeline process (a shallow stack, as a cron job
has) against a real daemon process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from daemon_helpers import DaemonProcess, count, ro_connect, wait_until
from fault_helpers import FORBIDDEN_STDERR, clean_env

from runtally.protocol import (
    DEPTH_MARKER,
    MAX_DEPTH,
    Refusal,
    RunEnd,
    RunStart,
    StepEnd,
    decode_client_message,
    depth_exceeds,
    encode_frame,
    limit_depth,
)


def nested(depth: int, leaf: Any = 1, kind: type = list) -> Any:
    """``depth`` containers one inside the other around ``leaf`` (built without recursion)."""
    value = leaf
    for i in range(depth):
        value = [value] if kind is list else {f"k{i}": value}
    return value


def depth_of(value: Any) -> int:
    depth = 0
    while isinstance(value, list | dict | tuple):
        depth += 1
        value = next(iter(value.values())) if isinstance(value, dict) else value[0]
    return depth


class TestLimitDepth:
    @pytest.mark.parametrize("kind", [list, dict])
    def test_at_the_limit_is_untouched(self, kind: type) -> None:
        value = nested(MAX_DEPTH, kind=kind)
        assert not depth_exceeds(value)
        assert limit_depth(value) is value

    @pytest.mark.parametrize("kind", [list, dict])
    @pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 990, 50_000])
    def test_deeper_is_cut_to_the_limit_with_a_marker(self, kind: type, depth: int) -> None:
        value = nested(depth, kind=kind)
        assert depth_exceeds(value)
        cut = limit_depth(value)
        assert depth_of(cut) == MAX_DEPTH
        assert not depth_exceeds(cut)
        inner = cut
        for _ in range(MAX_DEPTH):
            inner = next(iter(inner.values())) if isinstance(inner, dict) else inner[0]
        assert inner == DEPTH_MARKER == f"<nested deeper than {MAX_DEPTH} levels>"

    def test_only_the_deep_branch_is_cut(self) -> None:
        value = {"shallow": [1, {"a": "b"}], "deep": nested(100), "n": 3, "t": (1, (2,))}
        cut = limit_depth(value)
        assert cut["shallow"] == [1, {"a": "b"}] and cut["n"] == 3 and cut["t"] == (1, (2,))
        assert depth_of(cut["deep"]) == MAX_DEPTH - 1

    def test_a_value_that_contains_itself_is_cut_not_a_recursion_error(self) -> None:
        loop: list = [1]
        loop.append(loop)
        assert depth_exceeds(loop)
        cut = limit_depth(loop)
        assert cut[0] == 1 and not depth_exceeds(cut)

    @pytest.mark.parametrize("value", [None, 1, "x" * 100, b"x", 1.5, {}, []])
    def test_scalars_and_empty_containers(self, value: Any) -> None:
        assert not depth_exceeds(value)
        assert limit_depth(value) is value


class TestDaemonSideDepth:
    """decode_client_message refuses an over-deep free-form field as an invalid event."""

    @pytest.mark.parametrize(
        ("event", "field"),
        [
            (StepEnd(id="e1", ts=1, run="r", step="s", outcome="success"), "detail"),
            (RunEnd(id="e1", ts=1, run="r", outcome="success"), "summary"),
            (RunStart(id="e1", ts=1, run="r", pipeline="p"), "meta"),
        ],
    )
    def test_over_the_limit_is_a_nack_naming_field_and_limit(self, event: Any, field: str) -> None:
        kind = dict if field == "meta" else list
        too_deep = encode_frame(_with(event, field, nested(MAX_DEPTH + 1, kind=kind)))[4:]
        refusal = decode_client_message(too_deep)
        assert isinstance(refusal, Refusal), refusal
        assert (refusal.kind, refusal.event_id, refusal.is_event) == ("invalid", "e1", True)
        assert field in refusal.reason and str(MAX_DEPTH) in refusal.reason
        assert not refusal.closes
        at_limit = encode_frame(_with(event, field, nested(MAX_DEPTH, kind=kind)))[4:]
        assert type(decode_client_message(at_limit)) is type(event)


def _with(event: Any, field: str, value: Any) -> Any:
    import msgspec

    return msgspec.structs.replace(event, **{field: value})


# A pipeline with a shallow stack, as cron runs it: one step whose detail (and the
# run's summary) nest 990 deep, the depth the client used to encode and the daemon
# could not decode.
PIPELINE = r"""
import json, sys
from runtally import RunTracker
cfg = json.loads(sys.argv[1])

def nested(depth):
    value = 1
    for _ in range(depth):
        value = [value]
    return value

tracker = RunTracker("deep", socket=cfg["socket"], spool=cfg["spool"])
run = tracker.start_run()
sid = tracker.start_step("load")
tracker.end_step(sid, "success", 7, 2, 1, 0, {"rows": nested(990)})
tracker.end_run(True, nested(990))
tracker.close()
print(json.dumps({"run": run, "step": sid, "acked": tracker.client.acked}))
"""


def test_a_990_deep_detail_lands_with_its_counts(daemon_proc: DaemonProcess) -> None:
    """Through the real client and the real daemon: the step and the run are finished
    with their counts, and what was too deep is stored as the marker."""
    cfg = {"socket": str(daemon_proc.socket), "spool": str(daemon_proc.spool)}
    done = subprocess.run(
        [sys.executable, "-c", PIPELINE, json.dumps(cfg)],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    bad = [line for line in done.stderr.splitlines() if any(f in line for f in FORBIDDEN_STDERR)]
    assert not bad, done.stderr
    result = json.loads(done.stdout)
    assert result["acked"] == 4, result

    def step_row() -> tuple | None:
        conn = ro_connect(daemon_proc.db)
        try:
            return conn.execute(
                "SELECT s.outcome, s.created_count, s.updated_count, s.skipped_count,"
                " s.failed_count, s.detail_json, r.outcome, r.total_created, r.summary_json"
                " FROM run_steps s JOIN runs r ON r.id = s.run_id WHERE s.uid = ?",
                (result["step"],),
            ).fetchone()
        finally:
            conn.close()

    row = wait_until(step_row, timeout=10, what="the step in the database")
    assert row[:5] == ("success", 7, 2, 1, 0)
    assert row[6:8] == ("success", 7)
    detail, summary = json.loads(row[5]), json.loads(row[8])
    assert depth_of(detail) == MAX_DEPTH and DEPTH_MARKER in row[5]
    assert depth_of(summary) == MAX_DEPTH and DEPTH_MARKER in row[8]
    assert count(daemon_proc.db, "dead_letters") == 0
