"""``read_header`` and ``iter_batches``: every value a string, every record keeps its row number."""

from __future__ import annotations

import csv
import gzip
import io
import zipfile
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dx.shared.config import SourceCfg
from dx.shared.errors import ErrorCode
from dx.shared.formats import csv as dxcsv
from dx.shared.formats.csv import ROW, iter_batches, read_header


def read_all(path: Path, src: SourceCfg) -> tuple[list[str], list[dict[str, Any]], list[dxcsv.Malformed]]:
    """(header, every good row as a dict with __row, every malformed record), over all batches."""
    columns = read_header(path, src)
    rows: list[dict[str, Any]] = []
    malformed: list[dxcsv.Malformed] = []
    for table, bad in iter_batches(path, src, columns):
        assert table.column_names == [ROW, *columns]
        rows += table.to_pylist()
        malformed += bad
    return columns, rows, malformed


def csv_text(rows: list[list[str]], delimiter: str = ",") -> str:
    """Rows written by Python's csv module with its defaults: minimal quoting, CRLF line ends.

    (With a bare \\n line end the module leaves a lone \\r unquoted: that file would be ambiguous.)
    """
    out = io.StringIO()
    csv.writer(out, delimiter=delimiter).writerows(rows)
    return out.getvalue()


# --- encodings, delimiter, quoting ------------------------------------------------------------------------


def test_utf8_with_bom_reads_the_first_column_name_without_the_bom(write_file, make_source):
    # Given a UTF-8 file starting with a byte-order mark
    path = write_file("bom.csv", "\ufeffemail,name\nzoë@example.com,Zoë\n")
    # When read
    columns, rows, malformed = read_all(path, make_source())
    # Then the BOM is not part of the first column name, and non-ASCII text is intact
    assert columns == ["email", "name"]
    assert rows == [{ROW: 1, "email": "zoë@example.com", "name": "Zoë"}]
    assert malformed == []


def test_utf8_bom_is_not_part_of_the_first_value_without_header(write_file, make_source):
    # Given a headerless UTF-8 file with a BOM, its columns configured
    path = write_file("bom.csv", "\ufeffa@example.com,1\n")
    src = make_source(header=False, columns=["email", "n"])
    # When read / Then the first value has no BOM and is row 1
    assert read_all(path, src)[1] == [{ROW: 1, "email": "a@example.com", "n": "1"}]


@pytest.mark.parametrize(("configured", "file_encoding", "text"), [
    ("latin-1", "latin-1", "prénom,ville\nJérôme,Besançon\n"),
    ("latin1", "latin-1", "prénom,ville\nJérôme,Besançon\n"),
    ("windows-1252", "cp1252", "prénom,ville\nJérôme “Jé”,€ 5 – œuvre\n"),
])
def test_single_byte_encodings_are_transcoded(write_file, make_source, configured, file_encoding, text):
    # Given a file in a single-byte encoding, configured as such
    path = write_file("legacy.csv", text, encoding=file_encoding)
    # When read
    columns, rows, _ = read_all(path, make_source(encoding=configured))
    # Then header and values come back as the original text
    header, values = (line.split(",") for line in text.splitlines())
    assert columns == header
    assert rows == [{ROW: 1, **dict(zip(header, values, strict=True))}]


def test_a_semicolon_delimiter_keeps_commas_inside_values(write_file, make_source):
    # Given a ';'-separated file whose values hold commas and a quoted ';'
    path = write_file("semi.csv", 'id;name;note\n1;Doe, John;"a;b"\n')
    # When read with delimiter ';'
    columns, rows, _ = read_all(path, make_source(delimiter=";"))
    # Then fields split on ';' only
    assert columns == ["id", "name", "note"]
    assert rows == [{ROW: 1, "id": "1", "name": "Doe, John", "note": "a;b"}]


def test_quoted_newlines_stay_inside_their_value_and_do_not_shift_row_numbers(write_file, make_source):
    # Given records whose quoted values span several lines (LF and CRLF)
    path = write_file("multi.csv", 'id,address\n1,"1 Main St\nApt 2"\n2,"x\r\ny\r\nz"\n3,plain\n')
    # When read
    _, rows, malformed = read_all(path, make_source())
    # Then each value keeps its newlines and records are numbered 1, 2, 3
    assert rows == [{ROW: 1, "id": "1", "address": "1 Main St\nApt 2"},
                    {ROW: 2, "id": "2", "address": "x\r\ny\r\nz"},
                    {ROW: 3, "id": "3", "address": "plain"}]
    assert malformed == []


def test_empty_values_are_empty_strings_not_nulls(write_file, make_source):
    # Given empty unquoted and quoted values / When read / Then both are "" (validation decides)
    path = write_file("empty.csv", 'id,a,b\n1,,""\n')
    assert read_all(path, make_source())[1] == [{ROW: 1, "id": "1", "a": "", "b": ""}]


def test_with_unquoted_nulls_only_an_unquoted_empty_cell_is_null(write_file, make_source):
    # Given an unquoted empty cell, a quoted empty one and a quoted blank one, read with nulls: unquoted
    path = write_file("nulls.csv", 'id,a,b,c\n1,,"","  "\n')
    # When read / Then the unquoted one is null, the quoted ones are the text as written
    assert read_all(path, make_source(nulls="unquoted"))[1] == [{ROW: 1, "id": "1", "a": None, "b": "", "c": "  "}]


def test_a_header_only_file_yields_no_rows(write_file, make_source):
    # Given a file holding only its header line / When read / Then its columns and no record
    columns, rows, malformed = read_all(write_file("header.csv", "id,email\n"), make_source())
    assert (columns, rows, malformed) == (["id", "email"], [], [])


# --- compression ------------------------------------------------------------------------------------------

CONTACTS = "id,email\n1,a@example.com\n2,b@example.com\n"
CONTACT_ROWS = [{ROW: 1, "id": "1", "email": "a@example.com"}, {ROW: 2, "id": "2", "email": "b@example.com"}]


def zipped(members: dict[str, str]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, text in members.items():
            zf.writestr(name, text)
    return out.getvalue()


@pytest.mark.parametrize(("name", "content", "compression"), [
    ("contacts.csv.gz", gzip.compress(CONTACTS.encode()), "auto"),
    ("contacts.zip", zipped({"contacts.csv": CONTACTS}), "auto"),
    ("contacts.dat", gzip.compress(CONTACTS.encode()), "gzip"),
    ("contacts.bin", zipped({"contacts.csv": CONTACTS}), "zip"),
])
def test_compressed_sources_are_read(write_file, make_source, name, content, compression):
    # Given a gzip or zip source, detected by its name or configured
    path = write_file(name, content)
    # When read / Then the records are those of the inner CSV
    columns, rows, _ = read_all(path, make_source(compression=compression))
    assert columns == ["id", "email"]
    assert rows == CONTACT_ROWS


@pytest.mark.parametrize(("name", "content"), [
    ("two.zip", zipped({"a.csv": CONTACTS, "b.csv": CONTACTS})),
    ("broken.zip", b"not a zip at all"),
    ("broken.csv.gz", b"not gzip either"),
    ("cut.csv.gz", gzip.compress(CONTACTS.encode() * 1000)[:-20]),
])
def test_an_unreadable_compressed_source_is_source_unreadable(write_file, make_source, raises_run_error,
                                                              name, content):
    # Given a zip with two members, or a corrupt or truncated archive
    path = write_file(name, content)
    # When read / Then the run fails with SOURCE_UNREADABLE
    with raises_run_error(ErrorCode.SOURCE_UNREADABLE):
        read_all(path, make_source())


# --- malformed records and row numbers --------------------------------------------------------------------


def test_a_malformed_record_is_returned_with_its_row_number(write_file, make_source):
    # Given record 2 with too few fields and record 4 with too many
    path = write_file("bad.csv", "id,email\n1,a@x.io\n2\n3,c@x.io\n4,d@x.io,extra\n5,e@x.io\n")
    # When read
    _, rows, malformed = read_all(path, make_source())
    # Then the good records keep their own numbers and the malformed ones are reported, not dropped
    assert [(r[ROW], r["id"]) for r in rows] == [(1, "1"), (3, "3"), (5, "5")]
    assert malformed == [dxcsv.Malformed(2, "2", expected=2, actual=1),
                         dxcsv.Malformed(4, "4,d@x.io,extra", expected=2, actual=3)]


def test_a_malformed_last_record_is_still_reported(write_file, make_source):
    # Given a file whose very last record is malformed / When read / Then it is reported as row 3
    path = write_file("tail.csv", "id,email\n1,a@x.io\n2,b@x.io\n3\n")
    _, rows, malformed = read_all(path, make_source())
    assert [r[ROW] for r in rows] == [1, 2]
    assert [m.row_number for m in malformed] == [3]


def test_row_numbers_start_at_one_without_header(write_file, make_source):
    # Given a headerless file with a malformed second record
    path = write_file("nohead.csv", "1,a@x.io\n2\n3,c@x.io\n")
    # When read with configured columns / Then numbering counts from the first line
    _, rows, malformed = read_all(path, make_source(header=False, columns=["id", "email"]))
    assert [(r[ROW], r["id"]) for r in rows] == [(1, "1"), (3, "3")]
    assert [m.row_number for m in malformed] == [2]


def test_row_numbers_stay_exact_across_many_blocks(write_file, make_source, monkeypatch):
    # Given 2,000 records, every 7th malformed and every 5th spanning two lines, read in 256-byte blocks
    # handed on in batches of several blocks (1 KiB)
    monkeypatch.setattr(dxcsv, "BLOCK_BYTES", 256)
    monkeypatch.setattr(dxcsv, "BATCH_BYTES", 1024)
    lines, expected_good, expected_bad = ["id,note"], [], []
    for n in range(1, 2001):
        if n % 7 == 0:
            lines.append(f"{n}")
            expected_bad.append(n)
        else:
            note = f'"line one\nline two {n}"' if n % 5 == 0 else f"note {n}"
            lines.append(f"{n},{note}")
            expected_good.append(n)
    path = write_file("big.csv", "\n".join(lines) + "\n")
    # When read batch by batch
    columns = read_header(path, make_source())
    batches = list(iter_batches(path, make_source(), columns))
    # Then there were many batches, and every record has exactly its own number
    assert len(batches) > 10
    rows = [row for table, _ in batches for row in table.to_pylist()]
    assert [r[ROW] for r in rows] == expected_good
    assert all(r["id"] == str(r[ROW]) for r in rows)
    assert sorted(m.row_number for _, bad in batches for m in bad) == expected_bad


@pytest.mark.parametrize("encoding", ["utf-8", "windows-1252"])
def test_a_quoted_line_break_cut_by_a_block_end_is_read_whole(write_file, make_source, monkeypatch, encoding):
    # Given values holding CR LF and a euro sign (3 bytes in UTF-8, 1 in Windows-1252), quoted, read in blocks
    # of every size from 16 to 120 bytes (some blocks end between the CR and the LF: pyarrow alone reads such a
    # value as "\r", its line feed lost; transcoding shifts where its blocks end)
    notes = [f"€a\r\nb{i}" for i in range(1, 30)]
    text = "id,note\r\n" + "".join(f'{i},"{note}"\r\n' for i, note in enumerate(notes, 1))
    path = write_file("crlf.csv", text, encoding=encoding)
    for block_bytes in range(16, 121):
        monkeypatch.setattr(dxcsv, "BLOCK_BYTES", block_bytes)
        # When read / Then every value is whole
        _, rows, malformed = read_all(path, make_source(encoding=encoding))
        assert malformed == []
        assert [r["note"] for r in rows] == notes, f"blocks of {block_bytes} bytes"


def test_a_record_longer_than_a_block_is_read_whole(write_file, make_source, monkeypatch):
    # Given 64-byte blocks and a record of about 100 bytes between two short ones
    monkeypatch.setattr(dxcsv, "BLOCK_BYTES", 64)
    long_note = "y" * 100
    path = write_file("long.csv", f'id,note\n1,x\n2,"{long_note}"\n3,z\n')
    # When read / Then the long record is intact and numbering is unbroken
    _, rows, _ = read_all(path, make_source())
    assert [(r[ROW], r["note"]) for r in rows] == [(1, "x"), (2, long_note), (3, "z")]


# --- run-level errors -------------------------------------------------------------------------------------


def test_a_latin1_file_read_as_utf8_is_source_undecodable(write_file, make_source, raises_run_error):
    # Given a Latin-1 file configured as UTF-8 (the default), its first 'é' far into the data
    path = write_file("latin.csv", "id,name\n" + "1,ascii\n" * 50 + "2,Jérôme\n", encoding="latin-1")
    # When the records are read / Then the run fails with SOURCE_UNDECODABLE, pointing at the setting
    with raises_run_error(ErrorCode.SOURCE_UNDECODABLE) as info:
        list(iter_batches(path, make_source(), ["id", "name"]))
    assert "source.encoding" in info.value.message


def test_an_undecodable_header_is_source_undecodable(write_file, make_source, raises_run_error):
    # Given a Windows-1252 header configured as UTF-8
    path = write_file("latin.csv", "prénom,email\nJo,jo@x.io\n", encoding="cp1252")
    # When the header is read / Then SOURCE_UNDECODABLE names the expected encoding
    with raises_run_error(ErrorCode.SOURCE_UNDECODABLE) as info:
        read_header(path, make_source())
    assert "not valid utf-8" in info.value.message


def test_an_undecodable_header_only_file_is_source_undecodable(write_file, make_source, raises_run_error):
    # Given a header-only Latin-1 file configured as UTF-8, its last column name ending in 'é'
    path = write_file("latin.csv", "email,café\n", encoding="latin-1")
    # When the header is read / Then SOURCE_UNDECODABLE (not a silently truncated column 'caf')
    with raises_run_error(ErrorCode.SOURCE_UNDECODABLE):
        read_header(path, make_source())


@pytest.mark.parametrize(("header", "named"), [
    ("id,email,id", "id twice"),
    ("id,,email", "an empty column"),
    (" id ,id", "id twice"),
])
def test_a_bad_header_is_malformed_header(write_file, make_source, raises_run_error, header, named):
    # Given a header naming a column twice (after trimming) or leaving one unnamed
    path = write_file("dup.csv", f"{header}\n1,2,3\n")
    # When read / Then MALFORMED_HEADER says what is wrong
    with raises_run_error(ErrorCode.MALFORMED_HEADER) as info:
        read_header(path, make_source())
    assert info.value.message.endswith(named)


@pytest.mark.parametrize("content", ["", "\n", ",,\n"])
def test_a_missing_header_is_malformed_header(write_file, make_source, raises_run_error, content):
    # Given an empty file, a blank first line or a header of empty names / When read / Then MALFORMED_HEADER
    with raises_run_error(ErrorCode.MALFORMED_HEADER):
        read_header(write_file("empty.csv", content), make_source())


def test_a_quoted_newline_in_the_header_does_not_become_a_record(write_file, make_source):
    # Given a spreadsheet export whose header cell holds a line break
    path = write_file("excel.csv", 'email,"Opt-in\n(yes/no)"\na@x.io,yes\nb@x.io,no\n')
    # When read
    columns, rows, malformed = read_all(path, make_source())
    # Then the header is one record and the data records are rows 1 and 2
    assert columns == ["email", "Opt-in\n(yes/no)"]
    assert malformed == []
    assert [(r[ROW], r["email"]) for r in rows] == [(1, "a@x.io"), (2, "b@x.io")]


# --- property: whatever Python's csv module writes reads back exactly -------------------------------------

cell = st.text(alphabet=st.sampled_from(list('ab zé€,;"\'\n\r\t|')), max_size=8)


@st.composite
def tables(draw: st.DrawFn) -> list[list[str]]:
    width = draw(st.integers(min_value=1, max_value=4))
    return draw(st.lists(st.lists(cell, min_size=width, max_size=width), max_size=25))


@settings(max_examples=80, deadline=None, database=None)
@given(table=tables(), delimiter=st.sampled_from([",", ";", "\t", "|"]),
       encoding=st.sampled_from(["utf-8", "windows-1252"]), block_bytes=st.sampled_from([128, 1 << 20]))
def test_any_table_written_by_the_csv_module_reads_back_exactly(tmp_path_factory, make_source, table,
                                                                delimiter, encoding, block_bytes):
    # Given a random table of short strings (delimiters, quotes, newlines included), written with a header,
    # and blocks of 128 bytes (longer than any record here: a record may not span more than two blocks)
    header = [f"c{i}" for i in range(len(table[0]))] if table else ["c0"]
    path = tmp_path_factory.getbasetemp() / "roundtrip.csv"
    path.write_bytes(csv_text([header, *table], delimiter).encode(encoding))
    src = make_source(delimiter=delimiter, encoding=encoding)
    # When read back in blocks of block_bytes
    with mock.patch.object(dxcsv, "BLOCK_BYTES", block_bytes):
        columns, rows, malformed = read_all(path, src)
    # Then every record is back, in order, numbered 1..n, with nothing malformed
    assert columns == header
    assert malformed == []
    assert rows == [{ROW: n, **dict(zip(header, record, strict=True))} for n, record in enumerate(table, 1)]


@settings(max_examples=60, deadline=None, database=None)
@given(table=tables(), extra=st.lists(st.booleans(), max_size=25), block_bytes=st.sampled_from([128, 1 << 20]))
def test_good_and_malformed_records_share_one_exact_numbering(tmp_path_factory, make_source, table, extra,
                                                              block_bytes):
    # Given a random table where some records carry one field too many
    header = [f"c{i}" for i in range(len(table[0]))] if table else ["c0"]
    records = [[*r, "surplus"] if i < len(extra) and extra[i] else r for i, r in enumerate(table)]
    path = tmp_path_factory.getbasetemp() / "malformed.csv"
    path.write_bytes(csv_text([header, *records]).encode())
    # When read back
    with mock.patch.object(dxcsv, "BLOCK_BYTES", block_bytes):
        _, rows, malformed = read_all(path, make_source())
    # Then the good ones keep their values and numbers, and the others are reported under theirs
    long_ones = {n for n, r in enumerate(records, 1) if len(r) > len(header)}
    assert [m.row_number for m in malformed] == sorted(long_ones)
    assert all(m.actual == len(header) + 1 for m in malformed)
    assert rows == [{ROW: n, **dict(zip(header, r, strict=True))}
                    for n, r in enumerate(records, 1) if n not in long_ones]


def test_a_lone_carriage_return_in_the_header_is_malformed_header(write_file, make_source, raises_run_error):
    # Given a carriage return alone inside the header line (found by fuzzing; on main: csv.Error escaped)
    path = write_file("cr.csv", b"email,name\rpoints\na@x.it,A\n")
    # When its header is read / Then MALFORMED_HEADER, saying why
    with raises_run_error(ErrorCode.MALFORMED_HEADER) as info:
        read_header(path, make_source())
    assert "carriage return" in info.value.message
