"""Who may open one more connection: the global and per-uid limits, and the descriptors behind them.

``max_connections`` only means something if the process may open that many
descriptors: systemd's default soft ``LimitNOFILE`` is 1024, the default
``max_connections`` too, so the "too many connections" refusal never fired
and accept(2) failed with EMFILE instead.  At start-up the soft
RLIMIT_NOFILE is raised (up to the hard limit) to ``max_connections`` plus a
reserve for the database, the listeners and the spool; if the hard limit is
lower, ``max_connections`` is lowered to fit, with one warning.

``max_connections_per_uid`` keeps one local user from taking every slot.
Refusals are logged and audited at most once a minute per limit and uid,
with their true count and the seconds it covers (``due`` reports the rest of
a burst that stopped), so a client retrying in a loop cannot flood the audit
log and the rows still add up to every refusal.
"""

from __future__ import annotations

import resource
from collections import Counter

from ..config import Settings
from ._log import logger
from ._store import AuditEntry, Origin
from ._throttle import Report, Throttle

__all__ = ["Admission", "Refused", "fit_nofile"]

#: Descriptors kept for everything but connections: stdio, the listeners, the
#: database and its -wal/-shm, read-only connections, the spool being
#: replayed, trio's epoll and wake-up pipe, the watchdog's socket.
FD_RESERVE = 64


def fit_nofile(max_connections: int) -> int:
    """Raise the soft RLIMIT_NOFILE for ``max_connections``; the connections that fit.

    Returns ``max_connections`` when the soft limit is (or could be raised
    to) ``max_connections + FD_RESERVE``, else what the hard limit leaves
    room for (at least 1), after one warning.
    """
    need = max_connections + FD_RESERVE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return max_connections
    target = need if hard == resource.RLIM_INFINITY else min(need, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            logger.warning("cannot raise RLIMIT_NOFILE from %d to %d: %s", soft, target, exc)
    if soft >= need:
        return max_connections
    fits = max(1, soft - FD_RESERVE)
    logger.warning(
        "RLIMIT_NOFILE is %d (hard %s), too low for max_connections %d plus %d in reserve: "
        "serving at most %d connections (raise LimitNOFILE= or lower max_connections)",
        soft,
        "unlimited" if hard == resource.RLIM_INFINITY else hard,
        max_connections,
        FD_RESERVE,
        fits,
    )
    return fits


class Refused:
    """Why a connection is refused (its one ``error`` reply), and the audit row if one is due."""

    __slots__ = ("audit", "reason")

    def __init__(self, reason: str, audit: AuditEntry | None) -> None:
        self.reason = reason
        self.audit = audit


class Admission:
    """Counts open connections per uid and says whether one more may be served.

    ``max_connections`` is the effective limit (see ``fit_nofile``).  Call
    ``refuse`` before serving a connection, then ``opened``/``closed`` around it.
    """

    def __init__(self, settings: Settings, *, max_connections: int | None = None) -> None:
        self.max_connections = (
            fit_nofile(settings.max_connections) if max_connections is None else max_connections
        )
        self.max_per_uid = settings.max_connections_per_uid
        self.open = 0
        self.per_uid: Counter[int | None] = Counter()
        self._throttle = Throttle()
        #: The last refusal per throttle key (its reason, peer, limit), for ``due``.
        self._last: dict[tuple[str, int | None], tuple[str, Origin, int]] = {}

    @property
    def report_interval_s(self) -> float:
        """Seconds between two reports of one limit's refusals (60; tests shorten it)."""
        return self._throttle.interval_s

    @report_interval_s.setter
    def report_interval_s(self, value: float) -> None:
        self._throttle.interval_s = value

    def refuse(self, origin: Origin) -> Refused | None:
        """None when ``origin`` may have one more connection, else the Refused."""
        if self.open >= self.max_connections:
            reason = f"too many connections (limit {self.max_connections}); retry later"
            return self._refusal(reason, origin, "max_connections", self.max_connections)
        if self.per_uid[origin.uid] >= self.max_per_uid:
            reason = (
                f"too many connections from uid {origin.uid} "
                f"(limit {self.max_per_uid} per uid); retry later"
            )
            return self._refusal(reason, origin, "max_connections_per_uid", self.max_per_uid)
        return None

    def opened(self, origin: Origin) -> None:
        self.open += 1
        self.per_uid[origin.uid] += 1

    def closed(self, origin: Origin) -> None:
        self.open -= 1
        self.per_uid[origin.uid] -= 1
        if self.per_uid[origin.uid] <= 0:
            del self.per_uid[origin.uid]

    def _refusal(self, reason: str, origin: Origin, limit: str, value: int) -> Refused:
        key = (limit, origin.uid if limit == "max_connections_per_uid" else None)
        self._last[key] = (reason, origin, value)
        report = self._throttle.hit(key)
        if report is None:
            return Refused(reason, None)
        return Refused(reason, self._audit(key, report))

    def due(self) -> list[AuditEntry]:
        """Audit rows for refusals counted but not reported yet (a burst that stopped).

        The daemon calls this about once a minute, so the count in the audit
        log adds up to every refusal, not only those followed by another one.
        """
        return [self._audit(key, report) for key, report in self._throttle.due()]

    def _audit(self, key: tuple[str, int | None], report: Report) -> AuditEntry:
        reason, origin, value = self._last[key]
        said = report.describe("refused")
        logger.warning("connections refused: %s: %s", said, reason)
        return AuditEntry(
            "connection_refused",
            f"{reason} ({said})",
            level="warning",
            scope="socket",
            data={
                "limit": key[0],
                "value": value,
                "refused": report.count,
                "over_s": round(report.span_s, 3),
                "uid": origin.uid,
                "gid": origin.gid,
                "pid": origin.pid,
            },
        )
