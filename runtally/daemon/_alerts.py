"""Sending alerts: Apprise URLs and a local command, off the daemon's paths.

The monitor ``enqueue``s an AlertEvent and goes on: a worker thread sends it
through each channel with a timeout (Apprise's connect/read timeouts, the
command's ``timeout``).  A channel that fails is retried a few times with
backoff from a bounded retry queue, then the alert is given up for that
channel; either way it is logged and ``failures`` says so (``runtally
status`` shows it).  A full queue drops the new alert with a log line: alerts
never block the writer or the monitor.
"""

from __future__ import annotations

import collections
import queue
import shlex
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import msgspec

from ..config import Settings
from ._alert_message import AlertEvent, render
from ._log import logger

__all__ = ["AlertError", "Channel", "Dispatcher", "channels_for", "send_test"]

_QUEUE_MAX = 256
_RETRY_MAX = 256
_ATTEMPTS = 3
_RETRY_FIRST_S = 2.0


class AlertError(Exception):
    """A channel could not deliver an alert; the message says why."""


class Channel:
    """Where alerts go; ``name`` is shown in logs and status (no secrets)."""

    name: str

    def send(self, event: AlertEvent, timeout_s: float) -> None:
        """Deliver ``event`` within about ``timeout_s``; AlertError when it cannot."""
        raise NotImplementedError


def _redact(url: str) -> str:
    """``scheme://host...`` without credentials or tokens: a URL often holds a secret."""
    scheme, _, rest = url.partition("://")
    host = rest.split("/", 1)[0].rsplit("@", 1)[-1]
    return f"{scheme}://{host}/..." if rest else url


class AppriseChannel(Channel):
    """One Apprise URL (``json://``, ``ntfy://``, ``mailto://``, ...)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.name = _redact(url)

    def send(self, event: AlertEvent, timeout_s: float) -> None:
        try:
            import apprise  # only in the daemon's sender thread and `alert test`
        except ImportError:
            raise AlertError(
                f"{self.name}: Apprise is not installed; install runtally with the alerts"
                " extra (pip install 'runtally[alerts]')"
            ) from None

        url = self.url
        if "rto=" not in url and "cto=" not in url:
            url += ("&" if "?" in url else "?") + f"rto={timeout_s:g}&cto={timeout_s:g}"
        notifier = apprise.Apprise()
        if not notifier.add(url):
            raise AlertError(f"{self.name}: not a URL Apprise can use")
        title, body = render(event)
        kind = (
            apprise.NotifyType.SUCCESS if event.kind == "recovered" else apprise.NotifyType.FAILURE
        )
        if event.kind == "test":
            kind = apprise.NotifyType.INFO
        if not notifier.notify(title=title, body=body, notify_type=kind):
            raise AlertError(f"{self.name}: delivery failed (see the daemon's log)")


class CommandChannel(Channel):
    """A local command that reads the AlertEvent as JSON on stdin (exit 0: delivered)."""

    def __init__(self, argv: Sequence[str]) -> None:
        self.argv = list(argv)
        self.name = f"command {self.argv[0]}"

    def send(self, event: AlertEvent, timeout_s: float) -> None:
        try:
            done = subprocess.run(
                self.argv,
                input=msgspec.json.encode(event),
                capture_output=True,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise AlertError(f"{self.name}: no exit within {timeout_s:g} s") from exc
        except OSError as exc:
            raise AlertError(f"{self.name}: {exc.strerror or exc}") from exc
        if done.returncode != 0:
            tail = done.stderr.decode(errors="replace").strip()[-200:]
            raise AlertError(f"{self.name}: exit status {done.returncode}: {tail}")


def channels_for(settings: Settings, pipeline: str | None) -> list[Channel]:
    """The channels an alert about ``pipeline`` goes to (its ``alert_urls`` override)."""
    config = settings.pipelines.get(pipeline) if pipeline else None
    urls = config.alert_urls if config and config.alert_urls is not None else settings.alert_urls
    out: list[Channel] = [AppriseChannel(u) for u in urls]
    command = settings.alert_command
    if command:
        argv = shlex.split(command) if isinstance(command, str) else list(command)
        out.append(CommandChannel(argv))
    return out


def send_test(settings: Settings, event: AlertEvent) -> list[tuple[str, str | None]]:
    """Send ``event`` through every channel of its pipeline now: ``(channel, error or None)``."""
    results: list[tuple[str, str | None]] = []
    for channel in channels_for(settings, event.pipeline):
        try:
            channel.send(event, settings.alert_timeout_s)
            results.append((channel.name, None))
        except AlertError as exc:
            results.append((channel.name, str(exc)))
    return results


@dataclass(slots=True)
class _Retry:
    event: AlertEvent
    channel: Channel
    attempts: int
    due: float  # time.monotonic()


class Dispatcher:
    """The sender thread and its two bounded queues (new alerts, retries)."""

    def __init__(self, settings: Settings, *, retry_first_s: float = _RETRY_FIRST_S) -> None:
        self.settings = settings
        self._queue: queue.Queue[AlertEvent | None] = queue.Queue(_QUEUE_MAX)
        self._retries: collections.deque[_Retry] = collections.deque(maxlen=_RETRY_MAX)
        self._retry_first_s = retry_first_s
        self._thread: threading.Thread | None = None
        #: channel name -> its last failure, cleared by its next success (for status).
        self.failures: dict[str, str] = {}
        self.sent = 0  # deliveries that succeeded
        self.dropped = 0  # alerts given up: queue full, or retries spent

    def start(self) -> None:
        """Start the sender thread (a daemon thread: it never holds up the exit)."""
        self._thread = threading.Thread(target=self._run, name="runtally-alerts", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        """Ask the thread to finish what is queued and exit; wait up to ``timeout_s``."""
        if self._thread is None:
            return
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass  # it is a daemon thread: the exit does not wait for it
        self._thread.join(timeout_s)

    def enqueue(self, event: AlertEvent) -> bool:
        """Queue ``event`` for sending; False (logged, counted) when the queue is full."""
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self.dropped += 1
            logger.error("alert queue full; dropped the alert about %s", event.pipeline)
            return False
        return True

    def _run(self) -> None:
        while True:
            wait = None
            if self._retries:
                wait = max(0.0, min(r.due for r in self._retries) - time.monotonic())
            try:
                event = self._queue.get(timeout=wait)
            except queue.Empty:
                event = None
                self._retry_due()
                continue
            if event is None:
                return
            for channel in channels_for(self.settings, event.pipeline):
                self._attempt(event, channel, 1)
            self._retry_due()

    def _retry_due(self) -> None:
        now = time.monotonic()
        due = [r for r in self._retries if r.due <= now]
        for r in due:
            self._retries.remove(r)
            self._attempt(r.event, r.channel, r.attempts + 1)

    def _attempt(self, event: AlertEvent, channel: Channel, attempt: int) -> None:
        try:
            channel.send(event, self.settings.alert_timeout_s)
        except AlertError as exc:
            self.failures[channel.name] = str(exc)
            if attempt >= _ATTEMPTS:
                self.dropped += 1
                logger.error("alert about %s not delivered, giving up: %s", event.pipeline, exc)
                return
            logger.warning(
                "alert about %s not delivered (attempt %d): %s", event.pipeline, attempt, exc
            )
            if len(self._retries) == self._retries.maxlen:
                self.dropped += 1  # the oldest retry falls out of the bounded deque
            delay = self._retry_first_s * 2 ** (attempt - 1)
            self._retries.append(_Retry(event, channel, attempt, time.monotonic() + delay))
            return
        except Exception as exc:  # noqa: BLE001 - a channel's bug must not kill the sender
            self.failures[channel.name] = f"{type(exc).__name__}: {exc}"
            self.dropped += 1
            logger.error("alert channel %s failed: %r", channel.name, exc)
            return
        self.failures.pop(channel.name, None)
        self.sent += 1
