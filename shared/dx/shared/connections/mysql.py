"""The client's MySQL or MariaDB as a source: a table or a read-only query, as CSV.

The driver is PyMySQL (pure Python: a wheel on any machine, no client
library). The server formats each row as one CSV line (``CONCAT_WS`` of its
cells: text quoted with its quotes doubled, NULL an unquoted empty cell, the
same CSV as PostgreSQL's ``COPY``), so the driver parses one value per row;
the lines are streamed (an unbuffered cursor) into a staged file, which then
takes the path of any CSV source. Nothing of the client's table is held in
memory.

Cells are the server's own text: numbers exact (``DECIMAL`` as written),
dates and times ISO (``TIMESTAMP`` in UTC), ``TINYINT(1)`` as 0 or 1,
``BIT`` as a number; binary strings and geometries (``BINARY``, ``BLOB``…)
as upper-case hex.

Safety: the session is read-only from the start (``SET SESSION TRANSACTION
READ ONLY``) and the statements run in a ``READ ONLY`` transaction with a
consistent snapshot (a write, even one hidden in a function, is refused by the
server), each within the source's ``timeout_s`` (MariaDB's
``max_statement_time``, MySQL's ``max_execution_time``); the driver's
multi-statements capability stays off (PyMySQL sets it only when asked), so
the text is one statement; table and column names are quoted identifiers and
the watermark value a bound parameter. The password comes from a
``${DX_SECRET_NAME}`` reference, read now and never logged. Give the
connection's user SELECT only: read-only is a second line, not the first.

Connection: to the addresses ``dx.shared.connections.reach`` checked (a socket
of ours handed to the driver; ``host`` still names the server for its
certificate), with TLS as the connection's ``sslmode`` says (verify-full by
default, against the system's CAs).

Errors: the server's own text (which a hostile server can make echo anything,
the password included) is never copied into a message; a failure is told by
its error number, its name and a phrase of ours.

Incremental reads: with a ``watermark`` column (an integer, decimal, date or
time column), only rows whose value is greater than the last delivered one are
read, in watermark order; the last row read holds the new high value.
"""

from __future__ import annotations

import csv
import io
import math
import os
import socket
import ssl
from decimal import Decimal, InvalidOperation
from typing import IO, Any

import pymysql
import pymysql.converters
import pymysql.cursors
from pymysql.constants import CLIENT, CR, ER, FIELD_TYPE

from dx.shared.config import ConnectionCfg, SourceCfg
from dx.shared.connections import reach, resolve_secret
from dx.shared.errors import ErrorCode, RetriableError, RunError
from dx.shared.hosts import open_socket

#: Error numbers of a refused login: access denied, no password given, password expired.
AUTH_ERRORS = (1045, 1698, 1862)
#: Error numbers of a statement stopped by its time limit: MariaDB's, MySQL's.
TIMEOUT_ERRORS = (1969, 3024)
#: Error numbers of a connection lost on the way (server gone, lost during a query).
LOST_ERRORS = (2006, 2013, 2055)
#: The character set number of binary strings (and of every number and date).
BINARY_CHARSET = 63
#: Types whose values are text, or bytes when their character set is binary.
STRING_TYPES = (FIELD_TYPE.VARCHAR, FIELD_TYPE.VAR_STRING, FIELD_TYPE.STRING, FIELD_TYPE.ENUM, FIELD_TYPE.SET,
                FIELD_TYPE.TINY_BLOB, FIELD_TYPE.MEDIUM_BLOB, FIELD_TYPE.LONG_BLOB, FIELD_TYPE.BLOB)
#: Types a watermark can be, compared as numbers.
NUMBER_TYPES = (FIELD_TYPE.TINY, FIELD_TYPE.SHORT, FIELD_TYPE.INT24, FIELD_TYPE.LONG, FIELD_TYPE.LONGLONG,
                FIELD_TYPE.DECIMAL, FIELD_TYPE.NEWDECIMAL, FIELD_TYPE.YEAR)
#: Types a watermark can be, compared as dates and times.
TIME_TYPES = (FIELD_TYPE.DATE, FIELD_TYPE.NEWDATE, FIELD_TYPE.DATETIME, FIELD_TYPE.TIMESTAMP)
#: Type names for messages.
TYPE_NAMES = {v: k for k, v in vars(FIELD_TYPE).items() if k.isupper() and k not in ("CHAR", "INTERVAL")}
#: The driver's encoders only: without decoders every value arrives as the server's text.
TEXT_ONLY = {k: v for k, v in pymysql.converters.conversions.items() if not isinstance(k, int)}
#: Rows taken from the stream at a time.
BATCH_ROWS = 10_000
#: Alias of the table or query inside the statements we build.
SOURCE_ALIAS = "`dx_source`"
#: The error numbers' names: the server's (ER_…) and the driver's own (CR_…).
ERROR_NAMES = {**{v: f"ER_{k}" for k, v in vars(ER).items() if k.isupper() and isinstance(v, int)},
               **{v: k for k, v in vars(CR).items() if k.startswith("CR_") and isinstance(v, int)}}
#: What an error number means, in our words, for the ones a source query commonly meets.
ERROR_SAYS = {
    1792: "a write refused by the read-only transaction",
    1064: "the query does not parse as one SELECT statement",
    1146: "a table or view it names does not exist",
    1054: "a column it names does not exist",
    1305: "a function it calls does not exist",
    1044: "the connection's user lacks a privilege",
    1142: "the connection's user lacks a privilege",
    1143: "the connection's user lacks a privilege",
    1644: "an error signalled by a function it calls",
    1049: "the database does not exist",
    1040: "the server has no connection slot left",
    2003: "nothing answered on that port",
    2006: "the server went away",
    2013: "the connection was lost",
}
#: The driver's error of a TLS connection that could not be set up.
TLS_ERROR = CR.CR_SSL_CONNECTION_ERROR


class MySQLSource:
    """The client's MySQL or MariaDB as a ``SourceDatabase``."""

    def __init__(self, cfg: ConnectionCfg) -> None:
        self.conn = connect(cfg)

    def copy_rows(self, src: SourceCfg, since: str | None, out: IO[bytes]) -> str | None:
        """Write the rows as CSV with a header to ``out``; returns the highest watermark value among them."""
        return copy_rows(self.conn, src, since, out)

    def close(self) -> None:
        """Close the connection (its transaction ends with it)."""
        if self.conn.open:
            self.conn.close()


def connect(cfg: ConnectionCfg) -> Any:
    """A connection to the client's database, its session read-only; CONNECTION_FAILED,
    AUTHENTICATION_FAILED, TLS_REQUIRED, HOST_NOT_ALLOWED or SECRET_MISSING."""
    assert cfg.host
    where = f"{cfg.host}:{cfg.port}/{cfg.dbname}"
    addresses = reach(cfg)
    password = resolve_secret(cfg.password) or ""
    conn = pymysql.connect(host=cfg.host, port=cfg.port, database=cfg.dbname, user=cfg.username,
                           password=password.encode(), charset="utf8mb4", connect_timeout=cfg.timeout_s,
                           conv=TEXT_ONLY, program_name="dataexchange", defer_connect=True,
                           init_command="SET SESSION TRANSACTION READ ONLY", **_tls(cfg.sslmode))
    assert not conn.client_flag & CLIENT.MULTI_STATEMENTS
    try:
        sock = open_socket(addresses, cfg.port, cfg.timeout_s)
    except OSError as exc:
        raise RunError(ErrorCode.CONNECTION_FAILED, f"{where} is not reachable: {_os_error(exc)}") from None
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    try:
        conn.connect(sock)  # the checked address; the driver checks a certificate against ``host``
    except pymysql.err.Error as exc:
        number = _number(exc)
        if number in AUTH_ERRORS:
            raise RunError(ErrorCode.AUTHENTICATION_FAILED,
                           f"{where} refused user {cfg.username!r}: check the secret the connection names") from None
        if number == TLS_ERROR:
            raise RunError(ErrorCode.TLS_REQUIRED, f"{where}: the server does not offer TLS, and sslmode "
                           f"{cfg.sslmode} requires it: nothing was sent") from None
        if isinstance(getattr(exc, "original_exception", None), ssl.SSLError):
            raise RunError(ErrorCode.TLS_REQUIRED, f"{where}: TLS could not be set up (with sslmode "
                           f"{cfg.sslmode}: {_tls_says(cfg.sslmode)}); nothing was sent") from None
        raise RunError(ErrorCode.CONNECTION_FAILED, f"{where}: the connection failed before login: "
                       f"{_summary(exc)}") from None
    return conn


def _tls_says(sslmode: str) -> str:
    if sslmode in ("verify-ca", "verify-full"):
        return "the certificate must be signed by a CA the workers trust" + (
            " and issued for the host" if sslmode == "verify-full" else "")
    return "the handshake failed"


def _tls(sslmode: str) -> dict[str, Any]:
    """The driver's TLS options for a libpq sslmode name (certificates checked against the system's CAs)."""
    if sslmode == "disable":
        return {"ssl_disabled": True}
    if sslmode in ("allow", "prefer"):
        return {}  # the driver's preferred mode: TLS when the server offers it, its certificate not checked
    context = ssl.create_default_context()  # with a context the driver refuses a server without TLS
    context.check_hostname = sslmode == "verify-full"
    if sslmode == "require":
        context.verify_mode = ssl.CERT_NONE
    return {"ssl": context}


def _ident(name: str) -> str:
    """``name`` as a quoted identifier."""
    return "`" + name.replace("`", "``") + "`"


def _sql(text: str) -> str:
    """Text written into a statement that takes parameters (the driver formats it with ``%``)."""
    return text.replace("%", "%%")


def _base(src: SourceCfg) -> str:
    """The rows of the source: the quoted table, or the query as written."""
    if src.table is not None:
        return "SELECT * FROM " + ".".join(_ident(part) for part in src.table.split("."))  # noqa: S608
    return src.query or ""


def _cell(name: str, type_code: int, charset: int) -> str:
    """The column as one CSV cell of text (NULL the empty string, which no quoted value is)."""
    col = _ident(name)
    if type_code == FIELD_TYPE.JSON or (type_code in STRING_TYPES and charset != BINARY_CHARSET):
        # one collation for every text cell (two columns' could not be mixed), quotes doubled
        text = f"CONVERT({col} USING utf8mb4) COLLATE utf8mb4_bin"
        return f"IFNULL(CONCAT('\"', REPLACE({text}, '\"', '\"\"'), '\"'), '')"
    if type_code in STRING_TYPES or type_code == FIELD_TYPE.GEOMETRY:
        return f"IFNULL(HEX({col}), '')"
    if type_code == FIELD_TYPE.BIT:
        return f"IFNULL(CONCAT({col} + 0), '')"
    return f"IFNULL(CONCAT({col}), '')"  # a number, date or time: no comma, quote or line break in it


def copy_rows(conn: Any, src: SourceCfg, since: str | None, out: IO[bytes]) -> str | None:
    """Write the rows as CSV with a header to ``out``; returns the highest watermark
    value among them (None without a watermark or without rows)."""
    try:
        with conn.cursor() as cur:
            limit = (f"max_statement_time = {src.timeout_s:.6f}" if "MariaDB" in conn.get_server_info()
                     else f"max_execution_time = {math.ceil(src.timeout_s * 1000)}")
            cur.execute(f"SET SESSION time_zone = '+00:00', SESSION {limit}")
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            cur.execute("START TRANSACTION READ ONLY, WITH CONSISTENT SNAPSHOT")
            cur.execute(_sql(f"SELECT * FROM ({_base(src)}) AS {SOURCE_ALIAS} LIMIT 0"), ())  # noqa: S608
            names = [d[0] for d in cur.description]
            # the driver's field packets: the description does not tell a binary string from text
            fields = [(f.type_code, f.charsetnr) for f in cur._result.fields]
        stmt, args, mark = _select(src, since, names, fields)
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerow(names)
        out.write(buffer.getvalue().encode())
        last = None
        stream = conn.cursor(pymysql.cursors.SSCursor)  # not closed: closing reads the rest of the rows
        stream.execute(stmt, args)
        while rows := stream.fetchmany(BATCH_ROWS):
            lines = [r[0] for r in rows]
            if None in lines:  # CONCAT_WS gives NULL only past the server's max_allowed_packet
                raise RunError(ErrorCode.SOURCE_QUERY_FAILED,
                               "a row is longer than the server's max_allowed_packet: raise it, or read "
                               "fewer or shorter columns")
            out.write(("\n".join(lines) + "\n").encode())
            last = lines[-1]
        if mark is None or last is None:
            return None
        return next(csv.reader([last]))[mark] or None  # rows come in watermark order: the last is the highest
    except pymysql.err.OperationalError as exc:
        code = exc.args[0] if exc.args else None
        if code in TIMEOUT_ERRORS:
            raise RunError(ErrorCode.SOURCE_QUERY_FAILED,
                           f"the source query ran longer than its timeout_s ({src.timeout_s:g} s)") from None
        if code in LOST_ERRORS:  # the server's text stays out of the message and of the chained traceback
            raise RetriableError(f"the connection to the client's database broke: {_summary(exc)}") from None
        raise RunError(ErrorCode.SOURCE_QUERY_FAILED, _reason(exc)) from None
    except pymysql.err.Error as exc:
        raise RunError(ErrorCode.SOURCE_QUERY_FAILED, _reason(exc)) from None


def _select(src: SourceCfg, since: str | None, names: list[str],
            fields: list[tuple[int, int]]) -> tuple[str, tuple[Any, ...], int | None]:
    """The statement of the rows as CSV lines newer than ``since`` (all without a watermark) in
    watermark order, its parameters, and the watermark's column number."""
    line = "CONCAT_WS(',', " + ", ".join(_cell(n, t, c) for n, (t, c) in zip(names, fields, strict=True)) + ")"
    stmt = _sql(f"SELECT {line} FROM ({_base(src)}) AS {SOURCE_ALIAS}")  # noqa: S608
    if src.watermark is None:
        return stmt, (), None
    found = [i for i, n in enumerate(names) if n.lower() == src.watermark.lower()]  # names ignore case here
    if not found:
        raise RunError(ErrorCode.SOURCE_QUERY_FAILED,
                       f"the source has no column {src.watermark!r} (its watermark); columns: {', '.join(names)}")
    mark = found[0]
    type_code = fields[mark][0]
    if type_code not in NUMBER_TYPES + TIME_TYPES:
        raise RunError(ErrorCode.SOURCE_QUERY_FAILED,
                       f"the watermark column {src.watermark!r} is of type {TYPE_NAMES.get(type_code, type_code)}: it must "
                       "be an integer, decimal, date, datetime or timestamp column")
    column = _sql(_ident(names[mark]))
    args: tuple[Any, ...] = ()
    if since is not None:
        stmt += f" WHERE {column} > %s"
        args = (_bound(since, type_code),)
    return stmt + f" ORDER BY {column}", args, mark


def _bound(since: str, type_code: int) -> Any:
    """The stored watermark as a parameter: a number exactly (MySQL compares an integer column with a
    string as doubles), a date or time as text (the server reads it as the column's type)."""
    if type_code in NUMBER_TYPES:
        try:
            return Decimal(since)
        except InvalidOperation:
            return since  # the column's type changed: the server compares as it can
    return since


def _number(exc: pymysql.err.Error) -> int | None:
    return exc.args[0] if exc.args and isinstance(exc.args[0], int) else None


def _summary(exc: pymysql.err.Error) -> str:
    """Our words for the error and its number (``MySQL error 1146 ER_NO_SUCH_TABLE``), never the
    server's text (a server may make it echo anything)."""
    number = _number(exc)
    if number is None:
        return f"the driver failed ({type(exc).__name__})"
    name = ERROR_NAMES.get(number)
    says = ERROR_SAYS.get(number, "the server refused it")
    return f"{says} (MySQL error {number}{' ' + name if name else ''})"


def _os_error(exc: OSError) -> str:
    """A socket's failure by its error number's own description, or its kind."""
    return os.strerror(exc.errno) if exc.errno else type(exc).__name__


def _reason(exc: pymysql.err.Error) -> str:
    """What the server refused, e.g. a write refused by the read-only transaction."""
    return f"the source could not be read: {_summary(exc)}"
