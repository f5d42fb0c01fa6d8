"""An overwrite's keys applied by several of its streamed chunks, settled before the key is built.

A streaming plan (``plan._stream``) cuts the source into chunks of consecutive
records, so the occurrences of one key can be in several chunks; each chunk
kept the first valid occurrence of its own keys and wrote the keys it applied
to its keys file. The reduce reads those files: a key in none of them twice
(a source without repeated keys, the common case) costs one look. Otherwise
the records of the repeated keys are read again from the chunk files and
validated as their chunks did; the first occurrence in the whole source stays,
the later ones leave the shadow table and become DUPLICATE_KEY failed
operations naming the first's row (and so do the repeats that later chunks
refused themselves), exactly as when one chunk holds them all.
"""

from __future__ import annotations

from typing import Any

import polars as pl
import structlog
from psycopg import sql

from dx.shared.catalog import ModuleDef
from dx.shared.db import Conn
from dx.shared.errors import ErrorCode
from dx.shared.formats.csv import ROW
from dx.shared.pgcopy import copy_frame
from dx.shared.validate import DUPLICATE_MESSAGE, KEY, first_occurrences, with_records
from dx.workers import staging
from dx.workers.importer import fields_of, validate_records

log = structlog.get_logger(__name__)
#: Column naming the chunk a record was applied by.
CHUNK = "__chunk"
FAILED_TABLE = sql.Identifier("dx", "failed_operations")


def settle_duplicates(conn: Conn, run: dict[str, Any], mdef: ModuleDef, shadow: sql.Composable) -> int:
    """Keep only the source's first occurrence of every key in ``shadow``, in the caller's transaction,
    recording the others as failed operations; returns how many records left the table."""
    run_id, files = run["id"], [staging.keys_file(run["id"], n) for n in range(run["n_chunks"])]
    if not files:
        return 0
    # the common case, no key applied twice, by one multi-threaded count (a search for the repeated
    # keys themselves, as below, takes 3 times as long: 0.2 s for 1M keys)
    counts = pl.scan_ipc(files).select(pl.len().alias("n"), pl.col(KEY).n_unique().alias("keys")).collect()
    if counts["n"].item() == counts["keys"].item():
        return 0
    applied = pl.concat([pl.read_ipc(f).with_columns(pl.lit(n, pl.Int32).alias(CHUNK)) for n, f in enumerate(files)])
    repeated = applied.filter(pl.col(KEY).is_duplicated())
    columns = list(run["source_columns"])
    schema = {ROW: pl.Int64(), **{c: pl.String() for c in columns}}
    sources, occurrences = [], []
    for (chunk_no,), rows in repeated.group_by(CHUNK):
        records = staging.read_chunk(run_id, int(chunk_no), schema).filter(pl.col(ROW).is_in(rows[ROW].implode()))
        sources.append(records)
        occurrences.append(validate_records(records, mdef, columns).good.with_columns(
            pl.lit(chunk_no, pl.Int32).alias(CHUNK)))
    every = pl.concat(occurrences).sort(ROW)
    first, later = first_occurrences(every.drop(CHUNK))
    assert later is not None  # a key applied twice
    failed = with_records(later, pl.concat(sources), columns).join(
        every.select(pl.col(ROW).alias("row_number"), pl.col(CHUNK).alias("chunk_no")), on="row_number",
        how="left", maintain_order="left").with_columns(pl.lit(run_id).alias("run_id"))
    pk = sql.Identifier(mdef.database.primary_key)
    conn.execute(sql.SQL("DELETE FROM {} WHERE {} = ANY(%s)").format(shadow, pk),
                 (every[mdef.database.primary_key].unique().to_list(),))
    copy_frame(conn, shadow, first.select(fields_of(first)))
    copy_frame(conn, FAILED_TABLE, failed)
    # the repeats a later chunk refused itself name that chunk's first occurrence: they name the source's
    conn.execute("UPDATE dx.failed_operations f SET error_message = format(%s, w.first)"
                 " FROM unnest(%s::text[], %s::bigint[]) AS w(key, first)"
                 " WHERE f.run_id = %s AND f.error_code = %s AND f.key = w.key",
                 (DUPLICATE_MESSAGE.replace("{}", "%s"), first[KEY].to_list(), first[ROW].to_list(), run_id,
                  ErrorCode.DUPLICATE_KEY.value))
    log.info("reduce.duplicates", keys=first.height, removed=later.height)
    return later.height

