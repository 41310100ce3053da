"""Stored text is shown on terminals, never obeyed: control characters escaped.

Before: an error message containing ``\\x1b[2J`` cleared the terminal on
``runtally errors``, and colour codes from a wrapped command's stderr were
replayed.  ``--json`` keeps the stored text exactly.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from runtally.cli import main
from runtally.cli._text import visible
from runtally.daemon._store import Store
from runtally.protocol import ErrorEvent, RunEnd, RunStart, StepEnd, StepStart

NOW = int(time.time() * 1000)
CLEAR = "\x1b[2J"
PIPELINE = f"evil{CLEAR}"
MESSAGE = "\x1b[31mred\x1b[0m boom\x07"
STACK = "line 1\n\x1b]0;owned\x07title\x9b1m"
MEMBER = "KNVB\u202e321"


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "dashboard.sqlite"
    store = Store.open(path)
    store.apply(
        [
            RunStart(
                id="r1",
                ts=NOW - 5000,
                run="evil-run",
                pipeline=PIPELINE,
                club_slug=f"club{CLEAR}",
                meta={"argv": ["sync", f"--x={CLEAR}"]},
            ),
            StepStart(id="s1", ts=NOW - 4000, run="evil-run", step="st", name=f"step{CLEAR}"),
            ErrorEvent(
                id="e1",
                ts=NOW - 3000,
                run="evil-run",
                step="st",
                step_name=f"step{CLEAR}",
                member=MEMBER,
                message=MESSAGE,
                stack=STACK,
            ),
            StepEnd(id="s2", ts=NOW - 2000, run="evil-run", step="st", outcome="failure"),
            RunEnd(id="r2", ts=NOW - 1000, run="evil-run", outcome="failure"),
        ]
    )
    store.close()
    return path


def run(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.output


def raw_control(text: str) -> list[str]:
    return sorted({c for c in text if (ord(c) < 0x20 and c not in "\n\t") or 0x7F <= ord(c) < 0xA0})


def test_visible() -> None:
    assert visible(CLEAR) == "\\x1b[2J"
    assert visible("tab\tand\nnewline stay") == "tab\tand\nnewline stay"
    assert visible(MEMBER) == "KNVB\\u202e321"
    assert visible("\x9b\x7f\x00") == "\\x9b\\x7f\\x00"
    assert visible("[red]markup[/red] stays text") == "[red]markup[/red] stays text"


@pytest.mark.parametrize(
    "args",
    [
        ("runs",),
        ("show", "latest"),
        ("show", "latest", "--stack"),
        ("errors",),
        ("errors", "--stack"),
    ],
)
def test_human_output_escapes_control_characters(db: Path, args: tuple[str, ...]) -> None:
    out = run(*args, "--db", str(db))
    assert raw_control(out) == []
    assert "\\x1b[2J" in out
    assert "\u202e" not in out


def test_errors_stack_shows_every_escape(db: Path) -> None:
    out = run("errors", "--stack", "--db", str(db))
    assert "\\x1b[31mred\\x1b[0m boom\\x07" in out
    assert "\\x1b]0;owned\\x07title\\x9b1m" in out
    assert "KNVB\\u202e321" in out


def test_status_escapes_pipeline_names(db: Path, short_root: Path) -> None:
    out = run("status", "--db", str(db), "--socket", str(short_root / "none.sock"))
    assert raw_control(out) == []
    assert "evil\\x1b[2J" in out


@pytest.mark.parametrize("command", ["runs", "errors"])
def test_json_keeps_the_stored_text_exactly(db: Path, command: str) -> None:
    found = json.loads(run(command, "--json", "--db", str(db)))
    text = json.dumps(found, ensure_ascii=False)
    if command == "runs":
        assert found["runs"][0]["pipeline"] == PIPELINE
    else:
        (error,) = found["errors"]
        assert (error["error_message"], error["error_stack"]) == (MESSAGE, STACK)
        assert error["member_identifier"] == MEMBER
    assert "\\x1b" not in text.replace("\\u001b", "")


def test_error_lines_are_escaped(db: Path) -> None:
    out = CliRunner().invoke(main, ["show", f"nope{CLEAR}", "--db", str(db)]).output
    assert "nope\\x1b[2J" in out and raw_control(out) == []
