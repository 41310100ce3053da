"""runledger 0.1's names keep working, each with one deprecation line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from runtally import _compat
from runtally._compat import adopt_legacy_env
from runtally.config import resolve


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_compat, "_said", set())


def test_legacy_variables_are_adopted_with_one_warning(capsys: pytest.CaptureFixture) -> None:
    env = {"RUNLEDGER_DB": "/x/old.sqlite", "RUNLEDGER_PARENT_RUN": "r1"}
    adopt_legacy_env(env)
    adopt_legacy_env(env)
    assert env["RUNTALLY_DB"] == "/x/old.sqlite"
    assert env["RUNTALLY_PARENT_RUN"] == "r1"
    err = capsys.readouterr().err.splitlines()
    said = "runtally: RUNLEDGER_DB is deprecated (runledger was renamed), use RUNTALLY_DB"
    assert err.count(said) == 1
    assert len(err) == 2


def test_the_new_name_wins(capsys: pytest.CaptureFixture) -> None:
    env = {"RUNLEDGER_SOCKET": "/old.sock", "RUNTALLY_SOCKET": "/new.sock"}
    adopt_legacy_env(env)
    assert env["RUNTALLY_SOCKET"] == "/new.sock"
    assert "RUNLEDGER_SOCKET is deprecated" in capsys.readouterr().err


def test_resolver_sees_legacy_variables(tmp_path: Path) -> None:
    env = {"RUNLEDGER_DB": str(tmp_path / "d.sqlite"), "HOME": str(tmp_path)}
    adopt_legacy_env(env)
    assert resolve(env=env).db == tmp_path / "d.sqlite"


def test_legacy_config_table(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = tmp_path / "old.toml"
    config.write_text("[runledger]\nbusy_timeout_ms = 1234\n")
    settings = resolve(env={"RUNTALLY_CONFIG": str(config), "HOME": str(tmp_path)})
    assert settings.busy_timeout_ms == 1234
    assert "[runledger]" in capsys.readouterr().err


def test_legacy_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = tmp_path / "etc-runledger.toml"
    old.write_text("[runtally]\nqueue_events = 77\n")
    monkeypatch.setattr("runtally.config.SYSTEM_CONFIG", tmp_path / "absent.toml")
    monkeypatch.setattr("runtally.config.LEGACY_CONFIG", old)
    settings = resolve(env={"HOME": str(tmp_path)})
    assert settings.queue_events == 77
    assert settings.config_file == old


def test_cli_reads_legacy_variables(tmp_path: Path) -> None:
    """In a real process: RUNLEDGER_DB reaches click's envvar of `runtally runs`."""
    missing = tmp_path / "nothing-here.sqlite"
    env = {"RUNLEDGER_DB": str(missing), "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-m", "runtally.cli", "runs"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode != 0
    assert str(missing) in proc.stderr
    assert "RUNLEDGER_DB is deprecated" in proc.stderr
    # The error names the variable that was set (a new user was told RUNTALLY_DB).
    assert "(db from environment variable RUNLEDGER_DB)" in proc.stderr, proc.stderr
