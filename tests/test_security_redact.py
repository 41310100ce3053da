"""Secrets in argv never leave the client, and argv capture can be turned off."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from daemon_helpers import DaemonProcess, ro_connect, wait_until

from runtally.client._redact import REDACTED, redact_argv


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--password=hunter2"], ["--password=***"]),
        (["--password", "hunter2", "--full"], ["--password", "***", "--full"]),
        (["--token", "abc", "x"], ["--token", "***", "x"]),
        (["--api-key=k1", "--api_key", "k2"], ["--api-key=***", "--api_key", "***"]),
        (["--client-secret", "s"], ["--client-secret", "***"]),
        (["DB_PASSWD=p", "MY_SECRET=s"], ["DB_PASSWD=***", "MY_SECRET=***"]),
        (["-p", "5432", "--verbose"], ["-p", "5432", "--verbose"]),
        (["--dry-run", "people"], ["--dry-run", "people"]),
        (["--password", "--full"], ["--password", "--full"]),  # no value to hide
        (
            ["--db=postgres://app:s3cr3t@db.local/people", "https://u:p@h/x?y=1"],
            ["--db=postgres://app:***@db.local/people", "https://u:***@h/x?y=1"],
        ),
        (["https://host/path", "user@host"], ["https://host/path", "user@host"]),
    ],
)
def test_redact_argv(argv: list[str], expected: list[str]) -> None:
    assert redact_argv(argv) == expected
    assert REDACTED == "***"


def stored_text(db: Path) -> str:
    conn = ro_connect(db)
    try:
        rows = conn.execute("SELECT * FROM runs").fetchall()
        rows += conn.execute("SELECT * FROM run_steps").fetchall()
        return repr(rows)
    finally:
        conn.close()


@pytest.mark.parametrize("capture", [True, False])
def test_exec_stores_no_secret_from_either_argv(
    daemon_proc: DaemonProcess, tmp_path: Path, capture: bool
) -> None:
    """Both argvs: runtally's own (run meta) and the command's (step detail, run summary)."""
    env = {
        **daemon_proc.env(),
        "RUNTALLY_SOCKET": str(daemon_proc.socket),
        "RUNTALLY_SPOOL": str(daemon_proc.spool),
        "RUNTALLY_DB": str(daemon_proc.db),
    }
    if not capture:
        config = tmp_path / "runtally.toml"
        config.write_text("[runtally]\ncapture_argv = false\n")
        env["RUNTALLY_CONFIG"] = str(config)
    argv = ["true", "--password=hunter2", "--token", "tok3n", "postgres://app:s3cr3t@db/x"]
    subprocess.run(
        [sys.executable, "-m", "runtally.cli", "exec", "-p", "people", "--", *argv],
        env=env,
        check=True,
        timeout=60,
    )
    wait_until(lambda: "success" in stored_text(daemon_proc.db), what="the run stored")
    text = stored_text(daemon_proc.db)
    for secret in ("hunter2", "tok3n", "s3cr3t"):
        assert secret not in text
    assert ("argv" in text) is capture
    if capture:
        assert "--password=***" in text and "postgres://app:***@db/x" in text
