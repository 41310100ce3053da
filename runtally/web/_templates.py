"""The Jinja2 environment: autoescape everywhere, control characters made visible.

Pipeline names, members and messages are user input.  Autoescape turns
``<script>`` into text; ``finalize`` additionally shows terminal escapes and
other control characters as ``\\x1b``-style text, so they neither vanish nor
reach a terminal that copies the page.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote, urlencode

import jinja2
from markupsafe import Markup

from ..cli._render import fmt_ago, fmt_bytes, fmt_duration, fmt_local, plural

__all__ = ["environment", "pipeline_url", "visible"]

# C0 controls but tab and newline, DEL, C1 controls (CSI = \x9b), bidi overrides.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def visible(value: Any) -> Any:
    """``value`` with control characters spelled out (``\\x1b``); other values unchanged."""
    if isinstance(value, str) and not isinstance(value, Markup):
        return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", value)
    return value


def _count(n: int | None) -> str:
    return "-" if n is None else f"{n:,}"


def _plural(n: int | None, noun: str, nouns: str | None = None) -> str:
    """``{{ n|plural("run") }}``: ``1 run``, ``2 runs``, ``1,200 runs``; ``-`` when unknown."""
    return "-" if n is None else plural(n, noun, nouns)


def _segment(value: Any) -> str:
    """``{{ x|seg }}``: ``x`` as one URL path segment (``/``, ``?``, ``#``, ``%`` encoded)."""
    return quote(str(value), safe="")


def pipeline_url(name: str, club: str | None = None) -> str:
    """The page of pipeline ``name`` (of ``club``): ``/pipelines/<name as one segment>``.

    Every link to a pipeline is built here.  ``.`` and ``..`` are dot segments
    however encoded (browsers resolve ``%2e%2e`` too), so those names use
    ``/pipeline?name=``.
    """
    clubq = {"club": club} if club else {}
    if name in ("", ".", ".."):
        return "/pipeline?" + urlencode({"name": name, **clubq})
    return "/pipelines/" + _segment(name) + ("?" + urlencode(clubq) if clubq else "")


def _query(params: dict[str, Any], **changes: Any) -> str:
    """``?a=1&b=2`` from the current filters with ``changes`` (None drops a key)."""
    merged = {**params, **changes}
    kept = {k: v for k, v in merged.items() if v not in (None, "")}
    return "?" + urlencode(kept) if kept else "?"


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("runtally.web", "templates"),
        autoescape=True,
        finalize=visible,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        duration=fmt_duration,
        local=fmt_local,
        ago=fmt_ago,
        bytes=fmt_bytes,
        count=_count,
        plural=_plural,
        seg=_segment,
    )
    env.globals["query"] = _query
    env.globals["pipeline_url"] = pipeline_url
    from ._charts import svg  # _charts imports visible from here

    env.globals["svg"] = svg
    return env
