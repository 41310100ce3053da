"""How ``runs``, ``show`` and ``errors`` show runs, steps and errors to people.

Rows are the dicts of ``_query`` (column name -> value); tables and lines are
rich renderables printed on ``_render.console()``.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ._render import fmt_duration, fmt_local, fmt_when, loads_or_text, outcome_text, table
from ._text import visible

__all__ = [
    "count",
    "errors_table",
    "print_error_blocks",
    "print_run",
    "runs_table",
    "steps_table",
]

#: Longest error message shown in a table cell (``--json`` and ``--stack`` show all).
MESSAGE_CELL = 300

_COUNTS = ("CREATED", "UPDATED", "SKIPPED", "FAILED", "ERRORS")


def count(n: int | None) -> str:
    """A count with thousands separators; ``-`` when unknown."""
    return "-" if n is None else f"{n:,}"


def runs_table(found: list[dict[str, Any]], title: str | None = None) -> Table:
    """Runs, one a row; a PARENT column when any of them is nested."""
    nested = any(r["parent_run_id"] is not None or r["parent_uid"] for r in found)
    columns = ["ID", "PIPELINE", "CLUB", "STARTED", "DURATION", "OUTCOME", *_COUNTS]
    if nested:
        columns.append("PARENT")
    t = table(*columns, title=title, right=("ID", "DURATION", *_COUNTS))
    for r in found:
        row: list[Any] = [
            str(r["id"]),
            r["pipeline"],
            r["club_slug"],
            fmt_when(r["started_at"]),
            fmt_duration(r["duration_ms"]),
            outcome_text(r["outcome"]),
            count(r["total_created"]),
            count(r["total_updated"]),
            count(r["total_skipped"]),
            count(r["total_failed"]),
            Text(count(r["error_count"]), style="red" if r["error_count"] else ""),
        ]
        if nested:
            row.append(_parent_ref(r))
        t.add_row(*row)
    return t


def _parent_ref(run: dict[str, Any]) -> str:
    if run["parent_run_id"] is not None:
        return f"#{run['parent_run_id']}"
    return run["parent_uid"] or ""


def print_run(out: Console, run: dict[str, Any], parent: dict[str, Any] | None) -> None:
    """A run's header block: uid, outcome, times, totals, parent, meta, summary."""
    head = Text(f"Run {run['id']}", style="bold")
    head.append(visible(f"  {run['pipeline']}  (club {run['club_slug']})"))
    out.print(head)
    fields: list[tuple[str, Any]] = [
        ("uid", run["uid"] or "-"),
        ("outcome", outcome_text(run["outcome"])),
        ("started", fmt_when(run["started_at"])),
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
        fields.append(("parent", f"uid {run['parent_uid']} (not in the database)"))
    meta = loads_or_text(run["meta_json"])
    if isinstance(meta, dict) and meta:
        fields.append(("meta", _meta_line(meta)))
    if run["summary_json"] is not None:
        fields.append(("summary", run["summary_json"]))
    for label, value in fields:
        line = Text(f"  {label:<9} ", style="dim")
        line.append(value if isinstance(value, Text) else Text(visible(str(value))))
        out.print(line)


def _run_line(run: dict[str, Any]) -> Text:
    line = Text(visible(f"#{run['id']} {run['pipeline']} "))
    line.append(outcome_text(run["outcome"]))
    line.append(f", started {fmt_when(run['started_at'])}")
    return line


def _meta_line(meta: dict[str, Any]) -> str:
    parts = []
    for key, value in meta.items():
        shown = " ".join(str(v) for v in value) if isinstance(value, list) else value
        parts.append(f"{key}={shown}")
    return "  ".join(parts)


def steps_table(steps: list[dict[str, Any]]) -> Table:
    """A run's steps, one a row, with their counts."""
    t = table(
        "STEP",
        "STARTED",
        "DURATION",
        "OUTCOME",
        *_COUNTS,
        title=f"Steps ({len(steps)})",
        right=("DURATION", *_COUNTS),
    )
    for s in steps:
        t.add_row(
            s["step_name"],
            fmt_local(s["started_at"]),
            fmt_duration(s["duration_ms"]),
            outcome_text(s["outcome"] or ("running" if s["finished_at"] is None else None)),
            count(s["created_count"]),
            count(s["updated_count"]),
            count(s["skipped_count"]),
            count(s["failed_count"]),
            Text(count(s["error_count"]), style="red" if s["error_count"] else ""),
        )
    return t


def _message_cell(message: str | None) -> str:
    text = (message or "").strip()
    first, _, rest = text.partition("\n")
    if len(first) > MESSAGE_CELL:
        return first[: MESSAGE_CELL - 1] + "…"
    return first + (" …" if rest.strip() else "")


def errors_table(errs: list[dict[str, Any]], *, title: str | None, with_run: bool) -> Table:
    """Errors, one a row, each message cut to one line of MESSAGE_CELL characters."""
    columns = ["TIME", *(["RUN", "PIPELINE"] if with_run else []), "STEP", "MEMBER", "MESSAGE"]
    t = table(*columns, title=title, right=("RUN",))
    for e in errs:
        row = [fmt_local(e["created_at"])]
        if with_run:
            row += [str(e["run_id"]), e["pipeline"]]
        row += [e["step_name"], e["member_identifier"] or "-", _message_cell(e["error_message"])]
        t.add_row(*row)
    return t


def print_error_blocks(out: Console, errs: list[dict[str, Any]], total: int | None = None) -> None:
    """Errors in full, each with its stack (``--stack``)."""
    out.print(Text(f"Errors ({len(errs) if total is None else total})", style="bold"))
    for e in errs:
        head = Text(f"#{e['id']} {fmt_local(e['created_at'])}  run {e['run_id']} ")
        head.append(visible(f"{e['pipeline']}  step {e['step_name']}"))
        if e["member_identifier"]:
            head.append(visible(f"  member {e['member_identifier']}"))
        out.print(head)
        for line in (e["error_message"] or "").splitlines() or [""]:
            out.print(Text(f"    {visible(line)}", style="red"))
        if e["error_stack"]:
            for line in e["error_stack"].splitlines():
                out.print(Text(f"      {visible(line)}", style="dim"))
