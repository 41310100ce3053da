"""What importing a layer loads: each in a fresh interpreter (a subprocess).

The protocol is sans-IO and imports only itself; the daemon never loads the
client (whose at-fork and atexit hooks it would otherwise carry); the client
registers its hooks with its first Client, not at import.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path


def _python(code: str, *flags: str, env: dict[str, str] | None = None) -> str:
    """Run ``code`` in a new interpreter (``flags`` before ``-c``); what it printed."""
    return subprocess.run(
        [sys.executable, *flags, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env=env,
    ).stdout


def _pipeline_env(tmp_path: Path, **env: str) -> dict[str, str]:
    """A pipeline's environment with no config file and no daemon: events spool."""
    return {
        **os.environ,
        "HOME": str(tmp_path),
        "RUNTALLY_CONFIG": "",
        "RUNTALLY_SOCKET": str(tmp_path / "absent.sock"),
        "RUNTALLY_SPOOL": str(tmp_path / "spool"),
        **env,
    }


def run_fresh(code: str) -> dict:
    """Run ``code`` in a new interpreter; it prints one JSON object, returned here."""
    return json.loads(_python(code))


def test_protocol_loads_no_socket_and_no_client() -> None:
    """Counted beyond what ``import msgspec`` loads by itself: msgspec uses
    typing_extensions when it is installed, and some of its releases load
    ``_socket``; that is theirs, not the protocol's."""
    got = run_fresh(
        """
        import json, sys
        import msgspec
        before = set(sys.modules)
        import runtally.protocol
        print(json.dumps(sorted(
            m for m in set(sys.modules) - before
            if m in ("socket", "_socket", "select", "selectors", "threading")
            or m.startswith(("runtally.client", "runtally.daemon", "runtally.cli"))
        )))
        """
    )
    assert got == []


def test_daemon_loads_no_client_and_registers_no_client_hook() -> None:
    got = run_fresh(
        """
        import importlib, json, pkgutil, sys
        import runtally.daemon
        for info in pkgutil.iter_modules(runtally.daemon.__path__):
            importlib.import_module(f"runtally.daemon.{info.name}")
        # The client's hooks live in runtally.client._process: not loaded, not registered.
        print(json.dumps(sorted(m for m in sys.modules if m.startswith("runtally.client"))))
        """
    )
    assert got == []


def test_client_hooks_come_with_the_first_client(tmp_path: object) -> None:
    got = run_fresh(
        f"""
        import atexit, json
        before = atexit._ncallbacks()
        from runtally.client import Client
        imported = atexit._ncallbacks() - before
        Client({str(tmp_path)!r} + "/d.sock", {str(tmp_path)!r} + "/spool")
        Client({str(tmp_path)!r} + "/d.sock", {str(tmp_path)!r} + "/spool")
        print(json.dumps({{"imported": imported, "clients": atexit._ncallbacks() - before}}))
        """
    )
    assert got == {"imported": 0, "clients": 1}


#: What a pipeline that imports the tracker must never load (issue 17).
HEAVY = ("trio", "click", "rich", "sqlite3", "tomllib", "runtally.daemon", "runtally.cli")


def _heavy_loaded(code: str, tmp_path: Path, **env: str) -> list[str]:
    """Run ``code`` in a fresh interpreter with no config file; the HEAVY modules it loaded."""
    return json.loads(_python(code, env=_pipeline_env(tmp_path, **env)))


def test_import_runtally_and_runtracker_load_nothing_heavy(tmp_path: Path) -> None:
    got = _heavy_loaded(
        f"""
        import json, sys
        import runtally
        from runtally import RunTracker
        heavy = {HEAVY!r}
        print(json.dumps(sorted(
            m for m in sys.modules if m in heavy or m.startswith(tuple(h + "." for h in heavy))
            or m.startswith("msgspec") or m in ("socket", "runtally.protocol", "runtally.config")
        )))
        """,
        tmp_path,
    )
    # Not even msgspec, the protocol or the config resolver: they come with the first tracker.
    assert got == []


def test_a_tracked_run_loads_nothing_heavy(tmp_path: Path) -> None:
    """The whole cron shape: import, a run with a step, close (daemon absent: spooled)."""
    got = _heavy_loaded(
        f"""
        import json, sys
        from runtally import RunTracker
        t = RunTracker("imports")
        t.start_run()
        t.end_step(t.start_step("s"), created=1)
        t.end_run()
        t.close(0.1)
        heavy = {HEAVY!r}
        print(json.dumps(sorted(
            m for m in sys.modules if m in heavy or m.startswith(tuple(h + "." for h in heavy))
        )))
        """,
        tmp_path,
    )
    assert got == []


#: Standard-library modules a cron process must not pay for on the client path (issue 17):
#: pathlib (~7 ms with fnmatch, urllib.parse and ipaddress), threading and weakref (the
#: client's locks are _thread's), importlib (the lazy names use __import__).
CLIENT_NEVER = ("pathlib", "fnmatch", "urllib", "ipaddress", "threading", "weakref", "importlib")

_TRACKED_RUN = """
    import json, os, sys
    import msgspec  # what it loads (typing_extensions, inspect... by release) is not ours
    before = set(sys.modules)
    from runtally import RunTracker
    t = RunTracker("imports"{args})
    t.start_run()
    t.end_step(t.start_step("s"), created=1)
    t.end_run()
    t.close(0.1)
    never = {never!r}
    print(json.dumps(sorted(
        m for m in set(sys.modules) - before if m.split(".")[0] in never
    )))
    """


def _as_installed(code: str, tmp_path: Path, **env: str) -> list:
    """Run ``code`` as a pipeline with runtally installed from a wheel would: ``-S``, so
    no editable-install finder (it loads pathlib itself) hides what the client loads.
    Each line it prints is one JSON value."""
    import msgspec

    import runtally

    path = [str(Path(runtally.__file__).parents[1]), str(Path(msgspec.__file__).parents[1])]
    env["PYTHONPATH"] = os.pathsep.join(path)
    out = _python(code, "-S", env=_pipeline_env(tmp_path, **env))
    return [json.loads(line) for line in out.splitlines()]


def test_a_tracked_run_with_settings_from_the_environment_loads_no_pathlib(
    tmp_path: Path,
) -> None:
    """Socket and spool from RUNTALLY_SOCKET/RUNTALLY_SPOOL, the rest defaults."""
    got = _as_installed(_TRACKED_RUN.format(args="", never=CLIENT_NEVER), tmp_path)
    assert got == [[]]


def test_a_tracked_run_with_explicit_paths_loads_no_pathlib(tmp_path: Path) -> None:
    args = f", socket={str(tmp_path / 'd.sock')!r}, spool={str(tmp_path / 'spool')!r}"
    got = _as_installed(_TRACKED_RUN.format(args=args, never=CLIENT_NEVER), tmp_path)
    assert got == [[]]


def test_a_tracked_run_with_a_config_file_loads_no_pathlib(tmp_path: Path) -> None:
    """A config file costs tomllib, not pathlib; and its settings are the ones used."""
    config = tmp_path / "runtally.toml"
    mine = tmp_path / "mine"
    config.write_text(f'[runtally]\nsocket = "{tmp_path / "d.sock"}"\nspool = "{mine}"\n')
    code = _TRACKED_RUN.format(args="", never=(*CLIENT_NEVER, "tomllib")).rstrip()
    code += f"\n    print(json.dumps(os.listdir({str(mine)!r})))\n"
    loaded, spooled = _as_installed(
        code, tmp_path, RUNTALLY_CONFIG=str(config), RUNTALLY_SOCKET="", RUNTALLY_SPOOL=""
    )
    assert {m.split(".")[0] for m in loaded} == {"tomllib"}
    assert len(spooled) == 1
    assert spooled[0].endswith(".spool")


#: What the daemon process must never load (issue 17: its resident memory): the other
#: commands' libraries (rich for tables, the web server, alert and metrics libraries),
#: the other commands' modules, and the client.
DAEMON_NEVER = (
    "rich",
    "prometheus_client",
    "starlette",
    "hypercorn",
    "jinja2",
    "apprise",
    "runtally.client",
    "runtally.web",
    "runtally.metrics",
)
#: Of the CLI, the daemon loads its own command and the plumbing it uses, nothing else.
DAEMON_CLI = {"runtally.cli", "runtally.cli._common", "runtally.cli._daemon"}
DAEMON_CLI |= {"runtally.cli._errors", "runtally.cli._text"}

_MODULES_AT_EXIT = """
import atexit, json, runpy, sys
out = sys.argv.pop(1)
def dump():
    with open(out, "w") as f:
        json.dump(sorted(sys.modules), f)
atexit.register(dump)
sys.argv[0] = "runtally"
runpy.run_module("runtally.cli", run_name="__main__")
"""


def test_the_daemon_process_loads_no_other_command(tmp_path: Path, short_root: Path) -> None:
    """A real ``runtally daemon`` serves an event, then stops on SIGTERM: the modules it
    had loaded by then (what serving imports lazily included)."""
    from daemon_helpers import DaemonProcess, RawClient, run_events

    modules = tmp_path / "modules.json"

    class Traced(DaemonProcess):
        def argv(self) -> list[str]:
            argv = super().argv()
            return [argv[0], "-c", _MODULES_AT_EXIT, str(modules), *argv[3:]]

    daemon = Traced(short_root).start()
    try:
        with RawClient(daemon.socket) as client:
            client.send(*run_events("imports", steps=1, errors=1))
            assert {m.__struct_config__.tag for m in client.recv(5)} == {"ack"}
    finally:
        assert daemon.stop() == 0, daemon.read_log()
    loaded = json.loads(modules.read_text())
    assert "runtally.daemon._server" in loaded  # it did serve
    never = [m for m in loaded if m.split(".")[0] in DAEMON_NEVER or m.startswith(DAEMON_NEVER)]
    cli = [m for m in loaded if m.startswith("runtally.cli") and m not in DAEMON_CLI]
    assert never == []
    assert cli == []
