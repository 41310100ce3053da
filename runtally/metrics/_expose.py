"""A ``Snapshot`` as Prometheus metric families, the text exposition, the textfile.

``RuntallyCollector`` is a custom prometheus_client collector: each
``collect()`` gathers a fresh snapshot (read-only database, the daemon's status
reply, the spool directory) and yields the families below, so nothing is
cached between scrapes and nothing is registered in the global registry.

Names follow Prometheus conventions: a ``runtally_`` prefix, base units
(seconds, bytes), ``_total`` for counters, labels ``pipeline`` and ``club``.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from .._pipeline_config import PipelineConfig
from ..daemon._spooldir import kind_of
from ._gather import OUTCOMES, STATES, Snapshot, gather

__all__ = ["CONTENT_TYPE", "RuntallyCollector", "families", "render", "write_textfile"]

#: The text format 0.0.4, which every Prometheus reads (our names need no escaping).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_PC = ("pipeline", "club")


def _pipeline_families(snap: Snapshot) -> Iterator[Metric]:
    last_success = GaugeMetricFamily(
        "runtally_pipeline_last_success_timestamp_seconds",
        "When the pipeline's newest successful run finished (Unix time).",
        labels=_PC,
    )
    duration = GaugeMetricFamily(
        "runtally_pipeline_last_run_duration_seconds",
        "How long the pipeline's newest finished run took.",
        labels=_PC,
    )
    state = GaugeMetricFamily(
        "runtally_pipeline_state",
        "1 for the pipeline's current state, 0 for every other state.",
        labels=(*_PC, "state"),
    )
    runs = CounterMetricFamily(
        "runtally_runs",
        "Finished runs by outcome (runs removed by retention included).",
        labels=(*_PC, "outcome"),
    )
    errors = CounterMetricFamily(
        "runtally_errors",
        "Error rows recorded by the pipeline's runs (those removed by retention included).",
        labels=_PC,
    )
    for p in snap.pipelines:
        labels = [p.pipeline, p.club]
        if p.last_success_s is not None:
            last_success.add_metric(labels, p.last_success_s)
        if p.last_duration_s is not None:
            duration.add_metric(labels, p.last_duration_s)
        if p.state is not None:
            for name in STATES:
                state.add_metric([*labels, name], 1.0 if name == p.state else 0.0)
        for outcome in OUTCOMES:
            runs.add_metric([*labels, outcome], p.runs.get(outcome, 0))
        errors.add_metric(labels, p.errors)
    yield from (last_success, duration, state, runs, errors)


def _gauge(name: str, doc: str, value: float | None) -> Iterator[Metric]:
    if value is not None:
        g = GaugeMetricFamily(name, doc)
        g.add_metric([], value)
        yield g


def _daemon_families(snap: Snapshot) -> Iterator[Metric]:
    status = snap.daemon
    yield from _gauge(
        "runtally_daemon_up", "1 if the daemon answered its socket.", float(status is not None)
    )
    if status is None:
        return
    committed = CounterMetricFamily(
        "runtally_daemon_events_committed", "Events committed since the daemon started."
    )
    committed.add_metric([], status.events_committed)
    yield committed
    yield from _gauge(
        "runtally_daemon_start_time_seconds",
        "When the daemon started (Unix time).",
        round(snap.taken_at - status.uptime_s, 3),
    )
    yield from _gauge(
        "runtally_daemon_queue_depth", "Events received, not yet committed.", status.queue_depth
    )
    yield from _gauge("runtally_daemon_connections", "Open client connections.", status.connections)
    hist = status.commit_seconds
    if hist is not None and len(hist.counts) == len(hist.le) + 1:
        buckets, total = [], 0
        for le, n in zip([*map(str, hist.le), "+Inf"], hist.counts, strict=True):
            total += n
            buckets.append((le, total))
        h = HistogramMetricFamily(
            "runtally_daemon_commit_duration_seconds",
            "How long each of the writer's commits took, retries included.",
        )
        h.add_metric([], buckets, sum_value=hist.sum_s)
        yield h


def _storage_families(snap: Snapshot) -> Iterator[Metric]:
    yield from _gauge(
        "runtally_database_up", "1 if the database could be read.", float(snap.database_up)
    )
    yield from _gauge("runtally_database_size_bytes", "The database file.", snap.database_bytes)
    yield from _gauge(
        "runtally_database_wal_bytes", "The database's write-ahead log.", snap.wal_bytes or 0
    )
    yield from _gauge(
        "runtally_parked_events", "Events waiting for their run or step.", snap.parked_events
    )
    yield from _gauge(
        "runtally_dead_letters", "Refused frames kept in dead_letters.", snap.dead_letters
    )
    yield from _gauge(
        "runtally_spool_files", "Spool files holding events not yet replayed.", snap.spool_files
    )
    yield from _gauge(
        "runtally_spool_oldest_event_age_seconds",
        "Age of the oldest spooled event waiting for replay (0 when none).",
        snap.spool_oldest_age_s,
    )
    yield from _gauge(
        "runtally_spool_corrupt_files",
        "Spool files quarantined in corrupt/.",
        snap.spool_corrupt_files,
    )


def families(snap: Snapshot) -> list[Metric]:
    """Every metric family of ``snap``."""
    return [*_pipeline_families(snap), *_daemon_families(snap), *_storage_families(snap)]


class RuntallyCollector:
    """A prometheus_client collector: every ``collect()`` gathers a fresh snapshot."""

    def __init__(self, take: Callable[[], Snapshot]) -> None:
        self._take = take

    @classmethod
    def for_paths(
        cls,
        db: Path,
        socket: Path,
        spool: Path,
        *,
        timeout: float = 1.0,
        pipelines: Mapping[str, PipelineConfig] | None = None,
    ) -> RuntallyCollector:
        """Read ``db``, ask the daemon on ``socket``, look at ``spool``; ``pipelines``:
        the declared ones (``[pipelines]``), whose ``club`` labels them before a run."""

        def clubs() -> dict[str, str]:  # at each collection: ``pipelines`` may be live
            return {name: c.club for name, c in (pipelines or {}).items() if c.club}

        return cls(lambda: gather(db, socket, spool, timeout=timeout, clubs=clubs()))

    def collect(self) -> Iterator[Metric]:
        """The families of a snapshot taken now."""
        yield from families(self._take())


def render(collector: RuntallyCollector) -> bytes:
    """The text exposition (``CONTENT_TYPE``) of one collection."""
    registry = CollectorRegistry()
    registry.register(collector)
    return generate_latest(registry)


def write_textfile(path: Path, body: bytes) -> None:
    """Write ``body`` to ``path`` atomically: a hidden temp file beside it, then rename.

    node_exporter reads ``*.prom`` only, so the temp file (``.name.*.tmp``) is
    never read half-written.  Mode 0644: node_exporter runs as another user.
    Raises ``OSError`` (``ENOTSUP``, "not a regular file ...") when ``path``
    exists and is anything but a regular file: the rename would replace a
    symlink (``/dev/stdout``), a device or a FIFO with a plain file.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISREG(st.st_mode):
            why = f"it is a {kind_of(st)}, not a regular file; left as it is"
            raise OSError(errno.ENOTSUP, why)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(body)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
