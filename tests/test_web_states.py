"""The dashboard shows each pipeline's state, as the monitor wrote it."""

from __future__ import annotations

from pathlib import Path

from starlette.testclient import TestClient
from web_helpers import build

from runtally.daemon._store import Store
from runtally.web import WebConfig, create_app


def test_overview_and_pipeline_page_show_the_state_and_next_run(tmp_path: Path) -> None:
    db = tmp_path / "dashboard.sqlite"
    build(db)
    store = Store.open(db)
    pipeline = "people"
    store.apply(
        (),
        writes=[
            lambda c: c.execute(
                "INSERT INTO pipeline_states (pipeline, state, since, detail, next_expected_at,"
                " first_seen_at, updated_at) VALUES (?, 'late', '2026-05-01T04:00:00.000Z',"
                " 'no run since the slot 61 min ago', '2026-05-02T03:00:00.000Z',"
                " '2026-05-01T00:00:00.000Z', '2026-05-01T04:01:00.000Z')",
                (pipeline,),
            )
        ],
    )
    store.close()
    config = WebConfig(db=db, socket=tmp_path / "none.sock", spool=tmp_path / "spool")
    with TestClient(create_app(config)) as client:
        overview = client.get("/")
        assert overview.status_code == 200
        assert 'class="state bad"' in overview.text
        assert "no run since the slot 61 min ago" in overview.text
        assert 'datetime="2026-05-02T03:00:00.000Z"' in overview.text
        page = client.get(f"/pipelines/{pipeline}")
        assert page.status_code == 200
        assert '<strong class="bad">late</strong>' in page.text
        assert "next expected run" in page.text
        api = client.get("/api/overview").json()
        assert {p["pipeline"]: (p["state"] or {}).get("state") for p in api["pipelines"]}[
            pipeline
        ] == "late"
