"""The client spools only into a directory nobody else can tamper with (attack report).

The same rule as for the socket's directory: owned by this user, root or the
daemon's, and writable by nobody else, except the packaged shared spool
(``3770``: group-writable but sticky).  Into any other directory nothing is
written; with the daemon unreachable the events are counted as lost, so the
run is reported as having lost them rather than left in an attacker's hands.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from runtally.client import Client, _warn
from runtally.client._spool import SpoolWriter
from runtally.protocol import RunStart

pytestmark = pytest.mark.timeout(30)

NOBODY = 65534


def _event(run: str = "0190f5c5-0000-7000-8000-000000000001") -> RunStart:
    return RunStart(id=run, ts=1_770_000_000_000, run=run, pipeline="p", club_slug="c")


def _spool_dir(root: Path, mode: int, owner: int | None = None) -> Path:
    spool = root / "spool"
    spool.mkdir()
    os.chmod(spool, mode)
    if owner is not None:
        if os.getuid() != 0:
            pytest.skip("giving a directory to another uid needs root")
        os.chown(spool, owner, -1)
    return spool


class TestSpoolDirectoryTrust:
    @pytest.mark.parametrize(
        ("mode", "owner"),
        [(0o777, NOBODY), (0o700, NOBODY), (0o777, None), (0o1777, None), (0o770, None)],
        ids=["others-0777", "others-0700", "mine-0777", "mine-1777", "mine-0770"],
    )
    def test_untrusted_directory_gets_nothing_and_the_loss_is_counted(
        self,
        tmp_path: Path,
        mode: int,
        owner: int | None,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        spool = _spool_dir(tmp_path, mode, owner)
        monkeypatch.setattr(_warn, "_warned", set())  # each case says it once
        client = Client(tmp_path / "absent.sock", spool)
        for _ in range(3):
            client.emit(_event())
        assert list(spool.iterdir()) == []
        assert client.lost.total == 3
        client.close(0.1)
        err = capsys.readouterr().err
        assert err.count(f"not spooling to {spool}") == 1, err  # once, not per event
        assert "writable by others" in err or "belongs to uid" in err

    @pytest.mark.parametrize("mode", [0o700, 0o3770, 0o2750])
    def test_own_and_shared_spool_directories_are_used(self, tmp_path: Path, mode: int) -> None:
        spool = _spool_dir(tmp_path, mode)
        writer = SpoolWriter(spool)
        assert writer.append(b"\x81\xa1a\x01")
        assert len(list(spool.glob("*.spool"))) == 1
        writer.close()
