"""Realistic contact files for demos, tests and benchmarks (``dx generate``).

Vectorised with NumPy and Polars: 1,000,000 rows take about a second. With
``bad_ratio`` some records are broken on purpose (invalid e-mail, impossible
date, non-numeric points, repeated key), the same way every time for a seed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl

FIRST = ["Giulia", "Marco", "José", "Anna", "Luca", "Chiara", "François", "Sofia", "Jürgen", "Émilie",
         "Noah", "Olivia", "Matteo", "Zoë", "Liam", "Ana María"]
LAST = ["Rossi", "Bianchi", "O'Neil", "Müller", "García", "Dupont", "Smith", "Esposito", "Núñez", "Van der Berg"]
CITIES = ["Milano", "Roma", "Torino", "Napoli", "Bologna", "Paris", "Zürich", "München", "Sevilla", "Ragusa, RG"]
DOMAINS = ["example.com", "mail.example", "posta.example.it", "example.org"]

#: First number of the new keys of an Updater source (past any generated contact).
NEW_KEYS_START = 1_000_000_000
#: Rows generated at once by write_contacts.
BLOCK_ROWS = 1_000_000

#: The database fields of a generated file, as a `dx apply` fragment would declare them.
FIELDS = {
    "email": {"type": "email", "required": True}, "first_name": "text", "last_name": "text",
    "city": "text", "postcode": "text", "birth_date": {"type": "date", "format": "%d/%m/%Y"},
    "signup_at": "timestamp", "points": "int", "balance": "decimal", "vip": "bool",
    "phone": "text", "notes": "text",
}


def contacts(rows: int, *, seed: int = 7, bad_ratio: float = 0.0, start: int = 0) -> pl.DataFrame:
    """A frame of ``rows`` contacts, every value a string as in a CSV."""
    rng = np.random.default_rng(seed)
    ids = np.arange(start, start + rows)
    pick = lambda items: np.asarray(items, dtype=object)[rng.integers(0, len(items), rows)]  # noqa: E731
    day = rng.integers(0, 365 * 60, rows)
    birth = pl.Series(day, dtype=pl.Int32).cast(pl.Date) + pl.duration(days=-20000)
    frame = pl.DataFrame({
        "email": [f"user{i}@{d}" for i, d in zip(ids, pick(DOMAINS), strict=True)],
        "first_name": pick(FIRST), "last_name": pick(LAST), "city": pick(CITIES),
        "postcode": pl.Series(rng.integers(10000, 99999, rows)).cast(pl.String),
        "birth_date": pl.select(birth.dt.strftime("%d/%m/%Y")).to_series(),
        "signup_at": pl.Series(rng.integers(1_500_000_000, 1_790_000_000, rows) * 1_000_000)
            .cast(pl.Datetime("us")).dt.strftime("%Y-%m-%d %H:%M:%S"),
        "points": pl.Series(rng.integers(0, 100_000, rows)).cast(pl.String),
        "balance": pl.Series(rng.integers(-50_000, 500_000, rows) / 100).cast(pl.String),
        "vip": pick(["true", "false", "yes", "no"]),
        "phone": pl.Series(rng.integers(3_000_000_000, 3_999_999_999, rows)).cast(pl.String).str.replace(r"^", "+39 "),
        "notes": pick(["", "likes \"quotes\"", "line one\nline two", "semi;colon", "=1+1", "plain"]),
    })
    if bad_ratio > 0:
        frame = _break(frame, rng, bad_ratio)
    return frame


def updates(existing: pl.Series, rows: int, *, seed: int = 7, mix: tuple[float, float, float] = (0.6, 0.25, 0.15),
            bad_ratio: float = 0.01, distinct: bool = False) -> pl.DataFrame:
    """An Updater source: ``operation`` then the contact fields, in random order.

    About ``mix`` (U, I, D) of the records: I of new keys, U and D of keys from
    ``existing`` (the e-mails of contacts already in the database), drawn at random
    (a key may come again: a U after its D fails, as it should), or with
    ``distinct`` each key at most once, so that the file also loads with
    ``psql \\copy`` (the benchmark's baseline). ``bad_ratio`` of them are spoiled:
    an unknown operation or a non-numeric ``points``.
    """
    rng = np.random.default_rng(seed + 1)
    fresh = contacts(rows, seed=seed + 2, start=NEW_KEYS_START)
    ops = np.asarray(["U", "I", "D"])[rng.choice(3, rows, p=list(mix))]
    old = fresh["email"]
    if len(existing):
        picks = np.zeros(rows, dtype=np.int64)
        picks[ops != "I"] = rng.choice(len(existing), int((ops != "I").sum()), replace=not distinct)
        old = existing.gather(picks)
    op = pl.Series(ops)
    fault = pl.Series(np.where(rng.random(rows) < bad_ratio, rng.integers(1, 3, rows), 0))
    return fresh.with_columns(
        pl.when(fault == 1).then(pl.lit("X")).otherwise(op).alias("operation"),
        pl.when(op == "I").then(pl.col("email")).otherwise(old).alias("email"),
        pl.when(fault == 2).then(pl.lit("lots")).otherwise(pl.col("points")).alias("points"),
    ).select("operation", *FIELDS)


def _break(frame: pl.DataFrame, rng: np.random.Generator, ratio: float) -> pl.DataFrame:
    """Spoil about ``ratio`` of the records, one fault each, in four kinds."""
    n = frame.height
    kind = np.where(rng.random(n) < ratio, rng.integers(1, 5, n), 0)
    k = pl.Series(kind)
    prev_email = frame["email"].shift(1).fill_null(frame["email"][0])
    return frame.with_columns(
        pl.when(k == 1).then(pl.col("email").str.replace("@", " at ")).when(k == 4).then(prev_email)
        .otherwise(pl.col("email")).alias("email"),
        pl.when(k == 2).then(pl.lit("31/02/1990")).otherwise(pl.col("birth_date")).alias("birth_date"),
        pl.when(k == 3).then(pl.lit("lots")).otherwise(pl.col("points")).alias("points"),
    )


def contact_blocks(rows: int, *, seed: int = 7, start: int = 0) -> Iterator[pl.DataFrame]:
    """``rows`` contacts in frames of at most BLOCK_ROWS, so that any number fits in memory."""
    for i, first in enumerate(range(0, rows, BLOCK_ROWS)):
        yield contacts(min(BLOCK_ROWS, rows - first), seed=seed + i, start=start + first)


def write_contacts(path: Path, rows: int, *, seed: int = 7, start: int = 0) -> Path:
    """A contact CSV of any size, written block by block so memory stays flat (same as contacts() up to a block)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as out:
        for i, block in enumerate(contact_blocks(rows, seed=seed, start=start)):
            block.write_csv(out, include_header=i == 0)
    return path


def write_contacts_xml(path: Path, rows: int, *, seed: int = 7, start: int = 0) -> Path:
    """The same contacts as write_contacts, as an XML source: ``<dataroot>``, one ``<RECORD>`` each,
    a child element per field (its name upper-cased, as Access exports them), written block by block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as out:
        out.write(b'<?xml version="1.0" encoding="UTF-8"?>\n<dataroot>\n')
        for block in contact_blocks(rows, seed=seed, start=start):
            records = block.select(pl.concat_str(
                [pl.lit("<RECORD>"),
                 *(pl.format(f"<{c.upper()}>{{}}</{c.upper()}>", _xml_text(pl.col(c))) for c in block.columns),
                 pl.lit("</RECORD>\n")]))
            out.write("".join(records.to_series()).encode("utf-8"))
        out.write(b"</dataroot>\n")
    return path


def _xml_text(value: pl.Expr) -> pl.Expr:
    """A value as XML character data (the three characters that must be escaped there, escaped)."""
    return value.str.replace_all("&", "&amp;", literal=True).str.replace_all("<", "&lt;", literal=True) \
        .str.replace_all(">", "&gt;", literal=True)


def write_csv(frame: pl.DataFrame, path: Path, *, delimiter: str = ",", encoding: str = "utf-8") -> Path:
    """Write the frame as a CSV file in the given encoding."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if encoding == "utf-8":
        frame.write_csv(path, separator=delimiter)
    else:
        path.write_bytes(frame.write_csv(separator=delimiter).encode(encoding, errors="replace"))
    return path
