"""systemd glue: readiness/watchdog notifications and socket activation.

Standard library only, and no trio: the protocol is one datagram per
notification and a few environment variables, so a dependency on libsystemd
(or a wrapper) would buy nothing.  Every function takes ``env`` so tests can
inject the environment systemd would have set.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping, MutableMapping

from ._log import logger

__all__ = ["LISTEN_FDS_START", "Notifier", "listen_fds", "watchdog_interval"]

LISTEN_FDS_START = 3  # SD_LISTEN_FDS_START in sd_listen_fds(3)


def _address(value: str | None) -> str | None:
    """NOTIFY_SOCKET as a socket address; '@' marks the abstract namespace."""
    if not value or len(value) < 2:
        return None
    if value[0] == "@":
        return "\0" + value[1:]
    return value if value[0] == "/" else None


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None if off.

    Per sd_watchdog_enabled(3) the watchdog is ours only when WATCHDOG_PID is
    unset or names this process; a child must not ping for its parent.
    """
    env = os.environ if env is None else env
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 2_000_000 if usec > 0 else None


class Notifier:
    """sd_notify(3) client that never raises: a notification must not kill the daemon."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self._env = os.environ if env is None else env
        raw = self._env.get("NOTIFY_SOCKET")
        self.address = _address(raw)
        self._warned = False
        if raw and self.address is None:
            self._warn(f"unsupported NOTIFY_SOCKET {raw!r}")

    @property
    def enabled(self) -> bool:
        """True when a service manager is listening (NOTIFY_SOCKET usable)."""
        return self.address is not None

    def _warn(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            logger.warning("sd_notify: %s (further errors ignored)", message)

    def notify_raw(self, state: str) -> None:
        """Send ``state`` (newline-separated VAR=value lines) as one datagram."""
        if self.address is None:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(state.encode("utf-8", "replace"), self.address)
        except OSError as exc:
            self._warn(f"cannot notify {self._env.get('NOTIFY_SOCKET')!r}: {exc}")

    def notify(self, **fields: object) -> None:
        """notify(READY=1, STATUS="...") -> "READY=1\\nSTATUS=..." (names upper-cased)."""
        lines = []
        for name, value in fields.items():
            text = ("1" if value else "0") if isinstance(value, bool) else str(value)
            lines.append(f"{name.upper()}={text.replace(chr(10), ' ')}")
        if lines:
            self.notify_raw("\n".join(lines))

    def ready(self, status: str | None = None) -> None:
        """Start-up finished: Type=notify units count as started only now."""
        if status is None:
            self.notify(READY=1)
        else:
            self.notify(READY=1, STATUS=status)

    def status(self, text: str) -> None:
        """Free-form status line shown by `systemctl status`."""
        self.notify(STATUS=text)

    def stopping(self) -> None:
        """Shutdown began, so systemd does not treat the exit as a crash in progress."""
        self.notify(STOPPING=1)

    def watchdog(self) -> None:
        """Keep-alive; send it from the writer's progress, not from a timer alone."""
        self.notify(WATCHDOG=1)

    def watchdog_interval(self) -> float | None:
        """See the module-level :func:`watchdog_interval`."""
        return watchdog_interval(self._env)


def listen_fds(env: Mapping[str, str] | None = None) -> list[socket.socket]:
    """Listening sockets passed by socket activation (sd_listen_fds(3)); [] if none.

    LISTEN_* are removed from ``env`` (when mutable: os.environ by default)
    whatever the outcome, so child processes do not mistake them for theirs.
    Raises ValueError if a passed fd is not a listening AF_UNIX stream socket:
    serving the wrong kind of socket would fail later and more obscurely.
    """
    env = os.environ if env is None else env
    pid, count = env.get("LISTEN_PID"), env.get("LISTEN_FDS")
    if isinstance(env, MutableMapping):
        for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            env.pop(name, None)
    if not pid or not count or pid != str(os.getpid()):
        return []
    try:
        n = int(count)
    except ValueError:
        raise ValueError(f"LISTEN_FDS={count!r} is not a number") from None
    socks: list[socket.socket] = []
    try:
        for fd in range(LISTEN_FDS_START, LISTEN_FDS_START + max(n, 0)):
            socks.append(_adopt(fd))
    except ValueError:
        for sock in socks:
            sock.close()
        raise
    return socks


def _adopt(fd: int) -> socket.socket:
    """Wrap an inherited fd, set FD_CLOEXEC, check it is what the .socket unit promises."""
    try:
        os.set_inheritable(fd, False)
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise ValueError(f"socket activation: fd {fd} is not a socket: {exc}") from exc
    listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    if sock.family == socket.AF_UNIX and sock.type == socket.SOCK_STREAM and listening:
        return sock
    family, kind = (getattr(v, "name", str(v)) for v in (sock.family, sock.type))
    sock.close()
    raise ValueError(
        f"socket activation: fd {fd} is {family}/{kind}{'' if listening else ' (not listening)'};"
        " expected a listening AF_UNIX stream socket (ListenStream=/path in the .socket unit)"
    )
