"""The Updater's set-based work: apply a chunk of I/U/D operations in source order.

Every occurrence of a key is in one chunk (the plan partitions by a hash of
the key), in source order. Most keys have one record in a chunk: one
statement applies all of those (a DELETE, an UPDATE and an INSERT .. ON
CONFLICT DO NOTHING from one COPY into a temporary table), and the keys it
returns are their outcome. For keys with several records, the outcome depends
only on whether the key exists before the chunk, so one query tells that for
every such key; the per-key replay is then column-wise (one sort and one
group-by in Polars), and the database sees one MERGE from one more COPY. No
round trip per record.

The replay: an operation either succeeds or fails on the key's state just
before it, and a success sets the state (I and an inserting U: exists, D:
gone; a plain U keeps it). So the state before a record is the state set by
the last *state-setting* record before it, or the initial state: a shifted
forward fill per key.

A record may leave fields unset (an XML element left out; an empty cell with
``empty_on_update: keep``): a U keeps them as they are, an insert leaves them
empty, and the chunk's records carry which fields each sets
(``validate``'s ``sets_column``). The UPDATEs then set such a field only
where the record sets it; a key's several writes are merged first, each
field from the last write that sets it since the key's last insert. An
upsert's U (``update_missing: insert``, and an upsert importer's records,
``upsert_records``) must know whether its key exists, so all its records go
through the existence query and the replay; one that leaves a required field
unset inserts nothing (REQUIRED_FIELD_MISSING).
"""

from __future__ import annotations

import polars as pl
from psycopg import sql

from dx.shared.catalog import ModuleDef, table_ident
from dx.shared.config import DatabaseCfg
from dx.shared.db import Conn
from dx.shared.errors import ErrorCode, RetriableError
from dx.shared.formats.csv import ROW
from dx.shared.runs import Run
from dx.shared.validate import (
    FAILED_SCHEMA,
    KEY,
    OP,
    SETS,
    Validated,
    find_column,
    missing_required,
    sets_column,
    validate,
)
from dx.workers.imports.importer import (
    ChunkOutcome,
    fields_of,
    keep_blank_text,
    load_table,
    split_failed_by_existence,
    unset_values,
)

#: Column of the load table telling what happens to a key.
ACTION = "__action"
#: Failed-operation counter of each operation; an unknown operation counts as not updated.
NOT_COUNTER = {"I": "not_inserted", "U": "not_updated", "D": "not_deleted"}


def missing_columns(columns: list[str], mdef: ModuleDef) -> list[str]:
    """The columns an Updater's source lacks: the key, the operation field, and the required fields
    only if a U may insert (a U that updates and a D need the key alone)."""
    module = mdef.module
    return missing_required(columns, mdef.database, all_required=module.update_missing == "insert",
                            operation_field=module.operation_field)


def validate_operations(frame: pl.DataFrame, mdef: ModuleDef, columns: list[str]) -> Validated:
    """An Updater's records validated, each with its operation; every occurrence of a key counts."""
    module = mdef.module
    return validate(frame, mdef.database, columns, dedupe=None, keep_blank_text=keep_blank_text(module),
                    operation_column=find_column(columns, module.operation_field), unset=unset_values(module))


def existing_rows(conn: Conn, mdef: ModuleDef, good: pl.DataFrame) -> pl.Series:
    """Row numbers of ``good`` whose key is in the database now.

    No row locks (they would cost a write per row): ``apply_updates`` checks
    instead that its statement touched exactly the rows it expected, so a
    concurrent writer of the same keys makes the chunk roll back and retry."""
    pk = mdef.database.primary_key
    target = table_ident(mdef.database.tenant, mdef.database.id)
    keys = load_table(conn, mdef, good.select(ROW, pk).sort(pk), name="dx_keys", nullable=True)
    rows = conn.execute(sql.SQL(
        "SELECT k.{r} FROM {k} k JOIN {t} t ON t.{p} = k.{p}"
    ).format(r=sql.Identifier(ROW), k=keys, t=target, p=sql.Identifier(pk))).fetchall()
    return pl.Series(ROW, [r[ROW] for r in rows], dtype=pl.Int64)


def replay(good: pl.DataFrame, pk: str, initial_rows: pl.Series, upsert: bool,
           complete: pl.Expr | None = None) -> pl.DataFrame:
    """Each valid record with its outcome: columns ``ins``, ``upd``, ``del`` (it succeeded as
    that), ``code`` (why it failed), ``action`` on the key's last write (insert, replace or
    update), ``gone`` on the last record of a key that existed and no longer does, and ``key_no``.
    ``complete``: whether a record sets every required field (default: each does); an upsert's U
    that does not, on a key that is not there, fails and changes nothing."""
    op = pl.col(OP)
    full = pl.lit(True) if complete is None else complete
    sets = pl.when(op == "I").then(True).when(op == "D").then(False)
    if upsert:
        sets = sets.when((op == "U") & full).then(True)
    # sorted by key, then source order: each key's records are one run of rows
    frame = good.sort(pk, ROW).with_columns(
        pl.col(ROW).is_in(initial_rows.implode()).alias("init"), sets.alias("sets"),
        (pl.col(pk) != pl.col(pk).shift(1)).fill_null(True).alias("first"))
    # state before a record: set by the key's last state-setting record before it, else initial;
    # every run starts non-null, so the forward fill never crosses from one key into the next
    before = pl.when(pl.col("first")).then(pl.col("init")).otherwise(pl.col("sets").shift(1)).forward_fill()
    b = pl.col("before")
    frame = frame.with_columns(before.alias("before"), pl.col("first").cum_sum().alias("key_no")).with_columns(
        ((op == "I") & ~b | (op == "U") & ~b & upsert & full).alias("ins"),
        ((op == "U") & b).alias("upd"),
        ((op == "D") & b).alias("del"),
    )
    ok = pl.col("ins") | pl.col("upd") | pl.col("del")
    writes = pl.col("ins") | pl.col("upd")
    per_key = frame.group_by("key_no").agg(
        pl.when(ok).then(op != "D").otherwise(b).last().alias("final"),
        pl.col("del").any().alias("any_del"),
        pl.col(ROW).filter(writes).max().alias("last_write"),
        pl.col(ROW).max().alias("last_row"))
    frame = frame.join(per_key, on="key_no", how="left")
    init, final = pl.col("init"), pl.col("final")
    last_write = pl.col(ROW) == pl.col("last_write")
    return frame.with_columns(
        pl.when((op == "I") & b).then(pl.lit(ErrorCode.KEY_EXISTS.value))
        .when((op == "U") & ~b & ~full & upsert).then(pl.lit(ErrorCode.REQUIRED_FIELD_MISSING.value))
        .when(~ok).then(pl.lit(ErrorCode.KEY_NOT_FOUND.value)).alias("code"),
        # alive at the end: inserted if it was not there; replaced if it was deleted on the way
        pl.when(last_write & final & ~init).then(pl.lit("insert"))
        .when(last_write & final & pl.col("any_del")).then(pl.lit("replace"))
        .when(last_write & final).then(pl.lit("update")).alias("action"),
        (init & ~final & (pl.col(ROW) == pl.col("last_row"))).alias("gone"),
    )


def merged_writes(outcome: pl.DataFrame, fields: list[str], unset: list[str]) -> pl.DataFrame:
    """The row each key written by ``replay``'s ``outcome`` ends with (``fields`` and ACTION), where
    records leave the fields ``unset`` lists unset at times: a field takes the value of the last write
    that sets it since the key's last insert (an insert leaves what it does not set empty); an update
    without an insert keeps a field no write sets (its ``sets_column`` false)."""
    since = pl.col("__since")
    is_set = {f: since & pl.col(sets_column(f)) for f in unset}
    last_insert = pl.when(pl.col("ins")).then(pl.col(ROW)).max().over("key_no").fill_null(0)
    # in source order within each key: the group's last value is the latest
    by_key = outcome.sort(ROW).with_columns(
        ((pl.col("ins") | pl.col("upd")) & (pl.col(ROW) >= last_insert)).alias("__since")
    ).group_by("key_no").agg(
        pl.col("action").drop_nulls().first().alias(ACTION),
        *[pl.col(f).filter(is_set.get(f, since)).last() for f in fields],
        *[is_set[f].any().alias(sets_column(f)) for f in unset])
    return by_key.filter(pl.col(ACTION).is_not_null()).drop("key_no")


def _flags(good: pl.DataFrame, fields: list[str]) -> dict[str, str]:
    """field -> the load table's column telling whether a record sets it, for the fields that some
    record leaves unset; named by position (a field's name may fill an identifier's 63 bytes)."""
    return {f: f"__sets_{i}" for i, f in enumerate(fields) if sets_column(f) in good.columns}


def _with_flags(flags: dict[str, str]) -> tuple[list[pl.Expr], tuple[tuple[str, str], ...]]:
    """The flag columns of a load table: as selected from the records, and as (name, SQL type)."""
    return ([pl.col(sets_column(f)).alias(c) for f, c in flags.items()],
            tuple((c, "boolean") for c in flags.values()))


def _assignments(fields: list[str], pk: str, source: str,
                 flags: dict[str, str] | None = None) -> list[sql.Composable]:
    """``column = source.column`` for each field the source sets (one of ``flags``, a field that a
    record may leave unset, only where the flag is true: the target row ``t`` keeps it otherwise); a
    file of keys only still "updates": setting the key to itself keeps the row counted as written."""
    own = [c for c in fields if c != pk] or [pk]
    flags = flags or {}
    return [sql.SQL("{c} = CASE WHEN {s}.{f} THEN {s}.{c} ELSE t.{c} END").format(
        c=sql.Identifier(c), s=sql.SQL(source), f=sql.Identifier(flags[c])) if c in flags
        else sql.SQL("{c} = {s}.{c}").format(c=sql.Identifier(c), s=sql.SQL(source)) for c in own]


def _concurrent_writer(missed: int) -> RetriableError:
    """A chunk wrote fewer rows than it planned: another writer got in; the chunk is retried whole."""
    return RetriableError(f"another writer changed {missed} of this chunk's keys while it applied; "
                          "the chunk is rolled back and applied again")


def _merge(conn: Conn, mdef: ModuleDef, fields: list[str], load: sql.Identifier,
           flags: dict[str, str]) -> sql.Composed:
    """One MERGE of the load table's actions: delete, update (the source's fields, each of ``flags``
    where set), replace (the source's fields, every other column to its default: as a delete and an
    insert), insert."""
    pk = mdef.database.primary_key
    target = table_ident(mdef.database.tenant, mdef.database.id)
    columns = [r["attname"] for r in conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped"
        " ORDER BY attnum", (target.as_string(conn),))]

    def sets(defaults: bool) -> sql.Composable:
        rest = [sql.SQL("{c} = DEFAULT").format(c=sql.Identifier(c)) for c in columns if defaults and c not in fields]
        return sql.SQL(", ").join(_assignments(fields, pk, "l", None if defaults else flags) + rest)

    return sql.SQL(
        "MERGE INTO {t} t USING {l} l ON t.{p} = l.{p}"
        " WHEN MATCHED AND l.{a} = 'delete' THEN DELETE"
        " WHEN MATCHED AND l.{a} = 'update' THEN UPDATE SET {u}"
        " WHEN MATCHED AND l.{a} = 'replace' THEN UPDATE SET {r}"
        " WHEN NOT MATCHED AND l.{a} = 'insert' THEN INSERT ({c}) VALUES ({v})"
    ).format(t=target, l=load, p=sql.Identifier(pk), a=sql.Identifier(ACTION), u=sets(False), r=sets(True),
             c=sql.SQL(", ").join(sql.Identifier(c) for c in fields),
             v=sql.SQL(", ").join(sql.SQL("l.{}").format(sql.Identifier(c)) for c in fields))


def _single_statement(mdef: ModuleDef, fields: list[str], load: sql.Identifier, upsert: bool,
                      flags: dict[str, str]) -> sql.Composed:
    """One statement applying the load table's operations on keys that have one each: a DELETE,
    an UPDATE (of each of ``flags`` where set; an upsert's INSERT .. ON CONFLICT DO UPDATE, without
    flags) and an INSERT .. ON CONFLICT DO NOTHING, each returning the keys it wrote; the keys are
    disjoint, so no part sees another's."""
    pk = mdef.database.primary_key
    t, p, o = table_ident(mdef.database.tenant, mdef.database.id), sql.Identifier(pk), sql.Identifier(OP)
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in fields)
    if upsert:
        assert not flags, "an upsert's records that leave fields unset are replayed"
        update = sql.SQL(
            "INSERT INTO {t} ({c}) SELECT {c} FROM {l} WHERE {o} = 'U' ON CONFLICT ({p}) DO UPDATE SET {s}"
            " RETURNING {p} AS k, xmax = 0 AS new").format(
            t=t, c=cols, l=load, o=o, p=p, s=sql.SQL(", ").join(_assignments(fields, pk, "EXCLUDED")))
    else:
        update = sql.SQL("UPDATE {t} t SET {s} FROM {l} l WHERE l.{o} = 'U' AND t.{p} = l.{p}"
                         " RETURNING t.{p} AS k, false AS new").format(
            t=t, l=load, o=o, p=p, s=sql.SQL(", ").join(_assignments(fields, pk, "l", flags)))
    return sql.SQL(
        "WITH d AS (DELETE FROM {t} t USING {l} l WHERE l.{o} = 'D' AND t.{p} = l.{p} RETURNING t.{p} AS k),"
        " u AS ({update}),"
        " i AS (INSERT INTO {t} ({c}) SELECT {c} FROM {l} WHERE {o} = 'I' ON CONFLICT ({p}) DO NOTHING"
        " RETURNING {p} AS k)"
        " SELECT (SELECT array_agg(k) FROM d) AS deleted, (SELECT array_agg(k) FROM u WHERE NOT new) AS updated,"
        " (SELECT array_agg(k) FROM (SELECT k FROM i UNION ALL SELECT k FROM u WHERE new) n) AS inserted"
    ).format(t=t, l=load, o=o, p=p, c=cols, update=update)


def apply_single(conn: Conn, mdef: ModuleDef, fields: list[str], good: pl.DataFrame, upsert: bool) -> pl.DataFrame:
    """Apply the records whose key has no other record in the chunk (most of a file), without the
    existence query and replay: their outcome is what the statement did to the key. Returns them
    with ``ins``, ``upd``, ``del`` and ``code`` as ``replay`` gives them."""
    pk = mdef.database.primary_key
    flags = _flags(good, fields)
    flag_columns, flag_types = _with_flags(flags)
    load = load_table(conn, mdef, good.select(ROW, OP, *fields, *flag_columns).sort(pk),
                      ((ROW, "bigint"), (OP, "text"), *flag_types), name="dx_single", nullable=bool(flags))
    row = conn.execute(_single_statement(mdef, fields, load, upsert, flags)).fetchone()
    assert row is not None

    def wrote(kind: str) -> pl.Expr:
        return pl.col(pk).is_in(pl.Series(row[kind] or [], dtype=good.schema[pk]).implode())
    op = pl.col(OP)
    done = good.with_columns(((op != "D") & wrote("inserted")).alias("ins"), ((op == "U") & wrote("updated")).alias("upd"),
                             ((op == "D") & wrote("deleted")).alias("del"))
    if upsert and (missed := done.filter((op == "U") & ~pl.col("ins") & ~pl.col("upd")).height):
        raise _concurrent_writer(missed)
    return done.with_columns(pl.when((op == "I") & ~pl.col("ins")).then(pl.lit(ErrorCode.KEY_EXISTS.value))
                             .when(~(pl.col("ins") | pl.col("upd") | pl.col("del")))
                             .then(pl.lit(ErrorCode.KEY_NOT_FOUND.value)).alias("code"))


def sets_required(database: DatabaseCfg, good: pl.DataFrame) -> pl.Expr | None:
    """Whether a record sets every required field (None: each does, none being left unset)."""
    required = [pl.col(sets_column(n)) for n, f in database.fields.items()
                if f.required and sets_column(n) in good.columns]
    return pl.all_horizontal(required) if required else None


def apply_operations(conn: Conn, mdef: ModuleDef, good: pl.DataFrame, upsert: bool) -> pl.DataFrame:
    """Apply valid records' operations in the caller's transaction: keys with one record by
    ``apply_single``, keys with several (under ``upsert``, every key if records leave fields unset)
    by the replay and one MERGE. Returns each record with ``ins``, ``upd``, ``del`` and ``code``."""
    # Every join here looks up a chunk's keys in the target's primary key: an index
    # nested loop costs O(chunk), where the hash join the planner picks for an
    # unanalysed temporary table reads the whole target once per chunk.
    conn.execute("SET LOCAL enable_hashjoin = off")
    conn.execute("SET LOCAL enable_mergejoin = off")
    pk = mdef.database.primary_key
    fields = fields_of(good)
    flags = _flags(good, fields)
    # an upsert's U that leaves fields unset updates or inserts by whether its key exists: asked first
    repeated = pl.repeat(True, good.height, eager=True) if upsert and flags else good[pk].is_duplicated()
    outcomes = [apply_single(conn, mdef, fields, good.filter(~repeated), upsert)] if not repeated.all() else []
    several = good.filter(repeated)
    if not several.is_empty():
        outcome = replay(several, pk, existing_rows(conn, mdef, several), upsert,
                         sets_required(mdef.database, several))
        flag_columns, flag_types = _with_flags(flags)
        writes = merged_writes(outcome, fields, list(flags)).select(*fields, ACTION, *flag_columns) if flags \
            else outcome.filter(pl.col("action").is_not_null()).select(*fields, pl.col("action").alias(ACTION))
        deletes = outcome.filter(pl.col("gone")).select(pk, pl.lit("delete").alias(ACTION))
        load = load_table(conn, mdef, pl.concat([writes, deletes], how="diagonal_relaxed").sort(pk),
                          ((ACTION, "text"), *flag_types), nullable=bool(flags))
        expected = writes.height + deletes.height
        if expected:
            touched = conn.execute(_merge(conn, mdef, fields, load, flags)).rowcount
            if touched != expected:
                raise _concurrent_writer(expected - touched)
        outcomes.append(outcome)
    return pl.concat([o.select(ROW, KEY, OP, "ins", "upd", "del", "code") for o in outcomes]) if outcomes \
        else pl.DataFrame(schema={ROW: pl.Int64, KEY: pl.String, OP: pl.String, "ins": pl.Boolean,
                                  "upd": pl.Boolean, "del": pl.Boolean, "code": pl.String})


def _refuse_incomplete(mdef: ModuleDef, v: Validated, done: pl.DataFrame) -> pl.DataFrame:
    """The failed operations of upserting records that would insert a key without a required field they
    leave unset; each names those fields."""
    missing = done.filter(pl.col("code") == ErrorCode.REQUIRED_FIELD_MISSING.value)
    if missing.is_empty():
        return pl.DataFrame(schema=FAILED_SCHEMA)
    rows = v.good.join(missing.select(ROW), on=ROW, how="semi").rechunk()
    names = [pl.when(~pl.col(sets_column(n))).then(pl.lit(n)) for n, f in mdef.database.fields.items()
             if f.required and sets_column(n) in rows.columns]
    unset = pl.concat_str(names, separator=", ", ignore_nulls=True) if names else pl.lit("")
    return v.fail(rows, ErrorCode.REQUIRED_FIELD_MISSING, pl.format(
        "{}: required, but the record does not set it, and there is no record with this key to update "
        "at this point of the source", unset))


def leaves_unset(good: pl.DataFrame) -> bool:
    """Whether some of these validated records leave a field unset (``validate``'s ``sets_column``)."""
    return any(c.startswith(SETS) for c in good.columns)


def upsert_records(conn: Conn, mdef: ModuleDef, v: Validated) -> ChunkOutcome:
    """An upsert importer's chunk whose records leave fields unset: each record, in source order, is
    an Updater's U that inserts a missing key (so a field a later record of a key leaves unset keeps
    what an earlier one set); one that would insert without a required field fails (not_inserted)."""
    done = apply_operations(conn, mdef, v.good.with_columns(pl.lit("U").alias(OP)), upsert=True)
    target = table_ident(mdef.database.tenant, mdef.database.id)
    failed, existing = split_failed_by_existence(conn, target, sql.Identifier(mdef.database.primary_key), mdef,
                                                 v.failed)
    refused = _refuse_incomplete(mdef, v, done)  # v.good has no operation: each counts as an insert
    return ChunkOutcome({"inserted": int(done["ins"].sum()), "updated": int(done["upd"].sum()),
                         "not_inserted": failed.height - existing + refused.height, "not_updated": existing},
                        pl.concat([failed, refused]))


def apply_updates(conn: Conn, run: Run, mdef: ModuleDef, v: Validated) -> ChunkOutcome:
    """Apply one validated chunk of operations in the caller's transaction (``apply_operations``)."""
    done = apply_operations(conn, mdef, v.good, mdef.module.update_missing == "insert")
    refused = [v.fail(done.filter((pl.col("code") == code.value) & (pl.col(OP) == op)), code, message)
               for code, op, message in (
                   (ErrorCode.KEY_EXISTS, "I", "the key exists (in the database or inserted earlier in the source)"),
                   (ErrorCode.KEY_NOT_FOUND, "U", "no record with this key to update at this point of the source"),
                   (ErrorCode.KEY_NOT_FOUND, "D", "no record with this key to delete at this point of the source"))]
    refused.append(_refuse_incomplete(mdef, v, done))
    failed = pl.concat([v.failed, *refused])
    counters = {"inserted": int(done["ins"].sum()), "updated": int(done["upd"].sum()),
                "deleted": int(done["del"].sum())} | dict.fromkeys(NOT_COUNTER.values(), 0)
    for op, n in failed.group_by("operation").len().iter_rows():
        counters[NOT_COUNTER.get(op, "not_updated")] += n
    return ChunkOutcome(counters, failed)
