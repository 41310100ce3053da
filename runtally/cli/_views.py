"""How ``runs``, ``show`` and ``errors`` show runs, steps and errors to people.

Rows are the dicts of ``_query`` (column name -> value); tables and lines are
rich renderables printed on ``_render.console()``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rich.console import Console
from rich.text import Text

from ._render import (
    OUTCOME_STYLES,
    clock_ahead_s,
    fmt_ago,
    fmt_duration,
    fmt_local,
    fmt_when,
    loads_or_text,
    outcome_text,
)
from ._table import Column, StreamTable, clean

__all__ = [
    "count",
    "error_columns",
    "print_error_blocks",
    "print_errors",
    "print_run",
    "print_runs",
    "print_steps",
    "run_columns",
]

#: Longest error message shown in a table cell (``--json`` and ``--stack`` show all).
MESSAGE_CELL = 300


def count(n: int | None) -> str:
    """A count with thousands separators; ``-`` when unknown."""
    return "-" if n is None else f"{n:,}"


def _counts(prefix: str, suffix: str, keeps: tuple[int, ...]) -> list[Column]:
    """The CREATED..FAILED count columns of ``{prefix}created{suffix}``..., and ERRORS."""
    names = ("created", "updated", "skipped", "failed")
    cols = [
        Column(
            name.upper(),
            lambda r, key=f"{prefix}{name}{suffix}": count(r[key]),
            right=True,
            keep=keep,
        )
        for name, keep in zip(names, keeps, strict=True)
    ]
    cols.append(
        Column(
            "ERRORS",
            lambda r: count(r["error_count"]),
            right=True,
            keep=80,
            style=lambda r: "red" if r["error_count"] else None,
        )
    )
    return cols


def _outcome_column(key: str = "outcome") -> Column:
    return Column(
        "OUTCOME",
        lambda r: r[key] or "-",
        keep=95,
        style=lambda r: OUTCOME_STYLES.get(r[key] or ""),
    )


def run_columns() -> list[Column]:
    """Columns of a run listing; at 80 columns one run per line, least needed dropped first."""
    return [
        Column("ID", lambda r: str(r["id"]), right=True, keep=100),
        Column("PIPELINE", lambda r: r["pipeline"], keep=100, flex=True, min_width=10),
        Column("CLUB", lambda r: r["club_slug"], keep=40, max_width=12),
        Column(
            "STARTED",
            lambda r: fmt_when(r["started_at"]),
            keep=85,
            compact=lambda r: fmt_ago(r["started_at"]) or fmt_local(r["started_at"]),
        ),
        Column("DURATION", lambda r: fmt_duration(r["duration_ms"]), right=True, keep=70),
        _outcome_column(),
        *_counts("total_", "", (50, 45, 35, 60)),
        Column("PARENT", _parent_ref, keep=30, max_width=12),
    ]


def print_runs(
    out: Console, pages: Iterable[list[dict[str, Any]]], *, fit: bool, title: str | None = None
) -> int:
    """Runs, one a line, page by page; the number printed."""
    return StreamTable(out, run_columns(), fit=fit, title=title).print_rows(pages)


def _parent_ref(run: dict[str, Any]) -> str:
    if run["parent_run_id"] is not None:
        return f"#{run['parent_run_id']}"
    return run["parent_uid"] or ""


def print_run(out: Console, run: dict[str, Any], parent: dict[str, Any] | None) -> None:
    """A run's header block: uid, outcome, times, totals, parent, meta, summary."""
    head = Text(f"Run {run['id']}", style="bold")
    head.append(f"  {clean(run['pipeline'])}  (club {clean(run['club_slug'])})")
    out.print(head)
    fields: list[tuple[str, Any]] = [
        ("uid", run["uid"] or "-"),
        ("outcome", outcome_text(run["outcome"])),
        ("started", _started(run["started_at"])),
        ("finished", fmt_when(run["finished_at"])),
        ("duration", fmt_duration(run["duration_ms"])),
        (
            "totals",
            f"created {count(run['total_created'])}, updated {count(run['total_updated'])}, "
            f"skipped {count(run['total_skipped'])}, failed {count(run['total_failed'])}",
        ),
        ("steps", count(run["step_count"])),
        ("errors", Text(count(run["error_count"]), style="red" if run["error_count"] else "")),
    ]
    if parent is not None:
        fields.append(("parent", _run_line(parent)))
    elif run["parent_uid"]:
        fields.append(("parent", f"uid {clean(run['parent_uid'])} (not in the database)"))
    meta = loads_or_text(run["meta_json"])
    if isinstance(meta, dict) and meta:
        fields.append(("meta", _meta_line(meta)))
    if run["summary_json"] is not None:
        fields.append(("summary", run["summary_json"]))
    for label, value in fields:
        line = Text(f"  {label:<9} ", style="dim")
        line.append(value if isinstance(value, Text) else Text(clean(value)))
        out.print(line)


def _started(started_at: str | None) -> Text:
    """When a run started; flagged when that is in the future (a client clock ahead)."""
    line = Text(fmt_when(started_at))
    ahead = clock_ahead_s(started_at)
    if ahead is not None:
        line.append(
            f"  client clock ahead by {fmt_duration(int(ahead * 1000))}", style="bold yellow"
        )
    return line


def _run_line(run: dict[str, Any]) -> Text:
    line = Text(f"#{run['id']} {clean(run['pipeline'])} ")
    line.append(outcome_text(run["outcome"]))
    line.append(f", started {fmt_when(run['started_at'])}")
    return line


def _meta_line(meta: dict[str, Any]) -> str:
    parts = []
    for key, value in meta.items():
        shown = " ".join(str(v) for v in value) if isinstance(value, list) else value
        parts.append(f"{key}={shown}")
    return "  ".join(parts)


def print_steps(out: Console, steps: list[dict[str, Any]], *, fit: bool) -> None:
    """A run's steps, one a line, with their counts."""
    columns = [
        Column("STEP", lambda s: s["step_name"], keep=100, flex=True, min_width=10),
        Column(
            "STARTED",
            lambda s: fmt_local(s["started_at"]),
            keep=40,
            compact=lambda s: fmt_ago(s["started_at"]),
        ),
        Column("DURATION", lambda s: fmt_duration(s["duration_ms"]), right=True, keep=70),
        _outcome_column("shown_outcome"),
        *_counts("", "_count", (50, 45, 35, 60)),
    ]
    rows = [
        {**s, "shown_outcome": s["outcome"] or ("running" if s["finished_at"] is None else None)}
        for s in steps
    ]
    StreamTable(out, columns, fit=fit, title=f"Steps ({len(steps)})").print_rows([rows])


def _message_cell(message: str | None) -> str:
    text = (message or "").strip()
    first, _, rest = text.partition("\n")
    if len(first) > MESSAGE_CELL:
        return first[: MESSAGE_CELL - 1] + "…"
    return first + (" …" if rest.strip() else "")


def error_columns(*, with_run: bool) -> list[Column]:
    """Columns of an error listing, each message cut to one line."""
    columns = [
        Column(
            "TIME",
            lambda e: fmt_local(e["created_at"]),
            keep=90,
            compact=lambda e: fmt_ago(e["created_at"]) or fmt_local(e["created_at"]),
        )
    ]
    if with_run:
        columns += [
            Column("RUN", lambda e: str(e["run_id"]), right=True, keep=100),
            # Above STEP and MEMBER: a listing across pipelines is read by pipeline first.
            Column("PIPELINE", lambda e: e["pipeline"], keep=80, max_width=14),
        ]
    columns += [
        Column("STEP", lambda e: e["step_name"], keep=70, max_width=16),
        Column("MEMBER", lambda e: e["member_identifier"] or "-", keep=75, max_width=14),
        # The flex column: cut to what is left before any column goes, down to
        # min_width; below that a column goes (STEP first, PIPELINE last).
        Column(
            "MESSAGE",
            lambda e: _message_cell(e["error_message"]),
            keep=100,
            flex=True,
            min_width=16,
        ),
    ]
    return columns


def print_errors(
    out: Console,
    pages: Iterable[list[dict[str, Any]]],
    *,
    fit: bool,
    with_run: bool,
    title: str | None = None,
) -> int:
    """Errors, one a line, page by page; the number printed."""
    return StreamTable(out, error_columns(with_run=with_run), fit=fit, title=title).print_rows(
        pages
    )


def print_error_blocks(out: Console, errs: list[dict[str, Any]], total: int | None = None) -> None:
    """Errors in full, each with its stack (``--stack``)."""
    out.print(Text(f"Errors ({len(errs) if total is None else total})", style="bold"))
    for e in errs:
        head = Text(
            f"#{e['id']} {fmt_local(e['created_at'])}  run {e['run_id']} {clean(e['pipeline'])}"
        )
        head.append(f"  step {clean(e['step_name'])}")
        if e["member_identifier"]:
            head.append(f"  member {clean(e['member_identifier'])}")
        out.print(head)
        for line in (e["error_message"] or "").splitlines() or [""]:
            out.print(Text(f"    {clean(line)}", style="red"))
        if e["error_stack"]:
            for line in e["error_stack"].splitlines():
                out.print(Text(f"      {clean(line)}", style="dim"))
