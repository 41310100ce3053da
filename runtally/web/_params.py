"""Query parameters of the dashboard's pages: checked, converted, or a BadRequest.

``BadRequest``'s message says which parameter and why (a 400 page or JSON).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response

from ..cli._render import parse_since
from . import _errors as we
from . import _queries as wq

__all__ = [
    "MAX_LIMIT",
    "OUTCOMES",
    "BadRequest",
    "error_filter",
    "exact",
    "json_response",
    "limit_of",
    "link_header",
    "number",
    "run_filter",
    "text",
]

MAX_LIMIT = 500
#: SQLite's INTEGER is 64-bit: a larger number cannot name a row (and would overflow).
MAX_ID = 2**63 - 1
OUTCOMES = ("success", "failure", "running")


class BadRequest(ValueError):
    """A query parameter that cannot be used; the message says which and why."""


def json_response(
    payload: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    body = json.dumps(payload, indent=2, ensure_ascii=False).encode()
    return Response(body, status, headers=headers, media_type="application/json")


def text(params: Any, name: str) -> str | None:
    """A keyword, number, date or search text: surrounding whitespace dropped, "" is none."""
    value = params.get(name)
    return value.strip() or None if isinstance(value, str) else None


def exact(params: Any, name: str) -> str | None:
    """A name matched as stored (pipeline, club, step, member): as given, "" is none.

    Not stripped: names may start or end with spaces (the daemon stores them
    as sent, and the CLI matches them exactly), so ``' lead'`` is not ``lead``.
    """
    value = params.get(name)
    return value or None if isinstance(value, str) else None


def number(params: Any, name: str) -> int | None:
    """A whole number 0..MAX_ID; BadRequest for anything else (never an OverflowError)."""
    value = text(params, name)
    if value is None:
        return None
    if not (value.isascii() and value.isdigit()):
        raise BadRequest(f"{name} must be a whole number, not {value!r}")
    if len(value) > 19 or int(value) > MAX_ID:  # length first: int() of a huge text is slow
        raise BadRequest(f"{name} is too large (at most {MAX_ID})")
    return int(value)


def _when(params: Any, name: str) -> str | None:
    value = text(params, name)
    if value is None:
        return None
    try:
        return parse_since(value)
    except (ValueError, OverflowError) as exc:  # a year past 9999 in UTC overflows
        raise BadRequest(f"{name}: {exc}") from None


def limit_of(params: Any, default: int) -> int:
    """``limit``: 1..MAX_LIMIT rows a page; 0, the CLI's "all" (``-n 0``), is the
    largest page (the Link header pages on).  Found from outside: 0 gave 1 row."""
    value = number(params, "limit")
    if value is None:
        return default
    return MAX_LIMIT if value == 0 else min(value, MAX_LIMIT)


def run_filter(params: Any) -> wq.RunFilter:
    outcome = text(params, "outcome")
    if outcome is not None and outcome not in OUTCOMES:
        raise BadRequest(f"outcome must be one of {', '.join(OUTCOMES)}")
    return wq.RunFilter(
        pipeline=exact(params, "pipeline"),
        club=exact(params, "club"),
        outcome=outcome,
        since=_when(params, "since"),
        until=_when(params, "until"),
    )


def error_filter(params: Any) -> we.ErrorFilter:
    return we.ErrorFilter(
        run_id=number(params, "run"),
        pipeline=exact(params, "pipeline"),
        club=exact(params, "club"),
        step=exact(params, "step"),
        member=exact(params, "member"),
        since=_when(params, "since"),
        until=_when(params, "until"),
        text=text(params, "q"),
    )


def link_header(request: Request, page: wq.Page) -> dict[str, str]:
    """RFC 8288 ``Link`` to the next/previous page: the JSON body keeps the CLI's shape."""
    links = []
    base = {k: v for k, v in request.query_params.items() if k not in ("before", "after")}
    for rel, key, cursor in (("next", "before", page.older), ("prev", "after", page.newer)):
        if cursor is not None:
            query = urlencode({**base, key: cursor})
            links.append(f'<{request.url.path}?{query}>; rel="{rel}"')
    return {"link": ", ".join(links)} if links else {}
