"""The Importer's set-based work: apply a validated chunk, finish a run.

Every chunk is loaded with COPY and applied with one SQL statement, a function
per mode (``dx.workers.imports.kinds`` picks it):
- overwrite (``overwrite_chunk``): COPY into the run's shadow table
  (``create_shadow``); ``finish_overwrite`` swaps it in atomically (readers
  see the old content or the new, never a mix), the client's indexes,
  constraints, grants, comments, triggers and views kept (``keeps``); the replaced table is
  dropped after the run ended (``drop_replaced``), the shadow table of a
  failed run at once (``drop_shadow``);
- append (``append_chunk``): COPY straight into the target when every key is
  new; else COPY into a temporary table, INSERT .. ON CONFLICT DO NOTHING;
  keys that already exist come back as KEY_EXISTS failed operations (the
  reduce of a streamed append settles those that another chunk of the run
  inserted);
- upsert (``upsert_chunk``): the last occurrence of each key, INSERT .. ON
  CONFLICT DO UPDATE of the columns the source has.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl
import psycopg
from psycopg import sql

from dx.shared.catalog import ModuleDef, table_ident
from dx.shared.config import ModuleCfg
from dx.shared.db import Conn
from dx.shared.errors import ErrorCode, RunError
from dx.shared.formats.csv import ROW
from dx.shared.pgcopy import copy_frame
from dx.shared.runs import Run
from dx.shared.validate import KEY, OP, SETS, Unset, Validated, validate
from dx.workers.imports import keeps

#: Name of the per-transaction load table of append and upsert.
LOAD_TABLE = "dx_load"


def shadow_table(database: str, run_id: int) -> str:
    """The table an overwrite run loads before it is swapped in."""
    return f"{database}__shadow_{run_id}"


def create_shadow(conn: Conn, mdef: ModuleDef, run_id: int) -> None:
    """The overwrite's shadow table, empty, with the target's columns, defaults and generated columns;
    without its key (built at the reduce) and the client's other constraints, NOT NULL included (the
    swap adds them once the data is in, so that a record breaking one fails the run, not a chunk)."""
    table = table_ident(mdef.database.tenant, mdef.database.id)
    shadow = table_ident(mdef.database.tenant, shadow_table(mdef.database.id, run_id))
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(shadow))
    conn.execute(sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING GENERATED)").format(shadow, table))
    nullable = [sql.SQL("ALTER COLUMN {} DROP NOT NULL").format(sql.Identifier(r["attname"])) for r in conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped"
        " AND attnotnull AND attname <> %s", (shadow.as_string(conn), mdef.database.primary_key))]
    if nullable:
        conn.execute(sql.SQL("ALTER TABLE {} {}").format(shadow, sql.SQL(", ").join(nullable)))


def drop_shadow(conn: Conn, mdef: ModuleDef, run_id: int) -> None:
    """Drop an overwrite run's shadow table if it exists."""
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(
        table_ident(mdef.database.tenant, shadow_table(mdef.database.id, run_id))))


@dataclass
class ChunkOutcome:
    """Counters of one applied chunk and its failed operations."""

    counters: dict[str, int]
    failed: pl.DataFrame


def load_table(conn: Conn, mdef: ModuleDef, frame: pl.DataFrame,
               extra: tuple[tuple[str, str], ...] = ((ROW, "bigint"),), name: str = LOAD_TABLE, *,
               nullable: bool = False) -> sql.Identifier:
    """A temporary table ``name`` like the target plus the ``extra`` (name, SQL type) columns,
    holding ``frame``; dropped at commit. ``nullable``: no NOT NULL but the key's (a record that
    leaves a field unset holds NULL there, and writes nothing to it)."""
    target = table_ident(mdef.database.tenant, mdef.database.id)
    load = sql.Identifier(name)
    # a chunk applied again in parts in one transaction (``refusals``) loads it again
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier("pg_temp", name)))
    conn.execute(sql.SQL("CREATE TEMP TABLE {} (LIKE {} INCLUDING DEFAULTS) ON COMMIT DROP").format(load, target))
    not_null = [sql.SQL("ALTER COLUMN {} DROP NOT NULL").format(sql.Identifier(r["attname"])) for r in conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped"
        " AND attnotnull AND attname <> %s", (load.as_string(conn), mdef.database.primary_key))] if nullable else []
    if not_null:
        conn.execute(sql.SQL("ALTER TABLE {} {}").format(load, sql.SQL(", ").join(not_null)))
    for column, sql_type in extra:
        conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN {} {}").format(load, sql.Identifier(column),
                                                                       sql.SQL(sql_type)))
    copy_frame(conn, load, frame)
    return load


def _copy_if_all_new(conn: Conn, target: sql.Composable, frame: pl.DataFrame) -> bool:
    """Append's common case, new keys only: COPY straight into the target (half the time of a load
    table and INSERT .. ON CONFLICT); False, with nothing written, as soon as one key exists (or
    another chunk of the run, holding some of the same keys in another order, deadlocks with it)."""
    try:
        with conn.transaction():  # a savepoint: an existing key undoes this COPY only
            copy_frame(conn, target, frame)
    except (psycopg.errors.UniqueViolation, psycopg.errors.DeadlockDetected):
        return False
    return True


def keep_blank_text(module: ModuleCfg) -> bool:
    """Whether a blank text cell stays text: a source whose nulls are its unquoted empty cells."""
    return module.source is not None and module.source.nulls == "unquoted"


def unset_values(module: ModuleCfg) -> Unset | None:
    """Which values an update (an Updater's U, an upsert) leaves the field as it is for: empty ones
    (``empty_on_update: keep``), absent ones (an XML element a record leaves out), or none."""
    if module.empty_on_update == "keep":
        return "empty"
    return "absent" if module.source is not None and module.source.format == "xml" else None


def validate_records(frame: pl.DataFrame, mdef: ModuleDef, columns: list[str], *,
                     dedupe: str = "first", unset: Unset | None = None) -> Validated:
    """An Importer's records validated; ``dedupe``: which occurrence of a key counts, the first, or in
    upsert the last; ``unset``: see ``validate`` (an upsert's)."""
    return validate(frame, mdef.database, columns, dedupe=dedupe, keep_blank_text=keep_blank_text(mdef.module),
                    unset=unset)


def fields_of(good: pl.DataFrame) -> list[str]:
    """The database fields that validated records carry (the mapped source columns)."""
    return [c for c in good.columns if c not in (ROW, KEY, OP) and not c.startswith(SETS)]


def overwrite_chunk(conn: Conn, run: Run, mdef: ModuleDef, v: Validated) -> ChunkOutcome:
    """Load one validated chunk into the run's shadow table, in the caller's transaction."""
    copy_frame(conn, table_ident(mdef.database.tenant, shadow_table(mdef.database.id, run["id"])),
               v.good.select(fields_of(v.good)))
    return ChunkOutcome({"inserted": v.good.height, "not_inserted": v.failed.height}, v.failed)


def append_chunk(conn: Conn, run: Run, mdef: ModuleDef, v: Validated) -> ChunkOutcome:
    """Insert one validated chunk's new keys in the caller's transaction; an existing key is KEY_EXISTS."""
    fields = fields_of(v.good)
    target = table_ident(mdef.database.tenant, mdef.database.id)
    n_failed = v.failed.height
    if _copy_if_all_new(conn, target, v.good.select(fields)):
        return ChunkOutcome({"inserted": v.good.height, "not_inserted": n_failed}, v.failed)
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in fields)
    load = load_table(conn, mdef, v.good.select(ROW, *fields))
    rejected = [r[ROW] for r in conn.execute(sql.SQL(
        "WITH ins AS (INSERT INTO {t} ({c}) SELECT {c} FROM {l} ORDER BY {r} ON CONFLICT ({k}) DO NOTHING"
        " RETURNING {k}) SELECT l.{r} FROM {l} l WHERE NOT EXISTS (SELECT 1 FROM ins WHERE ins.{k} = l.{k})"
    ).format(t=target, c=cols, l=load, r=sql.Identifier(ROW), k=sql.Identifier(mdef.database.primary_key)))]
    failed = v.fail(v.good.filter(pl.col(ROW).is_in(rejected)), ErrorCode.KEY_EXISTS,
                    "the key already exists in the database; the existing record was kept")
    return ChunkOutcome({"inserted": v.good.height - len(rejected), "not_inserted": n_failed + len(rejected)},
                        pl.concat([v.failed, failed]))


def upsert_chunk(conn: Conn, run: Run, mdef: ModuleDef, v: Validated) -> ChunkOutcome:
    """Insert or update one validated chunk in the caller's transaction: the last occurrence of each
    key wins."""
    fields = fields_of(v.good)
    target = table_ident(mdef.database.tenant, mdef.database.id)
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in fields)
    key = sql.Identifier(mdef.database.primary_key)
    latest = v.good.unique(KEY, keep="last", maintain_order=True)
    load = load_table(conn, mdef, latest.select(ROW, *fields))
    updates = sql.SQL(", ").join(sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(c)) for c in fields)
    rows = conn.execute(sql.SQL(
        "INSERT INTO {t} ({c}) SELECT {c} FROM {l} ON CONFLICT ({k}) DO UPDATE SET {u} RETURNING (xmax = 0) AS new"
    ).format(t=target, c=cols, l=load, k=key, u=updates)).fetchall()
    inserted = sum(1 for r in rows if r["new"])
    failed, existing = split_failed_by_existence(conn, target, key, mdef, v.failed)
    return ChunkOutcome({"inserted": inserted, "updated": v.good.height - inserted,
                         "not_inserted": failed.height - existing, "not_updated": existing}, failed)


def split_failed_by_existence(conn: Conn, target: sql.Composable, key: sql.Identifier,
                               mdef: ModuleDef, failed: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    """Upsert failures count as not_updated when the key exists, else not_inserted."""
    keys = [k for k in failed["key"].drop_nulls().unique().to_list()]
    if mdef.database.fields[mdef.database.primary_key].type == "int":
        keys = [int(k) for k in keys if k.lstrip("+-").isdigit()]
    if not keys:
        return failed, 0
    found = {str(r["k"]) for r in conn.execute(
        sql.SQL("SELECT {k}::text AS k FROM {t} WHERE {k} = ANY(%s)").format(k=key, t=target), (keys,))}
    marked = failed.with_columns(
        pl.when(pl.col("key").is_in(list(found))).then(pl.lit("U")).otherwise(pl.lit("I")).alias("operation"))
    return marked, int((marked["operation"] == "U").sum())


def finish_overwrite(conn: Conn, run: Run, mdef: ModuleDef, counters: dict[str, int], *,
                     key_built: bool = False) -> tuple[ErrorCode | None, str | None]:
    """Apply the guards, then swap the shadow table in (its key built first, unless ``key_built``),
    keeping the client's objects on the table (``keeps.swap``); (code, message) when the run must fail,
    with the table and its objects as they were."""
    module, db = mdef.module, mdef.database
    valid, rejected, read = counters["inserted"], counters["not_inserted"], counters["rows_read"]
    if valid == 0 and not module.allow_empty:
        return ErrorCode.EMPTY_SOURCE, (f"the source has no valid record ({read} read, {rejected} rejected); "
                                        "the database keeps its previous content")
    if read and rejected / read > module.max_error_ratio:
        return ErrorCode.ERROR_RATIO_EXCEEDED, (
            f"{rejected} of {read} records rejected ({rejected / read:.1%}), more than max_error_ratio "
            f"{module.max_error_ratio:.1%}; the database keeps its previous content")
    if not key_built:
        build_key(conn, mdef, run["id"])
    shadow_name = shadow_table(db.id, run["id"])
    conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(table_ident(db.tenant, db.id)))
    try:
        keeps.swap(conn, db.tenant, db.id, shadow_name, f"{shadow_name}_pkey", replaced_table(db.id, run["id"]))
    except RunError as exc:
        return exc.code, f"{exc.message}; the database keeps its previous content"
    return None, None


def replaced_table(database: str, run_id: int) -> str:
    """The name an overwrite gives the table it replaced, until ``drop_replaced``."""
    return f"{database}__old_{run_id}"


def drop_replaced(conn: Conn, mdef: ModuleDef, run_id: int) -> None:
    """Drop the table an overwrite replaced, if it is still there. Not in the swap's transaction: the
    commit of a DROP unlinks the table's files (about 0.1 s for 300 MB here, seconds for 10M rows),
    and the swap's lock on the contact table, which readers wait for, would be held meanwhile."""
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(
        table_ident(mdef.database.tenant, replaced_table(mdef.database.id, run_id))))


def build_key(conn: Conn, mdef: ModuleDef, run_id: int) -> None:
    """The shadow table's primary key (one sorted build, after the load)."""
    db = mdef.database
    shadow_name = shadow_table(db.id, run_id)
    conn.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} PRIMARY KEY ({})").format(
        table_ident(db.tenant, shadow_name), sql.Identifier(f"{shadow_name}_pkey"), sql.Identifier(db.primary_key)))
