"""``runtally web`` routes through Starlette's test client, on databases built by the real store.

The JSON under ``/api`` must be exactly what ``runtally runs|show|errors
--json`` print (compared with the CLI's own output), pages are paginated by
keyset, every text from the database is escaped, and nothing can write.
"""

from __future__ import annotations

import base64
import json
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient
from web_helpers import (
    BULK_RUNS,
    EVIL_MEMBER,
    EVIL_PIPELINE,
    build,
    get,
    web_process,
)

from runtally.cli import main
from runtally.daemon._store import Store
from runtally.protocol import RunStart
from runtally.web import WebConfig, create_app, hash_password, verify_password
from runtally.web._security import CSP


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    path = tmp_path_factory.mktemp("web") / "dashboard.sqlite"
    return path, build(path)


@pytest.fixture(scope="module")
def db(ledger: tuple[Path, dict[str, int]]) -> Path:
    return ledger[0]


@pytest.fixture(scope="module")
def ids(ledger: tuple[Path, dict[str, int]]) -> dict[str, int]:
    return ledger[1]


def config_for(db: Path, **kw: object) -> WebConfig:
    return WebConfig(db=db, socket=db.parent / "none.sock", spool=db.parent / "spool", **kw)


@pytest.fixture(scope="module")
def client(db: Path) -> Iterator[TestClient]:
    with TestClient(create_app(config_for(db))) as c:
        yield c


def cli_json(*args: str) -> dict:
    env = {"RUNTALLY_CONFIG": None, "RUNTALLY_DB": None, "RUNTALLY_SOCKET": None}
    result = CliRunner().invoke(main, [*args, "--json"], env=env)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def ok_json(client: TestClient, url: str) -> dict:
    r = client.get(url)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    return r.json()


class TestApiIsTheCliJson:
    @pytest.mark.parametrize(
        ("url", "args"),
        [
            ("/api/runs", ["runs"]),
            ("/api/runs?pipeline=people", ["runs", "--pipeline", "people"]),
            ("/api/runs?club=other", ["runs", "--club", "other"]),
            ("/api/runs?outcome=failure", ["runs", "--outcome", "failure"]),
            ("/api/runs?since=1d", ["runs", "--since", "1d"]),
            ("/api/errors", ["errors"]),
            ("/api/errors?step=laposta-submit", ["errors", "--step", "laposta-submit"]),
            ("/api/errors?member=KNVB1", ["errors", "--member", "KNVB1"]),
        ],
    )
    def test_listings(self, client: TestClient, db: Path, url: str, args: list[str]) -> None:
        assert ok_json(client, url) == cli_json(*args, "--db", str(db))

    @pytest.mark.parametrize("uid", ["alpha", "bravo", "child", "evil", "bulk0"])
    def test_a_run(self, client: TestClient, db: Path, ids: dict[str, int], uid: str) -> None:
        expected = cli_json("show", str(ids[uid]), "--db", str(db))
        assert ok_json(client, f"/api/runs/{ids[uid]}") == expected
        assert ok_json(client, f"/api/runs/{uid}") == expected

    def test_status_has_the_shape_of_status_json(self, client: TestClient, db: Path) -> None:
        env = {"RUNTALLY_CONFIG": None, "RUNTALLY_DB": None, "RUNTALLY_SOCKET": None}
        result = CliRunner().invoke(
            main,
            ["status", "--json", "--db", str(db), "--socket", str(db.parent / "none.sock"),
             "--spool", str(db.parent / "spool")],
            env=env,
        )  # fmt: skip
        expected = json.loads(result.output)
        got = ok_json(client, "/api/status")
        assert got.keys() == expected.keys()
        assert got["database"]["row_counts"] == expected["database"]["row_counts"]
        assert got["daemon"]["up"] is False
        assert [p["run_id"] for p in got["pipelines"]] == [
            p["run_id"] for p in expected["pipelines"]
        ]

    def test_unknown_run_is_404_and_bad_filters_400(self, client: TestClient) -> None:
        r = client.get("/api/runs/nope")
        assert r.status_code == 404
        assert "no run" in r.json()["error"]
        assert client.get("/runs/nope").status_code == 404
        for url in ("/api/runs?since=soon", "/api/runs?outcome=great", "/api/runs?before=x"):
            r = client.get(url)
            assert r.status_code == 400, url
            assert r.json()["error"]


class TestKeysetPagination:
    def walk(self, client: TestClient, url: str, key: str) -> list[list[int]]:
        pages, link = [], url
        while True:
            r = client.get(link)
            assert r.status_code == 200
            pages.append([row["id"] for row in r.json()[key]])
            nxt = re.search(r'<([^>]+)>; rel="next"', r.headers.get("link", ""))
            if not nxt:
                return pages
            link = nxt.group(1)

    def test_runs_pages_cover_every_run_once_in_order(self, client: TestClient) -> None:
        pages = self.walk(client, "/api/runs?pipeline=bulk&limit=5", "runs")
        assert [len(p) for p in pages] == [5, 5, 5, 5, 3]
        flat = [i for p in pages for i in p]
        everything = [r["id"] for r in ok_json(client, "/api/runs?pipeline=bulk&limit=500")["runs"]]
        assert flat == everything and len(everything) == BULK_RUNS
        # 0 is the CLI's "all" (-n 0): the largest page, not one row.
        assert [r["id"] for r in ok_json(client, "/api/runs?pipeline=bulk&limit=0")["runs"]] == flat

    def test_link_keeps_filters_url_encoded(self, client: TestClient) -> None:
        r = client.get("/api/runs?pipeline=a%26b c&limit=1&since=30d")
        assert r.json() == {"runs": []} and "link" not in r.headers
        r = client.get("/api/runs?since=30d&limit=1")
        assert "since=30d" in r.headers["link"] and "limit=1" in r.headers["link"]
        # q = "rejected 100%": the link must carry the % and the space encoded.
        r = client.get("/api/errors?q=rejected%20100%25&limit=1")
        nxt = re.search(r'<([^>]+)>; rel="next"', r.headers["link"]).group(1)
        assert "q=rejected+100%25" in nxt
        following = client.get(nxt).json()["errors"]
        assert len(following) == 1 and following[0]["error_message"] == "email rejected 100%"

    def test_back_from_a_page_gives_the_page_before(self, client: TestClient) -> None:
        pages = self.walk(client, "/api/runs?pipeline=bulk&limit=5", "runs")
        r = client.get(f"/api/runs?pipeline=bulk&limit=5&after={pages[2][0]}")
        assert [row["id"] for row in r.json()["runs"]] == pages[1]
        assert 'rel="prev"' in r.headers["link"] and 'rel="next"' in r.headers["link"]

    def test_errors_pages(self, client: TestClient) -> None:
        pages = self.walk(client, "/api/errors?limit=3", "errors")
        assert [len(p) for p in pages] == [3, 1]
        everything = [e["id"] for e in ok_json(client, "/api/errors")["errors"]]
        assert [i for p in pages for i in p] == everything

    def test_the_html_pager_links_are_keyset_links(self, client: TestClient) -> None:
        html = client.get("/runs?pipeline=bulk&limit=5").text
        older = re.search(r'href="([^"]+)" rel="next"', html)
        assert older and "before=" in older.group(1) and "offset" not in html.lower()


class TestFilters:
    def test_until_and_since(self, client: TestClient) -> None:
        got = ok_json(client, "/api/runs?until=1d&since=5d")["runs"]
        assert [r["uid"] for r in got] == ["alpha"]

    def test_text_search_is_a_substring_with_literal_percent(self, client: TestClient) -> None:
        got = ok_json(client, "/api/errors?q=REJECTED 100%25")["errors"]
        assert len(got) == 3 and all(e["error_message"] == "email rejected 100%" for e in got)
        assert ok_json(client, "/api/errors?q=rejected 1000")["errors"] == []
        assert ok_json(client, "/api/errors?q=%25%25")["errors"] == []

    def test_errors_of_a_pipeline_and_of_a_run(self, client: TestClient, ids: dict) -> None:
        assert len(ok_json(client, "/api/errors?pipeline=people")["errors"]) == 4
        assert ok_json(client, "/api/errors?pipeline=bulk")["errors"] == []
        assert len(ok_json(client, f"/api/errors?run={ids['bravo']}")["errors"]) == 4

    def test_grouped_same_message_n_members(self, client: TestClient) -> None:
        groups = ok_json(client, "/api/errors?group=message")["groups"]
        assert groups[0]["error_message"] == "email rejected 100%"
        assert (groups[0]["errors"], groups[0]["members"], groups[0]["runs"]) == (3, 3, 1)
        assert sorted(groups[0]["sample_members"]) == ["KNVB0", "KNVB1", "KNVB2"]
        html = client.get("/errors?group=message").text
        assert "grouped by step and message" in html


class TestPages:
    @pytest.mark.parametrize(
        "url",
        ["/", "/runs", "/runs?outcome=running", "/errors", "/errors?group=message",
         "/pipelines/people", "/pipelines/teams?club=other"],
    )  # fmt: skip
    def test_each_page_renders(self, client: TestClient, url: str) -> None:
        r = client.get(url)
        assert r.status_code == 200
        assert r.text.startswith("<!doctype html>")

    def test_overview_puts_failing_then_running_first(self, client: TestClient) -> None:
        data = ok_json(client, "/api/overview")
        rondo = [p["pipeline"] for p in data["pipelines"] if p["club_slug"] == "rondo"]
        assert rondo[0] == "people"  # its last run failed
        assert data["pipelines"][1]["pipeline"] == "teams"  # running
        people = data["pipelines"][0]
        assert (people["runs_24h"], people["failures_24h"]) == (1, 1)
        assert (people["runs_7d"], people["failures_7d"]) == (2, 1)
        bulk = next(p for p in data["pipelines"] if p["pipeline"] == "bulk")
        assert len(bulk["recent"]) == BULK_RUNS and bulk["runs_7d"] == 0
        html = client.get("/").text
        assert "Club other" in html and "Club rondo" in html  # several clubs: grouped

    def test_run_page(self, client: TestClient, ids: dict[str, int]) -> None:
        html = client.get(f"/runs/{ids['bravo']}").text
        assert html.count('class="step-row"') == 2
        assert len(re.findall(r"<rect [^>]*class=\"o-", html)) == 2  # the timeline's bars
        assert f'href="/runs/{ids["child"]}"' in html  # child run
        child = client.get(f"/runs/{ids['child']}").text
        assert f'href="/runs/{ids["bravo"]}"' in child  # parent
        assert "o-running" in child
        alpha = client.get(f"/runs/{ids['alpha']}").text
        assert "[redacted]" in alpha and "fine" in alpha  # meta argv, summary

    def test_pipeline_page_charts(self, client: TestClient) -> None:
        html = client.get("/pipelines/bulk").text
        assert len(re.findall(r'<rect [^>]*class="o-(?:success|failure)"', html)) >= BULK_RUNS
        assert client.get("/pipelines/nothing").status_code == 404

    def test_live_fragment_is_the_live_block_only(self, client: TestClient) -> None:
        r = client.get("/runs", headers={"X-Runtally-Live": "1"})
        assert "<html" not in r.text and 'class="grid runs"' in r.text
        assert r.headers["cache-control"] == "no-store"


class TestStampAndMissingDatabase:
    def test_stamp_changes_when_the_daemon_commits(self, tmp_path: Path) -> None:
        db = tmp_path / "dashboard.sqlite"
        build(db)
        with TestClient(create_app(config_for(db))) as c:
            before = c.get("/api/stamp").json()["stamp"]
            assert c.get("/api/stamp").json()["stamp"] == before
            store = Store.open(db)
            store.apply([RunStart(id="new1", ts=1, run="new", pipeline="fresh")])
            store.close()
            assert c.get("/api/stamp").json()["stamp"] != before
            assert "fresh" in c.get("/").text

    def test_without_a_database(self, tmp_path: Path) -> None:
        with TestClient(create_app(config_for(tmp_path / "absent.sqlite"))) as c:
            html = c.get("/").text
            assert "not initialised" in html and "does not exist" in html
            assert c.get("/runs").status_code == 503
            r = c.get("/api/runs")
            assert r.status_code == 503 and "does not exist" in r.json()["error"]
            assert not (tmp_path / "absent.sqlite").exists()


class TestEscaping:
    def test_html_and_terminal_escapes_render_as_text(self, client: TestClient, ids: dict) -> None:
        pages = [client.get(u).text for u in
                 ("/", "/runs", f"/runs/{ids['bravo']}", f"/runs/{ids['evil']}", "/errors",
                  "/errors?group=message", f"/pipelines/{EVIL_PIPELINE}")]  # fmt: skip
        for html in pages:
            assert "<script>alert" not in html
            assert "<img src=x" not in html
            assert "\x1b" not in html and "\x07" not in html and "\u202e" not in html
            assert "</pre><script>" not in html
        joined = "\n".join(pages)
        assert "&lt;script&gt;alert(&#39;pipe&#39;)&lt;/script&gt;" in joined
        assert "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;" in joined
        assert "\\x1b[31mred\\x1b[0m" in joined and "\\x07bell" in joined
        assert "\\x202egnp.exe" in joined  # a bidi override shown, not applied

    def test_json_keeps_the_exact_text(self, client: TestClient, ids: dict) -> None:
        errs = ok_json(client, f"/api/errors?run={ids['bravo']}&member={EVIL_MEMBER}")["errors"]
        assert errs[0]["member_identifier"] == EVIL_MEMBER
        assert errs[0]["error_message"].startswith("\x1b[31mred")


class TestSafety:
    @pytest.mark.parametrize("url", ["/", "/api/runs", "/static/app.css", "/runs/nope", "/x"])
    def test_security_headers_everywhere(self, client: TestClient, url: str) -> None:
        r = client.get(url)
        assert r.headers["content-security-policy"] == CSP
        assert r.headers["x-content-type-options"] == "nosniff"

    @pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
    def test_no_write_endpoint(self, client: TestClient, method: str) -> None:
        for url in ("/", "/api/runs", "/runs/1"):
            assert client.request(method, url).status_code == 405

    def test_no_inline_script_or_style(self, client: TestClient, ids: dict) -> None:
        for url in ("/", "/runs", f"/runs/{ids['bravo']}", "/errors", "/pipelines/people"):
            html = client.get(url).text
            assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), url
            assert " style=" not in html and "<style" not in html, url
            assert handler_attributes(html) == [], url


def handler_attributes(html: str) -> list[str]:
    """Every ``on*`` attribute (inline event handler) in ``html``, as the browser parses it."""
    found: list[str] = []

    class Parser(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            found.extend(f"{tag} {name}" for name, _ in attrs if name.startswith("on"))

    Parser().feed(html)
    return found


class TestAuth:
    def test_token(self, db: Path) -> None:
        with TestClient(create_app(config_for(db, token="s3cret"))) as c:
            assert c.get("/").status_code == 401
            assert "basic" in c.get("/api/runs").headers["www-authenticate"].lower()
            assert c.get("/", headers={"Authorization": "Bearer s3cret"}).status_code == 200
            assert c.get("/", headers={"Authorization": "Bearer nope"}).status_code == 401
            assert c.get("/", auth=("anyone", "s3cret")).status_code == 200
            assert c.get("/static/app.css").status_code == 401

    def test_password_hash(self, db: Path) -> None:
        stored = hash_password("correct horse", iterations=1000)
        assert verify_password("correct horse", stored)
        assert not verify_password("wrong", stored)
        assert not verify_password("x", "garbage")
        with TestClient(create_app(config_for(db, password_hash=stored))) as c:
            assert c.get("/", auth=("me", "correct horse")).status_code == 200
            assert c.get("/", auth=("me", "correct horse")).status_code == 200  # remembered
            assert c.get("/", auth=("me", "wrong")).status_code == 401
            bad = base64.b64encode(b"\xff\xfe").decode()
            assert c.get("/", headers={"Authorization": f"Basic {bad}"}).status_code == 401


class TestCommand:
    def run(self, *args: str, input: str | None = None):
        env = {"RUNTALLY_CONFIG": None, "RUNTALLY_WEB_HOST": None, "RUNTALLY_WEB_TOKEN": None}
        return CliRunner().invoke(main, ["web", *args], env=env, input=input)

    @pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.5", "::"])
    def test_refuses_a_lan_bind_without_authentication(self, host: str, tmp_path: Path) -> None:
        result = self.run("--host", host, "--db", str(tmp_path / "d.sqlite"))
        assert result.exit_code == 1
        assert "without authentication" in result.output
        assert "Traceback" not in result.output

    def test_hash_password(self) -> None:
        result = self.run("--hash-password", input="pw\npw\n")
        assert result.exit_code == 0, result.output
        assert verify_password("pw", result.output.strip().splitlines()[-1])

    @pytest.mark.slow
    def test_serves_over_http_and_stops_on_sigterm(self, db: Path, tmp_path: Path) -> None:
        with web_process(tmp_path, "--db", str(db)) as (base, proc):
            status, body = get(base + "/")
            assert status == 200 and b"people" in body
            status, body = get(base + "/api/runs?pipeline=people")
            assert status == 200 and len(json.loads(body)["runs"]) == 2
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0


class TestSystemdUnit:
    UNIT = Path(__file__).resolve().parent.parent / "systemd" / "runtally-web.service"

    def test_systemd_analyze_verify(self, tmp_path: Path) -> None:
        import shutil
        import subprocess
        import sys

        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            pytest.fail("systemd-analyze not found: run `make system-deps`")
        unit = self.UNIT.read_text()
        assert "\nExecStart=/usr/local/bin/runtally web\n" in unit
        command = f"{sys.executable} -m runtally.cli web"
        (tmp_path / "runtally-web.service").write_text(
            unit.replace("ExecStart=/usr/local/bin/runtally web", f"ExecStart={command}")
        )
        proc = subprocess.run(
            [analyze, "verify", "--man=no", "runtally-web.service"],
            cwd=tmp_path, capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
        ours = [line for line in (proc.stdout + proc.stderr).splitlines() if "runtally" in line]
        assert proc.returncode == 0 and ours == [], proc.stdout + proc.stderr

    def test_read_only_and_hardened_like_the_daemon(self) -> None:
        unit = self.UNIT.read_text()
        assert "ReadWritePaths" not in unit and "StateDirectory" not in unit
        assert "\nReadOnlyPaths=/var/lib/runtally /var/spool/runtally\n" in unit
        assert "\nProtectSystem=strict\n" in unit and "\nNoNewPrivileges=yes\n" in unit
        daemon = (self.UNIT.parent / "runtally.service").read_text()
        env = [line for line in daemon.splitlines() if line.startswith("Environment=")]
        assert all(f"\n{line}\n" in unit for line in env)  # the same paths as the daemon


class TestPipelineErrorPlans:
    """A pipeline filter reads a window of the newest errors, else goes through the runs."""

    @pytest.fixture
    def many(self, tmp_path: Path) -> Path:
        """Pipeline ``busy`` has errors every minute; ``quiet`` only long ago."""
        from runtally.protocol import ErrorEvent, RunEnd

        evs: list = []
        for i in range(30):
            for name in ("busy", "quiet"):
                if name == "quiet" and i >= 3:
                    continue
                run, ts = f"{name}{i}", 1_770_000_000_000 + i * 60_000 + (name == "quiet")
                evs.append(RunStart(id=f"{run}-s", ts=ts, run=run, pipeline=name))
                evs += [
                    ErrorEvent(id=f"{run}-e{j}", ts=ts + j, run=run, step_name="s",
                               member=f"M{j}", message=f"{name} failed")
                    for j in range(2)
                ]  # fmt: skip
                evs.append(RunEnd(id=f"{run}-r", ts=ts + 10, run=run, outcome="failure"))
        path = tmp_path / "dashboard.sqlite"
        store = Store.open(path)
        store.apply(evs)
        store.close()
        return path

    @pytest.mark.parametrize("window", [4, 1_000])
    @pytest.mark.parametrize("pipeline", ["busy", "quiet"])
    def test_every_page_equals_the_cli_listing(
        self, many: Path, monkeypatch: pytest.MonkeyPatch, window: int, pipeline: str
    ) -> None:
        from runtally.web import _errors

        monkeypatch.setattr(_errors, "WINDOW", window)
        listed = cli_json("errors", "-p", pipeline, "-n", "0", "--db", str(many))["errors"]
        truth = [e["id"] for e in listed]
        with TestClient(create_app(config_for(many))) as c:
            url = f"/api/errors?pipeline={pipeline}&limit=4"
            pages = TestKeysetPagination().walk(c, url, "errors")
            assert [i for p in pages for i in p] == truth
            back = c.get(f"/api/errors?pipeline={pipeline}&limit=4&after={pages[-1][0]}").json()
            if len(pages) > 1:
                assert [e["id"] for e in back["errors"]] == pages[-2]
            groups = c.get(f"/api/errors?pipeline={pipeline}&group=message").json()["groups"]
            assert [(g["error_message"], g["errors"]) for g in groups] == [
                (f"{pipeline} failed", len(truth))
            ]


def test_web_without_its_extra_is_one_line(tmp_path: Path) -> None:
    """`pip install runtally` without [web]: `runtally web` says what to install."""
    code = (
        "import sys\n"
        "sys.modules['starlette'] = None  # as if the web extra were not installed\n"
        "from runtally.cli import main\n"
        "main(['web', '--db', sys.argv[1]], prog_name='runtally')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "d.sqlite")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "Error: runtally web needs the web extra (starlette is not installed):"
        " pip install 'runtally[web]'"
    ]
