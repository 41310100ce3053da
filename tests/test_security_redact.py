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


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        # short password options of common tools; a number is a port and stays
        (["mysql", "-pSECRET", "db"], ["mysql", "-p***", "db"]),
        (["sshpass", "-p", "SECRET", "ssh"], ["sshpass", "-p", "***", "ssh"]),
        (["tool", "-P", "SECRET"], ["tool", "-P", "***"]),
        (["mysql", "-P", "3306", "-p3307"], ["mysql", "-P", "3306", "-p3307"]),
        # user:password options
        (["curl", "-u", "user:pass", "h"], ["curl", "-u", "user:***", "h"]),
        (["curl", "-uuser:pass", "--user=u:p"], ["curl", "-uuser:***", "--user=u:***"]),
        (["curl", "--proxy-user", "u:p"], ["curl", "--proxy-user", "u:***"]),
        (["python", "-u", "job.py"], ["python", "-u", "job.py"]),
        # headers
        (["-H", "Authorization: Bearer x"], ["-H", "Authorization: ***"]),
        (["-HCookie: a=b", "X-Api-Key:k"], ["-HCookie: ***", "X-Api-Key:***"]),
        (["-H", "Accept: text/html"], ["-H", "Accept: text/html"]),
        # URL query parameters whose names look secret
        (
            ["https://h/x?token=t1&page=2&api_key=k1#f"],
            ["https://h/x?token=***&page=2&api_key=***#f"],
        ),
        (
            ["--url=https://h/?X-Amz-Signature=s&sig=s2&Credential=c&pwd=p&auth=a"],
            ["--url=https://h/?X-Amz-Signature=***&sig=***&Credential=***&pwd=***&auth=***"],
        ),
        (["https://h/?design=1&monkey=2"], ["https://h/?design=1&monkey=2"]),
        # option names
        (["--auth", "X", "--key", "Y"], ["--auth", "***", "--key", "***"]),
        (["--secret-file", "s", "--secrets=t"], ["--secret-file", "***", "--secrets=***"]),
        (["--github-token", "a", "--ssh-key", "b"], ["--github-token", "***", "--ssh-key", "***"]),
        (["--db-password", "c", "LICENSE_KEY=d"], ["--db-password", "***", "LICENSE_KEY=***"]),
        (["--keyboard", "us", "MONKEY=1"], ["--keyboard", "us", "MONKEY=1"]),
    ],
)
def test_redact_argv_wider_rules(argv: list[str], expected: list[str]) -> None:
    """The attack report's cases: each once leaked into run meta."""
    assert redact_argv(argv) == expected


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        # runtally's own -p is --pipeline; after "--" another program's rules apply
        (
            ["/srv/.venv/bin/runtally", "exec", "-p", "nightly", "--", "mysql", "-pS", "-p", "T"],
            [
                "/srv/.venv/bin/runtally",
                "exec",
                "-p",
                "nightly",
                "--",
                "mysql",
                "-p***",
                "-p",
                "***",
            ],
        ),
        (
            ["runtally", "exec", "-pnightly", "--token", "t"],
            ["runtally", "exec", "-pnightly", "--token", "***"],
        ),
        (["sshpass", "-p", "S", "runtally"], ["sshpass", "-p", "***", "runtally"]),
    ],
)
def test_runtallys_own_pipeline_option_is_not_a_password(
    argv: list[str], expected: list[str]
) -> None:
    """Found by a new user: ``runtally exec -p nightly-export`` was stored as ``-p ***``."""
    assert redact_argv(argv) == expected


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
