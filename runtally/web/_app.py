"""The Starlette application: six pages, their JSON under ``/api``, static files.

Every route is a GET.  HTML pages render one template; with the header
``X-Runtally-Live: 1`` (sent by ``static/live.js``) only the page's ``live``
block is rendered, which the script swaps in when ``/api/stamp`` changes.
The JSON of runs, a run, errors and pipelines is exactly ``runtally
runs|show|errors|pipelines --json``; ``/api/status`` is ``runtally status --json``.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import anyio
import msgspec
from starlette.applications import Starlette
from starlette.convertors import Convertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .._pipeline_config import PipelineConfig
from ..cli._errors import RunNotFound
from ..cli._pipelines import read_pipeline_states
from ..cli._state_view import next_run, state_detail
from ..daemon._timefmt import iso_from_datetime
from ..metrics import CONTENT_TYPE, RuntallyCollector, render
from . import _charts as charts
from . import _errors as we
from . import _queries as wq
from ._data import DatabaseUnavailable, Health, NotFound, read, stamp
from ._params import (
    OUTCOMES,
    BadRequest,
    error_filter,
    exact,
    json_response,
    limit_of,
    link_header,
    number,
    run_filter,
    text,
)
from ._security import Guard
from ._states import BAD_STATES, pipeline_states
from ._templates import environment

__all__ = ["WebConfig", "create_app"]


class _NameConvertor(Convertor[str]):
    """``{name:name}``: a pipeline name as the rest of the path, whatever it holds.

    Starlette's ``path`` is ``.*``, which stops at a newline: a name holding
    one was not routed (404), and one ending in it matched without it.
    """

    regex = "(?s:.+)"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("name", _NameConvertor())

LIVE_HEADER = "x-runtally-live"
PAGE_RUNS = 50
PAGE_ERRORS = 100
#: Errors listed on a run page (the run's errors page and ``/api/runs/RUN`` have all).
RUN_PAGE_ERRORS = 200


@dataclass(frozen=True, slots=True)
class WebConfig:
    """What the dashboard reads and who may see it."""

    db: Path
    socket: Path
    spool: Path
    token: str | None = None
    password_hash: str | None = None
    poll_ms: int = 2000
    health_ttl_s: float = 10.0
    #: The ``[pipelines.<name>]`` tables: declared pipelines, their schedules.
    pipelines: Mapping[str, PipelineConfig] = field(default_factory=dict)
    #: Host names a request may carry (``_security.allowed_hosts``); None: any.
    allowed_hosts: frozenset[str] | None = None


def create_app(config: WebConfig) -> Guard:
    """The dashboard as an ASGI app (Starlette wrapped in the security ``Guard``)."""
    env = environment()
    health = Health(config.socket, config.db, config.spool, ttl=config.health_ttl_s)
    spawner: dict[str, Callable[[Callable[[], Any]], None]] = {}

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        async with anyio.create_task_group() as tg:
            spawner["spawn"] = tg.start_soon
            yield
            spawner.clear()
            tg.cancel_scope.cancel()

    def page(request: Request, name: str, status: int = 200, **ctx: Any) -> Response:
        template = env.get_template(name)
        ctx.setdefault("error", None)
        context = {
            "request_path": request.url.path,
            "params": defaultdict(str, request.query_params.items()),
            "poll_ms": config.poll_ms,
            **ctx,
        }
        if request.headers.get(LIVE_HEADER) == "1":
            block = template.blocks["live"]
            html = "".join(block(template.new_context(context)))
        else:
            html = template.render(context)
        headers = {"cache-control": "no-store", "vary": "X-Runtally-Live"}
        return HTMLResponse(html, status, headers=headers)

    def failed(request: Request, name: str, exc: Exception, **ctx: Any) -> Response:
        status = 400 if isinstance(exc, BadRequest) else 404 if isinstance(exc, NotFound) else 503
        if request.url.path.startswith("/api/"):
            return json_response({"error": str(exc)}, status)
        return page(request, name, status, error=str(exc), **ctx)

    # -- overview ------------------------------------------------------------------

    async def overview_data() -> dict[str, Any]:
        now = datetime.now(UTC)
        report = await health.get(spawner.get("spawn"))
        try:
            pipelines = await read(
                config.db,
                lambda c: wq.overview(
                    c,
                    day_ago=iso_from_datetime(now - timedelta(days=1)),
                    week_ago=iso_from_datetime(now - timedelta(days=7)),
                ),
            )
        except DatabaseUnavailable:
            pipelines = []  # the health cards say why
        try:
            states = await read(config.db, pipeline_states)
        except DatabaseUnavailable:
            states = {}
        for p in pipelines:
            p["state"] = states.get(p["pipeline"])
        return {"health": report, "pipelines": pipelines}

    def shown_state(name: str, state: dict[str, Any] | None, now: float) -> None:
        """Add to ``state`` what is computed when shown: the next run, the slot's age."""
        if state is not None:
            state["next"] = next_run(state["next_expected_at"], config.pipelines.get(name), now)
            state["shown_detail"] = state_detail(
                state["state"], state["detail"], state["expected_at"], now
            )

    async def overview(request: Request) -> Response:
        data = await overview_data()
        clubs = sorted({p["club_slug"] for p in data["pipelines"]})
        now = time.time()
        for p in data["pipelines"]:
            p["strip"] = charts.strip(p["recent"])
            p["spark"] = charts.sparkline(p["recent"])
            shown_state(p["pipeline"], p["state"], now)
        return page(request, "overview.html", clubs=clubs, **data)

    async def api_overview(request: Request) -> Response:
        return json_response(await overview_data())

    async def api_status(request: Request) -> Response:
        return json_response(await health.get(spawner.get("spawn")))

    async def api_stamp(request: Request) -> Response:
        value = await anyio.to_thread.run_sync(stamp, config.db, config.spool)
        return json_response({"stamp": f"{value}:{health.generation}"})

    collector = RuntallyCollector.for_paths(
        config.db, config.socket, config.spool, pipelines=config.pipelines
    )

    async def metrics(request: Request) -> Response:
        body = await anyio.to_thread.run_sync(render, collector)
        return Response(body, headers={"content-type": CONTENT_TYPE})

    # -- runs ----------------------------------------------------------------------

    async def runs_data(request: Request) -> tuple[wq.RunFilter, wq.Page]:
        params = request.query_params
        f = run_filter(params)
        before, after, limit = (
            number(params, "before"),
            number(params, "after"),
            limit_of(params, PAGE_RUNS),
        )
        found = await read(
            config.db, lambda c: wq.runs_page(c, f, before=before, after=after, limit=limit)
        )
        return f, found

    async def runs(request: Request) -> Response:
        try:
            _f, found = await runs_data(request)
        except (BadRequest, DatabaseUnavailable) as exc:
            return failed(request, "runs.html", exc, page_=wq.Page(), outcomes=OUTCOMES)
        return page(request, "runs.html", page_=found, outcomes=OUTCOMES)

    async def api_runs(request: Request) -> Response:
        try:
            _f, found = await runs_data(request)
        except (BadRequest, DatabaseUnavailable) as exc:
            return failed(request, "", exc)
        return json_response({"runs": found.rows}, headers=link_header(request, found))

    # -- run -----------------------------------------------------------------------

    async def run_data(request: Request) -> dict[str, Any]:
        ref = request.path_params["ref"]

        def fetch(conn: Any) -> dict[str, Any]:
            try:
                return wq.run_detail(conn, ref)
            except RunNotFound as exc:
                raise NotFound(str(exc)) from None

        return await read(config.db, fetch)

    async def run(request: Request) -> Response:
        try:
            detail = await run_data(request)
        except (NotFound, DatabaseUnavailable) as exc:
            return failed(request, "run.html", exc, detail=None)
        timeline = charts.timeline(detail["run"], detail["steps"], now=datetime.now(UTC))
        return page(
            request,
            "run.html",
            detail=detail,
            timeline=timeline,
            shown_errors=detail["errors"][:RUN_PAGE_ERRORS],
        )

    async def api_run(request: Request) -> Response:
        try:
            return json_response(await run_data(request))
        except (NotFound, DatabaseUnavailable) as exc:
            return failed(request, "", exc)

    # -- errors --------------------------------------------------------------------

    async def errors_data(request: Request) -> dict[str, Any]:
        params = request.query_params
        f = error_filter(params)
        if text(params, "group") == "message":
            groups = await read(config.db, lambda c: we.error_groups(c, f))
            return {"groups": groups, "page_": None}
        before, after = number(params, "before"), number(params, "after")
        limit = limit_of(params, PAGE_ERRORS)
        found = await read(
            config.db, lambda c: we.errors_page(c, f, before=before, after=after, limit=limit)
        )
        return {"groups": None, "page_": found}

    async def errors(request: Request) -> Response:
        try:
            data = await errors_data(request)
        except (BadRequest, DatabaseUnavailable) as exc:
            return failed(request, "errors.html", exc, groups=None, page_=wq.Page())
        return page(request, "errors.html", scan=we.GROUP_SCAN, **data)

    async def api_errors(request: Request) -> Response:
        try:
            data = await errors_data(request)
        except (BadRequest, DatabaseUnavailable) as exc:
            return failed(request, "", exc)
        if data["groups"] is not None:
            return json_response({"groups": data["groups"]})
        found = data["page_"]
        return json_response({"errors": found.rows}, headers=link_header(request, found))

    # -- pipelines -----------------------------------------------------------------

    async def pipelines_data() -> list[dict[str, Any]]:
        found = await read(config.db, lambda c: read_pipeline_states(c, config.pipelines))
        return msgspec.to_builtins(found)

    async def pipelines(request: Request) -> Response:
        try:
            rows = await pipelines_data()
        except DatabaseUnavailable as exc:
            return failed(request, "pipelines.html", exc, rows=[])
        now = time.time()
        for row in rows:
            shown_state(row["pipeline"], row, now)
            row["bad"] = row["state"] in BAD_STATES
        return page(request, "pipelines.html", rows=rows)

    async def api_pipelines(request: Request) -> Response:
        try:
            return json_response(await pipelines_data())
        except DatabaseUnavailable as exc:
            return failed(request, "", exc)

    # -- pipeline ------------------------------------------------------------------

    async def pipeline_data(request: Request) -> dict[str, Any]:
        # /pipelines/<quoted name> (slashes inside arrive decoded: the route takes a
        # path); /pipeline?name= for the names a browser would resolve (".", "..").
        name = request.path_params.get("name", request.query_params.get("name", ""))
        if not name:
            raise NotFound("no pipeline named")
        club = exact(request.query_params, "club")
        since_day = iso_from_datetime(datetime.now(UTC) - timedelta(days=30))[:10]
        history = await read(
            config.db,
            lambda c: wq.pipeline_history(c, name, club=club, since_day=since_day),
        )
        if not history["runs"]:
            raise NotFound(f"no runs of pipeline {name!r}" + (f" in club {club!r}" if club else ""))
        history["state"] = (await read(config.db, pipeline_states)).get(name)
        return history

    async def pipeline(request: Request) -> Response:
        try:
            history = await pipeline_data(request)
        except (NotFound, DatabaseUnavailable) as exc:
            return failed(request, "pipeline.html", exc, history=None)
        shown_state(history["pipeline"], history["state"], time.time())
        return page(
            request,
            "pipeline.html",
            history=history,
            durations=charts.durations(history["runs"]),
            counts=charts.stacked_counts(history["runs"]),
            rate=charts.rate_per_day(history["days"]),
            recent=list(reversed(history["runs"][-20:])),
        )

    async def api_pipeline(request: Request) -> Response:
        try:
            return json_response(await pipeline_data(request))
        except (NotFound, DatabaseUnavailable) as exc:
            return failed(request, "", exc)

    static = StaticFiles(directory=str(resources.files("runtally.web") / "static"))
    app = Starlette(
        routes=[
            Route("/", overview),
            Route("/runs", runs),
            Route("/runs/{ref}", run),
            Route("/errors", errors),
            Route("/pipelines", pipelines),
            Route("/pipelines/{name:name}", pipeline),
            Route("/pipeline", pipeline),
            Route("/api/overview", api_overview),
            Route("/api/status", api_status),
            Route("/api/stamp", api_stamp),
            Route("/api/runs", api_runs),
            Route("/api/runs/{ref}", api_run),
            Route("/api/errors", api_errors),
            Route("/api/pipelines", api_pipelines),
            Route("/api/pipelines/{name:name}", api_pipeline),
            Route("/api/pipeline", api_pipeline),
            Route("/metrics", metrics),
            Mount("/static", static, name="static"),
        ],
        lifespan=lifespan,
    )
    return Guard(
        app,
        token=config.token,
        password_hash=config.password_hash,
        allowed_hosts=config.allowed_hosts,
    )
