"""Default paths nobody else can squat, and a client that checks who it talks to.

Before: without ``XDG_RUNTIME_DIR`` (every cron job) the socket was
``/tmp/runtally-<uid>/``, which another user could create first and serve
with a fake daemon that acked (and read) every event.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from account_helpers import local_account, needs_root
from daemon_helpers import DaemonProcess, count, wait_until

import runtally.config as config
from runtally import RunTracker
from runtally.client import Client
from runtally.client._warn import reset_after_fork


@pytest.fixture(autouse=True)
def _fresh_warnings() -> None:
    reset_after_fork()


@pytest.fixture
def no_system_daemon(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The per-user defaults, whatever this machine has in /run."""
    monkeypatch.setattr(config, "SYSTEM_RUNTIME_DIR", tmp_path / "no-system-daemon")
    run_user = tmp_path / "run-user"
    run_user.mkdir()
    monkeypatch.setattr(config, "RUN_USER", run_user, raising=False)
    return run_user


class TestDefaultPaths:
    def test_never_a_shared_tmp_path_and_the_same_with_or_without_the_variable(
        self, no_system_daemon: Path, tmp_path: Path
    ) -> None:
        home = tmp_path / "home"
        cron = config.default_paths({"HOME": str(home)})
        login = config.default_paths({"HOME": str(home), "XDG_RUNTIME_DIR": str(tmp_path)})
        assert cron == login
        assert cron["socket"] == home / ".local/state/runtally/run/runtally.sock"
        assert not str(cron["socket"]).startswith("/tmp/runtally-")

    def test_run_user_is_preferred_when_it_is_the_users_own(
        self, no_system_daemon: Path, tmp_path: Path
    ) -> None:
        mine = no_system_daemon / str(os.getuid())
        mine.mkdir(mode=0o700)
        env = {"HOME": str(tmp_path / "home")}  # as cron: no XDG_RUNTIME_DIR
        assert config.default_paths(env)["socket"] == mine / "runtally" / "runtally.sock"
        assert config.default_paths({**env, "XDG_RUNTIME_DIR": "/elsewhere"}) == (
            config.default_paths(env)
        )

    def test_a_run_user_dir_others_may_write_is_not_used(
        self, no_system_daemon: Path, tmp_path: Path
    ) -> None:
        mine = no_system_daemon / str(os.getuid())
        mine.mkdir()
        os.chmod(mine, 0o1777)
        home = tmp_path / "home"
        socket = config.default_paths({"HOME": str(home)})["socket"]
        assert socket == home / ".local/state/runtally/run/runtally.sock"

    def test_capture_argv_setting_from_the_environment(self, short_root: Path) -> None:
        env = {"RUNTALLY_CAPTURE_ARGV": "0", "HOME": str(short_root)}
        assert config.resolve(env=env).capture_argv is False
        assert config.resolve(env={"HOME": str(short_root)}).capture_argv is True


@pytest.fixture
def squatted(short_root: Path) -> Iterator[DaemonProcess]:
    """A daemon that acks everything, listening in a directory anyone may write (as /tmp)."""
    d = DaemonProcess(short_root).start()
    os.chmod(short_root, 0o1777)
    try:
        yield d
    finally:
        os.chmod(short_root, 0o700)
        d.stop()


def test_a_socket_in_a_directory_others_may_write_gets_no_events(
    squatted: DaemonProcess, capfd: pytest.CaptureFixture[str]
) -> None:
    client = Client(squatted.socket, squatted.spool)
    t = RunTracker("people", client=client)
    t.start_run()
    t.end_run(True)
    client.close()
    assert client.acked == 0
    assert client.spooled == 2
    err = capfd.readouterr().err
    assert err.count("not sending events to") == 1 and "writable by others" in err
    assert count(squatted.db, "runs") == 0


def test_the_daemon_will_not_listen_where_clients_refuse_to_send(short_root: Path) -> None:
    """A socket in a directory anyone may write (/tmp): the daemon says so and exits,
    instead of serving where every client spools (and ``status`` looks healthy)."""
    shared = short_root / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    paths = ["--socket", str(shared / "d.sock"), "--db", str(short_root / "db.sqlite")]
    done = subprocess.run(
        [sys.executable, "-m", "runtally.cli", "daemon", *paths, "--spool", str(short_root / "sp")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "RUNTALLY_CONFIG": ""},
        check=False,
    )
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert "not listening on" in last and "writable by others" in last
    assert not (shared / "d.sock").exists()


@needs_root
def test_a_listener_running_as_another_user_gets_no_events(
    short_root: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """The directory is fine (root's, 0700); the process that listens is not the daemon."""
    path = short_root / "fake.sock"
    with local_account() as other:
        fake = (
            "import os, socket, sys\n"
            "s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); os.chmod(sys.argv[1], 0o666)\n"
            f"os.setgid({other.gid}); os.setuid({other.uid})\n"
            "s.listen(8); print('ready', flush=True)\n"
            "c, _ = s.accept(); c.settimeout(3)\n"
            "data = b''\n"
            "try:\n"
            "    while chunk := c.recv(65536): data += chunk\n"
            "except TimeoutError: pass\n"
            "print(len(data), flush=True)\n"
        )
        proc = subprocess.Popen(
            [sys.executable, "-c", fake, str(path)], stdout=subprocess.PIPE, text=True
        )
        try:
            assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
            client = Client(path, short_root / "spool", daemon_user=None)
            t = RunTracker("people", client=client)
            t.start_run()
            assert client.spooled == 1
            t.end_run(True)
            client.close(timeout=0.2)
        finally:
            proc.kill()
            out, _ = proc.communicate(timeout=10)
    assert out.strip() in ("", "0")  # never accepted anything it could read
    err = capfd.readouterr().err
    assert f"runs as uid {other.uid}" in err
    wait_until(lambda: list((short_root / "spool").glob("*.spool")), what="spool file")
