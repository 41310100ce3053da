"""Geometry of the server-rendered SVG charts (the templates draw it, escaped).

Charts are SVG made on the server so they work with JavaScript off; each mark
carries a ``title`` that browsers show on hover.  Coordinates are in a
``width`` x ``height`` viewBox; numbers are rounded to 0.1 to keep pages small.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from markupsafe import Markup, escape

from ..cli._render import fmt_duration, fmt_local, parse_iso, plural
from ._templates import visible

__all__ = [
    "Bar",
    "Chart",
    "Label",
    "Rule",
    "durations",
    "rate_per_day",
    "sparkline",
    "stacked_counts",
    "strip",
    "timeline",
]


@dataclass(frozen=True, slots=True)
class Bar:
    """One rectangle: position, size, CSS class (``o-success``...), hover text, link."""

    x: float
    y: float
    w: float
    h: float
    cls: str
    title: str
    href: str | None = None
    label: str | None = None


@dataclass(frozen=True, slots=True)
class Label:
    """An axis label: text at (x, y), anchored ``start``, ``middle`` or ``end``."""

    x: float
    y: float
    text: str
    anchor: str = "start"


@dataclass(frozen=True, slots=True)
class Rule:
    """A horizontal grid line at ``y`` from ``x1`` to ``x2``."""

    x1: float
    x2: float
    y: float


@dataclass(frozen=True, slots=True)
class Chart:
    """Marks in a ``width`` x ``height`` viewBox; ``caption``: what it shows, or why empty."""

    width: int
    height: int
    bars: list[Bar]
    points: str = ""
    caption: str = ""
    labels: list[Label] = field(default_factory=list)
    rules: list[Rule] = field(default_factory=list)


#: Chart titles name runs by local time; the same runs are drawn on every refresh.
_local = functools.lru_cache(maxsize=8192)(fmt_local)


def _r(v: float) -> float:
    return round(v, 1)


def _outcome_cls(outcome: str | None) -> str:
    return f"o-{outcome or 'unknown'}"


def _run_title(run: dict[str, Any]) -> str:
    return (
        f"#{run['id']} {run['outcome'] or '?'}, {_local(run['started_at'])}, "
        f"{fmt_duration(run['duration_ms'])}"
    )


def strip(recent: Sequence[dict[str, Any]], *, slots: int = 30) -> Chart:
    """Outcome of each of the last ``slots`` runs, oldest left, one cell each."""
    width, height, gap = slots * 8, 16, 1
    bars = [
        Bar(
            i * 8, 0, 8 - gap, height, _outcome_cls(r["outcome"]), _run_title(r), f"/runs/{r['id']}"
        )
        for i, r in enumerate(recent[-slots:])
    ]
    return Chart(width, height, bars)


def sparkline(recent: Sequence[dict[str, Any]], *, width: int = 160, height: int = 24) -> Chart:
    """Durations of the runs as a line (finished runs only), oldest left."""
    values = [r["duration_ms"] for r in recent if r["duration_ms"] is not None]
    if not values:
        return Chart(width, height, [], caption="no finished runs")
    top = max(values) or 1
    step = width / max(len(values) - 1, 1)
    points = " ".join(
        f"{_r(i * step)},{_r(height - 2 - (v / top) * (height - 4))}" for i, v in enumerate(values)
    )
    return Chart(width, height, [], points=points, caption=f"max {fmt_duration(top)}")


def _ms(a: datetime | None, b: datetime | None) -> float | None:
    if a is None or b is None:
        return None
    return (b - a).total_seconds() * 1000


def timeline(run: dict[str, Any], steps: Sequence[dict[str, Any]], *, now: datetime) -> Chart:
    """Each step as a bar on the run's time axis; a running step reaches ``now``."""
    width, row, label_w = 720, 22, 0
    start = parse_iso(run["started_at"])
    if start is None or not steps:
        return Chart(width, 0, [])
    ends = []
    for s in steps:
        s_start = parse_iso(s["started_at"]) or start
        s_end = parse_iso(s["finished_at"]) or now
        ends.append(max(s_end, s_start))
    run_end = parse_iso(run["finished_at"]) or now
    span = max((_ms(start, max([run_end, *ends])) or 1.0), 1.0)
    bars = []
    for i, (s, end) in enumerate(zip(steps, ends, strict=True)):
        s_start = parse_iso(s["started_at"]) or start
        x = label_w + (_ms(start, s_start) or 0.0) / span * (width - label_w)
        w = max((_ms(s_start, end) or 0.0) / span * (width - label_w), 2.0)
        outcome = s["outcome"] or ("running" if s["finished_at"] is None else None)
        title = (
            f"{s['step_name']}: {outcome or '?'}, {fmt_duration(s['duration_ms'])}, "
            f"created {s['created_count']}, updated {s['updated_count']}, "
            f"skipped {s['skipped_count']}, failed {s['failed_count']}, "
            f"errors {s['error_count']}"
        )
        bars.append(
            Bar(
                _r(x),
                i * row + 2,
                _r(min(w, width - x)),
                row - 6,
                _outcome_cls(outcome),
                title,
                label=s["step_name"],
            )
        )
    return Chart(width, len(steps) * row + 4, bars, caption=f"0 - {fmt_duration(int(span))}")


def durations(runs: Sequence[dict[str, Any]], *, width: int = 720, height: int = 120) -> Chart:
    """Duration of each run as a bar, coloured by outcome, oldest left."""
    if not any(r["duration_ms"] for r in runs):
        return Chart(width, height, [], caption="no durations recorded")
    top = max((r["duration_ms"] or 0) for r in runs) or 1
    slot = width / len(runs)
    bars = []
    for i, r in enumerate(runs):
        h = max((r["duration_ms"] or 0) / top * (height - 2), 1.0)
        bars.append(
            Bar(
                _r(i * slot),
                _r(height - h),
                _r(max(slot - 1, 1)),
                _r(h),
                _outcome_cls(r["outcome"]),
                _run_title(r),
                f"/runs/{r['id']}",
            )
        )
    return Chart(width, height, bars, caption=f"max {fmt_duration(top)}")


_COUNT_KEYS = (
    ("total_created", "c-created"),
    ("total_updated", "c-updated"),
    ("total_skipped", "c-skipped"),
    ("total_failed", "c-failed"),
)


def stacked_counts(runs: Sequence[dict[str, Any]], *, width: int = 720, height: int = 120) -> Chart:
    """Created/updated/skipped/failed of each run stacked in one bar, oldest left."""
    totals = [sum((r[k] or 0) for k, _ in _COUNT_KEYS) for r in runs]
    if not any(totals):
        return Chart(width, height, [], caption="no rows recorded")
    top = max(totals)
    slot = width / len(runs)
    bars = []
    for i, r in enumerate(runs):
        y = float(height)
        title = f"#{r['id']} " + ", ".join(f"{k[6:]} {r[k] or 0}" for k, _ in _COUNT_KEYS)
        for key, cls in _COUNT_KEYS:
            h = (r[key] or 0) / top * (height - 2)
            if h <= 0:
                continue
            y -= h
            bars.append(
                Bar(
                    _r(i * slot), _r(y), _r(max(slot - 1, 1)), _r(h), cls, title, f"/runs/{r['id']}"
                )
            )
    return Chart(width, height, bars, caption=f"max {top:,} rows")


#: Room of the success-rate chart's axes: percent labels left, dates below.
_AXIS_LEFT, _AXIS_BOTTOM, _AXIS_TOP = 40, 16, 6
#: Date labels under the success-rate chart, at most (the first and last always).
_DATE_LABELS = 6


def _day_label(day: str) -> str:
    """``2026-11-30`` -> ``30 Nov`` (the stored UTC day; unchanged if unreadable)."""
    try:
        return date.fromisoformat(day).strftime("%d %b").lstrip("0")
    except ValueError:
        return day


def rate_per_day(days: Sequence[dict[str, Any]], *, width: int = 720, height: int = 120) -> Chart:
    """Share of successful runs per day as bars, with a percent axis and dates below.

    0, 50 and 100 % are grid lines labelled on the left; the first and last
    day, and some between, are labelled under their bars.
    """
    if not days:
        return Chart(width, height, [], caption="no runs in these days")
    left, bottom = _AXIS_LEFT, height - _AXIS_BOTTOM
    plot_h = bottom - _AXIS_TOP
    slot = (width - left) / len(days)
    rules, labels = [], []
    for share in (0, 50, 100):
        y = _r(bottom - share / 100 * plot_h)
        rules.append(Rule(left, width, y))
        labels.append(Label(left - 4, _r(y + 3), f"{share} %", "end"))
    every = max(1, -(-len(days) // _DATE_LABELS))  # ceil: at most _DATE_LABELS labels
    bars = []
    for i, d in enumerate(days):
        rate = (d["successes"] or 0) / d["runs"] if d["runs"] else 0.0
        h = max(rate * plot_h, 1.0)
        cls = "o-success" if rate >= 0.999 else ("o-failure" if rate < 0.5 else "o-partial")
        title = (
            f"{d['day']}: {rate:.0%} of {plural(d['runs'], 'run')} succeeded, "
            f"{d['failures']} failed"
        )
        x = left + i * slot
        bars.append(Bar(_r(x + 1), _r(bottom - h), _r(max(slot - 2, 1)), _r(h), cls, title))
        if i % every == 0 or i == len(days) - 1:
            labels.append(Label(_r(x + slot / 2), height - 3, _day_label(d["day"]), "middle"))
    return Chart(width, height, bars, labels=labels, rules=rules)


def svg(chart: Chart, cls: str = "chart", label: str = "") -> Markup:
    """``chart`` as inline SVG markup; every text in it is escaped.

    Built here rather than in a Jinja macro: the overview draws ~1,000 marks
    and a macro call per mark costs more than the page's SQL.
    """
    if not chart.bars and not chart.points:
        return Markup('<span class="muted">%s</span>') % (chart.caption or "no data")
    parts = [
        f'<svg class="{escape(cls)}" viewBox="0 0 {chart.width} {chart.height}"'
        f' width="{chart.width}" height="{chart.height}" role="img"'
        f' aria-label="{escape(label)}" preserveAspectRatio="none">'
    ]
    # Grid lines first: the bars are drawn over them.
    for rule in chart.rules:
        parts.append(
            f'<line x1="{rule.x1}" y1="{rule.y}" x2="{rule.x2}" y2="{rule.y}" class="axis"/>'
        )
    for b in chart.bars:
        mark = (
            f'<rect x="{b.x}" y="{b.y}" width="{b.w}" height="{b.h}" class="{escape(b.cls)}">'
            f"<title>{escape(visible(b.title))}</title></rect>"
        )
        parts.append(f'<a href="{escape(b.href)}">{mark}</a>' if b.href else mark)
        if b.label:
            parts.append(
                f'<text x="{_r(b.x + 4)}" y="{_r(b.y + b.h - 4)}" class="bar-label">'
                f"{escape(visible(b.label))}</text>"
            )
    for mark in chart.labels:
        anchor = escape(mark.anchor)
        parts.append(
            f'<text x="{mark.x}" y="{mark.y}" text-anchor="{anchor}" class="axis-label">'
            f"{escape(visible(mark.text))}</text>"
        )
    if chart.points:
        parts.append(
            f'<polyline points="{escape(chart.points)}" class="spark">'
            f"<title>{escape(visible(chart.caption))}</title></polyline>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))
