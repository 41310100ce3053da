"""Alerts reach a real HTTP sink (Apprise ``json://``) and a command, once per change."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import trio
from click.testing import CliRunner
from monitor_helpers import make_rig

from runtally.cli import main
from runtally.daemon._store import Store
from runtally.daemon._writer import Writer

pytestmark = pytest.mark.timeout(60)

# Appends each alert (JSON on stdin) as one line to the file named by argv[1].
RECORDER = "import sys; open(sys.argv[1], 'a').write(sys.stdin.read().replace('\\n', ' ') + '\\n')"


class Sink:
    """A local HTTP server that keeps every JSON body POSTed to it."""

    def __init__(self, status: int = 200) -> None:
        self.bodies: list[dict] = []
        self.status = status
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                sink.bodies.append(json.loads(self.rfile.read(length)))
                self.send_response(sink.status)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"json://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def sink() -> Iterator[Sink]:
    s = Sink()
    yield s
    s.close()


def command(path: Path) -> tuple[str, ...]:
    return (sys.executable, "-c", RECORDER, str(path))


async def test_each_change_reaches_the_sink_and_the_command_exactly_once(
    tmp_path: Path, nursery: trio.Nursery, sink: Sink
) -> None:
    store = Store.open(tmp_path / "dashboard.sqlite")
    writer = Writer(store)
    await nursery.start(writer.run)
    lines = tmp_path / "alerts.jsonl"
    r = make_rig(
        tmp_path,
        store,
        writer,
        "2026-05-01T00:00:00",
        alert_urls=(sink.url,),
        alert_command=command(lines),
        web_url="https://dash.example/",
    )
    r.dispatcher.start()
    await r.start("r1", "people", "2026-05-01T00:00:00")
    await r.end("r1", "2026-05-01T00:00:05", "failure", error="laposta said no")
    for second in range(6, 9):  # the state holds over several ticks
        assert await r.state_at(f"2026-05-01T00:00:0{second}", "people") == "failing"
    await r.start("r2", "people", "2026-05-01T01:00:00")
    await r.end("r2", "2026-05-01T01:00:05")
    assert await r.state_at("2026-05-01T01:00:06", "people") == "ok"
    assert await r.state_at("2026-05-01T01:00:07", "people") == "ok"
    await trio.to_thread.run_sync(r.dispatcher.stop, 20.0)  # sends what is queued, then exits
    writer.close()

    events = [json.loads(line) for line in lines.read_text().splitlines()]
    assert [(e["kind"], e["state"]) for e in events] == [("state", "failing"), ("recovered", "ok")]
    failing = events[0]
    assert failing["last_run"]["error_count"] == 1
    assert failing["last_run"]["first_error"] == "laposta said no"
    assert failing["last_run"]["duration_ms"] == 5000
    assert failing["url"] == f"https://dash.example/runs/{failing['last_run']['id']}"
    assert len(sink.bodies) == 2
    assert "people (rondo) is failing" in sink.bodies[0]["title"]
    assert "laposta said no" in sink.bodies[0]["message"]
    assert "recovered" in sink.bodies[1]["title"]
    assert r.dispatcher.failures == {}


async def test_a_failing_channel_is_retried_reported_and_blocks_nothing(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    store = Store.open(tmp_path / "dashboard.sqlite")
    writer = Writer(store)
    await nursery.start(writer.run)
    bad = Sink(status=500)
    r = make_rig(tmp_path, store, writer, "2026-05-01T00:00:00", alert_urls=(bad.url,))
    r.dispatcher._retry_first_s = 0.01
    r.dispatcher.start()
    try:
        await r.start("r1", "people", "2026-05-01T00:00:00")
        await r.end("r1", "2026-05-01T00:00:05", "failure")
        with trio.fail_after(2):  # the tick does not wait for the channel
            assert await r.state_at("2026-05-01T00:00:06", "people") == "failing"
        with trio.fail_after(30):
            while r.dispatcher.dropped == 0:
                await trio.sleep(0.02)
        assert len(bad.bodies) == 3  # tried, then retried twice, then given up
        assert list(r.dispatcher.failures) == [
            f"json://127.0.0.1:{bad.server.server_address[1]}/..."
        ]
    finally:
        r.dispatcher.stop()
        bad.close()
        writer.close()


def test_alert_test_reports_each_channel(tmp_path: Path, sink: Sink) -> None:
    lines = tmp_path / "alerts.jsonl"
    config = tmp_path / "runtally.toml"
    config.write_text(
        f'alert_urls = ["{sink.url}"]\n'
        f"alert_command = {json.dumps(list(command(lines)))}\n"
        '[pipelines.people]\nschedule = "0 3 * * *"\nclub = "rondo"\n'
    )
    result = CliRunner().invoke(
        main, ["alert", "test", "--pipeline", "people", "--config", str(config)]
    )
    assert result.exit_code == 0, result.output
    assert result.output.count(": ok") == 2
    (event,) = [json.loads(line) for line in lines.read_text().splitlines()]
    assert (event["kind"], event["pipeline"], event["club"]) == ("test", "people", "rondo")
    assert len(sink.bodies) == 1

    failing = tmp_path / "failing.toml"
    failing.write_text('alert_command = ["false"]\n')
    result = CliRunner().invoke(main, ["alert", "test", "--config", str(failing)])
    assert result.exit_code == 1
    assert "FAILED: command false: exit status 1" in result.output


def test_an_apprise_url_without_the_alerts_extra_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from runtally.daemon._alert_message import AlertEvent
    from runtally.daemon._alerts import AlertError, AppriseChannel

    monkeypatch.setitem(sys.modules, "apprise", None)  # as if not installed
    event = AlertEvent("test", "people", "ok", None, "a test", "2026-11-30T00:00:00.000Z")
    with pytest.raises(AlertError, match=r"pip install 'runtally\[alerts\]'"):
        AppriseChannel("json://127.0.0.1:9/").send(event, 1.0)
