"""Files on disk get the modes of the documented access: nobody else reads the rows.

Before: a hand-started daemon created dashboard.sqlite, -wal and -shm 0644,
and every local user could read every row (argv with a password included).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from account_helpers import local_account, needs_root
from daemon_helpers import DaemonProcess, wait_until
from test_replay import spool_name

from runtally.client._spool import SpoolWriter
from runtally.client._unix import trusted_uids
from runtally.daemon._doctor import doctor


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def db_files(d: DaemonProcess) -> list[Path]:
    return [d.db, d.db.with_name(d.db.name + "-wal"), d.db.with_name(d.db.name + "-shm")]


def test_a_hand_started_daemon_keeps_its_files_to_itself(short_root: Path) -> None:
    d = DaemonProcess(short_root).start()
    try:
        (d.spool / spool_name("bad")).write_bytes(b"NOTSPOOL" + b"\0" * 20)
        wait_until((d.spool / "corrupt").is_dir, what="corrupt/")
        assert {p.name: mode(p) for p in db_files(d)} == {p.name: 0o600 for p in db_files(d)}
        assert mode(d.spool / "corrupt") == 0o700
        assert mode(d.spool) == 0o700
    finally:
        d.stop()


def test_under_systemd_the_group_may_read(short_root: Path) -> None:
    d = DaemonProcess(short_root, extra_env={"INVOCATION_ID": "0123abcd"}).start()
    try:
        assert {p.name: mode(p) for p in db_files(d)} == {p.name: 0o640 for p in db_files(d)}
    finally:
        d.stop()


def test_a_database_left_readable_is_closed_at_start_and_doctor_warns(short_root: Path) -> None:
    d = DaemonProcess(short_root).start()
    d.stop()
    os.chmod(d.db, 0o644)
    readable = [w for w in doctor(d.db).warnings if "readable by every local user" in w]
    assert readable, doctor(d.db).warnings
    d = DaemonProcess(short_root).start()
    try:
        assert mode(d.db) == 0o600
        assert not [w for w in doctor(d.db).warnings if "readable by every" in w]
    finally:
        d.stop()


@needs_root
def test_spool_files_in_the_daemons_directory_are_group_readable(short_root: Path) -> None:
    """In a directory that is not the client's own (the systemd layout): 0640."""
    with local_account() as daemon_user:
        spool = short_root / "spool"
        spool.mkdir()
        os.chown(spool, daemon_user.uid, daemon_user.gid)
        os.chmod(spool, 0o3770)
        writer = SpoolWriter(spool, trusted=trusted_uids(daemon_user.name))  # the daemon's
        assert writer.append(b"\x81\xa4type\xa4ping")
        assert writer.path is not None and mode(writer.path) == 0o640
        writer.close()
