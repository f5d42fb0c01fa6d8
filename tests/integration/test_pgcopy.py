"""Binary COPY against a real PostgreSQL: every column type arrives as the server would read its text."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime

import polars as pl
import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg import sql
from psycopg.rows import dict_row

from dx.shared.db import Conn
from dx.shared.pgcopy import copy_frame

TABLE = sql.Identifier("copy_probe")


@pytest.fixture(scope="module")
def conn(cluster_env: dict[str, str]) -> Iterator[Conn]:
    with psycopg.connect(cluster_env["DX_DATABASE_URL"], row_factory=dict_row, autocommit=True) as c:
        yield c


def _roundtrip(conn: Conn, columns: str, frame: pl.DataFrame) -> list[dict]:
    with conn.transaction():
        conn.execute(sql.SQL("CREATE TEMP TABLE {} ({}) ON COMMIT DROP").format(TABLE, sql.SQL(columns)))
        copy_frame(conn, TABLE, frame)
        conn.execute("SET LOCAL TIME ZONE 'UTC'")
        return conn.execute(sql.SQL("SELECT *, d::text AS d_text FROM {} ORDER BY n").format(TABLE)).fetchall()


DECIMALS = ["1.5", "1.50", "-0.001", "12345678.90", None, "0", "+7", ".5", "5.", "100", "-0.00", "0007.10",
            "99999999999999999999.123456789", "1.5e3", "1.50E1", "1E-3", "-2.5e+2", "-0E5"]


def test_every_type_arrives_as_its_text_would(conn: Conn) -> None:
    n = len(DECIMALS)
    frame = pl.DataFrame({
        "n": list(range(n)),
        "d": DECIMALS,
        "i": pl.Series(range(n), dtype=pl.Int64),  # sent to an integer column: cast to int4
        "t": [None if k == 2 else f"text, \"quoted\" é {k}" for k in range(n)],
        "b": [k % 2 == 0 for k in range(n)],
        "day": [date(2024, 2, 29)] * n,
        "at": pl.Series([datetime(2024, 3, 31, 0, 30, tzinfo=UTC)] * n).dt.convert_time_zone("Europe/Amsterdam"),
        "j": ['{"a": [1, "x"]}'] * n,
    })
    rows = _roundtrip(conn, "n bigint, d numeric, i integer, t text, b boolean, day date, at timestamptz, j jsonb",
                      frame)
    expected = [conn.execute("SELECT %s::numeric::text AS v", (d,)).fetchone()["v"] for d in DECIMALS]
    assert [r["d_text"] for r in rows] == expected
    assert [r["i"] for r in rows] == list(range(n))
    assert rows[2]["t"] is None and rows[3]["t"] == 'text, "quoted" é 3'
    assert [r["b"] for r in rows[:2]] == [True, False]
    assert rows[0]["day"] == date(2024, 2, 29)
    assert rows[0]["at"] == datetime(2024, 3, 31, 0, 30, tzinfo=UTC)
    assert rows[0]["j"] == {"a": [1, "x"]}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.from_regex(r"\A[+-]?([0-9]{1,30}(\.[0-9]{0,20})?|\.[0-9]{1,20})([eE][+-]?[0-9]{1,3})?\Z"), min_size=1,
                max_size=30))
def test_decimals_keep_their_digits_and_scale(conn: Conn, values: list[str]) -> None:
    rows = _roundtrip(conn, "n bigint, d numeric", pl.DataFrame({"n": range(len(values)), "d": values}))
    expected = [conn.execute("SELECT %s::numeric::text AS v", (v,)).fetchone()["v"] for v in values]
    assert [r["d_text"] for r in rows] == expected


def test_an_unknown_column_type_is_refused(conn: Conn) -> None:
    with pytest.raises(TypeError, match="cannot send a column of type point"):
        _roundtrip(conn, "n bigint, d point", pl.DataFrame({"n": [1], "d": ["(1,2)"]}))
