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
"""

from __future__ import annotations

import polars as pl
from psycopg import sql

from dx.shared.catalog import ModuleDef, table_ident
from dx.shared.db import Conn
from dx.shared.errors import ErrorCode, RetriableError
from dx.shared.formats.csv import ROW
from dx.shared.runs import Run
from dx.shared.validate import KEY, OP, Validated, find_column, missing_required, validate
from dx.workers.imports.importer import ChunkOutcome, fields_of, keep_blank_text, load_table

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
                    operation_column=find_column(columns, module.operation_field))


def existing_rows(conn: Conn, mdef: ModuleDef, good: pl.DataFrame) -> pl.Series:
    """Row numbers of ``good`` whose key is in the database now.

    No row locks (they would cost a write per row): ``apply_updates`` checks
    instead that its statement touched exactly the rows it expected, so a
    concurrent writer of the same keys makes the chunk roll back and retry."""
    pk = mdef.database.primary_key
    target = table_ident(mdef.database.tenant, mdef.database.id)
    keys = load_table(conn, mdef, good.select(ROW, pk).sort(pk), name="dx_keys")
    rows = conn.execute(sql.SQL(
        "SELECT k.{r} FROM {k} k JOIN {t} t ON t.{p} = k.{p}"
    ).format(r=sql.Identifier(ROW), k=keys, t=target, p=sql.Identifier(pk))).fetchall()
    return pl.Series(ROW, [r[ROW] for r in rows], dtype=pl.Int64)


def replay(good: pl.DataFrame, pk: str, initial_rows: pl.Series, upsert: bool) -> pl.DataFrame:
    """Each valid record with its outcome: columns ``ins``, ``upd``, ``del`` (it succeeded as
    that), ``code`` (why it failed), ``action`` on the key's last write (insert, replace or
    update) and ``gone`` on the last record of a key that existed and no longer does."""
    op = pl.col(OP)
    sets = pl.when(op == "I").then(True).when(op == "D").then(False)
    if upsert:
        sets = sets.when(op == "U").then(True)
    # sorted by key, then source order: each key's records are one run of rows
    frame = good.sort(pk, ROW).with_columns(
        pl.col(ROW).is_in(initial_rows.implode()).alias("init"), sets.alias("sets"),
        (pl.col(pk) != pl.col(pk).shift(1)).fill_null(True).alias("first"))
    # state before a record: set by the key's last state-setting record before it, else initial;
    # every run starts non-null, so the forward fill never crosses from one key into the next
    before = pl.when(pl.col("first")).then(pl.col("init")).otherwise(pl.col("sets").shift(1)).forward_fill()
    b = pl.col("before")
    frame = frame.with_columns(before.alias("before"), pl.col("first").cum_sum().alias("key_no")).with_columns(
        ((op == "I") & ~b | (op == "U") & ~b & upsert).alias("ins"),
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
        .when(~ok).then(pl.lit(ErrorCode.KEY_NOT_FOUND.value)).alias("code"),
        # alive at the end: inserted if it was not there; replaced if it was deleted on the way
        pl.when(last_write & final & ~init).then(pl.lit("insert"))
        .when(last_write & final & pl.col("any_del")).then(pl.lit("replace"))
        .when(last_write & final).then(pl.lit("update")).alias("action"),
        (init & ~final & (pl.col(ROW) == pl.col("last_row"))).alias("gone"),
    )


def _assignments(fields: list[str], pk: str, source: str) -> list[sql.Composable]:
    """``column = source.column`` for each field the source sets; a file of keys only still
    "updates": setting the key to itself keeps the row counted as written."""
    own = [c for c in fields if c != pk] or [pk]
    return [sql.SQL("{c} = {s}.{c}").format(c=sql.Identifier(c), s=sql.SQL(source)) for c in own]


def _concurrent_writer(missed: int) -> RetriableError:
    """A chunk wrote fewer rows than it planned: another writer got in; the chunk is retried whole."""
    return RetriableError(f"another writer changed {missed} of this chunk's keys while it applied; "
                          "the chunk is rolled back and applied again")


def _merge(conn: Conn, mdef: ModuleDef, fields: list[str], load: sql.Identifier) -> sql.Composed:
    """One MERGE of the load table's actions: delete, update (the source's fields), replace
    (the source's fields, every other column to its default: as a delete and an insert), insert."""
    pk = mdef.database.primary_key
    target = table_ident(mdef.database.tenant, mdef.database.id)
    columns = [r["attname"] for r in conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped"
        " ORDER BY attnum", (target.as_string(conn),))]

    def sets(defaults: bool) -> sql.Composable:
        rest = [sql.SQL("{c} = DEFAULT").format(c=sql.Identifier(c)) for c in columns if defaults and c not in fields]
        return sql.SQL(", ").join(_assignments(fields, pk, "l") + rest)

    return sql.SQL(
        "MERGE INTO {t} t USING {l} l ON t.{p} = l.{p}"
        " WHEN MATCHED AND l.{a} = 'delete' THEN DELETE"
        " WHEN MATCHED AND l.{a} = 'update' THEN UPDATE SET {u}"
        " WHEN MATCHED AND l.{a} = 'replace' THEN UPDATE SET {r}"
        " WHEN NOT MATCHED AND l.{a} = 'insert' THEN INSERT ({c}) VALUES ({v})"
    ).format(t=target, l=load, p=sql.Identifier(pk), a=sql.Identifier(ACTION), u=sets(False), r=sets(True),
             c=sql.SQL(", ").join(sql.Identifier(c) for c in fields),
             v=sql.SQL(", ").join(sql.SQL("l.{}").format(sql.Identifier(c)) for c in fields))


def _single_statement(mdef: ModuleDef, fields: list[str], load: sql.Identifier, upsert: bool) -> sql.Composed:
    """One statement applying the load table's operations on keys that have one each: a DELETE,
    an UPDATE (an upsert's INSERT .. ON CONFLICT DO UPDATE) and an INSERT .. ON CONFLICT DO
    NOTHING, each returning the keys it wrote; the keys are disjoint, so no part sees another's."""
    pk = mdef.database.primary_key
    t, p, o = table_ident(mdef.database.tenant, mdef.database.id), sql.Identifier(pk), sql.Identifier(OP)
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in fields)
    if upsert:
        update = sql.SQL(
            "INSERT INTO {t} ({c}) SELECT {c} FROM {l} WHERE {o} = 'U' ON CONFLICT ({p}) DO UPDATE SET {s}"
            " RETURNING {p} AS k, xmax = 0 AS new").format(
            t=t, c=cols, l=load, o=o, p=p, s=sql.SQL(", ").join(_assignments(fields, pk, "EXCLUDED")))
    else:
        update = sql.SQL("UPDATE {t} t SET {s} FROM {l} l WHERE l.{o} = 'U' AND t.{p} = l.{p}"
                         " RETURNING t.{p} AS k, false AS new").format(
            t=t, l=load, o=o, p=p, s=sql.SQL(", ").join(_assignments(fields, pk, "l")))
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
    load = load_table(conn, mdef, good.select(ROW, OP, *fields).sort(pk), ((ROW, "bigint"), (OP, "text")),
                      name="dx_single")
    row = conn.execute(_single_statement(mdef, fields, load, upsert)).fetchone()
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


def apply_updates(conn: Conn, run: Run, mdef: ModuleDef, v: Validated) -> ChunkOutcome:
    """Apply one validated chunk of operations in the caller's transaction: keys with one record
    by ``apply_single``, keys with several by the replay and one MERGE."""
    # Every join here looks up a chunk's keys in the target's primary key: an index
    # nested loop costs O(chunk), where the hash join the planner picks for an
    # unanalysed temporary table reads the whole target once per chunk.
    conn.execute("SET LOCAL enable_hashjoin = off")
    conn.execute("SET LOCAL enable_mergejoin = off")
    pk = mdef.database.primary_key
    fields = fields_of(v.good)
    upsert = mdef.module.update_missing == "insert"
    repeated = v.good[pk].is_duplicated()
    outcomes = [apply_single(conn, mdef, fields, v.good.filter(~repeated), upsert)] if not repeated.all() else []
    several = v.good.filter(repeated)
    if not several.is_empty():
        outcome = replay(several, pk, existing_rows(conn, mdef, several), upsert)
        writes = outcome.filter(pl.col("action").is_not_null()).select(*fields, pl.col("action").alias(ACTION))
        deletes = outcome.filter(pl.col("gone")).select(pk, pl.lit("delete").alias(ACTION))
        load = load_table(conn, mdef, pl.concat([writes, deletes], how="diagonal_relaxed").sort(pk),
                          ((ACTION, "text"),))
        expected = writes.height + deletes.height
        if expected:
            touched = conn.execute(_merge(conn, mdef, fields, load)).rowcount
            if touched != expected:
                raise _concurrent_writer(expected - touched)
        outcomes.append(outcome)
    done = pl.concat([o.select(ROW, KEY, OP, "ins", "upd", "del", "code") for o in outcomes]) if outcomes \
        else pl.DataFrame(schema={ROW: pl.Int64, KEY: pl.String, OP: pl.String, "ins": pl.Boolean,
                                  "upd": pl.Boolean, "del": pl.Boolean, "code": pl.String})
    refused = [v.fail(done.filter((pl.col("code") == code.value) & (pl.col(OP) == op)), code, message)
               for code, op, message in (
                   (ErrorCode.KEY_EXISTS, "I", "the key exists (in the database or inserted earlier in the source)"),
                   (ErrorCode.KEY_NOT_FOUND, "U", "no record with this key to update at this point of the source"),
                   (ErrorCode.KEY_NOT_FOUND, "D", "no record with this key to delete at this point of the source"))]
    failed = pl.concat([v.failed, *refused])
    counters = {"inserted": int(done["ins"].sum()), "updated": int(done["upd"].sum()),
                "deleted": int(done["del"].sum())} | dict.fromkeys(NOT_COUNTER.values(), 0)
    for op, n in failed.group_by("operation").len().iter_rows():
        counters[NOT_COUNTER.get(op, "not_updated")] += n
    return ChunkOutcome(counters, failed)
