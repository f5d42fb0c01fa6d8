"""The streaming XML reader: fields as child elements, the operation attribute, row numbers,
encodings from the declaration, compression, and entities refused rather than expanded."""

from __future__ import annotations

import gzip
import zipfile
from pathlib import Path
from typing import Any

import pytest

from dx.shared.config import SourceCfg
from dx.shared.errors import ErrorCode
from dx.shared.formats import xml as dxxml
from dx.shared.formats.csv import ROW, Malformed

pytestmark = pytest.mark.timeout(30)


def read_all(path: Path, src: SourceCfg, operation_field: str | None = None
             ) -> tuple[list[str], list[dict[str, Any]], list[Malformed]]:
    """(columns, every good record as a dict with __row, every malformed record), over all batches."""
    spooled = dxxml.read(path, src, operation_field, path.with_name(f".{path.name}.spool"))
    columns = spooled.columns
    rows: list[dict[str, Any]] = []
    malformed: list[Malformed] = []
    for frame, bad in spooled.batches(columns):
        assert frame.columns == [ROW, *columns]
        rows += frame.to_dicts()
        malformed += bad
    return columns, rows, malformed


def xml_source(make_source: Any, **overrides: Any) -> SourceCfg:
    return make_source(path="in/contacts.xml", format="xml", **overrides)


ACCESS_EXPORT = """<?xml version="1.0" encoding="UTF-8"?>
<dataroot xmlns:od="urn:schemas-microsoft-com:officedata" generated="2026-11-27T10:00:00">
  <RECORD ACTION="U"><EMAIL>a@x.it</EMAIL><FIRST_NAME>Zoë</FIRST_NAME></RECORD>
  <RECORD ACTION="I"><EMAIL>b@x.it</EMAIL><POINTS>7</POINTS><FIRST_NAME></FIRST_NAME></RECORD>
  <RECORD action="d"><EMAIL>c@x.it</EMAIL></RECORD>
</dataroot>
"""


def test_fields_are_child_elements_and_the_action_attribute_is_the_operation(write_file, make_source):
    # Given the layout clients send, ACTION attributes in any case, fields missing from some records
    path = write_file("in.xml", ACCESS_EXPORT)
    # When read for an updater whose operation_field is `action`
    columns, rows, malformed = read_all(path, xml_source(make_source), "action")
    # Then the operation is a column, fields are in order of first appearance, a missing field is
    # null and an empty element the empty string; row numbers are the records' ordinals
    assert columns == ["action", "EMAIL", "FIRST_NAME", "POINTS"]
    assert rows == [
        {ROW: 1, "action": "U", "EMAIL": "a@x.it", "FIRST_NAME": "Zoë", "POINTS": None},
        {ROW: 2, "action": "I", "EMAIL": "b@x.it", "FIRST_NAME": "", "POINTS": "7"},
        {ROW: 3, "action": "d", "EMAIL": "c@x.it", "FIRST_NAME": None, "POINTS": None},
    ]
    assert malformed == []


def test_an_importer_ignores_attributes_and_action_attribute_names_another_one(write_file, make_source):
    # Given records whose operation is in an attribute OP
    path = write_file("in.xml", '<dataroot><RECORD OP="D" ACTION="x"><EMAIL>a@x.it</EMAIL></RECORD></dataroot>')
    # When read without an operation field (an importer), and with action_attribute OP for `operation`
    plain = read_all(path, xml_source(make_source), None)
    named = read_all(path, xml_source(make_source, action_attribute="op"), "operation")
    # Then the importer sees only the fields; the updater takes OP, not ACTION
    assert plain[0] == ["EMAIL"]
    assert named[1] == [{ROW: 1, "operation": "D", "EMAIL": "a@x.it"}]


def test_an_operation_element_is_read_as_the_operation_and_both_forms_at_once_are_malformed(write_file,
                                                                                            make_source):
    # Given one record with an <OPERATION> element, one with the attribute, one with both
    path = write_file("in.xml", "<dataroot>"
                      "<RECORD><OPERATION>U</OPERATION><EMAIL>a@x.it</EMAIL></RECORD>"
                      '<RECORD operation="I"><EMAIL>b@x.it</EMAIL></RECORD>'
                      '<RECORD OPERATION="D"><OPERATION>D</OPERATION><EMAIL>c@x.it</EMAIL></RECORD>'
                      "</dataroot>")
    # When read for an updater with the default operation_field
    columns, rows, malformed = read_all(path, xml_source(make_source), "operation")
    # Then both forms fill one column; the record giving both is malformed, its number kept
    assert columns == ["operation", "EMAIL"]
    assert [(r[ROW], r["operation"]) for r in rows] == [(1, "U"), (2, "I")]
    assert [(m.row_number, m.reason) for m in malformed] == [(3, "operation is given twice in the record")]


def test_a_custom_record_element_in_a_namespace_is_found_by_local_name(write_file, make_source):
    # Given a namespaced document whose records are <c:contact>, with comments and other elements around
    path = write_file("in.xml", '<?xml version="1.0"?><c:export xmlns:c="urn:crm"><c:meta>x</c:meta>'
                      "<!-- comment --><c:contact><c:email>a@x.it</c:email><!-- c --></c:contact>"
                      "<c:contact><c:email>b@x.it</c:email></c:contact></c:export>")
    # When read with record_element contact
    columns, rows, _ = read_all(path, xml_source(make_source, record_element="contact"))
    # Then both records come back by local names
    assert columns == ["email"]
    assert [r["email"] for r in rows] == ["a@x.it", "b@x.it"]


def test_malformed_records_keep_their_ordinal_and_the_others_go_on(write_file, make_source, monkeypatch):
    # Given records in batches of 2, a field given twice (record 2) and a field holding elements (record 4)
    monkeypatch.setattr(dxxml, "BATCH_RECORDS", 2)
    path = write_file("in.xml", "<dataroot>"
                      "<RECORD><EMAIL>a@x.it</EMAIL></RECORD>"
                      "<RECORD><EMAIL>b@x.it</EMAIL><EMAIL>b2@x.it</EMAIL></RECORD>"
                      "<RECORD><EMAIL>c@x.it</EMAIL></RECORD>"
                      "<RECORD><EMAIL><B>d</B></EMAIL></RECORD>"
                      "<RECORD><EMAIL>e@x.it</EMAIL></RECORD>"
                      "</dataroot>")
    # When read
    _, rows, malformed = read_all(path, xml_source(make_source))
    # Then the good records keep their ordinals, the bad ones are reported with theirs and why
    assert [(r[ROW], r["EMAIL"]) for r in rows] == [(1, "a@x.it"), (3, "c@x.it"), (5, "e@x.it")]
    assert [(m.row_number, m.reason) for m in malformed] == [
        (2, "EMAIL is given twice in the record"), (4, "EMAIL holds elements instead of a value")]
    assert "<EMAIL>b2@x.it</EMAIL>" in malformed[0].message


def test_a_field_first_met_in_a_later_batch_is_absent_from_the_earlier_records(write_file, make_source,
                                                                               monkeypatch):
    # Given batches of 2 and a field that only the third record gives, after a malformed record that
    # names another one past its fault
    monkeypatch.setattr(dxxml, "BATCH_RECORDS", 2)
    path = write_file("in.xml", "<dataroot>"
                      "<RECORD><EMAIL>a@x.it</EMAIL></RECORD>"
                      "<RECORD><EMAIL>b@x.it</EMAIL><EMAIL>b2@x.it</EMAIL><CITY>Roma</CITY></RECORD>"
                      "<RECORD><POINTS>3</POINTS><EMAIL>c@x.it</EMAIL></RECORD>"
                      "</dataroot>")
    # When read in one pass
    columns, rows, malformed = read_all(path, xml_source(make_source))
    # Then the columns are every name in order of first appearance, and a record that lacked one has it null
    assert columns == ["EMAIL", "CITY", "POINTS"]
    assert [(r[ROW], r["EMAIL"], r["CITY"], r["POINTS"]) for r in rows] == [
        (1, "a@x.it", None, None), (3, "c@x.it", None, "3")]
    assert [m.row_number for m in malformed] == [2]


def test_a_fault_after_batches_were_spooled_leaves_no_spool(write_file, make_source, monkeypatch, raises_run_error):
    # Given batches of 1 and a document that breaks after three records
    monkeypatch.setattr(dxxml, "BATCH_RECORDS", 1)
    path = write_file("in.xml", "<dataroot>" + "<RECORD><EMAIL>a@x.it</EMAIL></RECORD>" * 3 + "<RECORD></dataroot>")
    spool = path.with_name("in.xml.spool")
    seen: list[int] = []
    real_flush_target = dxxml.pl.DataFrame.write_ipc

    def spy(frame, target, *args, **kwargs):  # counts the batches spooled before the fault
        seen.append(frame.height)
        return real_flush_target(frame, target, *args, **kwargs)

    monkeypatch.setattr(dxxml.pl.DataFrame, "write_ipc", spy)
    # When read / Then it fails, after spooling three batches, and the spool is gone
    with raises_run_error(ErrorCode.SOURCE_UNREADABLE):
        dxxml.read(path, xml_source(make_source), None, spool)
    assert seen == [1, 1, 1]
    assert not spool.exists()


@pytest.mark.parametrize("declared, codec", [("ISO-8859-1", "latin-1"), ("windows-1252", "cp1252"),
                                             ("UTF-16", "utf-16"), (None, "utf-8-sig")])
def test_the_encoding_is_the_xml_declarations(write_file, make_source, declared, codec):
    # Given a file in the encoding its declaration names (or UTF-8 with a BOM and no declaration)
    head = f'<?xml version="1.0" encoding="{declared}"?>' if declared else ""
    path = write_file("in.xml", f"{head}<dataroot><RECORD><NAME>Zoë €uro</NAME></RECORD></dataroot>"
                      .replace("€", "€" if codec in ("cp1252", "utf-16", "utf-8-sig") else "E"), codec)
    # When read
    _, rows, _ = read_all(path, xml_source(make_source))
    # Then the text is decoded as declared
    assert rows[0]["NAME"] in ("Zoë €uro", "Zoë Euro")
    assert rows[0]["NAME"].startswith("Zoë")


def test_bytes_not_in_the_declared_encoding_are_undecodable(write_file, make_source, raises_run_error):
    # Given Latin-1 bytes in a file that declares (by default) UTF-8
    path = write_file("in.xml", "<dataroot><RECORD><NAME>Zoë</NAME></RECORD></dataroot>", "latin-1")
    # When read / Then SOURCE_UNDECODABLE with the place
    with raises_run_error(ErrorCode.SOURCE_UNDECODABLE) as info:
        read_all(path, xml_source(make_source))
    assert "line 1" in info.value.message


def test_a_document_that_is_not_well_formed_fails_with_line_and_column(write_file, make_source,
                                                                       raises_run_error):
    # Given a mismatched closing tag on line 3
    path = write_file("in.xml", "<dataroot>\n<RECORD><EMAIL>a@x.it</EMAIL></RECORD>\n"
                      "<RECORD><EMAIL>b@x.it</EMAL></RECORD>\n</dataroot>")
    # When read (the one pass checks the whole document before any batch is used)
    spool = path.with_name("in.xml.spool")
    with raises_run_error(ErrorCode.SOURCE_UNREADABLE) as info:
        dxxml.read(path, xml_source(make_source), None, spool)
    # Then the message says where, and the batches spooled before the fault are gone
    assert "line 3, column" in info.value.message
    assert not spool.exists()


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<dataroot><RECORD><EMAIL>a@x.it</EMAIL><NAME>&lol9;</NAME></RECORD></dataroot>
"""


@pytest.mark.parametrize("document", [
    BILLION_LAUGHS,
    '<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
    "<dataroot><RECORD><EMAIL>a@x.it</EMAIL><NAME>&x;</NAME></RECORD></dataroot>",
    '<?xml version="1.0"?><!DOCTYPE dataroot SYSTEM "http://127.0.0.1:9/evil.dtd">'
    "<dataroot><RECORD><EMAIL>a@x.it</EMAIL></RECORD></dataroot>",
], ids=["billion-laughs", "external-entity", "external-dtd"])
def test_entities_and_external_dtds_are_refused_not_expanded(write_file, make_source, raises_run_error, document):
    # Given an entity bomb, an external entity, or an external DTD
    path = write_file("in.xml", document)
    # When read / Then the document is refused with SOURCE_UNSAFE
    with raises_run_error(ErrorCode.SOURCE_UNSAFE) as info:
        read_all(path, xml_source(make_source))
    assert "refused" in info.value.message


def test_a_wrong_record_element_is_a_clear_error_and_an_empty_root_has_no_columns(write_file, make_source,
                                                                                  raises_run_error):
    # Given records named <record> while RECORD is configured, and a document with no record at all
    wrong = write_file("wrong.xml", "<dataroot><record><EMAIL>a@x.it</EMAIL></record></dataroot>")
    empty = write_file("empty.xml", '<?xml version="1.0"?><dataroot/>')
    # When read / Then the first names what it found; the second simply has no columns and no records
    with raises_run_error(ErrorCode.MALFORMED_HEADER) as info:
        read_all(wrong, xml_source(make_source))
    assert "<record>" in info.value.message and "record_element" in info.value.message
    assert read_all(empty, xml_source(make_source)) == ([], [], [])


@pytest.mark.parametrize("compression", ["gzip", "zip"])
def test_gzip_and_zip_files_are_read_like_plain_ones(tmp_path, make_source, compression):
    # Given the clients' layout compressed
    data = ACCESS_EXPORT.encode()
    if compression == "gzip":
        path = tmp_path / "in.xml.gz"
        path.write_bytes(gzip.compress(data))
    else:
        path = tmp_path / "in.xml.zip"
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("in.xml", data)
    # When read with compression auto
    columns, rows, _ = read_all(path, xml_source(make_source), "action")
    # Then the records are the plain file's
    assert columns == ["action", "EMAIL", "FIRST_NAME", "POINTS"]
    assert [r["EMAIL"] for r in rows] == ["a@x.it", "b@x.it", "c@x.it"]


def test_memory_stays_bounded_because_records_are_cleared(write_file, make_source):
    # Given 30,000 records
    body = "".join(f"<RECORD><EMAIL>k{i}@x.it</EMAIL><POINTS>{i}</POINTS></RECORD>" for i in range(30_000))
    path = write_file("big.xml", f"<dataroot>{body}</dataroot>")
    src = xml_source(make_source)
    # When the records are walked
    with dxxml.open_decompressed(path, "none") as fh:
        before, held = [], []
        for rec in dxxml._records(fh, src, path.name):
            before.append(sum(1 for _ in rec.itersiblings(preceding=True)))
            held.append(len(rec.getparent()))
    # Then at most the record before (cleared) is kept, and the tree holds only what the parser read
    # ahead (one read buffer), not the file
    assert len(before) == 30_000
    assert max(before) <= 1
    assert max(held) < 3_000


def test_the_generated_xml_source_reads_as_the_same_contacts_as_the_csv_one(tmp_path, make_source):
    # Given the benchmark's XML source of some generated contacts (quotes, line breaks, `&`-free text)
    from dx.devkit.generate import contacts, write_contacts_xml

    path = write_contacts_xml(tmp_path / "contacts.xml", 300, seed=3)
    # When the reader reads it
    columns, rows, malformed = read_all(path, xml_source(make_source))
    # Then every record is there, its fields under their names and its values as the CSV has them
    expected = contacts(300, seed=3)
    assert malformed == []
    assert columns == [c.upper() for c in expected.columns]
    assert [r[ROW] for r in rows] == list(range(1, 301))
    assert [{c.lower(): r[c] for c in columns} for r in rows] == expected.to_dicts()
