"""``dx serve``: the HTTP API, its OpenAPI document, the web console and ``/metrics``.

Every ``/api/v1`` route needs a tenant's bearer token (``dx token create``)
and sees only that tenant's modules and runs: another tenant's id answers 404
exactly like a missing one, so that ids do not leak. Run-now takes the same
path as ``dx run`` (``request_run``, trigger ``http``); pause and resume the
same as ``dx pause``/``dx resume``. Errors are ``{"error": {"code",
"message"}}`` with the stable codes of ``docs/error-codes.md``.
``/metrics``, ``/healthz`` and the console's static files need no token.
Tokens travel only in the Authorization header, which is never logged.
"""

from __future__ import annotations

import html
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime
from importlib import resources
from typing import Annotated, Any, cast

import dramatiq.errors
import pika.exceptions
import psycopg
import structlog
from fastapi import APIRouter, FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from prometheus_client import generate_latest
from starlette.exceptions import HTTPException

from dx.scheduler import console_api, metrics
from dx.scheduler.api_base import (
    BIGINT_MAX,
    ApiError,
    Connection,
    IsoDateTime,
    ModuleId,
    Operator,
    RunId,
    Tenant,
    Who,
    error,
    not_found,
    own_run,
)
from dx.scheduler.clock import Clock
from dx.scheduler.http_models import (
    ErrorOut,
    ExportOut,
    ModuleDetail,
    ModuleList,
    ModuleOut,
    RunDetail,
    RunList,
    RunNowIn,
    RunOut,
    ScheduleOut,
)
from dx.scheduler.limits import BodyLimit
from dx.scheduler.requests import RequestIdReused, TenantDisabled, UnknownModule, module_tenant, request_run
from dx.scheduler.schedule import next_fire, schedule_of, set_paused, upcoming
from dx.shared import db
from dx.shared.catalog import module_rows
from dx.shared.config import ID_PATTERN
from dx.shared.db import Conn
from dx.shared.errors import MEANINGS, ErrorCode, RetriableError
from dx.shared.report import report_text
from dx.shared.runs import Run, RunStatus, Trigger, chunks_done, error_counts
from dx.shared.settings import Settings, get_settings

log = structlog.get_logger(__name__)
#: The console's files and the API's reference page, served as they are.
CONSOLE = {"/": ("index.html", "text/html; charset=utf-8"),
           "/console.js": ("console.js", "text/javascript; charset=utf-8"),
           "/console.css": ("console.css", "text/css; charset=utf-8"),
           "/docs": ("docs.html", "text/html; charset=utf-8"),
           "/docs/docs.js": ("docs.js", "text/javascript; charset=utf-8")}
#: Swagger UI's files for the reference page, from the fastapi-offline package: nothing from another host.
SWAGGER = {"/docs/swagger-ui-bundle.js": ("swagger-ui-bundle.js", "text/javascript; charset=utf-8"),
           "/docs/swagger-ui.css": ("swagger-ui.css", "text/css; charset=utf-8")}
#: The console runs no script but its own file and talks only to this server.
CONSOLE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
               "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
#: Failures that mean a service is down: answer 503, the client may retry.
UNAVAILABLE = (RetriableError, psycopg.OperationalError, pika.exceptions.AMQPError, dramatiq.errors.BrokerError)
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "missing, unknown or revoked token"},
    404: {"model": ErrorOut, "description": "no such module or run for this tenant"},
    422: {"model": ErrorOut, "description": "invalid parameter or body"},
}


def _run_out(run: Run) -> RunOut:
    return RunOut.model_validate(run)


def _module_out(row: dict[str, Any], now: datetime, detail: bool = False) -> ModuleOut:
    last = None if row["last_run"] is None else {
        "id": row["last_run"], "status": row["last_status"], "finished_at": row["last_finished"]}
    schedule = schedule_of(row["config"])
    doc = {"id": row["id"], "kind": row["kind"], "mode": row["mode"], "database": row["database"],
           "paused": row["paused"], "schedule": row["config"].get("schedule"),
           "next_fire": next_fire(row["config"], now, row["tenant_timezone"]), "last_run": last,
           "timezone": None if schedule is None else schedule.zone(row["tenant_timezone"])}
    return ModuleDetail(**doc, config=row["config"]) if detail else ModuleOut(**doc)


def _own_module(conn: Conn, who: Who, module_id: str) -> dict[str, Any]:
    rows = module_rows(conn, tenant=who.tenant, module=module_id)
    if not rows:
        raise not_found("module", module_id)
    return rows[0]


api = APIRouter(prefix="/api/v1", responses=ERRORS)


@api.get("/modules", response_model=ModuleList, summary="the tenant's modules")
def list_modules(conn: Connection, who: Tenant) -> ModuleList:
    now = Clock.from_settings().now()
    return ModuleList(modules=[_module_out(r, now) for r in module_rows(conn, tenant=who.tenant)])


@api.get("/modules/{module_id}", response_model=ModuleDetail, summary="one module with its configuration")
def get_module(module_id: ModuleId, conn: Connection, who: Tenant) -> ModuleOut:
    return _module_out(_own_module(conn, who, module_id), Clock.from_settings().now(), detail=True)


@api.get("/modules/{module_id}/schedule", response_model=ScheduleOut, summary="the next fire times")
def get_schedule(module_id: ModuleId, conn: Connection, who: Tenant,
                 next: Annotated[int, Query(ge=1, le=1000, description="how many fire times")] = 5,
                 from_: Annotated[IsoDateTime | None, Query(alias="from", description="count from this time "
                                                         "(default now; no offset: the module's zone)")] = None,
                 ) -> ScheduleOut:
    row = _own_module(conn, who, module_id)
    start = from_ or Clock.from_settings().now()
    schedule = schedule_of(row["config"])
    return ScheduleOut(module=module_id, paused=row["paused"], schedule=row["config"].get("schedule"),
                       timezone=None if schedule is None else schedule.zone(row["tenant_timezone"]),
                       fires=upcoming(row["config"], start, next, row["tenant_timezone"]))


@api.post("/modules/{module_id}/runs", status_code=202, response_model=RunOut, summary="run the module now",
          responses={409: {"model": ErrorOut, "description": "request_id already used for another module, "
                                                             "or the tenant's DataExchange is disabled"}})
def run_now(module_id: ModuleId, response: Response, conn: Connection, who: Operator,
            body: RunNowIn | None = None) -> RunOut:
    body = body or RunNowIn()
    try:
        run_id = request_run(module_id, Trigger.HTTP, body.requested_by or who.name,
                             tenant=who.tenant, request_id=body.request_id)
    except UnknownModule:
        raise not_found("module", module_id) from None
    except (TenantDisabled, RequestIdReused) as exc:
        raise ApiError(409, exc.code, exc.message) from None
    run = own_run(conn, who, run_id)
    response.headers["Location"] = f"/api/v1/runs/{run_id}"
    return _run_out(run)


def _set_paused(paused: bool) -> Callable[..., ModuleOut]:
    def route(module_id: ModuleId, conn: Connection, who: Operator) -> ModuleOut:
        with conn.transaction():
            try:
                module_tenant(conn, module_id, who.tenant)
            except UnknownModule:
                raise not_found("module", module_id) from None
            set_paused(conn, module_id, paused, Clock.from_settings().now())
        return _module_out(_own_module(conn, who, module_id), Clock.from_settings().now())
    return route


api.add_api_route("/modules/{module_id}/pause", _set_paused(True), methods=["POST"], response_model=ModuleOut,
                  summary="pause the module's schedule (run-now still works)", name="pause_module")
api.add_api_route("/modules/{module_id}/resume", _set_paused(False), methods=["POST"], response_model=ModuleOut,
                  summary="resume the module's schedule (missed times are not back-filled)", name="resume_module")


@api.get("/runs", response_model=RunList, summary="the tenant's runs, newest first")
def list_runs(conn: Connection, who: Tenant,
              module: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
              status: RunStatus | None = None, trigger: Trigger | None = None,
              since: Annotated[IsoDateTime | None, Query(description="created at or after")] = None,
              before: Annotated[int | None, Query(ge=1, le=BIGINT_MAX, description="runs older than this id")] = None,
              limit: Annotated[int, Query(ge=1, le=500)] = 50) -> RunList:
    if since is not None and since.tzinfo is None:
        raise ApiError(422, ErrorCode.INVALID_REQUEST, "since: give a UTC offset, e.g. 2026-10-24T12:00+02:00")
    rows = conn.execute(
        "SELECT * FROM dx.runs WHERE tenant = %(tenant)s"
        " AND (%(module)s::text IS NULL OR module = %(module)s)"
        " AND (%(status)s::text IS NULL OR status = %(status)s)"
        " AND (%(trigger)s::text IS NULL OR trigger = %(trigger)s)"
        " AND (%(since)s::timestamptz IS NULL OR created_at >= %(since)s)"
        " AND (%(before)s::bigint IS NULL OR id < %(before)s)"
        " ORDER BY id DESC LIMIT %(limit)s",
        {"tenant": who.tenant, "module": module, "status": status and status.value,
         "trigger": trigger and trigger.value, "since": since, "before": before, "limit": limit + 1}).fetchall()
    more = len(rows) > limit
    page = rows[:limit]
    return RunList(runs=[_run_out(cast(Run, r)) for r in page], next_before=page[-1]["id"] if more else None)


@api.get("/runs/{run_id}", response_model=RunDetail, summary="one run with its error counts")
def get_one_run(run_id: RunId, conn: Connection, who: Tenant) -> RunDetail:
    run = own_run(conn, who, run_id)
    errors = {e["error_code"]: int(e["n"]) for e in error_counts(conn, run_id)}
    codes = {*errors, *(w["code"] for w in run.get("warnings") or []), *([run["error_code"]] if run["error_code"] else [])}
    read = conn.execute("SELECT coalesce(sum(rows_read), 0)::bigint AS n FROM dx.chunk_results WHERE run_id = %s",
                        (run_id,)).fetchone()
    export = conn.execute("SELECT target_path, bytes, sha256, delivered_at FROM dx.exports WHERE run_id = %s",
                          (run_id,)).fetchone()
    target = ((run.get("definition") or {}).get("module") or {}).get("target") or {}
    return RunDetail(**_run_out(run).model_dump(), chunks_done=chunks_done(conn, run_id), errors=errors,
                     meanings={c: MEANINGS[c] for c in codes if c in MEANINGS},
                     rows_so_far=int(read["n"]) if read else 0, source_bytes=run.get("source_bytes"),
                     export=ExportOut(**export, manifest=bool(target.get("manifest"))) if export else None,
                     failures_url=f"/api/v1/runs/{run_id}/failures.csv")


def _stream_report(run_id: int) -> Iterator[bytes]:
    with db.connect() as conn:  # its own connection: it outlives the request's dependencies
        for text in report_text(conn, run_id):
            yield text.encode("utf-8")


@api.get("/runs/{run_id}/failures.csv", summary="the run's failed operations as CSV (as `dx report`)",
         response_class=StreamingResponse, responses={200: {"content": {"text/csv": {}}}})
def get_failures(run_id: RunId, conn: Connection, who: Tenant) -> StreamingResponse:
    own_run(conn, who, run_id)
    return StreamingResponse(_stream_report(run_id), media_type="text/csv; charset=utf-8",
                             headers={"Content-Disposition": f'attachment; filename="run-{run_id}-failures.csv"'})


def _install_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error(exc.status, exc.code, exc.message, exc.details, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = [{"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()]
        return error(422, ErrorCode.INVALID_REQUEST, "; ".join(f"{d['field']}: {d['message']}" for d in details),
                      details)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        code = {404: ErrorCode.NOT_FOUND, 405: ErrorCode.METHOD_NOT_ALLOWED}.get(exc.status_code,
                                                                                 ErrorCode.INVALID_REQUEST)
        # FastAPI's 400 is a body its JSON parser gave up on (a number too long, nesting too deep):
        # like any other bad body, a 422
        status = 422 if exc.status_code == 400 else exc.status_code
        return error(status, code, str(exc.detail), headers=dict(exc.headers or {}))

    for kind in UNAVAILABLE:
        @app.exception_handler(kind)
        async def unavailable(request: Request, exc: Exception) -> JSONResponse:
            log.warning("http.unavailable", error=str(exc), path=request.url.path)
            return error(503, ErrorCode.SERVICE_UNAVAILABLE, "a service the API needs does not answer; "
                          "try again later", headers={"Retry-After": "5"})

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        log.error("http.failed", path=request.url.path, exc_info=exc)
        return error(500, ErrorCode.SERVER_ERROR, "the API failed unexpectedly; its log says why")


def create_app(settings: Settings | None = None) -> FastAPI:
    """The ASGI application of ``dx serve``."""
    settings = settings or get_settings()
    app = FastAPI(docs_url=None, redoc_url=None,  # the reference page is served below, from this server alone
                  title="DataExchange", version="1", summary="Modules, runs, run-now, schedules, failures.",
                  description="Bearer token per tenant (`dx token create --tenant T`). "
                              "Errors: `{\"error\": {\"code\", \"message\"}}`, codes in docs/error-codes.md.")
    app.include_router(api)
    app.include_router(console_api.edits)
    app.include_router(console_api.console)
    _install_handlers(app)
    observed = metrics.ApiMetrics()
    files, swagger = resources.files("dx.scheduler").joinpath("console"), resources.files("fastapi_offline") / "static"
    pages = {path: (files.joinpath(name).read_bytes(), kind) for path, (name, kind) in CONSOLE.items()}
    pages |= {path: (swagger.joinpath(name).read_bytes(), kind) for path, (name, kind) in SWAGGER.items()}
    pages["/error-codes"] = (error_codes_page(), "text/html; charset=utf-8")

    @app.middleware("http")
    async def access_log(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        start = time.perf_counter()
        response = await call_next(request)
        seconds = time.perf_counter() - start
        route = request.scope.get("route")  # the path's template: ids would make a series each
        observed.observe(request.method, getattr(route, "path", "unmatched"), response.status_code, seconds)
        log.info("http.request", method=request.method, path=request.url.path, status=response.status_code,
                 tenant=getattr(request.state, "tenant", None), duration_ms=round(seconds * 1000, 1))
        return response

    @app.get("/metrics", include_in_schema=False)
    def get_metrics() -> Response:  # a sync route: the scrape's blocking I/O runs in the thread pool
        return Response(generate_latest(observed.registry), media_type=metrics.CONTENT_TYPE)

    @app.get("/healthz", summary="liveness: the process answers and PostgreSQL too")
    def healthz(conn: Connection) -> dict[str, str]:
        conn.execute("SELECT 1")
        return {"status": "ok"}

    for path, (body, kind) in pages.items():
        app.add_api_route(path, _static(body, kind), methods=["GET"], include_in_schema=False,
                          name=f"console {path}")
    app.add_middleware(BodyLimit)
    return app


def error_codes_page() -> bytes:
    """Every error code with its meaning, each row an anchor (``/error-codes#CODE``): the console and the
    report e-mails link there."""
    rows = "\n".join(f'<tr id="{c.value}"><td><code>{c.value}</code></td><td>{c.level.value}</td>'
                     f"<td>{html.escape(c.meaning)}</td></tr>" for c in ErrorCode)
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>DataExchange error codes</title>'
            f'<link rel="stylesheet" href="/console.css"></head><body><main><h1>DataExchange error codes</h1>'
            f"<table><thead><tr><th>code</th><th>level</th><th>meaning</th></tr></thead><tbody>{rows}"
            f"</tbody></table></main></body></html>").encode()


def _static(body: bytes, kind: str) -> Callable[[], Response]:
    """A route answering one fixed file (no parameters: nothing of the request reaches it)."""
    def page() -> Response:
        return Response(body, media_type=kind, headers={"Content-Security-Policy": CONSOLE_CSP,
                                                        "X-Content-Type-Options": "nosniff"})
    return page


def serve(host: str, port: int) -> int:
    """Run the API until SIGTERM/SIGINT (uvicorn's own handlers stop it gracefully)."""
    import uvicorn

    settings = get_settings()
    db.ensure_schema()
    logging.getLogger("pika").setLevel(logging.WARNING)  # pika tells every connection of every scrape at INFO
    uvicorn.run(create_app(settings), host=host, port=port, log_config=None, access_log=False, proxy_headers=False)
    return 0
