"""An export chunk's COPY, through psql and through psycopg: the same bytes, the same count, the same errors."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from dx.shared import db, psql

#: Values a CSV writer can get wrong: quotes, delimiters, line breaks of both kinds, non-ASCII, NULL, empty.
TRICKY = ['plain', 'say "hi"', "a,b;c", "two\nlines", "crlf\r\nend", "€ ü 日本", None, "", "back\\slash"]
STATEMENT = ("COPY (SELECT id AS \"#0\", note AS \"#1\" FROM export_copy WHERE id > 3 ORDER BY id)"
             " TO STDOUT (FORMAT csv, DELIMITER ',', FORCE_QUOTE *, ENCODING {encoding})")


@pytest.fixture
def table(cluster_env: dict[str, str]) -> None:
    with db.transaction() as conn:
        conn.execute("DROP TABLE IF EXISTS export_copy")
        conn.execute("CREATE TABLE export_copy (id int PRIMARY KEY, note text)")
        with conn.cursor().copy("COPY export_copy (id, note) FROM STDIN") as copy:
            for i in range(2000):
                copy.write_row((i, TRICKY[i % len(TRICKY)]))


def _without_psql(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(psql, "PSQL", "dx-test-no-such-psql")
    psql.usable.cache_clear()


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_psql_and_psycopg_write_the_same_part(table: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             compression: str) -> None:
    from dx.workers.exports.chunk import _copy

    # Given psql installed (as on this machine and in the image)
    psql.usable.cache_clear()
    assert psql.usable(db.database_url())
    statement = STATEMENT.format(encoding="'UTF8'")
    # When a chunk's COPY runs through psql, then through psycopg
    rows_psql = _copy(statement, tmp_path / "psql", compression)
    _without_psql(monkeypatch)
    assert not psql.usable(db.database_url())
    rows_psycopg = _copy(statement, tmp_path / "psycopg", compression)
    # Then both wrote the same bytes and counted the same rows (records, not lines)
    read = gzip.decompress if compression == "gzip" else bytes
    written = read((tmp_path / "psql").read_bytes())
    assert written == read((tmp_path / "psycopg").read_bytes())
    assert rows_psql == rows_psycopg == 1996
    assert written.count(b"\n") > 1996 and '"€ ü 日本"'.encode() in written and b',""\n' in written
    assert not list(tmp_path.glob("*.plain"))  # psql's uncompressed output is gone


def test_a_value_the_encoding_cannot_hold_is_the_same_error_both_ways(table: None, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from dx.workers.exports.chunk import UNENCODABLE, _copy

    # Given a COPY into Latin-1 of values with Japanese characters
    statement = STATEMENT.format(encoding="'LATIN1'")
    psql.usable.cache_clear()
    # When it runs through psql, then through psycopg / Then both fail with the SQLSTATE of an unencodable value
    failures = []
    for use_psql in (True, False):
        if not use_psql:
            _without_psql(monkeypatch)
        with pytest.raises(psql.CopyFailed) as info:
            _copy(statement, tmp_path / f"part-{use_psql}", "none")
        failures.append((info.value.sqlstate, "has no equivalent in encoding" in info.value.message))
    assert failures == [(UNENCODABLE, True)] * 2


def test_psql_gets_the_password_from_its_environment_not_its_command_line(table: None, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a URL with a password, and a psql that records what it is given
    seen = tmp_path / "seen"
    fake = tmp_path / "psql"
    fake.write_text(f'#!/bin/sh\necho "$@" > {seen}\necho "$PGPASSWORD $PGDATABASE" >> {seen}\n'
                    f'echo "NOTICE: something" >&2\necho "{psql.ROWS_MARK} 7" >&2\n')
    fake.chmod(0o755)
    monkeypatch.setattr(psql, "PSQL", str(fake))
    # When a COPY runs / Then the password is in the environment only, and the rows are psql's count
    rows = psql.copy_to_file("postgresql://dx:s3cret@127.0.0.1:5432/dxdb", [], "COPY (SELECT 1) TO STDOUT",
                             tmp_path / "out")
    args, env = seen.read_text().splitlines()
    assert rows == 7 and "s3cret" not in args and env == "s3cret dxdb"
