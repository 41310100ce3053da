"""The dashboard's pipelines page, its words and its charts, through Starlette's test client.

``/pipelines`` lists every declared or judged pipeline with its state, last
run and next expected run (the same figure as ``runtally pipelines``), and
``/api/pipelines`` is ``runtally pipelines --json``.  Counts read ``1 file``,
not ``1 file(s)``; a pipeline without rows says so once; the daily success
rate has a percent axis and dates.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from click.testing import CliRunner
from daemon_helpers import DaemonProcess, wait_until
from starlette.testclient import TestClient
from web_helpers import get, web_process

from runtally._pipeline_config import PipelineConfig
from runtally.cli import main
from runtally.cli._render import fmt_local
from runtally.daemon._schedule import next_slot
from runtally.daemon._store import Store
from runtally.daemon._timefmt import iso_from_ms
from runtally.protocol import SPOOL_MAGIC, RunEnd, RunStart, StepEnd, StepStart, encode_record
from runtally.web import WebConfig, create_app

NOW = int(time.time() * 1000)
HOUR, DAY = 3_600_000, 86_400_000
DAILY = PipelineConfig(schedule="0 3 * * *", timezone="UTC", club="rondo")
DECLARED = {"people": DAILY, "discipline": DAILY}
STALE_NEXT = NOW - 10_000


def _build(db: Path) -> None:
    """people: runs on three days, no created/updated rows at all; a late state."""
    store = Store.open(db)
    try:
        events: list = []
        for n, ago in enumerate((2 * DAY, DAY, HOUR)):
            run, t = f"r{n}", NOW - ago
            events += [
                RunStart(id=f"{run}a", ts=t, run=run, pipeline="people", club_slug="rondo"),
                StepStart(id=f"{run}b", ts=t + 1, run=run, step=f"{run}s", name="download"),
                StepEnd(id=f"{run}c", ts=t + 2, run=run, step=f"{run}s", outcome="success"),
                RunEnd(id=f"{run}d", ts=t + 3, run=run, outcome="failure" if n == 1 else "success"),
            ]
        store.apply(events)
        stamp = iso_from_ms(NOW - HOUR)
        store.apply(
            (),
            writes=[
                lambda c: c.execute(
                    "INSERT INTO pipeline_states (pipeline, state, since, detail, club_slug,"
                    " last_run_id, expected_at, next_expected_at, first_seen_at, updated_at)"
                    " VALUES ('people', 'late', ?, 'no run since its slot (grace 60 min)',"
                    " 'rondo', 3, ?, ?, ?, ?)",
                    (stamp, iso_from_ms(NOW - 2 * HOUR), iso_from_ms(STALE_NEXT), stamp, stamp),
                )
            ],
        )
        store.checkpoint()
    finally:
        store.close()


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("webp") / "dashboard.sqlite"
    _build(path)
    spool = path.parent / "spool"
    (spool / "corrupt").mkdir(parents=True)
    (spool / "corrupt" / "1-h-1-x.spool").write_bytes(b"garbage")
    record = encode_record(msgspec.msgpack.encode(RunStart(id="w", ts=NOW, run="w", pipeline="p")))
    (spool / f"{NOW}-h-2-y.spool").write_bytes(SPOOL_MAGIC + record)
    return path


@pytest.fixture(scope="module")
def client(db: Path) -> Iterator[TestClient]:
    config = WebConfig(
        db=db, socket=db.parent / "none.sock", spool=db.parent / "spool", pipelines=DECLARED
    )
    with TestClient(create_app(config)) as c:
        yield c


def _rows(html: str) -> dict[str, str]:
    rows = re.findall(r'<tr class="pipeline-row" data-pipeline="([^"]+)">(.*?)</tr>', html, re.S)
    return dict(rows)


class TestPipelinesIndex:
    def test_lists_declared_and_judged_pipelines_with_state_and_next_run(
        self, client: TestClient
    ) -> None:
        r = client.get("/pipelines")
        assert r.status_code == 200
        rows = _rows(r.text)
        assert set(rows) == {"people", "discipline"}
        people, discipline = rows["people"], rows["discipline"]
        assert 'class="state bad"' in people and ">late<" in people
        assert "slot " in people and "2h ago" in people  # the slot's age, as of now
        assert 'href="/runs/3"' in people
        # The stored next run passed 10 s ago: the schedule's next slot instead.
        expected = iso_from_ms(next_slot(DAILY, int(time.time() * 1000)))
        assert f'datetime="{expected}"' in people
        assert fmt_local(iso_from_ms(STALE_NEXT)) not in people
        assert "not judged yet" in discipline and "no run yet" in discipline
        assert f'datetime="{expected}"' in discipline

    def test_the_nav_links_it_on_every_page(self, client: TestClient) -> None:
        for url in ("/", "/runs", "/errors", "/pipelines", "/pipelines/people"):
            html = client.get(url).text
            assert '<a href="/pipelines"' in html, url
        assert 'href="/pipelines" aria-current="page"' in client.get("/pipelines").text

    def test_api_is_the_cli_json(self, client: TestClient, db: Path) -> None:
        config = db.parent / "runtally.toml"
        config.write_text(
            '[pipelines.people]\nschedule = "0 3 * * *"\ntimezone = "UTC"\nclub = "rondo"\n'
            '[pipelines.discipline]\nschedule = "0 3 * * *"\ntimezone = "UTC"\nclub = "rondo"\n'
        )
        env = {"RUNTALLY_CONFIG": None, "RUNTALLY_DB": None}
        result = CliRunner().invoke(
            main, ["pipelines", "--json", "--db", str(db), "--config", str(config)], env=env
        )
        assert result.exit_code == 0, result.output
        r = client.get("/api/pipelines")
        assert r.status_code == 200
        assert r.json() == json.loads(result.output)


class TestWords:
    def test_counts_are_proper_plurals(self, client: TestClient) -> None:
        html = client.get("/").text
        assert "(s)" not in html
        assert "1 file waiting" in html
        assert "1 quarantined file<" in html
        page = client.get("/pipelines/people").text
        assert "Duration of the last 3 runs" in page
        assert "(s)" not in page


class TestCharts:
    def test_no_rows_recorded_says_so_once(self, client: TestClient) -> None:
        html = client.get("/pipelines/people").text
        assert html.count("no rows recorded") == 1
        assert "max 1 rows" not in html

    def test_success_rate_has_a_percent_axis_and_dates(self, client: TestClient) -> None:
        html = client.get("/pipelines/people").text
        (rate,) = re.findall(r'<svg [^>]*aria-label="success rate per day[^"]*".*?</svg>', html)
        labels = re.findall(r'<text [^>]*class="axis-label">([^<]*)</text>', rate)
        assert labels[:3] == ["0 %", "50 %", "100 %"]
        days = [d.lstrip("0") for d in (time.strftime("%d %b", time.gmtime(NOW / 1000 - s))
                                        for s in (2 * 86400, 3600))]  # fmt: skip
        assert labels[3] == days[0] and labels[-1] == days[1]  # first and last day
        assert len(re.findall(r"<line [^>]*class=\"axis\"", rate)) == 3
        assert "style=" not in rate  # CSP: no inline style
        assert "100% of 1 run succeeded" in rate  # the hover text: a plural too


def test_daemon_card_counts_connections_in_words(daemon_proc: DaemonProcess) -> None:
    config = WebConfig(db=daemon_proc.db, socket=daemon_proc.socket, spool=daemon_proc.spool)
    with TestClient(create_app(config)) as c:
        html = c.get("/").text
    (n, word) = re.findall(r"(\d+) (connections?)</p>", html)[0]
    assert word == ("connection" if n == "1" else "connections")
    assert re.search(r"\d+ events? committed", html)
    assert "(s)" not in html


def test_a_running_dashboard_follows_the_config_file(tmp_path: Path) -> None:
    """Found by a new user: a [pipelines] table added (and the daemon restarted, as the
    README says) did not show on the dashboard until `runtally web` restarted too.
    A real `runtally web`; the file is rewritten while it runs."""
    db = tmp_path / "dashboard.sqlite"
    Store.open(db).close()
    config = tmp_path / "runtally.toml"
    config.write_text('[pipelines.people]\nschedule = "0 3 * * *"\n')

    def declared(base: str) -> set[str]:
        status, body = get(base + "/api/pipelines")
        assert status == 200
        return {p["pipeline"] for p in json.loads(body) if p["declared"]}

    with web_process(tmp_path, "--db", str(db), "--no-auth", "--config", str(config)) as (base, _):
        assert declared(base) == {"people"}
        config.write_text(
            '[pipelines.people]\nschedule = "0 3 * * *"\n'
            '[pipelines.nightly]\nschedule = "0 2 * * *"\n'
        )
        wait_until(lambda: declared(base) == {"people", "nightly"}, 15, what="the new table")
        config.write_text("[pipelines.people\n")  # broken mid-edit: the last good tables stay

        def kept() -> bool:
            assert declared(base) == {"people", "nightly"}  # (a request reads the file)
            return "keeping the pipelines" in (tmp_path / "web.log").read_text()

        wait_until(kept, 15, what="the warning about the broken file")
