"""A config file that cannot be used never costs a pipeline its tracking (attack report).

* A broken file is skipped alone: ``RUNTALLY_SOCKET``/``RUNTALLY_SPOOL`` and the
  other layers still apply, so the events reach the daemon configured by them
  (live, or through its spool's replay).
* ``RUNTALLY_CONFIG`` naming a FIFO, a device or a huge file is refused
  without reading it: ``RunTracker()`` never blocks.

Real processes: the pipeline is ``python`` with the real RunTracker, the daemon
the real one as a child process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from daemon_helpers import DaemonProcess, count, wait_until
from fault_helpers import clean_env, wait_spool_drained

from runtally._files import MAX_SMALL_FILE
from runtally.config import ConfigError, resolve, resolve_or_defaults

pytestmark = pytest.mark.timeout(60)

PIPELINE = (
    "from runtally import RunTracker\n"
    "t = RunTracker('x'); t.start_run(); t.end_run(True); t.close()\n"
)


def _pipeline(env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", PIPELINE],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    )


class TestBrokenFileKeepsTheEnvironment:
    def test_runs_land_on_the_env_configured_daemon_live_and_by_replay(
        self, short_root: Path
    ) -> None:
        bogus = short_root / "c.toml"
        bogus.write_text("[runtally]\nbogus_key = 1\n")
        d = DaemonProcess(short_root)
        env = clean_env(
            RUNTALLY_CONFIG=str(bogus),
            RUNTALLY_SOCKET=str(d.socket),
            RUNTALLY_SPOOL=str(d.spool),
            HOME=str(short_root / "home"),  # the defaults: a spool nobody replays
            XDG_STATE_HOME="",
        )
        d.start()
        try:
            done = _pipeline(env)  # the daemon is up: sent over the env's socket
            assert "unknown setting 'bogus_key'" in done.stderr
            wait_until(lambda: count(d.db, "runs") == 1, what="the live run to land")
            d.stop()
            _pipeline(env)  # the daemon is down: spooled to the env's spool
            assert not (short_root / "home").exists()  # nothing in the default spool
            d.start()
            wait_spool_drained(d.spool)
            wait_until(lambda: count(d.db, "runs") == 2, what="the spooled run to land")
        finally:
            d.stop()

    def test_each_layer_below_the_file_still_applies(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        bogus = tmp_path / "c.toml"
        bogus.write_text("[runtally]\nbogus_key = 1\n")
        env = {
            "HOME": str(tmp_path / "home"),
            "RUNTALLY_CONFIG": str(bogus),
            "RUNTALLY_SPOOL": str(tmp_path / "env-spool"),
            "RUNTALLY_CAPTURE_ARGV": "maybe",  # unusable on its own: the default stays
        }
        said: list[str] = []
        got = resolve_or_defaults({"socket": tmp_path / "flag.sock"}, warn=said.append, env=env)
        assert got.socket == tmp_path / "flag.sock"  # the flag
        assert got.spool == tmp_path / "env-spool"  # the environment, not the default
        assert got.capture_argv is True  # the default, the variable being unusable
        assert got.config_file == bogus  # read: only its unknown key is skipped
        assert got.source_of("spool") == "environment variable RUNTALLY_SPOOL"
        assert len(said) == 2
        assert "bogus_key" in said[0] and "RUNTALLY_CAPTURE_ARGV" in said[1]


class TestUntrustedConfigPath:
    @pytest.mark.parametrize("kind", ["fifo", "device", "huge", "directory"])
    def test_refused_without_reading(self, tmp_path: Path, kind: str) -> None:
        path = tmp_path / "c.toml"
        if kind == "fifo":
            os.mkfifo(path)
        elif kind == "device":
            path = Path("/dev/zero")
        elif kind == "huge":
            path.write_bytes(b"#" * (MAX_SMALL_FILE + 1))
        else:
            path.mkdir()
        with pytest.raises(ConfigError, match=f"config file {path}"):
            resolve(env={"HOME": str(tmp_path), "RUNTALLY_CONFIG": str(path)})

    @pytest.mark.parametrize("kind", ["fifo", "device"])
    def test_run_tracker_does_not_block(self, short_root: Path, kind: str) -> None:
        if kind == "fifo":
            path = short_root / "c.toml"
            os.mkfifo(path)
        else:
            path = Path("/dev/zero")
        env = clean_env(
            RUNTALLY_CONFIG=str(path),
            RUNTALLY_SOCKET=str(short_root / "none.sock"),
            RUNTALLY_SPOOL=str(short_root / "spool"),
            HOME=str(short_root / "home"),
        )
        done = _pipeline(env, timeout=20)  # before: blocked until the timeout
        assert "not a regular file" in done.stderr
        assert list((short_root / "spool").glob("*.spool"))  # the run went to the env's spool
