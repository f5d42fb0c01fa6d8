"""Keys that several streamed chunks held, settled by the reduce as one chunk holding them would.

A streaming plan (``plan._stream``) cuts the source into chunks of consecutive
records, so the occurrences of one key can be in several chunks; each chunk
kept the first valid occurrence of its own keys and wrote them to its keys
file. A key in two of those files is found by the keys' hashes, sorted, with
an equal neighbour or not (8 bytes a key in memory, not the keys); the
records of such keys are read again from the chunk files and validated as
their chunks did. The first occurrence in the whole source counts; the later
ones become DUPLICATE_KEY failed operations naming the first's row (and so do
the repeats that later chunks refused themselves).

An overwrite looks while PostgreSQL builds the shadow table's key (a thread
of its own). A source without repeated keys, the common case, is done then.
Otherwise the key build is undone, the later occurrences leave the shadow
table, and the key is built again.

An append's chunks insert into the contact table itself, in the order they
commit: of two chunks holding a new key, the one that commits second finds it
existing (KEY_EXISTS). So only a run with KEY_EXISTS failures looks (or one
with a text key: two records of a key that differ by spaces are two keys to
PostgreSQL). A key a later occurrence inserted takes the first's values (an
UPDATE of the source's fields: what inserting the first would have written);
a key that existed before the run keeps its KEY_EXISTS on the first
occurrence; a row a later occurrence inserted under another form of the key
is deleted again.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import polars as pl
import psycopg
import structlog
from psycopg import sql

from dx.shared import threads
from dx.shared.catalog import ModuleDef, table_ident
from dx.shared.db import Conn
from dx.shared.errors import ErrorCode
from dx.shared.formats.csv import ROW
from dx.shared.pgcopy import copy_frame
from dx.shared.runs import FAILED_TABLE, Run
from dx.shared.validate import DUPLICATE_MESSAGE, KEY, first_occurrences, with_records
from dx.workers import staging
from dx.workers.imports.importer import build_key, fields_of, load_table, shadow_table, validate_records

log = structlog.get_logger(__name__)
#: Column naming the chunk a record was applied by.
CHUNK = "__chunk"


def keys_applied(good: pl.DataFrame, *stored: str) -> pl.DataFrame:
    """What a streamed chunk writes to its keys file: ROW and KEY of its valid records, and the
    columns ``stored`` (an append's key as stored, which ``undo_append`` deletes by: a text key's KEY
    is trimmed, not it)."""
    return good.select(ROW, KEY, *stored)


def _refused(conn: Conn, run_id: int, among: list[int] | None = None) -> pl.Series:
    """The row numbers of the run's records that its chunks found existing (KEY_EXISTS), of ``among``
    only if given."""
    rows = conn.execute("SELECT row_number FROM dx.failed_operations WHERE run_id = %s AND chunk_no >= 0"
                        " AND error_code = %s AND (%s::bigint[] IS NULL OR row_number = ANY(%s))",
                        (run_id, ErrorCode.KEY_EXISTS.value, among, among))
    return pl.Series(ROW, [r["row_number"] for r in rows], dtype=pl.Int64)


def undo_append(conn: Conn, run: Run, mdef: ModuleDef) -> int:
    """Delete, in the caller's transaction, the rows that a streamed append's committed chunks inserted
    (their keys files' keys, less those they found existing): its plan failed after sending them, and
    the run keeps none of its work. Returns how many."""
    run_id, db = run["id"], mdef.database
    committed = [r["chunk_no"] for r in conn.execute(
        "SELECT chunk_no FROM dx.chunk_results WHERE run_id = %s", (run_id,))]  # a keys file of another may be stale
    refused = _refused(conn, run_id)
    removed = 0
    for chunk_no in committed:
        keys = staging.read_ipc(staging.keys_file(run_id, chunk_no), columns=[ROW, db.primary_key]).filter(
            ~pl.col(ROW).is_in(refused.implode()))
        removed += conn.execute(sql.SQL("DELETE FROM {} WHERE {} = ANY(%s)").format(
            table_ident(db.tenant, db.id), sql.Identifier(db.primary_key)), (keys[db.primary_key].to_list(),)).rowcount
    return removed


def build_key_while_checking(conn: Conn, run: Run, mdef: ModuleDef,
                             applied: int) -> tuple[bool, pl.DataFrame | None]:
    """Build the shadow table's key while a thread looks for keys that several chunks applied
    (``applied`` keys in all): (key built, the applications of the repeated keys or None).
    Repeated keys leave the key unbuilt (undone, or refused by PostgreSQL as not unique)."""
    with ThreadPoolExecutor(1, thread_name_prefix="dx-repeats", initializer=threads.name_native) as pool:
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


def repeated_keys(run: Run, applied: int) -> pl.DataFrame | None:
    """The occurrences (ROW, KEY, CHUNK) of every key in more than one chunk's keys file (which hold
    ``applied`` keys in all); None if no key is."""
    assert run["n_chunks"] is not None  # the reduce runs once the run is planned
    files = [staging.keys_file(run["id"], n) for n in range(run["n_chunks"])]
    hashes, filled = np.empty(applied, np.uint64), 0  # filled in place: 8 bytes a key, once
    for f in files:
        keys = staging.read_ipc(f, columns=[KEY])[KEY]
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
    suspected = pl.col(KEY).hash(seed=0).is_in(pl.Series(suspects).implode())
    candidates = pl.concat([staging.read_ipc(f, columns=[ROW, KEY]).filter(suspected)
                            .with_columns(pl.lit(n, pl.Int32).alias(CHUNK)) for n, f in enumerate(files)])
    repeated = candidates.filter(pl.col(KEY).is_duplicated())
    return None if repeated.is_empty() else repeated


def _source_columns(run: Run) -> list[str]:
    """The columns of the run's source, which its plan recorded before it sent a chunk."""
    assert run["source_columns"] is not None
    return list(run["source_columns"])


def _occurrences(run: Run, mdef: ModuleDef, repeated: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The ``repeated`` occurrences validated as their chunks did (with CHUNK), in source order, and
    their records as received."""
    run_id, columns = run["id"], _source_columns(run)
    schema = {ROW: pl.Int64(), **{c: pl.String() for c in columns}}
    sources, occurrences = [], []
    for (chunk_no,), rows in repeated.group_by(CHUNK):
        records = staging.read_chunk(run_id, int(chunk_no), schema).filter(pl.col(ROW).is_in(rows[ROW].implode()))
        sources.append(records)
        occurrences.append(validate_records(records, mdef, columns).good.with_columns(
            pl.lit(chunk_no, pl.Int32).alias(CHUNK)))
    return pl.concat(occurrences).sort(ROW), pl.concat(sources)


def _duplicates(run: Run, every: pl.DataFrame, sources: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The first occurrences of ``every``, and the later ones as DUPLICATE_KEY failed operations
    (FAILED_SCHEMA, with run_id and chunk_no) naming the first's row."""
    first, later = first_occurrences(every.drop(CHUNK))
    assert later is not None  # each of these keys is in two chunks
    failed = with_records(later, sources, _source_columns(run)).join(
        every.select(pl.col(ROW).alias("row_number"), pl.col(CHUNK).alias("chunk_no")), on="row_number",
        how="left", maintain_order="left").with_columns(pl.lit(run["id"]).alias("run_id"))
    return first, failed


def _name_first(conn: Conn, run_id: int, first: pl.DataFrame) -> None:
    """The repeats a chunk refused itself name that chunk's first occurrence: they name the source's."""
    conn.execute("UPDATE dx.failed_operations f SET error_message = format(%s, w.first)"
                 " FROM unnest(%s::text[], %s::bigint[]) AS w(key, first)"
                 " WHERE f.run_id = %s AND f.error_code = %s AND f.key = w.key",
                 (DUPLICATE_MESSAGE.replace("{}", "%s"), first[KEY].to_list(), first[ROW].to_list(), run_id,
                  ErrorCode.DUPLICATE_KEY.value))


def settle_duplicates(conn: Conn, run: Run, mdef: ModuleDef, repeated: pl.DataFrame) -> int:
    """Keep only the source's first occurrence of the ``repeated`` keys in the shadow table, in the
    caller's transaction, recording the others as failed operations; returns how many records left it."""
    every, sources = _occurrences(run, mdef, repeated)
    first, failed = _duplicates(run, every, sources)
    db = mdef.database
    shadow = table_ident(db.tenant, shadow_table(db.id, run["id"]))
    conn.execute(sql.SQL("DELETE FROM {} WHERE {} = ANY(%s)").format(shadow, sql.Identifier(db.primary_key)),
                 (every[db.primary_key].unique().to_list(),))
    copy_frame(conn, shadow, first.select(fields_of(first)))
    copy_frame(conn, FAILED_TABLE, failed)
    _name_first(conn, run["id"], first)
    log.info("reduce.duplicates", keys=first.height, removed=failed.height)
    return failed.height


def settle_append(conn: Conn, run: Run, mdef: ModuleDef, inserted: int) -> int:
    """Settle a streamed append's keys that several chunks held, in the caller's transaction, as one
    chunk holding them would have; returns how many inserted records that undid. Reads nothing when no
    chunk found a key existing, unless the key is text (two records of a key can then differ by
    spaces: PostgreSQL sees two keys)."""
    run_id, db = run["id"], mdef.database
    n_refused = conn.execute(
        "SELECT count(*) AS n FROM dx.failed_operations WHERE run_id = %s AND chunk_no >= 0 AND error_code = %s",
        (run_id, ErrorCode.KEY_EXISTS.value)).fetchone()["n"]  # type: ignore[index]
    if not n_refused and db.fields[db.primary_key].type != "text":
        return 0
    repeated = repeated_keys(run, inserted + n_refused)
    if repeated is None:
        return 0
    refused = _refused(conn, run_id, repeated[ROW].to_list())
    every, sources = _occurrences(run, mdef, repeated)
    first, failed = _duplicates(run, every, sources)  # the later occurrences: DUPLICATE_KEY, all
    pk, row, refusal = db.primary_key, pl.col(ROW), pl.col(ROW).is_in(refused.implode())
    inserted_later = every.filter(~refusal & ~row.is_in(first[ROW].implode())).select(pk)
    # a first occurrence refused because a later one inserted its very key: the row takes its values
    taking = first.filter(refusal).join(inserted_later, on=pk, how="semi")
    gone = inserted_later.join(taking.select(pk), on=pk, how="anti")  # other rows later occurrences inserted
    existed = first.filter(refusal).join(taking.select(ROW), on=ROW, how="anti")[ROW]  # their KEY_EXISTS stays
    conn.execute("DELETE FROM dx.failed_operations WHERE run_id = %s AND error_code = %s AND row_number = ANY(%s)"
                 " AND NOT row_number = ANY(%s)",
                 (run_id, ErrorCode.KEY_EXISTS.value, every[ROW].to_list(), existed.to_list()))
    copy_frame(conn, FAILED_TABLE, failed)
    target, key = table_ident(db.tenant, db.id), sql.Identifier(pk)
    if not taking.is_empty():
        fields = fields_of(taking)
        load = load_table(conn, mdef, taking.select(fields), extra=(), name="dx_first")
        own = [c for c in fields if c != pk] or [pk]
        conn.execute(sql.SQL("UPDATE {t} t SET {s} FROM {l} l WHERE t.{k} = l.{k}").format(
            t=target, l=load, k=key, s=sql.SQL(", ").join(sql.SQL("{c} = l.{c}").format(c=sql.Identifier(c))
                                                          for c in own)))
    if not gone.is_empty():
        conn.execute(sql.SQL("DELETE FROM {} WHERE {} = ANY(%s)").format(target, key), (gone[pk].to_list(),))
    _name_first(conn, run_id, first)
    log.info("reduce.duplicates", keys=first.height, refused=failed.height, first_applied_now=taking.height,
             removed=gone.height)
    return gone.height
