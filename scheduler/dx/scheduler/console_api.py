"""The console's own routes: sign-in and sign-out, and the changes a client makes to a module.

``/console/session`` signs a console user in (a session cookie: HttpOnly, SameSite=Strict, Secure
behind HTTPS) and out. Under ``/api/v1`` (a token or a session; changes need an operator):
a module's schedule and its notifications are replaced, each validated as ``dx apply`` validates
them, recorded in the audit log (who, when, before, after) and in the module's ``console_changes``,
which the next ``dx apply`` must either match or discard explicitly (``dx.shared.catalog``). A draft
schedule's next fire times are previewed without saving it.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Request, Response
from psycopg.types.json import Jsonb
from pydantic import BaseModel, Field, ValidationError

from dx.scheduler import users
from dx.scheduler.api_base import (
    SESSION_COOKIE,
    ApiError,
    Connection,
    ModuleId,
    Operator,
    Tenant,
    Text,
    Who,
    not_found,
)
from dx.scheduler.clock import Clock
from dx.scheduler.schedule import upcoming
from dx.shared import messages
from dx.shared.catalog import module_rows
from dx.shared.config import Address, ModuleCfg, ScheduleCfg
from dx.shared.db import Conn
from dx.shared.errors import ErrorCode
from dx.shared.settings import get_settings

#: Fire times a preview shows.
PREVIEW_FIRES = 10
#: How long a check's request waits for a worker's answer.
CHECK_WAIT_S = 60


class SignIn(BaseModel):
    model_config = {"extra": "forbid"}
    username: Text = Field(pattern=f"^{users.USERNAME_RE.pattern}$")
    password: Text = Field(min_length=1, max_length=1000)


class SessionOut(BaseModel):
    """The signed-in user, and the token its changes send in X-CSRF-Token."""

    username: str
    tenant: str
    role: Literal["viewer", "operator"]
    csrf: str


class ScheduleIn(BaseModel):
    model_config = {"extra": "forbid"}
    schedule: dict[str, Any] | None = Field(description="as in the YAML's `schedule:`; null: no schedule")


class PreviewOut(BaseModel):
    """A schedule's next fire times, in its time zone."""

    timezone: str
    fires: list[datetime]


class NotificationsIn(BaseModel):
    model_config = {"extra": "forbid"}
    notify: list[Address] = Field(max_length=50, description="the module's own recipients (the tenant's too)")
    notify_on: Literal["always", "errors", "failures"] = Field(
        description="always: every run; errors: failed runs and runs with failed records; failures: failed runs")


class AuditEntry(BaseModel):
    actor: str
    action: str
    before: Any
    after: Any
    at: datetime


class AuditOut(BaseModel):
    entries: list[AuditEntry]


console = APIRouter(prefix="/console", tags=["console"])
edits = APIRouter(prefix="/api/v1", tags=["console"])


def _secure(request: Request) -> bool:
    """Whether the cookie gets Secure: the request came over HTTPS, or the public URL is HTTPS."""
    public = get_settings().public_url or ""
    return request.url.scheme == "https" or public.startswith("https://")


@console.post("/session", response_model=SessionOut, summary="sign a console user in (sets the session cookie)",
              responses={401: {"description": "wrong username or password"}, 429: {"description": "too many tries"}})
def sign_in(body: SignIn, request: Request, response: Response, conn: Connection) -> SessionOut:
    address = request.client.host if request.client else "unknown"
    try:
        signed = users.sign_in(conn, body.username, body.password, address)
    except users.TooManyAttempts as exc:
        raise ApiError(429, ErrorCode.TOO_MANY_ATTEMPTS, str(exc), headers={"Retry-After": "900"}) from None
    finally:
        conn.commit()  # a failure counts even though the answer is an error
    if signed is None:
        raise ApiError(401, ErrorCode.SIGN_IN_FAILED, "wrong username or password")
    token, user = signed
    response.set_cookie(SESSION_COOKIE, token, max_age=users.SESSION_HOURS * 3600, path="/", httponly=True,
                        samesite="strict", secure=_secure(request))
    return SessionOut(username=user.username, tenant=user.tenant, role=user.role, csrf=user.csrf)  # type: ignore[arg-type]


@console.get("/session", response_model=SessionOut, summary="the signed-in user (401 if none)")
def current(request: Request, conn: Connection) -> SessionOut:
    user = users.session_user(conn, request.cookies.get(SESSION_COOKIE, ""))
    if user is None:
        raise ApiError(401, ErrorCode.UNAUTHENTICATED, "not signed in")
    return SessionOut(username=user.username, tenant=user.tenant, role=user.role, csrf=user.csrf)  # type: ignore[arg-type]


@console.delete("/session", status_code=204, summary="sign out (ends the session)")
def sign_out(request: Request, who: Tenant, conn: Connection) -> Response:
    users.sign_out(conn, request.cookies.get(SESSION_COOKIE, ""))
    answer = Response(status_code=204)
    answer.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict", secure=_secure(request))
    return answer


def _module(conn: Conn, who: Who, module_id: str) -> dict[str, Any]:
    rows = module_rows(conn, tenant=who.tenant, module=module_id)
    if not rows:
        raise not_found("module", module_id)
    return rows[0]


def _invalid(exc: ValidationError, prefix: str) -> ApiError:
    """A 422 naming each field (``schedule.times.0``) and what is wrong with it."""
    details = [{"field": ".".join([prefix, *(str(p) for p in e["loc"])]).strip("."), "message": e["msg"]}
               for e in exc.errors()]
    return ApiError(422, ErrorCode.INVALID_REQUEST, "; ".join(f"{d['field']}: {d['message']}" for d in details),
                    details=details)


def _schedule(raw: dict[str, Any]) -> ScheduleCfg:
    try:
        return ScheduleCfg.model_validate(raw)
    except ValidationError as exc:
        raise _invalid(exc, "schedule") from None


def _change(conn: Conn, who: Who, row: dict[str, Any], action: str, changes: dict[str, Any]) -> None:
    """Replace top-level keys of the module's config, checked as `dx apply` checks a module; audited."""
    config = {**row["config"], **changes}
    try:
        ModuleCfg.model_validate(config)
    except ValidationError as exc:
        raise _invalid(exc, "") from None
    before = {k: row["config"].get(k) for k in changes}
    now = Clock.from_settings().now().isoformat()
    noted = {k: {"value": v, "by": who.name, "at": now} for k, v in changes.items()}
    with conn.transaction():
        conn.execute("UPDATE dx.modules SET config = %s, console_changes = console_changes || %s, updated_at = now()"
                     " WHERE id = %s AND tenant = %s", (Jsonb(config), Jsonb(noted), row["id"], who.tenant))
        users.audit(conn, who.tenant, row["id"], who.name, action, before, changes)


@edits.put("/modules/{module_id}/schedule", response_model=PreviewOut,
           summary="replace the module's schedule (checked as `dx apply` checks it); its next fire times")
def put_schedule(module_id: ModuleId, body: ScheduleIn, conn: Connection, who: Operator) -> PreviewOut:
    row = _module(conn, who, module_id)
    schedule = None if body.schedule is None else _schedule(body.schedule)
    _change(conn, who, row, "schedule", {"schedule": None if schedule is None else schedule.model_dump(mode="json")})
    return _preview(schedule, row["tenant_timezone"])


@edits.post("/modules/{module_id}/schedule/preview", response_model=PreviewOut,
            summary="the next 10 fire times of a draft schedule (nothing is saved)")
def preview_schedule(module_id: ModuleId, conn: Connection, who: Tenant,
                     schedule: Annotated[dict[str, Any], Body(embed=True)]) -> PreviewOut:
    row = _module(conn, who, module_id)
    return _preview(_schedule(schedule), row["tenant_timezone"])


def _preview(schedule: ScheduleCfg | None, tenant_timezone: str | None) -> PreviewOut:
    if schedule is None:
        return PreviewOut(timezone=tenant_timezone or "UTC", fires=[])
    config = {"schedule": schedule.model_dump(mode="json")}
    return PreviewOut(timezone=schedule.zone(tenant_timezone),
                      fires=upcoming(config, Clock.from_settings().now(), PREVIEW_FIRES, tenant_timezone))


@edits.put("/modules/{module_id}/notifications", response_model=NotificationsIn,
           summary="replace the module's e-mail recipients and when they are written to")
def put_notifications(module_id: ModuleId, body: NotificationsIn, conn: Connection, who: Operator) -> NotificationsIn:
    row = _module(conn, who, module_id)
    _change(conn, who, row, "notifications", {"notify": list(body.notify), "notify_on": body.notify_on})
    return body


class CheckOut(BaseModel):
    """A worker's answer to "Test connection" or "Preview"."""

    ok: bool
    code: str | None = Field(None, description="the error code when not ok")
    message: str
    files: list[dict[str, Any]] = Field([], description="connection: path, size_bytes, mtime, imported")
    columns: list[str] = []
    file: dict[str, Any] | None = Field(None, description="preview: the file the next run would take")
    records: list[dict[str, Any]] = Field([], description="preview: row, values, and the code it would fail with")


@edits.post("/modules/{module_id}/checks/{kind}", response_model=CheckOut,
            summary="test the module's connection, or preview its next file's first records (writes nothing)",
            responses={504: {"description": "no worker answered in time"}})
def run_check(module_id: ModuleId, kind: Literal["connection", "preview"], conn: Connection, who: Tenant) -> CheckOut:
    _module(conn, who, module_id)
    row = conn.execute("INSERT INTO dx.checks (tenant, module, kind, requested_by) VALUES (%s, %s, %s, %s)"
                       " RETURNING id", (who.tenant, module_id, kind, who.name)).fetchone()
    assert row is not None
    conn.commit()  # the row first: a worker that finds none drops the message
    messages.send(messages.CHECK, check_id=row["id"])
    deadline = time.monotonic() + CHECK_WAIT_S
    while time.monotonic() < deadline:
        done = conn.execute("SELECT result FROM dx.checks WHERE id = %s AND finished_at IS NOT NULL",
                            (row["id"],)).fetchone()
        conn.commit()
        if done is not None:
            return CheckOut.model_validate(done["result"])
        time.sleep(0.2)
    raise ApiError(504, ErrorCode.CHECK_TIMED_OUT, f"no worker answered within {CHECK_WAIT_S} s: are workers running?")


@edits.get("/modules/{module_id}/audit", response_model=AuditOut, summary="the module's console changes, newest first")
def get_audit(module_id: ModuleId, conn: Connection, who: Tenant) -> AuditOut:
    _module(conn, who, module_id)
    return AuditOut(entries=[AuditEntry(**e) for e in users.audit_log(conn, who.tenant, module_id)])

