"""A fixed-bucket latency histogram, cheap enough for every commit.

The writer observes each commit's duration; the daemon's status reply carries
the bucket counts (``CommitHistogram``) so that ``runtally metrics`` and
``/metrics`` can expose them as a Prometheus histogram without the daemon
importing prometheus_client.
"""

from __future__ import annotations

import bisect

from ..protocol import CommitHistogram

__all__ = ["BUCKETS_S", "LatencyHistogram"]

#: Upper bounds in seconds (Prometheus ``le``), +Inf implied after the last.
#: Dense around 1-50 ms, where commits live and where the retention promise is.
BUCKETS_S: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class LatencyHistogram:
    """Counts of observations per bucket (not cumulative), their sum and the largest."""

    __slots__ = ("counts", "max_s", "sum_s")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS_S) + 1)  # the last one is +Inf
        self.sum_s = 0.0
        self.max_s = 0.0

    def observe(self, seconds: float) -> None:
        """Count one duration (seconds)."""
        self.counts[bisect.bisect_left(BUCKETS_S, seconds)] += 1
        self.sum_s += seconds
        self.max_s = max(self.max_s, seconds)

    def snapshot(self) -> CommitHistogram:
        """The counts as the status reply carries them."""
        return CommitHistogram(
            le=list(BUCKETS_S), counts=list(self.counts), sum_s=self.sum_s, max_s=self.max_s
        )
