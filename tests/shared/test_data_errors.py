"""Deterministic data errors in the pure logic: a NUL byte, a BOM inside a key, a record over the size limit,
and which database errors are the data's (never retried)."""

from __future__ import annotations

import csv
import io
import json
from unittest import mock

import polars as pl
import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dx.shared.config import SourceCfg
from dx.shared.errors import ErrorCode, is_data_error
from dx.shared.formats import csv as dxcsv
from dx.shared.formats.csv import MAX_RECORD_BYTES, ROW, iter_batches, read_header
from dx.shared.validate import validate


def _chunk(columns: list[str], *records: list[str]) -> pl.DataFrame:
    data = {ROW: list(range(1, len(records) + 1)), **{c: [r[i] for r in records] for i, c in enumerate(columns)}}
    return pl.DataFrame(data, schema={ROW: pl.Int64, **dict.fromkeys(columns, pl.String)})


@pytest.mark.parametrize("field", ["text", "int", "email", {"type": "text", "max_length": 10}])
def test_a_nul_byte_in_a_value_is_invalid_value_naming_the_field(make_database, field):
    # Given a record whose value of field v holds a NUL byte, and a good one
    db = make_database({"id": "text", "v": field})
    value = {"int": "4\x002", "email": "a\x00@x.it"}.get(field if isinstance(field, str) else "", "a\x00b")
    # When validated
    result = validate(_chunk(["id", "v"], ["1", value], ["2", ""]), db, ["id", "v"])
    # Then the first is INVALID_VALUE naming the field and the NUL; the second is good
    assert result.failed.select("row_number", "error_code").rows() == [(1, "INVALID_VALUE")]
    message = result.failed["error_message"][0]
    assert message.startswith("v: ") and "NUL" in message and "\x00" not in message
    assert result.good[ROW].to_list() == [2]


def test_a_nul_byte_in_the_key_is_invalid_value_and_the_report_shows_it_replaced(make_database):
    # Given a key holding a NUL byte, and a column no field maps to holding one too
    db = make_database({"id": "text", "v": "text"})
    columns = ["id", "v", "note"]
    # When validated
    result = validate(_chunk(columns, ["k\x00", "x", "n\x00te"], ["k2", "y", "n\x00"]), db, columns)
    # Then the first record fails; the unmapped column's NUL does not fail the second; the failed
    # operation's key and record carry U+FFFD where the NUL was (PostgreSQL stores no NUL)
    assert result.failed.select("row_number", "error_code").rows() == [(1, "INVALID_VALUE")]
    assert result.failed["key"][0] == "k\ufffd"
    assert json.loads(result.failed["record"][0]) == {"id": "k\ufffd", "v": "x", "note": "n\ufffdte"}
    assert result.good[ROW].to_list() == [2]


@pytest.mark.parametrize("key", ["\ufeffa@x.it", "a\ufeff@x.it", "a@x.it\ufeff", "a\u200b@x.it", "a\x01@x.it"])
def test_a_bom_or_another_invisible_character_in_an_email_is_invalid_value(make_database, key):
    # Given an e-mail key holding a BOM, a zero-width space or a control character
    db = make_database({"email": "email"}, primary_key="email")
    # When validated
    result = validate(_chunk(["email"], [key], ["b@x.it"]), db, ["email"])
    # Then it is INVALID_VALUE, the other one good
    assert result.failed.select("row_number", "error_code").rows() == [(1, "INVALID_VALUE")]
    assert result.good[ROW].to_list() == [2]


def test_a_nul_byte_in_the_header_is_malformed_header(write_file, make_source, raises_run_error):
    # Given a header whose second name holds a NUL byte
    path = write_file("h.csv", b"email,first\x00name\na@x.it,A\n")
    # When the header is read, Then the run fails with MALFORMED_HEADER naming the NUL
    with raises_run_error(ErrorCode.MALFORMED_HEADER) as info:
        read_header(path, make_source())
    assert "NUL" in info.value.message and "\x00" not in info.value.message


def test_a_record_of_the_limit_is_read_and_a_larger_one_is_record_too_large(write_file, make_source):
    # Given records around one just under the limit (quoted, with line breaks) and one over it
    big = ("z" * 1023 + "\n") * (MAX_RECORD_BYTES // 1024 - 1)
    huge = "y" * (MAX_RECORD_BYTES + 10)
    path = write_file("big.csv", f'k,v\na,1\nb,"{big}"\nc,2\nd,{huge}\ne,"3\n"\n')
    src = make_source()
    # When read
    columns = read_header(path, src)
    rows, bad = [], []
    for table, malformed in iter_batches(path, src, columns):
        rows += table.select([ROW, "k"]).to_pylist()
        bad += malformed
    # Then every record but the one over the limit is read, in order, with its row number; that one is
    # a RECORD_TOO_LARGE failure saying the limit
    assert rows == [{ROW: 1, "k": "a"}, {ROW: 2, "k": "b"}, {ROW: 3, "k": "c"}, {ROW: 5, "k": "e"}]
    [only] = bad
    assert (only.row_number, only.code) == (4, ErrorCode.RECORD_TOO_LARGE)
    assert "16 MiB" in only.message


@pytest.mark.parametrize(("error", "data"), [
    (psycopg.errors.CharacterNotInRepertoire, True), (psycopg.errors.NotNullViolation, True),
    (psycopg.errors.CheckViolation, True), (psycopg.errors.StringDataRightTruncation, True),
    (psycopg.errors.ForeignKeyViolation, True), (psycopg.errors.NumericValueOutOfRange, True),
    (psycopg.errors.DeadlockDetected, False), (psycopg.errors.SerializationFailure, False),
    (psycopg.errors.AdminShutdown, False), (psycopg.OperationalError, False), (ValueError, False),
])
def test_only_the_datas_own_database_errors_are_data_errors(error, data):
    # Given an error a chunk's write may raise; When classified; Then only classes 22 and 23 are the data's
    assert is_data_error(error("boom")) is data


@settings(max_examples=60, deadline=None)
@given(records=st.lists(st.tuples(st.text("ab,\"\n", max_size=30), st.text("xy\"", max_size=8)), min_size=1,
                        max_size=25),
       feed=st.integers(1, 3), limit=st.integers(12, 60))
def test_records_over_the_limit_are_cut_where_pyarrow_reads_them(tmp_path_factory, records, feed, limit):
    # Given records written as a CSV writer quotes them, each with a second value written bare (a quote in
    # it is a character, as in O"Brien), after one longer than 2 blocks (the large read, from the start),
    # read in feeds of a few bytes against a small limit
    records = [("aaaaaaaa", "b"), *records]
    lines = []
    for quoted, bare in records:
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerow([quoted])  # its line end: a line feed is quoted
        lines.append(f"{out.getvalue()[:-1]},{bare.lstrip(chr(34))}\n")
    path = tmp_path_factory.mktemp("cut") / "in.csv"
    path.write_text("q,b\n" + "".join(lines))
    src = SourceCfg(connection="files", path="in.csv")
    # When read with the limit and feed patched (a block smaller than a record: the large read)
    with mock.patch.object(dxcsv, "BLOCK_BYTES", feed), mock.patch.object(dxcsv, "MAX_RECORD_BYTES", limit):
        rows, bad = [], []
        for table, malformed in iter_batches(path, src, ["q", "b"]):
            rows += table.to_pylist()
            bad += malformed
    # Then each record within the limit is read as written, each over it is RECORD_TOO_LARGE, in order
    expected = {n: (q, b.lstrip('"')) for n, ((q, b), line) in enumerate(zip(records, lines, strict=True), 1)
                if len(line.encode()) <= limit}
    assert {r[ROW]: (r["q"] or "", r["b"] or "") for r in rows} == expected
    assert sorted(m.row_number for m in bad) == [n for n in range(1, len(records) + 1) if n not in expected]
    assert all(m.code is ErrorCode.RECORD_TOO_LARGE for m in bad)


@settings(max_examples=60, deadline=None)
@given(records=st.lists(st.sampled_from(['a,b', '"a\n""b",c', 'O"B,"x"', '"' + "q" * 30 + '",z', "w" * 40, '"",""']),
                        min_size=1, max_size=30),
       feed=st.integers(1, 64), limit=st.integers(4, 45))
def test_the_cut_stream_replaces_exactly_the_records_over_the_limit(records, feed, limit):
    # Given records (quoted line breaks, doubled quotes, a quote inside a bare value) in feeds of any size
    data = "".join(f"{r}\n" for r in records).encode()
    stream = io.BytesIO(data)
    src = SourceCfg(connection="files", path="in.csv")
    # When cut against a small limit
    with mock.patch.object(dxcsv, "BLOCK_BYTES", feed), mock.patch.object(dxcsv, "MAX_RECORD_BYTES", limit):
        cut = dxcsv._Cut(stream, src, 2)  # type: ignore[arg-type]
        out = b"".join(iter(lambda: cut.read(7), b""))
    # Then the records over the limit are the marker, the others as they were, and their sizes are kept
    assert out.decode() == "".join(f"{r if len(r) + 1 <= limit else cut.marker}\n" for r in records)
    assert [size for size, _ in cut.cut] == [len(r) + 1 for r in records if len(r) + 1 > limit]
