"""An overwrite's keys applied by several of its streamed chunks, settled before the swap.

A streaming plan (``plan._stream``) cuts the source into chunks of consecutive
records, so the occurrences of one key can be in several chunks; each chunk
kept the first valid occurrence of its own keys and wrote the keys it applied
to its keys file. The reduce looks for a key in two of those files while
PostgreSQL builds the shadow table's key (a thread of its own): the keys'
hashes, sorted, with an equal neighbour or not (8 bytes a key in memory, not
the keys). A source without repeated keys, the common case, is done then.
Otherwise the key build is undone, the records of the repeated keys are read
again from the chunk files and validated as their chunks did; the first
occurrence in the whole source stays, the later ones leave the shadow table
and become DUPLICATE_KEY failed operations naming the first's row (and so do
the repeats that later chunks refused themselves), exactly as when one chunk
holds them all; then the key is built again.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import polars as pl
import psycopg
import structlog
from psycopg import sql

from dx.shared.catalog import ModuleDef, table_ident
from dx.shared.db import Conn
from dx.shared.errors import ErrorCode
from dx.shared.formats.csv import ROW
from dx.shared.pgcopy import copy_frame
from dx.shared.runs import FAILED_TABLE
from dx.shared.validate import DUPLICATE_MESSAGE, KEY, first_occurrences, with_records
from dx.workers import staging
from dx.workers.importer import build_key, fields_of, shadow_table, validate_records

log = structlog.get_logger(__name__)
#: Column naming the chunk a record was applied by.
CHUNK = "__chunk"


def build_key_while_checking(conn: Conn, run: dict[str, Any], mdef: ModuleDef,
                             applied: int) -> tuple[bool, pl.DataFrame | None]:
    """Build the shadow table's key while a thread looks for keys that several chunks applied
    (``applied`` keys in all): (key built, the applications of the repeated keys or None).
    Repeated keys leave the key unbuilt (undone, or refused by PostgreSQL as not unique)."""
    with ThreadPoolExecutor(1, thread_name_prefix="dx-repeats") as pool:
        looking = pool.submit(repeated_keys, run, applied)
        conn.execute("SAVEPOINT dx_key")
        try:
            build_key(conn, mdef, run["id"])
            built = True
        except psycopg.errors.UniqueViolation:
            conn.execute("ROLLBACK TO SAVEPOINT dx_key")
            built = False
        repeated = looking.result()
    if repeated is not None and built:
        conn.execute("ROLLBACK TO SAVEPOINT dx_key")
        built = False
    return built, repeated


def repeated_keys(run: dict[str, Any], applied: int) -> pl.DataFrame | None:
    """The applications (ROW, KEY, CHUNK) of every key that more than one chunk applied (the chunks
    applied ``applied`` keys); None if none did."""
    files = [staging.keys_file(run["id"], n) for n in range(run["n_chunks"])]
    hashes, filled = np.empty(applied, np.uint64), 0  # filled in place: 8 bytes a key, once
    for f in files:
        keys = pl.read_ipc(f, columns=[KEY])[KEY]
        if filled + len(keys) > applied:
            raise RuntimeError(f"run {run['id']}: its keys files hold more keys than its chunks applied ({applied})")
        hashes[filled:filled + len(keys)] = keys.hash(seed=0).to_numpy()
        filled += len(keys)
    if filled != applied:
        raise RuntimeError(f"run {run['id']}: its keys files hold {filled} keys, its chunks applied {applied}")
    hashes.sort()
    suspects = np.unique(hashes[1:][hashes[1:] == hashes[:-1]])  # equal hashes: repeated keys, or a collision
    del hashes
    if not len(suspects):
        return None
    candidates = pl.concat([pl.read_ipc(f).filter(pl.col(KEY).hash(seed=0).is_in(pl.Series(suspects).implode()))
                            .with_columns(pl.lit(n, pl.Int32).alias(CHUNK)) for n, f in enumerate(files)])
    repeated = candidates.filter(pl.col(KEY).is_duplicated())
    return None if repeated.is_empty() else repeated


def settle_duplicates(conn: Conn, run: dict[str, Any], mdef: ModuleDef, repeated: pl.DataFrame) -> int:
    """Keep only the source's first occurrence of the ``repeated`` keys in the shadow table, in the
    caller's transaction, recording the others as failed operations; returns how many records left it."""
    run_id, columns = run["id"], list(run["source_columns"])
    schema = {ROW: pl.Int64(), **{c: pl.String() for c in columns}}
    sources, occurrences = [], []
    for (chunk_no,), rows in repeated.group_by(CHUNK):
        records = staging.read_chunk(run_id, int(chunk_no), schema).filter(pl.col(ROW).is_in(rows[ROW].implode()))
        sources.append(records)
        occurrences.append(validate_records(records, mdef, columns).good.with_columns(
            pl.lit(chunk_no, pl.Int32).alias(CHUNK)))
    every = pl.concat(occurrences).sort(ROW)
    first, later = first_occurrences(every.drop(CHUNK))
    assert later is not None  # each of these keys was applied twice
    failed = with_records(later, pl.concat(sources), columns).join(
        every.select(pl.col(ROW).alias("row_number"), pl.col(CHUNK).alias("chunk_no")), on="row_number",
        how="left", maintain_order="left").with_columns(pl.lit(run_id).alias("run_id"))
    db = mdef.database
    shadow = table_ident(db.tenant, shadow_table(db.id, run_id))
    conn.execute(sql.SQL("DELETE FROM {} WHERE {} = ANY(%s)").format(shadow, sql.Identifier(db.primary_key)),
                 (every[db.primary_key].unique().to_list(),))
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
