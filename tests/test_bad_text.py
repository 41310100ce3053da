"""A database row whose TEXT is not UTF-8 (an adopted or hand-edited file) is shown, not fatal.

Found from outside: one such pipeline name stopped the daemon's monitor for
every pipeline (no late/missed/crashed detection, no alerts) and made every
``runs``/``errors`` listing and the dashboard's lists fail.  The daemon never
writes such text; the old tracker's database, a restored backup or a hand
edit can hold it.  Every connection reads it with each bad byte as ``\\xNN``.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from click.testing import CliRunner
from monitor_helpers import make_rig
from starlette.testclient import TestClient

from runtally._pipeline_config import PipelineConfig
from runtally.cli import main
from runtally.daemon._store import Store
from runtally.daemon._writer import Writer
from runtally.protocol import ErrorEvent, RunEnd, RunStart, StepEnd, StepStart
from runtally.web import WebConfig, create_app

T = 1_770_000_000_000
BAD = "\\xffA"  # how the bytes ff 41 are shown


def write_runs(store: Store) -> None:
    for run, pipeline in (("good", "people"), ("bad", "tobespoiled")):
        store.apply(
            [
                RunStart(id=f"{run}-s", ts=T, run=run, pipeline=pipeline),
                StepStart(id=f"{run}-ss", ts=T, run=run, step=f"{run}-st", name="download"),
                ErrorEvent(id=f"{run}-e", ts=T, run=run, step_name="download", message="m"),
                StepEnd(id=f"{run}-se", ts=T, run=run, step=f"{run}-st", outcome="success"),
                RunEnd(id=f"{run}-re", ts=T + 5, run=run, outcome="failure"),
            ]
        )


def spoil(path: Path) -> None:
    """What no runtally writes: bytes that are not UTF-8 in TEXT columns of run 'bad'."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        (run_id,) = conn.execute("SELECT id FROM runs WHERE uid = 'bad'").fetchone()
        conn.execute("UPDATE runs SET pipeline = CAST(X'ff41' AS TEXT) WHERE id = ?", (run_id,))
        conn.execute(
            "UPDATE run_steps SET step_name = CAST(X'ff41' AS TEXT) WHERE run_id = ?", (run_id,)
        )
        conn.execute(
            "UPDATE run_errors SET error_message = CAST(X'ff41' AS TEXT),"
            " step_name = CAST(X'ff41' AS TEXT) WHERE run_id = ?",
            (run_id,),
        )
    finally:
        conn.close()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "dashboard.sqlite"
    store = Store.open(path)
    try:
        write_runs(store)
        store.checkpoint()
    finally:
        store.close()
    spoil(path)
    return path


def cli_json(db: Path, *args: str) -> dict:
    env = {"RUNTALLY_CONFIG": None, "RUNTALLY_DB": None, "RUNTALLY_SOCKET": None}
    result = CliRunner().invoke(main, [*args, "--db", str(db), "--json"], env=env)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_the_cli_lists_every_row(db: Path) -> None:
    runs = cli_json(db, "runs")["runs"]
    assert sorted(r["pipeline"] for r in runs) == sorted(["people", BAD])
    errors = cli_json(db, "errors")["errors"]
    assert sorted(e["error_message"] for e in errors) == sorted(["m", BAD])
    bad = next(r for r in runs if r["pipeline"] == BAD)
    shown = cli_json(db, "show", str(bad["id"]))
    assert [s["step_name"] for s in shown["steps"]] == [BAD]


def test_the_dashboard_lists_every_row(db: Path) -> None:
    app = create_app(WebConfig(db=db, socket=db.parent / "none.sock", spool=db.parent / "spool"))
    with TestClient(app) as c:
        runs = c.get("/api/runs").json()["runs"]
        assert sorted(r["pipeline"] for r in runs) == sorted(["people", BAD])
        assert len(c.get("/api/errors").json()["errors"]) == 2
        for page in ("/", "/runs", "/errors", "/pipelines"):
            assert c.get(page).status_code == 200, page


@pytest.fixture
async def parts(db: Path, nursery: trio.Nursery) -> AsyncIterator[tuple[Path, Store, Writer]]:
    store = Store.open(db)
    writer = Writer(store)
    await nursery.start(writer.run)
    try:
        yield db.parent, store, writer
    finally:
        writer.close()


async def test_the_monitor_judges_every_pipeline(parts: tuple[Path, Store, Writer]) -> None:
    daily = PipelineConfig(schedule="0 3 * * *", timezone="UTC", grace="1h")
    r = make_rig(*parts, "2026-05-01T00:00:00", pipelines={"nightly": daily})
    assert await r.state_at("2026-05-01T00:00:00", "nightly") == "ok"  # first seen
    verdicts = await r.monitor.tick()
    assert verdicts["people"].state == "failing"
    r.clock.at("2026-05-01T04:00:00")
    verdicts = await r.monitor.tick()
    assert verdicts["nightly"].state == "late"  # one bad row stops no judgement
    assert verdicts["people"].state == "failing"
    # The bad name is listed (as shown); its runs are not found under that text.
    assert BAD in verdicts
