"""The CSV and XML readers on any bytes: records and malformed records, or a run-level code; nothing else."""

from __future__ import annotations

import gzip
import io
import itertools
import zipfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dx.shared.config import SourceCfg
from dx.shared.errors import ErrorCode, RunError
from dx.shared.formats import csv as dxcsv
from dx.shared.formats import xml as dxxml
from dx.shared.formats.csv import ROW, Malformed
from tests.fuzz.strategies import FUZZ

pytestmark = pytest.mark.timeout(120)
#: The codes a source's content may fail its run with.
CONTENT_CODES = {ErrorCode.SOURCE_UNREADABLE, ErrorCode.SOURCE_UNDECODABLE, ErrorCode.SOURCE_UNSAFE,
                 ErrorCode.MALFORMED_HEADER}

#: Pieces of CSV: delimiters, quotes, line ends, a BOM, bytes invalid in UTF-8, NUL, letters.
csv_piece = st.sampled_from([b",", b";", b"\t", b"|", b'"', b"'", b"\n", b"\r", b"\r\n", b" ", b"a", b"b", b"id",
                             b"\xef\xbb\xbf", b"\xff", b"\xc3\xa9", b"\xe2\x82", b"\x00", b"=1+1", b'""'])
csv_bytes = st.one_of(st.lists(csv_piece, max_size=60).map(b"".join), st.binary(max_size=200))


def _compressed(data: bytes, kind: str) -> bytes:
    if kind == "gzip":
        return gzip.compress(data)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("inner.csv", data)
    return buffer.getvalue()


@st.composite
def csv_files(draw: st.DrawFn) -> tuple[bytes, str, SourceCfg]:
    """A CSV file's bytes, its name and its source options (delimiter, quote, header, encoding, nulls,
    compression)."""
    data = draw(csv_bytes)
    compression = draw(st.sampled_from(["none", "auto", "gzip", "zip"]))
    if compression in ("gzip", "zip") and draw(st.booleans()):
        data = _compressed(data, compression)  # else: bytes that claim to be compressed and are not
    header = draw(st.booleans())
    options: dict[str, Any] = {
        "delimiter": draw(st.sampled_from([",", ";", "\t", "|"])), "quote": draw(st.sampled_from(['"', "'"])),
        "encoding": draw(st.sampled_from(["utf-8", "latin-1", "windows-1252"])), "header": header,
        "nulls": draw(st.sampled_from(["blank", "unquoted"])), "compression": compression}
    if not header:
        options["columns"] = [f"c{i}" for i in range(draw(st.integers(min_value=1, max_value=4)))]
    name = draw(st.sampled_from(["in.csv", "in.csv.gz", "in.zip"]))
    return data, name, SourceCfg(connection="files", path=f"in/{name}", **options)


def _check_batches(batches: list[tuple[Any, list[Malformed]]], columns: list[str]) -> None:
    """Every batch has the row column and the source's columns; row numbers of good and malformed
    records are positive and never repeat, good ones ascending."""
    good: list[int] = []
    bad: list[int] = []
    for table, malformed in batches:
        table = table if isinstance(table, pa.Table) else table.to_arrow()
        assert table.column_names == [ROW, *columns]
        good += table.column(ROW).to_pylist()
        bad += [m.row_number for m in malformed]
        assert all(isinstance(m.message, str) for m in malformed)
    assert good == sorted(good) and all(n >= 1 for n in good)
    assert len(set(good) | set(bad)) == len(good) + len(bad)


@settings(FUZZ, max_examples=200)
@given(case=csv_files(), block_bytes=st.sampled_from([64, 1 << 20]))
def test_the_csv_reader_reads_any_bytes_or_fails_with_a_content_code(tmp_path_factory, case, block_bytes,
                                                                     monkeypatch_session):
    data, name, src = case
    path = Path(tmp_path_factory.getbasetemp()) / name
    path.write_bytes(data)
    monkeypatch_session.setattr(dxcsv, "BLOCK_BYTES", block_bytes)
    try:
        columns = dxcsv.read_header(path, src)
        batches = list(dxcsv.iter_batches(path, src, columns))
    except RunError as exc:
        assert exc.code in CONTENT_CODES, exc
        return
    assert columns and all(isinstance(c, str) for c in columns)
    _check_batches(batches, columns)


#: Pieces of XML: the layout clients send, declarations, entities, DTDs, CDATA, namespaces, broken tags.
xml_piece = st.sampled_from([
    "<dataroot>", "</dataroot>", "<RECORD>", "</RECORD>", '<RECORD ACTION="U">', "<EMAIL>", "</EMAIL>",
    "<POINTS>", "</POINTS>", "<X/>", "a@x.it", "3", "&amp;", "&a;", "&#0;", "&#x1F600;", "<![CDATA[<b>]]>",
    "<!-- c -->", "<?pi x?>", '<?xml version="1.0" encoding="latin-1"?>', '<?xml version="1.0"?>',
    '<!DOCTYPE d [<!ENTITY a "b">]>', '<!DOCTYPE d SYSTEM "file:///etc/passwd">', '<n:RECORD xmlns:n="urn:x">',
    "</n:RECORD>", "<", ">", "\x00", "é", "\n", " "])
xml_bytes = st.one_of(st.lists(xml_piece, max_size=40).map(lambda p: "".join(p).encode("utf-8")),
                      st.lists(xml_piece, max_size=40).map(lambda p: "".join(p).encode("latin-1", "replace")),
                      st.binary(max_size=200))


@settings(FUZZ, max_examples=200)
@given(data=xml_bytes, updater=st.booleans(), element=st.sampled_from(["RECORD", "EMAIL", "row"]),
       batch=st.sampled_from([2, 50_000]))
def test_the_xml_reader_reads_any_bytes_or_fails_with_a_content_code(tmp_path_factory, monkeypatch_session, data,
                                                                     updater, element, batch):
    path = Path(tmp_path_factory.getbasetemp()) / "in.xml"
    path.write_bytes(data)
    src = SourceCfg(connection="files", path="in/in.xml", format="xml", record_element=element)
    operation_field = "ACTION" if updater else None
    monkeypatch_session.setattr(dxxml, "BATCH_RECORDS", batch)
    try:
        spooled = dxxml.read(path, src, operation_field, path.with_name("in.xml.spool"))
        columns = spooled.columns
        batches = list(spooled.batches(columns))
    except RunError as exc:
        assert exc.code in CONTENT_CODES, exc
        return
    assert len(set(columns)) == len(columns)
    _check_batches(batches, columns)
    # records are numbered by their ordinal: good and malformed together make 1..n
    numbers = sorted(itertools.chain.from_iterable(
        [*t.to_arrow().column(ROW).to_pylist(), *(m.row_number for m in bad)] for t, bad in batches))
    assert numbers == list(range(1, len(numbers) + 1))


@pytest.fixture(scope="session")
def monkeypatch_session() -> Any:
    """A monkeypatch undone at the end of the session (Hypothesis refuses function-scoped fixtures)."""
    with pytest.MonkeyPatch.context() as patch:
        yield patch
