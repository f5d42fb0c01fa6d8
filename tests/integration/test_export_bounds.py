"""Cutting an export into chunks on a real PostgreSQL: every row in exactly one chunk, chunks of about
the same size, whether the cut points are exact or read from a sample of a large table."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row

from dx.shared.db import Conn
from dx.workers.exports import query as export_query
from dx.workers.exports.query import ExportQuery, count_and_bounds

TABLE = sql.Identifier("public", "bounds_probe")
ROWS = 200_000


@pytest.fixture(scope="module")
def conn(cluster_env: dict[str, str]) -> Iterator[Conn]:
    with psycopg.connect(cluster_env["DX_DATABASE_URL"], row_factory=dict_row, autocommit=True) as c:
        c.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(TABLE))
        # keys spread unevenly, rows stored in an order unrelated to the key
        c.execute(sql.SQL("CREATE TABLE {} AS SELECT mod(x * x, 1000003) * 1000 + x AS k, md5(x::text) || md5(x::text) AS pad"
                          " FROM generate_series(1::bigint, %s) x").format(TABLE), (ROWS,))
        c.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY (k)").format(TABLE))
        c.execute(sql.SQL("ANALYZE {}").format(TABLE))
        yield c
        c.execute(sql.SQL("DROP TABLE {}").format(TABLE))


def _query(where: str) -> ExportQuery:
    cond = sql.SQL(where)
    return ExportQuery(["k"], [sql.SQL("k::text")], sql.SQL("FROM {} WHERE {}").format(TABLE, cond), [],
                       sql.Identifier("k"), "bigint", TABLE, cond)


def _chunk_sizes(conn: Conn, where: str, bounds: list[str]) -> list[int]:
    """Rows in each chunk as the export's chunks select them: (previous bound, bound]."""
    edges: list[str | None] = [None, *bounds, None]
    sizes = []
    for lo, hi in zip(edges, edges[1:], strict=False):
        row = conn.execute(sql.SQL("SELECT count(*) AS n FROM {} WHERE {} AND (%s::bigint IS NULL OR k > %s::bigint)"
                                   " AND (%s::bigint IS NULL OR k <= %s::bigint)").format(TABLE, sql.SQL(where)),
                           (lo, lo, hi, hi)).fetchone()
        sizes.append(row["n"])
    return sizes


@pytest.mark.parametrize(("where", "sampled"), [("true", True), ("mod(k, 3) = 0", True), ("true", False)])
def test_every_row_falls_in_one_chunk_of_about_the_same_size(conn: Conn, monkeypatch: pytest.MonkeyPatch,
                                                             where: str, sampled: bool) -> None:
    # Given a table of 200,000 rows, counted as large (sampled) or not
    monkeypatch.setattr(export_query, "SAMPLE_FROM_ROWS", 50_000 if sampled else ROWS + 1)
    monkeypatch.setattr(export_query, "SAMPLE_KEYS", 20_000)
    monkeypatch.setattr(export_query, "SAMPLE_KEYS_ENOUGH", 500)
    exact = conn.execute(sql.SQL("SELECT count(*) AS n FROM {} WHERE {}").format(TABLE, sql.SQL(where))).fetchone()["n"]
    # When it is cut into chunks of about 25,000 rows
    n, bounds = count_and_bounds(conn, _query(where), 25_000, 256)
    # Then the count is exact, or within 5% for a sample; the cut points are keys in order
    assert (n == exact) if not sampled else (abs(n - exact) <= 0.05 * exact), (n, exact)
    assert len(bounds) + 1 == (round(n / 25_000) if sampled else -(-n // 25_000))
    assert [int(b) for b in bounds] == sorted({int(b) for b in bounds})
    # and every row is in exactly one chunk, each within 10% of the same size (exactly, when cut exactly)
    sizes = _chunk_sizes(conn, where, bounds)
    assert sum(sizes) == exact
    mean = exact / len(sizes)
    assert all(abs(size - mean) <= (0.1 * mean if sampled else 1) for size in sizes), sizes


def test_a_filter_leaving_few_sampled_rows_is_cut_exactly(conn: Conn, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a large table and a filter that leaves about 0.5% of its rows
    monkeypatch.setattr(export_query, "SAMPLE_FROM_ROWS", 50_000)
    monkeypatch.setattr(export_query, "SAMPLE_KEYS", 20_000)
    monkeypatch.setattr(export_query, "SAMPLE_KEYS_ENOUGH", 500)
    where = "mod(k, 200) = 0"
    exact = conn.execute(sql.SQL("SELECT count(*) AS n FROM {} WHERE {}").format(TABLE, sql.SQL(where))).fetchone()["n"]
    # When it is cut / Then the few sampled rows are not trusted: the count is exact
    n, bounds = count_and_bounds(conn, _query(where), 250, 256)
    assert n == exact and sum(_chunk_sizes(conn, where, bounds)) == exact
