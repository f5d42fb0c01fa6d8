"""The failed-operations report: CSV of every rejected record.

Columns: row_number, key, operation, error_code, error_message, then the
record's own fields as received. Cells a spreadsheet would run as a formula
(starting with = + - @, tab or carriage return) are prefixed with a quote.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from typing import IO

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


def write_report(conn: Conn, run_id: int, out: IO[str]) -> int:
    """Write the run's report to ``out``; returns the number of failed operations."""
    run = conn.execute("SELECT source_columns FROM dx.runs WHERE id = %s", (run_id,)).fetchone()
    columns = list((run or {}).get("source_columns") or [])
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(FIXED_COLUMNS + columns)
    count = 0
    for row in _rows(conn, run_id):
        record = row["record"] or {}
        if isinstance(record, str):
            record = json.loads(record)
        assert isinstance(record, dict)
        writer.writerow([neutralise(row[c]) for c in FIXED_COLUMNS] + [neutralise(record.get(c)) for c in columns])
        count += 1
    return count
