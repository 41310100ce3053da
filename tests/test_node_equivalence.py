"""The seven seed pipelines' call sequences leave the same rows through Node and Python.

``clients/node/test/fixtures/seed-pipelines.json`` is the calls of
seeds/2-run-tracker.plan.md (steps and counts of sync-people, -nikki,
-teams, -functions, -discipline, -freescout, and sync-all with the
discipline run nested in it; nikki's numeric error count; the early-return
paths).  ``scenario.js`` plays it through the Node client, ``_play`` below
through the Python client, each into a daemon of its own; the rows must be
equal but for ids, uids, times and the process's meta.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from daemon_helpers import DaemonProcess, ro_connect, wait_until
from node_helpers import FIXTURES, NODE, needs_node, node_env

from runtally.client import RunTracker

SCENARIO = FIXTURES / "seed-pipelines.json"

pytestmark = needs_node


def _play(ops: list[list[Any]], socket: Path, spool: Path) -> None:
    """The Python client making the same calls as scenario.js, op by op."""
    trackers: dict[str, RunTracker] = {}
    steps: dict[str, str | None] = {}
    for op, t, *args in ops:
        tracker = trackers.get(t)
        match op:
            case "new":
                trackers[t] = RunTracker(args[0], socket=socket, spool=spool)
            case "startRun":
                tracker.start_run()  # type: ignore[union-attr]
            case "startStep":
                steps[args[1]] = tracker.start_step(args[0])  # type: ignore[union-attr]
            case "endStep":
                tracker.end_step(steps[args[0]], args[1])  # type: ignore[union-attr]
            case "recordErrors":
                tracker.record_errors(args[0], steps[args[1]], args[2])  # type: ignore[union-attr]
            case "recordError":
                opts = dict(args[0])
                opts["stepId"] = steps[opts.pop("step")]
                tracker.record_error(opts)  # type: ignore[union-attr]
            case "endRun":
                tracker.end_run(args[0], args[1])  # type: ignore[union-attr]
    for tracker in trackers.values():
        tracker.close()


def _rows(db: Path) -> dict[str, list[tuple]]:
    """Every run, step and error row, with ids replaced by what they point at."""
    conn = ro_connect(db)
    try:
        runs = conn.execute(
            "SELECT r.id, r.pipeline, r.club_slug, r.outcome, r.total_created, r.total_updated,"
            " r.total_skipped, r.total_failed, r.summary_json, p.pipeline,"
            " r.finished_at IS NOT NULL, r.duration_ms IS NOT NULL"
            " FROM runs r LEFT JOIN runs p ON p.id = r.parent_run_id ORDER BY r.id"
        ).fetchall()
        index = {row[0]: n for n, row in enumerate(runs)}
        steps = conn.execute(
            "SELECT id, run_id, step_name, outcome, created_count, updated_count, skipped_count,"
            " failed_count, detail_json, finished_at IS NOT NULL, duration_ms IS NOT NULL"
            " FROM run_steps ORDER BY id"
        ).fetchall()
        step_index = {row[0]: n for n, row in enumerate(steps)}
        errors = conn.execute(
            "SELECT run_id, run_step_id, step_name, member_identifier, error_message, error_stack"
            " FROM run_errors ORDER BY id"
        ).fetchall()
    finally:
        conn.close()

    def parsed(text: str | None) -> Any:
        return None if text is None else json.loads(text)

    return {
        "runs": [(*r[1:8], parsed(r[8]), *r[9:]) for r in runs],
        "steps": [(index[s[1]], *s[2:8], parsed(s[8]), *s[9:]) for s in steps],
        "errors": [(index[e[0]], step_index.get(e[1]), *e[2:]) for e in errors],
    }


def _daemon(root: Path) -> DaemonProcess:
    root.mkdir()
    return DaemonProcess(root).start()


def test_seed_pipelines_leave_the_same_rows(short_root: Path) -> None:
    ops = json.loads(SCENARIO.read_text())["ops"]
    through_node = _daemon(short_root / "n")
    through_python = _daemon(short_root / "p")
    try:
        assert NODE is not None
        subprocess.run(
            [NODE, str(FIXTURES / "scenario.js"), str(SCENARIO)],
            env=node_env(through_node.socket, through_node.spool),
            check=True,
            timeout=60,
        )
        _play(ops, through_python.socket, through_python.spool)
        expected_runs = sum(1 for op in ops if op[0] == "endRun")
        for d in (through_node, through_python):
            wait_until(
                lambda d=d: (
                    len(_rows(d.db)["runs"]) == expected_runs
                    and all(r[2] != "running" for r in _rows(d.db)["runs"])
                ),
                what="every run to be finished",
            )
        node_rows, python_rows = _rows(through_node.db), _rows(through_python.db)
    finally:
        through_node.stop()
        through_python.stop()
    assert node_rows == python_rows
    # And they are the rows the seed's tracker would have written (spot checks).
    runs = node_rows["runs"]
    assert [r[0] for r in runs] == [
        "people",
        "people",
        "nikki",
        "teams",
        "functions",
        "discipline",
        "freescout",
        "freescout",
        "all",
        "discipline",
    ]
    assert runs[-1][8] == "all"  # the nested discipline run's parent
    nikki_errors = [e for e in node_rows["errors"] if e[0] == 2]
    assert [e[4] for e in nikki_errors] == ["Step reported 3 error(s)"]
    assert len(node_rows["steps"]) == 7 + 1 + 2 + 3 + 3 + 2 + 1 + 14 + 2
