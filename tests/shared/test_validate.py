"""``validate``: typed good records and failed operations, one Polars expression per check."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from typing import Any

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dx.shared.config import DatabaseCfg
from dx.shared.errors import ErrorCode
from dx.shared.formats.csv import ROW
from dx.shared.textbytes import TextBytes
from dx.shared.validate import (
    FAILED_SCHEMA,
    KEY,
    Validated,
    map_columns,
    missing_required,
    sets_column,
    validate,
)


def chunk(columns: list[str], *records: list[str], rows: list[int] | None = None) -> pl.DataFrame:
    """A chunk as the reader makes it: __row (1..n unless given) and one String column per source column."""
    numbers = rows or list(range(1, len(records) + 1))
    data: dict[str, list[Any]] = {ROW: numbers, **{c: [r[i] for r in records] for i, c in enumerate(columns)}}
    return pl.DataFrame(data, schema={ROW: pl.Int64, **dict.fromkeys(columns, pl.String)})


def run(db: DatabaseCfg, columns: list[str], *records: list[str], dedupe: str = "first") -> Validated:
    return validate(chunk(columns, *records), db, columns, dedupe=dedupe)


def one_field(make_database, field: Any) -> DatabaseCfg:
    """A database keyed by text ``id`` with one more field ``v``."""
    return make_database({"id": "text", "v": field})


def failures(result: Validated) -> list[tuple[int, str, str]]:
    """(row_number, error_code, error_message) of each failed operation, in row order."""
    return sorted(result.failed.select("row_number", "error_code", "error_message").iter_rows())


# --- field types ------------------------------------------------------------------------------------------

GOOD_VALUES = [
    ("int", "42", 42), ("int", " -7 ", -7), ("int", "+3", 3),
    ("decimal", "12.50", "12.50"), ("decimal", "-.5", "-.5"), ("decimal", "1e3", "1e3"),
    ("bool", "yes", True), ("bool", " OFF ", False), ("bool", "T", True), ("bool", "0", False),
    ({"type": "date", "format": "%d/%m/%Y"}, "31/12/2024", date(2024, 12, 31)),
    ("date", "2024-02-29", date(2024, 2, 29)),
    ("timestamp", "2024-01-02 03:04:05", datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),
    ("timestamp", "2024-01-02T03:04:05", datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),
    ("timestamp", "2024-01-02", datetime(2024, 1, 2, tzinfo=UTC)),
    ("timestamp", "2024-01-02T03:04", datetime(2024, 1, 2, 3, 4, tzinfo=UTC)),
    ("timestamp", "2024-01-02 03:04:05.25", datetime(2024, 1, 2, 3, 4, 5, 250000, tzinfo=UTC)),
    ("timestamp", "2024-01-02T03:04:05.000001", datetime(2024, 1, 2, 3, 4, 5, 1, tzinfo=UTC)),
    ("timestamp", "2024-12-31 23:59:59.123456789", datetime(2024, 12, 31, 23, 59, 59, 123456, tzinfo=UTC)),
    ({"type": "timestamp", "format": "%Y-%m-%dT%H:%M:%S%z"}, "2024-01-02T03:04:05+0200",
     datetime(2024, 1, 2, 1, 4, 5, tzinfo=UTC)),
    ("email", " Zoe.Smith@Example.COM ", "zoe.smith@example.com"),
    ({"type": "text", "max_length": 5}, "héllo", "héllo"),
    ("text", "  kept as is  ", "  kept as is  "),
]


@pytest.mark.parametrize(("field", "text", "typed"), GOOD_VALUES)
def test_a_good_value_is_typed(make_database, field, text, typed):
    # Given a record whose value parses as its field's type
    db = one_field(make_database, field)
    # When validated
    result = run(db, ["id", "v"], ["1", text])
    # Then the record is good and carries the typed value
    assert result.failed.is_empty()
    assert result.good.select(ROW, "v").rows() == [(1, typed)]


BAD_VALUES = [
    ("int", "1.0"), ("int", "twelve"), ("int", "99999999999999999999"),
    ("decimal", "1,5"), ("decimal", "NaN"), ("decimal", "1.2.3"), ("decimal", "\u0663"), ("decimal", "1e1000"),
    ("bool", "maybe"), ("bool", "2"),
    ({"type": "date", "format": "%d/%m/%Y"}, "2024-12-31"), ("date", "2023-02-29"), ("date", "20241231"),
    ("timestamp", "yesterday"), ("timestamp", "2024-01-02 25:00:00"), ("timestamp", "2024-01-0203:04"),
    ("timestamp", "2024-01-02 03"), ("timestamp", "2024-01-02 03:04:05."), ("timestamp", "2024-01-02 03:04:05.1x"),
    ("timestamp", "2024-01-02 03:04:05.1234567890"), ("timestamp", "2024-01-02 03:04:05+02:00"),
    ("timestamp", "2024-02-30 03:04:05.5"),
    ({"type": "timestamp", "format": "%Y-%m-%dT%H:%M:%S%z"}, "2024-01-02T03:04:05"),
    ("email", "nobody"), ("email", "a@b"), ("email", "a@@b.io"), ("email", "a b@c.io"),
]


@pytest.mark.parametrize(("field", "text"), BAD_VALUES)
def test_a_bad_value_is_invalid_value_naming_the_field(make_database, field, text):
    # Given a record whose value does not parse as its field's type
    db = one_field(make_database, field)
    kind = db.fields["v"].type
    # When validated
    result = run(db, ["id", "v"], ["1", text])
    # Then it is one INVALID_VALUE failure whose message names the field, the value and the type
    assert result.good.is_empty()
    [(row, code, message)] = failures(result)
    assert (row, code) == (1, ErrorCode.INVALID_VALUE.value)
    assert message.startswith(f'v: "{text}" is not a valid {kind}')


def test_timestamps_of_every_default_form_in_one_chunk_are_typed_as_alone(make_database):
    # Given one chunk mixing the common timestamp form with every other default form, blanks and bad values
    db = one_field(make_database, "timestamp")
    good = [(text, typed) for field, text, typed in GOOD_VALUES if field == "timestamp"]
    bad = [text for field, text in BAD_VALUES if field == "timestamp"]
    texts = [t for pair in zip([t for t, _ in good], ["2024-05-06 07:08:09"] * len(good), strict=True) for t in pair]
    texts += [*bad, " 2024-05-06 07:08:09 ", "   "]
    # When validated together
    result = run(db, ["id", "v"], *[[str(i), t] for i, t in enumerate(texts, 1)])
    # Then each value is what it is alone: typed, or INVALID_VALUE; a blank one is empty
    common = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
    expected = [v for _, typed in good for v in (typed, common)]
    assert result.good.sort(ROW).get_column("v").to_list() == [*expected, common, None]
    assert [(row, code) for row, code, _ in failures(result)] == [
        (len(expected) + i, ErrorCode.INVALID_VALUE.value) for i in range(1, len(bad) + 1)]


def test_an_invalid_value_message_names_the_expected_format(make_database):
    # Given a date field with a format / When a value does not match / Then the message shows the format
    db = one_field(make_database, {"type": "date", "format": "%d/%m/%Y"})
    [(_, _, message)] = failures(run(db, ["id", "v"], ["1", "12-31-2024"]))
    assert message == 'v: "12-31-2024" is not a valid date (format %d/%m/%Y)'


def test_a_long_bad_value_is_quoted_shortened(make_database):
    # Given a 500-character value in an int field / When validated / Then the message quotes 80 characters
    db = one_field(make_database, "int")
    [(_, _, message)] = failures(run(db, ["id", "v"], ["1", "x" * 500]))
    assert f'"{"x" * 80}"' in message and "x" * 81 not in message


def test_a_text_longer_than_max_length_is_value_too_long(make_database):
    # Given a text field of at most 5 characters
    db = one_field(make_database, {"type": "text", "max_length": 5})
    # When a 5-character (multi-byte) and a 6-character value are validated
    result = run(db, ["id", "v"], ["1", "héllo"], ["2", "hellos"])
    # Then only the longer is rejected, counted in characters, naming the field
    assert result.good[ROW].to_list() == [1]
    assert failures(result) == [(2, ErrorCode.VALUE_TOO_LONG.value, "v: 6 characters, at most 5 allowed")]


def test_an_empty_optional_value_is_null(make_database):
    # Given an optional int field left empty / When validated / Then the record is good with a null value
    result = run(one_field(make_database, "int"), ["id", "v"], ["1", ""])
    assert result.failed.is_empty()
    assert result.good["v"].to_list() == [None]


def test_keep_blank_text_keeps_empty_and_blank_text_but_not_blank_numbers(make_database):
    # Given text and int fields holding null, "", and spaces (as an Importer with nulls: unquoted reads them)
    db = make_database({"id": "text", "t": "text", "n": "int"})
    frame = pl.DataFrame({ROW: [1, 2, 3], "id": ["1", "2", "3"], "t": [None, "", "  "], "n": [None, "", " "]})
    # When validated keeping blank text
    result = validate(frame, db, ["id", "t", "n"], keep_blank_text=True)
    # Then the text is exactly as read, the blank numbers are empty, nothing is rejected
    assert result.failed.is_empty()
    assert result.good.select("t", "n").rows() == [(None, None), ("", None), ("  ", None)]


def test_by_default_a_blank_text_is_empty(make_database):
    frame = pl.DataFrame({ROW: [1, 2], "id": ["1", "2"], "t": ["", "  "]})
    result = validate(frame, make_database({"id": "text", "t": "text"}), ["id", "t"])
    assert result.good["t"].to_list() == [None, None]


# --- required fields and the key --------------------------------------------------------------------------


def test_an_empty_required_field_is_required_field_missing(make_database):
    # Given a required field, filled in record 1 and empty in record 2
    db = one_field(make_database, {"type": "text", "required": True})
    # When validated
    result = run(db, ["id", "v"], ["1", "x"], ["2", ""])
    # Then record 2 is rejected, naming the field
    assert result.good[ROW].to_list() == [1]
    assert failures(result) == [(2, ErrorCode.REQUIRED_FIELD_MISSING.value, "v: required, but empty")]


@pytest.mark.parametrize("key", ["", "   "])
def test_an_empty_key_is_key_missing(make_database, key):
    # Given a record whose primary key is empty or blank
    db = one_field(make_database, "int")
    # When validated (its other value being invalid too)
    result = run(db, ["id", "v"], ["1", "7"], [key, "not a number"])
    # Then it is KEY_MISSING (the key check comes first), with a null key
    assert failures(result) == [(2, ErrorCode.KEY_MISSING.value, "id: the primary key is empty")]
    assert result.failed["key"].to_list() == [None]


def test_the_failed_record_holds_the_values_as_received(make_database):
    # Given an e-mail keyed database, and a record with a padded mixed-case e-mail and a bad int
    db = make_database({"email": "email", "age": "int", "note": "text"}, primary_key="email")
    columns = ["email", "age", "note", "unmapped"]
    # When validated
    result = run(db, columns, ["  Zoe@Example.COM ", "4O", " é \"q\" ", "extra"])
    # Then the key is normalised but the record holds every source column exactly as received
    [failed] = result.failed.to_dicts()
    assert (failed["key"], failed["operation"], failed["error_code"]) == (
        "zoe@example.com", "I", ErrorCode.INVALID_VALUE.value)
    assert json.loads(failed["record"]) == {"email": "  Zoe@Example.COM ", "age": "4O", "note": " é \"q\" ",
                                            "unmapped": "extra"}
    assert dict(result.failed.schema) == FAILED_SCHEMA


def test_an_email_key_is_trimmed_and_lower_cased(make_database):
    # Given an e-mail primary key written with spaces and capitals
    db = make_database({"email": "email"}, primary_key="email")
    # When validated / Then the key (and the stored value) is the trimmed lower-case address
    result = run(db, ["email"], ["  Zoe@Example.COM "])
    assert result.good.select(KEY, "email").rows() == [("zoe@example.com", "zoe@example.com")]


def test_a_text_key_is_trimmed_but_keeps_its_case(make_database):
    # Given a text key / When validated / Then the key is trimmed, its case kept
    result = run(make_database({"id": "text"}), ["id"], ["  AbC "])
    assert result.good[KEY].to_list() == ["AbC"]


# --- duplicates -------------------------------------------------------------------------------------------


def test_dedupe_first_rejects_later_occurrences_naming_the_first_row(make_database):
    # Given the same e-mail three times (differently written) and another once
    db = make_database({"email": "email", "name": "text"}, primary_key="email")
    records = [["a@x.io", "first"], ["b@x.io", "other"], ["A@X.IO ", "second"], ["a@x.io", "third"]]
    # When validated keeping the first occurrence
    result = run(db, ["email", "name"], *records, dedupe="first")
    # Then the first is applied and each later one is DUPLICATE_KEY pointing at row 1
    assert result.good.select(ROW, "name").rows() == [(1, "first"), (2, "other")]
    assert [(r, c) for r, c, _ in failures(result)] == [(3, "DUPLICATE_KEY"), (4, "DUPLICATE_KEY")]
    assert all("(row 1)" in m for _, _, m in failures(result))


def test_dedupe_first_counts_only_valid_occurrences(make_database):
    # Given a key whose first occurrence is invalid and second valid
    db = one_field(make_database, "int")
    result = run(db, ["id", "v"], ["k", "bad"], ["k", "2"], ["k", "3"])
    # When validated / Then the first valid occurrence (row 2) is applied and row 3 points at it
    assert result.good.select(ROW, "v").rows() == [(2, 2)]
    assert failures(result)[1][:2] == (3, "DUPLICATE_KEY")
    assert "(row 2)" in failures(result)[1][2]


def test_dedupe_last_keeps_every_valid_occurrence(make_database):
    # Given the same key twice and an empty key
    db = one_field(make_database, "text")
    # When validated for an upsert (the last occurrence wins later, in order)
    result = run(db, ["id", "v"], ["k", "old"], ["", "x"], ["k", "new"], dedupe="last")
    # Then both valid occurrences are kept, in row order, and only the empty key fails
    assert result.good.select(ROW, "v").rows() == [(1, "old"), (3, "new")]
    assert [c for _, c, _ in failures(result)] == ["KEY_MISSING"]


# --- column mapping ---------------------------------------------------------------------------------------


def test_map_columns_prefers_exact_names_then_ignores_case(make_database):
    # Given fields email, Name, age and source columns differing in case (Email twice)
    db = make_database({"email": "email", "Name": "text", "age": "int"}, primary_key="email")
    # When mapped
    mapping = map_columns(["EMAIL", "Email", "name", "Name", "city"], db)
    # Then exact names win, otherwise the first case-insensitive match; unmatched fields are absent
    assert mapping == {"email": "EMAIL", "Name": "Name"}


def test_validate_reads_a_field_from_a_differently_cased_column(make_database):
    # Given a source whose columns are upper-case / When validated / Then fields are typed from them
    db = make_database({"id": "text", "age": "int"})
    result = run(db, ["ID", "AGE"], ["1", "42"])
    assert result.good.select(KEY, "age").rows() == [("1", 42)]


def test_missing_required_lists_the_key_and_required_fields_without_a_column(make_database):
    # Given a key, a required field and an optional field
    db = make_database({"email": "email", "name": {"type": "text", "required": True}, "age": "int"},
                       primary_key="email")
    # When the source has none of them / only the key (in other case) / all of them
    # Then only the key and required field are reported as missing
    assert missing_required(["city"], db) == ["email", "name"]
    assert missing_required(["EMAIL"], db) == ["name"]
    assert missing_required(["Email", "NAME"], db) == []


# --- blank values -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("field", "expected"), [
    ({"type": "text", "required": True}, [(1, ErrorCode.REQUIRED_FIELD_MISSING.value, "v: required, but empty")]),
    ("int", []),
])
def test_a_blank_value_is_empty_like_a_blank_key(make_database, field, expected):
    # Given a value of spaces only (a blank key is KEY_MISSING, " 42 " is the int 42)
    db = one_field(make_database, field)
    # When validated / Then it is empty too: missing when required, null when optional
    assert failures(run(db, ["id", "v"], ["1", "   "])) == expected


def test_integer_keys_are_normalised_so_that_one_key_is_one_partition(make_database):
    # Given: one integer key written three ways, and a key that is not a number
    db = make_database({"id": {"type": "int"}, "t": "text"})
    frame = pl.DataFrame({ROW: [1, 2, 3, 4], "id": ["7", " 007", "+7", "x"], "t": ["a", "b", "c", "d"]})
    # When: validated
    result = validate(frame, db, ["id", "t"])
    # Then: one key (the later ones are duplicates), the bad one keeps its text in the report
    assert result.good.select(ROW, "__key").rows() == [(1, "7")]
    assert result.failed.select("row_number", "key", "error_code").rows() == [
        (2, "7", "DUPLICATE_KEY"), (3, "7", "DUPLICATE_KEY"), (4, "x", "INVALID_VALUE")]


# --- columns read without a trim ----------------------------------------------------------------------------

#: Cells of every kind: clean, blank, empty, padded (ASCII and Unicode white space), null, bad.
CELLS = st.sampled_from(["7", " 7 ", "", "  ", "\u00a0", "x", "Zoë", " Zoë\u2003", "2024-02-29", "31/12/2024",
                         "2024-01-02 03:04:05", "1.50", "-.5", "yes", " OFF", "a@b.co", " A@B.CO ", None])


#: A record's key: plain, padded or empty (a row with a bad key fails on it first, hiding its fields).
KEYS = st.sampled_from(["u{}@x.co", " U{}@X.CO ", "u{}@x.co\u00a0", ""])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(KEYS, CELLS, CELLS, CELLS, CELLS, CELLS, CELLS), min_size=1, max_size=8),
       st.booleans())
def test_columns_read_without_a_trim_validate_as_trimmed_ones(make_database, records, blank_text):
    """A column none of whose values needs a trim is read as it is; forcing the trim on every
    column must change nothing in what is applied or refused."""
    db = make_database({"id": "email", "n": "int", "d": "decimal", "b": "bool", "day": {"type": "date",
                        "format": "%d/%m/%Y"}, "at": "timestamp", "t": {"type": "text", "required": True}})
    columns = ["id", "n", "d", "b", "day", "at", "t"]
    frame = chunk(columns, *[[key.format(i), *cells] for i, (key, *cells) in enumerate(records)])
    fast = validate(frame, db, columns, keep_blank_text=blank_text)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(TextBytes, "needs_trim", lambda self: True)
        trimmed = validate(frame, db, columns, keep_blank_text=blank_text)
    assert fast.good.equals(trimmed.good)
    assert fast.failed.equals(trimmed.failed)


# --- fields a record leaves unset ----------------------------------------------------------------------------

UNSET_COLUMNS = ["op", "id", "name", "n"]


def _updates(make_database, unset: str | None, *records: list[str | None], blank_text: bool = False) -> Validated:
    db = make_database({"id": "text", "name": {"type": "text", "required": True}, "n": "int"})
    return validate(chunk(UNSET_COLUMNS, *records), db, UNSET_COLUMNS, dedupe=None, operation_column="op",
                    unset=unset, keep_blank_text=blank_text)  # type: ignore[arg-type]


def test_an_absent_field_is_unset_and_an_empty_one_set_to_null(make_database):
    # Given: updates leaving name or n out (None, an XML element not there) or empty ("", <X/>), and
    # an insert leaving name out
    v = _updates(make_database, "absent", ["U", "a", None, "1"], ["U", "b", "B", None], ["U", "c", "C", ""],
                 ["U", "d", "", "4"], ["I", "e", None, "5"], ["D", "f", None, None])
    # When: validated / Then: a required field left out passes an update and fails an insert, an empty
    # one fails either; each record says which fields it sets, an empty n being set (to null)
    assert failures(v) == [(4, "REQUIRED_FIELD_MISSING", "name: required, but empty"),
                           (5, "REQUIRED_FIELD_MISSING", "name: required, but empty")]
    assert v.good.select(ROW, "name", "n", sets_column("name"), sets_column("n")).rows() == [
        (1, None, 1, False, True), (2, "B", None, True, False), (3, "C", None, True, True),
        (6, None, None, False, False)]


def test_with_keep_an_empty_value_is_unset_too_but_not_a_quoted_empty_text(make_database):
    # Given: updates with empty and blank values, and (nulls: unquoted) a text "" that is no empty cell
    v = _updates(make_database, "empty", ["U", "a", "  ", ""], ["U", "b", None, " 2 "], ["U", "c", "C", "3"])
    text = _updates(make_database, "empty", ["U", "a", "", None], blank_text=True)
    # When: validated / Then: empty and blank values are unset like absent ones; a kept "" sets the text
    assert failures(v) == []
    assert v.good.select(ROW, "n", sets_column("name"), sets_column("n")).rows() == [
        (1, None, False, False), (2, 2, False, True), (3, 3, True, True)]
    assert text.good.select("name", sets_column("n")).rows() == [("", False)]
    assert sets_column("name") not in text.good.columns


def test_without_unset_or_with_every_field_given_no_record_says_what_it_sets(make_database):
    # Given: records that give every field, and records validated without unset
    given = _updates(make_database, "absent", ["U", "a", "A", "1"], ["I", "b", "B", ""])
    plain = _updates(make_database, None, ["U", "a", "", "1"])
    # When: validated / Then: no column says which fields are set (each record sets all), and without
    # unset an empty required field fails an update as before
    assert given.good.columns == [ROW, KEY, "__op", "id", "name", "n"]
    assert plain.good.columns == [ROW, KEY, "__op", "id", "name", "n"]
    assert failures(plain) == [(1, "REQUIRED_FIELD_MISSING", "name: required, but empty")]
