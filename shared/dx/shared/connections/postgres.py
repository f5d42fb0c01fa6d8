"""The client's PostgreSQL as a source: a table or a read-only query, as CSV.

``PostgresSource`` is its ``dx.shared.connections.SourceDatabase``.
The rows are streamed with ``COPY (SELECT …) TO STDOUT (FORMAT csv, HEADER)``
into a staged file, which then takes the path of any CSV source (parsed in
bounded batches, partitioned, validated, applied): nothing of the client's
table is held in memory, and the server formats, quotes and escapes.

Safety: the session is read-only from the start, and the query runs in a
READ ONLY, REPEATABLE READ transaction (a write, even one hidden in a
function, is refused by the server) with the source's ``statement_timeout``.
The first statement that holds the query goes through the extended query
protocol, whose Parse message takes one statement only: a query that closes
its subquery and adds statements (``…) AS a; COMMIT; DELETE …``) is refused
before anything runs (psycopg sends a statement without parameters by the
simple protocol, which runs every statement of the text). The table name and
watermark column are quoted identifiers. The password comes from a
``${DX_SECRET_NAME}`` reference, read now and never logged. Give the
connection's role SELECT only: read-only is a second line, not the first.

Connection: to the addresses ``dx.shared.connections.reach`` checked (libpq's
``hostaddr``; ``host`` still names the server for its certificate), with TLS
as the connection's ``sslmode`` says (verify-full by default, against the
system's CAs).

Errors: the server's own text (which a hostile server can make echo anything,
the password included) is never copied into a message; a failure is told by
its SQLSTATE, its condition name and a phrase of ours.

Incremental reads: with a ``watermark`` column, only rows whose value is
greater than the last delivered one are read, in watermark order; the same
snapshot gives the new high value, which the control database adopts only
when the run completes (see ``dx.workers.imports.source_query``).
"""

from __future__ import annotations

import math
import re
import ssl
from typing import IO

import psycopg
import psycopg.errors
from psycopg import sql
from psycopg.errors import QueryCanceled

from dx.shared.config import ConnectionCfg, SourceCfg
from dx.shared.connections import reach, resolve_secret
from dx.shared.errors import ErrorCode, RetriableError, RunError

#: SQLSTATEs of a refused login: invalid_password, invalid_authorization_specification.
AUTH_SQLSTATES = ("28P01", "28000")
#: What a SQLSTATE means, in our words, for the ones a source query commonly meets.
SQLSTATE_SAYS = {
    "25006": "a write refused by the read-only transaction",
    "0A000": "something the server does not do there (a write inside the query?)",
    "42601": "the query does not parse as one SELECT statement",
    "42P01": "a table or view it names does not exist",
    "42703": "a column it names does not exist",
    "42883": "a function it calls does not exist",
    "42501": "the connection's role lacks a privilege",
    "P0001": "an exception raised by a function it calls",
    "3D000": "the database does not exist",
    "53300": "the server has no connection slot left",
}
#: libpq's own failures before login (never the server's text), by a phrase of theirs: (code, our words).
LIBPQ_SAYS = (
    ("does not support ssl", ErrorCode.TLS_REQUIRED, "the server does not offer TLS"),
    ("connection refused", ErrorCode.CONNECTION_FAILED, "nothing accepts connections on that port"),
    ("timeout expired", ErrorCode.CONNECTION_FAILED, "no answer within the connection's timeout_s"),
    ("no route to host", ErrorCode.CONNECTION_FAILED, "no route to the host"),
    ("network is unreachable", ErrorCode.CONNECTION_FAILED, "the network is unreachable"),
    ("certificate", ErrorCode.TLS_REQUIRED, "the server's TLS certificate did not verify (verify-full: signed by "
     "a CA the workers trust and issued for the host)"),
    ("ssl", ErrorCode.TLS_REQUIRED, "the TLS handshake failed"),
    ("authentication failed", ErrorCode.AUTHENTICATION_FAILED, ""),
    ("no password supplied", ErrorCode.AUTHENTICATION_FAILED, ""),
)
#: Type OID of timestamptz: sent as UTC without offset, the form the validator reads by default.
TIMESTAMPTZ_OID = 1184
#: Alias of the table or query inside the statements we build.
SOURCE_ALIAS = sql.Identifier("dx_source")


def connect(cfg: ConnectionCfg) -> psycopg.Connection:
    """A connection to the client's database, its session read-only; CONNECTION_FAILED,
    AUTHENTICATION_FAILED, TLS_REQUIRED, HOST_NOT_ALLOWED or SECRET_MISSING."""
    assert cfg.host
    addresses = reach(cfg)
    password = resolve_secret(cfg.password)
    roots = None
    if cfg.sslmode in ("verify-ca", "verify-full"):  # the system's CAs (libpq's default is ~/.postgresql/root.crt)
        paths = ssl.get_default_verify_paths()
        roots = paths.cafile or paths.openssl_cafile
    try:
        conn = psycopg.connect(host=",".join([cfg.host] * len(addresses)), hostaddr=",".join(addresses),
                               port=cfg.port, dbname=cfg.dbname, user=cfg.username, password=password,
                               sslmode=cfg.sslmode, sslrootcert=roots, connect_timeout=max(1, math.ceil(cfg.timeout_s)),
                               application_name="dataexchange", autocommit=True)
    except psycopg.OperationalError as exc:
        raise _refused(cfg, exc) from None
    try:
        conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
    except psycopg.Error as exc:
        conn.close()
        raise RunError(ErrorCode.CONNECTION_FAILED, f"{cfg.host}:{cfg.port}/{cfg.dbname}: the session could not "
                       f"be made read-only ({sqlstate_name(exc.sqlstate)})") from None
    return conn


def _refused(cfg: ConnectionCfg, exc: psycopg.OperationalError) -> RunError:
    """Why the connection failed, in our words: the server's SQLSTATE, or a phrase of libpq's matched."""
    where = f"{cfg.host}:{cfg.port}/{cfg.dbname}"
    login = RunError(ErrorCode.AUTHENTICATION_FAILED,
                     f"{where} refused user {cfg.username!r}: check the secret the connection names")
    if exc.sqlstate in AUTH_SQLSTATES:
        return login
    if exc.sqlstate:
        says = SQLSTATE_SAYS.get(exc.sqlstate, "the server refused the connection")
        return RunError(ErrorCode.CONNECTION_FAILED, f"{where}: {says} ({sqlstate_name(exc.sqlstate)})")
    text = str(exc).lower()  # libpq's words, matched, never copied (they may quote the server)
    for phrase, code, says in LIBPQ_SAYS:
        if phrase in text:
            if code is ErrorCode.AUTHENTICATION_FAILED:
                return login
            if code is ErrorCode.TLS_REQUIRED:
                return RunError(code, f"{where}: {says}, and sslmode {cfg.sslmode} requires it: nothing was sent")
            return RunError(code, f"{where} is not reachable: {says}")
    return RunError(ErrorCode.CONNECTION_FAILED, f"{where} is not reachable: the connection failed before login "
                    "(is it a PostgreSQL server?)")


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
            # extended protocol: one statement only, so the query cannot add statements to this one
            # or to the next (each holds the query's text, which this one has parsed)
            shape = conn.execute(sql.SQL("{} LIMIT 0").format(_select(src, since, sql.SQL("*"))),
                                 prepare=True).description or []
            columns = sql.SQL(", ").join(
                sql.SQL("({c} AT TIME ZONE 'UTC') AS {c}" if d.type_code == TIMESTAMPTZ_OID else "{c}").format(
                    c=sql.Identifier(d.name)) for d in shape)
            high = None
            if src.watermark is not None:
                row = conn.execute(sql.SQL("SELECT max({})::text FROM ({}) AS dx_rows").format(
                    sql.Identifier(src.watermark), _select(src, since, sql.SQL("*"), ordered=False)),
                    prepare=True).fetchone()
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
        if conn.broken:  # the server's text stays out of the message and of the chained traceback
            raise RetriableError(f"the connection to the client's database broke ({sqlstate_name(exc.sqlstate)})") \
                from None
        raise RunError(ErrorCode.SOURCE_QUERY_FAILED, _reason(exc)) from None
    except psycopg.Error as exc:
        raise RunError(ErrorCode.SOURCE_QUERY_FAILED, _reason(exc)) from None


def _reason(exc: psycopg.Error) -> str:
    """What the server refused, e.g. a write refused by the read-only transaction: our words and the
    SQLSTATE, never the server's text."""
    if exc.sqlstate is None:  # the driver's own failure
        return f"the source could not be read ({type(exc).__name__})"
    says = SQLSTATE_SAYS.get(exc.sqlstate, "the server refused the query")
    return f"the source could not be read: {says} ({sqlstate_name(exc.sqlstate)})"


def sqlstate_name(state: str | None) -> str:
    """``SQLSTATE 25006 read_only_sql_transaction`` for a state psycopg knows, its class for another:
    only codes of that fixed list are named (a server may send any five characters)."""
    if not state:
        return "no known SQLSTATE"
    for known in (state, state[:2] + "000"):
        try:
            cls = psycopg.errors.lookup(known)
        except KeyError:
            continue
        name = re.sub(r"(?<!^)(?=[A-Z])", "_", cls.__name__).lower()
        if cls.sqlstate == state:
            return f"SQLSTATE {cls.sqlstate} {name}"
        return f"SQLSTATE class {known[:2]} {name}"
    return "no known SQLSTATE"
