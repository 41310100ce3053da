"""Faults an outside attacker found in ``runtally web``, each as a kind.

DNS rebinding (the Host header), a loopback dashboard that widened who may
read a 0640 database, pipeline names that broke their links, numbers past
SQLite's 64-bit INTEGER (500s), and a token visible in ``ps``.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from starlette.testclient import TestClient
from web_helpers import build, printed_url, web_process

from runtally.daemon._store import Store
from runtally.protocol import ErrorEvent, RunEnd, RunStart
from runtally.web import WebConfig, allowed_hosts, create_app
from runtally.web._security import TOKEN_COOKIE, hash_password

BIG = "99999999999999999999999"
NAMES = ["a/b", "..", ".", "../errors", "x</script>y", "ünï cødé", "with space", "100%", "q?x#y"]
#: Names that only differ from others by what a strip() or a regex's "." loses.
NAMES += [" lead", "trail ", "new\nline", "end\n", "\u2028ls", "\tTab"]


def config_for(db: Path, **kw: object) -> WebConfig:
    return WebConfig(db=db, socket=db.parent / "none.sock", spool=db.parent / "spool", **kw)


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("attacks") / "dashboard.sqlite"
    build(path)
    store = Store.open(path)
    try:
        for i, name in enumerate(NAMES):
            store.apply(
                [
                    RunStart(id=f"n{i}s", ts=1_770_000_000_000 + i, run=f"n{i}", pipeline=name),
                    RunEnd(id=f"n{i}e", ts=1_770_000_000_010 + i, run=f"n{i}", outcome="success"),
                ]
            )
    finally:
        store.close()
    return path


@pytest.fixture(scope="module")
def client(db: Path) -> Iterator[TestClient]:
    with TestClient(create_app(config_for(db))) as c:
        yield c


def links(html: str) -> list[str]:
    found: list[str] = []

    class Parser(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            found.extend(v or "" for k, v in attrs if tag == "a" and k == "href")

    Parser().feed(html)
    return found


class TestHostHeader:
    """DNS rebinding: a hostile name pointed at 127.0.0.1 must not read the dashboard."""

    def host_client(self, db: Path, bind: str, **kw: object) -> TestClient:
        return TestClient(create_app(config_for(db, allowed_hosts=allowed_hosts(bind, **kw))))

    @pytest.mark.parametrize(
        ("host", "status"),
        [
            ("evil.example:18390", 400),
            ("evil.example", 400),
            ("127.0.0.1.evil.example", 400),
            ("127.0.0.1:8390", 200),
            ("localhost:8390", 200),
            ("LOCALHOST", 200),
            ("[::1]:8390", 200),
            ("10.0.0.5", 400),
        ],
    )
    def test_loopback_bind(self, db: Path, host: str, status: int) -> None:
        with self.host_client(db, "127.0.0.1") as c:
            r = c.get("/api/errors", headers={"host": host})
            assert r.status_code == status, host
            assert "content-security-policy" in r.headers

    def test_web_url_and_allowed_hosts_setting(self, db: Path) -> None:
        with self.host_client(
            db, "127.0.0.1", web_url="https://dash.example.org/", extra=("proxy.lan",)
        ) as c:
            for host in ("dash.example.org", "proxy.lan:443", "127.0.0.1:8390"):
                assert c.get("/", headers={"host": host}).status_code == 200, host
            assert c.get("/", headers={"host": "evil.example"}).status_code == 400
        with self.host_client(db, "127.0.0.1", extra=("*",)) as c:
            assert c.get("/", headers={"host": "anything.example"}).status_code == 200

    def test_a_lan_bind(self, db: Path) -> None:
        with self.host_client(db, "0.0.0.0") as c:
            for host in ("192.168.1.5:8390", "[fe80::1]:8390", "localhost"):
                assert c.get("/", headers={"host": host}).status_code == 200, host
            assert c.get("/", headers={"host": "evil.example"}).status_code == 400
        with self.host_client(db, "192.168.1.5") as c:
            assert c.get("/", headers={"host": "192.168.1.5:8390"}).status_code == 200
            assert c.get("/", headers={"host": "127.0.0.1"}).status_code == 400


class TestTokenCookie:
    def test_token_in_the_url_sets_a_strict_cookie_and_redirects(self, db: Path) -> None:
        with TestClient(create_app(config_for(db, token="t0k/en;"))) as c:
            assert c.get("/").status_code == 401
            r = c.get("/runs?limit=5&token=t0k%2Fen%3B", follow_redirects=False)
            assert r.status_code == 303 and r.headers["location"] == "/runs?limit=5"
            cookie = r.headers["set-cookie"]
            assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
            assert c.get("/runs?limit=5").status_code == 200  # the client kept the cookie
            assert c.get("/api/stamp").status_code == 200

    def test_wrong_token_or_cookie_is_401(self, db: Path) -> None:
        with TestClient(create_app(config_for(db, token="right"))) as c:
            assert c.get("/?token=wrong", follow_redirects=False).status_code == 401
            c.cookies.set(TOKEN_COOKIE, "wrong")
            assert c.get("/").status_code == 401


class TestAuthorizationHeader:
    """Any bytes an unauthenticated client puts in ``Authorization`` are a wrong
    credential (401), never a 500 with a traceback (non-ASCII, before: compare_digest
    refused the str, b64decode the non-ASCII text)."""

    @pytest.mark.parametrize(
        "value",
        [
            b"Bearer \xc3\xa9",
            b"Bearer \xff",
            b"Basic \xff\xfe",
            b"Basic " + base64.b64encode(":\u00e9".encode()),
            b"Basic " + base64.b64encode(b"user:\xff\xfe"),
            b"Basic !!!!",
            b"Basic",
            b"\xff \xff",
        ],
    )
    def test_odd_credentials_are_401(self, db: Path, value: bytes) -> None:
        config = config_for(db, token="right", password_hash=hash_password("pass", iterations=1))
        with TestClient(create_app(config)) as c:
            r = c.get("/api/runs", headers={"authorization": value})
            assert r.status_code == 401, value

    def test_the_right_ones_still_pass(self, db: Path) -> None:
        secret = "pässwörd"
        config = config_for(db, token="right", password_hash=hash_password(secret, iterations=1))
        with TestClient(create_app(config)) as c:
            for value in (
                b"Bearer right",
                b"Basic " + base64.b64encode(b"anyone:right"),
                b"Basic " + base64.b64encode(f"anyone:{secret}".encode()),
            ):
                assert c.get("/api/runs", headers={"authorization": value}).status_code == 200


class TestPipelineNames:
    """Every name gets one link that reaches its page, from every page that lists it."""

    @pytest.mark.parametrize("name", NAMES)
    def test_each_name_has_a_reachable_page(self, client: TestClient, name: str) -> None:
        pages = [client.get("/pipelines").text, client.get("/").text, client.get("/runs").text]
        hrefs = set()
        for html in pages:
            hrefs |= {h for h in links(html) if h.startswith(("/pipelines/", "/pipeline?"))}
        mine = []
        for href in sorted(hrefs):
            r = client.get(href)
            if r.status_code == 200 and "/api/runs?pipeline=" not in href:
                h1 = re.search(r"<h1>(.*?)</h1>", r.text, re.S)
                if h1 and name in _unescape(h1.group(1)):
                    mine.append(href.split("?club")[0])
        assert mine, f"no link reaches {name!r}: {sorted(hrefs)}"
        api = "/api" + mine[0].replace("/pipelines/", "/pipelines/", 1)
        assert client.get(api).json()["pipeline"] == name

    def test_encoded_slash_in_the_path(self, client: TestClient) -> None:
        assert client.get("/pipelines/a%2Fb").status_code == 200
        assert client.get("/api/pipelines/a%2Fb").json()["pipeline"] == "a/b"
        assert client.get("/pipeline?name=..").status_code == 200


def _unescape(html: str) -> str:
    import html as h

    return h.unescape(re.sub(r"<[^>]+>", "", html))


class TestNumbers:
    @pytest.mark.parametrize(
        ("url", "status"),
        [
            (f"/runs/{BIG}", 404),
            (f"/api/runs/{BIG}", 404),
            (f"/runs?before={BIG}", 400),
            (f"/api/runs?after={BIG}", 400),
            (f"/errors?run={BIG}", 400),
            (f"/api/errors?run={BIG}", 400),
            (f"/api/errors?before={BIG}", 400),
            (f"/api/runs?limit={BIG}", 400),
            ("/api/runs?since=9999-12-31T23:00:00-05:00", 400),
            (f"/api/runs?since={BIG}d", 400),
            ("/api/runs/9223372036854775808", 404),
        ],
    )
    def test_too_large_is_a_clear_4xx(self, client: TestClient, url: str, status: int) -> None:
        r = client.get(url)
        assert r.status_code == status, r.text
        if url.startswith("/api/"):
            assert r.json()["error"]

    def test_the_largest_id_is_still_a_number(self, client: TestClient) -> None:
        assert client.get("/api/runs?before=9223372036854775807").status_code == 200


def _open(
    url: str, *, host: str | None = None, cookie: str | None = None
) -> tuple[int, Any, bytes]:
    """GET without following redirects: status, headers, body."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *a: object, **k: object) -> None:
            return None

    request = urllib.request.Request(url)
    if host:
        request.add_header("Host", host)
    if cookie:
        request.add_header("Cookie", cookie)
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(request, timeout=5) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


@pytest.mark.slow
class TestProcess:
    """The real ``runtally web`` on Hypercorn."""

    def private_db(self, tmp_path: Path) -> Path:
        path = tmp_path / "dashboard.sqlite"
        build(path)
        store = Store.open(path)
        store.apply([RunStart(id="s", ts=1, run="r", pipeline="a/b")])
        store.close()
        path.chmod(0o640)
        return path

    def test_a_private_database_gets_a_one_time_token(self, tmp_path: Path) -> None:
        db = self.private_db(tmp_path)
        with web_process(tmp_path, "--db", str(db)) as (base, _proc):
            url = printed_url(tmp_path)
            token = re.search(r"\?token=(\S+)$", url).group(1)
            assert _open(base + "/")[0] == 401
            assert _open(base + "/api/runs")[0] == 401
            status, headers, _ = _open(base + "/?token=" + token)
            assert status == 303 and headers["Location"] == "/"
            cookie = headers["Set-Cookie"].split(";")[0]
            assert _open(base + "/", cookie=cookie)[0] == 200
            req = urllib.request.Request(base + "/api/runs")
            req.add_header("Authorization", f"Bearer {token}")
            with urllib.request.urlopen(req, timeout=5) as r:
                assert r.status == 200
            # DNS rebinding, the attacker's curl: a foreign Host is refused, auth or not.
            assert _open(base + "/api/errors", host="evil.example:18390", cookie=cookie)[0] == 400
            # no open redirect: the path "//evil.example/" must not become a Location to it
            conn = http.client.HTTPConnection(base.removeprefix("http://"), timeout=5)
            conn.request("GET", f"//evil.example/?token={token}")
            assert conn.getresponse().getheader("Location") == "/evil.example/"
            conn.close()
            # a slash in a pipeline name, percent-encoded, through Hypercorn's decoding
            assert _open(base + "/pipelines/a%2Fb", cookie=cookie)[0] == 200

    def test_no_auth_opts_out_and_a_world_readable_db_needs_no_token(self, tmp_path: Path) -> None:
        db = self.private_db(tmp_path)
        with web_process(tmp_path, "--db", str(db), "--no-auth") as (base, _proc):
            assert _open(base + "/")[0] == 200
            assert "token=" not in printed_url(tmp_path)
            assert _open(base + "/", host="evil.example")[0] == 400
        db.chmod(0o644)
        (tmp_path / "web.log").unlink()
        with web_process(tmp_path, "--db", str(db)) as (base, _proc):
            assert _open(base + "/")[0] == 200

    def test_token_from_a_file_or_the_environment_and_a_warning_for_argv(
        self, tmp_path: Path
    ) -> None:
        db = self.private_db(tmp_path)
        log = tmp_path / "web.log"
        (tmp_path / "tok").write_text("filetoken\n")
        with web_process(tmp_path, "--db", str(db), "--token-file", str(tmp_path / "tok")) as (
            base,
            _,
        ):
            assert _open(base + "/")[0] == 401
            assert _open(base + "/?token=filetoken")[0] == 303
        assert "warning" not in log.read_text()
        log.unlink()
        with web_process(tmp_path, "--db", str(db), env={"RUNTALLY_WEB_TOKEN": "envtok"}) as (
            base,
            _,
        ):
            assert _open(base + "/?token=envtok")[0] == 303
        assert "warning" not in log.read_text() and "token=" not in log.read_text()
        log.unlink()
        with web_process(tmp_path, "--db", str(db), "--token", "argvtok") as (base, _):
            assert _open(base + "/?token=argvtok")[0] == 303
        warning = [line for line in log.read_text().splitlines() if "warning" in line]
        assert len(warning) == 1 and "RUNTALLY_WEB_TOKEN" in warning[0], log.read_text()


def test_api_json_of_a_slashed_pipeline(client: TestClient) -> None:
    body = client.get("/api/pipelines/a%2Fb").json()
    assert json.dumps(body) and body["pipeline"] == "a/b"


#: Names that a strip() would merge with their neighbours, as pipeline, club, step and member.
SPACED = [" lead", "lead", "lead ", "\u2028lead", "lead\n"]


def test_names_are_matched_as_stored_not_stripped(tmp_path: Path) -> None:
    """Filters and pages match pipeline, club, step and member exactly, as the CLI
    does (found from outside: ``?pipeline=%20lead`` matched nothing, the pipeline
    page of a club ``' lead'`` was a 404: the values were stripped)."""
    db = tmp_path / "dashboard.sqlite"
    build(db)
    store = Store.open(db)
    try:
        for i, name in enumerate(SPACED):
            run, ts = f"sp{i}", 1_770_000_000_000 + i
            store.apply(
                [
                    RunStart(id=f"{run}s", ts=ts, run=run, pipeline=name, club_slug=name),
                    ErrorEvent(
                        id=f"{run}x", ts=ts, run=run, step_name=name, message="m", member=name
                    ),
                    RunEnd(id=f"{run}e", ts=ts + 5, run=run, outcome="failure"),
                ]
            )
    finally:
        store.close()
    with TestClient(create_app(config_for(db))) as c:
        for i, name in enumerate(SPACED):
            for key in ("pipeline", "club"):
                runs = c.get("/api/runs", params={key: name}).json()["runs"]
                assert [r["uid"] for r in runs] == [f"sp{i}"], (key, name)
            for key in ("pipeline", "club", "step", "member"):
                errors = c.get("/api/errors", params={key: name}).json()["errors"]
                assert len(errors) == 1 and errors[0]["member_identifier"] == name, (key, name)
            page = c.get("/api/pipelines/" + quote(name, safe=""), params={"club": name})
            assert page.status_code == 200 and page.json()["pipeline"] == name, name


@pytest.mark.parametrize("where", ["a port in use", "a name that does not resolve"])
def test_cannot_serve_is_one_line(tmp_path: Path, db: Path, where: str) -> None:
    """Found from outside: a port already in use was a 40-line exception group."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        host = "127.0.0.1" if where == "a port in use" else "no-such-host.invalid"
        argv = [sys.executable, "-m", "runtally.cli", "web", "--no-auth", "--db", str(db)]
        done = subprocess.run(
            [*argv, "--host", host, "--port", str(port)],
            capture_output=True,
            text=True,
            env={k: v for k, v in os.environ.items() if not k.startswith("RUNTALLY_")},
            timeout=60,
            check=False,
        )
    assert done.returncode != 0
    assert "Traceback" not in done.stderr and "Exception Group" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1 and "cannot serve the dashboard on" in lines[0], done.stderr
