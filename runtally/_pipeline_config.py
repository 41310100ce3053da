"""``[pipelines.<name>]`` tables of the config: what each pipeline is expected to do.

Validated by msgspec when the settings are resolved, so a bad cron expression,
an unknown timezone or a bad duration is one ``ConfigError`` naming the
pipeline (``$.people.schedule``) and the file.  Imports nothing but the
standard library and msgspec at import time (the client imports the config);
``cronsim`` and ``zoneinfo`` are imported only when a pipeline is declared.
"""

from __future__ import annotations

import re
from typing import Annotated

import msgspec

__all__ = ["PipelineConfig", "parse_duration"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")

#: Seconds, from a number or a string such as "90", "45m", "1h30m", "2d".
Duration = int | float | str


def parse_duration(value: int | float | str) -> float:
    """Seconds in ``value``: a number of seconds or units (``"1h30m"``, ``"45m"``, ``"2d"``).

    Raises ValueError for anything else, or a negative amount.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a duration, got {value!r}")  # noqa: TRY004 - msgspec wants it
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = value.strip().lower().replace(" ", "")
        if re.fullmatch(r"\d+(\.\d+)?", text):
            seconds = float(text)
        elif text and _PART.sub("", text) == "":
            seconds = sum(float(n) * _UNITS[u] for n, u in _PART.findall(text))
        else:
            raise ValueError(
                f"expected a duration such as 90, '45m', '1h30m' or '2d', got {value!r}"
            )
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative, got {value!r}")
    return seconds


class PipelineConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One ``[pipelines.<name>]`` table.

    ``schedule``: a cron expression (5 fields, or 6 with seconds; parsed by
    cronsim) or None for "runs whenever"; ``timezone``: the IANA zone the
    schedule is read in, None for the host's; ``grace``: how long after an
    expected start a run may still begin before the pipeline is ``late``
    (seconds or "1h"; default 1 h); ``max_runtime``: how long a run may last
    before it is ``stuck`` (None: no limit); ``club``: the club it runs for,
    for messages; ``alert_urls``: Apprise URLs replacing the global
    ``alert_urls`` for this pipeline (None: the global ones).
    """

    schedule: str | None = None
    timezone: str | None = None
    grace: Duration = 3600
    max_runtime: Duration | None = None
    club: Annotated[str, msgspec.Meta(min_length=1)] | None = None
    alert_urls: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        # ValueError here is a msgspec ValidationError naming the pipeline's path.
        msgspec.structs.force_setattr(self, "grace", parse_duration(self.grace))
        if self.max_runtime is not None:
            msgspec.structs.force_setattr(self, "max_runtime", parse_duration(self.max_runtime))
        if self.timezone is not None:
            from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

            try:
                ZoneInfo(self.timezone)
            except (ZoneInfoNotFoundError, ValueError) as exc:
                raise ValueError(f"unknown timezone {self.timezone!r}") from exc
        if self.schedule is not None:
            from datetime import UTC, datetime

            from cronsim import CronSim, CronSimError

            try:
                CronSim(self.schedule, datetime.now(UTC))
            except CronSimError as exc:
                raise ValueError(f"bad cron expression {self.schedule!r}: {exc}") from exc

    @property
    def grace_s(self) -> float:
        """``grace`` in seconds."""
        return float(self.grace)

    @property
    def max_runtime_s(self) -> float | None:
        """``max_runtime`` in seconds, or None."""
        return None if self.max_runtime is None else float(self.max_runtime)
