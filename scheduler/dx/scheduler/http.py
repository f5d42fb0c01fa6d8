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
from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import generate_latest
from starlette.exceptions import HTTPException

from dx.scheduler import metrics
from dx.scheduler.clock import Clock
from dx.scheduler.http_models import (
    ErrorOut,
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
from dx.scheduler.tokens import Principal, authenticate
from dx.shared import db
from dx.shared.catalog import module_rows
from dx.shared.db import Conn
from dx.shared.errors import ErrorCode, RetriableError
from dx.shared.report import report_text
from dx.shared.runs import Run, RunStatus, Trigger, chunks_done, error_counts, get_run
from dx.shared.settings import Settings, get_settings

log = structlog.get_logger(__name__)
#: The console's files and the API's reference page, served as they are.
CONSOLE = {"/": ("index.html", "text/html; charset=utf-8"),
           "/console.js": ("console.js", "text/javascript; charset=utf-8"),
           "/docs": ("docs.html", "text/html; charset=utf-8"),
           "/docs/docs.js": ("docs.js", "text/javascript; charset=utf-8")}
#: Swagger UI's files for the reference page, from the fastapi-offline package: nothing from another host.
SWAGGER = {"/docs/swagger-ui-bundle.js": ("swagger-ui-bundle.js", "text/javascript; charset=utf-8"),
           "/docs/swagger-ui.css": ("swagger-ui.css", "text/css; charset=utf-8")}
#: The console runs no script but its own file and talks only to this server.
CONSOLE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; connect-src 'self'; "
               "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
#: Failures that mean a service is down: answer 503, the client may retry.
UNAVAILABLE = (RetriableError, psycopg.OperationalError, pika.exceptions.AMQPError, dramatiq.errors.BrokerError)
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "missing, unknown or revoked token"},
    404: {"model": ErrorOut, "description": "no such module or run for this tenant"},
    422: {"model": ErrorOut, "description": "invalid parameter or body"},
}


class ApiError(Exception):
    """An HTTP error with a stable code."""

    def __init__(self, status: int, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _error(status: int, code: ErrorCode, message: str, details: list[dict[str, str]] | None = None,
           headers: dict[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"code": code.value, "message": message}
    if details is not None:
        body["details"] = details
    if status == 401:
        headers = {**(headers or {}), "WWW-Authenticate": 'Bearer realm="dx"'}
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def _not_found(what: str, ident: object) -> ApiError:
    return ApiError(404, ErrorCode.NOT_FOUND, f"no {what} {ident!r}")


def connection() -> Iterator[Conn]:
    """One database connection per request (committed at the end)."""
    with db.connect() as conn:
        yield conn


Connection = Annotated[Conn, Depends(connection)]
bearer = HTTPBearer(auto_error=False, description="a tenant's token, from `dx token create --tenant T`")


def principal(request: Request, conn: Connection,
              credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Principal:
    """The tenant the request's bearer token belongs to; 401 otherwise."""
    if credentials is None:
        raise ApiError(401, ErrorCode.UNAUTHENTICATED, "send a tenant's token: Authorization: Bearer dx_...")
    who = authenticate(conn, credentials.credentials)
    conn.commit()  # its last-used time, whatever the route does next
    if who is None:
        raise ApiError(401, ErrorCode.UNAUTHENTICATED, "the bearer token is unknown or revoked")
    request.state.tenant = who.tenant
    return who


Tenant = Annotated[Principal, Depends(principal)]
ModuleId = Annotated[str, Path(min_length=1, max_length=200)]


def _run_out(run: Run) -> RunOut:
    return RunOut.model_validate(run)


def _module_out(row: dict[str, Any], now: datetime, detail: bool = False) -> ModuleOut:
    last = None if row["last_run"] is None else {
        "id": row["last_run"], "status": row["last_status"], "finished_at": row["last_finished"]}
    doc = {"id": row["id"], "kind": row["kind"], "mode": row["mode"], "database": row["database"],
           "paused": row["paused"], "schedule": row["config"].get("schedule"),
           "next_fire": next_fire(row["config"], now, row["tenant_timezone"]), "last_run": last}
    return ModuleDetail(**doc, config=row["config"]) if detail else ModuleOut(**doc)


def _own_module(conn: Conn, who: Principal, module_id: str) -> dict[str, Any]:
    rows = module_rows(conn, tenant=who.tenant, module=module_id)
    if not rows:
        raise _not_found("module", module_id)
    return rows[0]


def _own_run(conn: Conn, who: Principal, run_id: int) -> Run:
    run = get_run(conn, run_id)
    if run is None or run["tenant"] != who.tenant:
        raise _not_found("run", run_id)
    return run


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
                 from_: Annotated[datetime | None, Query(alias="from", description="count from this time "
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
def run_now(module_id: ModuleId, response: Response, conn: Connection, who: Tenant,
            body: RunNowIn | None = None) -> RunOut:
    body = body or RunNowIn()
    try:
        run_id = request_run(module_id, Trigger.HTTP, body.requested_by or f"token:{who.name}",
                             tenant=who.tenant, request_id=body.request_id)
    except UnknownModule:
        raise _not_found("module", module_id) from None
    except (TenantDisabled, RequestIdReused) as exc:
        raise ApiError(409, exc.code, exc.message) from None
    run = _own_run(conn, who, run_id)
    response.headers["Location"] = f"/api/v1/runs/{run_id}"
    return _run_out(run)


def _set_paused(paused: bool) -> Callable[..., ModuleOut]:
    def route(module_id: ModuleId, conn: Connection, who: Tenant) -> ModuleOut:
        with conn.transaction():
            try:
                module_tenant(conn, module_id, who.tenant)
            except UnknownModule:
                raise _not_found("module", module_id) from None
            set_paused(conn, module_id, paused, Clock.from_settings().now())
        return _module_out(_own_module(conn, who, module_id), Clock.from_settings().now())
    return route


api.add_api_route("/modules/{module_id}/pause", _set_paused(True), methods=["POST"], response_model=ModuleOut,
                  summary="pause the module's schedule (run-now still works)", name="pause_module")
api.add_api_route("/modules/{module_id}/resume", _set_paused(False), methods=["POST"], response_model=ModuleOut,
                  summary="resume the module's schedule (missed times are not back-filled)", name="resume_module")


@api.get("/runs", response_model=RunList, summary="the tenant's runs, newest first")
def list_runs(conn: Connection, who: Tenant,
              module: Annotated[str | None, Query(max_length=200)] = None,
              status: RunStatus | None = None, trigger: Trigger | None = None,
              since: Annotated[datetime | None, Query(description="created at or after")] = None,
              before: Annotated[int | None, Query(ge=1, description="runs older than this id")] = None,
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
def get_one_run(run_id: Annotated[int, Path(ge=1)], conn: Connection, who: Tenant) -> RunDetail:
    run = _own_run(conn, who, run_id)
    return RunDetail(**_run_out(run).model_dump(), chunks_done=chunks_done(conn, run_id),
                     errors={e["error_code"]: int(e["n"]) for e in error_counts(conn, run_id)},
                     failures_url=f"/api/v1/runs/{run_id}/failures.csv")


def _stream_report(run_id: int) -> Iterator[bytes]:
    with db.connect() as conn:  # its own connection: it outlives the request's dependencies
        for text in report_text(conn, run_id):
            yield text.encode("utf-8")


@api.get("/runs/{run_id}/failures.csv", summary="the run's failed operations as CSV (as `dx report`)",
         response_class=StreamingResponse, responses={200: {"content": {"text/csv": {}}}})
def get_failures(run_id: Annotated[int, Path(ge=1)], conn: Connection, who: Tenant) -> StreamingResponse:
    _own_run(conn, who, run_id)
    return StreamingResponse(_stream_report(run_id), media_type="text/csv; charset=utf-8",
                             headers={"Content-Disposition": f'attachment; filename="run-{run_id}-failures.csv"'})


def _install_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = [{"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()]
        return _error(422, ErrorCode.INVALID_REQUEST, "; ".join(f"{d['field']}: {d['message']}" for d in details),
                      details)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        code = {404: ErrorCode.NOT_FOUND, 405: ErrorCode.METHOD_NOT_ALLOWED}.get(exc.status_code,
                                                                                 ErrorCode.INVALID_REQUEST)
        return _error(exc.status_code, code, str(exc.detail), headers=dict(exc.headers or {}))

    for kind in UNAVAILABLE:
        @app.exception_handler(kind)
        async def unavailable(request: Request, exc: Exception) -> JSONResponse:
            log.warning("http.unavailable", error=str(exc), path=request.url.path)
            return _error(503, ErrorCode.SERVICE_UNAVAILABLE, "a service the API needs does not answer; "
                          "try again later", headers={"Retry-After": "5"})

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        log.error("http.failed", path=request.url.path, exc_info=exc)
        return _error(500, ErrorCode.SERVER_ERROR, "the API failed unexpectedly; its log says why")


def create_app(settings: Settings | None = None) -> FastAPI:
    """The ASGI application of ``dx serve``."""
    settings = settings or get_settings()
    app = FastAPI(docs_url=None, redoc_url=None,  # the reference page is served below, from this server alone
                  title="DataExchange", version="1", summary="Modules, runs, run-now, schedules, failures.",
                  description="Bearer token per tenant (`dx token create --tenant T`). "
                              "Errors: `{\"error\": {\"code\", \"message\"}}`, codes in docs/error-codes.md.")
    app.include_router(api)
    _install_handlers(app)
    observed = metrics.ApiMetrics()
    files, swagger = resources.files("dx.scheduler").joinpath("console"), resources.files("fastapi_offline") / "static"
    pages = {path: (files.joinpath(name).read_bytes(), kind) for path, (name, kind) in CONSOLE.items()}
    pages |= {path: (swagger.joinpath(name).read_bytes(), kind) for path, (name, kind) in SWAGGER.items()}

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
