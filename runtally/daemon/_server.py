"""runtallyd: the listener, the writer, the replayer and systemd, in nested nurseries.

Start-up: open and migrate the database, bind the socket (or take it from
systemd), start the writer and the replayer, then tell systemd READY=1.
Shutdown (first SIGTERM/SIGINT): stop accepting, stop reading, let every
connection send the replies for what it read, let the writer commit everything
queued, close, exit 0.  A writer that cannot commit gives up after
``stop_timeout_s``, so one signal always ends the daemon; a second signal
exits at once.  The clients' spools cover whatever was not acked.

One daemon per database: ``<db>.lock`` is flocked for the daemon's lifetime.
A writer that stays unable to commit for ``wedged_exit_s`` ends the daemon
with a DaemonError (one line, exit status 1) for systemd to restart it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import grp
import os
import signal
import socket
import stat
import sys
import time
from collections.abc import Callable
from pathlib import Path

import trio

from .._trust import trusted_uids, untrusted_directory
from .._version import __version__
from ..config import Settings
from ._accept import serve_listeners
from ._daemon import Daemon
from ._dbfiles import lock_path
from ._log import logger
from ._modes import apply_umask, group_access, restrict_database
from ._probe import Silence, probe
from ._store import AuditEntry, Store
from ._systemd import Notifier, listen_fds
from ._watchdog import Watchdog
from ._writer import Job

__all__ = ["Daemon", "DaemonError", "run_daemon", "serve"]

_DRAIN_TIMEOUT_S = 20.0


class DaemonError(Exception):
    """The daemon cannot start (another daemon answers, a path is unusable)."""


def _claim_socket_path(path: Path) -> None:
    """Make ``path`` free to bind: unlink a stale socket, refuse a live one."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise DaemonError(f"{path} exists and is not a socket; refusing to replace it")
    nobody = probe(path, timeout=1.0)
    if nobody is None:
        raise DaemonError(f"another daemon is already listening on {path}")
    if nobody.silence in (Silence.STALE, Silence.ABSENT):
        path.unlink(missing_ok=True)  # stale: its daemon died without cleaning up
        return
    raise DaemonError(f"cannot probe existing socket {path}: {nobody.error}") from nobody.error


_LOCK_TRIES = 10
_LOCK_RETRY_S = 0.01


def _flock_exclusive(fd: int) -> bool:
    """An exclusive flock on ``fd``, tried for ~0.1 s; False when another holds it.

    The retries: a `runtally db` command may be asking who writes the
    database, a shared lock it holds for microseconds (``_dbfiles.lock_holder``).
    """
    for attempt in range(_LOCK_TRIES):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if attempt + 1 < _LOCK_TRIES:
                time.sleep(_LOCK_RETRY_S)
    return False


def _lock_database(db: Path) -> list[int]:
    """Take ``<db>.lock`` and the database file itself (flock, exclusive) for the
    daemon's lifetime; their fds.

    A second daemon on the same database would write it concurrently with the
    first: it is refused.  ``<db>.lock`` names the first one's pid; the lock
    on the database's own inode catches the same file under another name (a
    hard link, a bind mount, a symlink: found from outside, two daemons ran on
    one database through a hard link, each with its own WAL, and the acked
    events of one were lost).  flock and SQLite's own (POSIX) locks do not
    meet on Linux; SQLite's WAL needs a local filesystem anyway.  The lock
    file is never unlinked (unlinking a lock file lets two holders race on
    two inodes).
    """
    path = lock_path(db)
    path.parent.mkdir(parents=True, exist_ok=True)
    first = _locked(
        path,
        os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
        0o640,
        lambda fd: (
            f"another runtallyd (pid {_pid_in(fd)}) is already writing {db}"
            f" (it holds {path}); one daemon per database"
        ),
    )
    try:
        second = _locked(
            db,
            os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
            0o644,  # what SQLite would create it with: the umask decides (_modes)
            lambda _fd: (
                f"another runtallyd is already writing {db} under another name"
                " (a hard link, a symlink or a bind mount of it); one daemon per database"
            ),
        )
    except BaseException:
        os.close(first)
        raise
    os.ftruncate(first, 0)
    os.pwrite(first, f"{os.getpid()}\n".encode(), 0)
    return [first, second]


def _locked(path: Path, flags: int, mode: int, refusal: Callable[[int], str]) -> int:
    """``path`` opened and exclusively flocked; DaemonError (``refusal(fd)``) if held."""
    try:
        fd = os.open(path, flags, mode)
    except OSError as exc:
        raise DaemonError(f"cannot open {path}: {exc.strerror or exc}") from exc
    if _flock_exclusive(fd):
        return fd
    why = refusal(fd)
    os.close(fd)
    raise DaemonError(why)


def _pid_in(fd: int) -> str:
    return os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"


def _bind(settings: Settings) -> socket.socket:
    path = settings.socket
    path.parent.mkdir(parents=True, exist_ok=True)
    # The clients' own rule (runtally._trust): a socket in a directory anyone
    # may write (/tmp) could be anyone's, so no client sends to it; serving
    # there would only look healthy while every pipeline spools.
    try:
        why = untrusted_directory(
            str(path.parent), os.stat(path.parent), trusted_uids(settings.daemon_user)
        )
    except OSError as exc:
        why = f"cannot check {path.parent}: {exc}"
    if why is not None:
        raise DaemonError(
            f"not listening on {path}: {why}, so clients would refuse it;"
            " choose a socket in a directory of its own"
        )
    _claim_socket_path(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        os.chmod(path, 0o660)
        if settings.socket_group:
            try:
                gid = grp.getgrnam(settings.socket_group).gr_gid
            except KeyError as exc:
                raise DaemonError(f"socket_group {settings.socket_group!r} does not exist") from exc
            os.chown(path, -1, gid)
        sock.listen(512)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.ENAMETOOLONG or "too long" in str(exc):
            raise DaemonError(f"socket path too long for AF_UNIX: {path}") from exc
        raise DaemonError(f"cannot listen on {path}: {exc}") from exc
    except BaseException:
        sock.close()
        raise
    return sock


async def serve(
    settings: Settings,
    *,
    notifier: Notifier | None = None,
    task_status: trio.TaskStatus[Daemon] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the daemon until signalled (or ``request_stop``); return after a clean drain.

    ``task_status.started(daemon)`` once listening and READY=1 is sent.  The
    tasks live in nested nurseries, outermost last to stop:

    1. ``supervision``: signals and the watchdog, alive until the very end, so
       a second signal works during the drain and a wedged drain stops pings;
    2. ``writing``: the writer, which returns once it is closed and has
       committed everything queued;
    3. ``connections``: one task per client; on stop each replies to what it
       read and closes, within ``_DRAIN_TIMEOUT_S``;
    4. ``intake``: the listeners and the replayer, cancelled first on stop.

    ``notifier`` defaults to one from the environment (NOTIFY_SOCKET).
    """
    notifier = Notifier() if notifier is None else notifier
    activated = listen_fds()
    if activated:
        listen_socks, owns_socket = activated, False
    else:
        listen_socks, owns_socket = [_bind(settings)], True
    socket_inode = os.stat(settings.socket).st_ino if owns_socket else None
    group = group_access(settings, activated=not owns_socket)
    lock_fds: list[int] = []
    try:
        # After the socket: a second daemon on the same socket is told so first.
        lock_fds = _lock_database(settings.db)
        store = await trio.to_thread.run_sync(
            lambda: Store.open(
                settings.db,
                synchronous=settings.synchronous,
                busy_timeout_ms=settings.busy_timeout_ms,
                parked_max_bytes=settings.parked_max_bytes,
                parked_max_bytes_per_peer=settings.parked_max_bytes_per_peer,
            )
        )
    except BaseException:
        for s in listen_socks:
            s.close()
        if owns_socket:
            _unlink_if_ours(settings.socket, socket_inode)
        for fd in lock_fds:
            os.close(fd)
        raise
    restrict_database(settings.db, group)
    daemon = Daemon(settings, store)
    settings.spool.mkdir(parents=True, exist_ok=True)
    daemon.replayer.prepare_corrupt()  # before any client can make corrupt/ its own
    listeners = [trio.SocketListener(trio.socket.from_stdlib_socket(s)) for s in listen_socks]
    try:
        async with trio.open_nursery() as supervision:
            await supervision.start(_handle_signals, daemon)
            interval = notifier.watchdog_interval()
            if interval and notifier.enabled:
                watchdog = Watchdog(notifier, daemon.writer, daemon.summary, interval_s=interval)
                supervision.start_soon(watchdog.run)
            async with trio.open_nursery() as writing:
                await writing.start(_write, daemon, writing.cancel_scope)
                await daemon.writer.submit(_started_audit(settings, activated=not owns_socket))
                async with trio.open_nursery() as connections:
                    async with trio.open_nursery() as intake:
                        await intake.start(
                            functools.partial(
                                serve_listeners,
                                daemon.handle,
                                listeners,
                                handler_nursery=connections,
                            )
                        )
                        intake.start_soon(daemon.replayer.run)
                        intake.start_soon(daemon.report_refusals)
                        daemon.alerts.start()
                        intake.start_soon(daemon.monitor.run)
                        intake.start_soon(daemon.retention.run)
                        notifier.ready(daemon.summary())
                        task_status.started(daemon)
                        await daemon.stop_requested.wait()
                        daemon.writer.request_stop()
                        notifier.stopping()
                        intake.cancel_scope.cancel()
                    daemon.stop_reading()
                    connections.cancel_scope.deadline = trio.current_time() + _DRAIN_TIMEOUT_S
                daemon.writer.close()
            supervision.cancel_scope.cancel()
    finally:
        daemon.alerts.stop()
        with contextlib.suppress(Exception):
            store.checkpoint()
        store.close()
        for s in listen_socks:
            s.close()
        if owns_socket:
            _unlink_if_ours(settings.socket, socket_inode)
        for fd in lock_fds:
            os.close(fd)  # the next daemon may take the database
    if daemon.writer.wedged is not None:
        raise DaemonError(daemon.writer.wedged)


async def _write(
    daemon: Daemon,
    scope: trio.CancelScope,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """The writer; if it gives up, everything it serves ends too (nothing more is acked)."""
    await daemon.writer.run(task_status=task_status)
    if daemon.writer.gave_up:
        scope.cancel()


def _started_audit(settings: Settings, *, activated: bool) -> Job:
    """The ``daemon_started`` audit row: version, pid and the paths in use."""
    return Job(
        audit=[
            AuditEntry(
                "daemon_started",
                f"runtallyd {__version__} pid {os.getpid()}",
                data={
                    "db": str(settings.db),
                    "socket": str(settings.socket),
                    "spool": str(settings.spool),
                    "socket_activated": activated,
                },
            )
        ]
    )


async def _handle_signals(
    daemon: Daemon, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """First SIGTERM/SIGINT: graceful stop.  A second one exits the process at once."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        task_status.started()  # handled from READY=1 on, not from some time after it
        async for signum in signals:
            if not daemon.stop_requested.is_set():
                daemon.request_stop()
                continue
            logger.warning("%s again; exiting now", signal.Signals(signum).name)
            os._exit(1)


def _unlink_if_ours(path: Path, inode: int | None) -> None:
    with contextlib.suppress(OSError):
        if inode is not None and path.lstat().st_ino == inode:
            path.unlink()


#: The GIL switch interval of the daemon process (CPython's default is 5 ms).
#: The writer thread releases the GIL around every sqlite3_step and must get it
#: back from the trio thread each time; with 5 ms it waits up to 5 ms per
#: statement while the loop is busy decoding (a convoy): a 3 ms apply took
#: 70 ms under load.  1 ms: 8 pipelines went from 25k to 36k events/s.
_SWITCH_INTERVAL_S = 0.001


def _yield_to_pipelines() -> None:
    """SCHED_BATCH: never preempt a pipeline just because its event woke us up.

    Pipelines emit without waiting for acks, so the daemon's latency costs
    nobody anything, while each wakeup preemption stalls the pipeline that
    sent the event in the middle of its tracking call (on 2 busy cores: p99
    of the call 300 us -> 50-80 us).  The daemon keeps its fair share of CPU;
    threads started later (the writer's) inherit the policy.  Only a default
    policy is changed: one set by the operator (systemd CPUSchedulingPolicy=)
    is left alone.
    """
    try:
        if os.sched_getscheduler(0) == os.SCHED_OTHER:
            os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except (AttributeError, OSError):
        pass  # not Linux, or not allowed: a scheduling hint, nothing more


def run_daemon(settings: Settings) -> None:
    """Blocking entry point used by the CLI."""
    sys.setswitchinterval(_SWITCH_INTERVAL_S)
    # Before any file exists: the database, its side files, the spool and
    # corrupt/ directories get the documented modes (``_modes``).
    apply_umask(group_access(settings, activated=bool(os.environ.get("LISTEN_FDS"))))
    _yield_to_pipelines()
    trio.run(serve, settings)
