"""systemd glue: unit files verified by systemd itself, sd_notify over real
datagram sockets, and socket activation through systemd-socket-activate."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtally import config
from runtally.daemon._admission import FD_RESERVE
from runtally.daemon._systemd import Notifier, listen_fds, watchdog_interval

REPO = Path(__file__).resolve().parent.parent
UNITS = REPO / "systemd"
TIMEOUT = 8.0

pytestmark = pytest.mark.timeout(10)


def tool(name: str) -> str:
    """Path of a systemd tool; missing tools fail (not skip) the suite."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: run `make system-deps` (Debian package systemd)")
    return path


def run(*argv: str, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=TIMEOUT, check=False, **kwargs
    )


def parse_unit(path: Path) -> dict[str, list[str]]:
    """'Section.Key' -> values, in order (enough for our own unit files)."""
    out: dict[str, list[str]] = {}
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.setdefault(f"{section}.{key}", []).append(value)
    return out


def daemon_command() -> str:
    runtallyd = Path(sys.executable).parent / "runtallyd"
    if runtallyd.exists():
        return str(runtallyd)
    return f"{sys.executable} -m runtally.cli daemon"


# --- unit files -----------------------------------------------------------------------------


def test_systemd_analyze_verify_units(tmp_path: Path) -> None:
    analyze = tool("systemd-analyze")
    service = (UNITS / "runtally.service").read_text()
    assert "\nExecStart=/usr/local/bin/runtallyd\n" in service
    (tmp_path / "runtally.service").write_text(
        service.replace("ExecStart=/usr/local/bin/runtallyd", f"ExecStart={daemon_command()}")
    )
    shutil.copy(UNITS / "runtally.socket", tmp_path / "runtally.socket")
    proc = run(analyze, "verify", "--man=no", "runtally.service", "runtally.socket", cwd=tmp_path)
    ours = [line for line in (proc.stdout + proc.stderr).splitlines() if "runtally" in line.lower()]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert ours == [], "\n".join(ours)


def test_systemd_analyze_verify_catches_mistakes(tmp_path: Path) -> None:
    """The verify test above would notice a bad key or a missing ExecStart binary."""
    analyze = tool("systemd-analyze")
    shutil.copy(UNITS / "runtally.socket", tmp_path / "runtally.socket")
    service = (UNITS / "runtally.service").read_text()
    (tmp_path / "runtally.service").write_text(
        service.replace(
            "ExecStart=/usr/local/bin/runtallyd", "ExecStart=/nonexistent/runtallyd"
        ).replace("UMask=0027", "UMask=0027\nProtectHome=perhaps")
    )
    proc = run(analyze, "verify", "--man=no", "runtally.service", "runtally.socket", cwd=tmp_path)
    output = proc.stdout + proc.stderr
    assert "/nonexistent/runtallyd" in output
    assert "perhaps" in output


def test_units_agree_with_each_other_and_config(monkeypatch: pytest.MonkeyPatch) -> None:
    service = parse_unit(UNITS / "runtally.service")
    sock = parse_unit(UNITS / "runtally.socket")
    env = dict(v.split("=", 1) for v in service["Service.Environment"])
    assert service["Service.Type"] == ["notify"]
    assert service["Service.WatchdogSec"] == ["30"]
    assert service["Service.RuntimeDirectoryPreserve"] == ["yes"]
    assert sock["Socket.ListenStream"] == [env["RUNTALLY_SOCKET"]]
    assert (
        Path(env["RUNTALLY_SOCKET"]).parent == Path("/run") / service["Service.RuntimeDirectory"][0]
    )
    assert (
        Path(env["RUNTALLY_DB"]).parent == Path("/var/lib") / service["Service.StateDirectory"][0]
    )
    assert service["Service.ReadWritePaths"] == [env["RUNTALLY_SPOOL"]]
    assert sock["Socket.SocketMode"] == ["0660"]
    assert sock["Socket.SocketGroup"] == service["Service.Group"] == ["runtally"]
    # Enough descriptors that max_connections is refused before accept(2) fails.
    (nofile,) = service["Service.LimitNOFILE"]
    settings = config.Settings(socket=Path("s"), db=Path("d"), spool=Path("p"))
    assert int(nofile) >= 2 * (settings.max_connections + FD_RESERVE)

    # The client's zero-config defaults (used when /run/runtally exists) match the units.
    monkeypatch.setattr(config, "_system_daemon_here", lambda: True)
    defaults = {k: str(v) for k, v in config.default_paths({}).items()}
    assert defaults == {
        "socket": env["RUNTALLY_SOCKET"],
        "db": env["RUNTALLY_DB"],
        "spool": env["RUNTALLY_SPOOL"],
    }


def test_sysusers_dry_run(tmp_path: Path) -> None:
    sysusers = tool("systemd-sysusers")
    (tmp_path / "etc").mkdir()
    conf = UNITS / "sysusers.d" / "runtally.conf"
    proc = run(sysusers, "--dry-run", f"--root={tmp_path}", str(conf))
    assert proc.returncode == 0, proc.stderr
    assert "Creating group 'runtally'" in proc.stderr + proc.stdout
    assert "Creating user 'runtally'" in proc.stderr + proc.stdout


def test_tmpfiles_lines() -> None:
    entries = [
        line.split()
        for line in (UNITS / "tmpfiles.d" / "runtally.conf").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert entries == [
        ["d", "/var/spool/runtally", "3770", "runtally", "runtally", "-"],
        ["d", "/var/spool/runtally/corrupt", "0750", "runtally", "runtally", "-"],
    ]


def test_sysusers_then_tmpfiles_create_in_a_root(tmp_path: Path) -> None:
    """What an install does, into a scratch root: the user exists, the spool gets its modes."""
    sysusers, tmpfiles = tool("systemd-sysusers"), tool("systemd-tmpfiles")
    if os.geteuid() != 0:
        pytest.skip("chown to the runtally user needs root (CI runs as root)")
    (tmp_path / "etc").mkdir()
    proc = run(sysusers, f"--root={tmp_path}", str(UNITS / "sysusers.d" / "runtally.conf"))
    assert proc.returncode == 0, proc.stderr
    entry = next(
        line.split(":")
        for line in (tmp_path / "etc" / "passwd").read_text().splitlines()
        if line.startswith("runtally:")
    )
    uid, gid, home = int(entry[2]), int(entry[3]), entry[5]
    assert uid < 1000 and home == "/var/lib/runtally"
    proc = run(tmpfiles, "--create", f"--root={tmp_path}", str(UNITS / "tmpfiles.d/runtally.conf"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    spool = tmp_path / "var" / "spool" / "runtally"
    for path, mode in ((spool, 0o3770), (spool / "corrupt", 0o750)):
        st = path.stat()
        assert stat.S_ISDIR(st.st_mode)
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (mode, uid, gid), path


# --- sd_notify ------------------------------------------------------------------------------


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """sun_path is 108 bytes; pytest's tmp_path can be longer."""
    path = Path(tempfile.mkdtemp(prefix="rl-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def receiver(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(TIMEOUT)
    return sock


def test_notifier_sends_exact_datagrams(short_dir: Path) -> None:
    path = str(short_dir / "notify")
    with receiver(path) as rx:
        n = Notifier({"NOTIFY_SOCKET": path})
        assert n.enabled
        n.ready("serving /run/runtally/runtally.sock")
        n.status("queue 0")
        n.watchdog()
        n.stopping()
        n.ready()
        n.notify(status="multi\nline", ready=True)
        n.notify_raw("RELOADING=1\nMONOTONIC_USEC=1")
        got = [rx.recv(4096) for _ in range(7)]
    assert got == [
        b"READY=1\nSTATUS=serving /run/runtally/runtally.sock",
        b"STATUS=queue 0",
        b"WATCHDOG=1",
        b"STOPPING=1",
        b"READY=1",
        b"STATUS=multi line\nREADY=1",
        b"RELOADING=1\nMONOTONIC_USEC=1",
    ]


def test_notifier_abstract_socket() -> None:
    name = f"runtally-test-{os.getpid()}-{secrets.token_hex(4)}"
    with receiver("\0" + name) as rx:
        n = Notifier({"NOTIFY_SOCKET": "@" + name})
        n.ready("up")
        n.watchdog()
        assert rx.recv(4096) == b"READY=1\nSTATUS=up"
        assert rx.recv(4096) == b"WATCHDOG=1"


def test_notifier_without_notify_socket_is_a_noop(capsys: pytest.CaptureFixture[str]) -> None:
    n = Notifier({})
    assert not n.enabled
    n.ready("x")
    n.watchdog()
    n.stopping()
    assert capsys.readouterr() == ("", "")


def test_notifier_default_env_is_os_environ(
    short_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(short_dir / "notify")
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    with receiver(path) as rx:
        Notifier().status("from os.environ")
        assert rx.recv(4096) == b"STATUS=from os.environ"


@pytest.mark.parametrize("target", ["missing", "@", "relative/path"])
def test_notifier_never_raises_and_warns_once(
    short_dir: Path, target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    value = str(short_dir / "nobody-here") if target == "missing" else target
    n = Notifier({"NOTIFY_SOCKET": value})
    for _ in range(3):
        n.ready("x")
        n.watchdog()
    err = capsys.readouterr().err
    assert err.count("sd_notify") == 1, err


def test_notifier_oversized_datagram_does_not_raise(short_dir: Path) -> None:
    path = str(short_dir / "notify")
    with receiver(path):
        Notifier({"NOTIFY_SOCKET": path}).status("x" * (4 << 20))  # EMSGSIZE


def test_watchdog_interval() -> None:
    me = str(os.getpid())
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": me}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None
    assert watchdog_interval({"WATCHDOG_PID": me}) is None
    assert watchdog_interval({}) is None
    assert Notifier({"WATCHDOG_USEC": "500000"}).watchdog_interval() == 0.25


# --- socket activation ----------------------------------------------------------------------


def test_listen_fds_ignores_other_pids_and_unsets_env() -> None:
    env = {"LISTEN_PID": "1", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "x", "KEEP": "1"}
    assert listen_fds(env) == []
    assert env == {"KEEP": "1"}
    env = {"LISTEN_FDS": "1"}
    assert listen_fds(env) == []
    assert env == {}


def test_listen_fds_rejects_garbage_count() -> None:
    env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "three"}
    with pytest.raises(ValueError, match="LISTEN_FDS"):
        listen_fds(env)
    assert env == {}


CHILD = """
import os, socket, sys
from runtally.daemon._admission import FD_RESERVE
from runtally.daemon._systemd import listen_fds
try:
    socks = listen_fds()
except ValueError as exc:
    print("ValueError:", exc, flush=True)
    sys.exit(3)
left = sorted(k for k in os.environ if k.startswith("LISTEN_"))
s = socks[0]
print(len(socks), s.fileno(), s.family.name, s.type.name, os.get_inheritable(s.fileno()),
      left, flush=True)
conn, _ = s.accept()
with conn:
    conn.sendall(b"echo:" + conn.recv(100))
"""


def connect_when_listening(sock: socket.socket, path: str) -> None:
    """The path exists from bind(); connect is refused until listen() follows it."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            sock.connect(path)
            return
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def activate(short_dir: Path, *extra: str) -> tuple[subprocess.Popen[str], str]:
    activate_bin = tool("systemd-socket-activate")
    path = str(short_dir / "rl.sock")
    proc = subprocess.Popen(
        [
            activate_bin,
            *extra,
            "-l",
            path,
            f"--setenv=PYTHONPATH={REPO}",
            sys.executable,
            "-c",
            CHILD,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + TIMEOUT
    while not os.path.exists(path):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"systemd-socket-activate did not listen: {proc.communicate()}")
        time.sleep(0.01)
    return proc, path


def test_listen_fds_real_socket_activation(short_dir: Path) -> None:
    proc, path = activate(short_dir)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
            c.settimeout(TIMEOUT)
            connect_when_listening(c, path)  # the first connection launches the child
            c.sendall(b"hello")
            assert c.recv(100) == b"echo:hello"
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert out.strip() == "1 3 AF_UNIX SOCK_STREAM False []", err


@pytest.mark.parametrize(
    ("flag", "kind", "described"),
    [
        ("--datagram", socket.SOCK_DGRAM, "AF_UNIX/SOCK_DGRAM (not listening)"),
        ("--seqpacket", socket.SOCK_SEQPACKET, "AF_UNIX/SOCK_SEQPACKET;"),
    ],
)
def test_listen_fds_refuses_other_socket_types(
    short_dir: Path, flag: str, kind: int, described: str
) -> None:
    proc, path = activate(short_dir, flag)
    try:
        with socket.socket(socket.AF_UNIX, kind) as c:
            c.settimeout(TIMEOUT)
            if kind == socket.SOCK_DGRAM:
                c.sendto(b"wake up", path)
            else:
                connect_when_listening(c, str(path))
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        proc.kill()
    assert proc.returncode == 3, err
    assert f"fd 3 is {described}" in out
    assert "expected a listening AF_UNIX stream socket" in out


FD3 = """
import os, socket, sys
from runtally.daemon._admission import FD_RESERVE
from runtally.daemon._systemd import listen_fds
what = sys.argv[1]
if what == "pipe":
    r, w = os.pipe()
    os.dup2(r, 3)
elif what == "inet":
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen()
    os.dup2(s.fileno(), 3)
else:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    os.dup2(s.fileno(), 3)
    if what == "listening":
        s.bind("")  # autobind an abstract address
        s.listen()
        os.dup2(s.fileno(), 3)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="1")
try:
    print([x.fileno() for x in listen_fds()])
except ValueError as exc:
    print("ValueError:", exc)
"""


@pytest.mark.parametrize(
    ("what", "expected"),
    [
        ("listening", "[3]"),
        ("unbound", "ValueError: socket activation: fd 3 is AF_UNIX/SOCK_STREAM (not listening)"),
        ("pipe", "ValueError: socket activation: fd 3 is not a socket"),
        ("inet", "ValueError: socket activation: fd 3 is AF_INET/SOCK_STREAM;"),
    ],
)
def test_listen_fds_checks_what_fd3_is(what: str, expected: str) -> None:
    proc = run(sys.executable, "-c", FD3, what, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(expected), proc.stdout
