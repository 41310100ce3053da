"""How the read commands show things to people: times, durations, outcomes, tables.

Timestamps are stored as UTC ISO 8601 (``2026-02-08T14:53:00.123Z``); people
read them in local time with a relative age beside them.  Colour and table
drawing come from rich; on a pipe the console is plain (no escape codes) and
wide, so lines are not wrapped for ``grep``.
"""

from __future__ import annotations

import json
import re
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import click
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..daemon._timefmt import iso_from_datetime
from ..daemon._timefmt import parse_iso as _parse_iso
from ._text import visible

__all__ = [
    "OUTCOME_STYLES",
    "DurationType",
    "SinceType",
    "clock_ahead_s",
    "console",
    "fmt_ago",
    "fmt_bytes",
    "fmt_duration",
    "fmt_local",
    "fmt_when",
    "iso_from_datetime",
    "loads_or_text",
    "outcome_text",
    "parse_duration",
    "parse_iso",
    "parse_since",
    "plural",
    "table",
]

OUTCOME_STYLES = {
    "success": "green",
    "failure": "bold red",
    "running": "yellow",
    "skipped": "dim",
}

#: Width of the console when output goes to a pipe or file: wide enough that
#: table rows stay on one line for grep.
PIPE_WIDTH = 250


def console(*, err: bool = False) -> Console:
    """A rich Console on click's current stdout (or stderr).

    Colour and terminal features only when that stream is a terminal, so
    ``runtally runs | grep failure`` sees plain text.
    """
    # Looked up at call time: CliRunner and some wrappers replace sys.stdout.
    target = sys.stderr if err else sys.stdout
    try:
        tty = target.isatty()
    except (AttributeError, ValueError):
        tty = False
    if tty:
        return Console(file=target, force_terminal=True, highlight=False, markup=False)
    return Console(
        file=target,
        force_terminal=False,
        no_color=True,
        highlight=False,
        markup=False,
        width=PIPE_WIDTH,
        soft_wrap=False,
    )


class _Table(Table):
    """A Table whose plain-text cells are shown with ``visible`` (stored text, escaped)."""

    def add_row(self, *renderables: Any, **kwargs: Any) -> None:
        cells = (visible(r) if isinstance(r, str) else r for r in renderables)
        super().add_row(*cells, **kwargs)


def table(*columns: str, title: str | None = None, right: tuple[str, ...] = ()) -> Table:
    """A plain table with a header line; ``right`` names the numeric columns."""
    t = _Table(
        box=box.SIMPLE_HEAD, title=title, title_justify="left", pad_edge=False, show_edge=False
    )
    for name in columns:
        t.add_column(name, justify="right" if name in right else "left", overflow="fold")
    return t


def outcome_text(outcome: str | None) -> Text:
    """An outcome (``success``, ``failure``, ...) coloured; ``-`` when there is none."""
    label = outcome or "-"
    return Text(label, style=OUTCOME_STYLES.get(label, ""))


# -- time ----------------------------------------------------------------------------


def parse_iso(text: str | None) -> datetime | None:
    """A stored timestamp as an aware datetime; None for NULL or an unreadable value."""
    if not text:
        return None
    try:
        return _parse_iso(text)
    except ValueError:
        return None


def fmt_local(text: str | None) -> str:
    """``2026-02-08T14:53:00.123Z`` -> ``2026-02-08 15:53:00`` in local time."""
    moment = parse_iso(text)
    if moment is None:
        return text or "-"
    try:
        return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    except (OverflowError, ValueError):  # 9999-12-31T23:00Z is year 10000 east of UTC
        return text or "-"


def fmt_ago(text: str | None, now: float | None = None) -> str:
    """How long ago: ``just now``, ``45s ago``, ``3h ago``, ``2d ago`` (``in 5m`` if ahead)."""
    moment = parse_iso(text)
    if moment is None:
        return ""
    seconds = (time.time() if now is None else now) - moment.timestamp()
    ahead = seconds < 0
    seconds = abs(seconds)
    if seconds < 5:
        return "just now"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            amount = f"{int(seconds // size)}{unit}"
            return f"in {amount}" if ahead else f"{amount} ago"
    return "just now"  # pragma: no cover - unreachable


#: A started_at further than this in the future is flagged: the client's clock was ahead.
CLOCK_TOLERANCE_S = 60.0


def clock_ahead_s(text: str | None, now: float | None = None) -> float | None:
    """Seconds a stored time is in the future beyond CLOCK_TOLERANCE_S; None if it is not."""
    moment = parse_iso(text)
    if moment is None:
        return None
    ahead = moment.timestamp() - (time.time() if now is None else now)
    return round(ahead, 3) if ahead > CLOCK_TOLERANCE_S else None


def plural(n: int, noun: str, nouns: str | None = None) -> str:
    """``1 run``, ``2 runs``, ``1,200 errors`` (``nouns``: an irregular plural)."""
    return f"{n:,} {noun if n == 1 else (nouns or noun + 's')}"


def fmt_when(text: str | None) -> str:
    """Local time with its age: ``2026-02-08 15:53:00 (3h ago)``."""
    if not text:
        return "-"
    ago = fmt_ago(text)
    return f"{fmt_local(text)} ({ago})" if ago else fmt_local(text)


def fmt_duration(ms: int | None) -> str:
    """``850ms``, ``12s``, ``1m 05s``, ``2h 03m``, ``1d 02h``; ``-`` when unknown."""
    if ms is None:
        return "-"
    if ms < 1000:
        return f"{ms}ms"
    seconds = ms // 1000
    if seconds < 60:
        return f"{ms / 1000:.1f}s" if seconds < 10 else f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h {minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours:02d}h"


def fmt_bytes(n: int | None) -> str:
    """``512 B``, ``1.5 KiB``, ``3.2 MiB``; ``-`` when unknown."""
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover - unreachable


# -- --since -------------------------------------------------------------------------

_RELATIVE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(value: str, now: datetime | None = None) -> str:
    """``24h``, ``7d``, ``30m``, ``2w``, or an ISO date/time -> the stored UTC format.

    An ISO value without a zone is local time (``2026-02-08`` is local
    midnight); ``...Z`` or ``+01:00`` are taken as given.  Raises ValueError
    with a sentence saying what is accepted.
    """
    now = now or datetime.now(UTC)
    match = _RELATIVE.match(value)
    if match:
        amount, unit = int(match.group(1)), match.group(2).lower()
        try:
            return iso_from_datetime(now - timedelta(seconds=amount * _UNIT_SECONDS[unit]))
        except OverflowError as exc:
            raise ValueError(f"{value!r} reaches back before year 1") from exc
    try:
        moment = datetime.fromisoformat(value.strip())  # Python 3.11+ reads a trailing Z
    except ValueError:
        raise ValueError(
            f"{value!r} is neither a duration (30m, 24h, 7d, 2w) nor an ISO date/time "
            "(2026-02-08, 2026-02-08T06:00, 2026-02-08T05:00:00Z)"
        ) from None
    try:
        if moment.tzinfo is None:
            moment = moment.astimezone()  # naive = local time
        return iso_from_datetime(moment)
    except (OverflowError, ValueError) as exc:  # 0001-01-01 east of UTC is year 0 in UTC
        raise ValueError(f"{value!r} is at the edge of the calendar (years 1-9999 in UTC)") from exc


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)", re.IGNORECASE)


def parse_duration(value: str) -> float:
    """``90s``, ``30m``, ``2h``, ``1h30m``, ``1.5h``, ``45`` (seconds) -> seconds.

    Raises ValueError with a sentence saying what is accepted.
    """
    text = value.strip().replace(" ", "")
    pos, total = 0, 0.0
    while pos < len(text):
        match = _DURATION_PART.match(text, pos)
        if match is None or match.end() == pos:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[(match.group(2) or "s").lower()]
        pos = match.end()
    if not text or pos != len(text) or total <= 0:
        raise ValueError(f"{value!r} is not a duration such as 90s, 30m, 2h or 1h30m")
    return total


class DurationType(click.ParamType):
    """A duration option (``--timeout 2h``) as seconds; a bad value is a usage error."""

    name = "duration"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, int | float):
            return float(value)
        try:
            return parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class SinceType(click.ParamType):
    """``--since``: a bad value is one line (``Error: ...``) and exit status 2."""

    name = "since"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        if not isinstance(value, str):
            value = str(value)
        try:
            return parse_since(value)
        except ValueError as exc:
            error = click.ClickException(f"invalid --since: {exc}")
            error.exit_code = 2
            raise error from None


def loads_or_text(text: str | None) -> Any:
    """A ``*_json`` column's value decoded; the raw text if it is not JSON."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except (ValueError, TypeError):
        return text
