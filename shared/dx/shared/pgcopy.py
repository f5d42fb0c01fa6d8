"""Bulk writes: COPY a Polars frame into a table in PostgreSQL's binary format.

Binary COPY spares the server the parsing of every date, timestamp, integer,
boolean and decimal (a large part of a chunk's COPY time against CSV), and the
client the writing of CSV text. pgpq encodes the Arrow columns; each frame
column is first cast to the Arrow type that matches its table column, read
from the catalog, because binary input must match the column's type exactly
(an Int64 sent to an ``integer`` column is refused).

Decimals stay text in the frame (validated, exactly as written) and are sent
as ``numeric``'s own wire form, built here column-wise: a value keeps its
digits and its scale (``1.50`` stays ``1.50``), as it would from text.
"""

from __future__ import annotations

from decimal import Decimal

import numpy as np
import pgpq
import polars as pl
import pyarrow as pa
from psycopg import sql

from dx.shared.db import Conn
from dx.shared.textbytes import TextBytes

#: Rows per slice of a COPY: PostgreSQL stores one slice while the next is encoded; smaller slices
#: lower a worker's peak memory at the same speed.
COPY_SLICE_ROWS = 16_384
#: The Polars type each PostgreSQL column type is sent as (numeric: see ``numeric_wire``).
ARROW_TYPES: dict[str, pl.DataType] = {
    "bigint": pl.Int64(), "integer": pl.Int32(), "smallint": pl.Int16(), "text": pl.String(),
    "character varying": pl.String(), "character": pl.String(),  # a client's varchar(n), char(n): text's wire form
    "boolean": pl.Boolean(), "date": pl.Date(), "double precision": pl.Float64(),
    "timestamp with time zone": pl.Datetime("us", "UTC"), "timestamp without time zone": pl.Datetime("us"),
}
#: numeric's sign word for negative values, and its digits' base (4 decimal digits per int16).
NUMERIC_NEG = 0x4000
NBASE_DIGITS = 4
#: Most groups of a value cut by int64 arithmetic (16 digits); longer values are cut as text.
INT64_GROUPS = 4


def copy_frame(conn: Conn, table: sql.Composable, frame: pl.DataFrame) -> None:
    """COPY ``frame`` into ``table`` (columns by name) in binary format, encoded slice by slice
    (a chunk's frame is never held twice, as Arrow and as bytes)."""
    if frame.is_empty():
        return
    types = column_types(conn, table)
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in frame.columns)
    encoder: pgpq.ArrowToPostgresBinaryEncoder | None = None
    with conn.cursor().copy(sql.SQL("COPY {} ({}) FROM STDIN (FORMAT binary)").format(table, cols)) as copy:
        for piece in frame.iter_slices(COPY_SLICE_ROWS):
            batch = pa.RecordBatch.from_arrays([_arrow_column(piece[c], types[c]) for c in piece.columns],
                                               names=piece.columns)
            if encoder is None:
                encoder = pgpq.ArrowToPostgresBinaryEncoder(batch.schema)
                copy.write(encoder.write_header())
            copy.write(encoder.write_batch(batch))
        assert encoder is not None
        copy.write(encoder.finish())


def column_types(conn: Conn, table: sql.Composable) -> dict[str, str]:
    """Each column of ``table`` and its type as PostgreSQL names it (``bigint``, ``numeric``...)."""
    rows = conn.execute("SELECT attname AS name, format_type(atttypid, NULL) AS type FROM pg_attribute"
                        " WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
                        (table.as_string(conn),))
    return {r["name"]: r["type"] for r in rows}


def _arrow_column(column: pl.Series, pg_type: str) -> pa.Array:
    if pg_type == "numeric":
        return numeric_wire(column.cast(pl.String))
    if pg_type == "jsonb":  # jsonb's binary form: version 1, then the text
        return column.cast(pl.String).to_frame("v").select(pl.lit("\x01") + pl.col("v")).to_series().to_arrow()
    target = ARROW_TYPES.get(pg_type)
    if target is None:
        raise TypeError(f"copy_frame cannot send a column of type {pg_type} ({column.name})")
    if isinstance(target, pl.Datetime) and isinstance(column.dtype, pl.Datetime):
        column = column.dt.convert_time_zone("UTC") if column.dtype.time_zone else column
        column = column.dt.replace_time_zone(target.time_zone)
    return column.cast(target).to_arrow()


def numeric_wire(text: pl.Series) -> pa.Array:
    """Decimal texts (``[+-]digits[.digits][e±n]``) as numeric's binary form, one bytes value each:
    ndigits, weight, sign, dscale (int16 each), then the base-10000 digits. The texts are read as
    bytes with NumPy (a third of the time of Polars' string functions, one pass each)."""
    chars = TextBytes(text)
    if chars.needs_trim() or chars.has(b"eE"):
        text = _plain(text.str.strip_chars())
        chars = TextBytes(text)
    first, point, digits = _decimal_parts(chars)
    sign = ((first == ord("+")) | (first == ord("-"))).astype(np.int64)
    frac_digits = np.where(point >= 0, chars.lengths - point - 1, 0)
    n_whole = -(-(np.where(point >= 0, point, chars.lengths) - sign) // NBASE_DIGITS)
    n_groups = n_whole - (-frac_digits // NBASE_DIGITS)
    # every value: 4 header words, then its groups
    words = 4 + n_groups
    ends = np.cumsum(words)
    starts = ends - words
    out = np.empty(int(ends[-1]) if len(ends) else 0, dtype=">i2")
    if (n_groups <= INT64_GROUPS).all():
        _groups_by_arithmetic(out, ends, n_groups, digits, frac_digits)
    else:
        _groups_by_text(out, starts, text)
    out[starts] = n_groups
    out[starts + 1] = n_whole - 1
    out[starts + 2] = np.where(first == ord("-"), NUMERIC_NEG, 0)
    out[starts + 3] = frac_digits
    offsets = np.concatenate([[0], ends * 2]).astype(np.int32)
    validity = pa.array(text.is_not_null().to_numpy()).buffers()[1] if text.null_count() else None
    return pa.BinaryArray.from_buffers(pa.binary(), len(text), [validity, pa.py_buffer(offsets),
                                                                pa.py_buffer(out.tobytes())], text.null_count())


def _decimal_parts(chars: TextBytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each value's first byte, the position of its point (-1 where none) and its digits read as
    one integer (meaningless beyond 18 digits): one pass over the k-th bytes."""
    first = chars.at(0)
    point = np.full(len(chars.lengths), -1, dtype=np.int64)
    digits = np.zeros(len(chars.lengths), dtype=np.int64)
    for k in range(int(chars.lengths.max(initial=0))):
        byte = chars.at(k) if k else first
        digit = byte.astype(np.int64) - ord("0")
        digits = np.where((digit >= 0) & (digit <= 9), digits * 10 + digit, digits)
        point[byte == ord(".")] = k
    return first, point, digits


def _groups_by_arithmetic(out: np.ndarray, ends: np.ndarray, n_groups: np.ndarray, digits: np.ndarray,
                          frac_digits: np.ndarray) -> None:
    """Each value's groups into ``out`` (before ``ends``): its digits as one integer, the fraction
    right-padded to whole groups, cut by division."""
    rest = digits * 10 ** (-frac_digits % NBASE_DIGITS)
    base = 10 ** NBASE_DIGITS
    for k in range(int(n_groups.max(initial=0))):  # the k-th group from the right
        has = n_groups > k
        out[ends[has] - 1 - k] = rest[has] % base
        rest //= base


def _groups_by_text(out: np.ndarray, starts: np.ndarray, text: pl.Series) -> None:
    """Each value's groups into ``out`` (after its 4 header words), for values too long for int64:
    the whole part left-padded and the fraction right-padded to whole groups of 4 digits."""
    split = text.str.strip_prefix("+").str.strip_prefix("-").str.split_exact(".", 1)
    parts = pl.DataFrame({"whole": split.struct.field("field_0").fill_null(""),
                          "frac": split.struct.field("field_1").fill_null("")})
    pad = pl.lit("0" * (NBASE_DIGITS - 1))

    def padding(part: str) -> pl.Expr:
        return pad.str.slice(0, (NBASE_DIGITS - pl.col(part).str.len_bytes() % NBASE_DIGITS) % NBASE_DIGITS)

    digits = parts.select(padding("whole") + pl.col("whole") + pl.col("frac") + padding("frac")).to_series()
    raw = np.frombuffer(digits.str.join("").item().encode(), dtype=np.uint8).astype(np.int16) - ord("0")
    header = np.zeros(len(out), dtype=bool)
    for k in range(4):
        header[starts + k] = True
    out[~header] = raw.reshape(-1, NBASE_DIGITS) @ np.array([1000, 100, 10, 1], dtype=np.int16)


def _plain(text: pl.Series) -> pl.Series:
    """Exponent forms written out (``1.5e3`` is ``1500``, ``1.50E1`` is ``15.0``), as PostgreSQL reads them;
    they are rare, so Python's Decimal does it."""
    has_exponent = text.str.contains("[eE]").fill_null(False)
    if not has_exponent.any():
        return text
    return text.scatter(has_exponent.arg_true(), [format(Decimal(s), "f") for s in text.filter(has_exponent)])
