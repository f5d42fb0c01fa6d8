"""What every route of ``dx serve`` shares: errors with codes, the request's connection, and who asks.

A request speaks for a tenant through a bearer token (machines: ``dx token create``, with the
operator's rights) or through the console's session cookie (people: ``dx user create``, with their
role). A change made with the cookie must carry the session's CSRF token in ``X-CSRF-Token`` (a
page of another site can make the browser send the cookie, not read the token); the cookie is
also SameSite=Strict. A viewer's change is refused with 403, whatever the page shows.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Path, Request
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer

from dx.scheduler import users
from dx.scheduler.tokens import authenticate
from dx.shared import db
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
ModuleId = Annotated[str, Path(min_length=1, max_length=200)]


def own_run(conn: Conn, who: Who, run_id: int) -> Run:
    """The tenant's run; 404 if missing or another tenant's."""
    run = get_run(conn, run_id)
    if run is None or run["tenant"] != who.tenant:
        raise not_found("run", run_id)
    return run
