"""The console's users, their sessions, the sign-in rate limit and the audit log.

A user belongs to one tenant and has a role: ``viewer`` reads, ``operator`` also runs, pauses and
edits. Passwords are hashed with Argon2id (argon2-cffi's defaults, rehashed on sign-in when those
change). A session is a random cookie value of which only the SHA-256 is stored, with the CSRF token
that every change made through it must echo; it lasts ``SESSION_HOURS``. Failed sign-ins are kept
for ``WINDOW``: past ``MAX_PER_USER`` for one username, or ``MAX_PER_ADDRESS`` from one address,
sign-in is refused for the rest of the window without checking the password.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from psycopg.types.json import Jsonb

from dx.shared.db import Conn

ROLES = ("viewer", "operator")
#: A session's life.
SESSION_HOURS = 12
#: Failed sign-ins counted over this window, per username and per address.
WINDOW = "15 minutes"
MAX_PER_USER, MAX_PER_ADDRESS = 5, 30
#: Shortest password accepted.
MIN_PASSWORD = 12
#: A username: an e-mail address or a plain login name.
USERNAME_RE = re.compile(r"[A-Za-z0-9._%+@-]{3,200}")

_hasher = PasswordHasher()
#: Verified against when the username is unknown, so that both cases take the same time.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


class TooManyAttempts(Exception):
    """Sign-in refused for now: too many failures for this username or from this address."""


@dataclass(frozen=True)
class SessionUser:
    """Who a live session speaks for."""

    user_id: int
    username: str
    tenant: str
    role: str
    csrf: str


def _sha256(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8")).digest()


def check_new_user(username: str, role: str, password: str) -> list[str]:
    """What is wrong with a new user's username, role and password (empty: nothing)."""
    problems = []
    if not USERNAME_RE.fullmatch(username):
        problems.append("username: 3 to 200 letters, digits or . _ % + @ -")
    if role not in ROLES:
        problems.append(f"role: one of {', '.join(ROLES)}")
    if len(password) < MIN_PASSWORD:
        problems.append(f"password: at least {MIN_PASSWORD} characters")
    return problems


def create_user(conn: Conn, tenant: str, username: str, role: str, password: str) -> int:
    """Store a new user of the tenant (caller's transaction); its id. The caller checked the values."""
    row = conn.execute("INSERT INTO dx.users (tenant, username, role, password_hash) VALUES (%s, %s, %s, %s)"
                       " RETURNING id", (tenant, username, role, _hasher.hash(password))).fetchone()
    assert row is not None
    return int(row["id"])


def list_users(conn: Conn, tenant: str | None = None) -> list[dict[str, Any]]:
    """Every user's id, tenant, name, role and dates (never the hash)."""
    return conn.execute(
        "SELECT id, tenant, username, role, created_at, last_login_at, disabled_at FROM dx.users"
        " WHERE %(tenant)s::text IS NULL OR tenant = %(tenant)s ORDER BY tenant, username",
        {"tenant": tenant}).fetchall()


def disable_user(conn: Conn, username: str) -> bool:
    """Disable a user and end its sessions; False if there is no such enabled user."""
    row = conn.execute("UPDATE dx.users SET disabled_at = now() WHERE username = %s AND disabled_at IS NULL"
                       " RETURNING id", (username,)).fetchone()
    if row is None:
        return False
    conn.execute("DELETE FROM dx.sessions WHERE user_id = %s", (row["id"],))
    return True


def sign_in(conn: Conn, username: str, password: str, address: str) -> tuple[str, SessionUser] | None:
    """A new session (cookie value, user) for a right password of an enabled user of an enabled tenant;
    None otherwise. TooManyAttempts past the limit, before the password is looked at."""
    counts = conn.execute(
        "SELECT count(*) FILTER (WHERE username = %(u)s) AS by_user, count(*) FILTER (WHERE address = %(a)s) AS by_address"
        " FROM dx.sign_in_failures WHERE at > now() - %(w)s::interval AND (username = %(u)s OR address = %(a)s)",
        {"u": username, "a": address, "w": WINDOW}).fetchone()
    assert counts is not None
    if counts["by_user"] >= MAX_PER_USER or counts["by_address"] >= MAX_PER_ADDRESS:
        raise TooManyAttempts(f"too many failed sign-ins: try again in {WINDOW}")
    user = conn.execute("SELECT u.id, u.username, u.tenant, u.role, u.password_hash FROM dx.users u"
                        " JOIN dx.tenants t ON t.id = u.tenant WHERE u.username = %s AND u.disabled_at IS NULL"
                        " AND t.enabled", (username,)).fetchone()
    try:
        _hasher.verify(user["password_hash"] if user else _DUMMY_HASH, password)
        valid = user is not None
    except (VerificationError, InvalidHashError):
        valid = False
    if not valid or user is None:
        conn.execute("INSERT INTO dx.sign_in_failures (username, address) VALUES (%s, %s)", (username, address))
        return None
    if _hasher.check_needs_rehash(user["password_hash"]):
        conn.execute("UPDATE dx.users SET password_hash = %s WHERE id = %s", (_hasher.hash(password), user["id"]))
    conn.execute("DELETE FROM dx.sign_in_failures WHERE username = %s", (username,))
    conn.execute("UPDATE dx.users SET last_login_at = now() WHERE id = %s", (user["id"],))
    token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    conn.execute("INSERT INTO dx.sessions (token_sha256, user_id, csrf, expires_at)"
                 " VALUES (%s, %s, %s, now() + make_interval(hours => %s))",
                 (_sha256(token), user["id"], csrf, SESSION_HOURS))
    return token, SessionUser(int(user["id"]), user["username"], user["tenant"], user["role"], csrf)


def session_user(conn: Conn, token: str) -> SessionUser | None:
    """The user of a live session of an enabled user and tenant, or None."""
    if not 16 <= len(token) <= 200:
        return None
    row = conn.execute(
        "SELECT u.id, u.username, u.tenant, u.role, s.csrf FROM dx.sessions s JOIN dx.users u ON u.id = s.user_id"
        " JOIN dx.tenants t ON t.id = u.tenant WHERE s.token_sha256 = %s AND s.expires_at > now()"
        " AND u.disabled_at IS NULL AND t.enabled", (_sha256(token),)).fetchone()
    if row is None:
        return None
    return SessionUser(int(row["id"]), row["username"], row["tenant"], row["role"], row["csrf"])


def sign_out(conn: Conn, token: str) -> None:
    """End the session (nothing if there is none)."""
    conn.execute("DELETE FROM dx.sessions WHERE token_sha256 = %s", (_sha256(token),))


def audit(conn: Conn, tenant: str, module: str | None, actor: str, action: str, before: Any, after: Any) -> None:
    """Record a change made in the console (caller's transaction)."""
    conn.execute("INSERT INTO dx.audit (tenant, module, actor, action, before, after) VALUES (%s, %s, %s, %s, %s, %s)",
                 (tenant, module, actor, action, Jsonb(before), Jsonb(after)))


def audit_log(conn: Conn, tenant: str, module: str, limit: int = 50) -> list[dict[str, Any]]:
    """A module's latest console changes, newest first."""
    return conn.execute("SELECT actor, action, before, after, at FROM dx.audit WHERE tenant = %s AND module = %s"
                        " ORDER BY id DESC LIMIT %s", (tenant, module, limit)).fetchall()
