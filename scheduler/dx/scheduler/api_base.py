"""What every route of ``dx serve`` shares: errors with codes, the request's connection, and who asks.

A request speaks for a tenant through a bearer token (machines: ``dx token create``, with the
operator's rights) or through the console's session cookie (people: ``dx user create``, with their
role). A change made with the cookie must carry the session's CSRF token in ``X-CSRF-Token`` (a
page of another site can make the browser send the cookie, not read the token); the cookie is
also SameSite=Strict. A viewer's change is refused with 403, whatever the page shows.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, Path, Request
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AfterValidator, BeforeValidator

from dx.scheduler import users
from dx.scheduler.tokens import authenticate
from dx.shared import db
from dx.shared.config import ID_PATTERN
from dx.shared.db import Conn
from dx.shared.errors import ErrorCode
from dx.shared.runs import Run, get_run

#: The console session's cookie.
SESSION_COOKIE = "dx_session"
#: The header a change made with the session cookie carries its CSRF token in.
CSRF_HEADER = "X-CSRF-Token"
#: Methods that change nothing (no CSRF token needed).
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


class ApiError(Exception):
    """An HTTP error with a stable code."""

    def __init__(self, status: int, code: ErrorCode, message: str, headers: dict[str, str] | None = None,
                 details: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers, self.details = status, code, message, headers, details


def error(status: int, code: ErrorCode, message: str, details: list[dict[str, str]] | None = None,
          headers: dict[str, str] | None = None) -> JSONResponse:
    """The JSON answer of an error: ``{"error": {"code", "message", "details"?}}``."""
    body: dict[str, Any] = {"code": code.value, "message": message}
    if details is not None:
        body["details"] = details
    if status == 401:
        headers = {**(headers or {}), "WWW-Authenticate": 'Bearer realm="dx"'}
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def not_found(what: str, ident: object) -> ApiError:
    return ApiError(404, ErrorCode.NOT_FOUND, f"no {what} {ident!r}")


def connection() -> Iterator[Conn]:
    """One database connection per request (committed at the end)."""
    with db.connect() as conn:
        yield conn


Connection = Annotated[Conn, Depends(connection)]
bearer = HTTPBearer(auto_error=False, description="a tenant's token, from `dx token create --tenant T`")
session_cookie = APIKeyCookie(name=SESSION_COOKIE, auto_error=False,
                              description="the console's session (sign in at POST /console/session)")


@dataclass(frozen=True)
class Who:
    """Whom a request speaks for: the tenant, a name for logs and audits, the role."""

    tenant: str
    name: str
    role: str

    @property
    def operator(self) -> bool:
        return self.role == "operator"


def principal(request: Request, conn: Connection,
              credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
              cookie: Annotated[str | None, Depends(session_cookie)]) -> Who:
    """The tenant of the request's bearer token, or of its console session; 401 otherwise."""
    if credentials is not None:
        token = authenticate(conn, credentials.credentials)
        conn.commit()  # its last-used time, whatever the route does next
        if token is None:
            raise ApiError(401, ErrorCode.UNAUTHENTICATED, "the bearer token is unknown or revoked")
        who = Who(token.tenant, f"token:{token.name}", "operator")
    elif cookie is not None:
        user = users.session_user(conn, cookie)
        if user is None:
            raise ApiError(401, ErrorCode.UNAUTHENTICATED, "the console session ended: sign in again")
        if request.method not in SAFE_METHODS and not hmac.compare_digest(
                request.headers.get(CSRF_HEADER, ""), user.csrf):
            raise ApiError(403, ErrorCode.CSRF_FAILED, f"send the session's CSRF token in {CSRF_HEADER}")
        who = Who(user.tenant, f"user:{user.username}", user.role)
    else:
        raise ApiError(401, ErrorCode.UNAUTHENTICATED, "send a tenant's token: Authorization: Bearer dx_...")
    request.state.tenant = who.tenant
    return who


Tenant = Annotated[Who, Depends(principal)]


def operator(who: Tenant) -> Who:
    """The asker, if it may change things (a token, or an operator's session); 403 for a viewer."""
    if not who.operator:
        raise ApiError(403, ErrorCode.FORBIDDEN, "your role is viewer: you can read, not change; ask an operator")
    return who


Operator = Annotated[Who, Depends(operator)]
#: The largest id PostgreSQL's bigint holds: a run id past it is no id at all (422, not a database error).
BIGINT_MAX = 2**63 - 1
#: A module id, as `dx apply` accepts them: anything else is refused before it reaches the database.
ModuleId = Annotated[str, Path(pattern=ID_PATTERN)]
RunId = Annotated[int, Path(ge=1, le=BIGINT_MAX)]
#: Characters no text of a request may hold: PostgreSQL's text cannot store NUL, and the others are
#: never part of a name, an id or an address.
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: An ISO 8601 date-time: a date first (a bare number is not a time, whatever pydantic's lax mode makes of it).
ISO_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}([T ].*)?$")


def _plain_text(value: str) -> str:
    """Refuse control characters and lone surrogates (which no database or hash can encode)."""
    if CONTROL.search(value):
        raise ValueError("control characters (such as NUL) are not accepted")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("not valid Unicode text (a lone surrogate)") from None
    return value


def _iso_datetime(value: object) -> datetime:
    """An ISO 8601 date-time whose instant is in the calendar (year 1 to 9999 in UTC too)."""
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not ISO_DATETIME.match(value):
        raise ValueError("expected an ISO 8601 date-time, e.g. 2026-10-24T12:00+02:00")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ValueError(f"not a valid date-time: {exc}") from None
    if parsed.tzinfo is not None:
        try:
            parsed.astimezone(UTC)
        except OverflowError:
            raise ValueError("out of range: in UTC it falls before year 1 or after year 9999") from None
    return parsed


#: Text of a request (a body's string, a query's name): no control character, valid Unicode.
Text = Annotated[str, AfterValidator(_plain_text)]
#: A date-time parameter: ISO 8601 only (``1700000000`` is refused, not read as seconds since 1970).
IsoDateTime = Annotated[datetime, BeforeValidator(_iso_datetime)]


def own_run(conn: Conn, who: Who, run_id: int) -> Run:
    """The tenant's run; 404 if missing or another tenant's."""
    run = get_run(conn, run_id)
    if run is None or run["tenant"] != who.tenant:
        raise not_found("run", run_id)
    return run
