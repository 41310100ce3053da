"""The spool directory as an attack surface: odd entries, symlinks, its mode and owner.

Each case was found by trying, as a second local account would; each test
failed before the fix.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import trio
from account_helpers import local_account, needs_root
from daemon_helpers import DaemonProcess, count, run_events, settings_for, wait_until
from test_replay import spool_name, start, wait_gone, write_spool

from runtally.cli._health import collect
from runtally.daemon._server import Daemon, serve


def audit(db: Path, event: str) -> list[str]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return [
            r[0] for r in conn.execute("SELECT message FROM audit_log WHERE event = ?", (event,))
        ]
    finally:
        conn.close()


async def wait_audit(db: Path, event: str, n: int = 1) -> list[str]:
    def enough() -> list[str] | None:
        found = audit(db, event)
        return found if len(found) >= n else None

    return await trio.to_thread.run_sync(lambda: wait_until(enough, what=f"{n} {event} rows"))


class TestOddEntries:
    def test_fifos_named_spool_and_tmp_neither_block_nor_stay(self, short_root: Path) -> None:
        """A FIFO used to block the daemon's open() forever: no ping, no restart."""
        spool = short_root / "spool"
        spool.mkdir()
        os.mkfifo(spool / spool_name("fifo"))
        os.mkfifo(spool / ".x.spool.tmp")
        good = spool / spool_name("good")
        write_spool(good, run_events("good", steps=1, errors=0))
        d = DaemonProcess(short_root).start(wait=False)
        try:
            d.wait_ready(timeout=15)
            wait_until(lambda: not good.exists(), what="the good file replayed")
            wait_until(lambda: len(audit(d.db, "spool_quarantined")) == 2, what="two audit rows")
            moved = sorted(p.name for p in (spool / "corrupt").iterdir())
            assert moved == sorted([spool_name("fifo"), ".x.spool.tmp"])
            assert all("FIFO" in m for m in audit(d.db, "spool_quarantined"))
            assert count(d.db, "runs", "uid = 'good'") == 1
            report = collect(d.socket, d.db, spool)
            assert report.problems == [], report.problems
        finally:
            if d.proc is not None and d.proc.poll() is None:
                d.kill()  # SIGKILL: a daemon stuck in open() would not see SIGTERM

    async def test_symlinks_are_moved_aside_once_and_status_stays_healthy(
        self, short_root: Path, nursery: trio.Nursery
    ) -> None:
        spool = short_root / "spool"
        spool.mkdir()
        to_passwd = spool / spool_name("passwd")
        to_passwd.symlink_to("/etc/passwd")
        to_db = spool / spool_name("db")
        to_db.symlink_to(short_root / "dashboard.sqlite")
        d: Daemon = await start(short_root, nursery)
        db = d.settings.db
        rows = await wait_audit(db, "spool_quarantined", 2)
        assert all("symlink" in r for r in rows)
        # Moved as links, never opened: nothing read, nothing written through them.
        for link in (to_passwd, to_db):
            assert not link.is_symlink()
            assert (spool / "corrupt" / link.name).is_symlink()
        await d.replayer.replay_once()
        assert len(audit(db, "spool_quarantined")) == 2  # once, not every round
        report = await trio.to_thread.run_sync(
            lambda: collect(d.settings.socket, db, spool, max_spool_age=1)
        )
        assert report.problems == [], report.problems
        d.request_stop()

    def test_status_never_follows_a_symlink_or_opens_a_fifo(self, short_root: Path) -> None:
        """Without a daemon to move them: status counts neither as a backlog, and returns."""
        spool = short_root / "spool"
        spool.mkdir()
        (spool / spool_name("link")).symlink_to("/etc/passwd")
        os.mkfifo(spool / spool_name("fifo"))
        code = (
            "import sys; from pathlib import Path; from runtally.cli._health import spool_section;"
            "s = spool_section(Path(sys.argv[1]), 1e10, 1.0);"
            "print(s.files, s.pending_files, s.backing_up)"
        )
        out = subprocess.run(
            [sys.executable, "-c", code, str(spool)],
            check=False,
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert out.stdout.split() == ["0", "0", "False"], out.stderr

    async def test_a_directory_named_spool_is_moved_aside(
        self, short_root: Path, nursery: trio.Nursery
    ) -> None:
        spool = short_root / "spool"
        (spool / spool_name("dir")).mkdir(parents=True)
        d: Daemon = await start(short_root, nursery)
        (row,) = await wait_audit(d.settings.db, "spool_quarantined")
        assert "directory" in row
        assert (spool / "corrupt" / spool_name("dir")).is_dir()
        d.request_stop()


class TestCorruptDirectory:
    async def test_a_symlinked_corrupt_is_not_followed(
        self, short_root: Path, nursery: trio.Nursery
    ) -> None:
        spool = short_root / "spool"
        spool.mkdir()
        elsewhere = short_root / "elsewhere"
        elsewhere.mkdir()
        bad = spool / spool_name("bad")
        (elsewhere / bad.name).write_text("precious")
        (spool / "corrupt").symlink_to(elsewhere)
        bad.write_bytes(b"NOTSPOOL" + b"\0" * 20)
        d: Daemon = await start(short_root, nursery)
        (row,) = await wait_audit(d.settings.db, "spool_replay_failed")
        assert "corrupt/ is not a real directory" in row
        assert (elsewhere / bad.name).read_text() == "precious"
        assert sorted(p.name for p in elsewhere.iterdir()) == [bad.name]
        assert bad.exists()
        d.request_stop()

    async def test_an_existing_file_in_corrupt_is_never_replaced(
        self, short_root: Path, nursery: trio.Nursery
    ) -> None:
        spool = short_root / "spool"
        (spool / "corrupt").mkdir(parents=True, mode=0o700)
        bad = spool / spool_name("again")
        (spool / "corrupt" / bad.name).write_text("the first one")
        bad.write_bytes(b"NOTSPOOL" + b"\0" * 20)
        d: Daemon = await start(short_root, nursery)
        await wait_gone(bad)
        assert (spool / "corrupt" / bad.name).read_text() == "the first one"
        assert (spool / "corrupt" / f"{bad.name}.1").read_bytes().startswith(b"NOTSPOOL")
        d.request_stop()

    async def test_a_group_writable_corrupt_is_refused(
        self, short_root: Path, nursery: trio.Nursery
    ) -> None:
        spool = short_root / "spool"
        (spool / "corrupt").mkdir(parents=True)
        os.chmod(spool / "corrupt", 0o770)
        bad = spool / spool_name("bad")
        bad.write_bytes(b"NOTSPOOL" + b"\0" * 20)
        d: Daemon = await start(short_root, nursery)
        (row,) = await wait_audit(d.settings.db, "spool_replay_failed")
        assert "writable by its group" in row
        assert bad.exists()
        d.request_stop()


class TestSpoolDirectoryItself:
    async def test_a_world_writable_spool_is_not_replayed_and_status_says_why(
        self, short_root: Path, nursery: trio.Nursery
    ) -> None:
        spool = short_root / "spool"
        injected = spool / spool_name("injected")
        write_spool(injected, run_events("injected", steps=1, errors=0))
        os.chmod(spool, 0o777)
        d: Daemon = await start(short_root, nursery)
        db = d.settings.db
        (row,) = await wait_audit(db, "spool_dir_refused")
        assert "writable by every user" in row
        await d.replayer.replay_once()
        assert injected.exists()
        assert count(db, "runs") == 0
        report = await trio.to_thread.run_sync(lambda: collect(d.settings.socket, db, spool))
        assert any("writable by every user" in p for p in report.problems), report.problems
        # Fixed by the operator: replayed on the next pass, status healthy again.
        os.chmod(spool, 0o770)
        await wait_gone(injected)
        assert d.replayer.problem is None
        assert count(db, "runs", "uid = 'injected'") == 1
        d.request_stop()

    async def test_a_symlinked_spool_directory_is_refused(
        self, short_root: Path, nursery: trio.Nursery
    ) -> None:
        real = short_root / "real"
        write_spool(real / spool_name("x"), run_events("x", steps=1, errors=0))
        (short_root / "spool").symlink_to(real)
        d: Daemon = await start(short_root, nursery)
        (row,) = await wait_audit(d.settings.db, "spool_dir_refused")
        assert "cannot be opened as a directory" in row
        assert count(d.settings.db, "runs") == 0
        d.request_stop()

    @needs_root
    async def test_a_spool_owned_by_another_user_is_not_replayed(
        self, short_root: Path, nursery: trio.Nursery
    ) -> None:
        with local_account() as other:
            spool = short_root / "spool"
            injected = spool / spool_name("injected")
            write_spool(injected, run_events("injected", steps=1, errors=0))
            os.chown(spool, other.uid, other.gid)
            d: Daemon = await start(short_root, nursery)
            (row,) = await wait_audit(d.settings.db, "spool_dir_refused")
            assert f"owned by uid {other.uid}" in row
            assert injected.exists() and count(d.settings.db, "runs") == 0
            d.request_stop()


@needs_root
class TestGroupMembership:
    """Socket and spool decide membership of allow_gids alike: by the uid's groups."""

    async def test_a_supplementary_member_may_emit_on_the_socket(
        self, short_root: Path, nursery: trio.Nursery
    ) -> None:
        with local_account() as member:
            settings = settings_for(
                short_root, allow_gids=(member.extra_gid,), socket_group=member.extra_group
            )
            os.chmod(short_root, 0o755)
            d: Daemon = await nursery.start(serve, settings)
            script = (
                "import socket, sys\n"
                "from runtally.protocol import encode_frame\n"
                f"{member.become()}"
                "s = socket.socket(socket.AF_UNIX); s.settimeout(5); s.connect(sys.argv[1])\n"
                "s.sendall(encode_frame({'type': 'ping'}))\n"
                "sys.stdout.buffer.write(s.recv(100))\n"
            )
            result = await trio.to_thread.run_sync(
                lambda: subprocess.run(
                    [sys.executable, "-c", script, str(settings.socket)],
                    check=False,
                    capture_output=True,
                    timeout=20,
                    env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
                )
            )
            assert b"pong" in result.stdout, (result.stdout, result.stderr)
            assert count(settings.db, "audit_log", "event = 'peer_refused'") == 0
            d.request_stop()

    async def test_a_setgid_directory_does_not_make_a_stranger_a_member(
        self, short_root: Path, nursery: trio.Nursery
    ) -> None:
        with local_account() as member, local_account() as stranger:
            spool = short_root / "spool"
            spool.mkdir()
            os.chown(spool, 0, member.extra_gid)
            os.chmod(spool, 0o3770)
            path = spool / spool_name("stranger")
            write_spool(path, run_events("stranger", steps=1, errors=0))
            os.chown(path, stranger.uid, member.extra_gid)  # what the setgid dir gives it
            d: Daemon = await start(short_root, nursery, allow_gids=(member.extra_gid,))
            (row,) = await wait_audit(d.settings.db, "spool_quarantined")
            assert f"uid {stranger.uid} is not allowed" in row
            assert count(d.settings.db, "runs") == 0
            member_file = spool / spool_name("member")
            write_spool(member_file, run_events("member", steps=1, errors=0))
            os.chown(member_file, member.uid, member.gid)  # a member's own primary gid
            await wait_gone(member_file)
            assert count(d.settings.db, "runs", "uid = 'member'") == 1
            d.request_stop()


def test_stale_tmp_files_are_still_swept(short_root: Path) -> None:
    """The sweep now works through the directory fd; an old regular .tmp still goes."""
    spool = short_root / "spool"
    spool.mkdir()
    stale = spool / ".old.spool.tmp"
    stale.write_bytes(b"RLSPOOL1")
    old = time.time() - 3600
    os.utime(stale, (old, old))

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            d: Daemon = await nursery.start(serve, settings_for(short_root))
            await wait_gone(stale)
            d.request_stop()

    trio.run(main)
