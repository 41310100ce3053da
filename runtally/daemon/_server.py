"""runtallyd: the listener, the writer, the replayer and systemd, in one nursery.

Start-up: open and migrate the database, bind the socket (or take it from
systemd), start the writer and the replayer, then tell systemd READY=1.
Shutdown (first SIGTERM/SIGINT): stop accepting, stop reading, let every
connection send the replies for what it read, let the writer commit everything
queued, close, exit 0.  A second signal exits at once: the clients' spools
cover whatever was not acked.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import os
import signal
import socket
import stat
import sys
import time
from pathlib import Path

import trio

from .._version import __version__
from ..config import Settings
from ..protocol import ErrorReply, Replayed, StatusReply, encode_frame
from ._conn import Connection, Render, ServerHooks
from ._peer import is_admin, is_allowed, peer_origin
from ._probe import Silence, probe
from ._replay import Replayer, spool_backlog
from ._store import AuditEntry, Origin, Store
from ._systemd import Notifier, listen_fds
from ._writer import Job, Writer, log

__all__ = ["DaemonError", "run_daemon", "serve"]

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


def _bind(settings: Settings) -> socket.socket:
    path = settings.socket
    path.parent.mkdir(parents=True, exist_ok=True)
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


class Daemon(ServerHooks):
    """State shared by the daemon's tasks; the hooks connections call."""

    name = f"runtallyd/{__version__}"

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.writer = Writer(store, max_queue_events=settings.queue_events)
        self.replayer = Replayer(
            settings.spool,
            self.writer,
            owner_allowed=lambda uid, gid: is_allowed(settings, uid, gid),
            interval_s=settings.replay_interval_s,
        )
        self.started = time.monotonic()
        self.schema_version = store.schema_version
        self.connections: set[Connection] = set()
        self.refused_connections = 0
        #: Set by the first SIGTERM/SIGINT, or by ``request_stop`` (tests, embedding).
        self.stop_requested = trio.Event()

    def request_stop(self) -> None:
        """Begin the graceful shutdown, as a first SIGTERM does."""
        self.stop_requested.set()

    async def submit(self, job: Job) -> None:
        await self.writer.submit(job)

    def status(self) -> StatusReply:
        return StatusReply(
            uptime_s=round(time.monotonic() - self.started, 3),
            events_committed=self.writer.events_committed,
            queue_depth=self.writer.queued_events,
            schema_version=self.schema_version,
            db_path=str(self.store.path),
            connections=len(self.connections),
            spool_files=len(spool_backlog(self.settings.spool)),
            version=__version__,
            pid=os.getpid(),
            last_commit_ts=self.writer.last_commit_ms,
        )

    def status_frame(self) -> bytes:
        return encode_frame(self.status())

    def replay_render(self, origin: Origin) -> Render:
        async def render() -> bytes:
            if not is_admin(self.settings, origin.uid):
                return encode_frame(
                    ErrorReply(f"replay is an admin message; uid {origin.uid} is not an admin")
                )
            stats = await self.replayer.replay_once()
            total = self.replayer.total
            return encode_frame(
                Replayed(
                    stats.files,
                    stats.events,
                    stats.quarantined,
                    total.files,
                    total.events,
                    total.quarantined,
                )
            )

        return render

    def summary(self) -> str:
        busy = f", db busy: {self.writer.busy_reason}" if self.writer.busy_since else ""
        return (
            f"{self.writer.events_committed} events committed, "
            f"{len(self.connections)} connections, queue {self.writer.queued_events}{busy}"
        )

    # -- connections --------------------------------------------------------------

    async def handle(self, stream: trio.SocketStream) -> None:
        origin = peer_origin(stream.socket)
        refusal = None
        if len(self.connections) >= self.settings.max_connections:
            refusal = f"too many connections (limit {self.settings.max_connections}); retry later"
        elif not is_allowed(self.settings, origin.uid, origin.gid):
            refusal = f"uid {origin.uid} gid {origin.gid} is not allowed to emit"
            await self.writer.submit(
                Job(
                    audit=[
                        AuditEntry(
                            "peer_refused",
                            refusal,
                            level="warning",
                            scope="socket",
                            data={"uid": origin.uid, "gid": origin.gid, "pid": origin.pid},
                        )
                    ]
                )
            )
        if refusal is not None:
            self.refused_connections += 1
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                with trio.move_on_after(1.0):
                    await stream.send_all(encode_frame(ErrorReply(refusal)))
            await stream.aclose()
            return
        conn = Connection(stream, origin, self, idle_timeout_s=self.settings.idle_timeout_s)
        self.connections.add(conn)
        try:
            await conn.serve()
        except Exception as exc:  # noqa: BLE001 - one client's failure never stops the daemon
            log(f"runtallyd: connection from pid {origin.pid} failed: {exc!r}")
        finally:
            self.connections.discard(conn)


async def _watchdog(daemon: Daemon, notifier: Notifier, interval: float) -> None:
    """WATCHDOG=1 only while the writer shows progress: a wedged writer gets us restarted."""
    while True:
        await trio.sleep(interval)
        if trio.current_time() - daemon.writer.heartbeat < 2 * interval + 1.0:
            notifier.watchdog()
        notifier.status(daemon.summary())


async def serve(
    settings: Settings, *, task_status: trio.TaskStatus[Daemon] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run the daemon until cancelled or signalled; returns after a clean drain."""
    notifier = Notifier()
    activated = listen_fds()
    if activated:
        listen_socks, owns_socket = activated, False
    else:
        listen_socks, owns_socket = [_bind(settings)], True
    socket_inode = os.stat(settings.socket).st_ino if owns_socket else None
    store = await trio.to_thread.run_sync(
        lambda: Store.open(
            settings.db,
            synchronous=settings.synchronous,
            busy_timeout_ms=settings.busy_timeout_ms,
        )
    )
    daemon = Daemon(settings, store)
    settings.spool.mkdir(parents=True, exist_ok=True)
    listeners = [trio.SocketListener(trio.socket.from_stdlib_socket(s)) for s in listen_socks]
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(daemon.writer.run)
            await daemon.writer.submit(
                Job(
                    audit=[
                        AuditEntry(
                            "daemon_started",
                            f"runtallyd {__version__} pid {os.getpid()}",
                            data={
                                "db": str(settings.db),
                                "socket": str(settings.socket),
                                "spool": str(settings.spool),
                                "socket_activated": not owns_socket,
                            },
                        )
                    ]
                )
            )
            replay_scope = trio.CancelScope()

            async def replay() -> None:
                with replay_scope:
                    await daemon.replayer.run()

            nursery.start_soon(replay)
            async with trio.open_nursery() as conn_nursery:
                accept_scope = trio.CancelScope()

                async def accept(*, task_status: trio.TaskStatus[None]) -> None:
                    with accept_scope:
                        await trio.serve_listeners(
                            daemon.handle,
                            listeners,
                            handler_nursery=conn_nursery,
                            task_status=task_status,
                        )

                await nursery.start(accept)
                interval = notifier.watchdog_interval()
                if interval:
                    nursery.start_soon(_watchdog, daemon, notifier, interval)
                notifier.ready(daemon.summary())
                task_status.started(daemon)
                nursery.start_soon(_signals, daemon)
                await daemon.stop_requested.wait()
                # Graceful: no new connections, no new reads; drain the rest.
                notifier.stopping()
                accept_scope.cancel()
                replay_scope.cancel()
                for conn in list(daemon.connections):
                    conn.stop_reading()
                with trio.move_on_after(_DRAIN_TIMEOUT_S) as drain:
                    while daemon.connections:
                        await trio.sleep(0.01)
                if drain.cancelled_caught:
                    conn_nursery.cancel_scope.cancel()
            daemon.writer.close()
            # The nursery now waits for the writer to commit what is queued;
            # the watchdog is cancelled once it has.
            await _wait_writer_then_cancel(daemon, nursery)
    finally:
        with contextlib.suppress(Exception):
            store.checkpoint()
        store.close()
        for s in listen_socks:
            s.close()
        if owns_socket:
            _unlink_if_ours(settings.socket, socket_inode)


async def _wait_writer_then_cancel(daemon: Daemon, nursery: trio.Nursery) -> None:
    while daemon.writer.queued_events:
        await trio.sleep(0.01)
    await trio.sleep(0)
    nursery.cancel_scope.cancel()


async def _signals(daemon: Daemon) -> None:
    """First SIGTERM/SIGINT: graceful stop.  A second one exits the process at once."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            if not daemon.stop_requested.is_set():
                daemon.request_stop()
                continue
            log(f"runtallyd: {signal.Signals(signum).name} again; exiting now")
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
    _yield_to_pipelines()
    trio.run(serve, settings)
