"""Bearer tokens of the HTTP API: one tenant each, only their hash stored.

A token is ``dx_`` followed by 256 random bits (URL-safe base64). The database
keeps its SHA-256 and nothing else: with that much entropy a plain hash cannot
be reversed by guessing, so no salt or slow hash is needed, and a lookup by
hash reveals nothing through timing about the token sought. ``dx token create``
prints a token once; it cannot be shown again, only revoked.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import Any

from dx.shared.db import Conn

#: Marks a string as a DataExchange token (secret scanners can look for it).
PREFIX = "dx_"
#: Random bytes per token (256 bits).
TOKEN_BYTES = 32
#: What a token can look like (URL-safe base64 after the prefix; room for longer ones later).
TOKEN_RE = re.compile(re.escape(PREFIX) + r"[A-Za-z0-9_-]{16,200}")
#: How stale ``last_used_at`` may get before a request refreshes it (no write per request).
LAST_USED_RESOLUTION = "1 minute"


@dataclass(frozen=True)
class Principal:
    """Who a valid token speaks for."""

    token_id: int
    tenant: str
    name: str


def new_token() -> str:
    """A fresh random token."""
    return PREFIX + secrets.token_urlsafe(TOKEN_BYTES)


def token_hash(token: str) -> bytes:
    """The stored form of a token: its SHA-256."""
    return hashlib.sha256(token.encode("utf-8")).digest()


def well_formed(token: str) -> bool:
    """Whether the string can be a token at all (spares a database look-up for junk)."""
    return TOKEN_RE.fullmatch(token) is not None


def create_token(conn: Conn, tenant: str, name: str) -> tuple[int, str]:
    """Store a new token of the tenant (caller's transaction); returns (id, token in clear)."""
    token = new_token()
    row = conn.execute("INSERT INTO dx.api_tokens (tenant, name, token_sha256) VALUES (%s, %s, %s) RETURNING id",
                       (tenant, name, token_hash(token))).fetchone()
    assert row is not None
    return int(row["id"]), token


def authenticate(conn: Conn, token: str) -> Principal | None:
    """The tenant a live token belongs to, or None; notes when it was last used."""
    if not well_formed(token):
        return None
    row = conn.execute(
        "SELECT id, tenant, name, coalesce(last_used_at < now() - %s::interval, true) AS stale"
        " FROM dx.api_tokens WHERE token_sha256 = %s AND revoked_at IS NULL",
        (LAST_USED_RESOLUTION, token_hash(token))).fetchone()
    if row is None:
        return None
    if row["stale"]:
        conn.execute("UPDATE dx.api_tokens SET last_used_at = now() WHERE id = %s", (row["id"],))
    return Principal(int(row["id"]), str(row["tenant"]), str(row["name"]))


def list_tokens(conn: Conn, tenant: str | None = None) -> list[dict[str, Any]]:
    """Every token's id, tenant, name and dates (never the hash)."""
    return conn.execute(
        "SELECT id, tenant, name, created_at, last_used_at, revoked_at FROM dx.api_tokens"
        " WHERE %(tenant)s::text IS NULL OR tenant = %(tenant)s ORDER BY tenant, id", {"tenant": tenant}).fetchall()


def revoke_token(conn: Conn, token_id: int) -> bool:
    """Revoke a token now; False if there is no such live token."""
    row = conn.execute("UPDATE dx.api_tokens SET revoked_at = now() WHERE id = %s AND revoked_at IS NULL"
                       " RETURNING id", (token_id,)).fetchone()
    return row is not None
