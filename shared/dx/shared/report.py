"""The failed-operations report: CSV of every rejected record.

Columns: row_number, key, operation, error_code, error_message, then the
record's own fields as received (a source column named like one of the first
five is headed ``source.NAME``, so that no name appears twice). Lines end with
CRLF (RFC 4180), so that a cell holding a bare CR is quoted too. Cells a spreadsheet would run as a formula
(starting with = + - @, tab or carriage return) are prefixed with a quote.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from typing import IO, Any

from psycopg import sql

from dx.shared.db import Conn

FIXED_COLUMNS = ["row_number", "key", "operation", "error_code", "error_message"]
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
#: The same first characters as a PostgreSQL regular expression ("-" last in the bracket).
FORMULA_START_RE = "^[" + "".join(c for c in FORMULA_STARTS if c != "-") + "-]"
#: Rows fetched per round trip while streaming a report.
FETCH_ROWS = 10_000


def neutralise(cell: object) -> str:
    """The cell as text, defused if a spreadsheet would evaluate it."""
    text = "" if cell is None else str(cell)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def neutralise_sql(value: sql.Composable) -> sql.Composable:
    """``neutralise`` as a SQL expression over a text value (exports format rows in the server)."""
    return sql.SQL("CASE WHEN {v} ~ {re} THEN {q} || {v} ELSE {v} END").format(
        v=value, re=sql.Literal(FORMULA_START_RE), q=sql.Literal("'"))


def _rows(conn: Conn, run_id: int) -> Iterator[dict[str, object]]:
    with conn.cursor(name=f"report_{run_id}") as cur:
        cur.itersize = FETCH_ROWS
        cur.execute("SELECT row_number, key, operation, error_code, error_message, record"
                    " FROM dx.failed_operations WHERE run_id = %s ORDER BY row_number NULLS LAST, chunk_no",
                    (run_id,))
        yield from cur


def report_rows(conn: Conn, run_id: int) -> Iterator[list[str]]:
    """The report's header, then one neutralised row per failed operation (streamed)."""
    run = conn.execute("SELECT source_columns FROM dx.runs WHERE id = %s", (run_id,)).fetchone()
    columns = list((run or {}).get("source_columns") or [])
    yield FIXED_COLUMNS + [neutralise(f"source.{c}" if c in FIXED_COLUMNS else c) for c in columns]
    for row in _rows(conn, run_id):
        record = row["record"] or {}
        if isinstance(record, str):
            record = json.loads(record)
        assert isinstance(record, dict)
        yield [neutralise(row[c]) for c in FIXED_COLUMNS] + [neutralise(record.get(c)) for c in columns]


def _writer(out: IO[str]) -> Any:
    """A CSV writer whose line ends (CRLF) make it quote every cell holding a CR or an LF: a spreadsheet
    would start a new row at a bare CR in an unquoted cell."""
    return csv.writer(out, lineterminator="\r\n")


def write_report(conn: Conn, run_id: int, out: IO[str]) -> int:
    """Write the run's report to ``out``; returns the number of failed operations."""
    writer = _writer(out)
    count = -1  # the header is not a failed operation
    for cells in report_rows(conn, run_id):
        writer.writerow(cells)
        count += 1
    return count


def report_text(conn: Conn, run_id: int) -> Iterator[str]:
    """The report as CSV text in pieces of FETCH_ROWS rows (an HTTP download streams them)."""
    buffer = io.StringIO()
    writer = _writer(buffer)
    for i, cells in enumerate(report_rows(conn, run_id), start=1):
        writer.writerow(cells)
        if i % FETCH_ROWS == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()
