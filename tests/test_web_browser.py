"""The dashboard in a real browser: Debian's Chromium, headless, driven by Playwright.

Chromium comes from ``scripts/system-deps.sh`` (``/usr/bin/chromium``); no
browser is downloaded.  A real daemon subprocess writes the database, a real
``runtally web`` subprocess serves it, and a real ``RunTracker`` emits runs
while the pages are open.  Screenshots of every page go to
``.pytest_cache/screenshots`` for people to look at.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import REPO, DaemonProcess
from web_helpers import EVIL_PIPELINE, build, printed_url, web_process

from runtally import RunTracker

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHOTS = REPO / ".pytest_cache" / "screenshots"
#: The issue's promise: a new or finished run shows on an open page within 5 s.
LIVE_MS = 5000


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make system-deps` (installs Debian's chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def site(short_root_module: Path) -> Iterator[dict[str, Any]]:
    """A daemon subprocess on a database built through the store, and ``runtally web`` on it."""
    root = short_root_module
    ids = build(root / "dashboard.sqlite")
    daemon = DaemonProcess(root).start()
    try:
        args = (
            "--db",
            str(daemon.db),
            "--socket",
            str(daemon.socket),
            "--spool",
            str(daemon.spool),
        )
        with web_process(root, *args) as (base, _proc):
            # The daemon made the database 0640: runtally web made a one-time token.
            url = printed_url(root)
            assert "?token=" in url
            yield {"base": base, "ids": ids, "daemon": daemon, "login": url}
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def short_root_module() -> Iterator[Path]:
    import shutil

    from daemon_helpers import short_dir

    root = short_dir("web")
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


class Watched:
    """A page whose console errors, page errors and dialogs are recorded."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.problems: list[str] = []
        page.on("console", lambda m: m.type == "error" and self.problems.append(m.text))
        page.on("pageerror", lambda e: self.problems.append(f"pageerror: {e}"))
        page.on("dialog", lambda d: (self.problems.append(f"dialog: {d.message}"), d.dismiss()))

    def open(self, url: str) -> Any:
        response = self.page.goto(url)
        assert response is not None and response.status == 200, url
        # live.js has asked /api/stamp once: the script ran and the API answered.
        self.page.wait_for_selector("#live-state.on", timeout=LIVE_MS)
        return self.page

    def shot(self, name: str) -> None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def log_in(context: Any, site: dict) -> None:
    """Open the printed token URL once, as a person would: the cookie keeps the session."""
    page = context.new_page()
    response = page.goto(site["login"])
    assert response is not None and response.status == 200
    assert page.url == site["base"] + "/"  # redirected: the token left the address bar
    page.close()


@pytest.fixture
def watched(browser: Any, site: dict) -> Iterator[Watched]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        log_in(context, site)
        w = Watched(context.new_page())
        yield w
        assert w.problems == []
    finally:
        context.close()


def test_each_page_loads_without_console_errors(site: dict, watched: Watched) -> None:
    base, ids = site["base"], site["ids"]
    pages = {
        "overview": "/",
        "runs": "/runs",
        "run": f"/runs/{ids['bravo']}",
        "errors": "/errors",
        "errors-grouped": "/errors?group=message",
        "pipeline": "/pipelines/bulk",
    }
    for name, path in pages.items():
        page = watched.open(base + path)
        assert page.locator("main#live").count() == 1
        watched.shot(name)
        assert watched.problems == [], name
    page = watched.open(base + f"/runs/{ids['bravo']}")
    assert page.locator("svg.timeline rect").count() == 2


def test_filters_and_pagination_by_clicking(site: dict, watched: Watched) -> None:
    page = watched.open(site["base"] + "/runs?limit=5")
    page.fill("input[name=pipeline]", "bulk")
    page.select_option("select[name=outcome]", "success")
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r"pipeline=bulk"))
    first = page.locator("tr.run-row").all_inner_texts()
    assert len(first) == 5 and all("success" in row and "bulk" in row for row in first)
    page.click("a[rel=next]")
    page.wait_for_url(re.compile(r"before="))
    second = page.locator("tr.run-row").all_inner_texts()
    assert len(second) == 5 and not set(first) & set(second)
    page.click("a[rel=prev]")
    page.wait_for_url(re.compile(r"after="))
    assert page.locator("tr.run-row").all_inner_texts() == first

    page = watched.open(site["base"] + "/errors")
    page.fill("input[name=q]", "rejected")
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r"q=rejected"))
    assert page.locator("tr.error-row").count() == 3
    page.select_option("select[name=group]", "message")
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r"group=message"))
    assert page.locator("tr.group-row").count() == 1
    page.click("tr.group-row a >> text=KNVB1")
    page.wait_for_url(re.compile(r"member=KNVB1"))
    assert page.locator("tr.error-row").count() == 1


def test_html_and_terminal_escapes_show_as_text(site: dict, watched: Watched) -> None:
    base, ids = site["base"], site["ids"]
    page = watched.open(base + f"/runs/{ids['bravo']}")
    messages = page.locator("pre.message").all_inner_texts()
    assert any("</pre><script>alert(2)</script>" in m and "\\x1b[31mred" in m for m in messages)
    assert page.locator("script").count() == 1  # live.js only
    assert page.locator("img").count() == 0
    page = watched.open(base + "/")
    assert page.get_by_text(EVIL_PIPELINE).count() == 1
    assert watched.problems == []


def test_a_new_run_appears_and_finishes_on_the_open_overview(site: dict, watched: Watched) -> None:
    page = watched.open(site["base"] + "/")
    row = page.locator("tr[data-pipeline='live-arrival']")
    assert row.count() == 0
    tracker = RunTracker("live-arrival", socket=site["daemon"].socket, spool=site["daemon"].spool)
    try:
        run = tracker.start_run()
        assert run is not None
        row.wait_for(timeout=LIVE_MS)
        assert "running" in row.inner_text()
        run_page = watched.page.context.new_page()
        run_page.goto(f"{site['base']}/runs/{run}")
        run_page.wait_for_selector("#live-state.on", timeout=LIVE_MS)
        step = tracker.start_step("download")
        run_page.locator("tr.step-row", has_text="download").wait_for(timeout=LIVE_MS)
        tracker.end_step(step, outcome="success", created=7)
        run_page.locator("tr.step-row", has_text="success").wait_for(timeout=LIVE_MS)
        run_page.close()
        tracker.end_run(success=True)
        row.locator(".badge.o-success").wait_for(timeout=LIVE_MS)
        watched.shot("overview-live")
    finally:
        tracker.close()


def test_without_the_token_nothing_shows(site: dict, browser: Any) -> None:
    context = browser.new_context()
    try:
        # the browser context's own HTTP client: same cookie jar, no login yet
        assert context.request.get(site["base"] + "/api/runs").status == 401
        log_in(context, site)
        assert context.request.get(site["base"] + "/api/runs").status == 200
    finally:
        context.close()


def test_pages_work_with_javascript_off(site: dict, browser: Any) -> None:
    context = browser.new_context(java_script_enabled=False)
    try:
        log_in(context, site)
        page = context.new_page()
        base, ids = site["base"], site["ids"]
        page.goto(base + "/runs?limit=5&pipeline=bulk")
        page.click("a[rel=next]")  # a plain link: keyset paging needs no script
        page.wait_for_url(re.compile(r"before="))
        assert page.locator("tr.run-row").count() == 5
        page.goto(base + f"/runs/{ids['bravo']}")
        assert page.locator("svg.timeline rect").count() == 2
        assert page.locator("#live-state").get_attribute("class") == "live-state"  # no script
        page.goto(base + "/pipelines/bulk")
        assert page.locator("svg.wide rect").count() > 0
    finally:
        context.close()
