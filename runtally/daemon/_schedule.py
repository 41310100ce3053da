"""When a declared pipeline is expected to start: cron slots in its own timezone.

cronsim walks the expression in the pipeline's IANA zone, so DST is handled
the way Debian cron does: a slot in the spring-forward gap runs once at the
first valid minute after it, a slot in the fall-back hour runs once (the
first occurrence).  Everything here is pure: instants in, instants out, epoch
milliseconds.
"""

from __future__ import annotations

import functools
import os
from datetime import datetime, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim

from .._pipeline_config import PipelineConfig

__all__ = ["host_zone", "next_expected", "next_slot", "zone_of"]


@functools.cache
def host_zone() -> tzinfo:
    """The host's zone with its DST rules: $TZ, else /etc/localtime, else UTC."""
    name = os.environ.get("TZ", "").lstrip(":")
    if name:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    try:
        with open("/etc/localtime", "rb") as fh:
            return ZoneInfo.from_file(fh, key="localtime")
    except (OSError, ValueError):
        return ZoneInfo("UTC")


def zone_of(config: PipelineConfig) -> tzinfo:
    """The zone ``config.schedule`` is read in."""
    return ZoneInfo(config.timezone) if config.timezone else host_zone()


def next_slot(config: PipelineConfig, after_ms: int) -> int | None:
    """The first slot of ``config.schedule`` strictly after ``after_ms``; None without one
    (no schedule, or none before the end of year 9999)."""
    if config.schedule is None:
        return None
    try:
        start = datetime.fromtimestamp(after_ms / 1000, zone_of(config))
        slot = next(CronSim(config.schedule, start))
        return int(slot.timestamp() * 1000)
    except (OverflowError, ValueError, StopIteration):
        # Past what a calendar holds (a run at 9999-12-31, valid on the wire:
        # docs/protocol.md): no next slot, rather than a monitor that dies.
        return None


def next_expected(config: PipelineConfig | None, stored_ms: int | None, now_ms: int) -> int | None:
    """When a pipeline's next run is expected, as shown to people at ``now_ms`` (epoch ms).

    The monitor's ``next_expected_at`` (``stored_ms``) while it is still ahead.
    The monitor rewrites it once a tick (``monitor_interval_s``), so between a
    slot and the next tick it is in the past: then the schedule's first slot
    after ``now_ms``, as the next tick will store.  ``runtally pipelines``,
    ``runtally status`` and the dashboard all show this one figure.  None
    without a stored value or a schedule.
    """
    if stored_ms is not None and stored_ms > now_ms:
        return stored_ms
    if config is not None and config.schedule is not None:
        return next_slot(config, now_ms)
    return stored_ms
