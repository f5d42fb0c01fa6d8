"""The client's PostgreSQL as a source: a table or a read-only query, as CSV.

``PostgresSource`` is its ``dx.shared.connections.SourceDatabase``.
The rows are streamed with ``COPY (SELECT …) TO STDOUT (FORMAT csv, HEADER)``
into a staged file, which then takes the path of any CSV source (parsed in
bounded batches, partitioned, validated, applied): nothing of the client's
table is held in memory, and the server formats, quotes and escapes.

Safety: the query runs in a READ ONLY, REPEATABLE READ transaction (a write,
even one hidden in a function, is refused by the server) with the source's
``statement_timeout``; the table name and watermark column are quoted
identifiers. The password comes from a ``${ENV_VAR}`` reference, read now and
never logged. Give the connection's role SELECT only: read-only is a second
line, not the first.

Incremental reads: with a ``watermark`` column, only rows whose value is
greater than the last delivered one are read, in watermark order; the same
snapshot gives the new high value, which the control database adopts only
when the run completes (see ``dx.workers.imports.source_query``).
"""

from __future__ import annotations

import math
from typing import IO

import psycopg
from psycopg import sql
from psycopg.errors import QueryCanceled

from dx.shared.config import ConnectionCfg, SourceCfg
from dx.shared.connections import resolve_secret
from dx.shared.errors import ErrorCode, RetriableError, RunError

#: SQLSTATEs of a refused login: invalid_password, invalid_authorization_specification.
AUTH_SQLSTATES = ("28P01", "28000")
#: Type OID of timestamptz: sent as UTC without offset, the form the validator reads by default.
TIMESTAMPTZ_OID = 1184
#: Alias of the table or query inside the statements we build.
SOURCE_ALIAS = sql.Identifier("dx_source")


def connect(cfg: ConnectionCfg) -> psycopg.Connection:
    """A connection to the client's database; CONNECTION_FAILED or AUTHENTICATION_FAILED."""
    where = f"{cfg.host}:{cfg.port}/{cfg.dbname}"
    try:
        return psycopg.connect(host=cfg.host, port=cfg.port, dbname=cfg.dbname, user=cfg.username,
                               password=resolve_secret(cfg.password), sslmode=cfg.sslmode,
                               connect_timeout=max(1, math.ceil(cfg.timeout_s)), application_name="dataexchange")
    except psycopg.OperationalError as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if exc.sqlstate in AUTH_SQLSTATES or "authentication failed" in text:
            raise RunError(ErrorCode.AUTHENTICATION_FAILED,
                           f"{where} refused user {cfg.username!r}: check the secret the connection names") from None
        raise RunError(ErrorCode.CONNECTION_FAILED, f"{where} is not reachable: {text}") from None


class PostgresSource:
    """The client's PostgreSQL as a ``SourceDatabase``."""

    def __init__(self, cfg: ConnectionCfg) -> None:
        self.conn = connect(cfg)

    def copy_rows(self, src: SourceCfg, since: str | None, out: IO[bytes]) -> str | None:
        """Write the rows as CSV with a header to ``out``; returns the highest watermark value among them."""
        return copy_rows(self.conn, src, since, out)

    def close(self) -> None:
        """Close the connection (its transaction ends with it)."""
        self.conn.close()


def _base(src: SourceCfg) -> sql.Composable:
    """The rows of the source: the quoted table, or the query as written."""
    if src.table is not None:
        return sql.SQL("SELECT * FROM {}").format(sql.Identifier(*src.table.split(".")))
    return sql.SQL(src.query or "")


def _select(src: SourceCfg, since: str | None, columns: sql.Composable, *, ordered: bool = True) -> sql.Composed:
    """``columns`` of the source's rows newer than ``since`` (all without a watermark), in watermark order."""
    stmt = sql.SQL("SELECT {} FROM ({}) AS {}").format(columns, _base(src), SOURCE_ALIAS)
    if src.watermark is None:
        return stmt
    mark = sql.Identifier(src.watermark)
    if since is not None:  # an untyped literal: the server reads it as the column's own type
        stmt = sql.SQL("{} WHERE {} > {}").format(stmt, mark, sql.Literal(since))
    return sql.SQL("{} ORDER BY {}").format(stmt, mark) if ordered else stmt


def copy_rows(conn: psycopg.Connection, src: SourceCfg, since: str | None, out: IO[bytes]) -> str | None:
    """Write the rows as CSV with a header to ``out``; returns the highest watermark
    value among them (None without a watermark or without rows)."""
    conn.read_only = True
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    try:
        with conn.transaction():
            conn.execute("SELECT set_config('statement_timeout', %s, true), set_config('TimeZone', 'UTC', true),"
                         " set_config('DateStyle', 'ISO, YMD', true)", (f"{math.ceil(src.timeout_s * 1000)}ms",))
            shape = conn.execute(sql.SQL("{} LIMIT 0").format(_select(src, since, sql.SQL("*")))).description or []
            columns = sql.SQL(", ").join(
                sql.SQL("({c} AT TIME ZONE 'UTC') AS {c}" if d.type_code == TIMESTAMPTZ_OID else "{c}").format(
                    c=sql.Identifier(d.name)) for d in shape)
            high = None
            if src.watermark is not None:
                row = conn.execute(sql.SQL("SELECT max({})::text FROM ({}) AS dx_rows").format(
                    sql.Identifier(src.watermark), _select(src, since, sql.SQL("*"), ordered=False))).fetchone()
                high = row[0] if row else None
            with conn.cursor().copy(sql.SQL("COPY ({}) TO STDOUT (FORMAT csv, HEADER true, ENCODING 'UTF8')")
                                    .format(_select(src, since, columns))) as copy:
                for block in copy:
                    out.write(block)
            return high
    except QueryCanceled:
        raise RunError(ErrorCode.SOURCE_QUERY_FAILED,
                       f"the source query ran longer than its timeout_s ({src.timeout_s:g} s)") from None
    except psycopg.OperationalError as exc:
        if conn.broken:
            raise RetriableError(f"the connection to the client's database broke: {exc}") from exc
        raise RunError(ErrorCode.SOURCE_QUERY_FAILED, _reason(exc)) from None
    except psycopg.Error as exc:
        raise RunError(ErrorCode.SOURCE_QUERY_FAILED, _reason(exc)) from None


def _reason(exc: psycopg.Error) -> str:
    """The server's message and SQLSTATE, e.g. a write refused by the read-only transaction."""
    message = exc.diag.message_primary or str(exc).strip()
    return f"the source could not be read: {message} (SQLSTATE {exc.sqlstate})"
