"""Column-wise validation of source records against a database's fields.

Polars: one expression per field and check, no Python loop per row (whether
a column needs a trim at all is read from its bytes, ``dx.shared.textbytes``).
``validate`` splits a chunk into the typed records to apply and the failed
operations (row number, key, operation, code, message, the record as received).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import polars as pl

from dx.shared.config import DatabaseCfg, FieldCfg
from dx.shared.errors import ErrorCode
from dx.shared.formats.csv import ROW
from dx.shared.textbytes import TextBytes

#: Column with the normalised primary key (partitioning, duplicates, reports).
KEY = "__key"
#: Column with each record's operation, upper-cased: I, U or D (the importer's are all I).
OP = "__op"
OPERATIONS = ["I", "U", "D"]
#: Prefix of the columns of ``good`` telling whether each record sets a field (``validate``'s ``unset``).
SETS = "__sets_"
#: Which values leave a field as it is in an update: ``absent`` ones (the reader's null: an XML element a
#: record leaves out), or ``empty`` ones too (``empty_on_update: keep``).
Unset = Literal["absent", "empty"]
TRUE_WORDS = ["true", "t", "yes", "y", "1", "on"]
FALSE_WORDS = ["false", "f", "no", "n", "0", "off"]
BOOL_WORDS = {**dict.fromkeys(TRUE_WORDS, True), **dict.fromkeys(FALSE_WORDS, False)}
#: An e-mail address: no white space, control character (a NUL) or invisible formatting character (a
#: byte-order mark, a zero-width space: U+FEFF from files glued together is not part of a key).
EMAIL_RE = r"^[^@\s\p{Cc}\p{Cf}]+@([^@\s.\p{Cc}\p{Cf}]+\.)+[^@\s.\p{Cc}\p{Cf}]+$"
#: A decimal: ASCII digits (``\d`` takes any script's), an optional point, an exponent of at most 3 digits.
DECIMAL_RE = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]{1,3})?$"
#: A timestamp field without a format takes YYYY-MM-DD[( |T)HH:MM[:SS[.fraction]]], read as UTC:
#: the date and time to the second in this format, then the fraction.
TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S"
FRACTION_RE = r"^\.[0-9]{1,9}$"
#: A repeated key's message ({} is the row of the key's first valid occurrence).
DUPLICATE_MESSAGE = "the key appears earlier in the source (row {}); the first occurrence was applied"
#: The character PostgreSQL cannot store in text (a NUL byte), and what a report shows in its place.
NUL, NUL_SHOWN = "\x00", "\ufffd"
#: Characters of a bad value quoted in a message.
MESSAGE_VALUE_CHARS = 80
FAILED_SCHEMA = {"row_number": pl.Int64, "key": pl.String, "operation": pl.String,
                 "error_code": pl.String, "error_message": pl.String, "record": pl.String}


@dataclass(frozen=True)
class Validated:
    """A chunk after validation: records to apply, and failed operations."""

    good: pl.DataFrame  # ROW, KEY, (OP for the updater) and one typed column per mapped field
    failed: pl.DataFrame  # FAILED_SCHEMA
    source: pl.DataFrame  # the chunk as received: ROW and the source columns
    source_columns: list[str]

    def fail(self, rows: pl.DataFrame, code: ErrorCode, message: str | pl.Expr) -> pl.DataFrame:
        """Failed operations (FAILED_SCHEMA) for valid ``rows`` that the database turned down (``message``:
        the same for each, or an expression over ``rows``)."""
        text = pl.lit(message) if isinstance(message, str) else message
        return with_records(_failed(rows, pl.lit(code.value), text), self.source, self.source_columns)


def _failed(rows: pl.DataFrame, code: pl.Expr, message: pl.Expr) -> pl.DataFrame:
    """Failed operations of ``rows`` (FAILED_SCHEMA less the record); an importer's rows are inserts."""
    operation = pl.col(OP) if OP in rows.columns else pl.lit("I")
    return rows.select(pl.col(ROW).alias("row_number"), pl.col(KEY).alias("key"), operation.alias("operation"),
                       code.alias("error_code"), message.alias("error_message"))


def sets_column(name: str) -> str:
    """The column of ``good`` telling whether each record sets field ``name`` (``validate``'s ``unset``)."""
    return SETS + name


def map_columns(source_columns: list[str], db: DatabaseCfg) -> dict[str, str]:
    """field name -> source column (see ``find_column``), for the fields the source has."""
    return {name: col for name in db.fields if (col := find_column(source_columns, name)) is not None}


def find_column(source_columns: list[str], name: str) -> str | None:
    """The source column for ``name``: exact name first, else case-insensitive."""
    if name in source_columns:
        return name
    return next((c for c in source_columns if c.lower() == name.lower()), None)


def missing_required(source_columns: list[str], db: DatabaseCfg, *, all_required: bool = True,
                     operation_field: str | None = None) -> list[str]:
    """Columns a run cannot do without: the key, the required fields (unless
    ``all_required`` is off: an updater's U and D need only the key) and the operation field."""
    mapped = map_columns(source_columns, db)
    missing = [n for n, f in db.fields.items()
               if (n == db.primary_key or (f.required and all_required)) and n not in mapped]
    if operation_field is not None and find_column(source_columns, operation_field) is None:
        missing.append(operation_field)
    return missing


def ambiguous_columns(source_columns: list[str], db: DatabaseCfg) -> dict[str, list[str]]:
    """Fields that several source columns match (names compared without case), with those columns."""
    found = {name: [c for c in source_columns if c.lower() == name.lower()] for name in db.fields}
    return {name: cols for name, cols in found.items() if len(cols) > 1}


def unmapped_columns(source_columns: list[str], db: DatabaseCfg, *, also: tuple[str, ...] = ()) -> list[str]:
    """Source columns, in source order, that map to no field (see ``map_columns``) nor to a name of
    ``also`` (columns a run reads besides the fields: the operation, the watermark; matched alike)."""
    taken = set(map_columns(source_columns, db).values())
    taken.update(c for name in also if (c := find_column(source_columns, name)) is not None)
    return [c for c in source_columns if c not in taken]


def key_expr(column: str, field: FieldCfg, *, trimmed: bool = False) -> pl.Expr:
    """The normalised key: trimmed (unless the column is known ``trimmed``), lower-cased for e-mail,
    an integer in canonical form (``007`` is ``7``: both must land in one chunk), empty as null."""
    key = pl.col(column) if trimmed else pl.col(column).str.strip_chars()
    if field.type == "email":
        key = key.str.to_lowercase()
    elif field.type == "int":
        key = pl.coalesce(key.cast(pl.Int64, strict=False).cast(pl.String), key)
    return pl.when(key == "").then(None).otherwise(key)


def _parse(raw: pl.Expr, f: FieldCfg, *, trimmed: bool) -> pl.Expr:
    """The typed value; null where the text does not parse (``trimmed``: no value needs a trim)."""
    s = raw if trimmed else raw.str.strip_chars()
    match f.type:
        case "int":
            return s.cast(pl.Int64, strict=False)
        case "decimal":
            return pl.when(s.str.contains(DECIMAL_RE)).then(s)
        case "bool":  # one lookup of the word, cheaper than two is_in
            return s.str.to_lowercase().replace_strict(bool_words(f), default=None, return_dtype=pl.Boolean)
        case "date":
            return pl.coalesce([s.str.to_date(fmt, strict=False) for fmt in f.formats or ["%Y-%m-%d"]])
        case "timestamp":
            if f.formats:
                return pl.coalesce([_timestamp(s, fmt) for fmt in f.formats])
            # the default forms: the common one (date and time to the second, a space between) with a
            # fixed format, Polars' fast path; ``validate`` reads the others (``_timestamp_forms``) in a
            # second pass, only where a chunk has some (all forms at once cost several times more)
            return s.str.to_datetime(TIMESTAMP_FORMAT, strict=False, time_unit="us").dt.replace_time_zone("UTC")
        case "email":
            return _email(s.str.to_lowercase())
        case _:
            return raw


def bool_words(f: FieldCfg) -> dict[str, bool]:
    """Lower-case word -> value of a bool field: its own true_values and false_values, else the defaults."""
    true = [w.strip().lower() for w in f.true_values] if f.true_values is not None else TRUE_WORDS
    false = [w.strip().lower() for w in f.false_values] if f.false_values is not None else FALSE_WORDS
    return {**dict.fromkeys(true, True), **dict.fromkeys(false, False)}


def _timestamp(s: pl.Expr, fmt: str) -> pl.Expr:
    """A timestamp in one strftime format, in UTC (a format with %z gives its own offset)."""
    if "%z" in fmt:
        return s.str.to_datetime(fmt, strict=False, time_zone="UTC")
    return s.str.to_datetime(fmt, strict=False, time_unit="us").dt.replace_time_zone("UTC")


def _timestamp_forms(s: pl.Expr) -> pl.Expr:
    """A timestamp in any default form (date; date and time to the minute, second or fraction;
    space or T), in UTC; null where it is none.

    The forms are made one canonical form with string operations; its first 19 characters are
    parsed with a fixed format (%.f in the format costs 4 times as much), the fraction, if any, as
    digits (beyond microseconds they are cut, as %.f does)."""
    t = s.str.replace("T", " ", literal=True)
    n = t.str.len_bytes()
    canonical = pl.when(n == 10).then(t + " 00:00:00").when(n == 16).then(t + ":00").otherwise(t)
    fraction = canonical.str.slice(19)
    micros = pl.when(fraction == "").then(0).when(fraction.str.contains(FRACTION_RE)).then(
        fraction.str.slice(1, 6).str.pad_end(6, "0").cast(pl.Int64))
    seconds = canonical.str.slice(0, 19).str.to_datetime(TIMESTAMP_FORMAT, strict=False, time_unit="us")
    return (seconds + pl.duration(microseconds=micros)).dt.replace_time_zone("UTC")


def _email(low: pl.Expr) -> pl.Expr:
    """A trimmed, lower-cased e-mail address; null where it is not one."""
    return pl.when(low.str.contains(EMAIL_RE)).then(low)


def _typed(name: str) -> str:
    """The column holding a field's parsed value while the source's own column is still needed."""
    return f"__typed_{name}"


def _quoted(raw: pl.Expr) -> pl.Expr:
    return raw.str.slice(0, MESSAGE_VALUE_CHARS)


def _blank_as_null(col: str, *, trimmed: bool, empty: bool) -> pl.Expr:
    """The column with its blank values null (``trimmed``: none needs a trim; ``empty``: one is empty)."""
    if not trimmed:
        return pl.when(pl.col(col).str.strip_chars() == "").then(None).otherwise(pl.col(col))
    return pl.when(pl.col(col).str.len_bytes() == 0).then(None).otherwise(pl.col(col)) if empty else pl.col(col)


def validate(chunk: pl.DataFrame, db: DatabaseCfg, source_columns: list[str], *,
             dedupe: str | None = "first", operation_column: str | None = None,
             keep_blank_text: bool = False, unset: Unset | None = None) -> Validated:
    """Validate a chunk.

    ``dedupe``: 'first' or 'last' occurrence of a key counts, or None (keep all).
    ``operation_column``: the updater's column of operations; without it every
    record is an insert (I). Field values are checked for I and U only: a D
    needs only its key.
    A blank cell is empty (null), except in a text field with ``keep_blank_text``:
    there the reader's null is the only empty, and ``""`` or spaces are kept as text.
    ``unset``: an update (a U; an upsert's record) leaves a field as it is where its value is absent
    (the reader's null) or, with ``empty``, empty too. ``good`` then has ``sets_column(name)`` for
    each field that some record of the chunk leaves unset, and a required field left unset rejects an
    I only (an upsert's record is checked when applied: a new key needs it).
    """
    mapping = map_columns(source_columns, db)
    # a column none of whose values needs a trim is read without one, and its only blank is empty: the
    # trims were half of a chunk's validation (a column holding one such value is trimmed whole)
    trimmed: set[str] = set()
    empty: set[str] = set()
    nul: set[str] = set()
    for col in mapping.values():  # one column's bytes at a time (a copy of them is made)
        text = TextBytes(chunk[col])
        if not text.needs_trim():
            trimmed.add(col)
        if text.has_empty():
            empty.add(col)
        if text.has_nul():
            nul.add(col)
    raw = {name: pl.col(col) if keep_blank_text and db.fields[name].type == "text"
           else _blank_as_null(col, trimmed=col in trimmed, empty=col in empty) for name, col in mapping.items()}
    pk = db.primary_key
    # an importer's records are all inserts: no operation column is made or checked
    ops = [] if operation_column is None else \
        [pl.col(operation_column).fill_null("").str.strip_chars().str.to_uppercase().alias(OP)]
    writes = pl.col(OP).is_in(["I", "U"]) if ops else pl.lit(True)
    checks: list[tuple[pl.Expr, ErrorCode, pl.Expr]] = [
        (pl.col(KEY).is_null(), ErrorCode.KEY_MISSING, pl.lit(f"{pk}: the primary key is empty")),
    ]
    if ops:
        checks.append((~pl.col(OP).is_in(OPERATIONS), ErrorCode.BAD_OPERATION,
                       pl.format('"{}" is not an operation; use I (insert), U (update) or D (delete)',
                                 _quoted(pl.col(OP)))))
    # per field, whether a record leaves it as it is (the key is always set)
    unsets = {} if unset is None else {
        name: pl.col(col).is_null() if unset == "absent" else raw[name].is_null()
        for name, col in mapping.items() if name != pk}
    inserts = pl.col(OP) == "I" if ops else pl.lit(False)
    typed = {}
    for name, f in db.fields.items():
        if name not in raw:
            if f.required and ops:
                checks.append((pl.col(OP) == "I", ErrorCode.REQUIRED_FIELD_MISSING,
                               pl.lit(f"{name}: required, but the source has no {name} column")))
            continue
        # an e-mail key is the normalised key (computed first) when it is an address: not worked out twice
        parsed = _email(pl.col(KEY)) if name == pk and f.type == "email" else \
            _parse(raw[name], f, trimmed=mapping[name] in trimmed)
        typed[name] = parsed.alias(_typed(name))
        value = pl.col(_typed(name))  # parsed once, in the first pass
        applies = pl.lit(True) if name == pk else writes
        if mapping[name] in nul:  # checked first: the database would refuse the value whatever its type
            checks.append((applies & pl.col(mapping[name]).str.contains(NUL, literal=True), ErrorCode.INVALID_VALUE,
                           pl.lit(f"{name}: holds a NUL byte (shown as U+FFFD), which the database cannot store")))
        if f.required and name != pk:
            missing = raw[name].is_null()
            if name in unsets:  # an update keeps what a record leaves unset; an insert would leave it empty
                missing = missing & (~unsets[name] | inserts)
            checks.append((applies & missing, ErrorCode.REQUIRED_FIELD_MISSING,
                           pl.lit(f"{name}: required, but empty")))
        if f.type != "text":
            fmt = f" (format {' or '.join(f.formats)})" if f.formats else ""
            checks.append((applies & raw[name].is_not_null() & value.is_null(), ErrorCode.INVALID_VALUE,
                           pl.format(f'{name}: "{{}}" is not a valid {f.type}{fmt}', _quoted(raw[name]))))
        if f.max_length:
            checks.append((applies & (raw[name].str.len_chars() > f.max_length), ErrorCode.VALUE_TOO_LONG,
                           pl.format(f"{name}: {{}} characters, at most {f.max_length} allowed",
                                     raw[name].str.len_chars())))
    # pass 1: the key; pass 2: operation and typed values; pass 3: one boolean over every check.
    # Codes and messages are built for the failed rows only (Polars would build both
    # branches of every when/then for every row).
    key = key_expr(mapping[pk], db.fields[pk], trimmed=mapping[pk] in trimmed)
    frame = chunk.with_columns(key.alias(KEY)).with_columns(*ops, *typed.values())
    for name in typed:  # timestamps in a default form other than the common one, if the chunk has any
        if db.fields[name].type == "timestamp" and not db.fields[name].formats:
            other = raw[name].is_not_null() & pl.col(_typed(name)).is_null()
            if frame.select(other.any()).item():
                frame = frame.with_columns(pl.when(other).then(_timestamp_forms(raw[name].str.strip_chars()))
                                           .otherwise(pl.col(_typed(name))).alias(_typed(name)))
    invalid = frame.select(pl.any_horizontal([c for c, _, _ in checks]).fill_null(False)).to_series()
    # the records to apply carry only what is applied (the source's text columns are not copied by the
    # filters), and a chunk without a failure or a duplicate is not filtered at all
    some = frame.select(u.any().alias(n) for n, u in unsets.items()).row(0, named=True) if unsets else {}
    left = [n for n, any_unset in some.items() if any_unset]
    good = frame.select(ROW, KEY, *([OP] if ops else []), *[pl.col(_typed(n)).alias(n) for n in typed],
                        *[(~unsets[n]).alias(sets_column(n)) for n in left])
    failed: list[pl.DataFrame] = []
    if invalid.any():
        good = good.filter(~invalid)
        # rechunk: Polars 2.1 panics on pl.format inside when/then over a filtered, not rechunked frame
        failed.append(_failed(frame.filter(invalid).rechunk(),
                              pl.coalesce([pl.when(c).then(pl.lit(e.value)) for c, e, _ in checks]),
                              pl.coalesce([pl.when(c).then(m) for c, _, m in checks])))
    if dedupe == "first":  # among the valid records the first occurrence of a key counts (chunk in source order)
        good, repeats = first_occurrences(good)
        if repeats is not None:
            failed.append(repeats)
    if not failed:
        return Validated(good, pl.DataFrame(schema=FAILED_SCHEMA), chunk, source_columns)
    rejected = pl.concat(failed).sort("row_number")
    return Validated(good, with_records(rejected, chunk, source_columns), chunk, source_columns)


def first_occurrences(good: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame | None]:
    """The first occurrence of each key among valid records in source order, and the later ones as
    failed operations (FAILED_SCHEMA less the record), each naming the first's row; None when no key repeats."""
    first = good[KEY].is_first_distinct()
    if first.all():
        return good, None
    dups = good.filter(~first).join(good.filter(first).select(KEY, pl.col(ROW).alias("__first")), on=KEY)
    return good.filter(first), _failed(dups, pl.lit(ErrorCode.DUPLICATE_KEY.value),
                                       pl.format(DUPLICATE_MESSAGE, pl.col("__first")))


def with_records(failed: pl.DataFrame, chunk: pl.DataFrame, source_columns: list[str]) -> pl.DataFrame:
    """Failed operations with each record as received (JSON of its source columns), as FAILED_SCHEMA;
    a NUL byte in them is shown as U+FFFD (PostgreSQL stores none, in text or JSON)."""
    records = chunk.join(failed.select(pl.col("row_number").alias(ROW)), on=ROW, how="semi").select(
        pl.col(ROW).alias("row_number"),
        pl.struct([shown_nul(pl.col(c)) for c in source_columns]).struct.json_encode().alias("record"))
    return failed.join(records, on="row_number", how="left", maintain_order="left") \
        .with_columns(shown_nul(pl.col("key")), shown_nul(pl.col("error_message"))) \
        .select(list(FAILED_SCHEMA)).cast(FAILED_SCHEMA)  # type: ignore[arg-type]


def shown_nul(text: pl.Expr) -> pl.Expr:
    """The text with each NUL byte shown as U+FFFD."""
    return text.str.replace_all(NUL, NUL_SHOWN, literal=True)
